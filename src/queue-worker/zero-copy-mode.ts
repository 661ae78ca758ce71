// The zero-copy I/O mode (UBLK_F_AUTO_BUF_REG): before delivering a request, the kernel registers
// its pages in slot `tag` of the queue ring's fixed-buffer table (a sparse table of depth slots
// the queue registers when it starts), and unregisters them when the request is committed. The
// target's own SQEs name the slot (READ_FIXED/WRITE_FIXED with buf_index = tag, addr = the byte
// offset in the request); the data never enters the daemon's memory. Each FETCH/COMMIT carries
// the slot in the SQE's own addr (struct ublk_auto_buf_reg), not in ublksrv_io_cmd.addr.
import { ublkAutoBufRegToSqeAddr } from '../abi/structs.js'
import type { QueueTaskInput } from '../common/messages.js'
import type { RequestData } from '../targets/target.js'
import type { QueueData } from './io-mode.js'

/** Every tag's IoRequest.buffer and data endpoint: there is none. */
const kNoBuffer = Buffer.alloc(0)

export class ZeroCopyModeData implements QueueData {
  readonly data: RequestData
  readonly tagBuffers: Buffer[]
  readonly commandAddressLo: Uint32Array
  readonly commandAddressHi: Uint32Array
  readonly sqeAddress: Uint32Array
  readonly mappedBytes = 0

  constructor(input: QueueTaskInput) {
    this.tagBuffers = new Array<Buffer>(input.depth).fill(kNoBuffer)
    this.commandAddressLo = new Uint32Array(input.depth)
    this.commandAddressHi = new Uint32Array(input.depth)
    this.sqeAddress = new Uint32Array(input.depth)
    for (let tag = 0; tag < input.depth; tag++) this.sqeAddress[tag] = ublkAutoBufRegToSqeAddr(tag, 0)
    this.data = { endpoint: new Uint8Array(0), tagOffset: new Float64Array(input.depth) }
  }

  release(): void {}
}
