import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import {
  UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../../src/abi/ublk-cmd.js'
import { createLogger } from '../../src/common/log.js'
import { MemoryQueue, type MemorySpec } from '../../src/targets/memory.js'
import { findTarget } from '../../src/targets/registry.js'
import { kIoPending, type IoRequest, type QueueContext } from '../../src/targets/target.js'

const kIoBytes = 65536
const ioBuffer = new Uint8Array(4 * kIoBytes)
/** Completions the targets reported through QueueContext.complete, [tag, result]. */
const completions: [number, number][] = []
const queue: QueueContext = {
  queueId: 0, log: createLogger('silent', {}), ioMode: 'copy', depth: 4, maxIoBufBytes: kIoBytes, tagAddressLo: new Uint32Array(4), tagAddressHi: new Uint32Array(4),
  data: { endpoint: ioBuffer, tagOffset: Float64Array.from([0, 1, 2, 3], (tag) => tag * kIoBytes) },
  sqes: new Uint32Array(32 * 8), reserveSqe: () => 0, submitSoon: () => {}, complete: (tag, result) => completions.push([tag, result]),
}
/** Tag t's buffer, a view into the queue's I/O buffer as the queue worker gives it. */
const tagBuffer = (tag: number): Buffer => Buffer.from(ioBuffer.buffer, tag * kIoBytes, kIoBytes)

function request(op: number, startSector: number, nrSectors: number, tag = 0): IoRequest {
  return { tag, op, flags: 0, startSector, nrSectors, buffer: tagBuffer(tag) }
}

t.test('memory: data written reads back, across a chunk boundary too; copies happen at the turn\'s end', async (t) => {
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '3G' }, 512))
  t.equal((setup.spec as { chunks: unknown[] }).chunks.length, 3)
  const handler = await target.openQueue(setup.spec, queue)
  const data = tagBuffer(1)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff
  const expected = Buffer.from(data)
  const straddling = 2 ** 30 / 512 - 8 // 4 KiB before the first chunk ends
  completions.length = 0
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE, straddling, 128, 1)), kIoPending)
  const back = tagBuffer(2).fill(0xaa)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, straddling, 128, 2)), kIoPending)
  t.ok(back.every((b) => b === 0xaa), 'nothing is copied before the turn ends')
  t.same(completions, [], 'nor completed')
  handler.endTurn!()
  t.ok(back.equals(expected), 'read returns what was written, in order within the turn')
  t.same(completions, [[1, 65536], [2, 65536]], 'both complete at the turn\'s end, in order')
})

t.test('memory: never-written ranges are zeros; discard and write-zeroes zero; flush is ok', async (t) => {
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '1M' }, 512))
  const handler = await target.openQueue(setup.spec, queue)
  tagBuffer(0).fill(0x55)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, 100, 8)), kIoPending)
  handler.endTurn!()
  t.ok(tagBuffer(0).subarray(0, 4096).equals(Buffer.alloc(4096)), 'zeros')
  tagBuffer(1).fill(1, 0, 4096)
  tagBuffer(2).fill(2, 0, 4096)
  handler.handleIo(request(UBLK_IO_OP_WRITE, 0, 8, 1))
  handler.handleIo(request(UBLK_IO_OP_WRITE, 8, 8, 2))
  t.equal(handler.handleIo(request(UBLK_IO_OP_DISCARD, 0, 8, 3)), 0)
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE_ZEROES, 8, 8, 3)), 0)
  t.equal(handler.handleIo(request(UBLK_IO_OP_FLUSH, 0, 0, 3)), 0)
  tagBuffer(0).fill(9)
  handler.handleIo(request(UBLK_IO_OP_READ, 0, 16, 0))
  handler.endTurn!()
  t.ok(tagBuffer(0).subarray(0, 8192).equals(Buffer.alloc(8192)), 'both ranges read as zeros: the zeroing came after the writes')
})

t.test('memory: a turn with more copies than its batch holds performs them in order', async (t) => {
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '1M' }, 512))
  const handler = await target.openQueue(setup.spec, queue)
  // 4 tags: a batch of 2 x 4 ops. 20 writes of sector 0, each with its own byte, then a read.
  for (let i = 0; i < 20; i++) {
    tagBuffer(i % 3).fill(i + 1, 0, 512)
    handler.handleIo(request(UBLK_IO_OP_WRITE, 0, 1, i % 3))
    if (i % 3 === 2) handler.endTurn!()
  }
  handler.handleIo(request(UBLK_IO_OP_READ, 0, 1, 3))
  handler.endTurn!()
  t.equal(tagBuffer(3)[0], 20, 'the last write wins')
})

