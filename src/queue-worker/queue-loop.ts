// The data-plane loop of one hardware queue (ring mode).
//
// Each turn: one io_uring_enter submits everything staged in the previous turn and waits for at
// least one CQE (or the heartbeat timeout); then every reaped CQE is dispatched:
//   ublk CQE, res 0      a request arrived for that tag: read its descriptor, let the target
//                        serve it, stage COMMIT_AND_FETCH_REQ with the result (re-arms the tag)
//   ublk CQE, ABORT      the device is going away: the tag is dead, never re-armed
//   target CQE           one of the target's own SQEs (file I/O) finished: the target is told
//   stop CQE             the stop eventfd fired: leave at once (closing the ring cancels the rest)
// The loop ends when every tag is dead or a stop was requested.
//
// The per-request work is integer arithmetic on typed arrays and small integers: nothing is
// allocated, no clock is read (the ring stamps each enter), and the shared counters (doubles)
// are updated once per turn from the integer tallies of the turn.
import { IORING_OP_READ, IOSQE_FIXED_FILE, encodeCancelAny, encodeReadWrite, encodeUringCmd, kCqeWords, kSqeCmdWord } from '../abi/io-uring.js'
import {
  UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_RES_ABORT, UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ, UBLK_U_IO_FETCH_REQ,
} from '../abi/ublk-cmd.js'
import {
  QueueStatsWriter, batchBucket, ioOps, kStatBatchFirstBucket, kStatCqes, kStatHeartbeatMs, kStatInflight,
  kStatLatencyFirstBucket, kStatLatencySumNs, kStatLoopTurns, latencyBucketMicros, opStatIndex,
} from '../common/stats-layout.js'
import type { Logger } from '../common/log.js'
import type { NativeRing } from '../native/addon.js'
import { kIoPending, type IoRequest, type QueueHandler } from '../targets/target.js'
import { messageOf } from '../common/errors.js'
import { noteStartFault, startGateOpen } from '../common/start-gate.js'
import { ErrorBurst } from './error-burst.js'
import { descFlags, descNrSectors, descOp, descStartSector } from './io-desc.js'
import { kUserDataCancel, kUserDataStop, kUserDataTarget, kUserDataUblk } from '../common/user-data.js'

/** The loop wakes at least this often, so its heartbeat shows it alive while idle. */
const kWaitTimeoutNs = 500_000_000
/** Event-loop mode: an idle loop turns this often (heartbeat, last counts published). */
const kEventLoopTickMs = 100
/** heartbeat_ms (a wall-clock read) is refreshed at most this often. */
const kHeartbeatIntervalMicros = 100_000
const kOtherOpIndex = ioOps.indexOf('other')
/** The ring's fixed-file index of the char device: every ublk command names it, so the kernel
 *  looks up no descriptor per command. */
const kCharFileIndex = 0
const kClockSubmitted = 0
const kClockReaped = 1
/** ring.clock[2]: staged SQEs the SQ had no room for, kept staged at the front. */
const kClockKept = 2
/** A draining queue waits this long per enter for its target's last CQEs. */
const kDrainWaitNs = 100_000_000

export interface QueueLoopParts {
  queueId: number
  depth: number
  /** The ublk char device: arm() registers it as the ring's fixed file kCharFileIndex. */
  charFd: number
  ring: NativeRing
  descs: Uint32Array
  /** Per-tag views of the I/O buffers, and their user addresses split in 32-bit halves. */
  tagBuffers: Buffer[]
  tagAddressLo: Uint32Array
  tagAddressHi: Uint32Array
  /** The low half of what each tag's FETCH/COMMIT SQE carries in its own addr (zero copy: the
   *  buffer slot); the high half stays zero. */
  sqeAddress: Uint32Array
  stopEventFd: number
  /** 8 bytes the stop eventfd is read into. */
  stopReadAddressLo: number
  stopReadAddressHi: number
  stats: QueueStatsWriter
  /** A busy loop publishes its counters at most this often, µs; 0: every turn with requests. */
  statsPublishMicros: number
  /** src/common/start-gate.ts */
  startGate: Int32Array
  log: Logger
}

export type LoopEnd = 'aborted' | 'stopped'

export class QueueLoop {
  private readonly sqes: Uint32Array
  private readonly cqes: Uint32Array
  private readonly cqeResults: Int32Array
  private readonly clock: Int32Array
  private staged = 0
  private liveTags: number
  private stopRequested = false
  private handler: QueueHandler | null = null
  private readonly request: IoRequest
  private readonly errors: ErrorBurst

