// io_uring SQE encoding for 128-byte SQEs (IORING_SETUP_SQE128), written as 32-bit words into a
// ring's staging buffer. The layout (struct io_uring_sqe) is checked against the C header in
// test/addon/abi-layout.test.ts.
//
//   word  0: opcode u8 | flags u8 | ioprio u16        word  1: fd s32
//   words 2-3: off / cmd_op (cmd_op = word 2)          words 4-5: addr
//   word  6: len                                       word  7: rw_flags / uring_cmd_flags
//   words 8-9: user_data (lo, hi)                      words 10-11: buf_index, personality, file_index
//   words 12-31: the uring_cmd payload (80 bytes) for IORING_OP_URING_CMD; ublk uses 12-15

export const IORING_OP_NOP = 0
export const IORING_OP_FSYNC = 3
export const IORING_OP_READ_FIXED = 4
export const IORING_OP_WRITE_FIXED = 5
export const IORING_OP_SENDMSG = 9
export const IORING_OP_ASYNC_CANCEL = 14
export const IORING_OP_FALLOCATE = 17
export const IORING_OP_READ = 22
export const IORING_OP_WRITE = 23
export const IORING_OP_RECV = 27
export const IORING_OP_SHUTDOWN = 34
export const IORING_OP_URING_CMD = 46

/** sqe.flags (word 0, bits 8-15): `fd` is an index into the ring's registered files. */
export const IOSQE_FIXED_FILE = 1 << 0

export const IORING_SETUP_SUBMIT_ALL = 1 << 7
export const IORING_SETUP_COOP_TASKRUN = 1 << 8
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12
export const IORING_SETUP_SQE128 = 1 << 10

export const IORING_FSYNC_DATASYNC = 1 << 0
/** cancel_flags of ASYNC_CANCEL: every request of the ring that can be cancelled. */
export const IORING_ASYNC_CANCEL_ANY = 1 << 2
/** msg_flags of a send: a peer that is gone gives EPIPE, not SIGPIPE. */
export const MSG_NOSIGNAL = 0x4000
/** `how` of a shutdown: both directions, which ends the socket's pending receives. */
export const SHUT_RDWR = 2
/** rw_flags of a write: durable before completion (FUA). */
export const RWF_DSYNC = 0x2

export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

export const kSqeWords = 32
export const kCqeWords = 4
export const kSqeCmdWord = 12

/**
 * Write the 64-byte base of SQE `slot` (words 0-15): the fields every opcode has, the rest zero.
 * Words 16-31 only ever hold a URING_CMD payload whose encoder writes all of its own bytes
 * (ublksrv_ctrl_cmd); otherwise they stay zero from the staging buffer's allocation. So 16
 * stores do, instead of clearing 128 bytes per SQE. `sqeFlags` (IOSQE_*), e.g.
 * IOSQE_FIXED_FILE when `fd` is a registered file's index.
 */
export function encodeSqeHeader(
  sqes: Uint32Array, slot: number, opcode: number, fd: number, userDataLo: number, userDataHi: number, sqeFlags = 0,
): number {
  const base = slot * kSqeWords
  sqes[base] = opcode | (sqeFlags << 8)
  sqes[base + 1] = fd
  for (let word = 2; word < 16; word++) sqes[base + word] = 0
  sqes[base + 8] = userDataLo
  sqes[base + 9] = userDataHi
  return base
}

/** IORING_OP_URING_CMD header; the caller writes the payload at words 12.. of the returned base. */
export function encodeUringCmd(
  sqes: Uint32Array, slot: number, fd: number, cmdOp: number, userDataLo: number, userDataHi: number, sqeFlags = 0,
): number {
  const base = encodeSqeHeader(sqes, slot, IORING_OP_URING_CMD, fd, userDataLo, userDataHi, sqeFlags)
  sqes[base + 2] = cmdOp
  return base
}

/**
 * IORING_OP_READ / IORING_OP_WRITE of `len` bytes at a user address (given as two 32-bit halves,
 * so the hot path never touches bigints) from/to file offset `offset`.
 */
export function encodeReadWrite(
  sqes: Uint32Array, slot: number, opcode: number, fd: number, addressLo: number, addressHi: number,
  len: number, offset: number, userDataLo: number, userDataHi: number, rwFlags = 0,
): void {
  const base = encodeSqeHeader(sqes, slot, opcode, fd, userDataLo, userDataHi)
  sqes[base + 2] = offset % 0x1_0000_0000
  sqes[base + 3] = Math.floor(offset / 0x1_0000_0000)
  sqes[base + 4] = addressLo
  sqes[base + 5] = addressHi
  sqes[base + 6] = len
  sqes[base + 7] = rwFlags
}

