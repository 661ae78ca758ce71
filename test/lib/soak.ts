// The soak scenario (issue #14): long-lived devices of four targets under fio while devices are
// added and deleted around them (some with bad options), queue faults are injected on recovery
// devices and the daemon is killed (kill -9) and restarted twice. It counts what went wrong (verify
// and I/O errors, leaked descriptors, memory, devices) and what was done. `npm run soak`
// (scripts/soak.ts) runs it for minutes, test/vm/soak.test.ts for 45 s in `npm test`; see docs/testing.md.
import type { DeviceSummary } from '../../src/main/device.js'
import {
  addDevice, descriptorKinds, fio, listDevices, startDaemon, ublkd, ublkNodes, waitInVm, type FioReport,
} from './ublkd-in-vm.js'
import { repoRoot, vmKernel, type ExecResult, type Vm } from './vm.js'

export interface SoakOptions {
  durationMs: number
  /** IOPS fio asks of each long-lived device (default 20). The test VM is one emulated core:
   *  every request costs the daemon, fio and the kernel about a millisecond of it, and at 40 IOPS
   *  per device a control command took ten times as long as on an idle VM. */
  iopsPerDevice?: number
  /** Daemon kill -9 + restarts, spread over the run (default 2; 0: none, the leaks then
   *  measured from a sample after the first churn round). */
  restarts?: number
  /** Progress lines (default: none). */
  log?: (line: string) => void
}

export interface SoakSample {
  when: string
  pid: number
  fds: number
  rssKiB: number
  /** What each descriptor is, sorted: to tell which kind leaked. */
  fdKinds: string[]
}

export interface SoakReport {
  kernel: string
  /** From the long-lived fio jobs' start to their stop. */
  soakMs: number
  verifyErrors: number
  ioErrors: number
  /** I/Os fio completed on every device. */
  ios: number
  operations: {
    adds: number
    deletes: number
    refusedAdds: number
    faultsInjected: number
    heals: number
    daemonRestarts: number
  }
  leaks: {
    /** The first daemon's descriptors once churn ran (no churn device then) ... */
    fdsBefore: number
    /** ... and the last daemon's at the end, serving the same long-lived devices. */
    fdsAfter: number
    /** The last daemon's RSS once it re-attached and its memory device was filled again ... */
    rssBeforeKiB: number
    /** ... and at the end, after the churn devices were deleted. */
    rssAfterKiB: number
    /** Listed devices, /dev/ublk[bc]N nodes and state dir records after everything was deleted. */
    devicesLeft: number
    nodesLeft: number
    recordsLeft: number
    /** Before that: what list, /dev and the records showed beyond the long-lived devices, or
     *  where they disagreed. */
    strays: string[]
  }
  samples: SoakSample[]
  /** The daemons' error-level log messages with their counts (information, not a failure). */
  daemonErrors: string[]
  /** Anything else that went wrong: an add that should have worked, a refusal without a message,
   *  a fault that was not healed, a device not re-attached, ... */
  problems: string[]
  timings: { setupMs: number; restartMs: number[]; teardownMs: number }
}

/** RSS growth of the last daemon between its steady point and the end that counts as a leak.
 *  V8 grows its heap and code space as new paths warm up and glibc keeps freed arenas, so a few
 *  MiB come and go; a leak per device or per request grows without bound. */
export const kRssGrowthToleranceKiB = 32 * 1024

/** Why a report fails `npm run soak` (empty: it passed). */
export function soakFailures(report: SoakReport, expectedRestarts = 2): string[] {
  const failures: string[] = []
  const { leaks, operations } = report
  if (report.verifyErrors > 0) failures.push(`${report.verifyErrors} verify errors`)
  if (report.ioErrors > 0) failures.push(`${report.ioErrors} I/O errors`)
  if (leaks.fdsAfter > leaks.fdsBefore) failures.push(`daemon descriptors ${leaks.fdsBefore} -> ${leaks.fdsAfter}`)
  if (leaks.rssAfterKiB - leaks.rssBeforeKiB > kRssGrowthToleranceKiB) {
    failures.push(`daemon RSS grew ${leaks.rssAfterKiB - leaks.rssBeforeKiB} KiB (tolerance ${kRssGrowthToleranceKiB} KiB)`)
  }
  if (leaks.devicesLeft + leaks.nodesLeft + leaks.recordsLeft > 0) {
    failures.push(`left behind: ${leaks.devicesLeft} devices, ${leaks.nodesLeft} nodes, ${leaks.recordsLeft} records`)
  }
  if (leaks.strays.length > 0) failures.push(`strays: ${leaks.strays.join('; ')}`)
  if (operations.daemonRestarts !== expectedRestarts) failures.push(`${operations.daemonRestarts} daemon restarts, not ${expectedRestarts}`)
  if (operations.faultsInjected === 0) failures.push('no fault injected')
  if (operations.refusedAdds === 0) failures.push('no bad add tried')
  failures.push(...report.problems.map((problem) => `problem: ${problem}`))
  return failures
}

