// The user-copy I/O mode (UBLK_F_USER_COPY): no buffer of ours per tag. FETCH/COMMIT carry no
// address; a target that moves data preads (WRITE) or pwrites (READ) the char device at the
// offset that names the request (UBLKSRV_IO_BUF_OFFSET + queue and tag bits + byte offset), and
// the kernel copies straight between the request's pages and the target's memory. A queue's
// memory no longer grows with its depth.
import { UBLKSRV_IO_BUF_OFFSET, UBLK_QID_OFF, UBLK_TAG_OFF } from '../abi/ublk-cmd.js'
import type { QueueTaskInput } from '../common/messages.js'
import type { RequestData } from '../targets/target.js'
import type { QueueData } from './io-mode.js'

/** Every tag's IoRequest.buffer: there is none. */
const kNoBuffer = Buffer.alloc(0)

export class UserCopyModeData implements QueueData {
  readonly data: RequestData
  readonly tagBuffers: Buffer[]
  readonly commandAddressLo: Uint32Array
  readonly commandAddressHi: Uint32Array
  readonly sqeAddress: Uint32Array
  readonly mappedBytes = 0

  constructor(input: QueueTaskInput) {
    const tagOffset = new Float64Array(input.depth)
    // Up to 12 queue bits above 41: the offsets stay below 2^53, exact as doubles.
    const queueBase = UBLKSRV_IO_BUF_OFFSET + input.queueId * 2 ** UBLK_QID_OFF
    for (let tag = 0; tag < input.depth; tag++) tagOffset[tag] = queueBase + tag * 2 ** UBLK_TAG_OFF
    this.tagBuffers = new Array<Buffer>(input.depth).fill(kNoBuffer)
    this.commandAddressLo = new Uint32Array(input.depth)
    this.commandAddressHi = new Uint32Array(input.depth)
    this.sqeAddress = new Uint32Array(input.depth)
    this.data = { endpoint: input.charFd, tagOffset }
  }

  release(): void {}
}
