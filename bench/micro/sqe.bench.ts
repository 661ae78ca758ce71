// SQE encoding as the queue loop does it per request: COMMIT_AND_FETCH_REQ is an
// IORING_OP_URING_CMD header (encodeUringCmd) plus the struct ublksrv_io_cmd payload words
// (QueueLoop.stageIoCmd); the loop target adds an IORING_OP_READ/WRITE per request.
import { IORING_OP_READ, encodeReadWrite, encodeUringCmd, kSqeCmdWord, kSqeWords } from '../../src/abi/io-uring.js'
import { UBLK_U_IO_COMMIT_AND_FETCH_REQ } from '../../src/abi/ublk-cmd.js'
import { kUserDataTarget, kUserDataUblk } from '../../src/common/user-data.js'
import { sink, timeOps, type MicroBench } from './harness.js'

const kSlots = 64 // SQEs staged per turn at most, as a queue ring of depth 64 would
const kOps = 1_000_000
const kDepth = 128

const sqes = new Uint32Array(kSlots * kSqeWords)
const tagAddressLo = Uint32Array.from({ length: kDepth }, (_, tag) => 0x10_0000 + tag * 0x8_0000)
const tagAddressHi = new Uint32Array(kDepth).fill(0x7f12)
const charFd = 7
const queueId = 1

/** What QueueLoop.stageIoCmd does, line for line. */
function stageCommit(slot: number, tag: number, result: number): void {
  const base = encodeUringCmd(sqes, slot, charFd, UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, kUserDataUblk)
  sqes[base + kSqeCmdWord] = queueId | (tag << 16)
  sqes[base + kSqeCmdWord + 1] = result
  sqes[base + kSqeCmdWord + 2] = tagAddressLo[tag]!
  sqes[base + kSqeCmdWord + 3] = tagAddressHi[tag]!
}

export const benches: MicroBench[] = [{
  id: 'sqe',
  run: () => [
    timeOps('encode COMMIT_AND_FETCH_REQ SQE (header + ublksrv_io_cmd)', kOps, () => {
      for (let i = 0; i < kOps; i++) stageCommit(i & (kSlots - 1), i & (kDepth - 1), 4096)
      sink.value += sqes[kSqeCmdWord]!
    }),
    timeOps('encode IORING_OP_READ SQE (loop target, per request)', kOps, () => {
      for (let i = 0; i < kOps; i++) {
        const tag = i & (kDepth - 1)
        encodeReadWrite(sqes, i & (kSlots - 1), IORING_OP_READ, 9, tagAddressLo[tag]!, tagAddressHi[tag]!, 4096,
          (i * 4096) % 0x4000_0000, tag, kUserDataTarget)
      }
      sink.value += sqes[6]!
    }),
  ],
}]
