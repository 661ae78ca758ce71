// --recovery fail-io against the real driver (USER_RECOVERY_FAIL_IO): while no daemon serves
// the device its I/O fails at once instead of waiting, the device stays, and a new daemon
// re-attaches it with the data intact. On 6.12, which lacks the feature, a clear refusal.
import t from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { addDevice, commentLogsIfFailed, deleteDevicesLeft, listDevices, startDaemon, ublkd, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, vmKernel } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
const hasFailIo = vmKernel !== '6.12'

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

t.test('--recovery alone is reissue; --recovery=MODE and --recovery MODE name the mode; a bad mode is refused', async (t) => {
  await vm.run('rm -f /tmp/fi-a.img && truncate -s 16M /tmp/fi-a.img')
  const reissue = await addDevice(vm, '-t loop -f /tmp/fi-a.img --recovery')
  t.equal(reissue.recovery, 'reissue')
  t.ok(reissue.flags.includes('UBLK_F_USER_RECOVERY_REISSUE'), reissue.flags.join(' '))
  const off = await addDevice(vm, '-t null --recovery=off')
  t.equal(off.recovery, 'off')
  t.notOk(off.flags.includes('UBLK_F_USER_RECOVERY'))
  const bad = await ublkd(vm, 'add -t null --recovery=sometimes')
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--recovery must be off, reissue, fail-io, got 'sometimes'/)
})

if (!hasFailIo) {
  t.test('6.12: --recovery fail-io is refused before anything exists, naming the feature', async (t) => {
    const before = await ublkNodes(vm)
    await vm.run('rm -f /tmp/fi.img && truncate -s 16M /tmp/fi.img')
    const result = await ublkd(vm, 'add -t loop -f /tmp/fi.img --recovery fail-io')
    t.equal(result.code, 1)
    t.match(result.stderr, /--recovery fail-io needs UBLK_F_USER_RECOVERY_FAIL_IO \(Linux 6\.13 or later\): this kernel \(6\.12[^)]*\) does not offer it \[UBLKD_ERR_UNSUPPORTED\]/)
    t.same(await ublkNodes(vm), before, 'no device left behind')
  })
} else {
  t.test('kill -9 of the daemon: I/O fails at once, the device stays; a new daemon re-attaches it, data intact', async (t) => {
    await vm.run('rm -f /tmp/fi.img && head -c 16M /dev/urandom > /tmp/fi.img')
    const device = await addDevice(vm, '-t loop -f /tmp/fi.img --recovery fail-io')
    t.equal(device.recovery, 'fail-io')
    t.ok(device.flags.includes('UBLK_F_USER_RECOVERY_FAIL_IO'), device.flags.join(' '))
    await vm.run(`kill -9 ${device.daemonPid}`)
    await waitInVm(vm, `! kill -0 ${device.daemonPid}`, 30_000)
    // The kernel needs a moment to release the dead daemon's queues; then reads fail fast.
    const orphans = async () => JSON.parse((await ublkd(vm, 'list --all --json')).stdout) as { orphans: { id: number; state: string }[] }
    const deadline = Date.now() + 60_000
    while ((await orphans()).orphans.find((orphan) => orphan.id === device.id)?.state !== 'FAIL_IO') {
      if (Date.now() > deadline) throw new Error('the device never reached FAIL_IO')
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    const started = Date.now()
    const read = await vm.exec(`dd if=${device.blockDevice} of=/dev/null bs=4k count=1 iflag=direct`, { timeoutMs: 60_000 })
    const ms = Date.now() - started
    t.not(read.code, 0, 'the read fails while nobody serves the device')
    // The driver ends them with BLK_STS_TARGET, which callers see as EREMOTEIO.
    t.match(read.stderr, /Remote I\/O error/)
    t.ok(ms < 20_000, `it fails at once rather than waiting: ${ms} ms (the VM's exec included)`)
    t.ok((await ublkNodes(vm)).includes(`ublkb${device.id}`), 'the device stays')

    await startDaemon(vm)
    const back = (await listDevices(vm)).find((candidate) => candidate.id === device.id) as DeviceSummary
    t.equal(back.state, 'LIVE', 're-attached')
    t.equal(back.recovery, 'fail-io')
    const sum = await vm.run(`dd if=${device.blockDevice} bs=1M count=16 iflag=direct status=none | md5sum`)
    t.equal(sum, await vm.run('md5sum < /tmp/fi.img'), 'reads work again, data intact')
  })
}
