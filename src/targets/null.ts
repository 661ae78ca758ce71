// null: completes every request at once; reads return zeros. The speed baseline.
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE } from '../abi/ublk-cmd.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { requestBytes, type IoRequest, type QueueHandler, type Target } from './target.js'

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

export const nullTarget: Target<NullOptions, null> = {
  name: 'null',
  survivesRestart: true,
  // Reads return zeros from the tag buffers, cleared once; in user copy each READ would have to
  // write its zeros through the char device.
  ioModes: ['copy'],
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
    return new NullQueue(queue.depth)
  },
}
