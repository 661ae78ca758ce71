#!/usr/bin/env bash
# Prepares everything the VM tests, the demo and the bench need, idempotently:
#   - Debian packages: qemu-system-x86, busybox-static, cpio, xz-utils, fio, e2fsprogs, xfsprogs,
#     and for the observability tests prometheus (with promtool) and chromium, for the service
#     tests systemd (systemd-analyze) and python3 (the notification socket's listener), for the
#     nbd target's tests the NBD servers and client (nbdkit, qemu-utils, nbd-server, nbd-client)
#     and openssl (test certificates)
#   - the guest kernels, each with the modules we load (ublk_drv, loop, null_blk, nbd, ext4, xfs, dm-mod,
#     veth, sch_netem,
#     the 9p stack, virtio_net), unpacked under $cache/<kernel>/:
#       6.12  Debian bookworm's linux-image-6.12.*-amd64-unsigned, from the system's apt sources
#       7.3   Debian trixie-backports' linux-binary-7.3.*+deb13-amd64 + linux-modules-7.3.*, fetched
#             through a private apt directory ($cache/apt) so that the system's sources stay as they are
#   - per kernel, an initramfs (busybox + that kernel's 9p modules + init) that mounts the host
#     root read-only over 9p
# Usage: prepare.sh [6.12] [7.3]   (no argument: both). Cache: .cache/vm of the repo, or $UBLKD_VM_CACHE.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${UBLKD_VM_CACHE:-$repo/.cache/vm}
mkdir -p "$cache"
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(6.12 7.3)

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v file >/dev/null || need+=(file)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v python3 >/dev/null || need+=(python3)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v nbd-server >/dev/null || need+=(nbd-server)
command -v nbd-client >/dev/null || need+=(nbd-client)
command -v openssl >/dev/null || need+=(openssl)
command -v ss >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "prepare: installing ${need[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
# busybox-static may have been installed just now for the check above.
file -L /bin/busybox | grep -q 'statically linked' || { echo "prepare: /bin/busybox is not static" >&2; exit 1; }

# The newest package of the system's sources whose name matches $1 (refreshing the lists once).
system_package() {
  local found
  found=$(apt-cache search --names-only "$1" | cut -d' ' -f1 | sort -V | tail -n 1)
  if [ -z "$found" ]; then
    apt-get update -q >/dev/null
    found=$(apt-cache search --names-only "$1" | cut -d' ' -f1 | sort -V | tail -n 1)
  fi
  echo "$found"
}

# apt with a private trixie-backports source, lists and cache: nothing of the system's apt changes.
backports=$cache/apt
backports_apt() {
  local tool=$1
  shift
  "$tool" -o Dir::Etc::SourceList="$backports/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$backports/lists" -o Dir::Cache="$backports/cache" "$@"
}
backports_package() {
  local found=
  mkdir -p "$backports/lists/partial" "$backports/cache/archives/partial"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main' \
    > "$backports/sources.list"
  [ -n "$(ls "$backports/lists" | grep -v partial)" ] &&
    found=$(backports_apt apt-cache search --names-only "$1" | cut -d' ' -f1 | sort -V | tail -n 1)
  if [ -z "$found" ]; then
    backports_apt apt-get update -q >/dev/null
    found=$(backports_apt apt-cache search --names-only "$1" | cut -d' ' -f1 | sort -V | tail -n 1)
  fi
  echo "$found"
}

# Every module the tests load, and the ones a module asks for at run time rather than by its
# modinfo (6.12's ext4, xfs and libcrc32c look crc32c up through the crypto API; 7.x links the library).
required_modules=(9p 9pnet_virtio ublk_drv loop null_blk nbd ext4 xfs virtio_net dm-mod veth sch_netem)
declare -A soft_deps=([ext4]=crc32c_generic [xfs]=crc32c_generic [libcrc32c]=crc32c_generic)

