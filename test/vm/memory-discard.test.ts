// Issue #14 item 1: DISCARD and WRITE_ZEROES on a memory device release its pages instead of
// zero-filling them, in bounded work per loop turn. Large RAM disks in a small guest (2 GiB):
// blkdiscard makes the daemon smaller and keeps the data outside the range, blkdiscard -z reads
// back zeros, and mkfs (which discards the whole device first) neither stalls a queue nor runs
// the daemon out of memory.
import t, { type Test } from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, listDevices } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm({ memMiB: 2048 })
t.teardown(() => vm.shutdown())

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

const kMiB = 2 ** 20
const kGiB = 2 ** 30

async function rssKiB(pid: number): Promise<number> {
  t.comment((await vm.run(`grep -E '^Rss' /proc/${pid}/status | tr -s ' \\t\\n' ' '`)).trim())
  const kib = Number((await vm.run(`awk '/^VmRSS:/ {print $2}' /proc/${pid}/status`)).trim())
  if (!(kib > 0)) throw new Error(`daemon ${pid} has no resident memory: it is gone`)
  return kib
}

/** The device's range [offsetBytes, + bytes) (multiples of 512) copied to /tmp/range, then fed to `filter`. */
async function readRange(device: string, offsetBytes: number, bytes: number, filter: string): Promise<string> {
  const bs = offsetBytes % kMiB === 0 && bytes % kMiB === 0 ? kMiB : 512
  return (await vm.run(`dd if=${device} of=/tmp/range bs=${bs} skip=${offsetBytes / bs} count=${bytes / bs} iflag=direct ` +
    `status=none && < /tmp/range ${filter}; rm -f /tmp/range`)).trim()
}

const md5 = async (device: string, offsetBytes: number, bytes: number): Promise<string> =>
  (await readRange(device, offsetBytes, bytes, 'md5sum')).split(' ')[0]!

/** Bytes other than 0 in the device's range. */
const nonZeroBytes = async (device: string, offsetBytes: number, bytes: number): Promise<number> =>
  Number(await readRange(device, offsetBytes, bytes, 'tr -d \'\\000\' | wc -c'))

async function writePattern(device: string, offsetBytes: number): Promise<void> {
  await vm.run(`dd if=/tmp/pattern of=${device} bs=1M seek=${offsetBytes / kMiB} oflag=direct conv=notrunc status=none`)
}

/** The device is listed LIVE and serves a read and a write (of what it read: a filesystem on it
 *  stays intact); the daemon logged no stalled queue. */
async function assertAlive(t: Test, id: number): Promise<void> {
  const device = (await listDevices(vm)).find((d) => d.id === id)
  t.equal(device?.state, 'LIVE', `device ${id} is still LIVE`)
  const io = await vm.exec(`dd if=/dev/ublkb${id} of=/tmp/head bs=64k count=16 iflag=direct status=none && ` +
    `dd if=/tmp/head of=/dev/ublkb${id} bs=64k count=16 oflag=direct conv=notrunc status=none`)
  t.equal(io.code, 0, `I/O works: ${io.stderr}`)
  t.notMatch(await vm.run('cat /run/ublkd/daemon.log'), /stalled/, 'no queue stalled')
  t.notMatch(await vm.run('dmesg'), /Out of memory|oom-kill/, 'nothing was killed for lack of memory')
}

t.before(async () => {
  await vm.run('head -c 64M /dev/urandom > /tmp/pattern')
})

