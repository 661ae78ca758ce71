#!/usr/bin/env bash
# `npm test`: every test, VM tests included. Installs what a fresh machine lacks (QEMU, fio, the
# Debian 6.12 kernel), builds, runs tap, and ends with `N passed, N failed, N skipped`.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/vm/prepare.sh || { echo "0 passed, 1 failed"; exit 1; }
[ -f build/Release/ublkd_native.node ] && [ -f dist/main/cli.js ] || npm run build || { echo "0 passed, 1 failed"; exit 1; }

rm -rf .tap && mkdir -p .tap
npx tap "$@" | tee .tap/run.tap
rc=${PIPESTATUS[0]}
node scripts/tap-summary.mjs .tap/run.tap
exit "$rc"
