// Device: the lifecycle of one ublk device, as an explicit state machine.
//
//   ADDING ──ADD_DEV, SET_PARAMS, open /dev/ublkcN, GET_QUEUE_AFFINITY, queue workers ready,
//            START_DEV──▶ LIVE ──STOP_DEV, queues drain, close, DEL_DEV──▶ DELETED
//
// Every step of create() pushes its undo; a failure anywhere runs the undos in reverse, so a
// failed add never leaves a half-created device (kernel device, char fd, workers) behind.
import fs from 'node:fs'
import os from 'node:os'

import { UBLK_ATTR_FUA, UBLK_ATTR_READ_ONLY, UBLK_ATTR_VOLATILE_CACHE, UBLK_DEV_ID_ANY, UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DISCARD } from '../abi/ublk-cmd.js'
import type { Params } from '../abi/structs.js'
import { UblkdError, UsageError, messageOf } from '../common/errors.js'
import type { LogLevel, Logger } from '../common/log.js'
import { allocQueueStats, queueStatsView, readQueueStats, statNames, type StatName } from '../common/stats-layout.js'
import { findTarget } from '../targets/registry.js'
import type { DeviceGeometry, Target, TargetSetup } from '../targets/target.js'
import type { UblkControl } from './control.js'
import type { DeviceRequest } from './device-request.js'
import { QueuePool } from './queue-pool.js'

export type DeviceState = 'ADDING' | 'LIVE' | 'STOPPING' | 'DELETED' | 'FAILED'

/** What `ublkd list --json` and `add --json` print for a device. */
export interface DeviceSummary {
  id: number
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
  options: Record<string, string | number | boolean>
}

export interface DeviceDeps {
  control: UblkControl
  log: Logger
  logLevel: LogLevel
  /** Backings in use (TargetSetup.exclusiveKey -> device id), shared by the daemon's devices. */
  exclusiveKeys: Map<string, number>
}

// How long a queue may take to drain after STOP_DEV before it is forced to exit.
const kQueueDrainGraceMs = 10_000
// /dev/ublkcN is created by devtmpfs at ADD_DEV; udev may still be adjusting it.
const kCharDeviceWaitMs = 5_000

type Undo = () => Promise<void> | void

