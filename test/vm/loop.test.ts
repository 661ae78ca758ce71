// The loop target with real clients: fio verify at several block sizes and depths with the file
// I/O on the ring and inline (a deep queue's inline work spread over turns), the backing file checked from the host, a filesystem through mkfs/mount/fsck, discard, sync writes
// surviving a killed client, ENOSPC, a block-device backing, and bad input.
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, ublkd, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmCacheDir, vmKernel } from '../lib/vm.js'

const shareDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-loop-'))
const vm = await bootVm({ shareDir })
t.teardown(async () => {
  await vm.shutdown()
  fs.rmSync(shareDir, { recursive: true, force: true })
})

// A failed test must not leave its device to the next one.
t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await vm.exec('umount /tmp/mnt 2>/dev/null; true')
  await deleteDevicesLeft(vm)
})

async function del(id: number): Promise<void> {
  const result = await ublkd(vm, `del -n ${id}`)
  if (result.code !== 0) throw new Error(`del -n ${id}: ${result.stderr}`)
}

// The same verify for each way the loop target can do its file I/O: on the queue's ring (a 9p
// file, and a tmpfs file with --inline-io off: both go to io-wq workers), and inline (a tmpfs
// file, the default there).
const verifyCases = [
  { name: 'ring, 9p file', backing: path.join(shareDir, 'verify.img'), flags: '', inline: false, onHost: true },
  { name: 'ring, tmpfs file', backing: '/tmp/verify-ring.img', flags: '--inline-io off', inline: false, onHost: false },
  { name: 'inline, tmpfs file', backing: '/tmp/verify-inline.img', flags: '', inline: true, onHost: false },
]
for (const mode of verifyCases) {
  t.test(`fio random write + crc32c verify at 512, 4k, 64k and 1M, 2 queues (${mode.name})`, async (t) => {
    if (mode.onHost) {
      fs.writeFileSync(mode.backing, '')
      fs.truncateSync(mode.backing, 64 * 2 ** 20)
    } else {
      await vm.run(`truncate -s 64M ${mode.backing}`)
    }
    const device = await addDevice(vm, `-t loop -f ${mode.backing} -q 2 ${mode.flags}`)
    t.equal(device.sizeBytes, 64 * 2 ** 20, 'size defaults to the file size')
    t.equal(device.options['file'], mode.backing)
    t.equal(device.options['inlineIo'], mode.inline, `inline I/O ${mode.inline ? 'on' : 'off'}`)
    for (const [bs, depth, size] of [['512', 4, '1M'], ['4k', 32, '4M'], ['64k', 8, '4M'], ['1M', 2, '8M']] as const) {
      const { result, report } = await fio(vm, `--name=v${bs} --filename=${device.blockDevice} --ioengine=io_uring ` +
        `--direct=1 --rw=randwrite --bs=${bs} --iodepth=${depth} --size=${size} --verify=crc32c --verify_fatal=1`)
      t.equal(result.code, 0, `bs=${bs} qd=${depth}: ${result.stderr}`)
      t.equal(report?.jobs[0]?.error, 0)
    }
    const deviceSum = (await vm.run(`md5sum < ${device.blockDevice}`)).split(' ')[0]
    await del(device.id)
    const fileSum = mode.onHost
      ? createHash('md5').update(fs.readFileSync(mode.backing)).digest('hex')
      : (await vm.run(`md5sum < ${mode.backing}`)).split(' ')[0]
    t.equal(fileSum, deviceSum, `the backing file read ${mode.onHost ? 'on the host' : 'directly'} equals the device`)
  })
}

