// `npm run bench`: boots the test VM once and runs the same fio jobs against the kernel's own
// drivers (null_blk, null_blk memory-backed, loop, the NBD client nbd.ko + nbd-client) and against
// ublkd's null, memory, loop and nbd targets, then prints each ublkd row's ratio to its kernel counterpart measured in that same
// boot. Under QEMU TCG absolute numbers mean little and drift by 10-20% within minutes, so a
// ublkd device and its kernel counterpart exist side by side and their fio runs alternate,
// BENCH_REPEAT times per job; rows give the medians. The nbd rows: ublkd nbd and the kernel's
// NBD client, one connection each over a unix socket, each to its own `nbdkit memory 1G` in the
// VM (1 queue only).
//
//   BENCH_RUNTIME=6             seconds per fio run after a BENCH_RAMP=1 s ramp
//   BENCH_REPEAT=3              fio runs per device and job, alternating with its counterpart
//   BENCH_JOBS=a,b              only these jobs (names below)
//   BENCH_TARGETS=null,null_blk only these targets: null_blk null_blk_mem kernel_loop kernel_nbd
//                               null memory loop nbd
//   BENCH_QUEUES=1,2            only these queue counts
//   BENCH_Q2_JOBS=a,b           jobs that also run with 2 queues (default: the two qd32 4k jobs)
//   BENCH_VARIANTS=0            skip the rows that show what the tuning flags do (and, on 7.x, the
//                               null and loop rows with --io-mode zero-copy)
//   BENCH_FIO_ARGS='...'        extra fio arguments for every job (experiments, e.g. --cpus_allowed=1)
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import type { DeviceSummary } from '../src/main/device.js'
import { addDevice, fio, ublkd, ublkdCli, waitInVm } from '../test/lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel, type Vm } from '../test/lib/vm.js'

// ---------------------------------------------------------------------------------------------
// Jobs and targets

export interface Job { name: string; rw: 'randread' | 'randwrite' | 'read' | 'write'; bs: string; depth: number; what: string }

export const kJobs: readonly Job[] = [
  { name: 'randread-4k-qd1', rw: 'randread', bs: '4k', depth: 1, what: 'latency of one request alone' },
  { name: 'randread-4k-qd32', rw: 'randread', bs: '4k', depth: 32, what: 'request rate: per-request cost of the path' },
  { name: 'randwrite-4k-qd32', rw: 'randwrite', bs: '4k', depth: 32, what: 'request rate with data flowing to the server' },
  { name: 'seqread-128k-qd16', rw: 'read', bs: '128k', depth: 16, what: 'bandwidth out of the server: copies' },
  { name: 'seqwrite-128k-qd16', rw: 'write', bs: '128k', depth: 16, what: 'bandwidth into the server: copies' },
]
const kDefaultQ2Jobs = ['randread-4k-qd32', 'randwrite-4k-qd32']

type Kind = 'kernel' | 'ublkd'

/** A device the jobs run against. up() returns the block device and notes for the row. */
interface Subject {
  /** Filter name (BENCH_TARGETS). */
  id: string
  /** Shown in the table. */
  label: string
  kind: Kind
  queues: number
  /** ublkd rows: the id of the kernel subject they are compared with. */
  counterpart?: string
  /** Only these jobs (the tuning-flag rows run one). */
  onlyJobs?: readonly string[]
  /** ublkd rows served by a second daemon: its --state-dir. */
  stateDir?: string
  up(vm: Vm): Promise<{ device: string; note: string; summary?: DeviceSummary }>
  down(vm: Vm): Promise<void>
}

const backingFile = '/tmp/bench.img'
const zeroCopyBackingFile = '/tmp/bench-zero-copy.img'
const kBackingBytes = 1024 * 2 ** 20
// null_blk mem, ublkd memory and the tmpfs backing each hold up to 1 GiB at once; 4 GiB left the
// guest reclaiming under the q2 randwrite runs.
const kVmMemMiB = 8192
const loadModule = (args: string): string => `${repoRoot}/scripts/vm/load-module.sh ${args}`

/**
 * Write a RAM-backed device end to end once before it is measured: both null_blk mem and ublkd
 * memory allocate a page on its first write, and the first runs of a random-write job would
 * measure that allocation (the runs rose 25k -> 44k -> 60k IOPS) rather than the steady state.
 */
async function fillDevice(vm: Vm, device: string): Promise<void> {
  const { result } = await fio(vm, `--name=fill --filename=${device} --ioengine=io_uring --direct=1 --rw=write ` +
    '--bs=1M --iodepth=16 --size=1G')
  if (result.code !== 0) throw new Error(`filling ${device}: ${result.stderr.trim()}`)
}

