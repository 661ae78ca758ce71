// Reliability against the real driver: kill -9 of the daemon under fio verify (re-attach on
// restart), a queue thread dying or stalling (healed in-process with --recovery, removed
// without), and --keep-devices-on-exit.
import t from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, startDaemon as startDaemonInVm, ublkd, ublkdCli, ublkNodes, waitForIo, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())

let lastDaemonLog: string | null = null

/** Start a daemon in the background and wait until it serves; returns its log path. */
async function startDaemon(flags = ''): Promise<string> {
  lastDaemonLog = await startDaemonInVm(vm, flags)
  return lastDaemonLog
}

/** The log of the daemon serving now: the last one started here, or one `add` started. */
function daemonLog(): string {
  return lastDaemonLog ?? '/run/ublkd/daemon.log'
}

/** SIGTERM a daemon and wait until it is gone. */
async function stopDaemon(pid: number): Promise<void> {
  await vm.run(`kill -TERM ${pid}`)
  await waitInVm(vm, `! kill -0 ${pid}`, 30_000)
}

async function onlyDevice(): Promise<DeviceSummary> {
  const devices = await listDevices(vm)
  if (devices.length !== 1) throw new Error(`expected one device, got ${JSON.stringify(devices.map((d) => d.id))}`)
  return devices[0]!
}

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

t.test('kill -9 of the daemon during fio verify, twice: restarts re-attach, fio verifies clean', async (t) => {
  await startDaemon()
  await vm.run('truncate -s 128M /tmp/recovery.img')
  const device = await addDevice(vm, '-t loop -f /tmp/recovery.img -q 2 --recovery')
  t.equal(device.recovery, 'reissue')
  const verify = fio(vm, `--name=survive --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=32M --rate_iops=1000 --verify=crc32c --verify_fatal=1', 600_000)
  await waitForIo(vm, device.id, 'write_ops', 100)
  let pid = device.daemonPid
  for (let round = 1; round <= 2; round++) {
    await new Promise((resolve) => setTimeout(resolve, 1500))
    await vm.run(`kill -9 ${pid}`)
    const log = await startDaemon()
    const back = await onlyDevice()
    t.equal(back.id, device.id, `round ${round}: the same device`)
    t.equal(back.state, 'LIVE', `round ${round}: live again`)
    t.not(back.daemonPid, pid, `round ${round}: served by the new daemon`)
    t.match(await vm.run(`cat ${log}`), /"msg":"device re-attached"/)
    pid = back.daemonPid
  }
  const { result, report } = await verify
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0, 'no I/O error')
  t.equal(report?.jobs[0]?.write.io_bytes, 32 * 2 ** 20, 'every write done')
  t.equal(report?.jobs[0]?.read.io_bytes, 32 * 2 ** 20, 'every block verified')
})

t.test('after a daemon death: a RAM disk is deleted, a loop device whose backing is missing waits for ublkd recover', async (t) => {
  await vm.run('truncate -s 64M /tmp/later.img')
  const memory = await addDevice(vm, '-t memory --size 16M --recovery')
  const loop = await addDevice(vm, '-t loop -f /tmp/later.img --recovery')
  await vm.run(`dd if=/dev/urandom of=/tmp/later.pattern bs=1M count=2 status=none && dd if=/tmp/later.pattern of=${loop.blockDevice} bs=1M oflag=direct status=none`)
  await vm.run(`kill -9 ${loop.daemonPid}`)
  await vm.run('mv /tmp/later.img /tmp/later.moved')
  const log = await startDaemon()
  t.same(await listDevices(vm), [], 'neither device is served')
  const nodes = await ublkNodes(vm)
  t.notOk(nodes.includes(`ublkb${memory.id}`), 'the RAM disk was deleted: its data died with the daemon')
  t.ok(nodes.includes(`ublkb${loop.id}`), 'the loop device is kept, QUIESCED')
  const text = await vm.run(`cat ${log}`)
  t.match(text, /cannot re-attach device: stopping and deleting it/)
  t.match(text, /cannot re-attach device now; retry with ublkd recover/)
  await vm.run('mv /tmp/later.moved /tmp/later.img')
  const recovered = await ublkd(vm, `recover -n ${loop.id} --json`)
  t.equal(recovered.code, 0, recovered.stderr)
  t.equal((JSON.parse(recovered.stdout) as DeviceSummary).state, 'LIVE')
  const sum = await vm.run(`dd if=${loop.blockDevice} bs=1M count=2 iflag=direct status=none | md5sum`)
  t.equal(sum, await vm.run('md5sum < /tmp/later.pattern'), 'the data is intact')
})

t.test('a queue thread that exits is healed in-process with --recovery; fio sees no error', async (t) => {
  const before = await listDevices(vm)
  t.same(before, [])
  const device = await addDevice(vm, '-t fault --size 64M --fault exit --fault-at 3000 -q 2 --recovery')
  const { result, report } = await fio(vm, `--name=heal --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0)
  const after = await onlyDevice()
  t.equal(after.daemonPid, device.daemonPid, 'same daemon process')
  t.equal(after.recoveries, 1, 'healed once')
  t.equal(after.state, 'LIVE')
  const log = await vm.run(`cat ${daemonLog()}`)
  t.match(log, /"msg":"queue died: healing the device"/)
  t.match(log, /"healMs":\d+.*"msg":"device healed"/, 'heal time logged')
})