t.test('inline I/O with 512 requests of 512 KiB in flight: done in turns of bounded work; fio verify passes, the queue is never taken for stalled', async (t) => {
  // 256 MiB of copies would make one turn of seconds under emulation; the stall watch (3 s)
  // would then stop the queue under fio. The loop target does at most 16 MiB per turn.
  await vm.run('rm -f /tmp/deep.img && truncate -s 256M /tmp/deep.img')
  const device = await addDevice(vm, '-t loop -f /tmp/deep.img --depth 1024')
  t.equal(device.options['inlineIo'], true)
  const { result, report } = await fio(vm, `--name=deep --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=write --bs=512k --iodepth=512 --iodepth_batch_submit=512 --size=256M --verify=crc32c --verify_fatal=1')
  t.ok(result.code === 0 && report?.jobs[0]?.error === 0 && report.jobs[0].read.io_bytes === 256 * 2 ** 20,
    `written and verified ${report?.jobs[0]?.read.io_bytes ?? 0} bytes ${result.stderr}`)
  const [after] = await listDevices(vm)
  t.ok(after?.state === 'LIVE' && after.recoveries === 0, `LIVE, never healed (${after?.state}, recoveries ${after?.recoveries})`)
  await del(device.id)
})

t.test('mkfs.ext4, mount, write a tree, umount, fsck clean, remount, same checksums', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4`)
  await vm.run('truncate -s 128M /tmp/fs.img')
  const device = await addDevice(vm, '-t loop -f /tmp/fs.img')
  await vm.run(`mkfs.ext4 -q -F ${device.blockDevice}`)
  await vm.run(`mkdir -p /tmp/mnt && mount ${device.blockDevice} /tmp/mnt`)
  await vm.run('mkdir -p /tmp/mnt/a/b && for i in $(seq 1 40); do head -c $((i * 7919)) /dev/urandom > /tmp/mnt/a/b/f$i; done && ' +
    'cp -r /work/main/src /tmp/mnt/src && sync')
  const before = await vm.run('cd /tmp/mnt && find . -type f -exec md5sum {} + | sort -k2')
  await vm.run('umount /tmp/mnt')
  const fsck = await vm.exec(`fsck.ext4 -fn ${device.blockDevice}`)
  t.equal(fsck.code, 0, `fsck -fn is clean: ${fsck.stdout}${fsck.stderr}`)
  await vm.run(`mount ${device.blockDevice} /tmp/mnt`)
  const after = await vm.run('cd /tmp/mnt && find . -type f -exec md5sum {} + | sort -k2')
  t.equal(after, before, 'every file reads back the same after remount')
  t.ok(before.split('\n').length > 40)
  await vm.run('umount /tmp/mnt')
  await del(device.id)
})

t.test('blkdiscard frees the backing file\'s blocks; blkdiscard -z reads back zeros', async (t) => {
  await vm.run('truncate -s 64M /tmp/discard.img')
  const device = await addDevice(vm, '-t loop -f /tmp/discard.img')
  await vm.run(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=32 oflag=direct status=none`)
  const usedBefore = Number(await vm.run('du -k /tmp/discard.img | cut -f1'))
  t.ok(usedBefore >= 32 * 1024, `${usedBefore} KiB allocated after writing 32 MiB`)
  await vm.run(`blkdiscard ${device.blockDevice}`)
  const usedAfter = Number(await vm.run('du -k /tmp/discard.img | cut -f1'))
  t.ok(usedAfter < 1024, `${usedAfter} KiB allocated after blkdiscard`)
  await vm.run(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=8 oflag=direct status=none`)
  await vm.run(`blkdiscard -z -o 0 -l 8M ${device.blockDevice}`)
  const nonZero = await vm.run(`dd if=${device.blockDevice} bs=1M count=8 iflag=direct status=none | tr -d '\\000' | wc -c`)
  t.equal(nonZero.trim(), '0', 'zeroed range reads as zeros')
  await del(device.id)
})

t.test('sync writes (fsync=1, O_SYNC) acknowledged before fio is killed are on the backing file', async (t) => {
  await vm.run('truncate -s 64M /tmp/sync.img')
  const device = await addDevice(vm, '-t loop -f /tmp/sync.img')
  for (const mode of ['--fsync=1', '--sync=1']) {
    const { result } = await fio(vm, `--name=s --filename=${device.blockDevice} --ioengine=psync --direct=1 ` +
      `--rw=randwrite --bs=4k --size=4M ${mode}`)
    t.equal(result.code, 0, `${mode}: ${result.stderr}`)
  }
  // A writer that records each 4 KiB block once its O_DSYNC (FUA) write was acknowledged,
  // killed with SIGKILL mid-run: every recorded block must be on the backing file.
  await vm.run('head -c 16M /dev/urandom > /tmp/pattern && rm -f /tmp/acked')
  const writer = vm.exec(`echo $$ > /tmp/writer.pid; for i in $(seq 0 4095); do dd if=/tmp/pattern of=${device.blockDevice} ` +
    'bs=4k skip=$i seek=$i count=1 oflag=direct,dsync conv=notrunc status=none && echo $i >> /tmp/acked; done',
  { timeoutMs: 120_000 })
  await waitInVm(vm, 'test $(wc -l < /tmp/acked) -ge 50', 60_000)
  await vm.run('kill -9 $(cat /tmp/writer.pid)')
  await writer
  const acked = Number((await vm.run('wc -l < /tmp/acked')).trim())
  t.ok(acked >= 50 && acked < 4096, `${acked} blocks acknowledged before the kill`)
  const compare = await vm.exec(`cmp -n ${acked * 4096} /tmp/pattern /tmp/sync.img`)
  t.equal(compare.code, 0, `every acknowledged block is on the backing file ${compare.stdout}`)
  await del(device.id)
})

