// memory: a RAM disk. The data lives in SharedArrayBuffers allocated by the main thread and
// shared by every queue worker. Pages are only backed once written (the kernel maps anonymous
// memory lazily), so the disk is sparse and never-written ranges read as zeros. DISCARD and
// WRITE_ZEROES zero the range; FLUSH has nothing to do.
import {
  UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../abi/ublk-cmd.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { requestBytes, type IoRequest, type QueueHandler, type Target, type TargetSetup } from './target.js'

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

export class MemoryQueue implements QueueHandler {
  private readonly chunks: Buffer[]

  constructor(private readonly spec: MemorySpec) {
    this.chunks = spec.chunks.map((chunk) => Buffer.from(chunk))
  }

  handleIo(request: IoRequest): number {
    const bytes = requestBytes(request)
    const offset = request.startSector * 512
    switch (request.op) {
      case UBLK_IO_OP_READ:
        this.copy(offset, bytes, request.buffer, false)
        return bytes
      case UBLK_IO_OP_WRITE:
        this.copy(offset, bytes, request.buffer, true)
        return bytes
      case UBLK_IO_OP_FLUSH:
        return 0
      case UBLK_IO_OP_DISCARD:
      case UBLK_IO_OP_WRITE_ZEROES:
        this.zero(offset, bytes)
        return 0
      default:
        return kEinval
    }
  }

  /** Copy between the tag buffer and the disk, across chunk boundaries; Buffer.copy takes
   *  ranges, so no view is allocated per request. */
  private copy(offset: number, bytes: number, buffer: Buffer, toDisk: boolean): void {
    const chunkBytes = this.spec.chunkBytes
    let done = 0
    while (done < bytes) {
      const at = offset + done
      const chunk = this.chunks[Math.floor(at / chunkBytes)]!
      const within = at % chunkBytes
      const length = Math.min(bytes - done, chunkBytes - within)
      if (toDisk) buffer.copy(chunk, within, done, done + length)
      else chunk.copy(buffer, done, within, within + length)
      done += length
    }
  }

  private zero(offset: number, bytes: number): void {
    const chunkBytes = this.spec.chunkBytes
    let done = 0
    while (done < bytes) {
      const at = offset + done
      const within = at % chunkBytes
      const length = Math.min(bytes - done, chunkBytes - within)
      this.chunks[Math.floor(at / chunkBytes)]!.fill(0, within, within + length)
      done += length
    }
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
  openQueue(spec) {
    return new MemoryQueue(spec)
  },
}
