// add / list / del against the real ublk driver, with 2 queues whose worker threads must be
// pinned to the CPUs the kernel reports for each queue.
import t from 'tap'

import { addDevice, commentLogsIfFailed, listDevices, ublkd, ublkdCli, ublkNodes, waitInVm, writePartitionTable } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot } from '../lib/vm.js'

/** '0-2, 5' or '0,1' -> [0, 1, 2, 5] */
function parseCpuList(text: string): number[] {
  const cpus: number[] = []
  for (const part of text.split(',').map((p) => p.trim()).filter((p) => p.length > 0)) {
    const [first, last] = part.split('-').map(Number)
    for (let cpu = first!; cpu <= (last ?? first!); cpu++) cpus.push(cpu)
  }
  return cpus
}

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

t.test('add memory 256M with 2 queues gives a live /dev/ublkbN with the right geometry', async (t) => {
  const device = await addDevice(vm, '-t memory --size 256M -q 2')
  t.equal(device.state, 'LIVE')
  t.equal(device.target, 'memory')
  t.equal(device.sizeBytes, 256 * 2 ** 20)
  t.equal(device.queues, 2)
  t.equal(device.depth, 128)
  t.equal(device.blockDevice, `/dev/ublkb${device.id}`)
  t.equal(device.charDevice, `/dev/ublkc${device.id}`)
  t.equal(typeof device.daemonPid, 'number')
  const name = `ublkb${device.id}`
  t.equal((await vm.run(`cat /sys/block/${name}/size`)).trim(), String((256 * 2 ** 20) / 512))
  t.equal((await vm.run(`cat /sys/block/${name}/queue/logical_block_size`)).trim(), '512')
  t.equal((await vm.run(`test -b ${device.blockDevice} && echo block`)).trim(), 'block')
  t.equal(device.ioScheduler, 'none', 'no block-layer scheduler by default')
  t.match(await vm.run(`cat /sys/block/${name}/queue/scheduler`), /\[none\]/)

  t.test('each queue thread is pinned to its queue affinity', async (t) => {
    t.equal(device.queueTids.length, 2)
    for (let queue = 0; queue < 2; queue++) {
      const kernelCpus = parseCpuList(await vm.run(`cat /sys/block/${name}/mq/${queue}/cpu_list`))
      const tid = device.queueTids[queue]
      const status = await vm.run(`cat /proc/${device.daemonPid}/task/${tid}/status`)
      const allowed = parseCpuList(/Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1] ?? '')
      t.ok(kernelCpus.length > 0, `queue ${queue} has CPUs`)
      t.same(allowed, kernelCpus, `queue ${queue} thread (tid ${tid}) is pinned to its CPUs`)
      t.same(device.queueAffinity[queue], kernelCpus, 'GET_QUEUE_AFFINITY agrees with blk-mq')
    }
  })

  t.test('queue threads are I/O flushers (PR_SET_IO_FLUSHER), the main thread is not', async (t) => {
    // /proc/PID/task/TID/stat field 9 is the task's PF_* flags.
    const kIoFlusher = 0x00080000 | 0x00100000 // PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE
    const flags = async (tid: number) => {
      const stat = await vm.run(`cat /proc/${device.daemonPid}/task/${tid}/stat`)
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[6])
    }
    for (const tid of device.queueTids) t.equal((await flags(tid!)) & kIoFlusher, kIoFlusher, `queue thread ${tid}`)
    t.equal((await flags(device.daemonPid)) & kIoFlusher, 0, 'main thread')
  })

  t.test('list shows it', async (t) => {
    const devices = await listDevices(vm)
    t.same(devices.map((d) => [d.id, d.state]), [[device.id, 'LIVE']])
    const table = await ublkd(vm, 'list')
    t.match(table.stdout, new RegExp(`${device.id}\\s+/dev/ublkb${device.id}\\s+-\\s+memory\\s+256 MiB\\s+2\\s+128\\s+LIVE\\s+${device.daemonPid}\\s+-\\s+${device.uuid}`))
  })

  t.test('dd writes and reads back through the device', async (t) => {
    await vm.run(`head -c 1048576 /dev/urandom > /tmp/pattern && dd if=/tmp/pattern of=${device.blockDevice} bs=64k oflag=direct status=none`)
    const back = await vm.run(`dd if=${device.blockDevice} bs=64k count=16 iflag=direct status=none | md5sum`)
    const want = await vm.run('md5sum < /tmp/pattern')
    t.equal(back.split(' ')[0], want.split(' ')[0])
  })

  t.test('del removes the device and leaves no node behind', async (t) => {
    const del = await ublkd(vm, `del -n ${device.id}`)
    t.equal(del.code, 0, del.stderr)
    t.match(del.stdout, `deleted /dev/ublkb${device.id}`)
    t.same(await ublkNodes(vm), [])
    t.same(await listDevices(vm), [])
  })
})

