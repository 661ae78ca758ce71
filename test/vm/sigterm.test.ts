// SIGTERM to a daemon serving two devices: both are stopped and deleted, and it exits 0.
import t from 'tap'

import { addDevice, listDevices, ublkdCli, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())

t.test('SIGTERM with two devices removes both and exits 0', async (t) => {
  await vm.run(`setsid sh -c '${ublkdCli} daemon > /tmp/daemon.log 2>&1; echo $? > /tmp/daemon.rc' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, 'test -S /run/ublkd/ublkd.sock', 60_000)
  const a = await addDevice(vm, '-t memory --size 32M')
  const b = await addDevice(vm, '-t null --size 1G -q 2')
  t.equal(a.daemonPid, b.daemonPid, 'one daemon hosts both')
  t.equal((await listDevices(vm)).length, 2)
  await vm.run(`kill -TERM ${a.daemonPid}`)
  await waitInVm(vm, 'test -f /tmp/daemon.rc', 60_000)
  t.equal((await vm.run('cat /tmp/daemon.rc')).trim(), '0', 'daemon exit status')
  t.same(await ublkNodes(vm), [], 'both devices removed')
  const log = await vm.run('cat /tmp/daemon.log')
  t.match(log, /"msg":"shutting down"/)
  t.match(log, /"msg":"all devices stopped, exiting"/)
  t.equal((await vm.exec('test -e /run/ublkd/ublkd.sock')).code, 1, 'socket removed')
})
