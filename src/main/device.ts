// Device: the lifecycle of one ublk device, as an explicit state machine.
//
//   ADDING ──ADD_DEV, SET_PARAMS, queues up (open /dev/ublkcN, GET_QUEUE_AFFINITY, workers
//            ready), START_DEV──▶ LIVE ──STOP_DEV, queues drain, close, DEL_DEV──▶ DELETED
//   LIVE ──a queue dies or stalls──▶ RECOVERING (with recovery: every queue down, char fd closed,
//            QUIESCED, START_USER_RECOVERY, fresh queues, END_USER_RECOVERY) ──▶ LIVE
//                                  ▶ FAILED (without recovery: the daemon deletes it, I/O fails fast)
//   attach(): a device left QUIESCED by a dead daemon is brought back the same way.
//
// A failure anywhere in create() tears down what was done, in reverse, so a failed add never
// leaves a half-created device (kernel device, char fd, workers) behind.
import fs from 'node:fs'
import os from 'node:os'

import {
  UBLK_ATTR_FUA, UBLK_ATTR_READ_ONLY, UBLK_ATTR_VOLATILE_CACHE, UBLK_DEV_ID_ANY, UBLK_F_QUIESCE, UBLK_F_SAFE_STOP_DEV, UBLK_F_UPDATE_SIZE, UBLK_F_USER_RECOVERY,
  UBLK_MIN_SEGMENT_SIZE, UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DISCARD, UBLK_PARAM_TYPE_DMA_ALIGN, UBLK_PARAM_TYPE_SEGMENT,
  UBLK_S_DEV_DEAD, UBLK_S_DEV_FAIL_IO, UBLK_S_DEV_QUIESCED,
} from '../abi/ublk-cmd.js'
import { describeFeatureMask } from '../abi/feature-names.js'
import { ublksrvIoDesc, type Params } from '../abi/structs.js'
import { KernelError, UblkdError, UsageError, messageOf } from '../common/errors.js'
import type { Logger } from '../common/log.js'
import type { LogLevel } from '../common/log-level.js'
import { ioModeFlags, ioModeOfFlags, type IoMode } from '../common/io-mode.js'
import type { QueueMode } from '../common/messages.js'
import { createStartGate, openStartGate, startFaults } from '../common/start-gate.js'
import { allocQueueStats, kStatHeartbeatMs, kStatInflight, queueStatsView, readQueueStats, statNames, type StatName } from '../common/stats-layout.js'
import { findTarget } from '../targets/registry.js'
import type { DeviceGeometry, Target, TargetSetup } from '../targets/target.js'
import type { UblkControl } from './control.js'
import { checkIdentity, identityCookie } from './device-identity.js'
import { diskUsers, everyUser } from './disk-users.js'
import type { DeviceRequest } from './device-request.js'
import { chooseIoMode } from './io-mode-choice.js'
import { checkOffered, featureNeeds, neededFlags, wantedFlags } from './kernel-features.js'
import { OperationLane } from './operation-lane.js'
import { QueuePool } from './queue-pool.js'
import { isRecoverable, type RecoveryMode } from './recovery-mode.js'
import { sendStop, stopIfIdle, type StopCommand } from './safe-stop.js'
import { StallWatch } from './stall-watch.js'
import type { DeviceRecord, StateStore } from './state-store.js'

export type DeviceState = 'ADDING' | 'LIVE' | 'RECOVERING' | 'STOPPING' | 'DELETED' | 'FAILED'

/** What `ublkd list --json` and `add --json` print for a device. */
export interface DeviceSummary {
  id: number
  /** null: re-attached from a record older than device identities. */
  uuid: string | null
  /** --name or the configuration file's; null: none. */
  name: string | null
  /** 'config': declared in the configuration file (reloads reconcile it); 'hand': `ublkd add`. */
  origin: 'config' | 'hand'
  blockDevice: string
  charDevice: string
  target: string
  sizeBytes: number
  queues: number
  depth: number
  logicalBlockSize: number
  maxIoBufBytes: number
  state: DeviceState
  daemonPid: number
  queueAffinity: number[][]
  queueTids: (number | null)[]
  /** Per-queue counters as the queue workers last published them (src/common/stats-layout.ts). */
  queueStats?: Record<StatName, number>[]
  /** The UBLK_F_* flags the kernel gave the device at ADD_DEV (its own among them), by name. */
  flags: string[]
  /** --recovery: what happens to I/O while no server serves the device (recovery-mode.ts). */
  recovery: RecoveryMode
  /** Times the device was healed or re-attached by this daemon. */
  recoveries: number
  /** How long its I/O waited during its last upgrade (ublkd upgrade), ms; null: none yet. */
  lastPauseMs: number | null
  /** The block layer's I/O scheduler of the device as sysfs shows it now; null if unreadable. */
  ioScheduler: string | null
  queueMode: QueueMode
  /** How the requests' data travels (src/common/io-mode.ts), from the device's flags. */
  ioMode: IoMode
  hugePageBuffers: boolean
  mlockBuffers: boolean
  options: Record<string, string | number | boolean>
}

