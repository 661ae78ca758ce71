// SIGTERM to a daemon serving two devices: both are stopped and deleted, and it exits 0.
import t from 'tap'

import { addDevice, commentLogsIfFailed, fio, listDevices, ublkd, ublkdCli, ublkNodes, waitForIo, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

t.test('SIGTERM with two devices removes both and exits 0', async (t) => {
  await vm.run(`setsid sh -c '${ublkdCli} daemon > /tmp/daemon.log 2>&1; echo $? > /tmp/daemon.rc' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, 'test -S /run/ublkd/ublkd.sock', 60_000)
  const a = await addDevice(vm, '-t memory --size 32M')
  const b = await addDevice(vm, '-t null --size 1G -q 2')
  t.equal(a.daemonPid, b.daemonPid, 'one daemon hosts both')
  t.equal((await listDevices(vm)).length, 2)
  // Under write load: the shutdown must not wait for the client, nor lose the daemon's exit.
  const load = fio(vm, `--name=load --filename=${a.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite ` +
    '--bs=4k --iodepth=16 --time_based --runtime=120 --size=32M')
  await waitForIo(vm, a.id, 'write_ops', 100)
  await vm.run(`kill -TERM ${a.daemonPid}`)
  await waitInVm(vm, 'test -f /tmp/daemon.rc', 60_000)
  t.equal((await vm.run('cat /tmp/daemon.rc')).trim(), '0', 'daemon exit status')
  const log = await vm.run('cat /tmp/daemon.log')
  // devtmpfs removes the nodes of a deleted device asynchronously.
  await waitInVm(vm, '! ls /dev | grep -qE "^ublk[bc][0-9]+$"', 10_000).catch(() => {})
  t.same(await ublkNodes(vm), [], `both devices removed; daemon log:\n${log}`)
  t.match(log, /"msg":"shutting down"/)
  t.match(log, /"msg":"all devices stopped, exiting"/)
  t.equal((await vm.exec('test -e /run/ublkd/ublkd.sock')).code, 1, 'socket removed')
  const { result } = await load
  t.ok(result.ms < 100_000, `fio ended with the device (after ${result.ms} ms), not at its 120 s runtime`)
})

t.test('SIGTERM while an add is under way: the add finishes or fails, then nothing is left behind', async (t) => {
  await vm.run(`rm -f /tmp/daemon.rc; setsid sh -c '${ublkdCli} daemon --kernel-timeout 5 > /tmp/daemon2.log 2>&1; echo $? > /tmp/daemon.rc' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `grep -q '"msg":"daemon ready"' /tmp/daemon2.log`, 60_000)
  // START_DEV of this device never completes by itself: the add is in progress for 5 s.
  const adding = ublkd(vm, 'add -t fault --size 16M --fault no-fetch -d 4')
  await waitInVm(vm, 'ls /dev | grep -qE "^ublkc[0-9]+$"', 30_000)
  // The daemon itself, not its sh -c wrapper, whose exit status the test waits for.
  await vm.run("pkill -TERM -f '^node .*[c]li.js daemon --kernel-timeout'")
  const result = await adding
  t.not(result.code, 0, `the add did not succeed: ${result.stderr.trim()}`)
  await waitInVm(vm, 'test -f /tmp/daemon.rc', 60_000)
  t.equal((await vm.run('cat /tmp/daemon.rc')).trim(), '0', 'daemon exit status')
  await waitInVm(vm, '! ls /dev | grep -qE "^ublk[bc][0-9]+$"', 10_000).catch(() => {})
  t.same(await ublkNodes(vm), [], `no kernel device left; daemon log:\n${await vm.run('cat /tmp/daemon2.log')}`)
})
