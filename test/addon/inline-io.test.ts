// native.executeSqes against real files on the host: the SQEs a target encodes for a ring,
// performed synchronously, with the results a CQE would carry.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, IORING_FSYNC_DATASYNC, IORING_OP_NOP, IORING_OP_READ, IORING_OP_WRITE,
  RWF_DSYNC, encodeFallocate, encodeFsync, encodeReadWrite, encodeSqeHeader, kSqeWords,
} from '../../src/abi/io-uring.js'
import { native } from '../../src/native/addon.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-inline-'))
t.teardown(() => fs.rmSync(dir, { recursive: true }))

function halves(address: bigint): [number, number] {
  return [Number(address & 0xffffffffn), Number(address >> 32n)]
}

t.test('a batch of writes, reads, fdatasync and a punched hole, in order, with CQE results', async (t) => {
  const file = path.join(dir, 'batch')
  fs.writeFileSync(file, Buffer.alloc(64 * 1024, 0x55))
  const fd = fs.openSync(file, 'r+')
  t.teardown(() => fs.closeSync(fd))
  const buffer = native.allocBuffer(2 * native.pageSize)
  t.teardown(() => native.munmap(buffer))
  const bytes = Buffer.from(buffer)
  bytes.fill(0xab, 0, 4096)
  const [lo, hi] = halves(native.bufferAddress(buffer, 0))
  const [readLo, readHi] = halves(native.bufferAddress(buffer, 4096))
  const sqes = new Uint32Array(8 * kSqeWords)
  encodeReadWrite(sqes, 0, IORING_OP_WRITE, fd, lo, hi, 4096, 8192, 1, 0, RWF_DSYNC)
  encodeReadWrite(sqes, 1, IORING_OP_READ, fd, readLo, readHi, 4096, 8192, 2, 0)
  encodeFsync(sqes, 2, fd, IORING_FSYNC_DATASYNC, 3, 0)
  encodeFallocate(sqes, 3, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, 4, 0)
  encodeReadWrite(sqes, 4, IORING_OP_READ, fd, readLo, readHi, 4096, 60 * 1024, 5, 0)
  const results = new Int32Array(8).fill(99)
  native.executeSqes(sqes.buffer, 5, results)
  t.same([...results.subarray(0, 5)], [4096, 4096, 0, 0, 4096], 'bytes for transfers, 0 for sync and punch')
  t.equal(results[5], 99, 'nothing past count is touched')
  const onDisk = fs.readFileSync(file)
  t.ok(onDisk.subarray(8192, 12288).every((b) => b === 0xab), 'the write landed at its offset')
  t.ok(onDisk.subarray(0, 4096).every((b) => b === 0), 'the punched range reads zeros')
  t.ok(bytes.subarray(4096).every((b) => b === 0x55), 'the last read filled the second page')
  const [endLo, endHi] = halves(native.bufferAddress(buffer, 0))
  encodeReadWrite(sqes, 0, IORING_OP_READ, fd, endLo, endHi, 4096, 64 * 1024, 6, 0)
  native.executeSqes(sqes.buffer, 1, results)
  t.equal(results[0], 0, 'a read at end of file returns 0, as a CQE would')
})

t.test('errors come back as negative errnos, never as a crash', async (t) => {
  const fd = fs.openSync(path.join(dir, 'errors'), 'w+')
  t.teardown(() => fs.closeSync(fd))
  const sqes = new Uint32Array(4 * kSqeWords)
  encodeReadWrite(sqes, 0, IORING_OP_READ, fd, 0x1000, 0, 4096, 0, 1, 0)
  encodeReadWrite(sqes, 1, IORING_OP_WRITE, 1_000_000, 0x1000, 0, 4096, 0, 2, 0)
  encodeSqeHeader(sqes, 2, IORING_OP_NOP, fd, 3, 0)
  fs.writeSync(fd, 'x')
  const results = new Int32Array(4)
  native.executeSqes(sqes.buffer, 3, results)
  t.equal(results[0], -14, 'EFAULT for an address that is not mapped')
  t.equal(results[1], -9, 'EBADF for a descriptor that is not open')
  t.equal(results[2], -22, 'EINVAL for an opcode it does not perform')
})

t.test('counts past the SQEs or the results, and wrong argument types, are refused', async (t) => {
  const sqes = new ArrayBuffer(2 * kSqeWords * 4)
  t.throws(() => native.executeSqes(sqes, 3, new Int32Array(4)), TypeError)
  t.throws(() => native.executeSqes(sqes, 2, new Int32Array(1)), TypeError)
  t.throws(() => native.executeSqes(sqes, 1, new Uint32Array(2) as unknown as Int32Array), TypeError)
  native.executeSqes(sqes, 0, new Int32Array(0))
})