t.test('a full backing filesystem fails writes with an I/O error; after freeing space they succeed', async (t) => {
  await vm.run('mkdir -p /tmp/tiny && mount -t tmpfs -o size=16M tiny /tmp/tiny && truncate -s 32M /tmp/tiny/backing.img && ' +
    'head -c 12M /dev/zero > /tmp/tiny/filler')
  const device = await addDevice(vm, '-t loop -f /tmp/tiny/backing.img')
  const full = await vm.exec(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=8 oflag=direct status=none`)
  t.not(full.code, 0, 'the write failed')
  t.match(full.stderr, /Input\/output error|No space left/)
  const listed = await ublkd(vm, 'list --json')
  t.equal(listed.code, 0, 'the daemon is alive')
  const logged = await vm.run('grep \'"msg":"requests failed"\' /run/ublkd/daemon.log || true')
  t.match(logged, /"errno":"ENOSPC"/, 'the failure is logged with its errno')
  await vm.run('rm /tmp/tiny/filler')
  const retry = await vm.exec(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=8 oflag=direct status=none`)
  t.equal(retry.code, 0, `writes succeed again: ${retry.stderr}`)
  await del(device.id)
  await vm.run('umount /tmp/tiny')
})

t.test('a 4k-sector block device backing (kernel loop) gives a 4k device that verifies', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop`)
  await vm.run('truncate -s 256M /tmp/kloop.img')
  const loopDevice = (await vm.run('losetup --sector-size 4096 --direct-io=on -f --show /tmp/kloop.img')).trim()
  const device = await addDevice(vm, `-t loop -f ${loopDevice} -q 2`)
  t.equal(device.logicalBlockSize, 4096)
  t.equal(device.sizeBytes, 256 * 2 ** 20)
  t.equal((await vm.run(`cat /sys/block/ublkb${device.id}/queue/logical_block_size`)).trim(), '4096')
  const { result } = await fio(vm, `--name=b --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, result.stderr)
  await del(device.id)
  await vm.run(`losetup -d ${loopDevice}`)
})

t.test('a file on a 4k-sector disk: a 4k device with direct I/O; 512-byte sectors served buffered', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop && ${repoRoot}/scripts/vm/load-module.sh ext4`)
  await vm.run('truncate -s 128M /tmp/k4.img && mkdir -p /tmp/k4')
  const disk = (await vm.run('losetup --sector-size 4096 -f --show /tmp/k4.img')).trim()
  await vm.run(`mkfs.ext4 -q ${disk} && mount ${disk} /tmp/k4 && truncate -s 32M /tmp/k4/backing.img`)
  t.teardown(() => vm.exec(`umount /tmp/k4; losetup -d ${disk}`))
  const native = await addDevice(vm, '-t loop -f /tmp/k4/backing.img')
  t.equal(native.logicalBlockSize, 4096, 'the alignment direct I/O needs there')
  t.equal(native.options['directIo'], true)
  const { result } = await fio(vm, `--name=k4 --filename=${native.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=8 --size=8M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, result.stderr)
  await del(native.id)
  const small = await addDevice(vm, '-t loop -f /tmp/k4/backing.img --logical-block-size 512')
  t.equal(small.logicalBlockSize, 512)
  t.equal(small.options['directIo'], false, 'buffered: O_DIRECT would fail 512-byte I/O with EINVAL')
  await vm.run('head -c 65536 /dev/urandom > /tmp/k4.pattern')
  const write = await vm.exec(`dd if=/tmp/k4.pattern of=${small.blockDevice} bs=512 seek=7 oflag=direct status=none`)
  t.equal(write.code, 0, `dd bs=512 oflag=direct: ${write.stderr}`)
  const back = await vm.run(`dd if=${small.blockDevice} bs=512 skip=7 count=128 iflag=direct status=none | md5sum`)
  t.equal(back, await vm.run('md5sum < /tmp/k4.pattern'), '512-byte sectors read back')
  await del(small.id)
  const refused = await ublkd(vm, 'add -t loop -f /tmp/k4/backing.img --logical-block-size 512 --direct-io on')
  t.equal(refused.code, 2)
  t.match(refused.stderr, 'is smaller than the 4096-byte alignment direct I/O needs on /tmp/k4/backing.img')
})