function nullBlk(memoryBacked: boolean, queues: number): Subject {
  const params = `nr_devices=1 queue_mode=2 irqmode=0 gb=1 bs=512 hw_queue_depth=128 submit_queues=${queues} ` +
    `memory_backed=${memoryBacked ? 1 : 0}`
  return {
    id: memoryBacked ? 'null_blk_mem' : 'null_blk',
    label: memoryBacked ? 'null_blk mem' : 'null_blk',
    kind: 'kernel', queues,
    up: async (vm) => {
      // load-module.sh keeps a loaded module as it is: a left-over one would carry other params.
      if ((await vm.exec("grep -q '^null_blk ' /proc/modules")).code === 0) throw new Error('null_blk is still loaded from an earlier row')
      await vm.run(loadModule(`null_blk ${params}`))
      await waitInVm(vm, 'test -b /dev/nullb0', 10_000)
      if (memoryBacked) await fillDevice(vm, '/dev/nullb0')
      return { device: '/dev/nullb0', note: params.replace(/ /g, ',') }
    },
    down: async (vm) => { await vm.run('busybox rmmod null_blk') },
  }
}

/** The active scheduler of a block device (`[mq-deadline] none` -> mq-deadline). */
async function schedulerOf(vm: Vm, device: string): Promise<string> {
  const text = (await vm.exec(`cat /sys/block/${path.basename(device)}/queue/scheduler`)).stdout
  return /\[([^\]]+)\]/.exec(text)?.[1] ?? '?'
}

/**
 * The nbd rows' servers: one `nbdkit memory 1G` per device (so both start empty and equal), on a
 * unix socket in the VM (both clients pay the same transport; TCP would add the loopback stack).
 */
const nbdkitSocket = (who: string): string => `/tmp/bench-nbd-${who}.sock`
const nbdkitPidFile = (who: string): string => `/tmp/bench-nbdkit-${who}.pid`

async function startNbdkit(vm: Vm, who: string): Promise<void> {
  await stopNbdkit(vm, who)
  // nbdkit forks once it listens, after writing its pid file.
  await vm.run(`nbdkit --pidfile ${nbdkitPidFile(who)} -U ${nbdkitSocket(who)} memory ${kBackingBytes}`)
  await waitInVm(vm, `test -s ${nbdkitPidFile(who)} && test -S ${nbdkitSocket(who)}`, 30_000)
}

/** Kill the nbdkit of `who`, if any, and wait until it is gone (its memory with it). */
async function stopNbdkit(vm: Vm, who: string): Promise<void> {
  await vm.exec(`pid=$(cat ${nbdkitPidFile(who)} 2>/dev/null) && kill $pid && ` +
    `for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; rm -f ${nbdkitPidFile(who)} ${nbdkitSocket(who)}`)
}

/** The kernel's NBD client (nbd.ko, configured by nbd-client over netlink), one connection. */
function kernelNbd(queues: number): Subject {
  const device = '/dev/nbd0'
  let connected = false
  return {
    id: 'kernel_nbd', label: 'kernel nbd', kind: 'kernel', queues,
    up: async (vm) => {
      await vm.run(loadModule('nbd nbds_max=4'))
      await startNbdkit(vm, 'kernel')
      const args = `-b 512 -C ${queues}`
      await vm.run(`nbd-client -unix ${nbdkitSocket('kernel')} ${device} ${args}`)
      connected = true
      await waitInVm(vm, `test "$(blockdev --getsize64 ${device})" = ${kBackingBytes}`, 10_000)
      await fillDevice(vm, device)
      return { device, note: `nbd-client -unix ${args.replace(/ /g, ',')},sched=${await schedulerOf(vm, device)}` }
    },
    down: async (vm) => {
      if (connected) await vm.run(`nbd-client -d ${device}`)
      await stopNbdkit(vm, 'kernel')
    },
  }
}

function kernelLoop(queues: number): Subject {
  let device = ''
  return {
    id: 'kernel_loop', label: 'kernel loop', kind: 'kernel', queues,
    up: async (vm) => {
      await vm.run(loadModule('loop'))
      device = (await vm.run(`losetup --direct-io=on -f --show ${backingFile}`)).trim()
      const dio = (await vm.exec(`cat /sys/block/${path.basename(device)}/loop/dio`)).stdout.trim()
      return { device, note: `dio=${dio || '?'}` }
    },
    down: async (vm) => { if (device) await vm.run(`losetup -d ${device}`) },
  }
}

interface Variant {
  label: string
  /** Further `ublkd add` options. */
  addArgs?: string
  /** The daemon to create the device in (`--state-dir`): the one started with other options. */
  stateDir?: string
  /** loop: a backing of its own (a file is served by one ublkd device at a time). */
  file?: string
  onlyJobs?: readonly string[]
}

