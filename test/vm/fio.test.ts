// Real clients on real devices: fio write+verify on memory, fio reads on null, and deleting a
// device while fio runs on it; what a device costs the daemon in memory.
import t from 'tap'

import { addDevice, commentLogsIfFailed, fio, listDevices, ublkd, ublkdCli, ublkNodes, waitForIo, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

t.test('memory, 2 queues: fio random write with crc32c verify passes', async (t) => {
  const device = await addDevice(vm, '-t memory --size 256M -q 2')
  const { result, report } = await fio(vm, `--name=verify --filename=${device.blockDevice} --ioengine=io_uring ` +
    '--direct=1 --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=8M --offset_increment=64M ' +
    '--verify=crc32c --verify_fatal=1 --do_verify=1')
  t.equal(result.code, 0, result.stderr)
  t.ok(report, 'fio printed a JSON report')
  for (const job of report?.jobs ?? []) {
    t.equal(job.error, 0, `job ${job.jobname} has no error`)
    t.equal(job.write.io_bytes, 8 * 2 ** 20, 'every byte written')
    t.equal(job.read.io_bytes, 8 * 2 ** 20, 'every byte read back and verified')
  }
  const stats = JSON.parse(await vm.run(`${ublkdCli} stats -n ${device.id} --json`)) as Record<string, number>[]
  const sum = (name: string) => stats.reduce((total, queue) => total + queue[name]!, 0)
  t.equal(stats.length, 2, 'stats for both queues')
  t.equal(sum('write_bytes'), 16 * 2 ** 20, 'the daemon counted exactly the bytes fio wrote')
  t.equal(sum('write_ops'), 16 * 2 ** 20 / 4096)
  t.ok(sum('read_bytes') >= 16 * 2 ** 20, 'and at least what fio read back (the kernel reads a little on its own)')
  t.equal(sum('inflight'), 0, 'nothing left in flight')
  t.ok(stats.every((queue) => queue['write_ops']! > 0), 'both queues served I/O')
  t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
})

t.test('memory: mixed block sizes verify too', async (t) => {
  const device = await addDevice(vm, '-t memory --size 64M')
  const { result } = await fio(vm, `--name=mixed --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bsrange=512-256k --iodepth=8 --size=32M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, result.stderr)
  t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
})

t.test('null: fio random read completes with the requested I/O count', async (t) => {
  const device = await addDevice(vm, '-t null --size 1G')
  const { result, report } = await fio(vm, `--name=read --filename=${device.blockDevice} --ioengine=io_uring ` +
    '--direct=1 --rw=randread --bs=4k --iodepth=32 --number_ios=10000 --size=1G')
  t.equal(result.code, 0, result.stderr)
  t.equal(report?.jobs[0]?.error, 0)
  t.equal(report?.jobs[0]?.read.total_ios, 10000)
  t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
})

t.test('del --force while fio runs: fio sees errors, the daemon survives, the device is gone', async (t) => {
  const device = await addDevice(vm, '-t memory --size 128M')
  const running = fio(vm, `--name=busy --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --time_based --runtime=120 --size=128M')
  // Let fio get going before the device goes away under it.
  await waitForIo(vm, device.id, 'write_ops', 500)
  const refused = await ublkd(vm, `del -n ${device.id}`)
  t.match(refused.stderr, new RegExp(`device ${device.id} is in use: open by pid \\d+ \\(fio\\)`), 'without --force: fio is named')
  const del = await ublkd(vm, `del -n ${device.id} --force`)
  t.equal(del.code, 0, del.stderr)
  const { result } = await running
  t.not(result.code, 0, 'fio failed instead of hanging for its 120 s')
  t.ok(result.ms < 100_000, `fio ended ${result.ms} ms after start, well before its runtime`)
  t.same(await ublkNodes(vm), [], 'no device node left')
  t.same(await listDevices(vm), [], 'the daemon still answers')
  const again = await addDevice(vm, '-t null --size 1G')
  t.equal(again.state, 'LIVE', 'and still serves new devices')
  t.equal((await ublkd(vm, `del -n ${again.id}`)).code, 0)
})

const rssKiB = async (pid: number): Promise<number> => Number((await vm.run(`awk '/^VmRSS:/ {print $2}' /proc/${pid}/status`)).trim())

/** 4 KiB writes on every tag: the kernel copies the data into each tag's 512 KiB buffer. */
async function touchEveryTag(blockDevice: string): Promise<string | null> {
  const { result } = await fio(vm, `--name=touch --filename=${blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=128 --number_ios=5000 --size=1G')
  return result.code === 0 ? null : result.stderr
}

t.test('a device costs the daemon a queue worker and the buffer pages its requests touch, no more', async (t) => {
  t.same(await listDevices(vm), [], 'no device yet')
  // A fresh daemon: one that served the tests above may return their memory to the system while
  // this one runs, hiding what the new device costs.
  const { daemonPid: previous } = await addDevice(vm, '-t null --size 1G')
  await vm.run(`kill -TERM ${previous}`)
  await waitInVm(vm, `! kill -0 ${previous} 2>/dev/null`, 30_000)
  const first = await addDevice(vm, '-t null --size 1G')
  // Warm the daemon with one device, then measure a second one like it.
  const base = await rssKiB(first.daemonPid)
  const device = await addDevice(vm, '-t null --size 1G')
  t.equal(await touchEveryTag(device.blockDevice), null, 'fio touched every tag')
  const grownMiB = (await rssKiB(first.daemonPid) - base) / 1024
  // A Node worker is ~15 MiB; 128 tags x 4 KiB is 0.5 MiB. Huge pages would make the 64 MiB of
  // reserved buffers resident as soon as every tag was used once.
  t.ok(grownMiB > 4 && grownMiB < 40, `the daemon grew by ${grownMiB.toFixed(1)} MiB for a 128-tag device`)

  // --huge-page-buffers: the same device, its buffers now in 2 MiB pages, all resident.
  const before = await rssKiB(first.daemonPid)
  const huge = await addDevice(vm, '-t null --size 1G --huge-page-buffers')
  t.equal(huge.hugePageBuffers, true, 'the summary says so')
  t.equal(await touchEveryTag(huge.blockDevice), null, 'fio touched every tag')
  const hugeMiB = (await rssKiB(first.daemonPid) - before) / 1024
  t.ok(hugeMiB > 64, `the daemon grew by ${hugeMiB.toFixed(1)} MiB: 64 MiB of buffers and the worker`)
  const anonHuge = await vm.run(`awk '/^AnonHugePages:/ {print $2}' /proc/${first.daemonPid}/smaps_rollup`)
  t.ok(Number(anonHuge.trim()) >= 60 * 1024, `backed by huge pages (${anonHuge.trim()} KiB)`)
  await ublkd(vm, 'del --all --force')
})
