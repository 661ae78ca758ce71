// `npm run bench`: one VM boot, the same fio jobs against the kernel's own drivers and against
// ublkd, and each ublkd row's ratio to its kernel counterpart measured in that same boot.
// Absolute numbers under TCG emulation mean little; same-boot ratios are the yardstick.
//   BENCH_RUNTIME=8 (seconds per job)  BENCH_JOBS=randread-4k-qd32,...  BENCH_TARGETS=null,null_blk,...
import fs from 'node:fs'
import path from 'node:path'

import { fio, ublkd, ublkdCli, waitInVm, type FioJobSide } from '../test/lib/ublkd-in-vm.js'
import { bootVm, repoRoot, type Vm } from '../test/lib/vm.js'

interface Job { name: string; rw: string; bs: string; depth: number }
const allJobs: Job[] = [
  { name: 'randread-4k-qd1', rw: 'randread', bs: '4k', depth: 1 },
  { name: 'randread-4k-qd32', rw: 'randread', bs: '4k', depth: 32 },
  { name: 'randwrite-4k-qd32', rw: 'randwrite', bs: '4k', depth: 32 },
  { name: 'seqread-128k-qd16', rw: 'read', bs: '128k', depth: 16 },
  { name: 'seqwrite-128k-qd16', rw: 'write', bs: '128k', depth: 16 },
]
/** With 2 queues only the deep 4k jobs, where a second queue can matter. */
const twoQueueJobs = new Set(['randread-4k-qd32', 'randwrite-4k-qd32'])

interface Target {
  name: string
  queues: number
  /** The kernel row a ublkd row is compared with. */
  baseline?: string
  up(vm: Vm): Promise<string>
  down(vm: Vm): Promise<void>
}

const loadModule = (args: string) => `${repoRoot}/scripts/vm/load-module.sh ${args}`
const backing = '/tmp/bench.img'
const kBackingBytes = 1024 * 2 ** 20

function nullBlk(name: string, queues: number, memoryBacked: boolean): Target {
  return {
    name, queues,
    up: async (vm) => {
      await vm.run(loadModule(`null_blk nr_devices=1 queue_mode=2 irqmode=0 gb=1 submit_queues=${queues} hw_queue_depth=128 memory_backed=${memoryBacked ? 1 : 0}`))
      return '/dev/nullb0'
    },
    down: async (vm) => { await vm.run('busybox rmmod null_blk') },
  }
}

function kernelLoop(queues: number): Target {
  return {
    name: 'loop', queues,
    up: async (vm) => (await vm.run(`${loadModule('loop')} && losetup --direct-io=on -f --show ${backing}`)).trim(),
    down: async (vm) => { await vm.run('losetup -D') },
  }
}

function ublkdTarget(target: string, queues: number, baseline: string, extra: string): Target {
  let id = -1
  return {
    name: `ublkd ${target}`, queues, baseline,
    up: async (vm) => {
      const result = await ublkd(vm, `add -t ${target} ${extra} -q ${queues} --json`)
      if (result.code !== 0) throw new Error(result.stderr.trim())
      id = (JSON.parse(result.stdout) as { id: number }).id
      return `/dev/ublkb${id}`
    },
    down: async (vm) => { await ublkd(vm, `del -n ${id}`) },
  }
}

export interface Row {
  target: string
  queues: number
  job: string
  iops: number
  mibPerSecond: number
  meanUs: number
  p99Us: number
  iopsRatio?: number
  p99Ratio?: number
  skipped?: string
}

function sideOf(report: { read: FioJobSide; write: FioJobSide }, rw: string): FioJobSide {
  return rw.includes('read') ? report.read : report.write
}

async function measure(vm: Vm, device: string, job: Job, queues: number, runtime: number): Promise<Omit<Row, 'target' | 'queues' | 'job'>> {
  const { result, report } = await fio(vm, `--name=${job.name} --filename=${device} --ioengine=io_uring --direct=1 ` +
    `--rw=${job.rw} --bs=${job.bs} --iodepth=${job.depth} --numjobs=${queues} --group_reporting ` +
    `--time_based --runtime=${runtime} --ramp_time=2 --size=${kBackingBytes}`, (runtime + 60) * 1000)
  const side = report?.jobs[0] ? sideOf(report.jobs[0], job.rw) : undefined
  if (result.code !== 0 || !side) throw new Error(`fio failed: ${result.stderr.trim().slice(0, 200)}`)
  return {
    iops: side.iops,
    mibPerSecond: side.io_bytes / runtime / 2 ** 20,
    meanUs: (side.lat_ns?.mean ?? 0) / 1000,
    p99Us: (side.clat_ns?.percentile?.['99.000000'] ?? 0) / 1000,
  }
}

