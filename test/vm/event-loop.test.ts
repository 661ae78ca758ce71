// --queue-mode event-loop against the real driver: queue threads woken through their event loop
// serve and verify like ring mode, and a target may complete requests from timers (the fault
// target's delay) while the queue serves others.
import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, ublkd, ublkdCli, ublkNodes } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

t.test('memory in event-loop mode, 2 queues: fio random write with crc32c verify passes', async (t) => {
  const device = await addDevice(vm, '-t memory --size 128M -q 2 --queue-mode event-loop')
  t.equal(device.queueMode, 'event-loop')
  const { result, report } = await fio(vm, `--name=verify --filename=${device.blockDevice} --ioengine=io_uring ` +
    '--direct=1 --rw=randwrite --bsrange=512-128k --iodepth=16 --numjobs=2 --size=16M --offset_increment=32M ' +
    '--verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, result.stderr)
  for (const job of report?.jobs ?? []) t.equal(job.error, 0, `job ${job.jobname}`)
  const stats = JSON.parse(await vm.run(`${ublkdCli} stats -n ${device.id} --json`)) as Record<string, number>[]
  t.ok(stats.every((queue) => queue['write_ops']! > 0), 'both queues served writes')
  t.equal(stats.reduce((sum, queue) => sum + queue['inflight']!, 0), 0, 'nothing left in flight')
  t.equal((await listDevices(vm))[0]?.queueMode, 'event-loop', 'list shows the mode')
})

t.test('fault delay: the delayed read completes late, from a timer, while other reads go on', async (t) => {
  // Request 40 of the device (counted over its queues) is delayed by 3 s.
  const device = await addDevice(vm, '-t fault --size 64M --fault delay --fault-at 40 --fault-delay-ms 3000')
  t.equal(device.queueMode, 'event-loop', 'chosen for the target')
  const { result, report } = await fio(vm, `--name=slow --filename=${device.blockDevice} --ioengine=io_uring ` +
    '--direct=1 --rw=randread --bs=4k --iodepth=4 --number_ios=400 --size=64M --percentile_list=99:100')
  t.equal(result.code, 0, result.stderr)
  const read = report!.jobs[0]!.read
  t.equal(read.total_ios, 400, 'every read completed')
  const maxMs = (read.clat_ns?.percentile?.['100.000000'] ?? 0) / 1e6
  const p99Ms = (read.clat_ns?.percentile?.['99.000000'] ?? 0) / 1e6
  t.ok(maxMs >= 2900, `the delayed read took ${maxMs.toFixed(0)} ms`)
  t.ok(p99Ms < 1000, `the others did not wait for it (p99 ${p99Ms.toFixed(1)} ms)`)
})

t.test('a target that completes from timers refuses ring mode and leaves nothing behind', async (t) => {
  const refused = await ublkd(vm, 'add -t fault --size 16M --fault delay --queue-mode ring')
  t.equal(refused.code, 2)
  t.match(refused.stderr, /needs --queue-mode event-loop/)
  const bad = await ublkd(vm, 'add -t null --queue-mode spin')
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--queue-mode must be ring or event-loop, got 'spin'/)
  t.same(await ublkNodes(vm), [], 'no device left behind')
})
