// The data-plane loop of one hardware queue (ring mode).
//
// Each turn: one io_uring_enter submits everything staged in the previous turn and waits for at
// least one CQE (or the heartbeat timeout); then every reaped CQE is dispatched:
//   ublk CQE, res 0      a request arrived for that tag: read its descriptor, let the target
//                        serve it, stage COMMIT_AND_FETCH_REQ with the result (re-arms the tag)
//   ublk CQE, ABORT      the device is going away: the tag is dead, never re-armed
//   target CQE           one of the target's own SQEs (file I/O) finished: the target is told
//   stop CQE             the stop eventfd fired: leave at once (closing the ring cancels the rest)
// The loop ends when every tag is dead or a stop was requested. Nothing here allocates per I/O.
import { IORING_OP_READ, encodeReadWrite, encodeUringCmd, kCqeWords, kSqeCmdWord } from '../abi/io-uring.js'
import {
  UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_RES_ABORT, UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ, UBLK_U_IO_FETCH_REQ,
} from '../abi/ublk-cmd.js'
import {
  QueueStatsWriter, batchBucket, kStatBatchFirstBucket, kStatCqes, kStatHeartbeatMs, kStatInflight,
  kStatLatencyFirstBucket, kStatLatencySumNs, kStatLoopTurns, latencyBucket, opStatIndex,
} from '../common/stats-layout.js'
import type { Logger } from '../common/log.js'
import type { NativeRing } from '../native/addon.js'
import { kIoPending, type IoRequest, type QueueHandler } from '../targets/target.js'
import { ErrorBurst } from './error-burst.js'
import { descFlags, descNrSectors, descOp, descStartSector } from './io-desc.js'
import { kUserDataStop, kUserDataTarget, kUserDataUblk } from '../common/user-data.js'

/** The loop wakes at least this often to publish its heartbeat. */
const kHeartbeatIntervalNs = 500_000_000
const kOtherOpIndex = 5 // stats-layout ioOps: read, write, flush, discard, write_zeroes, other

export interface QueueLoopParts {
  queueId: number
  depth: number
  charFd: number
  ring: NativeRing
  descs: Uint32Array
  /** Per-tag views of the I/O buffers, and their user addresses split in 32-bit halves. */
  tagBuffers: Buffer[]
  tagAddressLo: Uint32Array
  tagAddressHi: Uint32Array
  stopEventFd: number
  /** 8 bytes the stop eventfd is read into. */
  stopReadAddressLo: number
  stopReadAddressHi: number
  stats: QueueStatsWriter
  /** false: publish only when the heartbeat is due (measures what per-turn publishing costs). */
  publishEveryTurn: boolean
  log: Logger
}

export type LoopEnd = 'aborted' | 'stopped'

export class QueueLoop {
  private readonly sqes: Uint32Array
  private readonly cqes: Uint32Array
  private readonly cqeResults: Int32Array
  private staged = 0
  private liveTags: number
  private stopRequested = false
  private handler: QueueHandler | null = null
  private readonly request: IoRequest
  private readonly errors: ErrorBurst
  /** performance.now() when each tag's request arrived, for the service-time histogram. */
  private readonly arrivalMs: Float64Array
  requestsServed = 0

  constructor(private readonly parts: QueueLoopParts) {
    this.sqes = new Uint32Array(parts.ring.sqes)
    this.cqes = new Uint32Array(parts.ring.cqes)
    this.cqeResults = new Int32Array(parts.ring.cqes)
    this.liveTags = parts.depth
    this.errors = new ErrorBurst(parts.log)
    this.arrivalMs = new Float64Array(parts.depth)
    this.request = { tag: 0, op: 0, flags: 0, startSector: 0, nrSectors: 0, buffer: parts.tagBuffers[0]! }
  }

  /** Stage a FETCH_REQ for every tag and the stop-eventfd read, and submit them. */
  arm(handler: QueueHandler): void {
    this.handler = handler
    for (let tag = 0; tag < this.parts.depth; tag++) this.stageIoCmd(UBLK_U_IO_FETCH_REQ, tag, 0)
    this.stageStopRead()
    this.parts.ring.enter(this.staged, 0, 0)
    this.staged = 0
  }

