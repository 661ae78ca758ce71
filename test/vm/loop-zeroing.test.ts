// Issue #14 item 13: the loop target advertises DISCARD and WRITE_ZEROES only as far as its
// backing can do them, so the block layer never sends a request that fails with EOPNOTSUPP
// (the kernel logs each one). On every kind of backing, a file on tmpfs, a file on ext4 and a
// block device, blkdiscard -z and blkdiscard either work or are cleanly not advertised, and
// mkfs.ext4 on a tmpfs file leaves no "operation not supported" in the kernel log.
import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

const kMiB = 2 ** 20

/** The kernel's log lines of failed requests: an unsupported one reads "operation not supported error, dev ...". */
const requestErrors = async (): Promise<string[]> =>
  (await vm.run('dmesg')).split('\n').filter((line) => /operation not supported|error, dev ublkb/.test(line))

const nonZeroBytes = async (device: string, mebibytes: number): Promise<number> =>
  Number((await vm.run(`dd if=${device} bs=1M count=${mebibytes} iflag=direct status=none | tr -d '\\000' | wc -c`)).trim())

const fillRandom = (device: string, mebibytes: number): Promise<string> =>
  vm.run(`dd if=/dev/urandom of=${device} bs=1M count=${mebibytes} oflag=direct status=none`)

t.before(async () => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop && ${repoRoot}/scripts/vm/load-module.sh ext4`)
  // An ext4 filesystem on a kernel loop device, for a file on ext4 and (a file of it behind a
  // second kernel loop device) a block device that can zero and discard.
  await vm.run('truncate -s 384M /tmp/ext4.img && mkfs.ext4 -q -F /tmp/ext4.img && mkdir -p /tmp/ext4 && ' +
    'mount -o loop /tmp/ext4.img /tmp/ext4')
})

t.teardown(async () => {
  await vm.exec('losetup -D; umount /tmp/ext4')
})

const backings = [
  { kind: 'a file on tmpfs', prepare: async () => { await vm.run('truncate -s 64M /tmp/tmpfs.img'); return '/tmp/tmpfs.img' } },
  { kind: 'a file on ext4', prepare: async () => { await vm.run('truncate -s 64M /tmp/ext4/file.img'); return '/tmp/ext4/file.img' } },
  {
    kind: 'a block device (kernel loop)',
    prepare: async () => {
      await vm.run('truncate -s 64M /tmp/ext4/block.img')
      return (await vm.run('losetup -f --show /tmp/ext4/block.img')).trim()
    },
  },
]

for (const backing of backings) {
  t.test(`loop on ${backing.kind}: blkdiscard -z and blkdiscard work or are not advertised`, async (t) => {
    const path = await backing.prepare()
    const device = await addDevice(vm, `-t loop -f ${path}`)
    const dev = device.blockDevice
    const queue = `/sys/block/ublkb${device.id}/queue`
    const writeZeroesMax = Number((await vm.run(`cat ${queue}/write_zeroes_max_bytes`)).trim())
    const discardMax = Number((await vm.run(`cat ${queue}/discard_max_bytes`)).trim())
    t.comment(`write_zeroes_max_bytes ${writeZeroesMax}, discard_max_bytes ${discardMax}`)
    await vm.run('dmesg -C')

    await fillRandom(dev, 8)
    const zero = await vm.exec(`blkdiscard -z -o 0 -l ${8 * kMiB} ${dev}`)
    t.equal(zero.code, 0, `blkdiscard -z (with or without the device's write zeroes): ${zero.stderr}`)
    t.equal(await nonZeroBytes(dev, 8), 0, 'the zeroed range reads as zeros')
    t.same(await requestErrors(), [], 'blkdiscard -z: no request failed in the kernel log')
    const allocatedKiB = async () => Number((await vm.run(`du -k ${path} | cut -f1`)).trim())
    const isFile = !path.startsWith('/dev/')
    if (isFile) t.ok(await allocatedKiB() >= 8 * 1024, 'write zeroes (NOUNMAP) left the range allocated')

    await fillRandom(dev, 8)
    // The kernel's BLKDISCARD ignores a device's EOPNOTSUPP: the log and the data tell.
    const discard = await vm.exec(`blkdiscard -o 0 -l ${8 * kMiB} ${dev}`)
    if (discardMax > 0) {
      t.equal(discard.code, 0, `blkdiscard: ${discard.stderr}`)
      t.equal(await nonZeroBytes(dev, 8), 0, 'the discarded range reads as zeros (punched, or zeroed by the block device)')
      if (isFile) t.ok(await allocatedKiB() < 1024, 'and the file\'s space is freed')
    } else {
      t.not(discard.code, 0, 'blkdiscard is refused: the device does not advertise discard')
      t.match(discard.stderr, /not supported/)
    }
    t.same(await requestErrors(), [], 'blkdiscard: no request failed in the kernel log')
  })
}

t.test('mkfs.ext4 on a loop device on a tmpfs file leaves no "operation not supported" in the kernel log', async (t) => {
  await vm.run('truncate -s 256M /tmp/mkfs.img && dmesg -C')
  const device = await addDevice(vm, '-t loop -f /tmp/mkfs.img')
  const mkfs = await vm.exec(`mkfs.ext4 -F ${device.blockDevice}`, { timeoutMs: 300_000 })
  t.equal(mkfs.code, 0, `mkfs.ext4: ${mkfs.stderr}`)
  t.same(await requestErrors(), [], 'no request failed in the kernel log')
  const fsck = await vm.exec(`fsck.ext4 -fn ${device.blockDevice}`)
  t.equal(fsck.code, 0, `fsck clean: ${fsck.stdout}${fsck.stderr}`)
})
