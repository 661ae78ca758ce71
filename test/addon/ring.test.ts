// The addon against the host kernel's io_uring: batching, timeouts, reads, and that a closed
// ring or unmapped buffer gives an error, never a crash.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import {
  IORING_OP_NOP, IORING_OP_READ, IORING_OP_READ_FIXED, IORING_SETUP_SQE128, IOSQE_FIXED_FILE, IORING_SETUP_SUBMIT_ALL,
  encodeFixedReadWrite, encodeReadWrite, encodeSqeHeader, kCqeWords,
} from '../../src/abi/io-uring.js'
import { native } from '../../src/native/addon.js'

function newRing() {
  return new native.Ring(16, 32, IORING_SETUP_SQE128 | IORING_SETUP_SUBMIT_ALL)
}

t.test('a batch of NOPs completes in one enter with every user_data back', async (t) => {
  const ring = newRing()
  t.teardown(() => ring.close())
  const sqes = new Uint32Array(ring.sqes)
  for (let slot = 0; slot < 10; slot++) encodeSqeHeader(sqes, slot, IORING_OP_NOP, -1, 1000 + slot, 7)
  const reaped = ring.enter(10, 10, 0)
  t.equal(reaped, 10)
  const cqes = new Uint32Array(ring.cqes)
  const seen = []
  for (let i = 0; i < reaped; i++) {
    seen.push(cqes[i * kCqeWords]!)
    t.equal(cqes[i * kCqeWords + 1], 7, 'user_data high word')
    t.equal(new Int32Array(ring.cqes)[i * kCqeWords + 2], 0, 'res')
  }
  t.same(seen.sort(), [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009])
})

t.test('waiting with nothing in flight returns after the timeout; the clock stamps the wait', async (t) => {
  const ring = newRing()
  t.teardown(() => ring.close())
  const clock = new Int32Array(ring.clock)
  const started = process.hrtime.bigint()
  t.equal(ring.enter(0, 1, 30_000_000), 0)
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6
  t.ok(elapsedMs >= 25, `waited ${elapsedMs} ms`)
  const waitedMicros = (clock[1]! - clock[0]!) | 0
  t.ok(waitedMicros >= 25_000 && waitedMicros <= elapsedMs * 1000 + 1000,
    `submitted and reaped stamps ${waitedMicros} µs apart (hrtime: ${elapsedMs} ms)`)
  const monotonicMicros = Number((process.hrtime.bigint() / 1000n) & 0xffffffffn) | 0
  t.ok(Math.abs((monotonicMicros - clock[1]!) | 0) < 1_000_000, 'the stamps are CLOCK_MONOTONIC µs, low 32 bits')
})

t.test('IORING_OP_READ fills a buffer from allocBuffer at its address', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-ring-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true }))
  const file = path.join(dir, 'data')
  fs.writeFileSync(file, 'hello, ring')
  const fd = fs.openSync(file, 'r')
  t.teardown(() => fs.closeSync(fd))
  const ring = newRing()
  t.teardown(() => ring.close())
  const buffer = native.allocBuffer(native.pageSize)
  const address = native.bufferAddress(buffer, 0)
  encodeReadWrite(new Uint32Array(ring.sqes), 0, IORING_OP_READ, fd, Number(address & 0xffffffffn),
    Number(address >> 32n), 11, 0, 1, 0)
  t.equal(ring.enter(1, 1, 0), 1)
  t.equal(new Int32Array(ring.cqes)[2], 11)
  t.equal(Buffer.from(buffer, 0, 11).toString(), 'hello, ring')
  native.munmap(buffer)
})

t.test('a registered file is read through its fixed-file index', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-ring-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true }))
  fs.writeFileSync(path.join(dir, 'a'), 'first')
  fs.writeFileSync(path.join(dir, 'b'), 'second')
  const fds = ['a', 'b'].map((name) => fs.openSync(path.join(dir, name), 'r'))
  t.teardown(() => fds.forEach((fd) => fs.closeSync(fd)))
  const ring = newRing()
  t.teardown(() => ring.close())
  ring.registerFiles(fds)
  const buffer = native.allocBuffer(native.pageSize)
  t.teardown(() => native.munmap(buffer))
  const address = native.bufferAddress(buffer, 0)
  const sqes = new Uint32Array(ring.sqes)
  encodeReadWrite(sqes, 0, IORING_OP_READ, 1, Number(address & 0xffffffffn), Number(address >> 32n), 6, 0, 1, 0)
  sqes[0] = sqes[0]! | (IOSQE_FIXED_FILE << 8)
  t.equal(ring.enter(1, 1, 0), 1)
  t.equal(new Int32Array(ring.cqes)[2], 6)
  t.equal(Buffer.from(buffer, 0, 6).toString(), 'second', 'index 1 is the second file')
  t.throws(() => ring.registerFiles(fds), { code: 'EBUSY' }, 'a ring has one table')
  t.throws(() => ring.registerFiles(['x' as unknown as number]), TypeError)
})