prepare_kernel() {
  local kernel=$1 release package modules_package out
  case "$kernel" in
    6.12)
      package=$(system_package '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$')
      [ -n "$package" ] || { echo "prepare: no linux-image-6.12.*-amd64-unsigned in the apt sources" >&2; return 1; }
      release=${package#linux-image-}
      release=${release%-unsigned}
      ;;
    7.3)
      package=$(backports_package '^linux-binary-7\.3\.[0-9]+\+deb13-amd64$')
      [ -n "$package" ] || { echo "prepare: no linux-binary-7.3.*+deb13-amd64 in trixie-backports" >&2; return 1; }
      release=${package#linux-binary-}
      modules_package=linux-modules-$release
      ;;
    *) echo "prepare: unknown kernel '$kernel' (6.12 or 7.3)" >&2; return 1 ;;
  esac
  out=$cache/$kernel
  # The stamp changes with the kernel release and with this script or the init it packs.
  local recipe stamp
  recipe=$(cat "$repo/scripts/vm/prepare.sh" "$repo/scripts/vm/init" | sha1sum | cut -c1-12)
  stamp="$out/ready-$release-$recipe"
  [ -f "$stamp" ] && return 0

  echo "prepare: fetching $package" >&2
  local work
  work=$(mktemp -d)
  scratch+=("$work")
  local vmlinuz moddir
  if [ "$kernel" = 6.12 ]; then
    (cd "$work" && apt-get download -q "$package" >/dev/null 2>&1) || (cd "$work" && apt-get download "$package")
    dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
    moddir="$work/root/lib/modules/$release"
    vmlinuz="$work/root/boot/vmlinuz-$release"
  else
    (cd "$work" && backports_apt apt-get download -q "$package" "$modules_package" >/dev/null 2>&1) ||
      (cd "$work" && backports_apt apt-get download "$package" "$modules_package")
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
    moddir="$work/root/usr/lib/modules/$release"
    vmlinuz="$moddir/vmlinuz"
  fi

  # Resolve module dependencies from each module's own modinfo "depends=" line (and soft_deps
  # where this kernel has them): `depends` gives scripts/vm/load-module.sh each module's, and
  # `order` lists the modules so that each comes after its dependencies.
  local -A wanted=()
  local -a order=() depends=()
  resolve() {
    local name=$1 optional=${2:-} file deps dep soft
    [ -n "${wanted[$name]:-}" ] && return 0
    file=$(find "$moddir" \( -name "$name.ko.xz" -o -name "$name.ko" \) | head -n 1)
    if [ -z "$file" ]; then
      # Built into this kernel: nothing to load.
      grep -q "/$name.ko" "$moddir/modules.builtin" 2>/dev/null && { wanted[$name]=builtin; return 0; }
      [ -n "$optional" ] && return 0
      echo "prepare: module $name not found in $release" >&2
      return 1
    fi
    wanted[$name]=$file
    deps=$(xz -dcf "$file" | strings | sed -n 's/^depends=//p' | head -n 1)
    for dep in ${deps//,/ }; do resolve "$dep" || return 1; done
    for soft in ${soft_deps[$name]:-}; do
      resolve "$soft" optional || return 1
      [ -f "${wanted[$soft]:-}" ] && deps="$deps,$soft"
    done
    order+=("$name")
    depends+=("$name:${deps#,}")
  }
  # The initramfs needs only what mounting the root takes: 9p and its dependencies, first.
  resolve 9p && resolve 9pnet_virtio || return 1
  local -a boot_modules=("${order[@]}")
  for module in "${required_modules[@]}"; do resolve "$module" || return 1; done

  rm -rf "$out"
  mkdir -p "$out/modules"
  for name in "${order[@]}"; do xz -dcf "${wanted[$name]}" > "$out/modules/$name.ko"; done
  printf '%s\n' "${depends[@]}" > "$out/modules/depends"
  cp "$vmlinuz" "$out/vmlinuz"

  local initramfs="$work/initramfs"
  mkdir -p "$initramfs"/{bin,proc,sys,dev,newroot,host,lib/modules}
  cp /bin/busybox "$initramfs/bin/busybox"
  for name in "${boot_modules[@]}"; do cp "$out/modules/$name.ko" "$initramfs/lib/modules/"; done
  printf '%s\n' "${boot_modules[@]}" > "$initramfs/lib/modules/order"
  cp "$repo/scripts/vm/init" "$initramfs/init"
  chmod +x "$initramfs/init"
  (cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1 > "$out/initramfs.cpio.gz")
  echo "$release" > "$out/release"
  touch "$stamp"
  echo "prepare: VM assets for $release ready in $out" >&2
}

scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT
for kernel in "${kernels[@]}"; do prepare_kernel "$kernel"; done
