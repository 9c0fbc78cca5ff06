#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, then builds.
# Sourced by scripts/test.sh, scripts/demo.sh and scripts/bench.sh. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PNPM_VERSION="10.34.9"
PNPM=(npx --yes "pnpm@${PNPM_VERSION}")
# openssl: the lab's TLS mode makes its CA with it; python3-idna: patronictl over HTTPS needs it
# (see packages/lab/README.md, Secure mode).
DEBIAN_PACKAGES=(postgresql-15 postgresql-client-15 patroni etcd-server etcd-client redis-server redis-sentinel pgbouncer haproxy openssl python3-idna)

log() { printf '\n== %s\n' "$*"; }

check_node() {
  local v
  v="$(node -p 'process.versions.node')"
  node -e '
    const [maj, min] = process.versions.node.split(".").map(Number)
    if (!((maj === 20 && min >= 19) || (maj === 22 && min >= 12) || maj > 22)) process.exit(1)
  ' || { echo "Node ${v} is too old: resilient needs ^20.19.0 || >=22.12.0" >&2; exit 1; }
}

missing_binaries() {
  local missing=()
  [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgres)
  [ -f /usr/lib/python3/dist-packages/idna/__init__.py ] || missing+=(python3-idna)
  for b in patroni patronictl etcd etcdctl redis-server redis-sentinel pgbouncer haproxy openssl; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/usr/bin/$b" ] || missing+=("$b")
  done
  echo "${missing[@]:-}"
}

install_debian_packages() {
  local missing
  missing="$(missing_binaries)"
  [ -z "${missing// /}" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing}. Install as root: apt-get install -y ${DEBIAN_PACKAGES[*]}" >&2
    exit 1
  fi
  log "installing Debian packages (${missing})"
  # Installing must not create or start a default cluster or service: the lab starts its own.
  mkdir -p /etc/postgresql-common
  [ -f /etc/postgresql-common/createcluster.conf ] || echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
  local policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${DEBIAN_PACKAGES[@]}" >/dev/null
  [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

install_node_deps() {
  log "installing dependencies (pnpm ${PNPM_VERSION})"
  cd "$ROOT"
  local args=(install --reporter=append-only)
  [ -n "${CI:-}" ] && args+=(--frozen-lockfile)
  local out status=0
  out="$("${PNPM[@]}" "${args[@]}" 2>&1)" || status=$?
  # The lab's bin points into dist/, which exists only after the build: that warning is expected.
  printf '%s\n' "$out" | grep -v -E 'Failed to create bin|^$' || true
  [ "$status" = 0 ] || { echo "pnpm install failed (exit ${status})" >&2; exit "$status"; }
}

build() {
  log "building (tsc -b)"
  cd "$ROOT"
  "${PNPM[@]}" exec tsc -b
  generate_prisma
}

# The Prisma client of pg-router's ORM test (packages/pg-router/test/prisma/schema.prisma ->
# generated/, git-ignored), regenerated when the schema or the lockfile is newer. `prisma
# generate` needs no engine binary, but looks for the schema engine first and would download
# it: PRISMA_SCHEMA_ENGINE_BINARY pointing at any executable stops that (it is not run).
generate_prisma() {
  local dir="$ROOT/packages/pg-router/test/prisma"
  local out="$dir/generated/client.ts"
  if [ -f "$out" ] && [ ! "$dir/schema.prisma" -nt "$out" ] && [ ! "$ROOT/pnpm-lock.yaml" -nt "$out" ]; then
    return 0
  fi
  log "prisma generate (pg-router ORM test)"
  (cd "$ROOT/packages/pg-router" &&
    PRISMA_SCHEMA_ENGINE_BINARY="${PRISMA_SCHEMA_ENGINE_BINARY:-$(type -P true)}" \
      CHECKPOINT_DISABLE=1 PRISMA_HIDE_UPDATE_MESSAGE=1 \
      "${PNPM[@]}" exec prisma generate --schema test/prisma/schema.prisma)
}

check_node
install_debian_packages
install_node_deps
build
