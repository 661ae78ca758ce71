// The daemon as a service, against the real driver: a configuration file of three devices
// created at start, READY=1 to a real notification socket (test/lib/notify-listener.py) only
// once they are live, WATCHDOG=1 while healthy, STATUS=, journal priorities; reloads (ublkd
// reload and SIGHUP) that add, delete and resize, or refuse and change nothing; devices added by
// hand left alone; config dump; no WATCHDOG=1 while a stalled queue is healed; STOPPING=1.
// systemd itself does not run in the VM (its init is ours): the unit file is checked by
// `systemd-analyze verify` (test/unit/service-unit.test.ts).
import t from 'tap'

import { addDevice, commentLogsIfFailed, fio, listDevices, ublkd, ublkdCli, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))
const hasUpdateSize = vmKernel !== '6.12'
const dir = '/tmp/svc'
const state = `--state-dir ${dir}/state`
const config = `${dir}/ublkd.json`
const MiB = 2 ** 20

interface Notification { ms: number; fields: Record<string, string> }

async function notifications(): Promise<Notification[]> {
  const text = await vm.run(`cat ${dir}/notify.log 2>/dev/null || true`)
  return text.split('\n').filter((line) => line.length > 0).map((line) => JSON.parse(line) as Notification)
}

async function writeConfig(devices: Record<string, unknown>[]): Promise<void> {
  const json = JSON.stringify({ daemon: { metrics: 'off' }, devices }, null, 2)
  await vm.run(`cat > ${config}.new <<'EOF'\n${json}\nEOF\nmv ${config}.new ${config}`)
}

const devices = () => listDevices(vm, state)

const names = async () => (await devices()).map((device) => device.name).sort()

const alpha = { name: 'alpha', target: 'null', size: '1G' }
const beta = { name: 'beta', target: 'loop', file: `${dir}/beta.img`, recovery: 'reissue' }
const gamma = { name: 'gamma', target: 'memory', size: '32M' }