  /** µs stamp (ring clock) of the turn each tag's request arrived in. */
  private readonly arrivalMicros: Int32Array
  /** Arrival stamps of the requests committed this turn: their service time ends when the next
   *  enter hands the commits to the kernel. */
  private readonly committedArrivals: Int32Array
  private committed = 0
  private turnMicros = 0
  /** Dispatching a turn's CQEs: commits made now go out with the turn's. */
  private inTurn = false
  /** Event-loop mode: have staged SQEs submitted once the current callback returns. */
  private submitSoon: (() => void) | null = null
  private heartbeatMicros = 0
  private publishedMicros = 0
  /** Requests or their service times were counted since the last publish. */
  private unpublished = false
  private inflight = 0
  /** This turn's requests and sectors per op (ioOps order), folded into the shared stats. */
  private readonly turnOps: Int32Array
  private readonly turnSectors: Int32Array
  /** The target's SQEs reserved this turn (not yet submitted), and submitted whose CQE is not
   *  yet reaped: the kernel may still write into the I/O buffers while the latter is not 0. */
  private targetStaged = 0
  private targetInFlight = 0
  /** CQEs the last turn reaped, and how many of them were dispatched (all, unless one threw). */
  private reaped = 0
  private dispatched = 0
  requestsServed = 0

  constructor(private readonly parts: QueueLoopParts) {
    this.sqes = new Uint32Array(parts.ring.sqes)
    this.cqes = new Uint32Array(parts.ring.cqes)
    this.cqeResults = new Int32Array(parts.ring.cqes)
    this.clock = new Int32Array(parts.ring.clock)
    this.liveTags = parts.depth
    this.errors = new ErrorBurst(parts.log)
    this.arrivalMicros = new Int32Array(parts.depth)
    this.committedArrivals = new Int32Array(parts.depth)
    this.turnOps = new Int32Array(ioOps.length)
    this.turnSectors = new Int32Array(ioOps.length)
    this.request = { tag: 0, op: 0, flags: 0, startSector: 0, nrSectors: 0, buffer: parts.tagBuffers[0]! }
  }

  /** Register the char device, stage a FETCH_REQ for every tag and the stop-eventfd read, and
   *  submit them. */
  arm(handler: QueueHandler): void {
    this.handler = handler
    this.parts.ring.registerFiles([this.parts.charFd])
    const armed = handler.armedTags ?? this.parts.depth
    this.liveTags = armed
    for (let tag = 0; tag < armed; tag++) this.stageIoCmd(UBLK_U_IO_FETCH_REQ, tag, 0)
    this.stageStopRead()
    this.parts.ring.enter(this.staged, 0, 0)
    this.staged = this.clock[kClockKept]!
  }

  /**
   * Ring mode: serve requests until every tag is aborted or a stop is requested, blocking in
   * io_uring_enter between turns. The thread runs nothing else meanwhile.
   */
  run(): LoopEnd {
    this.startServing()
    const publishWaitNs = Math.max(this.parts.statsPublishMicros, 1) * 1000
    while (this.serving()) {
      // With counts still unpublished (or service times still to count, at the next enter),
      // wait no longer than the publish interval: a queue that goes idle publishes its last
      // requests within that time.
      this.turn(1, this.unpublished || this.committed > 0 ? publishWaitNs : kWaitTimeoutNs)
    }
    return this.end()
  }

  /**
   * Event-loop mode: serve requests from the worker's event loop, woken by an eventfd the ring
   * signals on every completion; between wake-ups the thread runs timers and promises, so a
   * target may complete requests from them (QueueContext.complete at any time).
   */
  runOnEventLoop(): Promise<LoopEnd> {
    this.startServing()
    return new Promise((resolve) => {
      let finished = false
      let submitScheduled = false
      const serve = (): void => {
        if (finished) return
        // Submit what is staged and handle what completed, until a turn brings nothing.
        while (this.serving() && (this.turn(0, 0) > 0 || this.staged > 0)) { /* next turn */ }
        if (this.serving()) return
        finished = true
        clearInterval(ticker)
        resolve(this.end())
      }
      this.submitSoon = () => {
        if (submitScheduled) return
        submitScheduled = true
        setImmediate(() => {
          submitScheduled = false
          serve()
        })
      }
      // An idle queue still turns, to refresh its heartbeat and publish its last counts.
      const ticker = setInterval(serve, kEventLoopTickMs)
      this.parts.ring.watchCompletions(serve)
      serve()
    })
  }

