#!/usr/bin/env bash
# Runs every benchmark and writes bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
log "benchmarks"
exec node --expose-gc bench/run-all.mjs "$@"