t.test('a configured daemon: ready once its devices are live, watchdog, status, journal priorities, reloads', async (t) => {
  await vm.run(`mkdir -p ${dir} && truncate -s 64M ${dir}/beta.img && : > ${dir}/daemon.log`)
  await vm.run(`setsid python3 ${repoRoot}/test/lib/notify-listener.py ${dir}/notify.sock ${dir}/notify.log < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `test -S ${dir}/notify.sock`, 30_000)
  await writeConfig([alpha, beta, gamma])
  const check = await ublkd(vm, `config check ${config}`)
  t.equal(check.code, 0, check.stderr)
  t.equal(check.stdout.trim(), `${config}: valid, 3 devices: alpha (null), beta (loop), gamma (memory)`)
  // stdout is "the journal" for the daemon: JOURNAL_STREAM names its device and inode.
  const journal = (await vm.run(`stat -c %d:%i ${dir}/daemon.log`)).trim()
  await vm.run(`setsid sh -c 'NOTIFY_SOCKET=${dir}/notify.sock WATCHDOG_USEC=2000000 JOURNAL_STREAM=${journal} ` +
    `${ublkdCli} daemon --config ${config} ${state} >> ${dir}/daemon.log 2>&1' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `grep -q '"READY": "1"' ${dir}/notify.log`, 120_000).catch(async (error: unknown) => {
    throw new Error(`${(error as Error).message}\ndaemon log:\n${await vm.run(`cat ${dir}/daemon.log`)}\nnotifications:\n` +
      `${await vm.run(`tail -n 20 ${dir}/notify.log 2>&1 || true`)}`)
  })
  const live = await devices()
  t.same(live.map((device) => [device.name, device.state, device.origin]).sort(),
    [['alpha', 'LIVE', 'config'], ['beta', 'LIVE', 'config'], ['gamma', 'LIVE', 'config']])
  const log = await vm.run(`cat ${dir}/daemon.log`)
  const lines = log.split('\n').filter((line) => line.length > 0)
  t.ok(lines.every((line) => /^<[2-7]>\{/.test(line)), 'every line carries a journal priority')
  t.match(log, /<6>\{[^\n]*"msg":"device live"/, 'info is priority 6')
  const lastLive = lines.map((line) => line.includes('"msg":"device live"')).lastIndexOf(true)
  const ready = lines.findIndex((line) => line.includes('"msg":"service manager told: ready"'))
  t.ok(lastLive >= 0 && ready > lastLive, 'READY=1 only after the last declared device went live')
  const first = (await notifications()).find((n) => n.fields['READY'] === '1')
  t.equal(first?.fields['STATUS'], '3 devices live (3 declared)')
  const fed = async () => (await notifications()).filter((n) => n.fields['WATCHDOG'] === '1').length
  const fedBefore = await fed()
  await new Promise((resolve) => setTimeout(resolve, 3000))
  t.ok(await fed() >= fedBefore + 2, 'WATCHDOG=1 keeps coming, every second (half of WATCHDOG_USEC)')

  const loop = live.find((device) => device.name === 'beta')!
  const memory = live.find((device) => device.name === 'gamma')!
  for (const device of [loop, memory]) {
    const { result, report } = await fio(vm, `--name=svc --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
      '--rw=randwrite --bs=4k --iodepth=8 --size=8M --verify=crc32c --verify_fatal=1')
    t.equal(result.code, 0, result.stderr)
    t.equal(report?.jobs[0]?.error, 0, `fio on ${device.name}: no error`)
  }

  const mine = await addDevice(vm, `-t null --name mine ${state}`)
  t.equal(mine.origin, 'hand')
  const beforeReload = (await notifications()).length

  // A change a live device cannot take refuses the whole reload.
  await writeConfig([{ ...alpha, queues: 2 }, beta, { name: 'delta', target: 'null' }])
  const refused = await ublkd(vm, `reload ${state}`)
  t.equal(refused.code, 1)
  t.match(refused.stderr, new RegExp(`${config}: reload refused, nothing changed: device alpha \\(/dev/ublkb\\d+\\): queues 1 -> 2 ` +
    'cannot change while it exists; remove it from the file, reload, then declare it again \\(its data stays in its backing\\) \\[UBLKD_ERR_CONFIG\\]'))
  t.same(await names(), ['alpha', 'beta', 'gamma', 'mine'], 'nothing changed')

  // Add delta, delete gamma, resize beta (7.x; 6.12 refuses the resize, so the whole reload).
  await writeConfig([alpha, { ...beta, size: '96M' }, { name: 'delta', target: 'null' }])
  const reload = await ublkd(vm, `reload ${state}`)
  if (hasUpdateSize) {
    t.equal(reload.code, 0, reload.stderr)
    t.equal(reload.stdout.trim(), 'added: delta\ndeleted: gamma\nresized: beta\nunchanged: alpha')
    t.equal(Number(await vm.run(`cat /sys/block/ublkb${loop.id}/size`)) * 512, 96 * MiB, 'beta resized')
  } else {
    t.equal(reload.code, 1)
    t.match(reload.stderr, /reload refused, nothing changed: device beta \(\/dev\/ublkb\d+\): ublkd resize needs UBLK_F_UPDATE_SIZE \(Linux 6\.16 or later\)/)
    t.same(await names(), ['alpha', 'beta', 'gamma', 'mine'], 'nothing changed')
    await writeConfig([alpha, beta, { name: 'delta', target: 'null' }])
    const again = await ublkd(vm, `reload ${state}`)
    t.equal(again.code, 0, again.stderr)
    t.equal(again.stdout.trim(), 'added: delta\ndeleted: gamma\nunchanged: alpha, beta')
  }
  t.same(await names(), ['alpha', 'beta', 'delta', 'mine'], 'the hand-added device is kept')
  const around = (await notifications()).slice(beforeReload).map((n) => Object.keys(n.fields).filter((key) => key !== 'WATCHDOG' && key !== 'STATUS'))
    .filter((keys) => keys.length > 0).map((keys) => keys.join(','))
  t.ok(around.includes('RELOADING') && around.lastIndexOf('READY') > around.lastIndexOf('RELOADING'),
    `RELOADING=1, then READY=1: ${around.join(' ')}`)

  // SIGHUP reloads too.
  await writeConfig([alpha, ...(hasUpdateSize ? [{ ...beta, size: '96M' }] : [beta]), { name: 'delta', target: 'null' },
    { name: 'epsilon', target: 'null', size: '2G' }])
  const pid = live[0]!.daemonPid
  await vm.run(`kill -HUP ${pid}`)
  await waitInVm(vm, `${ublkdCli} list --json ${state} | grep -q '"name": "epsilon"'`, 60_000)
  t.pass('SIGHUP applied the file: epsilon added')

  const dump = JSON.parse((await ublkd(vm, `config dump ${state}`)).stdout) as
    { file: string; daemon: Record<string, unknown>; devices: { name: string; sizeBytes: number }[]; addedByHand: { name: string }[] }
  t.equal(dump.file, config)
  t.match(dump.daemon, { metrics: 'off', stateDir: `${dir}/state` })
  t.same(dump.devices.map((device) => device.name).sort(), ['alpha', 'beta', 'delta', 'epsilon'])
  t.same(dump.addedByHand.map((device) => device.name), ['mine'])

  // A stalled queue is healed (with --recovery); meanwhile the watchdog is not fed.
  const stall = await addDevice(vm, `-t fault --size 16M --fault stall --fault-at 200 --fault-stall-ms 600000 --recovery ${state}`)
  const fedFrom = (await notifications()).length
  const { result } = await fio(vm, `--name=stall --filename=${stall.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=4 --size=4M')
  t.equal(result.code, 0, `fio through the heal: ${result.stderr}`)
  await waitInVm(vm, `grep -q 'the service watchdog is not fed meanwhile' ${dir}/daemon.log`, 60_000)
  await new Promise((resolve) => setTimeout(resolve, 3000))
  const feeds = (await notifications()).slice(fedFrom).filter((n) => n.fields['WATCHDOG'] === '1').map((n) => n.ms)
  const gap = Math.max(...feeds.slice(1).map((ms, i) => ms - feeds[i]!))
  t.ok(gap >= 2000, `no WATCHDOG=1 while the device was being healed: a ${gap} ms gap (fed every 1000 ms otherwise)`)
  t.equal((await devices()).find((device) => device.id === stall.id)?.recoveries, 1, 'healed once')
  t.equal((await ublkd(vm, `del -n ${stall.id} --force ${state}`)).code, 0)

  await vm.run(`kill -TERM ${pid}`)
  await waitInVm(vm, `! kill -0 ${pid}`, 60_000)
  t.ok((await notifications()).some((n) => n.fields['STOPPING'] === '1'), 'STOPPING=1 on SIGTERM')
})

t.test('a daemon whose configuration is invalid does not start, naming the problem', async (t) => {
  await vm.run(`echo '{"devices": [{"name": "x", "target": "null", "queues": 0}]}' > ${dir}/bad.json`)
  const result = await ublkd(vm, `daemon --config ${dir}/bad.json --state-dir ${dir}/bad-state --metrics off`, 60_000)
  t.equal(result.code, 1)
  t.match(result.stderr, `ublkd: ${dir}/bad.json: /devices/0/queues: must be >= 1 [UBLKD_ERR_CONFIG]`)
  const check = await ublkd(vm, `config check ${dir}/bad.json`)
  t.equal(check.code, 1)
  t.match(check.stderr, `${dir}/bad.json: /devices/0/queues: must be >= 1 [UBLKD_ERR_CONFIG]`)
})
