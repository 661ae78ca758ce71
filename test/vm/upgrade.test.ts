// ublkd upgrade against the real driver: two upgrades in a row while fio verifies a loop device
// on a file and one on a block device and drives a null device, with 0 errors, a new daemon
// each time and I/O flowing through it; QUIESCE_DEV on 7.3, a reissue on 6.12; devices that
// cannot be handed over refuse the upgrade before anything is touched.
import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, startDaemon, ublkd, waitForWrites } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
const hasQuiesce = vmKernel !== '6.12'

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

t.test('two upgrades under fio: 0 errors, a new daemon pid each time, I/O through each new daemon', async (t) => {
  await startDaemon(vm)
  await vm.run('rm -f /tmp/up-file.img /tmp/up-block.img && truncate -s 64M /tmp/up-file.img /tmp/up-block.img')
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh loop`)
  const disk = (await vm.run('losetup --direct-io=on -f --show /tmp/up-block.img')).trim()
  t.teardown(() => vm.exec(`losetup -d ${disk}`))
  const file = await addDevice(vm, '-t loop -f /tmp/up-file.img -q 2 --recovery')
  const block = await addDevice(vm, `-t loop -f ${disk} --recovery`)
  const nul = await addDevice(vm, '-t null --size 4G --recovery')
  const quiesceFlag = (flags: string[]) => flags.includes('UBLK_F_QUIESCE')
  t.same([file, block, nul].map((device) => quiesceFlag(device.flags)), [hasQuiesce, hasQuiesce, hasQuiesce],
    hasQuiesce ? 'recovery devices get UBLK_F_QUIESCE' : '6.12 has no QUIESCE')

  // fio runs until the upgrades are done (then SIGINT): verify_backlog reads back and checks
  // every write while the run goes on, so a lost or torn write fails the job.
  const verify = (name: string, path: string) => fio(vm, `--name=${name} --filename=${path} --ioengine=io_uring ` +
    '--direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=16M --rate_iops=60 --verify=crc32c --verify_backlog=32 ' +
    '--verify_fatal=1 --time_based --runtime=1200', 1_500_000)
  const jobs = [
    verify('file', file.blockDevice),
    verify('block', block.blockDevice),
    fio(vm, `--name=null --filename=${nul.blockDevice} --ioengine=io_uring --direct=1 --rw=randrw --bs=4k ` +
      '--iodepth=8 --time_based --runtime=1200 --rate_iops=60', 1_500_000),
  ]
  const ioFlows = () => waitForWrites(vm, { writes: 20, devices: 3 })
  await ioFlows()
  let pid = file.daemonPid
  for (let round = 1; round <= 2; round++) {
    const upgrade = await ublkd(vm, 'upgrade', 300_000)
    t.equal(upgrade.code, 0, `round ${round}: ${upgrade.stderr}`)
    t.match(upgrade.stdout, new RegExp(`daemon pid ${pid} handed over 3 devices`), `round ${round}: the old daemon handed over`)
    const devices = await listDevices(vm)
    t.same(devices.map((device) => [device.id, device.state]).sort(),
      [[file.id, 'LIVE'], [block.id, 'LIVE'], [nul.id, 'LIVE']].sort(), `round ${round}: every device live`)
    const newPid = devices[0]!.daemonPid
    t.not(newPid, pid, `round ${round}: a new daemon serves`)
    t.ok(devices.every((device) => device.daemonPid === newPid && typeof device.lastPauseMs === 'number'),
      `round ${round}: one daemon, pauses ${devices.map((device) => device.lastPauseMs).join(', ')} ms`)
    t.equal((await vm.exec(`kill -0 ${pid}`)).code === 0, false, `round ${round}: the old daemon is gone`)
    await ioFlows()
    t.pass(`round ${round}: I/O flows through the new daemon`)
    pid = newPid
  }
  t.equal((await vm.exec('pkill -INT -x fio')).code, 0, 'fio ran through the two upgrades')
  for (const { result, report } of await Promise.all(jobs)) {
    // Stopped by SIGINT, fio exits non-zero; its report says whether any I/O failed.
    const job = report?.jobs[0]
    t.ok(job, `fio report: ${result.stderr}`)
    t.equal(job?.error, 0, `fio ${job?.jobname}: no I/O error`)
    t.notMatch(result.stderr, /verify|error/i, `fio ${job?.jobname}: nothing to report`)
    if (job?.jobname !== 'null') t.ok((job?.read.io_bytes ?? 0) > 0, `fio ${job?.jobname}: ${job?.read.io_bytes} bytes verified`)
  }
  const log = await vm.run('cat /run/ublkd/daemon.log')
  t.match(log, /"msg":"device taken over from the previous daemon"/)
  t.match(log, /"pauseMs":\d+.*"msg":"upgrade pause"/)
  t.match(log, new RegExp(`"quiesced":${hasQuiesce}.*"msg":"device handed over to the next daemon"`),
    hasQuiesce ? 'QUIESCE_DEV drained the old daemon' : 'no QUIESCE on 6.12: the kernel reissued')
})

t.test('devices that cannot be handed over refuse the upgrade, naming each, and nothing is touched', async (t) => {
  const memory = await addDevice(vm, '-t memory --size 16M --recovery')
  await vm.run('rm -f /tmp/up-plain.img && truncate -s 16M /tmp/up-plain.img')
  const plain = await addDevice(vm, '-t loop -f /tmp/up-plain.img')
  const refused = await ublkd(vm, 'upgrade')
  t.equal(refused.code, 1)
  t.match(refused.stderr, new RegExp(`cannot upgrade without I/O errors: device ${memory.id}: a memory device: its data lives in this daemon's memory; ` +
    `device ${plain.id}: created without --recovery: it goes with its daemon\\. Delete those devices first`))
  t.match(refused.stderr, /\[UBLKD_ERR_NOT_RECOVERABLE\]/)
  const devices = await listDevices(vm)
  t.same(devices.map((device) => [device.state, device.daemonPid]), [[ 'LIVE', memory.daemonPid], ['LIVE', memory.daemonPid]],
    'same daemon, both live')
  await vm.run(`dd if=/dev/zero of=${plain.blockDevice} bs=4k count=16 oflag=direct status=none`)
  t.pass('the devices still serve')
})

t.test('upgrade --no-start leaves the devices waiting for the next daemon, which takes them over', async (t) => {
  await vm.run('rm -f /tmp/up-wait.img && head -c 8M /dev/urandom > /tmp/up-wait.img')
  const device = await addDevice(vm, '-t loop -f /tmp/up-wait.img --recovery')
  const result = await ublkd(vm, 'upgrade --no-start', 300_000)
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /start the new daemon now/)
  t.same(await listDevices(vm), [], 'no daemon serves now')
  // I/O meanwhile waits (reissue), and completes once a daemon is back.
  const reading = vm.exec(`dd if=${device.blockDevice} bs=1M count=8 iflag=direct status=none | md5sum`, { timeoutMs: 300_000 })
  await new Promise((resolve) => setTimeout(resolve, 2000))
  await startDaemon(vm)
  const read = await reading
  t.equal(read.code, 0, read.stderr)
  t.equal(read.stdout, await vm.run('md5sum < /tmp/up-wait.img'), 'the waiting read completed with the right data')
  const back = (await listDevices(vm))[0]
  t.equal(back?.state, 'LIVE')
  t.ok((back?.lastPauseMs ?? 0) >= 2000, `the pause covers the wait: ${back?.lastPauseMs} ms`)
})
