#!/usr/bin/env bash
# `npm run demo`: build, prepare the VM (first run installs QEMU and the kernel), run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/Release/ublkd_native.node ] && [ -f dist/main/cli.js ] || npm run build
bash scripts/vm/prepare.sh "${UBLKD_VM_KERNEL:-7.3}"
npx tsc -p tsconfig.tools.json
node .build/scripts/demo.js