function ublkdSubject(target: 'null' | 'memory' | 'loop' | 'nbd', queues: number, variant: Variant = { label: `ublkd ${target}` }): Subject {
  const source = target === 'loop' ? `-f ${variant.file ?? backingFile}` : target === 'nbd' ? `--url 'nbd+unix:///?socket=${nbdkitSocket('ublkd')}'` : '--size 1G'
  const args = `${source} ${variant.addArgs ?? ''}`.trim()
  const stateDir = variant.stateDir ? ` --state-dir ${variant.stateDir}` : ''
  const counterpart = ({ null: 'null_blk', memory: 'null_blk_mem', loop: 'kernel_loop', nbd: 'kernel_nbd' } as const)[target]
  let id = -1
  const subject: Subject = {
    id: target, label: variant.label, kind: 'ublkd', queues, counterpart,
    up: async (vm) => {
      if (target === 'nbd') await startNbdkit(vm, 'ublkd')
      const summary = await addDevice(vm, `-t ${target} ${args} -q ${queues}${stateDir}`)
      id = summary.id
      if (target === 'memory' || target === 'nbd') await fillDevice(vm, summary.blockDevice)
      const options = Object.entries(summary.options).map(([k, v]) => `${k}=${String(v)}`).join(',')
      const sched = target === 'nbd' ? `,sched=${await schedulerOf(vm, summary.blockDevice)}` : ''
      return { device: summary.blockDevice, note: `depth=${summary.depth}${options ? `,${options}` : ''}${sched}`, summary }
    },
    down: async (vm) => {
      if (id >= 0) {
        const result = await ublkd(vm, `del -n ${id}${stateDir}`)
        if (result.code !== 0) throw new Error(`ublkd del -n ${id}: ${(result.stderr || result.stdout).trim()}`)
      }
      if (target === 'nbd') await stopNbdkit(vm, 'ublkd')
    },
  }
  if (variant.onlyJobs) subject.onlyJobs = variant.onlyJobs
  if (variant.stateDir) subject.stateDir = variant.stateDir
  return subject
}

// ---------------------------------------------------------------------------------------------
// One measurement

export interface Row {
  target: string
  /** Filter id of the subject (null_blk, memory, ...). */
  id: string
  kind: Kind
  queues: number
  job: string
  iops: number
  mibPerSecond: number
  meanLatUs: number
  p99LatUs: number
  /** ublkd rows: the filter id of the kernel row they are compared with. */
  counterpart?: string
  /** ublkd rows, against the counterpart of the same queue count and job. */
  iopsRatio?: number
  p99Ratio?: number
  /** ublkd rows: mean CQEs reaped per loop turn over the job (from `ublkd stats`). */
  cqesPerTurn?: number
  /** ublkd rows: CPU of the queue threads, % of one CPU, in the steady part of the job. */
  queueCpuPercent?: number
  /** Busy share of all the VM's CPUs in the steady part of the job, %. */
  vmBusyPercent?: number
  /** ublkd rows: growth of the daemon's resident memory since the device was added, MiB. */
  rssGrowthMiB?: number
  /** fio's own CPU (usr + sys), % of one CPU per fio job. */
  fioCpuPercent?: number
  /** Runs behind the medians, and (max - min) / median of their IOPS, %. */
  runs?: number
  spreadPercent?: number
  note?: string
  skipped?: string
  /** Wall time of the row, fio and bookkeeping. */
  seconds?: number
}

interface FioSide {
  iops: number
  bw_bytes?: number
  io_bytes: number
  lat_ns?: { mean: number }
  clat_ns?: { mean: number; percentile?: Record<string, number> }
}
interface FioJob { jobname: string; error: number; read: FioSide; write: FioSide; usr_cpu?: number; sys_cpu?: number }

interface CpuSample { uptime: number; busy: number; total: number; threadTicks: number[] }

/** A snapshot of /proc/stat's cpu line, /proc/uptime and the given threads' utime+stime. */
function snapshotCommand(pid: number | undefined, tids: number[]): string {
  const threads = tids.map((tid) => `(cut -d')' -f2 /proc/${pid}/task/${tid}/stat 2>/dev/null || echo ' X') | awk '{print "T", $12 + $13}'`).join('; ')
  return `cut -d' ' -f1 /proc/uptime | sed 's/^/U /'; head -1 /proc/stat | sed 's/^cpu/C/'${threads ? `; ${threads}` : ''}`
}

function parseSnapshot(text: string): CpuSample {
  const sample: CpuSample = { uptime: 0, busy: 0, total: 0, threadTicks: [] }
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/)
    if (fields[0] === 'U') sample.uptime = Number(fields[1])
    if (fields[0] === 'C') {
      const ticks = fields.slice(1).map(Number)
      sample.total = ticks.reduce((a, b) => a + b, 0)
      sample.busy = sample.total - (ticks[3] ?? 0) - (ticks[4] ?? 0) // minus idle and iowait
    }
    if (fields[0] === 'T') sample.threadTicks.push(Number(fields[1]))
  }
  return sample
}

