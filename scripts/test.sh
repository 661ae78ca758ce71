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
# The VM runs of the kernels go side by side: each QEMU (single-threaded TCG) keeps one of the
# machine's cores busy, so two kernels take about as long as one. Each run's TAP is printed whole
# once both ended; meanwhile a line per finished test file shows progress.
run_vm() { # run_vm FILES...: the files on every kernel at once
  local kernel pid pids=() progress=()
  for kernel in "${kernels[@]}"; do
    : > ".tap/vm-$kernel.tap"
    run "vm-$kernel" "$kernel" "$@" &
    pid=$!
    pids+=("$pid")
    tail --pid="$pid" -n +1 -F ".tap/vm-$kernel.tap" 2>/dev/null | grep --line-buffered -E '^(not )?ok ' |
      sed -u "s/^/# [$kernel] /" &
    progress+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  wait "${progress[@]}"
  for kernel in "${kernels[@]}"; do echo "# ---- vm-$kernel ----"; cat ".tap/vm-$kernel.tap"; done
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
