// The nbd target against real NBD servers inside the VM (nbdkit, qemu-nbd, nbd-server), driven by
// real clients through the real driver: fio verify, a filesystem, discard reaching the server, a
// server killed and restarted in the middle of fio, TLS, and the refusals.
import t from 'tap'

import { addDevice, commentLogsIfFailed, deleteDevicesLeft, fio, listDevices, startDaemon, ublkd, ublkNodes, waitForIo, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, type Vm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach(async (subtest) => {
  await commentLogsIfFailed(vm, t, subtest)
  await deleteDevicesLeft(vm)
  await vm.exec('pkill -9 nbdkit; pkill -9 qemu-nbd; pkill -9 nbd-server; true')
})

const kDaemonLog = '/run/ublkd/daemon.log'

/** Start nbdkit in the background with `args` (it forks once it listens), in network namespace
 *  `netns` if given; its pid file. */
async function nbdkit(vm: Vm, args: string, netns?: string): Promise<void> {
  await vm.run(`rm -f /tmp/nbdkit.pid; ${netns === undefined ? '' : `ip netns exec ${netns} `}nbdkit --pidfile /tmp/nbdkit.pid ${args}`)
  await waitInVm(vm, 'test -s /tmp/nbdkit.pid', 30_000)
}

async function verify(vm: Vm, device: string, extra = ''): Promise<void> {
  const { result, report } = await fio(vm, `--name=verify --filename=${device} --ioengine=io_uring --direct=1 ` +
    `--rw=randwrite --bsrange=512-128k --iodepth=16 --size=8M --verify=crc32c --verify_fatal=1 ${extra}`)
  t.equal(result.code, 0, `fio verify on ${device}: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0, 'no fio error')
}

t.test('nbdkit memory over a unix socket: geometry from the handshake, fio verify', async (t) => {
  await nbdkit(vm, '-U /tmp/nbdkit.sock memory 64M')
  const device = await addDevice(vm, '-t nbd --url "nbd+unix:///?socket=/tmp/nbdkit.sock"')
  t.equal(device.target, 'nbd')
  t.equal(device.sizeBytes, 64 * 2 ** 20, 'size from NBD_INFO_EXPORT')
  t.equal(device.queueMode, 'event-loop')
  const sysfs = `/sys/block/ublkb${device.id}/queue`
  t.equal((await vm.run(`cat ${sysfs}/write_cache`)).trim(), 'write back', 'SEND_FLUSH: a volatile cache')
  t.not((await vm.run(`cat ${sysfs}/discard_max_bytes`)).trim(), '0', 'SEND_TRIM: discard advertised')
  t.not((await vm.run(`cat ${sysfs}/write_zeroes_max_bytes`)).trim(), '0', 'SEND_WRITE_ZEROES advertised')
  await verify(vm, device.blockDevice)
  const [listed] = await listDevices(vm)
  t.equal(listed?.options['multiConn'], true)
})

t.test('nbdkit file over TCP, 2 queues (CAN_MULTI_CONN): mkfs.xfs, mount, fsck; discard punches holes in the server\'s file', async (t) => {
  await vm.run('truncate -s 512M /tmp/backing.img')
  await nbdkit(vm, '-i 127.0.0.1 -p 10809 file /tmp/backing.img')
  const device = await addDevice(vm, '-t nbd --url nbd://127.0.0.1/ -q 2')
  t.equal(device.queues, 2)
  await vm.run(`dd if=/dev/urandom of=${device.blockDevice} bs=1M count=16 oflag=direct status=none`)
  const before = Number(await vm.run('stat -c %b /tmp/backing.img'))
  await vm.run(`blkdiscard -o 0 -l 8M ${device.blockDevice}`)
  const after = Number(await vm.run('stat -c %b /tmp/backing.img'))
  t.ok(after <= before - (8 * 2 ** 20) / 512 * 0.9, `the server's file lost its blocks (${before} -> ${after} 512-byte blocks)`)
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh xfs && mkfs.xfs -q -f ${device.blockDevice} && mkdir -p /tmp/mnt && mount ${device.blockDevice} /tmp/mnt`)
  await vm.run('dd if=/dev/urandom of=/tmp/data bs=1M count=8 status=none && cp /tmp/data /tmp/mnt/data && sync')
  await vm.run('umount /tmp/mnt')
  await vm.run(`mount ${device.blockDevice} /tmp/mnt && cmp /tmp/data /tmp/mnt/data && umount /tmp/mnt`)
  const repair = await vm.exec(`xfs_repair -n ${device.blockDevice}`)
  t.equal(repair.code, 0, `xfs_repair -n clean: ${repair.stderr}`)
})

t.test('qemu-nbd serving a qcow2 image: written data compares equal, qemu-img check clean; one queue only without CAN_MULTI_CONN', async (t) => {
  await vm.run('qemu-img create -q -f qcow2 /tmp/disk.qcow2 64M')
  await vm.run('setsid qemu-nbd -t -k /tmp/qnbd.sock -f qcow2 -x disk /tmp/disk.qcow2 > /tmp/qemu-nbd.log 2>&1 < /dev/null &')
  await waitInVm(vm, 'test -S /tmp/qnbd.sock', 30_000)
  const refused = await ublkd(vm, 'add -t nbd --url "nbd+unix:///disk?socket=/tmp/qnbd.sock" -q 2')
  t.equal(refused.code, 2)
  t.match(refused.stderr, /at most 1 queue.*CAN_MULTI_CONN/)
  const wrong = await ublkd(vm, 'add -t nbd --url "nbd+unix:///nope?socket=/tmp/qnbd.sock"')
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, /export 'nope': no such export.*UBLKD_ERR_BACKEND/s)
  t.same(await ublkNodes(vm), [], 'nothing left by the refusals')

  const device = await addDevice(vm, '-t nbd --url "nbd+unix:///disk?socket=/tmp/qnbd.sock"')
  await verify(vm, device.blockDevice, '--offset=4M --size=16M')
  // A known image: the same bytes written through ublkd (over all that fio wrote) and into a raw
  // file; what nobody wrote reads as zeros from both.
  await vm.run('dd if=/dev/urandom of=/tmp/pattern bs=1M count=24 status=none && truncate -s 64M /tmp/expected.raw && ' +
    'dd if=/tmp/pattern of=/tmp/expected.raw bs=1M seek=4 conv=notrunc status=none')
  await vm.run(`dd if=/tmp/pattern of=${device.blockDevice} bs=1M seek=4 oflag=direct status=none && blockdev --flushbufs ${device.blockDevice}`)
  await ublkd(vm, `del -n ${device.id}`)
  await vm.run('pkill qemu-nbd; for i in $(seq 50); do pgrep qemu-nbd >/dev/null || break; sleep 0.1; done')
  const check = await vm.exec('qemu-img check /tmp/disk.qcow2')
  t.equal(check.code, 0, `qemu-img check: ${check.stdout}${check.stderr}`)
  const compare = await vm.exec('qemu-img compare -f raw -F qcow2 /tmp/expected.raw /tmp/disk.qcow2')
  t.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`)
})

