// Concurrent lifecycle requests against one daemon: two adds of one backing, deletes racing
// adds that reuse the freed device ids. At the end the daemon's list, /dev and the state dir
// must agree.
import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, descriptorKinds, listDevices, ublkd, ublkdCli, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())

t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
})

/** Device ids as the daemon, /dev and the state dir's records each see them. */
async function views(): Promise<{ listed: number[]; nodes: number[]; records: number[] }> {
  const listed = (await listDevices(vm)).map((device) => device.id).sort((a, b) => a - b)
  const nodes = (await ublkNodes(vm)).filter((name) => name.startsWith('ublkb')).map((name) => Number(name.slice(5)))
    .sort((a, b) => a - b)
  const records = (await vm.run('ls /run/ublkd/devices')).split('\n').filter((name) => /^\d+\.json$/.test(name))
    .map((name) => Number(name.slice(0, -5))).sort((a, b) => a - b)
  return { listed, nodes, records }
}

t.test('two concurrent adds of one backing file: exactly one succeeds, the other is refused clearly', async (t) => {
  await vm.run('truncate -s 64M /tmp/shared.img')
  for (let round = 0; round < 2; round++) {
    const results = await Promise.all([1, 2].map(() => ublkd(vm, 'add -t loop -f /tmp/shared.img')))
    const ok = results.filter((result) => result.code === 0)
    const refused = results.filter((result) => result.code !== 0)
    t.equal(ok.length, 1, `round ${round}: one add succeeds (${results.map((r) => r.stderr.trim()).join(' | ')})`)
    t.equal(refused.length, 1, `round ${round}: one is refused`)
    t.match(refused[0]?.stderr ?? '', /\/tmp\/shared\.img is (being added as another device right now|already served by device \d+)/)
    const { listed, nodes, records } = await views()
    t.equal(listed.length, 1, `round ${round}: one device`)
    t.same(nodes, listed, 'and one block device node')
    t.same(records, listed, 'and one record')
    t.equal((await ublkd(vm, 'del --all')).code, 0)
  }
})

t.test('deletes racing adds that get the freed ids: list, /dev and the state dir agree', async (t) => {
  // Loop devices flush their backing on release, after DEL_DEV freed the id in the kernel: an
  // add in that window gets the same id from the kernel.
  for (let i = 0; i < 3; i++) await vm.run(`truncate -s 32M /tmp/race-${i}.img`)
  for (let round = 0; round < 2; round++) {
    const created = await Promise.all([0, 1, 2].map((i) => ublkd(vm, `add -t loop -f /tmp/race-${i}.img --json`)))
    const ids = created.map((result) => (JSON.parse(result.stdout) as { id: number }).id)
    // Dirty page cache on each, for their release to flush.
    await vm.run(ids.map((id) => `dd if=/dev/urandom of=/dev/ublkb${id} bs=1M count=4 status=none`).join(' && '))
    const deletes = ids.map((id) => ublkd(vm, `del -n ${id}`))
    const adds = [0, 1].map(() => ublkd(vm, 'add -t null --size 1G'))
    const results = await Promise.all([...deletes, ...adds])
    t.same(results.map((result) => result.code), results.map(() => 0), `round ${round}: ${results.map((r) => r.stderr.trim()).filter(Boolean).join(' | ')}`)
    const { listed, nodes, records } = await views()
    t.equal(listed.length, 2 * (round + 1), `round ${round}: the null devices of every round so far`)
    t.same(nodes, listed, 'every listed device has its node, and no other node exists')
    t.same(records, listed, 'every listed device has its record, and no other record exists')
  }
})

// #14 item 9: a device's lifecycle operations run one at a time. A fault device that throws on
// every request from its 30th on heals over and over; `del --force` lands in the middle of one
// heal or another. The delete must wait for the heal and then remove everything: no device, node,
// record, worker thread or descriptor left, and the daemon still serves.
t.test('del --force during a heal loop: the device goes, nothing of it stays', async (t) => {
  // The daemon (started by the first add, if none runs yet), measured without devices.
  const { daemonPid: pid } = await addDevice(vm, '-t null --size 1G')
  await ublkd(vm, 'del --all')
  const threads = async () => Number(await vm.run(`ls /proc/${pid}/task | wc -l`))
  const fds = async () => (await descriptorKinds(vm, pid)).length
  const baseline = { threads: await threads(), fds: await fds() }
  for (let round = 0; round < 2; round++) {
    const device = await addDevice(vm, '-t fault --size 64M --fault throw --fault-at 30 --fault-count 1000000 --recovery -q 2')
    const load = vm.exec(`dd if=/dev/zero of=${device.blockDevice} bs=4k count=100000 oflag=direct status=none`, { timeoutMs: 120_000 })
    // Into the heal loop, then a little further each round so that the delete meets different steps.
    await waitInVm(vm, `${ublkdCli} list --json | grep -q '"recoveries": [1-9]'`, 60_000)
    await vm.run(`sleep 0.${round * 7}`)
    const started = Date.now()
    const del = await ublkd(vm, `del -n ${device.id} --force`)
    t.equal(del.code, 0, `round ${round}: del --force succeeds (${del.stderr.trim()})`)
    t.ok(Date.now() - started < 30_000, `round ${round}: del returned in ${Date.now() - started} ms`)
    await load
    t.same(await listDevices(vm), [], `round ${round}: the daemon lists nothing`)
    t.same(await ublkNodes(vm), [], `round ${round}: no node left`)
    t.equal((await vm.run('ls /run/ublkd/devices | grep -c json || true')).trim(), '0', `round ${round}: no record left`)
  }
  // Worker threads end and descriptors close shortly after the delete returns.
  await waitInVm(vm, `test $(ls /proc/${pid}/task | wc -l) -le ${baseline.threads}`, 20_000).catch(() => {})
  t.ok(await threads() <= baseline.threads, `daemon threads back to ${baseline.threads} (now ${await threads()})`)
  t.equal(await fds(), baseline.fds, 'daemon descriptors back to where they were')
})