t.test('a sparse fixed-buffer table: its empty slots fail READ_FIXED (EFAULT), a second table is refused', async (t) => {
  const ring = newRing()
  t.teardown(() => ring.close())
  ring.registerSparseBuffers(8)
  const zero = fs.openSync('/dev/zero', 'r')
  t.teardown(() => fs.closeSync(zero))
  encodeFixedReadWrite(new Uint32Array(ring.sqes), 0, IORING_OP_READ_FIXED, zero, 0, 4096, 0, 3, 7, 0)
  t.equal(ring.enter(1, 1, 0), 1)
  t.equal(new Int32Array(ring.cqes)[2], -14, 'slot 3 holds no buffer until the kernel puts one there')
  t.throws(() => ring.registerSparseBuffers(8), { code: 'EBUSY' }, 'a ring has one buffer table')
  t.throws(() => ring.registerSparseBuffers('x' as unknown as number), TypeError)
})

t.test('a closed ring throws EBADF instead of crashing', async (t) => {
  const ring = newRing()
  ring.close()
  t.equal(ring.closed, true)
  t.throws(() => ring.enter(0, 0, 0), { code: 'EBADF', syscall: 'io_uring_enter' })
  t.throws(() => ring.watchCompletions(() => {}), { code: 'EBADF' })
  ring.close()
})

t.test('rings without SQE128 and bad arguments are refused', async (t) => {
  t.throws(() => new native.Ring(8, 16, 0), TypeError)
  const ring = newRing()
  t.teardown(() => ring.close())
  t.throws(() => ring.enter(ring.sqEntries + 1, 0, 0), TypeError)
})

t.test('munmap detaches the buffer so later access sees zero length', async (t) => {
  const buffer = native.allocBuffer(2 * native.pageSize)
  t.equal(buffer.byteLength, 2 * native.pageSize)
  native.munmap(buffer)
  t.equal(buffer.byteLength, 0)
  native.munmap(buffer)
  t.throws(() => native.munmap(new ArrayBuffer(8)), TypeError)
})

t.test('watchCompletions calls back from the event loop when a CQE is posted later', async (t) => {
  const ring = newRing()
  const eventFd = native.eventFd()
  const buffer = native.allocBuffer(native.pageSize)
  t.teardown(() => {
    ring.close()
    fs.closeSync(eventFd)
  })
  const called = new Promise<number>((resolve) => ring.watchCompletions(() => resolve(ring.enter(0, 0, 0))))
  const address = native.bufferAddress(buffer, 0)
  encodeReadWrite(new Uint32Array(ring.sqes), 0, IORING_OP_READ, eventFd, Number(address & 0xffffffffn),
    Number(address >> 32n), 8, 0, 5, 0)
  t.equal(ring.enter(1, 0, 0), 0, 'the eventfd read waits')
  setTimeout(() => native.eventFdWrite(eventFd), 20)
  t.equal(await called, 1)
  t.equal(new Uint32Array(ring.cqes)[0], 5)
})

t.test('pinThread restricts the calling thread', async (t) => {
  const before = native.threadAffinity()
  t.teardown(() => native.pinThread(before))
  native.pinThread([before[0]!])
  t.same(native.threadAffinity(), [before[0]])
  t.throws(() => native.pinThread([-1]), TypeError)
  t.equal(typeof native.gettid(), 'number')
})

t.test('directIoAlignment reads statx STATX_DIOALIGN, and fails like fs for a missing file', async (t) => {
  // A disk filesystem reports its block device's logical block size and DMA alignment (the VM
  // tests check a 4 KiB one); what this checkout sits on may also report nothing.
  const [offset, memory] = native.directIoAlignment(os.tmpdir())
  t.ok(offset === 0 || [512, 1024, 2048, 4096].includes(offset), `${os.tmpdir()}: offset ${offset}`)
  t.ok(memory === 0 ? offset === 0 : memory > 0 && memory <= 4096 && (memory & (memory - 1)) === 0, `${os.tmpdir()}: memory ${memory}`)
  t.same(native.directIoAlignment('/proc/self/status'), [0, 0], 'procfs: not reported')
  t.throws(() => native.directIoAlignment('/nonexistent/file'), { code: 'ENOENT', syscall: 'statx' })
  t.throws(() => (native.directIoAlignment as (path: unknown) => [number, number])(3), TypeError)
})
