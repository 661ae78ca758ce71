import t from 'tap'

import {
  UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../../src/abi/ublk-cmd.js'
import { findTarget } from '../../src/targets/registry.js'
import type { IoRequest, QueueContext } from '../../src/targets/target.js'

const queue: QueueContext = {
  queueId: 0, depth: 4, maxIoBufBytes: 65536, tagAddressLo: new Uint32Array(4), tagAddressHi: new Uint32Array(4),
  sqes: new Uint32Array(32 * 8), reserveSqe: () => 0, complete: () => {},
}

function request(op: number, startSector: number, nrSectors: number, buffer: Buffer, tag = 0): IoRequest {
  return { tag, op, flags: 0, startSector, nrSectors, buffer }
}

t.test('memory: data written reads back, across a chunk boundary too', async (t) => {
  const target = findTarget('memory')
  const setup = target.setup(target.parseOptions({ size: '3G' }, 512))
  t.equal((setup.spec as { chunks: unknown[] }).chunks.length, 3)
  const handler = target.openQueue(setup.spec, queue)
  const data = Buffer.alloc(65536)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff
  const straddling = 2 ** 30 / 512 - 8 // 4 KiB before the first chunk ends
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE, straddling, 128, data)), 65536)
  const back = Buffer.alloc(65536, 0xaa)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, straddling, 128, back)), 65536)
  t.ok(back.equals(data), 'read returns what was written')
})

t.test('memory: never-written ranges are zeros; discard and write-zeroes zero; flush is ok', async (t) => {
  const target = findTarget('memory')
  const setup = target.setup(target.parseOptions({ size: '1M' }, 512))
  const handler = target.openQueue(setup.spec, queue)
  const buffer = Buffer.alloc(4096, 0x55)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, 100, 8, buffer)), 4096)
  t.ok(buffer.equals(Buffer.alloc(4096)), 'zeros')
  handler.handleIo(request(UBLK_IO_OP_WRITE, 0, 8, Buffer.alloc(4096, 1)))
  handler.handleIo(request(UBLK_IO_OP_WRITE, 8, 8, Buffer.alloc(4096, 2)))
  t.equal(handler.handleIo(request(UBLK_IO_OP_DISCARD, 0, 8, buffer)), 0)
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE_ZEROES, 8, 8, buffer)), 0)
  t.equal(handler.handleIo(request(UBLK_IO_OP_FLUSH, 0, 0, buffer)), 0)
  const back = Buffer.alloc(8192, 9)
  handler.handleIo(request(UBLK_IO_OP_READ, 0, 16, back))
  t.ok(back.equals(Buffer.alloc(8192)), 'both ranges read as zeros')
})

t.test('null: reads return zeros even after a write used the same tag buffer', async (t) => {
  const target = findTarget('null')
  const setup = target.setup(target.parseOptions({}, 512))
  const handler = target.openQueue(setup.spec, queue)
  const buffer = Buffer.alloc(8192, 0x77)
  t.equal(handler.handleIo(request(UBLK_IO_OP_WRITE, 0, 16, buffer, 2)), 8192)
  t.equal(handler.handleIo(request(UBLK_IO_OP_READ, 0, 16, buffer, 2)), 8192)
  t.ok(buffer.equals(Buffer.alloc(8192)))
  t.equal(handler.handleIo(request(UBLK_IO_OP_FLUSH, 0, 0, buffer, 2)), 0)
})
