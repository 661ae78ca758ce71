// The kernel's ublk features against the real driver of each kernel: what `ublkd features`
// names, what a device negotiates (list --json shows its flags), an option whose feature the
// kernel lacks refused before anything is created, and control commands bounded by a deadline.
import t from 'tap'

import { addDevice, commentLogsIfFailed, listDevices, startDaemon, ublkd, ublkdCli, ublkNodes, waitInVm, writePartitionTable } from '../lib/ublkd-in-vm.js'
import { bootVm, vmKernel } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

interface FeaturesJson {
  mask: string
  names: string[]
  unknownBits: number[]
}

// Every UBLK_F_* of 7.3's header, bits 0-20, is offered by 7.3's driver (UBLK_F_ALL; integrity
// because Debian builds CONFIG_BLK_DEV_INTEGRITY). 6.12 offers bits 1-8 (zero copy masked out).
const kFeatures73 = [
  'UBLK_F_SUPPORT_ZERO_COPY', 'UBLK_F_URING_CMD_COMP_IN_TASK', 'UBLK_F_NEED_GET_DATA', 'UBLK_F_USER_RECOVERY',
  'UBLK_F_USER_RECOVERY_REISSUE', 'UBLK_F_UNPRIVILEGED_DEV', 'UBLK_F_CMD_IOCTL_ENCODE', 'UBLK_F_USER_COPY',
  'UBLK_F_ZONED', 'UBLK_F_USER_RECOVERY_FAIL_IO', 'UBLK_F_UPDATE_SIZE', 'UBLK_F_AUTO_BUF_REG', 'UBLK_F_QUIESCE',
  'UBLK_F_PER_IO_DAEMON', 'UBLK_F_BUF_REG_OFF_DAEMON', 'UBLK_F_BATCH_IO', 'UBLK_F_INTEGRITY', 'UBLK_F_SAFE_STOP_DEV',
  'UBLK_F_NO_AUTO_PART_SCAN', 'UBLK_F_SHMEM_ZC', 'UBLK_F_IO_DESC_SIZE',
]
const kExpected = vmKernel === '7.3'
  ? { mask: '0x1fffff', names: kFeatures73 }
  : { mask: '0x1fe', names: kFeatures73.slice(1, 9) }

t.test(`ublkd features names every bit ${vmKernel} offers`, async (t) => {
  const features = JSON.parse(await vm.run(`${ublkdCli} features --json`)) as FeaturesJson
  t.equal(features.mask, kExpected.mask)
  t.same(features.names, kExpected.names)
  t.same(features.unknownBits, [], 'no bit the header does not name')
  const text = await vm.run(`${ublkdCli} features`)
  for (const name of kExpected.names) t.match(text, new RegExp(`\\b${name}\\b`), name)
  t.notMatch(text, /bit \d+/)
})

t.test('list --json shows the flags each device got', async (t) => {
  const plain = await addDevice(vm, '-t null --size 1G')
  const recovering = await addDevice(vm, '-t null --size 1G --recovery')
  const [first, second] = await listDevices(vm)
  t.ok(first!.flags.includes('UBLK_F_CMD_IOCTL_ENCODE'), `${first!.flags.join(' ')}`)
  t.notOk(first!.flags.includes('UBLK_F_USER_RECOVERY'))
  t.ok(second!.flags.includes('UBLK_F_USER_RECOVERY') && second!.flags.includes('UBLK_F_USER_RECOVERY_REISSUE'))
  // 7.x gives every device per-I/O daemons and safe stop, asked for or not.
  for (const name of ['UBLK_F_PER_IO_DAEMON', 'UBLK_F_SAFE_STOP_DEV']) {
    t.equal(first!.flags.includes(name), vmKernel === '7.3', `${name} on ${vmKernel}`)
  }
  for (const device of [plain, recovering]) t.equal((await ublkd(vm, `del -n ${device.id}`)).code, 0)
})