const kClockTicks = 100 // USER_HZ of Debian's kernels

async function measure(vm: Vm, subject: Subject, device: string, job: Job, runtime: number, ramp: number,
  summary: DeviceSummary | undefined): Promise<Pick<Row, 'iops' | 'mibPerSecond' | 'meanLatUs' | 'p99LatUs' | 'queueCpuPercent' | 'vmBusyPercent' | 'fioCpuPercent'>> {
  const tids = (summary?.queueTids ?? []).filter((tid): tid is number => tid !== null)
  const snap = snapshotCommand(summary?.daemonPid, tids)
  // CPU is sampled right before fio starts and right after it ends (so the ramp counts too):
  // a sampler spawning processes while fio runs takes a vCPU from whoever needs it, and under
  // TCG a process start is costly enough to cut a CPU-bound row's IOPS by 10-20%.
  const before = await vm.exec(snap)
  const { result, report } = await fio(vm, `--name=${job.name} --filename=${device} --ioengine=io_uring --direct=1 ` +
    `--rw=${job.rw} --bs=${job.bs} --iodepth=${job.depth} --numjobs=${subject.queues} --group_reporting ` +
    `--time_based --runtime=${runtime} --ramp_time=${ramp} --size=${kBackingBytes} --norandommap --randrepeat=0 ` +
    (process.env['BENCH_FIO_ARGS'] ?? ''),
  (runtime + ramp + 120) * 1000)
  const after = await vm.exec(snap)
  const fioJob = (report?.jobs[0] as FioJob | undefined)
  if (result.code !== 0 || !fioJob || fioJob.error !== 0) {
    throw new Error(`fio exited ${result.code ?? result.signal}: ${(result.stderr || result.stdout).trim().split('\n').slice(-2).join(' ').slice(0, 160)}`)
  }
  const side = job.rw.includes('read') ? fioJob.read : fioJob.write
  const out: Pick<Row, 'iops' | 'mibPerSecond' | 'meanLatUs' | 'p99LatUs' | 'queueCpuPercent' | 'vmBusyPercent' | 'fioCpuPercent'> = {
    iops: side.iops,
    mibPerSecond: (side.bw_bytes ?? side.io_bytes / runtime) / 2 ** 20,
    meanLatUs: (side.lat_ns?.mean ?? 0) / 1000,
    p99LatUs: (side.clat_ns?.percentile?.['99.000000'] ?? 0) / 1000,
  }
  if (fioJob.usr_cpu !== undefined && fioJob.sys_cpu !== undefined) out.fioCpuPercent = fioJob.usr_cpu + fioJob.sys_cpu
  if (before.code === 0 && after.code === 0) {
    const a = parseSnapshot(before.stdout)
    const b = parseSnapshot(after.stdout)
    const seconds = b.uptime - a.uptime
    if (b.total > a.total) out.vmBusyPercent = (100 * (b.busy - a.busy)) / (b.total - a.total)
    if (tids.length > 0 && seconds > 0 && a.threadTicks.length === tids.length && b.threadTicks.length === tids.length) {
      const ticks = b.threadTicks.reduce((s, v) => s + v, 0) - a.threadTicks.reduce((s, v) => s + v, 0)
      if (Number.isFinite(ticks)) out.queueCpuPercent = (100 * ticks) / kClockTicks / seconds
    }
  }
  return out
}

/** Sum of every queue's cqes and loop_turns, from `ublkd stats -n ID --json`. */
async function batchCounters(vm: Vm, id: number, subject: Subject): Promise<{ cqes: number; turns: number } | null> {
  const result = await ublkd(vm, `stats -n ${id} --json${subject.stateDir ? ` --state-dir ${subject.stateDir}` : ''}`)
  if (result.code !== 0) return null
  try {
    const queues = JSON.parse(result.stdout) as { cqes: number; loop_turns: number }[]
    return { cqes: queues.reduce((s, q) => s + q.cqes, 0), turns: queues.reduce((s, q) => s + q.loop_turns, 0) }
  } catch {
    return null
  }
}

// ---------------------------------------------------------------------------------------------
// Output

const fmt = (value: number | undefined, digits = 0): string => (value === undefined ? '' : value.toFixed(digits))
const ratio = (value: number | undefined): string => (value === undefined ? '' : `${value.toFixed(2)}x`)