function table(rows: Row[]): string {
  const header = ['target', 'q', 'job', 'IOPS', 'MiB/s', 'mean us', 'p99 us', 'IOPS ratio', 'p99 ratio']
  const cells = rows.map((r) => r.skipped
    ? [r.target, String(r.queues), r.job, `skipped: ${r.skipped}`, '', '', '', '', '']
    : [r.target, String(r.queues), r.job, r.iops.toFixed(0), r.mibPerSecond.toFixed(1), r.meanUs.toFixed(0),
      r.p99Us.toFixed(0), r.iopsRatio === undefined ? '' : `${r.iopsRatio.toFixed(2)}x`,
      r.p99Ratio === undefined ? '' : `${r.p99Ratio.toFixed(2)}x`])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  return [header, ...cells].map((row) => row.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n')
}

function svg(rows: Row[]): string {
  const bars = rows.filter((r) => r.iopsRatio !== undefined)
  const width = 760
  const rowHeight = 22
  const scale = (width - 330) / Math.max(1.2, ...bars.map((r) => r.iopsRatio!))
  const items = bars.map((r, i) => {
    const y = 40 + i * rowHeight
    const w = r.iopsRatio! * scale
    const colour = r.iopsRatio! >= 0.85 ? '#2e8b57' : r.iopsRatio! >= 0.6 ? '#d4a017' : '#c0392b'
    return `<text x="10" y="${y + 14}" font-size="12">${r.target} q${r.queues} ${r.job}</text>` +
      `<rect x="300" y="${y}" width="${w.toFixed(1)}" height="16" fill="${colour}"/>` +
      `<text x="${(305 + w).toFixed(1)}" y="${y + 13}" font-size="11">${r.iopsRatio!.toFixed(2)}x</text>`
  }).join('\n')
  const one = 300 + scale
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${60 + bars.length * rowHeight}" font-family="sans-serif">
<text x="10" y="20" font-size="14" font-weight="bold">ublkd IOPS relative to the kernel driver (same VM boot)</text>
<line x1="${one}" y1="30" x2="${one}" y2="${40 + bars.length * rowHeight}" stroke="#555" stroke-dasharray="4 3"/>
<text x="${one - 8}" y="34" font-size="10">1.0x</text>
${items}
</svg>
`
}

/**
 * What publishing the queue stats every loop turn costs: ublkd null, 4k randread qd32, with a
 * daemon that publishes only with the heartbeat, against the row measured with the default.
 */
async function measureStatsCost(vm: Vm, rows: Row[], runtime: number): Promise<string> {
  const job = allJobs.find((candidate) => candidate.name === 'randread-4k-qd32')!
  const everyTurn = rows.find((r) => r.target === 'ublkd null' && r.queues === 1 && r.job === job.name && !r.skipped)
  if (!everyTurn) return ''
  await vm.run(`kill -TERM $(pgrep -f '[c]li.js daemon') && while pgrep -f '[c]li.js daemon' > /dev/null; do sleep 0.2; done`)
  await vm.run(`setsid sh -c '${ublkdCli} daemon --metrics off --stats-publish heartbeat > /tmp/daemon-quiet.log 2>&1' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `grep -q '"msg":"daemon ready"' /tmp/daemon-quiet.log`, 60_000)
  const target = ublkdTarget('null', 1, 'null_blk', '--size 1G')
  const device = await target.up(vm)
  const quiet = await measure(vm, device, job, 1, runtime)
  await target.down(vm)
  const cost = (quiet.iops - everyTurn.iops) / quiet.iops
  const verdict = cost <= 0 ? 'publishing every turn measured no slower: the difference is noise'
    : cost < 0.03 ? 'within the 3% budget' : 'OUTSIDE the 3% budget'
  return `\n\nstats cost (ublkd null, ${job.name}): ${everyTurn.iops.toFixed(0)} IOPS publishing every turn, ` +
    `${quiet.iops.toFixed(0)} publishing with the heartbeat only: cost ${(cost * 100).toFixed(1)}% (${verdict})`
}