t.test('a block device backing that shrinks fails reads past its new end with EIO, never zeros', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop`)
  await vm.run('truncate -s 64M /tmp/shrink.img')
  const disk = (await vm.run('losetup --direct-io=on -f --show /tmp/shrink.img')).trim()
  t.teardown(() => vm.exec(`losetup -d ${disk}`))
  const device = await addDevice(vm, `-t loop -f ${disk}`)
  await vm.run(`head -c 1048576 /dev/urandom > /tmp/shrink.pattern && dd if=/tmp/shrink.pattern of=${device.blockDevice} bs=1M seek=40 oflag=direct status=none`)
  await vm.run(`truncate -s 32M /tmp/shrink.img && losetup -c ${disk}`)
  t.equal((await vm.run(`blockdev --getsize64 ${disk}`)).trim(), String(32 * 2 ** 20), 'the backing shrank')
  const past = await vm.exec(`dd if=${device.blockDevice} of=/dev/null bs=1M skip=40 count=1 iflag=direct`)
  t.not(past.code, 0, 'a read past the new end fails')
  t.match(past.stderr, /Input\/output error/)
  const before = await vm.exec(`dd if=${device.blockDevice} of=/dev/null bs=1M count=1 iflag=direct status=none`)
  t.equal(before.code, 0, 'data before it still reads')
  await del(device.id)
})

t.test('bad input is refused clearly and leaves nothing behind', async (t) => {
  await vm.run('truncate -s 0 /tmp/empty.img && truncate -s 1000 /tmp/odd.img && truncate -s 16M /tmp/ok.img && mkdir -p /tmp/dir')
  const cases: [string, RegExp][] = [
    ['-t loop', /loop needs a backing file: -f PATH/],
    ['-t loop -f /tmp/missing.img', /backing file \/tmp\/missing.img does not exist/],
    ['-t loop -f /tmp/dir', /backing file \/tmp\/dir is a directory/],
    ['-t loop -f /tmp/empty.img', /is empty: give --size/],
    ['-t loop -f /tmp/odd.img', /not a multiple of the logical block size 512/],
    ['-t loop -f /tmp/ok.img --size 0', /--size must be greater than 0/],
    ['-t loop -f /tmp/ok.img --direct-io maybe', /--direct-io must be on or off/],
    ['-t loop -f /tmp/ok.img --inline-io sometimes', /--inline-io must be on or off/],
    [`-t loop -f ${repoRoot}/package.json --size 4096`, /cannot open .* for reading and writing \(EROFS\); use --read-only/],
    ['-t loop -f /dev/null', /neither a regular file nor a block device/],
    ['-t memory --size 1M -f /tmp/ok.img', /target memory does not take --file/],
  ]
  for (const [args, message] of cases) {
    const result = await ublkd(vm, `add ${args}`)
    t.equal(result.code, 2, `${args}: exit code`)
    t.match(result.stderr, message, args)
  }
  t.same(await ublkNodes(vm), [], 'no device left behind')

  const first = await addDevice(vm, '-t loop -f /tmp/ok.img')
  const again = await ublkd(vm, 'add -t loop -f /tmp/ok.img')
  t.equal(again.code, 2)
  t.match(again.stderr, new RegExp(`/tmp/ok.img is already served by device ${first.id}`))
  const readOnly = await addDevice(vm, `-t loop -f ${vmCacheDir}/${vmKernel}/vmlinuz --read-only --size 4M`)
  t.equal((await vm.run(`cat /sys/block/ublkb${readOnly.id}/ro`)).trim(), '1', 'a read-only backing gives a read-only disk')
  await del(readOnly.id)
  await del(first.id)
  t.same(await ublkNodes(vm), [])
})
