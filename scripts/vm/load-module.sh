#!/bin/sh
# Inside the test VM: load a kernel module from the VM module cache, dependencies first.
#   load-module.sh null_blk nr_devices=1 queue_mode=2
set -eu
dir=$(cd "$(dirname "$0")/../.." && pwd)/.cache/vm/modules
name=$1
shift
for module in $(cat "$dir/order"); do
  [ "$module" = "$name" ] && break
  # Only dependencies of $name matter, but loading an unrelated earlier one is harmless.
  grep -q "^$module " /proc/modules 2>/dev/null || busybox insmod "$dir/$module.ko" 2>/dev/null || true
done
grep -q "^$name " /proc/modules || busybox insmod "$dir/$name.ko" "$@"
