#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, lints, checks the packages,
# then runs the unit and integration tests against real servers. The runner's summary
# line is the last thing it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

log "lint and format (biome)"
"${PNPM[@]}" exec biome check .

log "typecheck tests (tsc -p tsconfig.tests.json)"
"${PNPM[@]}" exec tsc -p tsconfig.tests.json

log "package checks (publint, attw)"
node scripts/check-packages.mjs

log "tests (vitest: unit, then integration against real Patroni, etcd and Redis)"
exec "${PNPM[@]}" exec vitest run "$@"
