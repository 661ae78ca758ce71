// `npm run demo`: boot the VM with the real ublk driver, serve a memory device with the daemon,
// drive it with fio for a few seconds, and show what fio and the daemon saw.
import { addDevice, fio, ublkdCli } from '../test/lib/ublkd-in-vm.js'
import { bootVm, vmKernel } from '../test/lib/vm.js'

const kRuntimeSeconds = 10

function line(text = ''): void {
  process.stdout.write(`${text}\n`)
}

const started = Date.now()
line(`booting Debian's Linux ${vmKernel} under QEMU (software emulation; UBLKD_VM_KERNEL=6.12 or 7.3 picks the kernel) ...`)
const vm = await bootVm()
try {
  line(`VM ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${(await vm.run('uname -r')).trim()}, ${(await vm.run('nproc')).trim()} CPUs`)
  line()
  line('$ ublkd add -t memory --size 256M -q 2')
  const device = await addDevice(vm, '-t memory --size 256M -q 2')
  line(`${device.blockDevice}: memory ${device.sizeBytes / 2 ** 20} MiB, ${device.queues} queues x ${device.depth}, ` +
    `queue threads ${device.queueTids.join(', ')} pinned to CPUs ${device.queueAffinity.map((cpus) => cpus.join(',')).join(' / ')}`)
  line()
  line(`$ fio --rw=randrw --bs=4k --iodepth=32 --numjobs=2 --runtime=${kRuntimeSeconds} ${device.blockDevice}`)
  const { result, report } = await fio(vm, `--name=demo --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    `--rw=randrw --bs=4k --iodepth=32 --numjobs=2 --time_based --runtime=${kRuntimeSeconds} --size=256M --group_reporting`)
  if (result.code !== 0 || !report) throw new Error(`fio failed: ${result.stderr}`)
  const job = report.jobs[0]!
  for (const [name, side] of [['read', job.read], ['write', job.write]] as const) {
    const p99Us = (side.clat_ns?.percentile?.['99.000000'] ?? 0) / 1000
    line(`  ${name.padEnd(5)} ${Math.round(side.iops).toString().padStart(7)} IOPS  ` +
      `${(side.io_bytes / 2 ** 20 / kRuntimeSeconds).toFixed(1).padStart(6)} MiB/s  ` +
      `mean latency ${((side.lat_ns?.mean ?? 0) / 1000).toFixed(0)} us  p99 ${p99Us.toFixed(0)} us`)
  }
  line('  (emulation runs ~20x below bare metal: compare speeds only as ratios within one boot)')
  line()
  for (const command of ['list', `stats -n ${device.id}`, `del -n ${device.id}`]) {
    line(`$ ublkd ${command}`)
    line((await vm.run(`${ublkdCli} ${command}`)).trimEnd())
    line()
  }
} finally {
  await vm.shutdown()
}
