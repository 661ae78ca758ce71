// How a request's data travels between the kernel and the target (`add --io-mode`):
//   copy       the kernel copies it into (WRITE) or out of (READ) a per-tag buffer of ours, which
//              the target reads or fills: depth x 512 KiB of buffers per queue
//   user-copy  UBLK_F_USER_COPY: the target itself preads (WRITE) or pwrites (READ) the char
//              device at the request's offset, straight between the request's pages and its own
//              memory; no per-tag buffer exists
//   zero-copy  UBLK_F_AUTO_BUF_REG: the kernel puts each request's pages in slot `tag` of the
//              queue ring's fixed-buffer table before delivering it; the target's own SQEs
//              (READ_FIXED/WRITE_FIXED) name that slot, and the data never enters the daemon
// The device's mode is fixed at ADD_DEV by its flags, which is where a re-attaching daemon reads
// it back (ioModeOfFlags).
import { UBLK_F_AUTO_BUF_REG, UBLK_F_USER_COPY } from '../abi/ublk-cmd.js'

export const ioModes = ['copy', 'user-copy', 'zero-copy'] as const
export type IoMode = (typeof ioModes)[number]

/** The ADD_DEV flags a mode asks for. */
export function ioModeFlags(mode: IoMode): bigint {
  return mode === 'user-copy' ? UBLK_F_USER_COPY : mode === 'zero-copy' ? UBLK_F_AUTO_BUF_REG : 0n
}

/** The mode a device was created with, from the flags the kernel gave it. */
export function ioModeOfFlags(flags: bigint): IoMode {
  if ((flags & UBLK_F_AUTO_BUF_REG) !== 0n) return 'zero-copy'
  return (flags & UBLK_F_USER_COPY) !== 0n ? 'user-copy' : 'copy'
}