export function soakSummary(report: SoakReport): string {
  const { operations: o, leaks: l } = report
  const s = (ms: number) => `${(ms / 1000).toFixed(0)} s`
  return [
    `soak on Linux ${report.kernel}: ${s(report.soakMs)} (setup ${s(report.timings.setupMs)}, ` +
      `restarts ${report.timings.restartMs.map(s).join(' + ') || 'none'}, teardown ${s(report.timings.teardownMs)})`,
    `  verify errors ${report.verifyErrors}, I/O errors ${report.ioErrors}, ${report.ios} I/Os by fio`,
    `  operations: ${o.adds} adds, ${o.deletes} deletes, ${o.refusedAdds} refused adds, ${o.faultsInjected} faults injected, ` +
      `${o.heals} heals, ${o.daemonRestarts} daemon restarts`,
    `  leaks: fds ${l.fdsBefore} -> ${l.fdsAfter}, RSS ${l.rssBeforeKiB} -> ${l.rssAfterKiB} KiB ` +
      `(${l.rssAfterKiB - l.rssBeforeKiB >= 0 ? '+' : ''}${l.rssAfterKiB - l.rssBeforeKiB}, tolerance +${kRssGrowthToleranceKiB}), ` +
      `left: ${l.devicesLeft} devices, ${l.nodesLeft} nodes, ${l.recordsLeft} records; strays: ${l.strays.join('; ') || 'none'}`,
    `  daemon samples: ${report.samples.map((x) => `${x.when} pid ${x.pid} ${x.fds} fds ${x.rssKiB} KiB`).join(', ')}`,
    `  daemon error messages: ${report.daemonErrors.join('; ') || 'none'}`,
    `  problems: ${report.problems.length === 0 ? 'none' : `\n${report.problems.map((p) => `    - ${p}`).join('\n')}`}`,
  ].join('\n')
}

const kEilseq = 84
// Beyond the CLI's own request deadline (120 s): a loaded VM answers late, and a call given up
// here could still create a device behind the soak's back.
const kCliTimeoutMs = 240_000
const kStateDir = '/run/ublkd'
const kFiles = { file: '/tmp/soak-file.img', block: '/tmp/soak-block.img', churn: '/tmp/soak-churn.img', pattern: '/tmp/soak-pattern' }
const kVerifyOptions = '--ioengine=io_uring --direct=1 --bs=4k --verify=crc32c --continue_on_error=verify'

type FioJob = FioReport['jobs'][number] & { total_err?: number }

/** A fio run in the background whose pid is known, to be stopped with SIGINT. */
interface FioRun {
  name: string
  pidFile: string
  done: Promise<{ result: ExecResult; jobs: FioJob[] }>
}

/** Bad `add`s: each must be refused (non-zero exit, this message) with the daemon unharmed. */
function badAdds(file: DeviceSummary): [args: string, message: RegExp][] {
  return [
    ['-t memory --size 1000', /not a multiple of the logical block size 512/],
    [`-t null -n ${file.id}`, new RegExp(`device ${file.id} already exists`)],
    [`-t loop -f ${kFiles.file}`, new RegExp(`${kFiles.file} is already served by device ${file.id}`)],
    ['-t loop -f /tmp/soak-missing.img', /backing file \/tmp\/soak-missing\.img does not exist/],
    ['-t null --io-scheduler nosuch', /--io-scheduler nosuch: the kernel refused it/],
    ['-t fault --size 16M --fault bogus', /--fault must be one of/],
    [`-t null --uuid ${file.uuid}`, new RegExp(`uuid ${file.uuid} is already device ${file.id}'s`)],
    ['-t loop -f /dev/null', /neither a regular file nor a block device/],
    ['-t null -q 64', /--queues 64 is more than the \d+ CPUs/],
    ['-t null -d 0', /--depth must be between 1 and 4096/],
  ]
}