t.test('add null with an explicit id, then del --all', async (t) => {
  const device = await addDevice(vm, '-t null -n 7 --size 1T -d 64 --io-scheduler mq-deadline')
  t.equal(device.id, 7)
  t.equal(device.ioScheduler, 'mq-deadline', '--io-scheduler is applied')
  t.match(await vm.run('cat /sys/block/ublkb7/queue/scheduler'), /\[mq-deadline\]/)
  t.equal(device.depth, 64)
  t.equal(device.sizeBytes, 2 ** 40)
  const nonZeroBytes = await vm.run("dd if=/dev/ublkb7 bs=4k count=16 iflag=direct status=none | tr -d '\\000' | wc -c")
  t.equal(nonZeroBytes.trim(), '0', 'reads return zeros')
  const del = await ublkd(vm, 'del --all')
  t.equal(del.code, 0, del.stderr)
  t.same(await ublkNodes(vm), [])
})

// #14 hygiene: --mlock-buffers locks the queues' I/O buffers (mlock2 MLOCK_ONFAULT).
t.test('--mlock-buffers locks the I/O buffers in RAM, and unlocks them with the device', async (t) => {
  const locked = (pid: number) => vm.run(`awk '/^VmLck/ { print $2 }' /proc/${pid}/status`).then(Number)
  const device = await addDevice(vm, '-t memory --size 64M -d 8 --mlock-buffers')
  t.equal(device.mlockBuffers, true, 'list shows it')
  t.ok(await locked(device.daemonPid) >= 8 * 512, `the daemon has ${await locked(device.daemonPid)} KiB locked (8 tags x 512 KiB)`)
  await vm.run(`dd if=/dev/urandom of=/tmp/mlock.pattern bs=64k count=64 status=none && ` +
    `dd if=/tmp/mlock.pattern of=${device.blockDevice} bs=64k oflag=direct status=none`)
  t.equal(await vm.run(`dd if=${device.blockDevice} bs=64k count=64 iflag=direct status=none | md5sum`),
    await vm.run('md5sum < /tmp/mlock.pattern'), 'I/O through the locked buffers reads back what was written')
  await ublkd(vm, 'del --all')
  t.equal(await locked(device.daemonPid), 0, 'unlocked with the device')

})

