// ublkd under systemd as PID 1 (the VM boots the host's systemd, scripts/vm/init), with the
// shipped unit and a configuration of three devices: `systemctl start` returns once they are
// live (Type=notify), fio on them, `systemctl reload` applies an edited file, kill -9 of the
// daemon makes systemd start a new one that re-attaches the recovery devices under fio verify
// with 0 errors, a watchdog that is not fed gets the daemon killed and restarted, and
// `systemctl stop` deletes the devices.
import t from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { commentLogsIfFailed, fio, listDevices, waitForWrites, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot } from '../lib/vm.js'

const vm = await bootVm({ init: 'systemd' })
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))
const config = '/run/ublkd-test/ublkd.json'

async function writeConfig(devices: Record<string, unknown>[]): Promise<void> {
  const json = JSON.stringify({ daemon: { metrics: 'off' }, devices }, null, 2)
  await vm.run(`mkdir -p /run/ublkd-test && cat > ${config}.new <<'EOF'\n${json}\nEOF\nmv ${config}.new ${config}`)
}

const devices = () => listDevices(vm)

const writesFlow = () => waitForWrites(vm, { writes: 50, target: 'loop', devices: 2 })

const show = async (property: string) => (await vm.run(`systemctl show -P ${property} ublkd`)).trim()

const declared = [
  { name: 'data', target: 'loop', file: '/run/ublkd-test/data.img', recovery: 'reissue', queues: 2 },
  { name: 'logs', target: 'loop', file: '/run/ublkd-test/logs.img', recovery: 'reissue' },
  { name: 'bench', target: 'null', size: '1G', recovery: 'reissue' },
]

t.test('systemd runs the daemon: ready when the devices are live, reload, restart after kill -9 without I/O errors', async (t) => {
  t.equal((await vm.run('cat /proc/1/comm')).trim(), 'systemd', 'systemd is PID 1')
  await vm.run('mkdir -p /run/ublkd-test && truncate -s 64M /run/ublkd-test/data.img /run/ublkd-test/logs.img')
  await writeConfig(declared)
  // The shipped unit, with this checkout's ublkd for /usr/local/bin/ublkd and the config above.
  await vm.run(`sed -e 's|/usr/local/bin/ublkd|/usr/bin/node ${repoRoot}/dist/main/cli.js|g' ` +
    `-e 's|/etc/ublkd/ublkd.json|${config}|' ${repoRoot}/examples/systemd/ublkd.service > /run/systemd/system/ublkd.service`)
  // A shorter watchdog than the shipped 30 s for the test below (a daemon loaded by emulation
  // still feeds it every 7.5 s with room to spare), and a short wait for the watchdog's SIGABRT
  // (a stopped process only dies of the SIGKILL after it).
  await vm.run('mkdir -p /run/systemd/system/ublkd.service.d && ' +
    'printf "[Service]\\nWatchdogSec=15\\nTimeoutAbortSec=5\\n" > /run/systemd/system/ublkd.service.d/test.conf')
  await vm.run('systemctl daemon-reload')
  const start = await vm.exec('systemctl start ublkd', { timeoutMs: 240_000 })
  t.equal(start.code, 0, `systemctl start: ${start.stderr}`)
  t.equal(await show('ActiveState'), 'active', 'active once READY=1 came')
  const live = await devices()
  t.same(live.map((device) => [device.name, device.state]).sort(), [['bench', 'LIVE'], ['data', 'LIVE'], ['logs', 'LIVE']],
    'every declared device was live when systemctl start returned')
  t.equal(await show('StatusText'), '3 devices live (3 declared)')
  const mainPid = Number(await show('MainPID'))
  t.equal(live[0]!.daemonPid, mainPid, 'the daemon is the unit\'s main process')
  t.match(await vm.run('journalctl -u ublkd -p info --no-pager -o cat | tail -n 50'), /"msg":"device live"/, 'its log is in the journal')

  await writeConfig([...declared, { name: 'extra', target: 'null', size: '2G' }])
  const reload = await vm.exec('systemctl reload ublkd', { timeoutMs: 120_000 })
  t.equal(reload.code, 0, `systemctl reload: ${reload.stderr}`)
  t.same((await devices()).map((device) => device.name).sort(), ['bench', 'data', 'extra', 'logs'], 'reload added extra')
  await writeConfig([...declared, { name: 'extra', target: 'null', size: '2G', queues: 2 }])
  const refused = await vm.exec('systemctl reload ublkd', { timeoutMs: 120_000 })
  t.not(refused.code, 0, 'a reload the daemon refuses fails systemctl reload')
  t.equal(await show('ActiveState'), 'active', 'and the service stays active')
  await writeConfig(declared)
  t.equal((await vm.exec('systemctl reload ublkd', { timeoutMs: 120_000 })).code, 0)

  const data = live.find((device) => device.name === 'data')!
  const logs = live.find((device) => device.name === 'logs')!
  const verify = (device: DeviceSummary) => fio(vm, `--name=${device.name} --filename=${device.blockDevice} --ioengine=io_uring ` +
    '--direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=16M --rate_iops=100 --verify=crc32c --verify_backlog=32 ' +
    '--verify_fatal=1 --time_based --runtime=600', 900_000)
  const jobs = [verify(data), verify(logs)]
  await writesFlow()
  await vm.run(`kill -9 ${mainPid}`)
  await waitInVm(vm, `[ "$(systemctl show -P MainPID ublkd)" != ${mainPid} ] && [ "$(systemctl show -P ActiveState ublkd)" = active ]`, 240_000)
  t.equal(await show('NRestarts'), '1', 'systemd restarted the daemon')
  const back = await devices()
  t.same(back.map((device) => [device.name, device.state]).sort(), [['bench', 'LIVE'], ['data', 'LIVE'], ['logs', 'LIVE']],
    'the new daemon re-attached every device')
  t.ok(back.every((device) => device.recoveries === 1), 're-attached, not re-created')
  await writesFlow()
  await vm.run('pkill -INT -x fio')
  for (const { result, report } of await Promise.all(jobs)) {
    // Stopped by SIGINT, fio exits non-zero; its report says whether any I/O failed.
    const job = report?.jobs[0]
    t.equal(job?.error, 0, `fio ${job?.jobname}: no I/O error across the restart: ${result.stderr}`)
    t.ok((job?.read.io_bytes ?? 0) > 0, `fio ${job?.jobname}: ${job?.read.io_bytes} bytes verified`)
  }
})

t.test('a watchdog that is not fed: systemd kills the daemon and starts a new one', async (t) => {
  const pid = Number(await show('MainPID'))
  // SIGSTOP freezes the whole daemon, its watchdog timer included, as a hang would.
  await vm.run(`kill -STOP ${pid}`)
  await waitInVm(vm, `[ "$(systemctl show -P MainPID ublkd)" != ${pid} ] && [ "$(systemctl show -P ActiveState ublkd)" = active ]`, 240_000)
  // systemd logs to the console in this VM (scripts/vm/init): its own messages are there.
  t.match(vm.consoleLog(), /ublkd\.service: Watchdog timeout/, 'systemd says why')
  t.same((await devices()).map((device) => device.state), ['LIVE', 'LIVE', 'LIVE'], 'the devices are served again')
})

t.test('systemctl stop deletes the devices', async (t) => {
  t.equal((await vm.exec('systemctl stop ublkd', { timeoutMs: 120_000 })).code, 0)
  t.equal(await show('ActiveState'), 'inactive')
  t.equal((await vm.run('ls /dev | grep -c "^ublkb" || true')).trim(), '0', 'no device left')
})