export function renderTable(rows: readonly Row[]): string {
  const header = ['target', 'q', 'job', 'IOPS', 'spread', 'MiB/s', 'mean us', 'p99 us', 'IOPS ratio', 'p99 ratio', 'cqes/turn',
    'qthr CPU%', 'VM busy%', 'RSS+ MiB']
  const cells = rows.map((r) => r.skipped !== undefined
    ? [r.target, String(r.queues), r.job, `skipped: ${r.skipped}`]
    : [r.target, String(r.queues), r.job, fmt(r.iops), r.spreadPercent === undefined ? '' : `±${fmt(r.spreadPercent / 2)}%`,
      fmt(r.mibPerSecond, 1), fmt(r.meanLatUs), fmt(r.p99LatUs),
      ratio(r.iopsRatio), ratio(r.p99Ratio), fmt(r.cqesPerTurn, 1), fmt(r.queueCpuPercent), fmt(r.vmBusyPercent),
      fmt(r.rssGrowthMiB, 1)])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.filter((c) => c.length > 4).map((c) => (c[i] ?? '').length)))
  const line = (row: string[]): string => row.map((cell, i) => (i === 3 && row.length === 4 ? cell
    : i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd()
  return [line(header), ...cells.map(line)].join('\n')
}

const escapeXml = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** Horizontal bars: each ublkd row's IOPS ratio and p99 ratio, with the 1.0x line. */
export function renderSvg(rows: readonly Row[], title: string): string {
  const bars = rows.filter((r) => r.iopsRatio !== undefined)
  const labelWidth = 270
  const plotWidth = 420
  const maxRatio = 2
  const rowHeight = 30
  const top = 56
  const x = (value: number): number => labelWidth + (Math.min(value, maxRatio) / maxRatio) * plotWidth
  const height = top + bars.length * rowHeight + 30
  const width = labelWidth + plotWidth + 70
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="10" y="18" font-size="13" font-weight="bold">${escapeXml(title)}</text>`,
    `<rect x="10" y="28" width="10" height="8" fill="#3b6fb6"/><text x="24" y="36">IOPS ratio (higher is better)</text>`,
    `<rect x="200" y="28" width="10" height="8" fill="#e08a2c"/><text x="214" y="36">p99 latency ratio (lower is better; bars end at ${maxRatio}x)</text>`,
  ]
  for (const tick of [0, 0.5, 1, 1.5, 2]) {
    const tx = x(tick).toFixed(1)
    parts.push(`<line x1="${tx}" y1="${top - 6}" x2="${tx}" y2="${top + bars.length * rowHeight}" stroke="${tick === 1 ? '#333' : '#ddd'}"${tick === 1 ? ' stroke-dasharray="4 3"' : ''}/>`,
      `<text x="${tx}" y="${top + bars.length * rowHeight + 14}" text-anchor="middle">${tick}x</text>`)
  }
  bars.forEach((r, i) => {
    const y = top + i * rowHeight
    parts.push(`<text x="${labelWidth - 8}" y="${y + 15}" text-anchor="end">${escapeXml(`${r.target} q${r.queues} ${r.job}`)}</text>`)
    parts.push(`<rect x="${labelWidth}" y="${y + 3}" width="${(x(r.iopsRatio!) - labelWidth).toFixed(1)}" height="11" fill="#3b6fb6"/>`,
      `<text x="${(x(r.iopsRatio!) + 4).toFixed(1)}" y="${y + 12}">${r.iopsRatio!.toFixed(2)}x</text>`)
    if (r.p99Ratio !== undefined) {
      parts.push(`<rect x="${labelWidth}" y="${y + 15}" width="${(x(r.p99Ratio) - labelWidth).toFixed(1)}" height="9" fill="#e08a2c"/>`,
        `<text x="${(x(r.p99Ratio) + 4).toFixed(1)}" y="${y + 23}" fill="#8a4b0f">${r.p99Ratio.toFixed(2)}x</text>`)
    }
  })
  parts.push('</svg>')
  return `${parts.join('\n')}\n`
}

// ---------------------------------------------------------------------------------------------
// Main

function listEnv(name: string): string[] | undefined {
  const value = process.env[name]?.trim()
  return value ? value.split(',').map((s) => s.trim()).filter((s) => s.length > 0) : undefined
}

function numberEnv(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got '${raw}'`)
  return value
}

function say(text: string): void {
  process.stdout.write(`${text}\n`)
}

/** A kernel device and the ublkd devices compared with it: up together, runs alternating. */
interface Group { subjects: Subject[]; jobs: Job[] }

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

type Measurement = Awaited<ReturnType<typeof measure>>

/** The row of `runs` fio runs of one device and job: the median of each figure. */
function medianRow(base: Row, runs: Measurement[]): Row {
  const row: Row = { ...base, runs: runs.length }
  const pick = (key: keyof Measurement): number | undefined => {
    const values = runs.map((run) => run[key]).filter((value): value is number => value !== undefined)
    return values.length > 0 ? median(values) : undefined
  }
  for (const key of ['iops', 'mibPerSecond', 'meanLatUs', 'p99LatUs', 'queueCpuPercent', 'vmBusyPercent', 'fioCpuPercent'] as const) {
    const value = pick(key)
    if (value !== undefined) row[key] = value
  }
  const iops = runs.map((run) => run.iops)
  if (runs.length > 1 && row.iops > 0) row.spreadPercent = (100 * (Math.max(...iops) - Math.min(...iops))) / row.iops
  return row
}