async function partitionedImage(path: string): Promise<void> {
  await vm.run(`truncate -s 64M ${path}`)
  await writePartitionTable(vm, path)
}

t.test('--no-partition-scan: 7.x skips the scan, 6.12 refuses it before creating anything', async (t) => {
  await partitionedImage('/tmp/parted.img')
  if (vmKernel === '6.12') {
    const refused = await ublkd(vm, 'add -t loop -f /tmp/parted.img --no-partition-scan')
    t.equal(refused.code, 1, refused.stderr)
    t.match(refused.stderr, /--no-partition-scan needs UBLK_F_NO_AUTO_PART_SCAN \(Linux 7\.0 or later\): this kernel \(6\.12\.[^)]*\) does not offer it \[UBLKD_ERR_UNSUPPORTED\]/)
    t.same(await ublkNodes(vm), [], 'nothing created')
    return
  }
  const scanned = await addDevice(vm, '-t loop -f /tmp/parted.img')
  // The scan is asynchronous on 7.x: wait for it.
  await waitInVm(vm, `test -b ${scanned.blockDevice}p1`, 30_000)
  t.pass('a default device gets its partition scanned')
  t.equal((await ublkd(vm, `del -n ${scanned.id}`)).code, 0)
  const unscanned = await addDevice(vm, '-t loop -f /tmp/parted.img --no-partition-scan')
  t.ok((await listDevices(vm))[0]!.flags.includes('UBLK_F_NO_AUTO_PART_SCAN'))
  await new Promise((resolve) => setTimeout(resolve, 3000))
  t.equal((await vm.exec(`test -e ${unscanned.blockDevice}p1`)).code, 1, 'no partition without the scan')
  await vm.run(`blockdev --rereadpt ${unscanned.blockDevice}`)
  await waitInVm(vm, `test -b ${unscanned.blockDevice}p1`, 30_000)
  t.pass('an explicit re-read still finds it')
  t.equal((await ublkd(vm, `del -n ${unscanned.id}`)).code, 0)
})

t.test('a control command past its deadline fails with UBLKD_ERR_KERNEL_TIMEOUT; the daemon lives, nothing is left', async (t) => {
  await ublkd(vm, 'del --all --force')
  await vm.run("pkill -f '[c]li.js daemon' || true")
  await waitInVm(vm, "! pgrep -f '[c]li.js daemon'", 30_000)
  const log = await startDaemon(vm, '--kernel-timeout 5')
  const started = Date.now()
  // Queue 0 never fetches its last tag, so START_DEV waits for ever.
  const stuck = await ublkd(vm, 'add -t fault --size 16M --fault no-fetch -d 4')
  const seconds = (Date.now() - started) / 1000
  t.equal(stuck.code, 1, stuck.stderr)
  t.match(stuck.stderr, /START_DEV of device \d+ did not complete within 5 s.*\[UBLKD_ERR_KERNEL_TIMEOUT\]/)
  t.ok(seconds < 60, `the add returned after ${seconds.toFixed(1)} s`)
  await waitInVm(vm, '! ls /dev | grep -qE "^ublk[bc][0-9]+$"', 30_000)
  t.same(await ublkNodes(vm), [], 'the half-started device was deleted')
  const next = await addDevice(vm, '-t memory --size 16M')
  const read = await vm.exec(`dd if=${next.blockDevice} of=/dev/null bs=4k count=4 iflag=direct status=none`)
  t.equal(read.code, 0, `the same daemon serves the next device: ${read.stderr}`)
  t.equal((await ublkd(vm, `del -n ${next.id}`)).code, 0)
  const text = await vm.run(`cat ${log}`)
  t.match(text, /control command timed out; asking the kernel to cancel it/)
  t.notMatch(await vm.run('dmesg'), /blocked for more than/, 'no hung task in the kernel')
  await vm.run("pkill -f '[c]li.js daemon' || true")
})
