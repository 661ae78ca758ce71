#!/usr/bin/env bash
# npm run bench             fio against the kernel drivers and ublkd in one VM boot (bench/run.ts)
# npm run bench -- micro    micro-benchmarks of the hot path and the heap-growth check, no VM
#                           (bench/micro/run.ts; further arguments filter the benchmarks by name)
# Never part of npm test. Env knobs: see bench/README.md (BENCH_KERNEL=6.12|7.3 picks the kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/Release/ublkd_native.node ] || [ ! -f dist/main/cli.js ]; then
  npm run build
fi
npx tsc -p tsconfig.tools.json
if [ "${1:-}" = micro ]; then
  shift
  exec node --expose-gc .build/bench/micro/run.js "$@"
fi
export UBLKD_VM_KERNEL=${BENCH_KERNEL:-${UBLKD_VM_KERNEL:-7.3}}
bash scripts/vm/prepare.sh "$UBLKD_VM_KERNEL"
exec node .build/bench/run.js "$@"