export function paramsFromGeometry(geometry: DeviceGeometry, maxIoBufBytes: number): Params {
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
      maxSectors: maxIoBufBytes / 512,
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
  private undos: Undo[] = []
  private deleting: Promise<void> | null = null
  private pool: QueuePool | null = null
  private readonly affinity: number[][] = []
  private queues = 0
  private depth = 0
  private maxIoBufBytes = 0
  private stats: SharedArrayBuffer | null = null
  /** Called once if the device fails while LIVE (a queue died). */
  onFailure: (device: Device, reason: string) => void = () => {}

  private constructor(
    readonly id: number,
    private readonly request: DeviceRequest,
    private readonly target: Target,
    private readonly setup: TargetSetup<unknown>,
    private readonly deps: DeviceDeps,
    readonly log: Logger,
  ) {}

  /** Validate the request, then bring the device up step by step; unwinds on any failure. */
  static async create(request: DeviceRequest, deps: DeviceDeps): Promise<Device> {
    const target = findTarget(request.target)
    const options = target.parseOptions(request.targetOptions, request.logicalBlockSize)
    const cpuCount = os.cpus().length
    if (request.queues > cpuCount) {
      throw new UsageError(`--queues ${request.queues} is more than the ${cpuCount} CPUs of this machine`)
    }
    const setup = target.setup(options)
    const holder = setup.exclusiveKey === undefined ? undefined : deps.exclusiveKeys.get(setup.exclusiveKey)
    if (holder !== undefined) {
      target.undo(setup.spec)
      throw new UsageError(`${setup.describe['file'] ?? 'the backing'} is already served by device ${holder}`)
    }
    const info = await deps.control.addDev({
      nrHwQueues: request.queues,
      queueDepth: request.depth,
      state: 0,
      maxIoBufBytes: request.maxIoBufBytes,
      devId: request.id ?? UBLK_DEV_ID_ANY,
      ublksrvPid: 0,
      flags: 0n,
      ublksrvFlags: 0n,
      ownerUid: 0,
      ownerGid: 0,
    }).catch((error: unknown) => {
      target.undo(setup.spec)
      if (request.id !== undefined && (error as { errno?: number }).errno === -17) {
        throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `device ${request.id} already exists`)
      }
      throw error
    })
    const log = deps.log.child({ devId: info.devId })
    const device = new Device(info.devId, request, target, setup, deps, log)
    device.undos.push(() => target.undo(setup.spec))
    const exclusiveKey = setup.exclusiveKey
    if (exclusiveKey !== undefined) {
      deps.exclusiveKeys.set(exclusiveKey, info.devId)
      device.undos.push(() => { deps.exclusiveKeys.delete(exclusiveKey) })
    }
    device.undos.push(() => deps.control.delDev(info.devId))
    try {
      await device.bringUp(info.nrHwQueues, info.queueDepth, info.maxIoBufBytes)
    } catch (error) {
      log.warn({ err: messageOf(error) }, 'add failed, unwinding')
      await device.unwind()
      throw error
    }
    return device
  }

  private async bringUp(queues: number, depth: number, maxIoBufBytes: number): Promise<void> {
    const { control } = this.deps
    if (queues !== this.request.queues || depth !== this.request.depth) {
      throw new UblkdError('UBLKD_ERR_KERNEL',
        `kernel gave ${queues} queues of depth ${depth}, asked for ${this.request.queues} x ${this.request.depth}`)
    }
    this.queues = queues
    this.depth = depth
    this.maxIoBufBytes = maxIoBufBytes
    await control.setParams(this.id, paramsFromGeometry(this.setup.geometry, maxIoBufBytes))

    const charDevice = `/dev/ublkc${this.id}`
    await waitForPath(charDevice, kCharDeviceWaitMs)
    const charFd = fs.openSync(charDevice, fs.constants.O_RDWR)
    this.undos.push(() => fs.closeSync(charFd))

    for (let queueId = 0; queueId < queues; queueId++) {
      this.affinity.push(await control.getQueueAffinity(this.id, queueId))
    }
    this.stats = allocQueueStats(queues)
    const pool = new QueuePool({
      devId: this.id,
      depth,
      maxIoBufBytes,
      charFd,
      affinity: this.affinity,
      targetName: this.target.name,
      targetSpec: this.setup.spec,
      stats: this.stats,
      logLevel: this.deps.logLevel,
    })
    this.pool = pool
    // STOP_DEV cancels every outstanding fetch, so the queues drain and exit by themselves.
    this.undos.push(async () => {
      await control.stopDev(this.id).catch((error: unknown) => {
        this.log.warn({ err: messageOf(error) }, 'STOP_DEV failed while unwinding')
      })
      await pool.shutdown(kQueueDrainGraceMs)
    })
    await Promise.race([pool.whenReady(), pool.firstExit()])
    await Promise.race([control.startDev(this.id, process.pid), pool.firstExit()])
    this.state = 'LIVE'
    this.log.info({ queues, depth, target: this.target.name, sizeBytes: this.setup.geometry.sizeBytes,
      queueTids: pool.tasks.map((task) => task.tid), affinity: this.affinity }, 'device live')
    pool.firstExit().catch((error: unknown) => {
      if (this.state !== 'LIVE') return
      this.state = 'FAILED'
      this.log.error({ err: messageOf(error) }, 'queue died: removing the device so I/O fails fast')
      this.onFailure(this, messageOf(error))
    })
  }

  private async unwind(): Promise<void> {
    const undos = this.undos.reverse()
    this.undos = []
    for (const undo of undos) {
      try {
        await undo()
      } catch (error) {
        this.log.error({ err: messageOf(error) }, 'unwind step failed')
      }
    }
  }

  /** STOP_DEV (in-flight I/O completes, new I/O fails), queues drain, then DEL_DEV. */
  delete(): Promise<void> {
    this.deleting ??= (async () => {
      this.state = 'STOPPING'
      this.log.info('stopping device')
      await this.unwind()
      this.state = 'DELETED'
      this.log.info('device deleted')
    })()
    return this.deleting
  }

  /** Each queue's counters as last published (indices: src/common/stats-layout.ts statNames). */
  queueStatValues(): Float64Array[] {
    const stats = this.stats
    if (!stats) return []
    return Array.from({ length: this.queues }, (_, queue) => readQueueStats(queueStatsView(stats, queue)))
  }

  private queueStats(): Record<StatName, number>[] {
    return this.queueStatValues().map((values) =>
      Object.fromEntries(statNames.map((name, i) => [name, values[i]!])) as Record<StatName, number>)
  }

  summary(options: { withStats: boolean } = { withStats: true }): DeviceSummary {
    const summary: DeviceSummary = {
      id: this.id,
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
      options: this.setup.describe,
    }
    if (options.withStats) summary.queueStats = this.queueStats()
    return summary
  }
}