t.test('safe delete: a device in use is refused with its users named, --force deletes it anyway', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh ext4 && ${repoRoot}/scripts/vm/load-module.sh dm-mod`)
  const mounted = await addDevice(vm, '-t memory --size 64M')
  const held = await addDevice(vm, '-t memory --size 16M')
  const stacked = await addDevice(vm, '-t memory --size 16M')
  const idle = await addDevice(vm, '-t null')
  await vm.run(`mkfs.ext4 -q ${mounted.blockDevice} && mkdir -p /tmp/safe && mount ${mounted.blockDevice} /tmp/safe && echo kept > /tmp/safe/file`)
  t.teardown(() => vm.exec('umount -l /tmp/safe'))
  // The shell opens the disk as sleep's stdin: a process holding it open.
  const holder = (await vm.run(`setsid sh -c 'exec sleep 600' < ${held.blockDevice} > /dev/null 2>&1 & echo $!`)).trim()
  await vm.run(`dmsetup create --noudevsync ublkd-held --table "0 32768 linear ${stacked.blockDevice} 0"`)
  t.teardown(() => vm.exec('dmsetup remove --noudevsync ublkd-held'))

  const refused = await ublkd(vm, `del -n ${mounted.id}`)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `ublkd: device ${mounted.id} is in use: mounted on /tmp/safe (ext4); del --force deletes it anyway [UBLKD_ERR_BUSY]`)
  t.equal((await vm.run('cat /tmp/safe/file')).trim(), 'kept', 'the filesystem is still served')
  const open = await ublkd(vm, `del -n ${held.id}`)
  t.match(open.stderr, `device ${held.id} is in use: open by pid ${holder} (sleep)`)
  const dm = await ublkd(vm, `del -n ${stacked.id}`)
  t.match(dm.stderr, new RegExp(`device ${stacked.id} is in use: held by dm-\\d+ \\(ublkd-held\\)`))

  const all = await ublkd(vm, 'del --all')
  t.equal(all.code, 1, 'del --all refuses what is in use')
  t.match(all.stderr, `deleted /dev/ublkb${idle.id}; `)
  t.match(all.stderr, `device ${mounted.id} is in use`)
  t.match(all.stderr, `device ${held.id} is in use`)
  t.same((await listDevices(vm)).map((d) => [d.id, d.state]).sort(), [[mounted.id, 'LIVE'], [held.id, 'LIVE'], [stacked.id, 'LIVE']].sort())

  await vm.run(`kill ${holder}`)
  await waitInVm(vm, `! kill -0 ${holder}`, 10_000)
  const released = await ublkd(vm, `del -n ${held.id}`)
  t.equal(released.code, 0, `once the process closed it: ${released.stderr}`)
  await vm.run('dmsetup remove --noudevsync ublkd-held')
  const unstacked = await ublkd(vm, `del -n ${stacked.id}`)
  t.equal(unstacked.code, 0, `once dm let it go: ${unstacked.stderr}`)

  const forced = await ublkd(vm, `del -n ${mounted.id} --force`)
  t.equal(forced.code, 0, forced.stderr)
  t.match(forced.stdout, `deleted /dev/ublkb${mounted.id}`)
  t.not((await vm.exec('dd if=/dev/zero of=/tmp/safe/new bs=4k count=1 conv=fsync status=none')).code, 0, 'the mount now fails its I/O')
  await vm.run('umount -l /tmp/safe')
  t.same(await ublkNodes(vm), [])
})

t.test('udev: ublkd udev-id names a device, and the shipped rule gives it /dev/disk/by-id/ublk-<uuid>', async (t) => {
  const uuid = '5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b'
  const device = await addDevice(vm, `-t memory --size 16M --uuid ${uuid}`)
  t.equal(device.uuid, uuid)
  t.equal(await vm.run(`${ublkdCli} udev-id ublkb${device.id}`), `ID_UBLKD_UUID=${uuid}\nID_UBLKD_TARGET=memory\n`)
  t.equal(await vm.run(`${ublkdCli} udev-id ublkb${device.id + 1}`), '', 'nothing for a device the daemon does not serve')
  t.equal(await vm.run(`${ublkdCli} udev-id ublkb0 --state-dir /tmp/no-daemon`), '', 'nothing, and no daemon started')
  t.equal((await vm.exec('test -e /tmp/no-daemon/ublkd.sock')).code, 1)
  t.match(await ublkd(vm, 'udev-id sda'), { code: 2, stderr: /udev-id needs one disk name: ublkbN/ })
  // udevadm test runs the rules (and their programs) for the disk as udevd would, this
  // checkout's CLI standing in for /usr/local/bin/ublkd.
  await vm.run(`mkdir -p /run/udev/rules.d && sed 's|/usr/local/bin/ublkd|/usr/bin/node ${repoRoot}/dist/main/cli.js|' ` +
    `${repoRoot}/examples/udev/60-ublkd.rules > /run/udev/rules.d/60-ublkd.rules`)
  t.teardown(() => vm.exec('rm -f /run/udev/rules.d/60-ublkd.rules'))
  const rules = await vm.exec(`udevadm test --action=change /sys/block/ublkb${device.id}`)
  t.match(rules.stdout + rules.stderr, `ID_UBLKD_UUID=${uuid}`)
  t.match(rules.stdout + rules.stderr, new RegExp(`DEVLINKS=.*/dev/disk/by-id/ublk-${uuid}`))
  // A partition gets the disk's name with -partN.
  await writePartitionTable(vm, device.blockDevice)
  await vm.run(`blockdev --rereadpt ${device.blockDevice}`)
  await waitInVm(vm, `test -e /sys/block/ublkb${device.id}/ublkb${device.id}p1`, 10_000)
  const part = await vm.exec(`udevadm test --action=change /sys/block/ublkb${device.id}/ublkb${device.id}p1`)
  t.match(part.stdout + part.stderr, new RegExp(`DEVLINKS=.*/dev/disk/by-id/ublk-${uuid}-part1`), 'the partition: ublk-<uuid>-part1')
  t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
})