  /** Serve requests until every tag is aborted or a stop is requested. */
  run(): LoopEnd {
    const ring = this.parts.ring
    const stats = this.parts.stats
    const values = stats.values
    while (this.liveTags > 0 && !this.stopRequested) {
      const reaped = ring.enter(this.staged, 1, kHeartbeatIntervalNs)
      this.staged = 0
      for (let i = 0; i < reaped; i++) this.dispatch(i)
      values[kStatLoopTurns]! += 1
      values[kStatCqes]! += reaped
      if (reaped > 0) values[kStatBatchFirstBucket + batchBucket(reaped)]! += 1
      const now = Date.now()
      if (this.parts.publishEveryTurn || now - values[kStatHeartbeatMs]! >= kHeartbeatIntervalNs / 1e6) {
        values[kStatHeartbeatMs] = now
        stats.publish()
      }
      this.errors.tick()
    }
    return this.stopRequested ? 'stopped' : 'aborted'
  }

  /** A pending request finished (targets with their own async I/O). */
  complete(tag: number, result: number): void {
    this.commit(tag, result)
  }

  /** The staging SQEs, for targets that stage their own. */
  get stagingSqes(): Uint32Array {
    return this.sqes
  }

  /** Next free SQE slot of this turn, for a target's own SQE. */
  reserveSqe(): number {
    return this.staged++
  }

  private dispatch(index: number): void {
    const base = index * kCqeWords
    const lo = this.cqes[base]!
    const kind = this.cqes[base + 1]!
    const res = this.cqeResults[base + 2]!
    if (kind === kUserDataUblk) {
      if (res === UBLK_IO_RES_OK) this.serve(lo)
      else this.retireTag(lo, res)
    } else if (kind === kUserDataTarget) {
      this.handler!.onCompletion!(lo, res)
    } else if (kind === kUserDataStop) {
      this.stopRequested = true
    } else {
      throw new Error(`queue ${this.parts.queueId}: CQE of unknown kind ${kind}`)
    }
  }

  private serve(tag: number): void {
    const descs = this.parts.descs
    const request = this.request
    request.tag = tag
    request.op = descOp(descs, tag)
    request.flags = descFlags(descs, tag)
    request.startSector = descStartSector(descs, tag)
    request.nrSectors = descNrSectors(descs, tag)
    request.buffer = this.parts.tagBuffers[tag]!
    const values = this.parts.stats.values
    values[kStatInflight]! += 1
    this.arrivalMs[tag] = performance.now()
    const op = request.op <= 4 ? request.op : kOtherOpIndex
    values[opStatIndex(op, 0)]! += 1
    if (request.op === UBLK_IO_OP_READ || request.op === UBLK_IO_OP_WRITE) {
      values[opStatIndex(op, 1)]! += request.nrSectors * 512
    }
    const result = this.handler!.handleIo(request)
    if (result !== kIoPending) this.commit(tag, result)
  }

  private commit(tag: number, result: number): void {
    const values = this.parts.stats.values
    values[kStatInflight]! -= 1
    const serviceNs = (performance.now() - this.arrivalMs[tag]!) * 1e6
    values[kStatLatencyFirstBucket + latencyBucket(serviceNs)]! += 1
    values[kStatLatencySumNs]! += serviceNs
    if (result < 0) {
      const op = descOp(this.parts.descs, tag)
      const opIndex = op <= 4 ? op : kOtherOpIndex
      values[opStatIndex(opIndex, 2)]! += 1
      this.errors.note(opIndex, result)
    }
    this.requestsServed++
    this.stageIoCmd(UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result)
  }

  /** The kernel ended this tag's command: ABORT when the device stops, any other error is a bug
   *  of ours (bad command) and also ends the tag, so the queue can still drain and exit. */
  private retireTag(tag: number, res: number): void {
    if (res !== UBLK_IO_RES_ABORT) {
      throw new Error(`queue ${this.parts.queueId} tag ${tag}: ublk command failed with ${res}`)
    }
    this.liveTags--
  }

  private stageIoCmd(cmdOp: number, tag: number, result: number): void {
    const p = this.parts
    const base = encodeUringCmd(this.sqes, this.staged++, p.charFd, cmdOp, tag, kUserDataUblk)
    // struct ublksrv_io_cmd: q_id u16 | tag u16, result s32, addr u64
    this.sqes[base + kSqeCmdWord] = p.queueId | (tag << 16)
    this.sqes[base + kSqeCmdWord + 1] = result
    this.sqes[base + kSqeCmdWord + 2] = p.tagAddressLo[tag]!
    this.sqes[base + kSqeCmdWord + 3] = p.tagAddressHi[tag]!
  }

  private stageStopRead(): void {
    const p = this.parts
    encodeReadWrite(this.sqes, this.staged++, IORING_OP_READ, p.stopEventFd, p.stopReadAddressLo,
      p.stopReadAddressHi, 8, 0, 0, kUserDataStop)
  }
}