t.test('blkdiscard on an 8G memory device releases the pages and keeps the data outside the range', async (t) => {
  const device = await addDevice(vm, '-t memory --size 8G')
  const dev = device.blockDevice
  const pattern = (await vm.run('md5sum < /tmp/pattern')).split(' ')[0]!
  const offsets = [0, 3 * kGiB, 5 * kGiB, 8 * kGiB - 64 * kMiB]
  for (const offset of offsets) await writePattern(dev, offset)
  const written = await rssKiB(device.daemonPid)
  t.ok(written > 256 * 1024, `the daemon holds the 256 MiB written (${written} KiB)`)

  const range = await vm.exec(`blkdiscard -o ${2 * kGiB} -l ${4 * kGiB} ${dev}`, { timeoutMs: 120_000 })
  t.equal(range.code, 0, `blkdiscard of 4 GiB in the middle: ${range.stderr}`)
  const afterRange = await rssKiB(device.daemonPid)
  t.ok(written - afterRange > 120 * 1024, `RSS dropped by ${written - afterRange} KiB (128 MiB discarded)`)
  t.equal(await md5(dev, 0, 64 * kMiB), pattern, 'data before the range intact')
  t.equal(await md5(dev, 8 * kGiB - 64 * kMiB, 64 * kMiB), pattern, 'data after the range intact')
  t.equal(await nonZeroBytes(dev, 3 * kGiB, 64 * kMiB), 0, 'the discarded data reads as zeros')
  await assertAlive(t, device.id)

  const whole = await vm.exec(`blkdiscard ${dev}`, { timeoutMs: 120_000 })
  t.equal(whole.code, 0, `blkdiscard of the whole device: ${whole.stderr}`)
  const afterWhole = await rssKiB(device.daemonPid)
  t.ok(afterRange - afterWhole > 120 * 1024, `RSS dropped by another ${afterRange - afterWhole} KiB`)
  t.equal(await nonZeroBytes(dev, 0, 64 * kMiB), 0, 'everything reads as zeros')
  await assertAlive(t, device.id)
})

t.test('blkdiscard -z (write zeroes) on an 8G memory device reads back zeros, unaligned edges too', async (t) => {
  const device = await addDevice(vm, '-t memory --size 8G')
  const dev = device.blockDevice
  await writePattern(dev, kGiB)
  // 512-byte aligned, not page aligned: the edges are zeroed in place.
  const zero = await vm.exec(`blkdiscard -z -o ${kGiB + 512} -l ${32 * kMiB} ${dev}`)
  t.equal(zero.code, 0, zero.stderr)
  const sector = (offset: number) => nonZeroBytes(dev, offset, 512)
  t.ok(await sector(kGiB) > 0, 'the sector before the range keeps its data')
  t.equal(await sector(kGiB + 512), 0, 'the first zeroed sector reads as zeros')
  t.equal(await sector(kGiB + 32 * kMiB), 0, 'the last zeroed sector reads as zeros')
  t.ok(await sector(kGiB + 32 * kMiB + 512) > 0, 'the sector after the range keeps its data')
  t.equal(await nonZeroBytes(dev, kGiB + kMiB, 30 * kMiB), 0, 'the zeroed range reads as zeros')
  const whole = await vm.exec(`blkdiscard -z ${dev}`, { timeoutMs: 300_000 })
  t.equal(whole.code, 0, `blkdiscard -z of the whole 8 GiB: ${whole.stderr}`)
  t.equal(await nonZeroBytes(dev, kGiB, 64 * kMiB), 0, 'reads as zeros')
  await assertAlive(t, device.id)
})

t.test('mkfs.ext4 on a 32G memory device succeeds and the filesystem checks clean', async (t) => {
  const device = await addDevice(vm, '-t memory --size 32G')
  const mkfs = await vm.exec(`mkfs.ext4 -q -F ${device.blockDevice}`, { timeoutMs: 300_000 })
  t.equal(mkfs.code, 0, `mkfs.ext4: ${mkfs.stderr}`)
  const fsck = await vm.exec(`fsck.ext4 -fn ${device.blockDevice}`, { timeoutMs: 300_000 })
  t.equal(fsck.code, 0, `fsck clean: ${fsck.stdout}${fsck.stderr}`)
  await assertAlive(t, device.id)
})

t.test('mkfs.xfs on a 512M memory device succeeds with the device live afterwards', async (t) => {
  const device = await addDevice(vm, '-t memory --size 512M')
  const mkfs = await vm.exec(`mkfs.xfs -q -f ${device.blockDevice}`, { timeoutMs: 300_000 })
  t.equal(mkfs.code, 0, `mkfs.xfs: ${mkfs.stderr}`)
  await assertAlive(t, device.id)
  const repair = await vm.exec(`xfs_repair -n ${device.blockDevice}`, { timeoutMs: 300_000 })
  t.equal(repair.code, 0, `xfs_repair -n clean: ${repair.stdout}${repair.stderr}`)
})