async function main(): Promise<void> {
  const runtime = numberEnv('BENCH_RUNTIME', 6)
  const ramp = numberEnv('BENCH_RAMP', 1)
  const repeat = numberEnv('BENCH_REPEAT', 3)
  const jobFilter = listEnv('BENCH_JOBS')
  const targetFilter = listEnv('BENCH_TARGETS')
  const queueFilter = listEnv('BENCH_QUEUES')?.map(Number)
  const q2Jobs = listEnv('BENCH_Q2_JOBS') ?? kDefaultQ2Jobs
  const variants = process.env['BENCH_VARIANTS'] !== '0'
  const known = new Set(kJobs.map((j) => j.name))
  for (const name of [...(jobFilter ?? []), ...q2Jobs]) if (!known.has(name)) throw new Error(`unknown job '${name}' (known: ${[...known].join(', ')})`)

  // The tuning-flag rows: ublkd null with one setting off its default, beside the default.
  const variantJob = ['randread-4k-qd32']
  const statsDaemonDir = '/tmp/ublkd-stats-per-turn'
  const nullVariants: Variant[] = variants ? [
    { label: 'ublkd null event-loop', addArgs: '--queue-mode event-loop', onlyJobs: variantJob },
    { label: 'ublkd null mq-deadline', addArgs: '--io-scheduler mq-deadline', onlyJobs: variantJob },
    { label: 'ublkd null stats/turn', stateDir: statsDaemonDir, onlyJobs: variantJob },
  ] : []
  // Huge pages change the cost of the kernel's copies into and out of the buffers: both directions.
  const hugePagesVariant: Variant[] = variants
    ? [{ label: 'ublkd null huge-pages', addArgs: '--huge-page-buffers', onlyJobs: ['randread-4k-qd32', 'randwrite-4k-qd32'] }]
    : []
  // ublkd memory takes user copy where the kernel has it (--io-mode auto); its copy mode beside it.
  const memoryCopyVariant: Variant[] = variants ? [{ label: 'ublkd memory copy', addArgs: '--io-mode copy' }] : []
  // Zero copy (UBLK_F_AUTO_BUF_REG, 7.x only) is opt-in: its rows beside the default (copy) ones.
  const zeroCopyVariant: Variant[] = variants && vmKernel !== '6.12' ? [{ label: 'zero-copy', addArgs: '--io-mode zero-copy' }] : []
  const groups: Group[] = []
  for (const queues of [1, 2]) {
    const pairs: Subject[][] = [
      [nullBlk(false, queues), ublkdSubject('null', queues),
        ...[...(queues === 1 ? nullVariants : []), ...hugePagesVariant].map((v) => ublkdSubject('null', queues, v)),
        ...(queues === 1 ? zeroCopyVariant : []).map((v) => ublkdSubject('null', queues, { ...v, label: `ublkd null ${v.label}` }))],
      [nullBlk(true, queues), ublkdSubject('memory', queues),
        ...(queues === 1 ? memoryCopyVariant : []).map((v) => ublkdSubject('memory', queues, v))],
      [kernelLoop(queues), ublkdSubject('loop', queues),
        ...(queues === 1 ? zeroCopyVariant : []).map((v) => ublkdSubject('loop', queues, { ...v, label: `ublkd loop ${v.label}`, file: zeroCopyBackingFile }))],
      // One connection each (nbd-client -C 1, ublkd -q 1): the nbd rows run with 1 queue only.
      ...(queues === 1 ? [[kernelNbd(queues), ublkdSubject('nbd', queues)]] : []),
    ]
    for (const pair of pairs) {
      const subjects = pair.filter((s) => (!targetFilter || targetFilter.includes(s.id)) && (!queueFilter || queueFilter.includes(s.queues)))
      const jobs = kJobs.filter((j) => (!jobFilter || jobFilter.includes(j.name)) && (queues === 1 || q2Jobs.includes(j.name)))
      if (subjects.length > 0 && jobs.length > 0) groups.push({ subjects, jobs })
    }
  }
  const runsOf = (subject: Subject, jobs: Job[]): number => jobs.filter((j) => !subject.onlyJobs || subject.onlyJobs.includes(j.name)).length
  const plannedRuns = repeat * groups.reduce((n, g) => n + g.subjects.reduce((m, s) => m + runsOf(s, g.jobs), 0), 0)
  if (plannedRuns === 0) throw new Error('the filters leave nothing to run')

  const started = Date.now()
  say(`ublkd bench: ${plannedRuns} fio runs of ${runtime} s (+${ramp} s ramp), about ${Math.ceil((plannedRuns * (runtime + ramp + 5)) / 60) + 1} min; booting the VM...`)
  const vm = await bootVm({ cpus: 2, memMiB: kVmMemMiB })
  const rows: Row[] = []
  let header = ''
  try {
    const env = (await vm.run('uname -r; nproc; fio --version; date -u +%Y-%m-%dT%H:%M:%SZ')).trim().split('\n')
    header = [
      `ublkd bench, ${env[3]}: Linux ${env[0]} in QEMU TCG (software emulation), ${env[1]} vCPU, ${kVmMemMiB / 1024} GiB; ${env[2]}`,
      `host: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, load average at start ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`,
      `fio: io_uring, direct=1, time_based ${runtime} s after a ${ramp} s ramp; q 2 rows run 2 fio jobs (one per vCPU)` +
        (process.env['BENCH_FIO_ARGS'] ? `; extra: ${process.env['BENCH_FIO_ARGS']}` : ''),
      `each device and its kernel counterpart exist together; their fio runs alternate, ${repeat} per job; figures are medians`,
      'Absolute numbers under TCG are meaningless (everything is emulated, ~20x slower than hardware);',
      'only the ratios between rows of this one boot count: ublkd row / its kernel counterpart',
      '(null -> null_blk, memory -> null_blk mem, loop -> kernel loop, nbd -> kernel nbd, same queue count and job).',
    ].join('\n')
    say(`\n${header}\n`)

    await vm.run(`fallocate -l ${kBackingBytes} ${backingFile} && fallocate -l ${kBackingBytes} ${zeroCopyBackingFile}`)
    const daemonPid = await startDaemon(vm, '/run/ublkd', '')
    const statsDaemonPid = nullVariants.length > 0 ? await startDaemon(vm, statsDaemonDir, '--stats-publish-us 0') : undefined
    const rssKiB = async (pid: number | undefined): Promise<number | undefined> => {
      const result = await vm.exec(`awk '/^VmRSS:/ {print $2}' /proc/${pid}/status`)
      const kib = Number(result.stdout.trim())
      return result.code === 0 && kib > 0 ? kib : undefined
    }
    const rssSettled = async (pid: number): Promise<void> => {
      let last = await rssKiB(pid)
      for (let stable = 0, tries = 0; stable < 3 && tries < 40 && last !== undefined; tries++) {
        await new Promise((resolve) => setTimeout(resolve, 500))
        const now = await rssKiB(pid)
        stable = now !== undefined && Math.abs(now - last) < 2048 ? stable + 1 : 0
        last = now
      }
    }

    for (const group of groups) {
      // A daemon serves several subjects of a group, so each one's RSS growth is summed over its own
      // steps only: its add, and each of its fio runs (the daemon's other devices are idle meanwhile).
      interface Live { subject: Subject; up: Awaited<ReturnType<Subject['up']>>; pid: number | undefined; rssGrowthKiB: number | undefined }
      const live: Live[] = []
      const rssGrowth = async <T>(l: { pid: number | undefined; rssGrowthKiB: number | undefined }, step: () => Promise<T>): Promise<T> => {
        const before = l.pid === undefined ? undefined : await rssKiB(l.pid)
        const result = await step()
        const after = before === undefined ? undefined : await rssKiB(l.pid)
        l.rssGrowthKiB = before === undefined || after === undefined || l.rssGrowthKiB === undefined ? undefined : l.rssGrowthKiB + after - before
        return result
      }
      for (const subject of group.subjects) {
        const pid = subject.kind === 'kernel' ? undefined : subject.stateDir === statsDaemonDir ? statsDaemonPid : daemonPid
        const growth = { pid, rssGrowthKiB: pid === undefined ? undefined : 0 }
        try {
          const up = await rssGrowth(growth, () => subject.up(vm))
          live.push({ subject, up, ...growth })
        } catch (error) {
          for (const job of group.jobs) {
            rows.push({ target: subject.label, id: subject.id, kind: subject.kind, queues: subject.queues, job: job.name, iops: 0,
              mibPerSecond: 0, meanLatUs: 0, p99LatUs: 0, skipped: `device not created: ${firstLine(error)}` })
          }
          await subject.down(vm).catch(() => {})
        }
      }
      for (const job of group.jobs) {
        const here = live.filter((l) => !l.subject.onlyJobs || l.subject.onlyJobs.includes(job.name))
        const runs = new Map<Live, Measurement[]>(here.map((l) => [l, []]))
        const failures = new Map<Live, string>()
        const counters = new Map<Live, { cqes: number; turns: number } | null>()
        for (const l of here) counters.set(l, l.up.summary ? await batchCounters(vm, l.up.summary.id, l.subject) : null)
        const jobStarted = Date.now()
        for (let run = 0; run < repeat; run++) {
          for (const l of here) {
            try {
              runs.get(l)!.push(await rssGrowth(l, () => measure(vm, l.subject, l.up.device, job, runtime, ramp, l.up.summary)))
            } catch (error) {
              failures.set(l, firstLine(error))
            }
          }
        }
        for (const l of here) {
          const base: Row = { target: l.subject.label, id: l.subject.id, kind: l.subject.kind, queues: l.subject.queues, job: job.name,
            iops: 0, mibPerSecond: 0, meanLatUs: 0, p99LatUs: 0, note: l.up.note }
          if (l.subject.counterpart !== undefined) base.counterpart = l.subject.counterpart
          const measured = runs.get(l)!
          const row = measured.length > 0 ? medianRow(base, measured) : { ...base, skipped: failures.get(l) ?? 'no run' }
          const before = counters.get(l)
          const after = l.up.summary && before ? await batchCounters(vm, l.up.summary.id, l.subject) : null
          if (before && after && after.turns > before.turns) row.cqesPerTurn = (after.cqes - before.cqes) / (after.turns - before.turns)
          if (l.rssGrowthKiB !== undefined) row.rssGrowthMiB = l.rssGrowthKiB / 1024
          row.seconds = Math.round((Date.now() - jobStarted) / 100) / 10
          rows.push(row)
          const result = row.skipped !== undefined ? `skipped (${row.skipped})`
            : `${row.iops.toFixed(0)} IOPS (${measured.map((m) => m.iops.toFixed(0)).join(', ')}), p99 ${row.p99LatUs.toFixed(0)} us` +
              (row.cqesPerTurn !== undefined ? `, ${row.cqesPerTurn.toFixed(1)} cqes/turn` : '')
          say(`  ${l.subject.label} q${l.subject.queues} ${job.name}: ${result}`)
        }
      }
      for (const l of live) {
        try {
          await l.subject.down(vm)
        } catch (error) {
          say(`  warning: removing ${l.subject.label} q${l.subject.queues} failed: ${firstLine(error)}`)
        }
      }
      // A deleted device's memory (the memory target's 1 GiB) leaves the daemon when its worker's
      // isolate is torn down, seconds later: let that happen before the next group measures.
      for (const pid of new Set(live.map((l) => l.pid))) if (pid !== undefined) await rssSettled(pid)
    }

    // Ratios: each ublkd row against its counterpart's row with the same queue count and job.
    for (const row of rows) {
      if (row.kind !== 'ublkd' || row.skipped !== undefined) continue
      const base = rows.find((r) => r.id === row.counterpart && r.queues === row.queues && r.job === row.job && r.skipped === undefined)
      if (!base) continue
      if (base.iops > 0) row.iopsRatio = row.iops / base.iops
      if (base.p99LatUs > 0) row.p99Ratio = row.p99LatUs / base.p99LatUs
    }
  } finally {
    await vm.shutdown()
  }

  const minutes = ((Date.now() - started) / 60_000).toFixed(1)
  const table = renderTable(rows)
  say(`\n${header}\n\n${table}\n\n(${minutes} min)`)
  const results = path.join(repoRoot, 'bench', 'results')
  fs.mkdirSync(results, { recursive: true })
  const date = new Date().toISOString()
  fs.writeFileSync(path.join(results, 'latest.json'), `${JSON.stringify({ date, header, runtime, ramp, repeat, minutes: Number(minutes), rows }, null, 2)}\n`)
  fs.writeFileSync(path.join(results, 'latest.txt'), `${header}\n\n${table}\n`)
  fs.writeFileSync(path.join(results, 'latest.svg'), renderSvg(rows, `ublkd relative to the kernel driver, same VM boot (${date.slice(0, 10)}, QEMU TCG)`))
  say('written: bench/results/latest.{txt,json,svg}')
}

/** Start `ublkd daemon --state-dir DIR` in the VM (metrics off, `args` added); its pid once ready. */
async function startDaemon(vm: Vm, stateDir: string, args: string): Promise<number> {
  const log = `${stateDir}/bench-daemon.log`
  await vm.run(`mkdir -p ${stateDir} && setsid sh -c 'echo $$ > ${stateDir}/bench-daemon.pid; ` +
    `exec ${ublkdCli} daemon --metrics off --state-dir ${stateDir} ${args} > ${log} 2>&1' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `grep -q '"msg":"daemon ready"' ${log}`, 60_000)
  return Number((await vm.run(`cat ${stateDir}/bench-daemon.pid`)).trim())
}

function firstLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error)
  return text.trim().split('\n').filter((l) => l.trim().length > 0).slice(0, 2).join(' / ').slice(0, 200)
}

await main()
