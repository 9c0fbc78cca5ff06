#!/usr/bin/env bash
# The demo: a real Patroni cluster and Redis, the Express example under load, a primary
# killed and Redis paused on the way; a report and a timeline chart at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
log "demo"
exec node scripts/demo.mjs "$@"
