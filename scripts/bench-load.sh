#!/usr/bin/env bash
# The deployment guide's load shapes at full size (bench/load/load.mjs): stages, spike,
# stress, soak. Not part of npm test: about 50 minutes. Every user is a socket on both ends,
# so the open-files limit goes up first, to the hard limit (20,000 in this sandbox: enough for
# 10,000 users; stress stops below it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ulimit -n "$(ulimit -Hn)"
log "load shapes (open files: $(ulimit -n))"
exec node bench/load/load.mjs "$@"
