// memory: a RAM disk. The data lives in SharedArrayBuffers allocated by the main thread and
// shared by every queue worker. READ and WRITE data moves between the store and the request's
// data (the tag buffer in copy mode, the char device in user-copy mode) in one batch per turn.
// Pages are only backed once written (the kernel maps anonymous memory lazily), so the disk is
// sparse and never-written ranges read as zeros. DISCARD and WRITE_ZEROES release the range: its
// whole pages go back to the kernel (they read as zeros again and the disk gets smaller), only
// partial pages at its edges are cleared. FLUSH has nothing to do. A queue moves or releases at
// most kTurnDataBytes of store per loop turn, so that no turn runs for seconds (the stall watch
// would take the queue for stuck): a long discard, or a deep queue full of large requests.
//
// WRITE_ZEROES with NOUNMAP releases too: NOUNMAP asks to keep the range allocated so that later
// writes find their space, but this disk reserves nothing for any range (a never-written one is
// not allocated either), so keeping zero-filled pages would only cost memory, all of it at once.
import { IORING_OP_NOP, encodeSqeHeader } from '../abi/io-uring.js'
import {
  UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../abi/ublk-cmd.js'
import { kUserDataTarget } from '../common/user-data.js'
import { UsageError } from '../common/errors.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { native, type NativeCopier } from '../native/addon.js'
import {
  kIoPending, kTurnDataBytes, requestBytes, type IoRequest, type QueueContext, type QueueHandler, type Target, type TargetSetup,
} from './target.js'

interface MemoryOptions {
  sizeBytes: number
  /** The store is allocated (address space only) this large: `ublkd resize` grows up to it. */
  maxSizeBytes: number
  logicalBlockSize: number
}

export interface MemorySpec {
  chunks: SharedArrayBuffer[]
  chunkBytes: number
  /** What the chunks hold in all: the largest size the device may grow to. */
  storeBytes: number
}

// One SharedArrayBuffer may hold at most 4 GiB on Node 20; 1 GiB chunks keep the tail small.
const kChunkBytes = 2 ** 30
const kEinval = -22
const kEio = -5
// Copier op: [dst, dst offset lo, hi, src (-2: release), src offset lo, hi, bytes].
const kOpWords = 7
const kRelease = -2
/** opTag of an op no request waits on (zeroing: it completes on its own). */
const kNoTag = -1
// The Copier's endpoint 0 is the requests' data (QueueContext.data), 1.. the store's chunks.
const kDataIndex = 0

/** Completes a request the queue left pending: QueueContext.complete, or a wrapper of it. */
export type CompleteRequest = (tag: number, result: number) => void

/**
 * Moves data between the requests' data and the store with the addon's Copier: each READ or
 * WRITE stages its copies and stays pending; endTurn() performs the turn's batch in one call and
 * completes them, before the turn's commits go to the kernel. A copy through the char device
 * that fails (or comes up short) fails its request with its errno (EIO) instead of committing
 * data that is not there. No view is allocated per request (Buffer.copy makes one per call).
 *
 * Requests share a budget of store bytes per turn (kTurnDataBytes: a discard of the whole disk,
 * which the kernel sends up to 4 GiB at once, or 512 reads of 512 KiB take several turns). One that finds the budget
 * spent (or others waiting before it) is deferred to a FIFO of tags; endTurn() goes on with
 * them as the budget allows, in parts, completes those done, and, while some are left, stages a
 * NOP whose completion makes the loop turn again at once.
 */
export class MemoryQueue implements QueueHandler {
  private readonly copier: NativeCopier
  private readonly ops: Int32Array
  /** Each staged op's request (kNoTag: none), and its bytes done or -errno once performed. */
  private readonly opTag: Int32Array
  private readonly opResults: Int32Array
  private staged = 0
  /** READs and WRITEs of this turn, in arrival order, and each tag's result so far. */
  private readonly turnTags: Int32Array
  private turnCount = 0
  private readonly tagResult: Int32Array
  /** Store bytes this turn may still stage. */
  private budget: number
  /** Deferred requests: tags in arrival order (a ring of depth slots), each one's op, the store
   *  range it started at, and what is left of it [next, end). */
  private readonly deferredTags: Int32Array
  private deferredHead = 0
  private deferredCount = 0
  private readonly deferredOp: Uint8Array
  private readonly deferredStart: Float64Array
  private readonly deferredNext: Float64Array
  private readonly deferredEnd: Float64Array
  /** A NOP is in flight to bring the next turn. */
  private wakePending = false

  constructor(private readonly spec: MemorySpec, private readonly queue: QueueContext,
    private readonly complete: CompleteRequest = (tag, result) => queue.complete(tag, result),
    private readonly bytesPerTurn = kTurnDataBytes) {
    this.budget = bytesPerTurn
    this.copier = new native.Copier([queue.data.endpoint, ...spec.chunks.map((chunk) => new Uint8Array(chunk))])
    // A request's part touches at most two chunks (a part is at most kTurnDataBytes); a batch
    // that is full is performed at once.
    this.ops = new Int32Array(2 * queue.depth * kOpWords)
    this.opTag = new Int32Array(2 * queue.depth)
    this.opResults = new Int32Array(2 * queue.depth)
    this.turnTags = new Int32Array(queue.depth)
    this.tagResult = new Int32Array(queue.depth)
    this.deferredTags = new Int32Array(queue.depth)
    this.deferredOp = new Uint8Array(queue.depth)
    this.deferredStart = new Float64Array(queue.depth)
    this.deferredNext = new Float64Array(queue.depth)
    this.deferredEnd = new Float64Array(queue.depth)
  }

  handleIo(request: IoRequest): number {
    const bytes = requestBytes(request)
    const offset = request.startSector * 512
    const tag = request.tag
    const now = this.deferredCount === 0 && bytes <= this.budget
    switch (request.op) {
      case UBLK_IO_OP_READ:
      case UBLK_IO_OP_WRITE:
        this.tagResult[tag] = bytes
        if (!now) return this.defer(tag, request.op, offset, bytes)
        this.budget -= bytes
        this.turnTags[this.turnCount++] = tag
        this.stageSpans(offset, bytes, this.queue.data.tagOffset[tag]!, request.op === UBLK_IO_OP_WRITE, tag)
        return kIoPending
      case UBLK_IO_OP_FLUSH:
        return 0
      case UBLK_IO_OP_DISCARD:
      case UBLK_IO_OP_WRITE_ZEROES:
        if (!now) return this.defer(tag, request.op, offset, bytes)
        this.budget -= bytes
        this.stageSpans(offset, bytes, kRelease, true, kNoTag)
        return 0
      default:
        return kEinval
    }
  }

  private defer(tag: number, op: number, offset: number, bytes: number): number {
    this.deferredOp[tag] = op
    this.deferredStart[tag] = offset
    this.deferredNext[tag] = offset
    this.deferredEnd[tag] = offset + bytes
    this.deferredTags[(this.deferredHead + this.deferredCount++) % this.deferredTags.length] = tag
    return kIoPending
  }

  /** The NOP staged by endTurn() came back: this turn goes on with the deferred requests. */
  onCompletion(_cookie: number, _res: number): void {
    this.wakePending = false
  }

  /**
   * Stage what the budget allows of the deferred requests, perform the turn's copies, complete
   * the turn's READs and WRITEs (their commits are submitted right after) and the deferred
   * requests that are done, and renew the budget.
   */
  endTurn(): void {
    const done = this.deferredCount > 0 ? this.stageDeferred() : 0
    this.performStaged()
    for (let i = 0; i < this.turnCount; i++) {
      const tag = this.turnTags[i]!
      this.complete(tag, this.tagResult[tag]!)
    }
    this.turnCount = 0
    for (let i = 0; i < done; i++) {
      const tag = this.deferredTags[this.deferredHead]!
      this.complete(tag, this.movesData(tag) ? this.tagResult[tag]! : 0)
      this.deferredHead = (this.deferredHead + 1) % this.deferredTags.length
      this.deferredCount--
    }
    this.budget = this.bytesPerTurn
    if (this.deferredCount > 0 && !this.wakePending) {
      // Any deferred tag may carry the NOP: it has no other SQE in flight.
      const cookie = this.deferredTags[this.deferredHead]!
      encodeSqeHeader(this.queue.sqes, this.queue.reserveSqe(), IORING_OP_NOP, -1, cookie, kUserDataTarget)
      this.wakePending = true
    }
  }

  private movesData(tag: number): boolean {
    const op = this.deferredOp[tag]!
    return op === UBLK_IO_OP_READ || op === UBLK_IO_OP_WRITE
  }

  /** Stage deferred requests, oldest first, within the budget; returns how many it finishes. */
  private stageDeferred(): number {
    let done = 0
    while (done < this.deferredCount && this.budget > 0) {
      const tag = this.deferredTags[(this.deferredHead + done) % this.deferredTags.length]!
      const next = this.deferredNext[tag]!
      const bytes = Math.min(this.deferredEnd[tag]! - next, this.budget)
      if (this.movesData(tag)) {
        const dataOffset = this.queue.data.tagOffset[tag]! + next - this.deferredStart[tag]!
        this.stageSpans(next, bytes, dataOffset, this.deferredOp[tag] === UBLK_IO_OP_WRITE, tag)
      } else {
        this.stageSpans(next, bytes, kRelease, true, kNoTag)
      }
      this.budget -= bytes
      this.deferredNext[tag] = next + bytes
      if (next + bytes < this.deferredEnd[tag]!) break
      done++
    }
    return done
  }

  private performStaged(): void {
    if (this.staged === 0) return
    this.copier.run(this.ops, this.staged, this.opResults)
    for (let i = 0; i < this.staged; i++) {
      const tag = this.opTag[i]!
      const result = this.opResults[i]!
      if (tag === kNoTag || result === this.ops[i * kOpWords + 6]) continue
      if (this.tagResult[tag]! >= 0) this.tagResult[tag] = result < 0 ? result : kEio
    }
    this.staged = 0
  }

  /**
   * Stage the copies between the store's range [offset, offset + bytes) and the requests' data
   * from `dataOffset` (into the store when `toStore`; kRelease: release the store's range), one
   * per chunk the range crosses, for request `tag` (or kNoTag).
   */
  private stageSpans(offset: number, bytes: number, dataOffset: number, toStore: boolean, tag: number): void {
    const chunkBytes = this.spec.chunkBytes
    let done = 0
    while (done < bytes) {
      const at = offset + done
      const chunk = 1 + Math.floor(at / chunkBytes)
      const within = at % chunkBytes
      const length = Math.min(bytes - done, chunkBytes - within)
      if (!toStore) this.stageOp(kDataIndex, dataOffset + done, chunk, within, length, tag)
      else if (dataOffset === kRelease) this.stageOp(chunk, within, kRelease, 0, length, tag)
      else this.stageOp(chunk, within, kDataIndex, dataOffset + done, length, tag)
      done += length
    }
  }

  private stageOp(dst: number, dstOffset: number, src: number, srcOffset: number, bytes: number, tag: number): void {
    if (this.staged * kOpWords === this.ops.length) this.performStaged()
    this.opTag[this.staged] = tag
    const base = this.staged++ * kOpWords
    const ops = this.ops
    ops[base] = dst
    ops[base + 1] = dstOffset % 0x1_0000_0000
    ops[base + 2] = Math.floor(dstOffset / 0x1_0000_0000)
    ops[base + 3] = src
    ops[base + 4] = srcOffset % 0x1_0000_0000
    ops[base + 5] = Math.floor(srcOffset / 0x1_0000_0000)
    ops[base + 6] = bytes
  }

  close(): void {}
}

/** The RAM disk and its geometry (shared with the fault target, which is a RAM disk too), its
 *  store allocated for `storeBytes` (at least the size). Only pages written are resident. */
export function memorySetup(sizeBytes: number, logicalBlockSize: number, storeBytes = sizeBytes): TargetSetup<MemorySpec> {
  const chunks: SharedArrayBuffer[] = []
  for (let left = storeBytes; left > 0; left -= kChunkBytes) {
    const chunk = new SharedArrayBuffer(Math.min(left, kChunkBytes))
    // 4 KiB pages: sparse at the grain of a page, and every released page given back.
    native.noHugePages(new Uint8Array(chunk))
    chunks.push(chunk)
  }
  return {
    geometry: {
      sizeBytes,
      logicalBlockSize,
      physicalBlockSize: logicalBlockSize,
      readOnly: false,
      volatileCache: false,
      fua: false,
      discard: {
        granularityBytes: logicalBlockSize,
        maxDiscardSectors: 0xffffffff >>> 1,
        maxWriteZeroesSectors: 0xffffffff >>> 1,
      },
    },
    spec: { chunks, chunkBytes: kChunkBytes, storeBytes },
    describe: storeBytes === sizeBytes ? {} : { maxSize: storeBytes },
  }
}

/** Give the store's range [from, to) back to the kernel: it reads as zeros again. */
function releaseStore(spec: MemorySpec, from: number, to: number): void {
  const copier = new native.Copier(spec.chunks.map((chunk) => new Uint8Array(chunk)))
  const ops: number[] = []
  for (let at = from; at < to;) {
    const chunk = Math.floor(at / spec.chunkBytes)
    const within = at % spec.chunkBytes
    // Ops carry 32-bit lengths: at most 1 GiB (a chunk) each.
    const length = Math.min(to - at, spec.chunkBytes - within)
    ops.push(chunk, within % 0x1_0000_0000, Math.floor(within / 0x1_0000_0000), kRelease, 0, 0, length)
    at += length
  }
  copier.run(Int32Array.from(ops), ops.length / kOpWords)
}

export const memoryTarget: Target<MemoryOptions, MemorySpec> = {
  name: 'memory',
  survivesRestart: false,
  // User copy moves the data once (the kernel, between the request's pages and the store) where
  // copy moves it twice (into the tag buffer, then to the store), and maps no buffers.
  ioModes: ['user-copy', 'copy'],
  summary: 'a RAM disk of --size bytes (sparse; lost when the device is deleted)',
  optionHelp: [
    '--size SIZE      device size (required), e.g. 1G',
    '--max-size SIZE  the largest size ublkd resize may grow it to (default: --size); only',
    '                 address space is taken for it, memory only for what is written',
  ],
  flags: [{ name: 'size', field: 'size', type: 'string', short: 's' }, { name: 'max-size', field: 'maxSize', type: 'string' }],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['size', 'maxSize'], 'memory')
    const logicalBlockSize = requestedBlockSize ?? kDefaultLogicalBlockSize
    const sizeBytes = sizeOption(raw, logicalBlockSize)
    if (raw['maxSize'] === undefined) return { sizeBytes, maxSizeBytes: sizeBytes, logicalBlockSize }
    const maxSizeBytes = sizeOption({ size: raw['maxSize'] }, logicalBlockSize)
    if (maxSizeBytes < sizeBytes) throw new UsageError(`--max-size ${maxSizeBytes} is smaller than --size ${sizeBytes}`)
    return { sizeBytes, maxSizeBytes, logicalBlockSize }
  },
  setup(options) {
    return memorySetup(options.sizeBytes, options.logicalBlockSize, options.maxSizeBytes)
  },
  // Growing: what lies past the old end was released by a shrink (or never written), so the
  // range reads as zeros. Shrinking: the memory past the new end goes back at once.
  resize(spec, fromBytes, toBytes) {
    if (toBytes > spec.storeBytes) {
      throw new UsageError(`a memory device grows up to the --max-size it was created with (${spec.storeBytes} bytes)`)
    }
    if (toBytes < fromBytes) releaseStore(spec, toBytes, fromBytes)
  },
  undo() {},
  openQueue(spec, queue) {
    return new MemoryQueue(spec, queue)
  },
}