t.test('a queue that throws with every tag in service is healed with --recovery; fio sees no error', async (t) => {
  // iodepth 64 on depth 16: every tag holds a request when the queue task throws (#14 item 3).
  const device = await addDevice(vm, '-t fault --size 64M --fault throw --fault-at 2000 -d 16 --recovery')
  t.equal((await vm.run(`cat /sys/block/ublkb${device.id}/queue/io_timeout`)).trim(), '5000', 'a 5 s request timeout')
  const { result, report } = await fio(vm, `--name=full --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=64 --size=16M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0)
  const after = await onlyDevice()
  t.equal(after.recoveries, 1, 'healed once')
  t.equal(after.state, 'LIVE')
  t.ok(result.ms < 60_000, `fio took ${result.ms} ms: the heal did not wait for the block layer's timeout`)
})

t.test('a stalled queue thread is detected and healed with --recovery', async (t) => {
  const device = await addDevice(vm, '-t fault --size 64M --fault stall --fault-at 2000 --fault-stall-ms 600000 -q 2 --recovery')
  const { result } = await fio(vm, `--name=stall --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  const after = await onlyDevice()
  t.equal(after.recoveries, 1)
  t.match(await vm.run(`cat ${daemonLog()}`), /stalled: no loop turn/)
})

t.test('a burst of failing requests reaches the client as errors and the log as a few summary lines', async (t) => {
  const device = await addDevice(vm, '-t fault --size 64M --fault error --fault-at 100 --fault-count 300')
  const { result } = await fio(vm, `--name=burst --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=8 --number_ios=1000 --continue_on_error=all')
  t.match(result.stdout, /"total_err" : 300|total_err/, 'fio saw the errors')
  // The summary of a burst goes out within a second of its last failure.
  await new Promise((resolve) => setTimeout(resolve, 2000))
  const failed = (JSON.parse(await vm.run(`${ublkdCli} stats -n ${device.id} --json`)) as Record<string, number>[])
    .reduce((sum, queue) => sum + queue['write_errors']!, 0)
  t.equal(failed, 300, 'every injected failure was counted')
  const lines = (await vm.run(`grep '"msg":"requests failed"' ${daemonLog()} || true`)).trim().split('\n')
  t.ok(lines.length < 20, `${failed} failed requests were logged in ${lines.length} lines`)
  t.match(lines[0], /"errno":"EIO"/)
  const reported = lines.reduce((sum, line) => sum + Number(/"errors":(\d+)/.exec(line)?.[1] ?? 0), 0)
  t.equal(reported, failed, 'the summary lines add up to every failed request')
})

t.test('--keep-devices-on-exit leaves a recoverable device to the next daemon', async (t) => {
  const current = await ublkd(vm, 'list --json')
  const pid = (JSON.parse(current.stdout) as DeviceSummary[])[0]?.daemonPid
  // '[c]li.js' matches the daemon but not the shell running this very command.
  if (pid === undefined) await vm.run(`pkill -TERM -f '[c]li.js daemon'; true`)
  else await vm.run(`kill -TERM ${pid}`)
  await waitInVm(vm, "! pgrep -f '[c]li.js daemon'", 30_000)
  await startDaemon('--keep-devices-on-exit')
  await vm.run('truncate -s 64M /tmp/keep.img')
  const device = await addDevice(vm, '-t loop -f /tmp/keep.img --recovery')
  await vm.run(`dd if=/dev/urandom of=/tmp/keep.pattern bs=1M count=4 status=none && dd if=/tmp/keep.pattern of=${device.blockDevice} bs=1M oflag=direct status=none`)
  await vm.run(`kill -TERM ${device.daemonPid}`)
  await waitInVm(vm, "! pgrep -f '[c]li.js daemon'", 30_000)
  t.ok((await ublkNodes(vm)).includes(`ublkb${device.id}`), 'the device outlived its daemon')
  await startDaemon()
  const back = await onlyDevice()
  t.equal(back.state, 'LIVE')
  const sum = await vm.run(`dd if=${device.blockDevice} bs=1M count=4 iflag=direct status=none | md5sum`)
  t.equal(sum, await vm.run('md5sum < /tmp/keep.pattern'), 'data intact after the hand-over')
})

// #14 item 6: a queue that goes while its target's own I/O is in flight keeps its buffers
// mapped until that I/O is done (the kernel would write into memory the process may have reused).
// The loop device reads from a slow disk (a fault device of a second daemon that completes each
// request 2 s late) when its daemon leaves it to the next one (--keep-devices-on-exit: the queues
// go at once).
t.test('a queue that goes with its target\'s reads in flight waits for them before releasing its buffers', async (t) => {
  const slowState = '--state-dir /run/ublkd-slow'
  await startDaemonInVm(vm, `${slowState} --metrics off`)
  const slow = await addDevice(vm, `-t fault --size 64M --fault delay --fault-at 1 --fault-count 100000000 --fault-delay-ms 2000 ${slowState}`)
  // The daemon of the default state dir (started by this add if none runs) makes way for one
  // that keeps its devices.
  const { daemonPid } = await addDevice(vm, '-t null --size 1G')
  await stopDaemon(daemonPid)
  const log = await startDaemon('--keep-devices-on-exit')
  const device = await addDevice(vm, `-t loop -f ${slow.blockDevice} --recovery`)
  const reads = vm.exec(`dd if=${device.blockDevice} of=/dev/null bs=64k count=4 iflag=direct status=none`, { timeoutMs: 300_000 })
  await waitInVm(vm, `test "$(cat /sys/block/ublkb${device.id}/inflight | tr -s ' ' '+' | sed 's/^+//')" != 0+0`, 60_000)
  await vm.run(`kill -TERM ${device.daemonPid}`)
  await waitInVm(vm, `! kill -0 ${device.daemonPid}`, 60_000)
  const lines = (await vm.run(`cat ${log}`)).split('\n')
  t.ok(lines.some((line) => line.includes('waited for the target\'s I/O in flight before releasing its buffers') && /"inFlight":[1-9]/.test(line)),
    'the queue waited for its reads in flight before releasing its buffers')
  t.notOk(lines.some((line) => line.includes('left mapped (leaked)')), 'they all completed within the wait: nothing leaked')
  await startDaemon()
  const { code } = await reads
  t.equal(code, 0, 'the reads complete through the next daemon')
  await ublkd(vm, `del -n ${device.id}`)
  await ublkd(vm, `del --all ${slowState}`)
  await vm.run("pkill -TERM -f '[c]li.js daemon --state-dir /run/ublkd-slow'; true")
})

// #14 hygiene: the daemon runs in a mount namespace of its own, a slave of the one it was started
// in (ublksrv PR #186: a daemon that ends as the last holder of a namespace with its own device
// mounted hangs in its exit). A filesystem mounted after the daemon started is seen (a loop backing
// on it works), a mount of one of its devices is kept out, and kill -9 + restart with the
// filesystem mounted loses nothing.
t.test('the daemon\'s own mount namespace: later mounts seen, ublk mounts kept out, kill -9 with a mounted filesystem', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4`)
  // The VM's mounts are private; a systemd host's are shared, which a slave namespace needs.
  const { daemonPid: before } = await addDevice(vm, '-t null --size 1G')
  await stopDaemon(before)
  await vm.run('mount --make-rshared /')
  const log = await startDaemon()
  t.match(await vm.run(`cat ${log}`), /running in a mount namespace of its own/)
  const { daemonPid: pid, id: nullId } = await addDevice(vm, '-t null --size 1G')
  await ublkd(vm, `del -n ${nullId}`)
  t.not(await vm.run(`readlink /proc/${pid}/ns/mnt`), await vm.run('readlink /proc/self/ns/mnt'), 'a namespace of its own')
  await vm.run('mkdir -p /tmp/nslater && mount -t tmpfs -o size=80M tmpfs /tmp/nslater && truncate -s 64M /tmp/nslater/backing.img')
  const device = await addDevice(vm, '-t loop -f /tmp/nslater/backing.img --recovery')
  t.equal(device.daemonPid, pid, 'served by the daemon that started before the mount')
  await vm.run(`mkfs.ext4 -q ${device.blockDevice} && mkdir -p /tmp/u && mount ${device.blockDevice} /tmp/u && ` +
    'dd if=/dev/urandom of=/tmp/u/file bs=64k count=16 status=none && md5sum < /tmp/u/file > /tmp/u.md5')
  t.match(await vm.run('grep " /tmp/u " /proc/self/mountinfo || true'), /tmp\/u/, 'mounted where the test runs')
  await waitInVm(vm, `! grep -q " /tmp/u " /proc/${pid}/mountinfo`, 10_000)
  t.pass('not in the daemon\'s namespace (detached there within 10 s)')
  await vm.run(`kill -9 ${pid}`)
  await waitInVm(vm, `! kill -0 ${pid}`, 30_000)
  await startDaemon()
  t.equal((await onlyDevice()).state, 'LIVE', 're-attached')
  t.equal(await vm.run('md5sum < /tmp/u/file'), await vm.run('cat /tmp/u.md5'), 'the file reads back')
  await vm.run('sync && umount /tmp/u')
  const fsck = await vm.exec(`fsck.ext4 -fn ${device.blockDevice}`)
  t.equal(fsck.code, 0, `fsck clean: ${fsck.stdout}${fsck.stderr}`)
  await ublkd(vm, 'del --all --force')
  await vm.run('umount /tmp/nslater')
})

t.test('re-attach serves only the recorded device: a stale record never takes over another server\'s device with its id', async (t) => {
  // Two daemons with their own state dirs: "a" has a record of device 7 that outlived it, "b"
  // (standing in for any other ublk server) created a device 7 of its own, then died.
  // Beside the suite's daemon, which has the metrics port.
  const daemon = (dir: string) => startDaemon(`--state-dir ${dir} --metrics off`)
  await vm.run('truncate -s 16M /tmp/id-a.img && truncate -s 16M /tmp/id-b.img && head -c 1048576 /dev/urandom > /tmp/id-b.pattern')
  await daemon('/tmp/id-a')
  const stale = await addDevice(vm, '--state-dir /tmp/id-a -t loop -f /tmp/id-a.img -n 7 --recovery')
  await vm.run('cp /tmp/id-a/devices/7.json /tmp/id-a-7.json')
  t.equal((await ublkd(vm, 'del -n 7 --state-dir /tmp/id-a')).code, 0)
  await stopDaemon(stale.daemonPid)

  await daemon('/tmp/id-b')
  const other = await addDevice(vm, '--state-dir /tmp/id-b -t loop -f /tmp/id-b.img -n 7 --recovery')
  t.not(other.uuid, stale.uuid)
  const taken = await ublkd(vm, `add --state-dir /tmp/id-b -t null --uuid ${other.uuid!.toUpperCase()}`)
  t.match(taken.stderr, `uuid ${other.uuid} is already device 7's`, 'a UUID is one device\'s')
  t.equal(taken.code, 1)
  await vm.run(`dd if=/tmp/id-b.pattern of=${other.blockDevice} bs=1M oflag=direct status=none`)
  await vm.run(`kill -9 ${other.daemonPid}`)
  await waitInVm(vm, `! kill -0 ${other.daemonPid}`, 30_000)

  await vm.run('cp /tmp/id-a-7.json /tmp/id-a/devices/7.json')
  const logA = await daemon('/tmp/id-a')
  t.same(JSON.parse(await vm.run(`${ublkdCli} list --json --state-dir /tmp/id-a`)), [], 'a serves nothing')
  t.match(await vm.run(`cat ${logA}`), new RegExp(`kernel device 7 is not the device recorded as 7 \\(${stale.uuid}\\): identity 0x`))
  t.equal((await vm.exec('test -e /tmp/id-a/devices/7.json')).code, 1, 'the stale record is dropped')
  t.ok((await ublkNodes(vm)).includes('ublkb7'), 'the other device is left alone')

  await daemon('/tmp/id-b')
  const back = (JSON.parse(await vm.run(`${ublkdCli} list --json --state-dir /tmp/id-b`)) as DeviceSummary[])[0]
  t.equal(back?.uuid, other.uuid, 'its own daemon re-attaches it')
  t.equal(back?.state, 'LIVE')
  const sum = await vm.run(`dd if=${other.blockDevice} bs=1M count=1 iflag=direct status=none | md5sum`)
  t.equal(sum, await vm.run('md5sum < /tmp/id-b.pattern'), 'with its data')
  t.equal((await ublkd(vm, 'del -n 7 --state-dir /tmp/id-b')).code, 0)
  await stopDaemon(back!.daemonPid)
  await vm.run("pkill -TERM -f '[c]li.js daemon --state-dir /tmp/id-a'; true")
})

