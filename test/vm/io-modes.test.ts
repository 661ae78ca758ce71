// --io-mode (issue #12): copy and user-copy on the real driver. Each mode of the memory target
// passes fio verify at block sizes from 512 B to 1 MiB and several depths, mkfs.ext4 + fsck and
// discard; a user-copy queue that dies is healed in-process with nothing lost; auto picks each
// target's mode; a mode a target does not serve is refused before anything exists; and a
// user-copy device's memory does not grow with its depth (there are no per-tag buffers). Zero
// copy (7.x, UBLK_F_AUTO_BUF_REG) for loop and null: verify, a filesystem, zeros where zeros are
// due (null reads, a file shorter than the device) and never stale memory; refused on 6.12. A
// zero-copy loop device takes its backing's DMA alignment and segment limits.
import t, { type Test } from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, ublkd, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const vm = await bootVm({ memMiB: 2048 })
t.teardown(() => vm.shutdown())
t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

const kMiB = 2 ** 20

async function rssKiB(pid: number): Promise<number> {
  return Number((await vm.run(`awk '/^VmRSS:/ {print $2}' /proc/${pid}/status`)).trim())
}

async function verify(t: Test, device: DeviceSummary, bs: string, iodepth: number, sizeMiB: number, extra = ''): Promise<void> {
  const { result, report } = await fio(vm, `--name=v --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    `--rw=randwrite --bs=${bs} --iodepth=${iodepth} --size=${sizeMiB}M --verify=crc32c --verify_fatal=1 ${extra}`)
  const job = report?.jobs[0]
  t.ok(result.code === 0 && job?.error === 0 && job.read.io_bytes === sizeMiB * kMiB,
    `${device.ioMode}: bs ${bs} qd ${iodepth}: written and verified ${job?.read.io_bytes ?? 0} bytes ${result.stderr}`)
}

// The smallest and largest requests at depths 1 and 64, then every size between mixed at depth 32
// (2048 requests of 512 B: each costs about a millisecond of the emulated CPU).
async function verifyMatrix(t: Test, device: DeviceSummary): Promise<void> {
  for (const [bs, qd, sizeMiB] of [['512', 1, 1], ['64k', 64, 8], ['1M', 8, 8]] as const) await verify(t, device, bs, qd, sizeMiB)
  await verify(t, device, '4k', 32, 8, '--bsrange=512-256k --offset=64M')
}

t.test('memory in each mode: fio verify from 512 B to 1 MiB at depths 1 to 64, mkfs.ext4 + fsck, discard', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4`)
  for (const mode of ['user-copy', 'copy'] as const) {
    const device = await addDevice(vm, `-t memory --size 256M --io-mode ${mode}`)
    t.equal(device.ioMode, mode, `list shows ${mode}`)
    t.equal(device.flags.includes('UBLK_F_USER_COPY'), mode === 'user-copy', 'the kernel flag follows the mode')
    await verifyMatrix(t, device)

    const mkfs = await vm.exec(`mkfs.ext4 -q -F ${device.blockDevice} && mkdir -p /tmp/m && mount ${device.blockDevice} /tmp/m && ` +
      'head -c 8M /dev/urandom > /tmp/f && cp /tmp/f /tmp/m/f && sync && umount /tmp/m && ' +
      `fsck.ext4 -fn ${device.blockDevice} && mount ${device.blockDevice} /tmp/m && cmp /tmp/f /tmp/m/f; s=$?; umount /tmp/m; exit $s`)
    t.equal(mkfs.code, 0, `${mode}: mkfs.ext4, a file written, fsck clean, the file reads back ${mkfs.stderr}`)

    await vm.run(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=4 oflag=direct status=none && ` +
      `blkdiscard -o 1048576 -l 1048576 ${device.blockDevice} && blkdiscard -z -o 2097152 -l 1048576 ${device.blockDevice}`)
    const zeros = await vm.run(`dd if=${device.blockDevice} bs=1M skip=1 count=2 iflag=direct status=none | tr -d '\\000' | wc -c`)
    const kept = await vm.run(`dd if=${device.blockDevice} bs=1M skip=3 count=1 iflag=direct status=none | tr -d '\\000' | wc -c`)
    t.ok(Number(zeros) === 0 && Number(kept) > 0, `${mode}: discarded and zeroed ranges read zeros (${zeros.trim()} other bytes), the rest is kept`)
    t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
  }
})

t.test('user-copy: a queue that dies under fio is healed in-process and fio sees no error', async (t) => {
  const device = await addDevice(vm, '-t fault --size 64M --fault throw --fault-at 2000 --recovery --io-mode user-copy')
  t.equal(device.ioMode, 'user-copy')
  const { result, report } = await fio(vm, `--name=v --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1')
  t.ok(result.code === 0 && report?.jobs[0]?.error === 0, `fio verify passed through the heal ${result.stderr}`)
  const [after] = await listDevices(vm)
  t.ok(after?.state === 'LIVE' && after.recoveries === 1, `healed once, LIVE (${after?.state}, recoveries ${after?.recoveries})`)
  t.equal(after?.ioMode, 'user-copy', 'in the same mode')
})

t.test('auto picks each target\'s mode; a mode a target does not serve is refused before anything exists', async (t) => {
  const memory = await addDevice(vm, '-t memory --size 16M')
  const withBuffers = await addDevice(vm, '-t memory --size 16M --mlock-buffers')
  const nul = await addDevice(vm, '-t null --size 16M')
  await vm.run('truncate -s 16M /tmp/modes.img')
  const loop = await addDevice(vm, '-t loop -f /tmp/modes.img')
  t.same([memory.ioMode, withBuffers.ioMode, nul.ioMode, loop.ioMode], ['user-copy', 'copy', 'copy', 'copy'],
    'memory: user-copy (copy with a buffer option); null and loop: copy')
  const nodes = await ublkNodes(vm)
  const refused: [string, RegExp][] = [
    ['-t loop -f /tmp/modes2.img --io-mode user-copy', /the loop target serves --io-mode copy or zero-copy, not user-copy/],
    ['-t null --io-mode user-copy', /the null target serves --io-mode copy or zero-copy, not user-copy/],
    ['-t memory --size 16M --io-mode zero-copy', /the memory target serves --io-mode user-copy or copy, not zero-copy/],
    ['-t memory --size 16M --io-mode user-copy --huge-page-buffers', /--io-mode user-copy has none/],
    ['-t memory --size 16M --io-mode zero', /--io-mode must be auto, copy, user-copy/],
  ]
  await vm.run('truncate -s 16M /tmp/modes2.img')
  for (const [args, message] of refused) {
    const result = await ublkd(vm, `add ${args}`)
    t.ok(result.code !== 0 && message.test(result.stderr), `${args}: ${result.stderr.trim()}`)
  }
  t.same(await ublkNodes(vm), nodes, 'no node was created by the refused adds')
  t.equal((await listDevices(vm)).length, 4)
})

t.test('a user-copy device\'s daemon memory does not grow with its depth; a copy device\'s does', async (t) => {
  // Reads of a never-written RAM disk: the store stays empty, so what grows is the buffers. A
  // copy device of depth 4096 would map 2 GiB of them, more than this guest lets it: 1024, 512
  // reads in flight (256 MiB). Fewer (256 at depth 512) failed every read with EIO in CI runs
  // on 7.3 and on 6.12: the queue copied them all in one turn, the stall watch found it there
  // ("no loop turn for 3038 ms (thread in state R)") and removed the device. The memory target
  // now copies at most 16 MiB per turn.
  const grow = async (mode: string, depth: number): Promise<number> => {
    const device = await addDevice(vm, `-t memory --size 1G --depth ${depth} --io-mode ${mode}`)
    await waitInVm(vm, `test -e ${device.blockDevice}`, 10_000)
    const before = await rssKiB(device.daemonPid)
    const { result } = await fio(vm, `--name=r --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
      '--rw=randread --bs=512k --iodepth=512 --iodepth_batch_submit=512 --number_ios=2048 --size=1G')
    t.equal(result.code, 0, result.stderr)
    const after = await rssKiB(device.daemonPid)
    await ublkd(vm, `del -n ${device.id}`)
    return after - before
  }
  const userCopy = await grow('user-copy', 4096)
  const copy = await grow('copy', 1024)
  t.ok(userCopy < 64 * 1024, `user-copy at depth 4096, 512 requests of 512 KiB in flight: RSS grew ${userCopy} KiB (< 64 MiB)`)
  t.ok(copy > userCopy + 64 * 1024, `copy at depth 1024, the same reads: RSS grew ${copy} KiB (its buffers)`)
})

t.test('loop on a block device: zero copy takes its DMA alignment and segment limits, copy mode keeps the kernel\'s', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop && rm -f /tmp/zcb.img && truncate -s 64M /tmp/zcb.img`)
  const backing = (await vm.run('losetup -f --show /tmp/zcb.img')).trim()
  t.teardown(() => vm.run(`losetup -d ${backing}`))
  await vm.run(`dd if=/dev/urandom of=${backing} bs=1M count=1 oflag=direct status=none`)
  const limits = async (device: string): Promise<number[]> =>
    (await vm.run(`cd /sys/block/${device.replace('/dev/', '')}/queue && cat dma_alignment max_segments max_segment_size`))
      .trim().split(/\s+/).map(Number)
  const misalignedRead = (device: string): Promise<string> => vm.run(`python3 ${repoRoot}/test/lib/misaligned-read.py ${device} 8`)
  const [backingAlignment, ...backingSegments] = await limits(backing)
  t.ok(backingAlignment! >= 8, `the backing's DMA alignment mask (${backingAlignment}) refuses a buffer 8 bytes past a page`)
  t.equal((await misalignedRead(backing)).trim(), 'EINVAL', 'the backing refuses it')

  // Copy mode: the daemon's buffers sit between, so the device keeps ublk's own limits (a
  // 4-byte DMA alignment) and serves the misaligned buffer.
  const copy = await addDevice(vm, `-t loop -f ${backing} --io-mode copy`)
  t.same(await limits(copy.blockDevice), [3, 65535, 4294967295], 'copy mode: ublk\'s defaults')
  t.equal((await misalignedRead(copy.blockDevice)).trim(), 'read 4096 same', 'a buffer 8 bytes past a page is served')
  t.equal((await ublkd(vm, `del -n ${copy.id}`)).code, 0)
  if (vmKernel === '6.12') return

  // Zero copy: the request's pages go to the backing's O_DIRECT I/O as they are. Without the
  // backing's alignment the misaligned read would reach it and fail there, with EIO.
  const zeroCopy = await addDevice(vm, `-t loop -f ${backing} --io-mode zero-copy`)
  t.equal(zeroCopy.ioMode, 'zero-copy')
  t.same(await limits(zeroCopy.blockDevice), [backingAlignment, ...backingSegments],
    'zero copy: the backing\'s DMA alignment, max_segments and max_segment_size')
  t.equal((await misalignedRead(zeroCopy.blockDevice)).trim(), 'EINVAL', 'refused at submission, as the backing itself does')
  await verify(t, zeroCopy, '4k', 32, 8, '--bsrange=512-256k')
})

if (vmKernel === '6.12') {
  t.test('6.12: --io-mode zero-copy is refused, naming the feature; nothing is created', async (t) => {
    const nodes = await ublkNodes(vm)
    const result = await ublkd(vm, 'add -t null --size 16M --io-mode zero-copy')
    t.equal(result.code, 1)
    t.match(result.stderr, /--io-mode zero-copy needs UBLK_F_AUTO_BUF_REG \(Linux 6\.16 or later\).*\[UBLKD_ERR_UNSUPPORTED\]/)
    t.same(await ublkNodes(vm), nodes)
  })
} else {
  t.test('zero copy, loop: fio verify from 512 B to 1 MiB, mkfs.ext4 + fsck, buffered reads; the kernel flag and the mode shown', async (t) => {
    await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4 && truncate -s 256M /tmp/zc.img`)
    const device = await addDevice(vm, '-t loop -f /tmp/zc.img --io-mode zero-copy')
    t.equal(device.ioMode, 'zero-copy')
    t.ok(device.flags.includes('UBLK_F_AUTO_BUF_REG'), 'the device has UBLK_F_AUTO_BUF_REG')
    await verifyMatrix(t, device)
    const mkfs = await vm.exec(`mkfs.ext4 -q -F ${device.blockDevice} && mkdir -p /tmp/m && mount ${device.blockDevice} /tmp/m && ` +
      'head -c 8M /dev/urandom > /tmp/f && cp /tmp/f /tmp/m/f && sync && umount /tmp/m && ' +
      `fsck.ext4 -fn ${device.blockDevice} && mount ${device.blockDevice} /tmp/m && cmp /tmp/f /tmp/m/f; s=$?; umount /tmp/m; exit $s`)
    t.equal(mkfs.code, 0, `mkfs.ext4, a file written, fsck clean, the file reads back ${mkfs.stderr}`)
    // Buffered reads too: page cache pages are the request's buffers.
    await vm.run(`dd if=/dev/urandom of=/tmp/zc.pattern bs=1M count=4 status=none && dd if=/tmp/zc.pattern of=${device.blockDevice} bs=1M seek=200 oflag=direct status=none && ` +
      `echo 3 > /proc/sys/vm/drop_caches && dd if=${device.blockDevice} bs=1M skip=200 count=4 status=none | cmp - /tmp/zc.pattern`)
  })

  t.test('zero copy: null reads are zeros (direct and through the page cache), a loop file shorter than its device reads zeros past its end', async (t) => {
    const nul = await addDevice(vm, '-t null --size 64M --io-mode zero-copy')
    t.equal(nul.ioMode, 'zero-copy')
    // The reader's buffer holds 0xAA before each O_DIRECT read: a byte the daemon did not fill
    // would show. (Buffered reads cannot show it on these kernels: they zero pages they allocate.)
    const prefilled = (device: string, skip: number, count: number): Promise<string> =>
      vm.run(`python3 ${repoRoot}/test/lib/prefilled-read.py ${device} ${skip} ${count}`)
    t.equal(Number(await prefilled(nul.blockDevice, 0, 32)), 0, 'null: every byte read is zero')
    const buffered = await vm.run(`dd if=${nul.blockDevice} bs=1M count=64 status=none | tr -d '\\000' | wc -c`)
    t.equal(Number(buffered), 0, 'null, through the page cache: zeros')
    await vm.run('rm -f /tmp/short.img && head -c 1M /dev/urandom > /tmp/short.img')
    const loop = await addDevice(vm, '-t loop -f /tmp/short.img --size 16M --io-mode zero-copy')
    t.equal(Number(await prefilled(loop.blockDevice, 1, 15)), 0, 'loop, past the end of the file: every byte read is zero')
    const head = await vm.run(`dd if=${loop.blockDevice} bs=1M count=1 iflag=direct status=none | cmp - /tmp/short.img && echo same`)
    t.match(head, /same/, 'the file\'s own bytes read back')
    const { result, report } = await fio(vm, `--name=zr --filename=${nul.blockDevice} --ioengine=io_uring --direct=1 ` +
      '--rw=randrw --bsrange=512-512k --iodepth=32 --size=64M --number_ios=2000')
    t.ok(result.code === 0 && report?.jobs[0]?.error === 0, `null zero copy under fio randrw ${result.stderr}`)
  })
}