t.test('nbd-server: fio verify', async (t) => {
  // On a unix socket: over TCP nbd-server looks the client's address up in DNS, which the VM
  // cannot reach (seconds per connection).
  await vm.run('truncate -s 64M /tmp/ns.img && printf "[generic]\\nunixsock = /tmp/ns.sock\\n[disk]\\nexportname = /tmp/ns.img\\n" > /tmp/ns.conf')
  await vm.run('nbd-server -C /tmp/ns.conf')
  await waitInVm(vm, 'test -S /tmp/ns.sock', 30_000)
  // nbd-server creates its socket, then spends seconds of emulated CPU starting up before it
  // answers (8 s seen): more than the default --connect-timeout of 10 s leaves a busy CI host.
  const device = await addDevice(vm, '-t nbd --url "nbd+unix:///disk?socket=/tmp/ns.sock" --connect-timeout 60')
  t.equal((await vm.run(`cat /sys/block/ublkb${device.id}/queue/discard_max_bytes`)).trim(), '0', 'no SEND_TRIM: no discard')
  await verify(vm, device.blockDevice)
})

t.test('the server killed and restarted in the middle of fio verify: no error, the reconnect logged', async (t) => {
  await vm.run('truncate -s 128M /tmp/backing.img')
  await nbdkit(vm, '-i 127.0.0.1 -p 10809 file /tmp/backing.img')
  const device = await addDevice(vm, '-t nbd --url nbd://127.0.0.1/')
  const run = fio(vm, `--name=restart --filename=${device.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite ` +
    '--bs=16k --iodepth=16 --size=32M --verify=crc32c --verify_fatal=1 --verify_backlog=256')
  await waitForIo(vm, device.id, 'write_ops', 200)
  await vm.run('kill -9 $(cat /tmp/nbdkit.pid)')
  await new Promise((resolve) => setTimeout(resolve, 3000))
  await nbdkit(vm, '-i 127.0.0.1 -p 10809 file /tmp/backing.img')
  const { result, report } = await run
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0, 'no fio error across the restart')
  const log = await vm.run(`grep -E 'lost the nbd server|connected to the nbd server again' ${kDaemonLog} || true`)
  t.match(log, /lost the nbd server/, 'the drop is logged')
  t.match(log, /"outageMs":\d+.*connected to the nbd server again/, 'the reconnect is logged with its pause')
})

