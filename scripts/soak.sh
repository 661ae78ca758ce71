#!/usr/bin/env bash
# `npm run soak [-- --minutes N]`: build, prepare the VM, run the soak (scripts/soak.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/Release/ublkd_native.node ] && [ -f dist/main/cli.js ] || npm run build
bash scripts/vm/prepare.sh "${UBLKD_VM_KERNEL:-7.3}"
npx tsc -p tsconfig.tools.json
exec node .build/scripts/soak.js "$@"