export interface DeviceDeps {
  control: UblkControl
  log: Logger
  logLevel: LogLevel
  /** See QueueTaskInput.statsPublishMicros. */
  statsPublishMicros: number
  /** Backings in use (TargetSetup.exclusiveKey -> its claim), shared by the daemon's devices. */
  exclusiveKeys: Map<string, BackingClaim>
  /** Kernel devices this daemon is creating or re-attaching, not yet among its devices: never
   *  orphans. create() adds the id ADD_DEV gave; the daemon removes it. */
  arriving: Set<number>
  /** What the kernel offers (GET_FEATURES at daemon start). */
  kernelFeatures: bigint
  store: StateStore
}

// How long a queue may take to drain after STOP_DEV before it is forced to exit.
const kQueueDrainGraceMs = 10_000
// Healthy queues of a device being healed exit at once (the kernel aborts their fetches).
const kHealGraceMs = 2_000
// A queue loop turns at least twice a second; src/main/stall-watch.ts says when it is stuck.
const kSupervisionIntervalMs = 250
// After a queue or daemon death the kernel quiesces the device and releases the char device
// asynchronously (ring teardown runs in a kworker): poll for that long.
const kQuiesceWaitMs = 20_000
// The request timeout of a --recovery device (see setIoTimeout): well within kQuiesceWaitMs.
const kRecoveryIoTimeoutMs = 5_000
// An upgrade's QUIESCE_DEV waits this long for each queue to have an idle tag (EBUSY after),
// then the queues this long to finish what they hold; either running out only costs a reissue.
const kQuiesceDevWaitMs = 10_000
const kHandOverDrainMs = 10_000
// /dev/ublkcN is created by devtmpfs at ADD_DEV; udev may still be adjusting it.
const kCharDeviceWaitMs = 5_000

type Undo = () => Promise<void> | void

/** A device's hold on its backing, taken before the first await of an add so that two adds of
 *  one backing cannot both pass the check; `id` once the kernel gave one. Compared by identity:
 *  device ids are reused, claims are not. */
export interface BackingClaim {
  id: number | null
}

// The DMA alignment mask must stay below the page size (ublk_drv.c, ublk_validate_params).
const kPageBytes = 4096
// The block layer's default segment boundary: none below 4 GiB.
const kNoSegmentBoundary = 0xffffffffn

export function paramsFromGeometry(geometry: DeviceGeometry, maxIoBufBytes: number, ioMode: IoMode): Params {
  const shift = (bytes: number) => Math.log2(bytes)
  let attrs = 0
  if (geometry.readOnly) attrs |= UBLK_ATTR_READ_ONLY
  if (geometry.volatileCache) attrs |= UBLK_ATTR_VOLATILE_CACHE
  if (geometry.volatileCache && geometry.fua) attrs |= UBLK_ATTR_FUA
  const params: Params = {
    types: UBLK_PARAM_TYPE_BASIC,
    basic: {
      attrs,
      logicalBsShift: shift(geometry.logicalBlockSize),
      physicalBsShift: shift(geometry.physicalBlockSize),
      ioOptShift: shift(geometry.physicalBlockSize),
      ioMinShift: shift(geometry.physicalBlockSize),
      maxSectors: Math.min(maxIoBufBytes, geometry.maxIoBytes ?? maxIoBufBytes) / 512,
      chunkSectors: 0,
      devSectors: BigInt(geometry.sizeBytes / 512),
      virtBoundaryMask: 0n,
    },
  }
  if (geometry.discard) {
    params.types |= UBLK_PARAM_TYPE_DISCARD
    params.discard = {
      discardAlignment: 0,
      discardGranularity: geometry.discard.granularityBytes,
      maxDiscardSectors: geometry.discard.maxDiscardSectors,
      maxWriteZeroesSectors: geometry.discard.maxWriteZeroesSectors,
      maxDiscardSegments: 1,
    }
  }
  const limits = ioMode === 'zero-copy' ? geometry.zeroCopyLimits : undefined
  if (limits) {
    params.types |= UBLK_PARAM_TYPE_DMA_ALIGN
    params.dma = { alignment: Math.min(limits.dmaAlignmentBytes, kPageBytes) - 1 }
    if (limits.segments) {
      params.types |= UBLK_PARAM_TYPE_SEGMENT
      params.seg = {
        segBoundaryMask: kNoSegmentBoundary,
        maxSegmentSize: Math.max(UBLK_MIN_SEGMENT_SIZE, limits.segments.maxSegmentBytes),
        maxSegments: Math.min(0xffff, limits.segments.maxSegments),
      }
    }
  }
  return params
}

