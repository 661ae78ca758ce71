#!/usr/bin/env bash
# Prepares everything the VM tests, the demo and the bench need, idempotently:
#   - Debian packages: qemu-system-x86, busybox-static, cpio, xz-utils, fio, e2fsprogs, and for
#     the observability tests prometheus (with promtool) and chromium
#   - Debian's Linux 6.12 kernel (linux-image-6.12.*-amd64-unsigned): vmlinuz and the modules
#     we load (ublk_drv, loop, null_blk, ext4, the 9p stack), unpacked under the cache dir
#   - an initramfs (busybox + 9p modules + init) that mounts the host root read-only over 9p
# Cache: .cache/vm of the repo, or $UBLKD_VM_CACHE.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${UBLKD_VM_CACHE:-$repo/.cache/vm}
mkdir -p "$cache"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v file >/dev/null || need+=(file)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "prepare: installing ${need[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
# busybox-static may have been installed just now for the check above.
file -L /bin/busybox | grep -q 'statically linked' || { echo "prepare: /bin/busybox is not static" >&2; exit 1; }

package=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$' | cut -d' ' -f1 | sort -V | tail -n 1)
if [ -z "$package" ]; then
  apt-get update -q >/dev/null
  package=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$' | cut -d' ' -f1 | sort -V | tail -n 1)
fi
[ -n "$package" ] || { echo "prepare: no linux-image-6.12.*-amd64-unsigned in the apt sources" >&2; exit 1; }
release=${package#linux-image-}
release=${release%-unsigned}
# The stamp changes with the kernel and with this script or the init it packs.
recipe=$(cat "$repo/scripts/vm/prepare.sh" "$repo/scripts/vm/init" | sha1sum | cut -c1-12)
stamp="$cache/ready-$release-$recipe"
[ -f "$stamp" ] && exit 0

echo "prepare: fetching $package" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$package" >/dev/null 2>&1) || (cd "$work" && apt-get download "$package")
dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
moddir="$work/root/lib/modules/$release"

# Resolve module dependencies from each module's own modinfo "depends=" line; `order` lists
# them so that every module comes after its dependencies (scripts/vm/load-module.sh uses it).
declare -A wanted=()
order=()
resolve() {
  local name=$1 file deps dep
  [ -n "${wanted[$name]:-}" ] && return
  file=$(find "$moddir" -name "$name.ko.xz" -o -name "$name.ko" | head -n 1)
  [ -n "$file" ] || { echo "prepare: module $name not found" >&2; exit 1; }
  wanted[$name]=$file
  deps=$(xz -dcf "$file" | strings | sed -n 's/^depends=//p' | head -n 1)
  for dep in ${deps//,/ }; do resolve "$dep"; done
  order+=("$name")
}
for module in 9p 9pnet_virtio ublk_drv loop null_blk crc32c_generic ext4 virtio_net; do resolve "$module"; done

rm -rf "$cache/modules"
mkdir -p "$cache/modules"
for name in "${order[@]}"; do xz -dcf "${wanted[$name]}" > "$cache/modules/$name.ko"; done
printf '%s\n' "${order[@]}" > "$cache/modules/order"
cp "$work/root/boot/vmlinuz-$release" "$cache/vmlinuz"

# The initramfs only needs what mounting the root takes; the rest loads from $cache/modules.
initramfs="$work/initramfs"
mkdir -p "$initramfs"/{bin,proc,sys,dev,newroot,host,lib/modules}
cp /bin/busybox "$initramfs/bin/busybox"
for name in netfs 9pnet 9pnet_virtio 9p; do cp "$cache/modules/$name.ko" "$initramfs/lib/modules/"; done
cp "$repo/scripts/vm/init" "$initramfs/init"
chmod +x "$initramfs/init"
(cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1 > "$cache/initramfs.cpio.gz")
echo "$release" > "$cache/release"
rm -f "$cache"/ready-*
touch "$stamp"
echo "prepare: VM assets for $release ready in $cache" >&2
