// ublkd resize against the real driver: UPDATE_SIZE on Linux 7.3 (ext4 and xfs grown online on
// a mounted loop device, data intact, fsck clean; a shrink of a mounted device refused; the size
// kept across a daemon death; memory up to its --max-size; null any size), and a clear refusal
// on 6.12.
import t from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { addDevice, commentLogsIfFailed, deleteDevicesLeft, listDevices, startDaemon, ublkd, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
const hasUpdateSize = vmKernel !== '6.12'
const MiB = 2 ** 20

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await vm.exec('umount /tmp/rs-mnt')
  await deleteDevicesLeft(vm)
})

async function deviceNow(id: number): Promise<DeviceSummary> {
  const device = (await listDevices(vm)).find((candidate) => candidate.id === id)
  if (!device) throw new Error(`device ${id} is not listed`)
  return device
}

async function sysfsBytes(id: number): Promise<number> {
  return Number(await vm.run(`cat /sys/block/ublkb${id}/size`)) * 512
}

if (!hasUpdateSize) {
  t.test('6.12: resize is refused, naming the kernel feature; the device keeps its size', async (t) => {
    const device = await addDevice(vm, '-t null --size 1G')
    const result = await ublkd(vm, `resize -n ${device.id} --size 2G`)
    t.equal(result.code, 1)
    t.match(result.stderr, /ublkd resize needs UBLK_F_UPDATE_SIZE \(Linux 6\.16 or later\): this kernel \(6\.12[^)]*\) does not offer it \[UBLKD_ERR_UNSUPPORTED\]/)
    t.equal(await sysfsBytes(device.id), 1024 * MiB)
    t.equal((await deviceNow(device.id)).sizeBytes, 1024 * MiB)
  })
} else {
  t.test('ext4 mounted on a loop device grows online: resize2fs, data intact, fsck clean, the file grown', async (t) => {
    await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4`)
    await vm.run('rm -f /tmp/rs-ext4.img && truncate -s 128M /tmp/rs-ext4.img && mkdir -p /tmp/rs-mnt')
    const device = await addDevice(vm, '-t loop -f /tmp/rs-ext4.img')
    await vm.run(`mkfs.ext4 -q -F ${device.blockDevice} && mount ${device.blockDevice} /tmp/rs-mnt`)
    await vm.run('head -c 40M /dev/urandom > /tmp/rs-mnt/data && sync')
    const before = await vm.run('md5sum < /tmp/rs-mnt/data')
    const resized = await ublkd(vm, `resize -n ${device.id} --size 256M --json`)
    t.equal(resized.code, 0, resized.stderr)
    t.equal((JSON.parse(resized.stdout) as DeviceSummary).sizeBytes, 256 * MiB, 'the reply has the new size')
    t.equal(await sysfsBytes(device.id), 256 * MiB, 'the kernel has it')
    t.equal((await deviceNow(device.id)).sizeBytes, 256 * MiB, 'list has it')
    t.equal(Number(await vm.run('stat -c %s /tmp/rs-ext4.img')), 256 * MiB, 'the backing file grew')
    const grow = await vm.exec(`resize2fs ${device.blockDevice}`, { timeoutMs: 120_000 })
    t.equal(grow.code, 0, `resize2fs: ${grow.stderr}`)
    const sizeKiB = Number(await vm.run("df -k --output=size /tmp/rs-mnt | tail -1"))
    t.ok(sizeKiB > 200 * 1024, `the filesystem is bigger now: ${sizeKiB} KiB`)
    await vm.run('head -c 100M /dev/zero > /tmp/rs-mnt/more && sync')
    t.equal(await vm.run('md5sum < /tmp/rs-mnt/data'), before, 'the data written before is intact')

    const shrink = await ublkd(vm, `resize -n ${device.id} --size 64M`)
    t.equal(shrink.code, 1, 'shrinking a mounted device is refused')
    t.match(shrink.stderr, /device \d+ is in use \(mounted on \/tmp\/rs-mnt.*shrink the filesystem first, or resize --force \[UBLKD_ERR_BUSY\]/)
    t.equal(await sysfsBytes(device.id), 256 * MiB, 'the size is unchanged')

    await vm.run('umount /tmp/rs-mnt')
    const fsck = await vm.exec(`e2fsck -fn ${device.blockDevice}`, { timeoutMs: 120_000 })
    t.equal(fsck.code, 0, `fsck clean: ${fsck.stdout}`)
  })

  t.test('xfs mounted on a loop device grows online: xfs_growfs, data intact, xfs_repair clean', async (t) => {
    await vm.run(`${repoRoot}/scripts/vm/load-module.sh xfs`)
    await vm.run('rm -f /tmp/rs-xfs.img && truncate -s 320M /tmp/rs-xfs.img && mkdir -p /tmp/rs-mnt')
    const device = await addDevice(vm, '-t loop -f /tmp/rs-xfs.img')
    const mkfs = await vm.exec(`mkfs.xfs -q -f ${device.blockDevice}`, { timeoutMs: 120_000 })
    t.equal(mkfs.code, 0, `mkfs.xfs: ${mkfs.stderr}`)
    await vm.run(`mount ${device.blockDevice} /tmp/rs-mnt && head -c 32M /dev/urandom > /tmp/rs-mnt/data && sync`)
    const before = await vm.run('md5sum < /tmp/rs-mnt/data')
    const resized = await ublkd(vm, `resize -n ${device.id} --size 640M`)
    t.equal(resized.code, 0, resized.stderr)
    t.match(resized.stdout, /640 MiB/)
    const grow = await vm.exec('xfs_growfs /tmp/rs-mnt', { timeoutMs: 120_000 })
    t.equal(grow.code, 0, `xfs_growfs: ${grow.stderr}`)
    const sizeKiB = Number(await vm.run("df -k --output=size /tmp/rs-mnt | tail -1"))
    t.ok(sizeKiB > 500 * 1024, `the filesystem is bigger now: ${sizeKiB} KiB`)
    t.equal(await vm.run('md5sum < /tmp/rs-mnt/data'), before, 'the data written before is intact')
    await vm.run('umount /tmp/rs-mnt')
    const repair = await vm.exec(`xfs_repair -n ${device.blockDevice}`, { timeoutMs: 120_000 })
    t.equal(repair.code, 0, `xfs_repair clean: ${repair.stderr}`)
  })

  t.test('the new size survives a daemon death (the record keeps it); an unused device shrinks', async (t) => {
    await vm.run('rm -f /tmp/rs-keep.img && truncate -s 64M /tmp/rs-keep.img')
    const device = await addDevice(vm, '-t loop -f /tmp/rs-keep.img --recovery')
    t.equal((await ublkd(vm, `resize -n ${device.id} --size 96M`)).code, 0)
    await vm.run(`kill -9 ${device.daemonPid}`)
    await waitInVm(vm, `! kill -0 ${device.daemonPid}`, 30_000)
    await startDaemon(vm)
    const back = await deviceNow(device.id)
    t.equal(back.state, 'LIVE')
    t.equal(back.sizeBytes, 96 * MiB, 'the re-attached device has the new size')
    t.equal(await sysfsBytes(device.id), 96 * MiB)
    const shrink = await ublkd(vm, `resize -n ${device.id} --size 32M`)
    t.equal(shrink.code, 0, `nothing uses it: shrink allowed: ${shrink.stderr}`)
    t.equal(await sysfsBytes(device.id), 32 * MiB)
    t.equal(Number(await vm.run('stat -c %s /tmp/rs-keep.img')), 96 * MiB, 'the backing file is not cut')
  })

  t.test('memory grows up to its --max-size; a shrink gives the memory back and the range reads zeros when grown again', async (t) => {
    const memory = await addDevice(vm, '-t memory --size 16M --max-size 64M')
    t.equal((await ublkd(vm, `resize -n ${memory.id} --size 48M`)).code, 0)
    t.equal(await sysfsBytes(memory.id), 48 * MiB)
    await vm.run(`dd if=/dev/urandom of=${memory.blockDevice} bs=1M seek=16 count=32 oflag=direct status=none`)
    const head = await vm.run(`dd if=${memory.blockDevice} bs=1M count=16 iflag=direct status=none | md5sum`)
    const rss = async () => Number((await vm.run(`grep VmRSS /proc/${memory.daemonPid}/status`)).replace(/\D+/g, '')) * 1024
    const before = await rss()
    t.equal((await ublkd(vm, `resize -n ${memory.id} --size 16M`)).code, 0, 'nothing uses it: it shrinks')
    const after = await rss()
    t.ok(before - after > 24 * MiB, `the 32 MiB past the new end went back: RSS ${before} -> ${after}`)
    t.equal((await ublkd(vm, `resize -n ${memory.id} --size 64M`)).code, 0)
    const tail = await vm.run(`dd if=${memory.blockDevice} bs=1M skip=16 count=48 iflag=direct status=none | md5sum`)
    t.equal(tail, await vm.run('head -c 48M /dev/zero | md5sum'), 'grown again: the released range reads as zeros')
    t.equal(await vm.run(`dd if=${memory.blockDevice} bs=1M count=16 iflag=direct status=none | md5sum`), head, 'the first 16 MiB are intact')
    const over = await ublkd(vm, `resize -n ${memory.id} --size 65M`)
    t.equal(over.code, 2)
    t.match(over.stderr, /a memory device grows up to the --max-size it was created with \(67108864 bytes\)/)
  })

  t.test('null takes any size; bad sizes and targets that cannot resize are refused', async (t) => {
    const nullDevice = await addDevice(vm, '-t null --size 1G')
    t.equal((await ublkd(vm, `resize -n ${nullDevice.id} --size 4T`)).code, 0)
    t.equal(await sysfsBytes(nullDevice.id), 4 * 2 ** 40)
    const fault = await addDevice(vm, '-t fault --size 16M --fault error --fault-at 1000000')
    const refusals: [string, RegExp][] = [
      [`resize -n ${fault.id} --size 32M`, /a fault device cannot change its size \[UBLKD_ERR_USAGE\]/],
      [`resize -n ${nullDevice.id} --size 1000`, /--size must be a positive multiple of the device's logical block size 512, got 1000/],
      [`resize -n ${nullDevice.id} --size lots`, /--size: 'lots' is not a size/],
      [`resize -n ${nullDevice.id}`, /resize needs the new size: --size SIZE/],
      ['resize -n 999 --size 1G', /no device 999 in this daemon \[UBLKD_ERR_NO_SUCH_DEVICE\]/],
    ]
    for (const [args, message] of refusals) {
      const result = await ublkd(vm, args)
      t.not(result.code, 0, args)
      t.match(result.stderr, message, args)
    }
    t.equal(await sysfsBytes(fault.id), 16 * MiB)
    t.equal(await sysfsBytes(nullDevice.id), 4 * 2 ** 40)
  })
}
