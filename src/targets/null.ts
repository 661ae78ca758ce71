// null: completes every request at once; reads return zeros. The speed baseline.
//
// In zero copy a READ still gets its zeros: the request's pages may be page cache just allocated
// for the reader, and completing without filling them would hand it whatever they held before.
// The queue reads them from /dev/zero into the request's registered buffer (READ_FIXED), in the
// kernel; WRITEs complete at once.
import fs from 'node:fs'

import { IORING_OP_READ_FIXED, encodeFixedReadWrite } from '../abi/io-uring.js'
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE } from '../abi/ublk-cmd.js'
import { kUserDataTarget } from '../common/user-data.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { kIoPending, requestBytes, type IoRequest, type QueueContext, type QueueHandler, type Target } from './target.js'

interface NullOptions {
  sizeBytes: number
  logicalBlockSize: number
}

const kDefaultSizeBytes = 250 * 2 ** 30 // ublksrv's null default

class NullQueue implements QueueHandler {
  // A tag's buffer still holds the data of its last WRITE; zero it only before a READ that would
  // return it, so reads are zeros without a memset on every request.
  private readonly dirtyBytes: Uint32Array

  constructor(depth: number) {
    this.dirtyBytes = new Uint32Array(depth)
  }

  handleIo(request: IoRequest): number {
    const bytes = requestBytes(request)
    if (request.op === UBLK_IO_OP_READ) {
      const dirty = this.dirtyBytes[request.tag]!
      if (dirty > 0) {
        request.buffer.fill(0, 0, dirty)
        this.dirtyBytes[request.tag] = 0
      }
      return bytes
    }
    if (request.op === UBLK_IO_OP_WRITE) {
      this.dirtyBytes[request.tag] = Math.max(this.dirtyBytes[request.tag]!, bytes)
      return bytes
    }
    return 0
  }

  close(): void {}
}

const kEio = -5

/** Zero copy: zeros for a READ come from /dev/zero, straight into the request's pages. */
class ZeroCopyNullQueue implements QueueHandler {
  private readonly zeroFd = fs.openSync('/dev/zero', 'r')
  /** Per tag: bytes of the READ, and how many are filled. */
  private readonly total: Uint32Array
  private readonly done: Uint32Array

  constructor(private readonly queue: QueueContext) {
    this.total = new Uint32Array(queue.depth)
    this.done = new Uint32Array(queue.depth)
  }

  handleIo(request: IoRequest): number {
    const bytes = requestBytes(request)
    if (request.op !== UBLK_IO_OP_READ) return request.op === UBLK_IO_OP_WRITE ? bytes : 0
    this.total[request.tag] = bytes
    this.done[request.tag] = 0
    this.stageZeros(request.tag)
    return kIoPending
  }

  onCompletion(tag: number, res: number): void {
    if (res <= 0) {
      this.queue.complete(tag, res < 0 ? res : kEio)
      return
    }
    const done = this.done[tag]! + res
    this.done[tag] = done
    if (done < this.total[tag]!) this.stageZeros(tag)
    else this.queue.complete(tag, done)
  }

  private stageZeros(tag: number): void {
    const done = this.done[tag]!
    encodeFixedReadWrite(this.queue.sqes, this.queue.reserveSqe(), IORING_OP_READ_FIXED, this.zeroFd, done,
      this.total[tag]! - done, 0, tag, tag, kUserDataTarget)
  }

  close(): void {
    fs.closeSync(this.zeroFd)
  }
}

export const nullTarget: Target<NullOptions, null> = {
  name: 'null',
  survivesRestart: true,
  // Reads return zeros from the tag buffers, cleared once; in user copy each READ would have to
  // write its zeros through the char device. Zero copy is not auto's choice yet (opt in).
  ioModes: ['copy', 'zero-copy'],
  summary: 'discards writes, reads return zeros (a baseline for the I/O path)',
  optionHelp: ['--size SIZE      device size (default 250G)'],
  flags: [{ name: 'size', field: 'size', type: 'string', short: 's' }],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['size'], 'null')
    const logicalBlockSize = requestedBlockSize ?? kDefaultLogicalBlockSize
    return { sizeBytes: sizeOption(raw, logicalBlockSize, kDefaultSizeBytes), logicalBlockSize }
  },
  setup(options) {
    const { logicalBlockSize } = options
    return {
      geometry: {
        sizeBytes: options.sizeBytes,
        logicalBlockSize,
        physicalBlockSize: logicalBlockSize,
        readOnly: false,
        volatileCache: false,
        fua: false,
      },
      spec: null,
      describe: {},
    }
  },
  // Nothing is stored: any size will do.
  resize() {},
  undo() {},
  openQueue(_spec, queue) {
    return queue.ioMode === 'zero-copy' ? new ZeroCopyNullQueue(queue) : new NullQueue(queue.depth)
  },
}