t.test('memory: a long discard completes over several turns, each releasing a bounded part; later ones queue behind it', async (t) => {
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '3G' }, 512))
  const completed: [number, number][] = []
  let nops = 0
  const sqes = new Uint32Array(32 * 8)
  const recording: QueueContext = {
    ...queue, sqes,
    reserveSqe: () => {
      nops++
      return 0
    },
    complete: (tag, result) => completed.push([tag, result]),
  }
  const handler = await target.openQueue(setup.spec, recording)
  const write = (sector: number, byte: number) => {
    tagBuffer(1).fill(byte, 0, 4096)
    handler.handleIo(request(UBLK_IO_OP_WRITE, sector, 8, 1))
    handler.endTurn!()
    t.same(completed.splice(0), [[1, 4096]])
  }
  const read = (sector: number): number => {
    handler.handleIo(request(UBLK_IO_OP_READ, sector, 8, 2))
    handler.endTurn!()
    t.same(completed.splice(0), [[2, 4096]])
    return tagBuffer(2)[0]!
  }
  const gib = 2 ** 30 / 512
  for (const sector of [0, gib, 2 * gib + 8, 3 * gib - 8]) write(sector, 0x5a)
  // Sectors [8, 2 GiB + 8): crosses the first chunk boundary.
  t.equal(handler.handleIo(request(UBLK_IO_OP_DISCARD, 8, 2 * gib, 0)), kIoPending, 'too long for one turn')
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE_ZEROES, 3 * gib - 8, 8, 3)), kIoPending, 'queued behind it')
  let turns = 0
  while (completed.length < 2 && turns < 200) {
    handler.endTurn!()
    turns++
    t.equal(nops, completed.length < 2 ? turns : turns - 1, 'a NOP brings the next turn while zeroing is left')
    handler.onCompletion!(0, 0)
  }
  t.equal(turns, 129, '2 GiB in 128 turns of 16 MiB, the write-zeroes in the next')
  t.same(completed.splice(0), [[0, 0], [3, 0]], 'completed in order, successfully')
  t.equal(read(0), 0x5a, 'the data before the range is kept')
  t.equal(read(gib), 0, 'the data in the range reads as zeros')
  t.equal(read(2 * gib + 8), 0x5a, 'the data after the range is kept')
  t.equal(read(3 * gib - 8), 0, 'the queued write-zeroes was done too')
  t.equal(handler.handleIo(request(UBLK_IO_OP_DISCARD, 0, 8, 0)), 0, 'a short one with none waiting completes at once')
  handler.endTurn!()
  t.equal(nops, 128, 'and needs no NOP')
})

t.test('memory: a turn copies at most its budget; the rest of a request and those behind it follow in the next turns', async (t) => {
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '1M' }, 512))
  const completed: [number, number][] = []
  let nops = 0
  const recording: QueueContext = {
    ...queue, sqes: new Uint32Array(32 * 8),
    reserveSqe: () => {
      nops++
      return 0
    },
    complete: (tag, result) => completed.push([tag, result]),
  }
  const handler = new MemoryQueue(setup.spec as MemorySpec, recording, undefined, 96 * 1024)
  for (const tag of [0, 1, 2]) {
    const data = tagBuffer(tag)
    for (let i = 0; i < data.length; i++) data[i] = (i * (tag + 3)) & 0xff
  }
  const written = [0, 1, 2].map((tag) => Buffer.from(tagBuffer(tag)))
  for (const tag of [0, 1, 2]) t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE, tag * 128, 128, tag)), kIoPending)
  handler.endTurn!()
  t.same(completed.splice(0), [[0, 65536]], 'turn 1: the first write, and 32 KiB of the second')
  t.equal(nops, 1, 'a NOP brings the next turn')
  handler.onCompletion!(0, 0)
  handler.endTurn!()
  t.same(completed.splice(0), [[1, 65536], [2, 65536]], 'turn 2: the rest of the second and the third, in order')
  t.equal(nops, 1, 'nothing left: no NOP')
  for (const tag of [0, 1, 2]) {
    tagBuffer(3).fill(0xaa)
    handler.handleIo(request(UBLK_IO_OP_READ, tag * 128, 128, 3))
    handler.endTurn!()
    t.same(completed.splice(0), [[3, 65536]])
    t.ok(tagBuffer(3).equals(written[tag]!), `write ${tag} reads back whole`)
  }
  // A READ split across turns: each part lands at its place in the tag's data.
  tagBuffer(2).fill(0)
  handler.handleIo(request(UBLK_IO_OP_READ, 0, 128, 0))
  handler.handleIo(request(UBLK_IO_OP_READ, 128, 128, 2))
  handler.endTurn!()
  handler.onCompletion!(0, 0)
  handler.endTurn!()
  t.same(completed.splice(0), [[0, 65536], [2, 65536]])
  t.ok(tagBuffer(2).equals(written[1]!), 'a read done in two parts has both')
})