async function main(): Promise<void> {
  const runtime = Number(process.env['BENCH_RUNTIME'] ?? 8)
  const jobFilter = process.env['BENCH_JOBS']?.split(',')
  const targetFilter = process.env['BENCH_TARGETS']?.split(',')
  const jobs = allJobs.filter((job) => !jobFilter || jobFilter.includes(job.name))
  const targets: Target[] = [
    nullBlk('null_blk', 1, false), nullBlk('null_blk memory', 1, true), kernelLoop(1),
    ublkdTarget('null', 1, 'null_blk', '--size 1G'), ublkdTarget('memory', 1, 'null_blk memory', '--size 1G'),
    ublkdTarget('loop', 1, 'loop', `-f ${backing}`),
    nullBlk('null_blk', 2, false), kernelLoop(2),
    ublkdTarget('null', 2, 'null_blk', '--size 1G'), ublkdTarget('loop', 2, 'loop', `-f ${backing}`),
  ].filter((target) => !targetFilter || targetFilter.includes(target.name.replace('ublkd ', '')) || targetFilter.includes(target.name))

  const vm = await bootVm({ memMiB: 3072 })
  const rows: Row[] = []
  try {
    await vm.run(`fallocate -l ${kBackingBytes} ${backing}`)
    await vm.run(`setsid sh -c '${ublkdCli} daemon --metrics off > /tmp/daemon.log 2>&1' < /dev/null > /dev/null 2>&1 &`)
    await waitInVm(vm, `grep -q '"msg":"daemon ready"' /tmp/daemon.log`, 60_000)
    const kernel = (await vm.run('uname -r')).trim()
    const fioVersion = (await vm.run('fio --version')).trim()
    process.stdout.write(`ublkd bench: Linux ${kernel}, ${(await vm.run('nproc')).trim()} vCPU (QEMU TCG), ${fioVersion}, ` +
      `${runtime} s per job, ${new Date().toISOString()}\nAbsolute numbers under emulation are meaningless; compare the ratios.\n\n`)
    for (const target of targets) {
      const targetJobs = jobs.filter((job) => target.queues === 1 || twoQueueJobs.has(job.name))
      if (targetJobs.length === 0) continue
      let device: string
      try {
        device = await target.up(vm)
      } catch (error) {
        for (const job of targetJobs) rows.push({ target: target.name, queues: target.queues, job: job.name, iops: 0, mibPerSecond: 0, meanUs: 0, p99Us: 0, skipped: (error as Error).message })
        continue
      }
      for (const job of targetJobs) {
        const row: Row = { target: target.name, queues: target.queues, job: job.name, iops: 0, mibPerSecond: 0, meanUs: 0, p99Us: 0 }
        try {
          Object.assign(row, await measure(vm, device, job, target.queues, runtime))
        } catch (error) {
          row.skipped = (error as Error).message
        }
        const base = rows.find((r) => r.target === target.baseline && r.queues === target.queues && r.job === job.name && !r.skipped)
        if (base && !row.skipped) {
          row.iopsRatio = row.iops / base.iops
          if (base.p99Us > 0) row.p99Ratio = row.p99Us / base.p99Us
        }
        rows.push(row)
        process.stdout.write(`  ${target.name} q${target.queues} ${job.name}: ${row.skipped ?? `${row.iops.toFixed(0)} IOPS`}\n`)
      }
      await target.down(vm)
    }
    const statsCost = await measureStatsCost(vm, rows, runtime)
    const text = `${table(rows)}${statsCost}`
    process.stdout.write(`\n${text}\n`)
    const results = path.join(repoRoot, 'bench', 'results')
    fs.mkdirSync(results, { recursive: true })
    fs.writeFileSync(path.join(results, 'latest.json'), `${JSON.stringify({ kernel, fio: fioVersion, runtime, date: new Date().toISOString(), rows }, null, 2)}\n`)
    fs.writeFileSync(path.join(results, 'latest.txt'), `${text}\n`)
    fs.writeFileSync(path.join(results, 'latest.svg'), svg(rows))
    process.stdout.write(`\nwritten: bench/results/latest.{json,txt,svg}\n`)
  } finally {
    await vm.shutdown()
  }
}

await main()