t.test('--recovery: kill -9 of the daemon during fio verify, the next daemon re-attaches the nbd device', async (t) => {
  await vm.run('truncate -s 128M /tmp/backing.img')
  await nbdkit(vm, '-i 127.0.0.1 -p 10809 file /tmp/backing.img')
  const device = await addDevice(vm, '-t nbd --url nbd://127.0.0.1/ --recovery')
  const run = fio(vm, `--name=survive --filename=${device.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite ` +
    '--bs=4k --iodepth=16 --size=16M --rate_iops=500 --verify=crc32c --verify_fatal=1', 600_000)
  await waitForIo(vm, device.id, 'write_ops', 100)
  await vm.run(`kill -9 ${device.daemonPid}`)
  const log = await startDaemon(vm)
  const [back] = await listDevices(vm)
  t.equal(back?.id, device.id, 'the same device')
  t.equal(back?.state, 'LIVE', 'live again')
  t.not(back?.daemonPid, device.daemonPid, 'served by the new daemon')
  t.match(await vm.run(`cat ${log}`), /"msg":"device re-attached"/)
  const { result, report } = await run
  t.equal(result.code, 0, `fio: ${result.stderr}`)
  t.equal(report?.jobs[0]?.error, 0, 'no I/O error')
  t.equal(report?.jobs[0]?.read.io_bytes, 16 * 2 ** 20, 'every block verified')
})