  private startServing(): void {
    this.heartbeatMicros = this.clock[kClockReaped]! - kHeartbeatIntervalMicros
  }

  private serving(): boolean {
    return this.liveTags > 0 && !this.stopRequested
  }

  private end(): LoopEnd {
    return this.stopRequested ? 'stopped' : 'aborted'
  }

  /** One enter (submit the staged SQEs, wait for `minComplete` CQEs), then handle what it reaped. */
  private turn(minComplete: number, timeoutNs: number): number {
    const clock = this.clock
    const values = this.parts.stats.values
    const reaped = this.parts.ring.enter(this.staged, minComplete, timeoutNs)
    this.staged = clock[kClockKept]!
    // Kept SQEs count as in flight: the next enter sends them first.
    this.targetInFlight += this.targetStaged
    this.targetStaged = 0
    this.reaped = reaped
    this.turnMicros = clock[kClockReaped]!
    this.countServiceTimes(clock[kClockSubmitted]!)
    this.inTurn = true
    for (this.dispatched = 0; this.dispatched < reaped;) this.dispatch(this.dispatched++)
    this.handler!.endTurn?.()
    this.inTurn = false
    values[kStatLoopTurns]! += 1
    if (reaped > 0) {
      values[kStatCqes]! += reaped
      values[kStatBatchFirstBucket + batchBucket(reaped)]! += 1
    }
    this.foldTurn(values, reaped)
    this.errors.tick()
    return reaped
  }

  /**
   * A pending request finished (targets with their own async I/O). Within a turn (onCompletion,
   * endTurn) the commit goes with the turn's; outside one (event-loop mode only: a timer, a
   * promise) it is submitted as soon as the current callback returns.
   */
  complete(tag: number, result: number): void {
    this.commit(tag, result)
    if (this.inTurn) return
    if (!this.submitSoon) throw new Error(`queue ${this.parts.queueId}: a request completed outside a loop turn in ring mode`)
    this.submitSoon()
  }

  /** SQEs a target reserved outside a turn (event-loop mode): submit them once the current
   *  callback returns. Within a turn they go with the turn's. */
  submitStaged(): void {
    if (this.inTurn) return
    if (!this.submitSoon) throw new Error(`queue ${this.parts.queueId}: SQEs staged outside a loop turn in ring mode`)
    this.submitSoon()
  }

  /** The staging SQEs, for targets that stage their own. */
  get stagingSqes(): Uint32Array {
    return this.sqes
  }

  /** Next free SQE slot of this turn, for a target's own SQE. */
  reserveSqe(): number {
    this.targetStaged++
    return this.staged++
  }

  /** After the loop ended (or threw): how many of the target's SQEs are still in flight. */
  targetIoInFlight(): number {
    // A turn that threw left CQEs undispatched: the target's among them are done.
    for (let i = this.dispatched; i < this.reaped; i++) {
      if (this.cqes[i * kCqeWords + 1] === kUserDataTarget) this.targetInFlight--
    }
    this.reaped = this.dispatched = 0
    return this.targetInFlight
  }

  /**
   * After the loop ended (or threw): wait until no SQE of the target is in flight, for up to
   * `timeoutMs`, cancelling what can be cancelled. Until then the kernel may still read into the
   * I/O buffers, which must not be unmapped (and so reused) before. What is staged goes too
   * (commits the kernel may refuse; target SQEs the cancel then meets), before the cancel.
   * Returns false if some SQE was still in flight at the deadline.
   */
  drainTargetIo(timeoutMs: number): boolean {
    if (this.targetIoInFlight() + this.targetStaged === 0) return true
    this.targetInFlight += this.targetStaged
    this.targetStaged = 0
    encodeCancelAny(this.sqes, this.staged++, 0, kUserDataCancel)
    const deadline = Date.now() + timeoutMs
    while (this.targetInFlight > 0 && Date.now() < deadline) {
      const reaped = this.parts.ring.enter(this.staged, 1, kDrainWaitNs)
      this.staged = this.clock[kClockKept]!
      for (let i = 0; i < reaped; i++) {
        if (this.cqes[i * kCqeWords + 1] === kUserDataTarget) this.targetInFlight--
      }
    }
    return this.targetInFlight === 0
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
      this.targetInFlight--
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
    const op = descOp(descs, tag)
    const nrSectors = descNrSectors(descs, tag)
    request.tag = tag
    request.op = op
    request.flags = descFlags(descs, tag)
    request.startSector = descStartSector(descs, tag)
    request.nrSectors = nrSectors
    request.buffer = this.parts.tagBuffers[tag]!
    this.inflight++
    this.arrivalMicros[tag] = this.turnMicros
    const opIndex = op <= kOtherOpIndex ? op : kOtherOpIndex
    this.turnOps[opIndex]!++
    if (op === UBLK_IO_OP_READ || op === UBLK_IO_OP_WRITE) this.turnSectors[opIndex]! += nrSectors
    let result: number
    try {
      result = this.handler!.handleIo(request)
    } catch (error) {
      result = this.failBeforeStart(error)
    }
    if (result !== kIoPending) this.commit(tag, result)
  }

