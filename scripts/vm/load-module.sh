#!/bin/sh
# Inside the test VM: load a kernel module of the booted kernel (prepare.sh's cache, named by
# the kernel command line's ublkd.modules), its dependencies first.
#   load-module.sh null_blk nr_devices=1 queue_mode=2
# A module that is loaded already keeps its parameters, so one loaded with other values than
# those asked for is unloaded and loaded again; if it cannot be unloaded (in use), that is an
# error rather than a silent run with the old values.
set -eu
dir=$(sed -n 's/.*\bublkd\.modules=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$dir" ] && [ -f "$dir/depends" ] || { echo "load-module.sh: no module cache (ublkd.modules=$dir)" >&2; exit 1; }

# /proc/modules and /sys/module name modules with underscores (dm-mod.ko is dm_mod).
loaded() { grep -q "^$(echo "$1" | tr - _) " /proc/modules; }

load() {
  local module=$1 dep
  shift
  for dep in $(sed -n "s/^$module://p" "$dir/depends" | tr ',' ' '); do loaded "$dep" || load "$dep"; done
  busybox insmod "$dir/$module.ko" "$@"
}

name=$1
shift
if loaded "$name"; then
  stale=
  for param in "$@"; do
    key=${param%%=*}
    value=${param#*=}
    current=$(cat "/sys/module/$(echo "$name" | tr - _)/parameters/$key" 2>/dev/null) || current='?'
    [ "$current" = "$value" ] || stale="$stale $key=$current (want $value)"
  done
  [ -z "$stale" ] && exit 0
  busybox rmmod "$name" 2>/dev/null || {
    echo "load-module.sh: $name is loaded with$stale and cannot be unloaded (in use)" >&2
    exit 1
  }
fi
load "$name" "$@"
