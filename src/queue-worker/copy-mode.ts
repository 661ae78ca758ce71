// The copy I/O mode: the kernel copies each request's data into (WRITE) or out of (READ) a
// buffer of ours per tag, max_io_buf_bytes each, whose address every FETCH/COMMIT carries. The
// buffers are one mapping of depth x maxIoBufBytes; only pages requests touch become resident.
import type { QueueTaskInput } from '../common/messages.js'
import { native } from '../native/addon.js'
import type { RequestData } from '../targets/target.js'
import type { QueueData } from './io-mode.js'

/** The queue's I/O buffers: depth x maxIoBufBytes, one mapping. */
function allocIoBuffers(input: QueueTaskInput): ArrayBuffer {
  const bytes = input.depth * input.maxIoBufBytes
  try {
    return native.allocBuffer(bytes, input.hugePageBuffers, input.mlockBuffers)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (input.mlockBuffers && (code === 'ENOMEM' || code === 'EPERM' || code === 'EAGAIN')) {
      // The pool reports it as the queue's failure to start (UBLKD_ERR_QUEUE), message and all.
      throw new Error(`--mlock-buffers: cannot lock ${bytes} bytes of I/O buffers for queue ${input.queueId} ` +
        `(${code}): the daemon needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK (ulimit -l; systemd LimitMEMLOCK=)`, { cause: error })
    }
    throw error
  }
}

export class CopyModeData implements QueueData {
  readonly data: RequestData
  readonly tagBuffers: Buffer[] = []
  readonly commandAddressLo: Uint32Array
  readonly commandAddressHi: Uint32Array
  readonly sqeAddress: Uint32Array
  readonly mappedBytes: number
  private readonly ioBuffer: ArrayBuffer

  constructor(input: QueueTaskInput) {
    this.ioBuffer = allocIoBuffers(input)
    this.mappedBytes = this.ioBuffer.byteLength
    const baseAddress = native.bufferAddress(this.ioBuffer, 0)
    const tagOffset = new Float64Array(input.depth)
    this.commandAddressLo = new Uint32Array(input.depth)
    this.commandAddressHi = new Uint32Array(input.depth)
    this.sqeAddress = new Uint32Array(input.depth)
    for (let tag = 0; tag < input.depth; tag++) {
      tagOffset[tag] = tag * input.maxIoBufBytes
      this.tagBuffers.push(Buffer.from(this.ioBuffer, tag * input.maxIoBufBytes, input.maxIoBufBytes))
      const address = baseAddress + BigInt(tag * input.maxIoBufBytes)
      this.commandAddressLo[tag] = Number(address & 0xffffffffn)
      this.commandAddressHi[tag] = Number(address >> 32n)
    }
    this.data = { endpoint: new Uint8Array(this.ioBuffer), tagOffset }
  }

  release(abandon: boolean): void {
    if (abandon) native.abandonMapping(this.ioBuffer)
    else native.munmap(this.ioBuffer)
  }
}