t.test('orphans: list --all shows kernel devices this daemon does not serve; del --orphan removes one whose server is gone', async (t) => {
  await vm.run('truncate -s 16M /tmp/orphan.img')
  await startDaemon('--state-dir /tmp/or-dead --metrics off')
  const dead = await addDevice(vm, '--state-dir /tmp/or-dead -t loop -f /tmp/orphan.img --recovery')
  await vm.run(`kill -9 ${dead.daemonPid}`)
  await waitInVm(vm, `! kill -0 ${dead.daemonPid}`, 30_000)
  await startDaemon('--state-dir /tmp/or-live --metrics off')
  const served = await addDevice(vm, '--state-dir /tmp/or-live -t null')
  const own = await addDevice(vm, '-t null')

  const listed = JSON.parse(await vm.run(`${ublkdCli} list --all --json`)) as { devices: DeviceSummary[]; orphans: Record<string, unknown>[] }
  t.same(listed.devices.map((d) => d.id), [own.id], 'its own devices')
  const byId = new Map(listed.orphans.map((o) => [o['id'], o]))
  t.notOk(byId.has(own.id), 'its own device is no orphan')
  t.match(byId.get(dead.id), { state: 'QUIESCED', recovery: true, servedBy: [], blockDevice: dead.blockDevice }, 'the dead daemon\'s device')
  t.match(byId.get(served.id), { state: 'LIVE', servedBy: [new RegExp(`^open by pid ${served.daemonPid} \\(`)] }, 'the other daemon\'s device')
  t.match(await vm.run(`${ublkdCli} list --all`), new RegExp(`\\n${dead.id}\\s+QUIESCED\\s+${dead.blockDevice}\\s+yes\\s+1\\s+128\\s+nobody`))

  const mine = await ublkd(vm, `del --orphan -n ${own.id}`)
  t.match(mine.stderr, `device ${own.id} is this daemon's, not an orphan: ublkd del -n ${own.id}`)
  const busy = await ublkd(vm, `del --orphan -n ${served.id}`)
  t.equal(busy.code, 1)
  t.match(busy.stderr, new RegExp(`device ${served.id} is served: its char device is open by pid ${served.daemonPid} .*stop that server instead \\[UBLKD_ERR_BUSY\\]`))
  const removed = await ublkd(vm, `del --orphan -n ${dead.id}`)
  t.equal(removed.code, 0, removed.stderr)
  t.match(removed.stdout, `deleted /dev/ublkb${dead.id}`)
  t.notOk((await ublkNodes(vm)).includes(`ublkc${dead.id}`), 'the orphan is gone')
  t.match(await ublkd(vm, `del --orphan -n ${dead.id}`), { code: 1, stderr: /no ublk device \d+ in the kernel/ })
  const untouched = JSON.parse(await vm.run(`${ublkdCli} list --json --state-dir /tmp/or-live`)) as DeviceSummary[]
  t.same(untouched.map((d) => [d.id, d.state]), [[served.id, 'LIVE']], 'the other daemon\'s device is untouched')
  t.equal((await ublkd(vm, `del -n ${served.id} --state-dir /tmp/or-live`)).code, 0)
  await stopDaemon(served.daemonPid)
})
