#!/usr/bin/env bash
# `npm test`: every test, VM tests included. Installs what a fresh machine lacks (QEMU, fio, the
# Debian kernels), builds, runs tap, and ends with `N passed, N failed, N skipped`.
#   npm test                          unit and addon tests once, then test/vm on each kernel
#   UBLKD_VM_KERNEL=7.3 npm test      the VM tests on one kernel only (6.12 or 7.3)
#   npm test -- test/vm/fio.test.ts   these files only (on each kernel when they are VM tests)
set -uo pipefail
cd "$(dirname "$0")/.."

read -r -a kernels <<< "${UBLKD_VM_KERNEL:-6.12 7.3}"
bash scripts/vm/prepare.sh "${kernels[@]}" || { echo "0 passed, 1 failed"; exit 1; }
[ -f build/Release/ublkd_native.node ] && [ -f dist/main/cli.js ] || npm run build || { echo "0 passed, 1 failed"; exit 1; }

rm -rf .tap && mkdir -p .tap
# bootVm (test/lib/vm.ts) retries a VM boot that died before its agent answered and notes each
# retry here; the count is printed before the closing line.
export UBLKD_VM_BOOT_RETRY_LOG="$PWD/.tap/vm-boot-retries.log"
: > "$UBLKD_VM_BOOT_RETRY_LOG"
rc=0
run() { # run NAME KERNEL FILES...: one tap run, its TAP kept in .tap/NAME.tap
  local name=$1 kernel=$2
  shift 2
  UBLKD_VM_KERNEL=$kernel npx tap "$@" > ".tap/$name.tap" 2>&1
}
# The VM files, costliest first (a file's seconds on 7.3 in a full run of 7 December 2026:
# recovery 380, loop 282, upgrade 262, nbd 249, soak 211, io-modes 197, systemd 191, ...); files
# not listed follow in name order. Only the order of the jobs depends on it.
costliest_first=(recovery loop nbd upgrade systemd io-modes soak races lifecycle fio resize queue-death
  service memory-discard bad-input kernel-features api-hardening loop-zeroing sigterm metrics fail-io
  event-loop vm-smoke)
# The VM tests as one queue of (kernel, file) jobs, costliest first, taken by as many workers as
# the machine has cores: each QEMU (single-threaded TCG) keeps one core busy. Longest first, the
# two workers ended 22 s apart in a full run, where one run per kernel left 6.12's core idle for
# ten minutes. Each job's TAP is kept in .tap/vm-KERNEL-NAME.tap and printed once all ended; meanwhile
# a line per finished job shows progress.
run_vm() { # run_vm FILES...: the files (or directories of them) on every kernel
  local arg files=() ordered=() name file kernel
  for arg in "$@"; do
    if [ -d "$arg" ]; then files+=("$arg"/*.test.ts); else files+=("$arg"); fi
  done
  for name in "${costliest_first[@]}"; do
    for file in "${files[@]}"; do [ "$(basename "$file" .test.ts)" = "$name" ] && ordered+=("$file"); done
  done
  for file in "${files[@]}"; do
    printf '%s\n' "${costliest_first[@]}" | grep -qxF "$(basename "$file" .test.ts)" || ordered+=("$file")
  done
  : > .tap/vm-jobs
  for file in "${ordered[@]}"; do
    # The newest kernel first: its runs are the longer ones.
    for kernel in $(printf '%s\n' "${kernels[@]}" | sort -rV); do echo "$kernel $file" >> .tap/vm-jobs; done
  done
  echo 0 > .tap/vm-jobs-taken
  local jobs workers pids=() i
  jobs=$(wc -l < .tap/vm-jobs)
  workers=${UBLKD_VM_PARALLEL:-$(nproc)}
  if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
    # A TAP file of its own, so that the closing line counts the failure.
    printf 'TAP version 14\nnot ok 1 - UBLKD_VM_PARALLEL=%s: not a number of VMs (1 or more)\n1..1\n' "$workers" | tee .tap/vm-parallel.tap
    rc=1
    return
  fi
  [ "$workers" -le "$jobs" ] || workers=$jobs
  for ((i = 0; i < workers; i++)); do vm_worker & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  while read -r kernel file; do
    echo "# ---- vm $kernel $file ----"
    cat ".tap/vm-$kernel-$(basename "$file" .test.ts).tap"
  done < .tap/vm-jobs
}
vm_worker() { # takes jobs until none is left; fails if one of its jobs failed
  local job kernel file name failed=0
  while job=$(flock .tap/vm-jobs.lock bash -c 'n=$(cat .tap/vm-jobs-taken); echo $((n + 1)) > .tap/vm-jobs-taken; sed -n "$((n + 1))p" .tap/vm-jobs') &&
    [ -n "$job" ]; do
    read -r kernel file <<< "$job"
    name="vm-$kernel-$(basename "$file" .test.ts)"
    run "$name" "$kernel" "$file" || failed=1
    grep -E '^(not )?ok ' ".tap/$name.tap" | sed "s/^/# [$kernel] /"
  done
  return "$failed"
}
show_host() { # the host run's TAP
  echo "# ---- host ----"
  cat .tap/host.tap
}
host() { # host FILES...: the tests that need no VM, once
  run host "${kernels[0]}" "$@" || rc=1
  show_host
}
if [ $# -eq 0 ]; then
  # The host tests run beside the VMs, niced: each QEMU leaves part of its core idle (the guest
  # waits on I/O and timers), which they use instead of holding the VMs back for 1-2 minutes.
  nice -n 19 bash -c "$(declare -f run); $(declare -p kernels); run host \"\${kernels[0]}\" test/unit test/addon" &
  host_pid=$!
  run_vm test/vm
  wait "$host_pid" || rc=1
  show_host
elif printf '%s\n' "$@" | grep -q 'test/vm'; then
  run_vm "$@"
else
  host "$@"
fi
retries=$(wc -l < "$UBLKD_VM_BOOT_RETRY_LOG")
echo "# vm boot retries: $retries"
[ "$retries" = 0 ] || sed 's/^/#   /' "$UBLKD_VM_BOOT_RETRY_LOG"
node scripts/tap-summary.mjs .tap/*.tap
exit "$rc"
