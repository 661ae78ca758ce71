// memory: a RAM disk. The data lives in SharedArrayBuffers allocated by the main thread and
// shared by every queue worker. Pages are only backed once written (the kernel maps anonymous
// memory lazily), so the disk is sparse and never-written ranges read as zeros. DISCARD and
// WRITE_ZEROES zero the range; FLUSH has nothing to do.
import {
  UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../abi/ublk-cmd.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { native, type NativeCopier } from '../native/addon.js'
import {
  requestBytes, type IoRequest, type QueueContext, type QueueHandler, type Target, type TargetSetup,
} from './target.js'

interface MemoryOptions {
  sizeBytes: number
  logicalBlockSize: number
}

export interface MemorySpec {
  chunks: SharedArrayBuffer[]
  chunkBytes: number
}

// One SharedArrayBuffer may hold at most 4 GiB on Node 20; 1 GiB chunks keep the tail small.
const kChunkBytes = 2 ** 30
const kEinval = -22
// Copier op: [dst, dst offset lo, hi, src (-1: zeros), src offset lo, hi, bytes].
const kOpWords = 7
const kZeros = -1
// The Copier's buffer 0 is the queue's I/O buffer, 1.. the store's chunks.
const kIoBufferIndex = 0

/**
 * Moves data between the tag buffers and the store with the addon's Copier: each request stages
 * its copies, and endTurn() performs the turn's batch in one call, before the turn's commits go
 * to the kernel. No view is allocated per request (Buffer.copy makes one per call).
 */
export class MemoryQueue implements QueueHandler {
  private readonly copier: NativeCopier
  private readonly ops: Int32Array
  private staged = 0

  constructor(private readonly spec: MemorySpec, private readonly queue: QueueContext) {
    this.copier = new native.Copier([queue.ioBuffer, ...spec.chunks.map((chunk) => new Uint8Array(chunk))])
    // A READ or WRITE touches at most two chunks; zeroing stages as many ops as it needs,
    // performing the batch whenever it is full.
    this.ops = new Int32Array(2 * queue.depth * kOpWords)
  }

  handleIo(request: IoRequest): number {
    const bytes = requestBytes(request)
    const offset = request.startSector * 512
    const tagOffset = request.tag * this.queue.maxIoBufBytes
    switch (request.op) {
      case UBLK_IO_OP_READ:
        this.stageSpans(offset, bytes, tagOffset, false)
        return bytes
      case UBLK_IO_OP_WRITE:
        this.stageSpans(offset, bytes, tagOffset, true)
        return bytes
      case UBLK_IO_OP_FLUSH:
        return 0
      case UBLK_IO_OP_DISCARD:
      case UBLK_IO_OP_WRITE_ZEROES:
        this.stageSpans(offset, bytes, kZeros, true)
        return 0
      default:
        return kEinval
    }
  }

  /** Perform the copies this turn staged: the turn's commits are submitted right after. */
  endTurn(): void {
    this.performStaged()
  }

  private performStaged(): void {
    if (this.staged === 0) return
    this.copier.run(this.ops, this.staged)
    this.staged = 0
  }

  /**
   * Stage the copies between the store's range [offset, offset + bytes) and the I/O buffer from
   * `ioOffset` (into the store when `toStore`; kZeros: zeros into the store), one per chunk the
   * range crosses.
   */
  private stageSpans(offset: number, bytes: number, ioOffset: number, toStore: boolean): void {
    const chunkBytes = this.spec.chunkBytes
    let done = 0
    while (done < bytes) {
      const at = offset + done
      const chunk = 1 + Math.floor(at / chunkBytes)
      const within = at % chunkBytes
      const length = Math.min(bytes - done, chunkBytes - within)
      if (!toStore) this.stageOp(kIoBufferIndex, ioOffset + done, chunk, within, length)
      else if (ioOffset === kZeros) this.stageOp(chunk, within, kZeros, 0, length)
      else this.stageOp(chunk, within, kIoBufferIndex, ioOffset + done, length)
      done += length
    }
  }

  private stageOp(dst: number, dstOffset: number, src: number, srcOffset: number, bytes: number): void {
    if (this.staged * kOpWords === this.ops.length) this.performStaged()
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

/** The RAM disk and its geometry (shared with the fault target, which is a RAM disk too). */
export function memorySetup(sizeBytes: number, logicalBlockSize: number): TargetSetup<MemorySpec> {
  const chunks: SharedArrayBuffer[] = []
  for (let left = sizeBytes; left > 0; left -= kChunkBytes) {
    chunks.push(new SharedArrayBuffer(Math.min(left, kChunkBytes)))
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
    spec: { chunks, chunkBytes: kChunkBytes },
    describe: {},
  }
}

export const memoryTarget: Target<MemoryOptions, MemorySpec> = {
  name: 'memory',
  survivesRestart: false,
  summary: 'a RAM disk of --size bytes (sparse; lost when the device is deleted)',
  optionHelp: ['--size SIZE      device size (required), e.g. 1G'],
  flags: [{ name: 'size', field: 'size', type: 'string', short: 's' }],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['size'], 'memory')
    const logicalBlockSize = requestedBlockSize ?? kDefaultLogicalBlockSize
    return { sizeBytes: sizeOption(raw, logicalBlockSize), logicalBlockSize }
  },
  setup(options) {
    return memorySetup(options.sizeBytes, options.logicalBlockSize)
  },
  undo() {},
  openQueue(spec, queue) {
    return new MemoryQueue(spec, queue)
  },
}