  /** A target that throws ends its queue, except while the device starts (start-gate.ts): the
   *  request then fails with EIO and the daemon fails the add. */
  private failBeforeStart(error: unknown): number {
    if (startGateOpen(this.parts.startGate)) throw error
    noteStartFault(this.parts.startGate)
    this.parts.log.error({ err: messageOf(error) }, 'the target threw while the device was starting: request failed (EIO)')
    return -5
  }

  private commit(tag: number, result: number): void {
    this.inflight--
    this.committedArrivals[this.committed++] = this.arrivalMicros[tag]!
    if (result < 0) this.countError(tag, result)
    this.requestsServed++
    this.stageIoCmd(UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result)
  }

  private countError(tag: number, result: number): void {
    const op = descOp(this.parts.descs, tag)
    const opIndex = op <= kOtherOpIndex ? op : kOtherOpIndex
    this.parts.stats.values[opStatIndex(opIndex, 2)]! += 1
    this.errors.note(opIndex, result)
  }

  /**
   * The commits staged last turn reached the kernel at `submittedMicros`: each request's service
   * time ran from the turn it arrived in to then. Requests of one batch share their arrival, so
   * the histogram is touched once per run of equal arrivals.
   */
  private countServiceTimes(submittedMicros: number): void {
    const count = this.committed
    if (count === 0) return
    const values = this.parts.stats.values
    const arrivals = this.committedArrivals
    let sumMicros = 0
    let runArrival = arrivals[0]!
    let runLength = 0
    for (let i = 0; i < count; i++) {
      const arrival = arrivals[i]!
      if (arrival !== runArrival) {
        sumMicros += this.countRun(values, submittedMicros, runArrival, runLength)
        runArrival = arrival
        runLength = 0
      }
      runLength++
    }
    sumMicros += this.countRun(values, submittedMicros, runArrival, runLength)
    values[kStatLatencySumNs]! += sumMicros * 1000
    this.committed = 0
    this.unpublished = true
  }

  private countRun(values: Float64Array, submittedMicros: number, arrival: number, length: number): number {
    const micros = (submittedMicros - arrival) | 0
    values[kStatLatencyFirstBucket + latencyBucketMicros(micros)]! += length
    return micros * length
  }

  /**
   * Add this turn's integer tallies to the counters; publish them when the heartbeat is due, the
   * publish interval has passed, or the loop woke without work (it went idle).
   */
  private foldTurn(values: Float64Array, reaped: number): void {
    const ops = this.turnOps
    const sectors = this.turnSectors
    for (let op = 0; op < ops.length; op++) {
      const count = ops[op]!
      if (count === 0) continue
      values[opStatIndex(op, 0)]! += count
      values[opStatIndex(op, 1)]! += sectors[op]! * 512
      ops[op] = 0
      sectors[op] = 0
    }
    values[kStatInflight] = this.inflight
    const heartbeatDue = ((this.turnMicros - this.heartbeatMicros) | 0) >= kHeartbeatIntervalMicros
    if (heartbeatDue) {
      this.heartbeatMicros = this.turnMicros
      values[kStatHeartbeatMs] = Date.now()
    }
    if (reaped > 0) this.unpublished = true
    const intervalDue = ((this.turnMicros - this.publishedMicros) | 0) >= this.parts.statsPublishMicros
    if (heartbeatDue || (this.unpublished && (intervalDue || reaped === 0))) {
      this.parts.stats.publish()
      this.publishedMicros = this.turnMicros
      this.unpublished = false
    }
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
    const base = encodeUringCmd(this.sqes, this.staged++, kCharFileIndex, cmdOp, tag, kUserDataUblk, IOSQE_FIXED_FILE)
    this.sqes[base + 4] = p.sqeAddress[tag]!
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