t.test('two hosts: the server in a network namespace behind a veth pair with netem delay and loss, fio verify clean', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh veth && ${repoRoot}/scripts/vm/load-module.sh sch_netem`)
  // The test's own hosts inside the VM: nothing leaves it.
  await vm.run('ip netns add nbdsrv && ip link add ublk-cli type veth peer name ublk-srv && ip link set ublk-srv netns nbdsrv && ' +
    'ip addr add 10.77.0.2/24 dev ublk-cli && ip link set ublk-cli up && ' +
    'ip -n nbdsrv addr add 10.77.0.1/24 dev ublk-srv && ip -n nbdsrv link set ublk-srv up && ip -n nbdsrv link set lo up')
  t.teardown(() => vm.exec('ip link del ublk-cli; ip netns del nbdsrv; true'))
  await vm.run('tc qdisc add dev ublk-cli root netem delay 2ms 1ms loss 1% && ip netns exec nbdsrv tc qdisc add dev ublk-srv root netem delay 2ms loss 1%')
  await nbdkit(vm, '-i 10.77.0.1 -p 10809 memory 64M', 'nbdsrv')
  const device = await addDevice(vm, '-t nbd --url nbd://10.77.0.1/')
  await verify(vm, device.blockDevice, '--size=4M')
  const stats = await vm.run('tc -s qdisc show dev ublk-cli')
  t.match(stats, /dropped [1-9]/, `netem dropped packets on the link: ${stats.replace(/\s+/g, ' ')}`)
})

t.test('TLS: nbds:// with the test\'s own CA; a plaintext server refused for nbds://; a TLS server refused for nbd://', async (t) => {
  const ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
  await vm.run(`mkdir -p /tmp/pki && cd /tmp/pki && openssl req -x509 ${ec} -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=ublkd-test-ca 2>/dev/null && ` +
    `openssl req ${ec} -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 2>/dev/null && ` +
    'printf "subjectAltName=IP:127.0.0.1\\n" > ext.cnf && ' +
    'openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile ext.cnf 2>/dev/null')
  await nbdkit(vm, '-i 127.0.0.1 -p 10812 --tls=require --tls-certificates=/tmp/pki memory 32M')
  const device = await addDevice(vm, '-t nbd --url nbds://127.0.0.1:10812/ --tls-ca /tmp/pki/ca-cert.pem')
  t.equal((await listDevices(vm))[0]?.options['tls'], true)
  await verify(vm, device.blockDevice, '--size=4M')
  const plainToTls = await ublkd(vm, 'add -t nbd --url nbd://127.0.0.1:10812/')
  t.equal(plainToTls.code, 1)
  t.match(plainToTls.stderr, /requires TLS/)
  const untrusted = await ublkd(vm, 'add -t nbd --url nbds://127.0.0.1:10812/')
  t.equal(untrusted.code, 1)
  t.match(untrusted.stderr, /TLS handshake failed/)
  await ublkd(vm, `del -n ${device.id}`)
  await vm.run('kill $(cat /tmp/nbdkit.pid)')
  await nbdkit(vm, '-i 127.0.0.1 -p 10812 memory 32M')
  const tlsToPlain = await ublkd(vm, 'add -t nbd --url nbds://127.0.0.1:10812/ --tls-ca /tmp/pki/ca-cert.pem')
  t.equal(tlsToPlain.code, 1)
  t.match(tlsToPlain.stderr, /STARTTLS refused.*never falls back to plaintext/)
  t.same(await ublkNodes(vm), [], 'no device left by the refusals')
})

t.test('bad input: no server, a bad URL, TLS files without nbds, a missing CA file', async (t) => {
  const cases: [string, number, RegExp][] = [
    ['--url nbd://127.0.0.1:1/', 1, /127\.0\.0\.1:1: connection refused/],
    ['--url "nbd+unix:///?socket=/tmp/none.sock"', 1, /no such socket/],
    ['--url http://x/', 2, /scheme must be nbd, nbds, nbd\+unix or nbds\+unix/],
    ['', 2, /needs --url/],
    ['--url nbd://127.0.0.1/ --tls-ca /etc/hostname', 2, /need an nbds:\/\/ URL/],
    ['--url nbds://127.0.0.1/ --tls-ca /tmp/none.pem', 2, /cannot read --tls-ca \/tmp\/none\.pem \(ENOENT\)/],
    ['--url nbd://127.0.0.1/ --reconnect-timeout soon', 2, /--reconnect-timeout must be a number of seconds/],
  ]
  for (const [args, code, message] of cases) {
    const result = await ublkd(vm, `add -t nbd ${args}`)
    t.equal(result.code, code, args)
    t.match(result.stderr, message, args)
  }
  t.same(await ublkNodes(vm), [], 'no device left behind')
})
