#!/usr/bin/env bash
# `npm run bench`: build if needed, prepare the VM, compile the bench, run it (never part of npm test).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/Release/ublkd_native.node ] && [ -f dist/main/cli.js ] || npm run build
[ "${1:-}" = micro ] || bash scripts/vm/prepare.sh
npx tsc -p tsconfig.tools.json
if [ "${1:-}" = micro ]; then
  exec node --expose-gc .build/bench/micro.js
fi
node .build/bench/run.js "$@"