/** READ_FIXED / WRITE_FIXED: `len` bytes at `fileOffset` of `fd`, to or from registered buffer
 *  `bufIndex` starting `bufferOffset` bytes into it (a ublk request's pages start at 0). */
export function encodeFixedReadWrite(
  sqes: Uint32Array, slot: number, opcode: number, fd: number, bufferOffset: number, len: number, fileOffset: number,
  bufIndex: number, userDataLo: number, userDataHi: number, rwFlags = 0,
): void {
  encodeReadWrite(sqes, slot, opcode, fd, bufferOffset, 0, len, fileOffset, userDataLo, userDataHi, rwFlags)
  sqes[slot * kSqeWords + 10] = bufIndex
}

/** IORING_OP_ASYNC_CANCEL of the request whose user_data is `targetLo/targetHi` (in `addr`). */
export function encodeAsyncCancel(
  sqes: Uint32Array, slot: number, targetLo: number, targetHi: number, userDataLo: number, userDataHi: number,
): void {
  const base = encodeSqeHeader(sqes, slot, IORING_OP_ASYNC_CANCEL, -1, userDataLo, userDataHi)
  sqes[base + 4] = targetLo
  sqes[base + 5] = targetHi
}

/** IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY: cancel whatever of the ring can be. */
export function encodeCancelAny(sqes: Uint32Array, slot: number, userDataLo: number, userDataHi: number): void {
  const base = encodeSqeHeader(sqes, slot, IORING_OP_ASYNC_CANCEL, -1, userDataLo, userDataHi)
  sqes[base + 7] = IORING_ASYNC_CANCEL_ANY
}

/** IORING_OP_FSYNC; `fsyncFlags` IORING_FSYNC_DATASYNC for fdatasync. */
export function encodeFsync(
  sqes: Uint32Array, slot: number, fd: number, fsyncFlags: number, userDataLo: number, userDataHi: number,
): void {
  const base = encodeSqeHeader(sqes, slot, IORING_OP_FSYNC, fd, userDataLo, userDataHi)
  sqes[base + 7] = fsyncFlags
}

/** IORING_OP_FALLOCATE: the kernel takes the offset in `off`, the length in `addr`, the mode in `len`. */
export function encodeFallocate(
  sqes: Uint32Array, slot: number, fd: number, mode: number, offset: number, length: number,
  userDataLo: number, userDataHi: number,
): void {
  const base = encodeSqeHeader(sqes, slot, IORING_OP_FALLOCATE, fd, userDataLo, userDataHi)
  sqes[base + 2] = offset % 0x1_0000_0000
  sqes[base + 3] = Math.floor(offset / 0x1_0000_0000)
  sqes[base + 4] = length % 0x1_0000_0000
  sqes[base + 5] = Math.floor(length / 0x1_0000_0000)
  sqes[base + 6] = mode
}

/** IORING_OP_RECV of up to `len` bytes into `addr`. */
export function encodeRecv(
  sqes: Uint32Array, slot: number, fd: number, addressLo: number, addressHi: number, len: number, userDataLo: number, userDataHi: number,
): void {
  encodeReadWrite(sqes, slot, IORING_OP_RECV, fd, addressLo, addressHi, len, 0, userDataLo, userDataHi)
}

/** IORING_OP_SENDMSG of the struct msghdr at `addr` (the kernel takes len 1), without SIGPIPE. */
export function encodeSendmsg(
  sqes: Uint32Array, slot: number, fd: number, msghdrLo: number, msghdrHi: number, userDataLo: number, userDataHi: number,
): void {
  encodeReadWrite(sqes, slot, IORING_OP_SENDMSG, fd, msghdrLo, msghdrHi, 1, 0, userDataLo, userDataHi, MSG_NOSIGNAL)
}

/** IORING_OP_SHUTDOWN of a socket (`how` goes in len). */
export function encodeShutdown(sqes: Uint32Array, slot: number, fd: number, how: number, userDataLo: number, userDataHi: number): void {
  encodeReadWrite(sqes, slot, IORING_OP_SHUTDOWN, fd, 0, 0, how, 0, userDataLo, userDataHi)
}