/** Pauses the churn workers between rounds: close() returns once no round runs. */
class Gate {
  private isOpen = true
  private running = 0
  private openWaiters: (() => void)[] = []
  private idleWaiters: (() => void)[] = []

  async enter(): Promise<void> {
    while (!this.isOpen) await new Promise<void>((resolve) => this.openWaiters.push(resolve))
    this.running++
  }

  leave(): void {
    if (--this.running === 0) for (const resolve of this.idleWaiters.splice(0)) resolve()
  }

  async close(): Promise<void> {
    this.isOpen = false
    while (this.running > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
  }

  open(): void {
    this.isOpen = true
    for (const resolve of this.openWaiters.splice(0)) resolve()
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Seconds since the previous call (or the start), as "1.2 s". */
function stopwatch(): () => string {
  let last = Date.now()
  return () => {
    const now = Date.now()
    const text = `${((now - last) / 1000).toFixed(1)} s`
    last = now
    return text
  }
}

export async function runSoak(vm: Vm, options: SoakOptions): Promise<SoakReport> {
  const log = options.log ?? (() => {})
  const rate = options.iopsPerDevice ?? 20
  const report: SoakReport = {
    kernel: vmKernel, soakMs: 0, verifyErrors: 0, ioErrors: 0, ios: 0,
    operations: { adds: 0, deletes: 0, refusedAdds: 0, faultsInjected: 0, heals: 0, daemonRestarts: 0 },
    leaks: { fdsBefore: -1, fdsAfter: -1, rssBeforeKiB: -1, rssAfterKiB: -1, devicesLeft: -1, nodesLeft: -1, recordsLeft: -1, strays: [] },
    samples: [], daemonErrors: [], problems: [], timings: { setupMs: 0, restartMs: [], teardownMs: 0 },
  }
  const problem = (text: string) => {
    report.problems.push(text)
    log(`problem: ${text}`)
  }
  const started = Date.now()
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`

  // --- setup: one daemon, the four long-lived devices
  await vm.run(`rm -f ${Object.values(kFiles).join(' ')} && truncate -s 32M ${kFiles.file} ${kFiles.block} && ` +
    `head -c 16M /dev/urandom > ${kFiles.pattern} && ${repoRoot}/scripts/vm/load-module.sh loop`)
  const disk = (await vm.run(`losetup -f --show ${kFiles.block}`)).trim()
  const daemonLogs = [await startDaemon(vm)]
  const [file, block, nul, firstMemory] = await Promise.all([
    addDevice(vm, `-t loop -f ${kFiles.file} --recovery`),
    addDevice(vm, `-t loop -f ${disk} --recovery`),
    addDevice(vm, '-t null --size 4G --recovery'),
    addDevice(vm, '-t memory --size 16M'),
  ])
  report.operations.adds += 4
  let memory = firstMemory
  const recoveryDevices = [file, block, nul]
  let daemonPid = file.daemonPid

  /** The daemon's descriptors (by kind: socket, anon_inode:[io_uring], a path) and RSS, once two
   *  readings a second apart agree: a CLI call that just ended may still have its socket open. */
  const sample = async (when: string): Promise<SoakSample> => {
    const read = async () => {
      const fdKinds = await descriptorKinds(vm, daemonPid)
      const rss = await vm.run(`grep VmRSS /proc/${daemonPid}/status`)
      return { fdKinds, rssKiB: Number(/VmRSS:\s+(\d+)/.exec(rss)?.[1] ?? -1) }
    }
    let last = await read()
    for (let i = 0; i < 10; i++) {
      await sleep(1000)
      const next = await read()
      const same = next.fdKinds.join('\n') === last.fdKinds.join('\n')
      last = next
      if (same) break
    }
    const taken = { when, pid: daemonPid, fds: last.fdKinds.length, rssKiB: last.rssKiB, fdKinds: last.fdKinds }
    report.samples.push(taken)
    log(`${elapsed()} ${when}: daemon ${daemonPid} holds ${taken.fds} fds, RSS ${taken.rssKiB} KiB`)
    return taken
  }

  // --- fio
  let fioRuns = 0
  /** `jobs`: fio's arguments after the global ones, each job from its --name on. */
  const startFio = (label: string, jobs: string): FioRun => {
    const pidFile = `/tmp/soak-fio-${++fioRuns}.pid`
    const runtime = Math.ceil(options.durationMs / 1000) + 900
    const done = vm.exec(`fio --output-format=json --allow_file_create=0 --ioengine=io_uring --direct=1 --bs=4k --iodepth=8 ` +
      `--rate_iops=${rate} --runtime=${runtime} ${jobs} & echo $! > ${pidFile}; wait $!`,
    { timeoutMs: options.durationMs + 1_200_000 }).then((result) => ({ result, jobs: fioJobs(result) }))
    return { name: label, pidFile, done }
  }
  const fioJobs = (result: ExecResult): FioJob[] => {
    const start = result.stdout.indexOf('{')
    try {
      return start < 0 ? [] : (JSON.parse(result.stdout.slice(start)) as { jobs: FioJob[] }).jobs
    } catch {
      return []
    }
  }
  /** Counts a finished run's errors. Every job but null's must have read back what it wrote. */
  const account = (label: string, result: ExecResult, jobs: FioJob[]) => {
    if (jobs.length === 0) {
      report.ioErrors++
      problem(`fio ${label}: no report (exit ${result.code ?? result.signal}): ${result.stderr.trim().slice(0, 500)}`)
      return
    }
    for (const job of jobs) {
      report.ios += job.read.total_ios + job.write.total_ios
      const verifyErrors = (job.total_err ?? 0) + (job.error === kEilseq ? 1 : 0)
      report.verifyErrors += verifyErrors
      if (job.error !== 0 && job.error !== kEilseq) report.ioErrors++
      if (verifyErrors > 0 || job.error !== 0) {
        log(`fio ${job.jobname}: error ${job.error}, ${verifyErrors} verify errors: ${result.stderr.trim().slice(0, 500)}`)
      }
      if (job.write.io_bytes === 0 || (job.jobname !== 'null' && job.read.io_bytes === 0)) {
        problem(`fio ${job.jobname}: wrote ${job.write.io_bytes} and read ${job.read.io_bytes} bytes`)
      }
    }
  }
  const stopFio = async (run: FioRun) => {
    await waitInVm(vm, `test -s ${run.pidFile}`, 60_000)
    await vm.exec(`kill -INT $(cat ${run.pidFile})`)
    const { result, jobs } = await run.done
    account(run.name, result, jobs)
  }
  const fioAlive = async (run: FioRun) => (await vm.exec(`kill -0 $(cat ${run.pidFile})`)).code === 0
  // --loops, not --time_based: a time_based random writer starts its next pass before it verified
  // the last writes of the previous one, and a block written again before its check reads as
  // corrupt. Between loops fio verifies what is left. runtime only bounds a run nobody stopped.
  const verifyJob = (name: string, device: DeviceSummary) => `--name=${name} --filename=${device.blockDevice} ` +
    `--rw=randwrite --size=16M --verify=crc32c --verify_backlog=32 --continue_on_error=verify --loops=1000000`
  const fillMemory = async () => {
    // Every page of the RAM disk resident from the start: its growth is no leak.
    await vm.run(`dd if=${kFiles.pattern} of=${memory.blockDevice} bs=1M oflag=direct status=none`)
  }
  const memoryFio = () => startFio('memory', verifyJob('memory', memory))
  /** Until each device completed more writes than now: served (by the daemon of the moment). */
  const ioFlows = async (devices: DeviceSummary[]) => {
    const writes = (device: DeviceSummary) => `awk '{print $5}' /sys/block/ublkb${device.id}/stat`
    const now = (await vm.run(devices.map(writes).join(' && '))).trim().split('\n').map(Number)
    await waitInVm(vm, devices.map((device, i) => `test "$(${writes(device)})" -gt ${now[i]! + 10}`).join(' && '), 120_000)
  }

  await fillMemory()
  report.timings.setupMs = Date.now() - started
  log(`${elapsed()} setup: file ${file.blockDevice}, block ${block.blockDevice} (on ${disk}), null ${nul.blockDevice}, memory ${memory.blockDevice}`)
  await sample('setup')

  const soakStart = Date.now()
  // One fio for the devices that outlive every daemon, one per daemon for the RAM disk.
  const longLived = startFio('recovery devices', `${verifyJob('file', file)} ${verifyJob('block', block)} ` +
    `--name=null --filename=${nul.blockDevice} --rw=randrw --time_based`)
  let memoryRun = memoryFio()
  await ioFlows([file, block, nul, memory])

  // --- churn: two workers, paused (between rounds) while the daemon restarts
  const gate = new Gate()
  let stopping = false
  let lifecycleRounds = 0
  let epochRounds = 0
  let steadyKinds: string[] | null = null
  const checkDaemon = async (what: string) => {
    if ((await vm.exec(`kill -0 ${daemonPid}`)).code !== 0) problem(`the daemon (pid ${daemonPid}) is gone after ${what}`)
  }
  const del = async (device: DeviceSummary) => {
    const result = await ublkd(vm, `del -n ${device.id}`, kCliTimeoutMs)
    if (result.code === 0) report.operations.deletes++
    else problem(`del -n ${device.id} (${device.target}) exited ${result.code}: ${result.stderr.trim()}`)
  }
  const tryAdd = async (args: string): Promise<DeviceSummary | null> => {
    const result = await ublkd(vm, `add ${args} --json`, kCliTimeoutMs)
    if (result.code !== 0) {
      problem(`add ${args} exited ${result.code ?? result.signal}: ${result.stderr.trim()}`)
      return null
    }
    report.operations.adds++
    return JSON.parse(result.stdout) as DeviceSummary
  }
  const worker = async (name: string, round: (n: number) => Promise<void>) => {
    for (let n = 0; ; n++) {
      await gate.enter()
      try {
        if (stopping) return
        await round(n)
      } catch (error) {
        problem(`churn ${name} round ${n}: ${(error as Error).message}`)
        await sleep(1000)
      } finally {
        gate.leave()
      }
    }
  }
  const kinds = ['null', 'memory', 'loop'] as const
  const bad = badAdds(file)
  const lifecycle = worker('lifecycle', async (n) => {
    const kind = kinds[n % kinds.length]!
    const args = kind === 'null' ? '-t null --size 1G' : kind === 'memory' ? '-t memory --size 16M'
      : `-t loop -f ${kFiles.churn}`
    if (kind === 'loop') await vm.run(`rm -f ${kFiles.churn} && truncate -s 16M ${kFiles.churn}`)
    const lap = stopwatch()
    const device = await tryAdd(args)
    const steps = [`add ${lap()}`]
    if (device) {
      // 1 MiB of the pattern, somewhere, read back: null reads zeros.
      const offset = n % 8
      const io = await vm.exec(`dd if=${kFiles.pattern} of=${device.blockDevice} bs=1M count=1 seek=${offset} oflag=direct status=none && ` +
        `dd if=${device.blockDevice} bs=1M count=1 skip=${offset} iflag=direct status=none | md5sum && ` +
        `${kind === 'null' ? 'head -c 1M /dev/zero' : `dd if=${kFiles.pattern} bs=1M count=1 status=none`} | md5sum`)
      const sums = io.stdout.trim().split('\n')
      if (io.code !== 0) {
        report.ioErrors++
        problem(`${kind} device ${device.id}: I/O failed: ${io.stderr.trim()}`)
      } else if (sums[0] !== sums[1]) {
        report.verifyErrors++
        problem(`${kind} device ${device.id}: read back other data than written`)
      }
      steps.push(`I/O ${lap()}`)
    }
    const [badArgs, message] = bad[n % bad.length]!
    const refused = await ublkd(vm, `add ${badArgs}`, kCliTimeoutMs)
    steps.push(`refused add ${lap()}`)
    report.operations.refusedAdds++
    if (refused.code === 0) problem(`add ${badArgs} was accepted: ${refused.stdout.trim()}`)
    else if (!message.test(refused.stderr)) problem(`add ${badArgs} exited ${refused.code} with ${JSON.stringify(refused.stderr.trim())}`)
    await checkDaemon(`add ${badArgs}`)
    if (device) {
      await del(device)
      steps.push(`del ${lap()}`)
    }
    lifecycleRounds++
    log(`${elapsed()} churn ${n} ${kind} ${device?.id ?? '-'} (bad: ${badArgs}): ${steps.join(', ')}`)
  })
  const faults = ['throw', 'exit', 'stall'] as const
  const faulting = worker('fault', async (n) => {
    const fault = faults[n % faults.length]!
    const lap = stopwatch()
    const device = await tryAdd(`-t fault --size 16M --fault ${fault} --fault-at 300 --fault-stall-ms 600000 --recovery`)
    if (!device) return
    const steps = [`add ${lap()}`]
    report.operations.faultsInjected++
    const { result, report: fioReport } = await fio(vm, `--name=fault-${fault} --filename=${device.blockDevice} ${kVerifyOptions} ` +
      '--rw=randwrite --iodepth=8 --size=2M')
    account(`fault-${fault}`, result, (fioReport?.jobs ?? []) as FioJob[])
    steps.push(`fio ${lap()}`)
    const after = (await listDevices(vm)).find((listed) => listed.id === device.id)
    report.operations.heals += after?.recoveries ?? 0
    if (after?.state !== 'LIVE' || after.recoveries < 1) {
      problem(`fault ${fault} on device ${device.id}: ${after ? `${after.state}, ${after.recoveries} recoveries` : 'gone'} (want LIVE, healed)`)
    }
    await checkDaemon(`fault ${fault}`)
    if (after) {
      await del(device)
      steps.push(`del ${lap()}`)
    }
    log(`${elapsed()} fault ${n} ${fault} ${device.id}: ${after?.recoveries ?? 0} heals, ${steps.join(', ')}`)
  })

  // --- kill -9 + restarts, spaced; each waits for a lifecycle round in the epoch before it
  const waitForRound = async (why: string) => {
    const deadline = Date.now() + 600_000
    while (lifecycleRounds === epochRounds && Date.now() < deadline) await sleep(500)
    if (lifecycleRounds === epochRounds) problem(`no churn round completed in 10 minutes ${why}`)
  }
  const restart = async (round: number) => {
    await waitForRound(`before restart ${round}`)
    await gate.close()
    if (round === 1) {
      const steady = await sample('before the first kill')
      report.leaks.fdsBefore = steady.fds
      steadyKinds = steady.fdKinds
    }
    await stopFio(memoryRun)
    const restartStart = Date.now()
    if (!await fioAlive(longLived)) problem(`fio on the recovery devices ended before restart ${round}`)
    log(`${elapsed()} restart ${round}: kill -9 ${daemonPid}`)
    await vm.run(`kill -9 ${daemonPid}`)
    await waitInVm(vm, `! kill -0 ${daemonPid}`, 30_000)
    daemonLogs.push(await startDaemon(vm))
    report.operations.daemonRestarts++
    const devices = await listDevices(vm)
    for (const device of recoveryDevices) {
      const back = devices.find((listed) => listed.id === device.id)
      if (back?.state !== 'LIVE' || back.uuid !== device.uuid) problem(`restart ${round}: device ${device.id} (${device.target}) is ${back?.state ?? 'not listed'}`)
    }
    const pids = new Set(devices.map((device) => device.daemonPid))
    if (pids.size !== 1 || pids.has(daemonPid)) problem(`restart ${round}: served by pids ${[...pids].join(', ')}`)
    daemonPid = devices[0]?.daemonPid ?? daemonPid
    // The RAM disk died with its daemon; the new one deleted it.
    const gone = await vm.exec(`test ! -e /dev/ublkb${memory.id} && test ! -e /dev/ublkc${memory.id} && test ! -e ${kStateDir}/devices/${memory.id}.json`)
    if (gone.code !== 0 || devices.some((device) => device.id === memory.id)) problem(`restart ${round}: the dead memory device ${memory.id} is still there`)
    memory = (await tryAdd('-t memory --size 16M')) ?? memory
    await fillMemory()
    memoryRun = memoryFio()
    await ioFlows([file, block, nul, memory])
    report.timings.restartMs.push(Date.now() - restartStart)
    log(`${elapsed()} restart ${round}: daemon ${daemonPid} serves again after ${((Date.now() - restartStart) / 1000).toFixed(0)} s`)
    const settled = await sample(`after restart ${round}`)
    report.leaks.rssBeforeKiB = settled.rssKiB
    epochRounds = lifecycleRounds
    gate.open()
  }
  const restarts = options.restarts ?? 2
  if (restarts === 0) {
    // No restart to measure from: the steady point is after a first churn round.
    await waitForRound('before the steady sample')
    await gate.close()
    const steady = await sample('steady')
    report.leaks.fdsBefore = steady.fds
    report.leaks.rssBeforeKiB = steady.rssKiB
    steadyKinds = steady.fdKinds
    epochRounds = lifecycleRounds
    gate.open()
  }
  for (let round = 1; round <= restarts; round++) {
    // Within the first half, leaving the last epoch its share of the run.
    const at = soakStart + (round / (restarts + 1)) * 0.65 * options.durationMs
    if (Date.now() < at) await sleep(at - Date.now())
    await restart(round)
  }
  // The last epoch runs at least one more lifecycle round, however late the restarts ended.
  if (Date.now() < soakStart + options.durationMs) await sleep(soakStart + options.durationMs - Date.now())
  await waitForRound(restarts === 0 ? 'after the steady sample' : 'after the last restart')
  stopping = true
  await gate.close()
  gate.open()
  await Promise.all([lifecycle, faulting])

  // --- the end: stop fio, then count what is left
  const teardownStart = Date.now()
  const final = await sample('end')
  report.leaks.fdsAfter = final.fds
  if (steadyKinds && final.fds !== report.leaks.fdsBefore) {
    const count = (kinds: string[]) => kinds.reduce((map, kind) => map.set(kind, (map.get(kind) ?? 0) + 1), new Map<string, number>())
    const [before, after] = [count(steadyKinds), count(final.fdKinds)]
    const changed = [...new Set([...before.keys(), ...after.keys()])].filter((kind) => before.get(kind) !== after.get(kind))
    log(`descriptors that changed: ${changed.map((kind) => `${kind} ${before.get(kind) ?? 0} -> ${after.get(kind) ?? 0}`).join(', ')}`)
  }
  report.leaks.rssAfterKiB = final.rssKiB
  await stopFio(longLived)
  await stopFio(memoryRun)
  report.soakMs = Date.now() - soakStart

  const longIds = [file, block, nul, memory].map((device) => device.id).sort((a, b) => a - b)
  const views = await deviceViews(vm)
  for (const [view, ids] of Object.entries(views)) {
    const extra = ids.filter((id) => !longIds.includes(id))
    const missing = longIds.filter((id) => !ids.includes(id))
    if (extra.length > 0) report.leaks.strays.push(`${view}: ${extra.join(', ')} beyond the long-lived devices`)
    if (missing.length > 0) report.leaks.strays.push(`${view}: long-lived ${missing.join(', ')} missing`)
  }
  for (const device of [file, block, nul, memory]) await del(device)
  await vm.exec(`losetup -d ${disk}`)
  const left = await deviceViews(vm)
  report.leaks.devicesLeft = left.listed.length
  report.leaks.nodesLeft = (await ublkNodes(vm)).length
  report.leaks.recordsLeft = left.records.length
  // For the reader: what the daemons logged as errors (the dead RAM disks' refused re-attach among them).
  report.daemonErrors = (await vm.run(`cat ${daemonLogs.join(' ')} | grep -E '"level":(50|60)' | ` +
    `sed -n 's/.*"msg":"\\([^"]*\\)".*/\\1/p' | sort | uniq -c | sort -rn | head -n 10`)).split('\n')
    .map((line) => line.trim()).filter(Boolean)
  await vm.exec(`rm -f ${Object.values(kFiles).join(' ')} /tmp/soak-fio-*.pid`)
  report.timings.teardownMs = Date.now() - teardownStart
  return report
}

/** Device ids as `ublkd list`, /dev/ublkbN+ublkcN and the state dir's records see them. */
async function deviceViews(vm: Vm): Promise<{ listed: number[]; nodes: number[]; records: number[] }> {
  const sorted = (ids: number[]) => [...new Set(ids)].sort((a, b) => a - b)
  const listed = sorted((await listDevices(vm)).map((device) => device.id))
  const nodes = sorted((await ublkNodes(vm)).map((name) => Number(name.slice(5))))
  const records = sorted((await vm.run(`ls ${kStateDir}/devices 2>/dev/null || true`)).split('\n')
    .filter((name) => /^\d+\.json$/.test(name)).map((name) => Number(name.slice(0, -5))))
  return { listed, nodes, records }
}
