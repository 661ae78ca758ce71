// native.Copier: batched copies between bound buffers, bounds-checked, in order.
import fs from 'node:fs'

import t from 'tap'

import { native } from '../../src/native/addon.js'

const op = (dst: number, dstOffset: number, src: number, srcOffset: number, bytes: number): number[] =>
  [dst, dstOffset % 2 ** 32, Math.floor(dstOffset / 2 ** 32), src, srcOffset % 2 ** 32, Math.floor(srcOffset / 2 ** 32), bytes]

t.test('copies and zero fills run in order between bound buffers, shared ones included', async (t) => {
  const io = new Uint8Array(native.allocBuffer(2 * native.pageSize))
  const store = new Uint8Array(new SharedArrayBuffer(1 << 20))
  const copier = new native.Copier([io, store])
  io.fill(7, 0, 4096)
  const ops = Int32Array.from([
    ...op(1, 8192, 0, 0, 4096), // io[0..4096) -> store[8192..)
    ...op(0, 4096, 1, 8192, 4096), // and back into io's second page
    ...op(1, 8192, -1, 0, 1024), // zero the first 1 KiB of the copy in the store
    ...op(0, 0, 1, 8192, 2048), // io[0..2048) <- store: 1 KiB zeros, 1 KiB sevens
  ])
  copier.run(ops, 4)
  t.ok(io.subarray(4096, 8192).every((b) => b === 7), 'copied out and back')
  t.ok(store.subarray(8192, 9216).every((b) => b === 0) && store[9216] === 7, 'zero fill of a range')
  t.ok(io.subarray(0, 1024).every((b) => b === 0) && io.subarray(1024, 2048).every((b) => b === 7), 'later ops see earlier ones')
  t.equal(io[2048], 7, 'nothing past an op\'s bytes')
})

t.test('an op outside its buffers is refused, not performed; earlier ops are', async (t) => {
  const a = new Uint8Array(4096)
  const b = new Uint8Array(4096)
  const copier = new native.Copier([a, b])
  b.fill(1)
  const cases: [number[], RegExp][] = [
    [op(0, 4000, 1, 0, 200), /destination outside/],
    [op(1, 0, 0, 3000, 2000), /source outside/],
    [op(2, 0, 0, 0, 1), /destination outside/],
    [op(0, 0, 5, 0, 1), /source outside/],
    [op(0, 2 ** 32, 1, 0, 1), /destination outside/],
  ]
  for (const [bad, message] of cases) {
    t.throws(() => copier.run(Int32Array.from([...op(0, 0, 1, 0, 16), ...bad]), 2), { name: 'RangeError', message })
    t.ok(a.subarray(0, 16).every((x) => x === 1), 'the op before it ran')
    a.fill(0)
  }
  t.throws(() => copier.run(new Int32Array(7), 2), TypeError, 'count beyond the ops')
  t.throws(() => new native.Copier([new Uint16Array(4) as unknown as Uint8Array]), TypeError)
})

t.test('a bound buffer unmapped since is refused instead of written', async (t) => {
  const buffer = native.allocBuffer(native.pageSize)
  const copier = new native.Copier([new Uint8Array(buffer), new Uint8Array(16)])
  native.munmap(buffer)
  t.throws(() => copier.run(Int32Array.from(op(0, 0, 1, 0, 16)), 1), /detached/)
})

t.test('release zeroes a range: its whole pages go back to the kernel, its partial edge pages are cleared', async (t) => {
  const page = native.pageSize
  const bytes = 64 * 2 ** 20
  const store = new Uint8Array(new SharedArrayBuffer(bytes))
  native.noHugePages(store) // as the memory target's store: with huge pages little would be given back
  t.throws(() => native.noHugePages(new Uint16Array(4) as unknown as Uint8Array), TypeError)
  const copier = new native.Copier([new Uint8Array(16), store])
  const residentBytes = () => Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * page
  store.fill(1)
  const before = residentBytes()
  // From 100 bytes into page 1 to 100 bytes into the last page.
  const start = page + 100
  const end = bytes - page + 100
  copier.run(Int32Array.from(op(1, start, -2, 0, end - start)), 1)
  const freed = before - residentBytes()
  t.ok(freed > bytes - 4 * page - 2 ** 20, `${freed} bytes no longer resident`)
  t.ok(store.subarray(start, end).every((b) => b === 0), 'the whole range reads as zeros')
  t.ok(store.subarray(0, start).every((b) => b === 1), 'the bytes before it are kept, in its first page too')
  t.ok(store.subarray(end).every((b) => b === 1), 'the bytes after it are kept, in its last page too')
  copier.run(Int32Array.from([...op(1, 10, -2, 0, 20), ...op(1, page - 8, -2, 0, 16)]), 2)
  t.same([store[9], store[10], store[29], store[30]], [1, 0, 0, 1], 'a range within one page is cleared')
  t.same([store[page - 9], store[page - 8], store[page + 7], store[page + 8]], [1, 0, 0, 1], 'and one across two pages')
  t.throws(() => copier.run(Int32Array.from(op(1, bytes - 8, -2, 0, 16)), 1), /destination outside/)
})

t.test('a file endpoint: pwrite to it, pread from it, each op\'s result or -errno reported', async (t) => {
  const dir = fs.mkdtempSync('/tmp/ublkd-copier-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const fd = fs.openSync(`${dir}/data`, 'w+')
  t.teardown(() => fs.closeSync(fd))
  const memory = new Uint8Array(8192)
  memory.fill(5, 0, 4096)
  const copier = new native.Copier([fd, memory])
  const results = new Int32Array(3)
  // memory[0..4096) -> file at 2^32 + 512, back into memory[4096..), then a read past the end.
  const far = 2 ** 32 + 512
  copier.run(Int32Array.from([...op(0, far, 1, 0, 4096), ...op(1, 4096, 0, far, 4096), ...op(1, 0, 0, far + 4000, 200)]), 3, results)
  t.same([...results], [4096, 4096, 96], 'bytes done per op; a read stops at the end of the file')
  t.ok(memory.subarray(4096).every((b) => b === 5), 'the data went through the file')
  t.equal(fs.fstatSync(fd).size, far + 4096, 'written at the 64-bit offset')

  const readOnly = fs.openSync(`${dir}/data`, 'r')
  t.teardown(() => fs.closeSync(readOnly))
  const refusing = new native.Copier([readOnly, memory])
  refusing.run(Int32Array.from([...op(0, 0, 1, 0, 16), ...op(1, 0, 0, 0, 16)]), 2, results)
  t.same([results[0], results[1]], [-9, 16], 'a failed pwrite is -EBADF and the next op still runs')
  t.throws(() => refusing.run(Int32Array.from(op(0, 0, 1, 0, 16)), 1), { code: 'EBADF', syscall: 'pwrite' }, 'without results it throws')
  t.throws(() => copier.run(Int32Array.from(op(0, 0, 0, 0, 16)), 1), { name: 'RangeError' }, 'file to file is refused')
  t.throws(() => copier.run(Int32Array.from(op(0, 0, 1, 8000, 400)), 1), { name: 'RangeError' }, 'memory outside its buffer')
  t.throws(() => copier.run(Int32Array.from(op(0, 0, 1, 0, 16)), 1, new Int32Array(0)), TypeError, 'results too short')
  t.throws(() => new native.Copier([-1]), TypeError)
})