async function waitForPath(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!fs.existsSync(path)) {
    if (Date.now() > deadline) throw new UblkdError('UBLKD_ERR_TIMEOUT', `${path} did not appear`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

export class Device {
  state: DeviceState = 'ADDING'
  recoveries = 0
  /** Undoes target.setup() (closes the backing, ...). */
  private releaseTarget: Undo = () => {}
  private claim: BackingClaim | null = null
  /** When the device was first created (its record's createdMs): which record is this device's. */
  createdMs = Date.now()
  /** Whether teardown deletes the kernel device (DEL_DEV). */
  private ownsKernelDevice = false
  private deleting: Promise<void> | null = null
  /** Heal, delete, detach, hand-over and resize, one at a time. */
  private readonly lane = new OperationLane()
  /** delete() was called: a heal running meanwhile gives up at its next step. */
  private deleteAsked = false
  /** deleteIfIdle() stopped the disk already. */
  private kernelStopped = false
  private pool: QueuePool | null = null
  private charFd: number | null = null
  private affinity: number[][] = []
  private readonly stats: SharedArrayBuffer
  /** Closed while START_DEV runs (create()); open otherwise. */
  private readonly startGate: Int32Array
  private supervision: NodeJS.Timeout | null = null
  /** How long the device's I/O waited during its last upgrade (ms); null: never upgraded. */
  lastPauseMs: number | null = null
  private resizing = false
  /** Called once if the device fails for good while live (a queue died, no recovery). */
  onFailure: (device: Device, reason: string) => void = () => {}

  private constructor(
    readonly id: number,
    private readonly request: DeviceRequest,
    private readonly target: Target,
    private readonly setup: TargetSetup<unknown>,
    private readonly queueMode: QueueMode,
    private readonly deps: DeviceDeps,
    readonly log: Logger,
    private readonly queues: number,
    private readonly depth: number,
    private readonly maxIoBufBytes: number,
    /** UBLK_F_* as the kernel reported them for this device. */
    private readonly flags: bigint,
    /** create(): the device has yet to be started (not attach()). */
    starting = false,
  ) {
    this.stats = allocQueueStats(queues)
    this.startGate = createStartGate(!starting)
  }

  /** Validate the request, then bring the device up step by step; tears down on any failure. */
  static async create(request: DeviceRequest, deps: DeviceDeps): Promise<Device> {
    const cpuCount = os.cpus().length
    if (request.queues > cpuCount) {
      throw new UsageError(`--queues ${request.queues} is more than the ${cpuCount} CPUs of this machine`)
    }
    // Refused before anything exists: an option whose feature this kernel lacks.
    const needs = featureNeeds(request)
    checkOffered(needs, deps.kernelFeatures)
    const ioMode = chooseIoMode(request.ioMode ?? 'auto', findTarget(request.target), deps.kernelFeatures, request)
    const { target, setup, queueMode, claim, release } = await Device.prepareTarget(request, deps)
    const info = await deps.control.addDev({
      nrHwQueues: request.queues,
      queueDepth: request.depth,
      state: 0,
      maxIoBufBytes: request.maxIoBufBytes,
      devId: request.id ?? UBLK_DEV_ID_ANY,
      ublksrvPid: 0,
      flags: neededFlags(needs) | wantedFlags(request, deps.kernelFeatures) | ioModeFlags(ioMode),
      ublksrvFlags: identityCookie(request.uuid),
      ownerUid: 0,
      ownerGid: 0,
    }).catch((error: unknown) => {
      release()
      if (claim) deps.exclusiveKeys.delete(setup.exclusiveKey!)
      if (request.id !== undefined && (error as { errno?: number }).errno === -17) {
        throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `device ${request.id} already exists`)
      }
      throw error
    })
    deps.arriving.add(info.devId)
    const device = new Device(info.devId, request, target, setup, queueMode, deps, deps.log.child({ devId: info.devId }),
      info.nrHwQueues, info.queueDepth, info.maxIoBufBytes, info.flags, true)
    device.releaseTarget = release
    device.claim = claim
    if (claim) claim.id = device.id
    device.ownsKernelDevice = true
    try {
      // The kernel clears what it does not support rather than failing ADD_DEV.
      checkOffered(needs, info.flags)
      if (ioModeOfFlags(info.flags) !== ioMode) {
        throw new UblkdError('UBLKD_ERR_KERNEL', `the kernel did not give the device --io-mode ${ioMode} (flags 0x${info.flags.toString(16)})`)
      }
      // Descriptors are 24 bytes unless UBLK_F_IO_DESC_SIZE asks otherwise, which we never do.
      if (info.ioDescSize !== 0 && info.ioDescSize !== ublksrvIoDesc.bytes) {
        throw new UblkdError('UBLKD_ERR_KERNEL', `kernel gave ${info.ioDescSize}-byte I/O descriptors, expected ${ublksrvIoDesc.bytes}`)
      }
      if (info.nrHwQueues !== request.queues || info.queueDepth !== request.depth) {
        throw new UblkdError('UBLKD_ERR_KERNEL',
          `kernel gave ${info.nrHwQueues} queues of depth ${info.queueDepth}, asked for ${request.queues} x ${request.depth}`)
      }
      await deps.control.setParams(device.id, paramsFromGeometry(setup.geometry, info.maxIoBufBytes, ioMode))
      await device.startQueues()
      await Promise.race([deps.control.startDev(device.id, process.pid), device.pool!.firstExit()])
      // These sysfs writes freeze the disk's queue, waiting for its requests: with a queue dead
      // meanwhile they would block this thread, which a heal needs. The gate is still closed.
      device.setIoScheduler(request.ioScheduler)
      if (isRecoverable(request.recovery)) device.setIoTimeout(kRecoveryIoTimeoutMs)
      openStartGate(device.startGate)
      const faults = startFaults(device.startGate)
      if (faults > 0) {
        throw new UblkdError('UBLKD_ERR_QUEUE', `the ${device.target.name} target threw on ${faults} request(s) while the device ` +
          'was starting (the kernel\'s first reads, e.g. its partition scan): see the daemon log')
      }
    } catch (error) {
      device.log.warn({ err: messageOf(error) }, 'add failed, unwinding')
      // A queue may be dead or never have fetched: the kernel must see the server gone first.
      await device.teardown({ queuesFirst: true })
      deps.arriving.delete(device.id)
      throw error
    }
    device.becomeLive('device live')
    device.saveRecord()
    device.announce()
    return device
  }

  /**
   * Re-attach a device a previous daemon left behind (its record in the state dir): the kernel
   * holds it QUIESCED, with the I/O it had in flight queued; fresh queues take it over.
   */
  static async attach(record: DeviceRecord, deps: DeviceDeps): Promise<Device> {
    const { request, id } = record
    const target = findTarget(request.target)
    if (!target.survivesRestart) {
      throw new UblkdError('UBLKD_ERR_NOT_RECOVERABLE', `device ${id} (${target.name}) cannot be re-attached: its data died with the old daemon`)
    }
    const info = await deps.control.getDevInfo(id)
    checkIdentity(id, request, info)
    if ((info.flags & UBLK_F_USER_RECOVERY) === 0n) {
      throw new UblkdError('UBLKD_ERR_NOT_RECOVERABLE', `device ${id} was not created with --recovery`)
    }
    const { setup, queueMode, claim, release } = await Device.prepareTarget(request, deps)
    const device = new Device(id, request, target, setup, queueMode, deps, deps.log.child({ devId: id }),
      info.nrHwQueues, info.queueDepth, info.maxIoBufBytes, info.flags)
    device.createdMs = record.createdMs
    device.releaseTarget = release
    device.claim = claim
    if (claim) claim.id = id
    device.state = 'RECOVERING'
    const started = Date.now()
    try {
      await device.recover()
    } catch (error) {
      // Leave the kernel device QUIESCED for another try (ublkd recover -n ID); release ours.
      await device.stopQueues(0)
      await device.releaseOwn()
      throw error
    }
    device.ownsKernelDevice = true
    device.recoveries++
    if (record.handOverMs === undefined) {
      device.lastPauseMs = record.lastPauseMs ?? null
      device.becomeLive('device re-attached', Date.now() - started)
    } else {
      // From the old daemon's last served request to now: what the device's I/O waited.
      device.lastPauseMs = Math.max(0, Date.now() - record.handOverMs)
      device.becomeLive('device taken over from the previous daemon', Date.now() - started)
      device.log.info({ pauseMs: device.lastPauseMs }, 'upgrade pause')
    }
    device.saveRecord()
    device.announce()
    return device
  }

  private saveRecord(extra: Pick<DeviceRecord, 'handOverMs'> = {}): void {
    this.deps.store.save({
      version: 1, id: this.id, request: this.request, createdMs: this.createdMs,
      ...(this.lastPauseMs === null ? {} : { lastPauseMs: this.lastPauseMs }), ...extra,
    })
  }

  /** Parse, validate and set up the target, and claim its backing (with no await between the
   *  check and the claim: see BackingClaim); the returned release undoes setup(), not the claim. */
  private static async prepareTarget(request: DeviceRequest, deps: DeviceDeps) {
    const target = findTarget(request.target)
    const options = target.parseOptions(request.targetOptions, request.logicalBlockSize)
    const setup = await target.setup(options)
    if (setup.maxQueues !== undefined && request.queues > setup.maxQueues) {
      target.undo(setup.spec)
      throw new UsageError(`target ${target.name} serves at most ${setup.maxQueues} queue(s) here: ${setup.maxQueuesReason ?? 'its backing allows no more'}`)
    }
    const holder = setup.exclusiveKey === undefined ? undefined : deps.exclusiveKeys.get(setup.exclusiveKey)
    if (holder !== undefined) {
      target.undo(setup.spec)
      const backing = setup.describe['file'] ?? 'the backing'
      throw new UsageError(holder.id === null
        ? `${backing} is being added as another device right now`
        : `${backing} is already served by device ${holder.id}`)
    }
    if (setup.needsEventLoop && request.queueMode === 'ring') {
      target.undo(setup.spec)
      throw new UsageError(`target ${target.name} with these options completes requests from timers or promises: it needs --queue-mode event-loop`)
    }
    const queueMode: QueueMode = setup.needsEventLoop ? 'event-loop' : request.queueMode ?? 'ring'
    let claim: BackingClaim | null = null
    if (setup.exclusiveKey !== undefined) {
      claim = { id: null }
      deps.exclusiveKeys.set(setup.exclusiveKey, claim)
    }
    return { target, setup, queueMode, claim, release: () => target.undo(setup.spec) }
  }

  /** Release what this process holds for the device (backing claim, target), not the kernel device. */
  private async releaseOwn(): Promise<void> {
    const key = this.setup.exclusiveKey
    if (key !== undefined && this.claim !== null && this.deps.exclusiveKeys.get(key) === this.claim) {
      this.deps.exclusiveKeys.delete(key)
    }
    this.claim = null
    const release = this.releaseTarget
    this.releaseTarget = () => {}
    await release()
  }

  private schedulerFile(): string {
    return `/sys/block/ublkb${this.id}/queue/scheduler`
  }

  /** A "change" uevent for the disk: udev's rules ran at START_DEV, before `ublkd udev-id` could
   *  name the device (examples/udev/60-ublkd.rules); now it can. */
  private announce(): void {
    try {
      fs.writeFileSync(`/sys/block/ublkb${this.id}/uevent`, 'change')
    } catch (error) {
      this.log.warn({ err: messageOf(error) }, 'cannot send the disk\'s change uevent')
    }
  }

  /** The block layer's request timeout. On a timeout the driver only re-arms the timer while
   *  the device's server lives; Linux 6.12 also uses it to notice a queue that died with every
   *  tag in service (no fetch left for it to cancel), which it then aborts and quiesces. */
  private setIoTimeout(ms: number): void {
    fs.writeFileSync(`/sys/block/ublkb${this.id}/queue/io_timeout`, String(ms))
  }

  /** The kernel chose a scheduler at START_DEV; replace it with the requested one. */
  private setIoScheduler(name: string): void {
    try {
      fs.writeFileSync(this.schedulerFile(), name)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? messageOf(error)
      const offered = this.ioScheduler()?.available.join(', ') ?? 'unknown'
      throw new UsageError(`--io-scheduler ${name}: the kernel refused it (${code}); this kernel offers: ${offered}`)
    }
    this.log.info({ ioScheduler: name }, 'I/O scheduler set')
  }

  /** sysfs lists the schedulers with the current one in brackets: "[none] mq-deadline kyber". */
  private ioScheduler(): { current: string | null; available: string[] } | null {
    let text: string
    try {
      text = fs.readFileSync(this.schedulerFile(), 'utf8')
    } catch {
      return null
    }
    const names = text.trim().split(/\s+/)
    const current = names.find((name) => name.startsWith('[')) ?? null
    return { current: current === null ? null : current.slice(1, -1), available: names.map((name) => name.replace(/[[\]]/g, '')) }
  }

  /** Open the char device, start one worker per queue, wait until every tag is fetched. */
  private async startQueues(): Promise<void> {
    const charDevice = `/dev/ublkc${this.id}`
    await waitForPath(charDevice, kCharDeviceWaitMs)
    this.charFd = fs.openSync(charDevice, fs.constants.O_RDWR)
    if (this.affinity.length === 0) {
      for (let queueId = 0; queueId < this.queues; queueId++) {
        this.affinity.push(await this.deps.control.getQueueAffinity(this.id, queueId))
      }
    }
    this.pool = new QueuePool({
      devId: this.id,
      depth: this.depth,
      maxIoBufBytes: this.maxIoBufBytes,
      ioMode: ioModeOfFlags(this.flags),
      hugePageBuffers: this.request.hugePageBuffers,
      mlockBuffers: this.request.mlockBuffers === true,
      charFd: this.charFd,
      affinity: this.affinity,
      targetName: this.target.name,
      targetSpec: this.setup.spec,
      stats: this.stats,
      logLevel: this.deps.logLevel,
      statsPublishMicros: this.deps.statsPublishMicros,
      startGate: this.startGate,
      queueMode: this.queueMode,
    })
    await Promise.race([this.pool.whenReady(), this.pool.firstExit()])
  }

  /** Let the queues end (forcing them after `graceMs`), then close the char device. */
  private async stopQueues(graceMs: number): Promise<void> {
    const pool = this.pool
    this.pool = null
    if (pool) await pool.shutdown(graceMs)
    if (this.charFd !== null) fs.closeSync(this.charFd)
    this.charFd = null
  }

  private becomeLive(message: string, healMs?: number): void {
    this.state = 'LIVE'
    this.log.info({ queues: this.queues, depth: this.depth, target: this.target.name,
      sizeBytes: this.setup.geometry.sizeBytes, recovery: this.request.recovery,
      queueTids: this.pool!.tasks.map((task) => task.tid), affinity: this.affinity,
      ...(healMs === undefined ? {} : { healMs }) }, message)
    this.supervise()
  }

  /** Watch the queues: a task that ends, or a heartbeat that stops, is a queue death. */
  private supervise(): void {
    const pool = this.pool!
    const watch = new StallWatch(kSupervisionIntervalMs, Date.now())
    let handled = false
    const died = (reason: string) => {
      if (handled || this.pool !== pool || this.state !== 'LIVE') return
      handled = true
      this.stopSupervision()
      this.onQueueDeath(reason)
    }
    pool.firstExit().catch((error: unknown) => died(messageOf(error)))
    this.supervision = setInterval(() => {
      const stalled = this.stalledQueue(pool, watch)
      if (stalled) died(stalled)
    }, kSupervisionIntervalMs)
    this.supervision.unref()
  }

  /** A running queue of `pool` that `watch` finds stalled, described; null if none. */
  private stalledQueue(pool: QueuePool, watch: StallWatch): string | null {
    const heartbeats = this.queueStatValues().map((values) => values[kStatHeartbeatMs]!)
    return watch.check(Date.now(), heartbeats, pool.tasks)
  }

  /** Await STOP_DEV (or TRY_STOP_DEV); if a queue stalls or dies meanwhile, it holds requests
   *  it will never complete, for which the stop waits: force the queues down, so that the kernel
   *  fails them. Resolves with the command's error, or null. */
  private async stopDevice(command: StopCommand): Promise<unknown> {
    let stopped = false
    const stop = sendStop(this.deps.control, this.id, command).finally(() => { stopped = true })
    const pool = this.pool
    const watch = new StallWatch(kSupervisionIntervalMs, Date.now())
    while (!stopped && pool !== null && this.pool === pool) {
      await Promise.race([stop, new Promise((resolve) => setTimeout(resolve, kSupervisionIntervalMs))])
      const dead = pool.tasks.find((task) => task.died)
      const stuck = stopped ? null : dead ? `queue ${dead.queueId} died` : this.stalledQueue(pool, watch)
      if (stuck) {
        this.log.warn({ reason: stuck }, 'queue stuck while stopping: forcing the queues down')
        await this.stopQueues(0)
      }
    }
    return stop
  }

  private stopSupervision(): void {
    if (this.supervision) clearInterval(this.supervision)
    this.supervision = null
  }

  private onQueueDeath(reason: string): void {
    if (!isRecoverable(this.request.recovery)) {
      this.state = 'FAILED'
      this.log.error({ reason }, 'queue died: removing the device so I/O fails fast')
      this.onFailure(this, reason)
      return
    }
    this.state = 'RECOVERING'
    this.log.warn({ reason }, 'queue died: healing the device')
    void this.lane.run(() => this.heal())
  }

  private async heal(): Promise<void> {
    // A delete that was asked for before the death ran first.
    if (this.state !== 'RECOVERING') return
    const started = Date.now()
    try {
      // The kernel aborts the other queues' fetches once the device quiesces, so they end too;
      // whatever does not end in time is forced out.
      await this.stopQueues(kHealGraceMs)
      await this.recover()
    } catch (error) {
      this.state = 'FAILED'
      this.log.error({ err: messageOf(error) }, 'healing failed: removing the device')
      this.onFailure(this, messageOf(error))
      return
    }
    this.recoveries++
    this.becomeLive('device healed', Date.now() - started)
  }

  /** QUIESCED → START_USER_RECOVERY → fresh queues → END_USER_RECOVERY. */
  private async recover(): Promise<void> {
    const { control } = this.deps
    const deadline = Date.now() + kQuiesceWaitMs
    for (;;) {
      if (this.deleteAsked) throw new UblkdError('UBLKD_ERR_BUSY', `device ${this.id} is being deleted: heal abandoned`)
      const info = await control.getDevInfo(this.id)
      if (info.state === UBLK_S_DEV_DEAD) throw new UblkdError('UBLKD_ERR_DAEMON', `device ${this.id} was stopped, nothing to recover`)
      // Serverless: I/O held (reissue) or failing (fail-io) until START_USER_RECOVERY.
      if (info.state === UBLK_S_DEV_QUIESCED || info.state === UBLK_S_DEV_FAIL_IO) {
        // EBUSY until every file of the old queues (rings, mappings) is released.
        const started = await control.startUserRecovery(this.id).then(() => true, (error: unknown) => {
          if (error instanceof KernelError && error.errno === -16) return false
          throw error
        })
        if (started) break
      }
      if (Date.now() > deadline) throw new UblkdError('UBLKD_ERR_TIMEOUT', `device ${this.id} did not become recoverable (state ${info.state})`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    try {
      await this.startQueues()
      await Promise.race([control.endUserRecovery(this.id, process.pid), this.pool!.firstExit()])
    } catch (error) {
      await this.stopQueues(0)
      throw error
    }
  }

  get uuid(): string | undefined {
    return this.request.uuid
  }

  get name(): string | undefined {
    return this.request.name
  }

  /** The request the device was made from, as its record keeps it (size updated by resizes). */
  get deviceRequest(): DeviceRequest {
    return this.request
  }

  get sizeBytes(): number {
    return this.setup.geometry.sizeBytes
  }

  /** The device as a configuration file would declare it (`ublkd config dump`). */
  declaredFields(): Record<string, unknown> {
    const { targetOptions, maxIoBufBytes: _buffers, origin: _origin, ...common } = this.request
    return { ...common, ...targetOptions }
  }

  /** A later daemon could take the device over: recovery is on and the data outlives us. */
  get reattachable(): boolean {
    return isRecoverable(this.request.recovery) && this.target.survivesRestart
  }

  /** Why `ublkd upgrade` cannot hand this device over without I/O errors; null if it can. */
  handOverRefusal(): string | null {
    if (this.request.recovery === 'off') return 'created without --recovery: it goes with its daemon'
    if (this.request.recovery === 'fail-io') return 'created with --recovery fail-io: its I/O would fail while no daemon serves it'
    if (!this.target.survivesRestart) return `a ${this.target.name} device: its data lives in this daemon's memory`
    if (this.state !== 'LIVE') return `it is ${this.state}`
    return null
  }

  /**
   * `ublkd upgrade`: stop serving and leave the device to the next daemon, losing nothing.
   * With UBLK_F_QUIESCE (Linux 6.16+) the kernel holds new I/O and aborts our idle fetches;
   * what the queues hold completes before they go, so the next daemon starts clean. Without it
   * (or should the quiesce fail) the queues go at once and the kernel sends what they held to
   * the next daemon again (USER_RECOVERY_REISSUE). The record notes when, for the pause the next
   * daemon reports. Never undone once begun: the device is the next daemon's either way.
   */
  handOver(): Promise<void> {
    return this.lane.run(() => this.handOverNow())
  }

  private async handOverNow(): Promise<void> {
    this.stopSupervision()
    this.state = 'STOPPING'
    const started = Date.now()
    let quiesced = false
    if ((this.flags & UBLK_F_QUIESCE) !== 0n) {
      try {
        await this.deps.control.quiesceDev(this.id, kQuiesceDevWaitMs)
        quiesced = await this.queuesIdle(kHandOverDrainMs)
      } catch (error) {
        this.log.warn({ err: messageOf(error) }, 'QUIESCE_DEV failed: the next daemon gets the in-flight I/O again')
      }
    }
    this.saveRecord({ handOverMs: started })
    await this.stopQueues(0)
    await this.releaseOwn()
    this.log.info({ quiesced, handOverMs: Date.now() - started }, 'device handed over to the next daemon')
  }

  /** Wait until every queue has ended or holds no request; false if `waitMs` ran out first. */
  private async queuesIdle(waitMs: number): Promise<boolean> {
    const pool = this.pool
    if (pool === null) return true
    const deadline = Date.now() + waitMs
    for (;;) {
      const values = this.queueStatValues()
      if (pool.tasks.every((task, queue) => task.settled || values[queue]![kStatInflight] === 0)) return true
      if (Date.now() > deadline) return false
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  /** Why resize(sizeBytes, force) would be refused now, as the error it would throw; null if
   *  it would go ahead (the target and the kernel may still refuse). */
  resizeRefusal(sizeBytes: number, force = false): UblkdError | null {
    try {
      checkOffered([{ flag: UBLK_F_UPDATE_SIZE, option: 'ublkd resize' }], this.deps.kernelFeatures)
    } catch (error) {
      return error as UblkdError
    }
    if (!this.target.resize) return new UsageError(`a ${this.target.name} device cannot change its size`)
    if (this.state !== 'LIVE' || this.resizing) {
      return new UblkdError('UBLKD_ERR_BUSY', `device ${this.id} is ${this.resizing ? 'being resized' : this.state}: try again once it is LIVE`)
    }
    const { logicalBlockSize, sizeBytes: current } = this.setup.geometry
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % logicalBlockSize !== 0) {
      return new UsageError(`--size must be a positive multiple of the device's logical block size ${logicalBlockSize}, got ${sizeBytes}`)
    }
    if (sizeBytes < current && !force) {
      const users = everyUser(diskUsers(`ublkb${this.id}`))
      if (users.length > 0) {
        return new UblkdError('UBLKD_ERR_BUSY', `device ${this.id} is in use (${users.join('; ')}): shrinking it cuts off ` +
          'what its users may keep past the new end; shrink the filesystem first, or resize --force')
      }
    }
    return null
  }

  /**
   * `ublkd resize`: the target makes room for the new size, the kernel takes it (UPDATE_SIZE,
   * Linux 6.16+), the record keeps it. Shrinking a disk in use (mounted, held, open) is refused
   * unless `force`: its users may hold data past the new end.
   */
  async resize(sizeBytes: number, force: boolean): Promise<void> {
    const early = this.resizeRefusal(sizeBytes, force)
    if (early !== null) throw early
    return this.lane.run(() => this.resizeNow(sizeBytes, force))
  }

  private async resizeNow(sizeBytes: number, force: boolean): Promise<void> {
    // The device may have changed while an operation before this one ran.
    const refusal = this.resizeRefusal(sizeBytes, force)
    if (refusal !== null) throw refusal
    const current = this.setup.geometry.sizeBytes
    if (sizeBytes === current) return
    const resize = this.target.resize!
    this.resizing = true
    try {
      // Room first, the kernel's size next; a shrink's release once the kernel sends no I/O there.
      if (sizeBytes > current) resize.call(this.target, this.setup.spec, current, sizeBytes)
      await this.deps.control.updateSize(this.id, BigInt(sizeBytes / 512))
      if (sizeBytes < current) resize.call(this.target, this.setup.spec, current, sizeBytes)
    } finally {
      this.resizing = false
    }
    this.setup.geometry.sizeBytes = sizeBytes
    this.request.targetOptions['size'] = sizeBytes
    this.saveRecord()
    this.log.info({ fromBytes: current, sizeBytes }, 'device resized')
  }

  /** Stop serving without stopping the device: the kernel quiesces it and queues new I/O, and a
   *  later daemon re-attaches it (--keep-devices-on-exit). */
  detach(): Promise<void> {
    return this.lane.run(async () => {
      if (this.state === 'DELETED') return
      this.stopSupervision()
      this.state = 'STOPPING'
      await this.stopQueues(0)
      await this.releaseOwn()
      this.log.info('device detached, kept for re-attach')
    })
  }

  /** Delete the device only if nothing uses its disk (src/main/safe-stop.ts); else throw
   *  UBLKD_ERR_BUSY and keep serving it. */
  async deleteIfIdle(): Promise<void> {
    if (this.deleting) return this.deleting
    this.refuseWhileHealing()
    return this.lane.run(() => this.deleteIfIdleNow())
  }

  private refuseWhileHealing(): void {
    // The heal drives the kernel device meanwhile (START/END_USER_RECOVERY).
    if (this.state === 'RECOVERING') throw new UblkdError('UBLKD_ERR_BUSY', `device ${this.id} is being healed: try again, or del --force`)
  }

  private async deleteIfIdleNow(): Promise<void> {
    if (this.state === 'DELETED') return
    this.refuseWhileHealing()
    // A device that failed, or is stopping, goes anyway.
    if (this.state !== 'LIVE' || !this.ownsKernelDevice) return this.deleteNow()
    // One check at a time; the queues' exit after the stop is not a queue death.
    this.stopSupervision()
    this.state = 'STOPPING'
    try {
      await stopIfIdle({
        id: this.id,
        tryStopDev: (this.flags & UBLK_F_SAFE_STOP_DEV) !== 0n,
        runStop: (command) => this.stopDevice(command),
      })
    } catch (error) {
      this.state = 'LIVE'
      this.supervise()
      throw error
    }
    this.kernelStopped = true
    return this.deleteNow()
  }

  /** STOP_DEV (in-flight I/O completes, new I/O fails), queues drain, then DEL_DEV. A device
   *  that FAILED (a queue died or stalled) has requests its queues will never complete: its
   *  queues go first, so that the kernel fails them and STOP_DEV does not wait for ever. */
  delete(): Promise<void> {
    this.deleteAsked = true
    this.deleting ??= this.lane.run(() => this.deleteNow())
    return this.deleting
  }

  private async deleteNow(): Promise<void> {
    if (this.state === 'DELETED') return
    this.stopSupervision()
    // A queue died: it holds requests it will never complete (a heal not begun would replace it).
    const queuesFirst = this.state === 'FAILED' || this.state === 'RECOVERING'
    this.state = 'STOPPING'
    this.log.info({ queuesFirst }, 'stopping device')
    await this.teardown({ queuesFirst })
    // Only our own record: by now the kernel may have given this id to a newer device.
    this.deps.store.remove(this.id, this.createdMs)
    this.state = 'DELETED'
    this.log.info('device deleted')
  }

  /**
   * Normally STOP_DEV first: it cancels every outstanding fetch once in-flight I/O completed, so
   * the queues drain and exit by themselves; then the char fd is closed (DEL_DEV waits for it),
   * the kernel device deleted, ours released. With `queuesFirst` the queues are forced down and
   * the char fd closed before STOP_DEV: the kernel then fails (or, with recovery, requeues)
   * whatever the server still held, which 7.x does only when the char device is released.
   */
  private async teardown({ queuesFirst }: { queuesFirst: boolean }): Promise<void> {
    const { control } = this.deps
    if (queuesFirst) await this.stopQueues(0)
    if (this.ownsKernelDevice && !this.kernelStopped) {
      const error = await this.stopDevice('STOP_DEV')
      if (error !== null) this.log.warn({ err: messageOf(error) }, 'STOP_DEV failed')
    }
    await this.stopQueues(kQueueDrainGraceMs)
    if (this.ownsKernelDevice) {
      await control.delDev(this.id).catch((error: unknown) => {
        this.log.error({ err: messageOf(error) }, 'DEL_DEV failed')
      })
      this.ownsKernelDevice = false
    }
    await this.releaseOwn().catch((error: unknown) => {
      this.log.error({ err: messageOf(error) }, 'releasing the target failed')
    })
  }

  /** Each queue's counters as last published (indices: src/common/stats-layout.ts statNames). */
  queueStatValues(): Float64Array[] {
    return Array.from({ length: this.queues }, (_, queue) => readQueueStats(queueStatsView(this.stats, queue)))
  }

  private queueStats(): Record<StatName, number>[] {
    return this.queueStatValues().map((values) =>
      Object.fromEntries(statNames.map((name, i) => [name, values[i]!])) as Record<StatName, number>)
  }

  /** The device's UBLK_F_* by name, any bit this build does not know as `bit N`. */
  private flagLabels(): string[] {
    const { names, unknownBits } = describeFeatureMask(this.flags)
    return [...names, ...unknownBits.map((bit) => `bit ${bit}`)]
  }

  summary(options: { withStats: boolean } = { withStats: true }): DeviceSummary {
    const summary: DeviceSummary = {
      id: this.id,
      uuid: this.request.uuid ?? null,
      name: this.request.name ?? null,
      origin: this.request.origin === 'config' ? 'config' : 'hand',
      blockDevice: `/dev/ublkb${this.id}`,
      charDevice: `/dev/ublkc${this.id}`,
      target: this.target.name,
      sizeBytes: this.setup.geometry.sizeBytes,
      queues: this.queues,
      depth: this.depth,
      logicalBlockSize: this.setup.geometry.logicalBlockSize,
      maxIoBufBytes: this.maxIoBufBytes,
      state: this.state,
      daemonPid: process.pid,
      queueAffinity: this.affinity,
      queueTids: this.pool ? this.pool.tasks.map((task) => task.tid) : [],
      flags: this.flagLabels(),
      recovery: this.request.recovery,
      recoveries: this.recoveries,
      lastPauseMs: this.lastPauseMs,
      ioScheduler: this.ioScheduler()?.current ?? null,
      queueMode: this.queueMode,
      ioMode: ioModeOfFlags(this.flags),
      hugePageBuffers: this.request.hugePageBuffers,
      mlockBuffers: this.request.mlockBuffers === true,
      options: this.setup.describe,
    }
    if (options.withStats) summary.queueStats = this.queueStats()
    return summary
  }
}