t.test('null: reads return zeros even after a write used the same tag buffer', async (t) => {
  const target = findTarget('null')
  const setup = await target.setup(target.parseOptions({}, 512))
  const handler = await target.openQueue(setup.spec, queue)
  const buffer = tagBuffer(2).fill(0x77)
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE, 0, 16, 2)), 8192)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, 0, 16, 2)), 8192)
  t.ok(buffer.subarray(0, 8192).equals(Buffer.alloc(8192)))
  t.equal(handler.handleIo(request(UBLK_IO_OP_FLUSH, 0, 0, 2)), 0)
})

t.test('memory: resize grows within --max-size; a shrink releases what lies past the new end, across chunks', async (t) => {
  const target = findTarget('memory')
  t.throws(() => target.parseOptions({ size: '2G', maxSize: '1G' }, 512), { message: '--max-size 1073741824 is smaller than --size 2147483648' })
  const setup = await target.setup(target.parseOptions({ size: '1M', maxSize: '2G' }, 512))
  const spec = setup.spec as { chunks: SharedArrayBuffer[]; storeBytes: number }
  t.equal(spec.storeBytes, 2 ** 31)
  t.same(setup.describe, { maxSize: 2 ** 31 })
  t.throws(() => target.resize!(setup.spec, 2 ** 20, 2 ** 31 + 512), { code: 'UBLKD_ERR_USAGE' }, 'past --max-size')
  target.resize!(setup.spec, 2 ** 20, 2 ** 31)
  const first = new Uint8Array(spec.chunks[0]!)
  const second = new Uint8Array(spec.chunks[1]!)
  first.fill(1, 0, 8192)
  first.fill(2, 2 ** 30 - 4096)
  second.fill(3, 0, 4096)
  // Shrink to 5000 bytes: the partial page after it is cleared, the rest released.
  target.resize!(setup.spec, 2 ** 31, 5000)
  t.ok(first.subarray(0, 5000).every((b) => b === 1), 'what lies before the new end is kept')
  t.ok(first.subarray(5000, 8192).every((b) => b === 0), 'the partial page after it is zeroed')
  t.ok(first.subarray(2 ** 30 - 4096).every((b) => b === 0), 'the end of the first chunk is released')
  t.ok(second.subarray(0, 4096).every((b) => b === 0), 'the second chunk is released too')
  t.equal(findTarget('fault').resize, undefined, 'fault keeps its size')
})

t.test('memory in user-copy mode: data moves through the endpoint file at each tag\'s offset; a failed copy fails its request', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-user-copy-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  // Stands in for the char device: offsets as large as the real ones (2^31 + tag << 25).
  const file = path.join(dir, 'char')
  const fd = fs.openSync(file, 'w+')
  t.teardown(() => fs.closeSync(fd))
  const tagOffset = Float64Array.from([0, 1, 2, 3], (tag) => 2 ** 31 + tag * 2 ** 25)
  const completed: [number, number][] = []
  const userCopy = (endpoint: number): QueueContext => ({
    ...queue, data: { endpoint, tagOffset }, complete: (tag, result) => completed.push([tag, result]),
  })
  const target = findTarget('memory')
  const setup = await target.setup(target.parseOptions({ size: '1M' }, 512))
  const handler = await target.openQueue(setup.spec, userCopy(fd))
  const noBuffer = (op: number, sector: number, sectors: number, tag: number): IoRequest =>
    ({ tag, op, flags: 0, startSector: sector, nrSectors: sectors, buffer: Buffer.alloc(0) })
  fs.writeSync(fd, Buffer.alloc(4096, 0x3c), 0, 4096, tagOffset[1]!)
  t.equal(handler.handleIo(noBuffer(UBLK_IO_OP_WRITE, 16, 8, 1)), kIoPending)
  t.equal(handler.handleIo(noBuffer(UBLK_IO_OP_READ, 16, 8, 2)), kIoPending)
  handler.endTurn!()
  t.same(completed.splice(0), [[1, 4096], [2, 4096]])
  const back = Buffer.alloc(4096)
  fs.readSync(fd, back, 0, 4096, tagOffset[2]!)
  t.ok(back.every((b) => b === 0x3c), 'the WRITE was read from tag 1\'s offset into the store, the READ written at tag 2\'s')

  // A WRITE whose data is not all there: its pread comes up short (past the file's end).
  t.equal(handler.handleIo(noBuffer(UBLK_IO_OP_WRITE, 0, 8, 3)), kIoPending)
  handler.endTurn!()
  t.same(completed.splice(0), [[3, -5]], 'a short copy fails its request with EIO')
  const readOnlyFd = fs.openSync(file, 'r')
  t.teardown(() => fs.closeSync(readOnlyFd))
  const refusing = await target.openQueue(setup.spec, userCopy(readOnlyFd))
  refusing.handleIo(noBuffer(UBLK_IO_OP_READ, 16, 8, 0))
  refusing.handleIo(noBuffer(UBLK_IO_OP_WRITE, 16, 8, 1))
  refusing.endTurn!()
  t.same(completed.splice(0), [[0, -9], [1, 4096]], 'a failed pwrite fails its READ with the errno; the next request still runs')
})
