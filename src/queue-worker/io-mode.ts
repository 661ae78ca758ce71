// One queue's part of its device's I/O mode (src/common/io-mode.ts): where the requests' data
// is, for the ublk commands (the buffer address each FETCH/COMMIT carries) and for the target
// (QueueContext.data, IoRequest.buffer). One file per mode; the queue loop and the targets read
// the same whatever the mode.
import type { IoMode } from '../common/io-mode.js'
import type { QueueTaskInput } from '../common/messages.js'
import type { RequestData } from '../targets/target.js'
import { CopyModeData } from './copy-mode.js'
import { UserCopyModeData } from './user-copy-mode.js'
import { ZeroCopyModeData } from './zero-copy-mode.js'

export interface QueueData {
  readonly data: RequestData
  /** IoRequest.buffer of each tag. */
  readonly tagBuffers: Buffer[]
  /** The buffer address of each tag's FETCH_REQ and COMMIT_AND_FETCH_REQ, in 32-bit halves. */
  readonly commandAddressLo: Uint32Array
  readonly commandAddressHi: Uint32Array
  /** The low half of what those commands' SQEs carry in their own addr (zero copy: the buffer
   *  slot, struct ublk_auto_buf_reg, whose upper half is reserved and zero). */
  readonly sqeAddress: Uint32Array
  /** Bytes of memory the mode mapped for the queue. */
  readonly mappedBytes: number
  /** Unmap that memory; `abandon`: leave it mapped for the life of the process instead, because
   *  the kernel may still write into it (target I/O that did not drain). */
  release(abandon: boolean): void
}

export function openQueueData(mode: IoMode, input: QueueTaskInput): QueueData {
  if (mode === 'zero-copy') return new ZeroCopyModeData(input)
  return mode === 'user-copy' ? new UserCopyModeData(input) : new CopyModeData(input)
}
