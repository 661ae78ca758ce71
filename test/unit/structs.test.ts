import t from 'tap'

import {
  decodeCpuMask, decodeDevInfo, decodeParams, encodeCtrlCmd, encodeDevInfo, encodeParams,
  ublkAutoBufRegToSqeAddr, ublkParams, type DevInfo, type Params,
} from '../../src/abi/structs.js'
import {
  UBLK_AUTO_BUF_REG_FALLBACK, UBLK_F_IO_DESC_SIZE, UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DEVT,
  UBLK_PARAM_TYPE_DISCARD, UBLK_PARAM_TYPE_DMA_ALIGN, UBLK_PARAM_TYPE_INTEGRITY, UBLK_PARAM_TYPE_SEGMENT,
  UBLK_PARAM_TYPE_ZONED,
} from '../../src/abi/ublk-cmd.js'

const devInfo612: DevInfo = {
  nrHwQueues: 2, queueDepth: 128, state: 1, maxIoBufBytes: 524288, devId: 7, ublksrvPid: -1,
  flags: 0x42n, ublksrvFlags: 0xdeadbeefcafen, ownerUid: 1000, ownerGid: 100,
}

t.test('dev_info round-trips through its 64-byte encoding', async (t) => {
  const info: DevInfo = { ...devInfo612, flags: UBLK_F_IO_DESC_SIZE, ioDescSize: 64 }
  const view = new DataView(new ArrayBuffer(64))
  encodeDevInfo(view, info)
  t.same(decodeDevInfo(view), info)
  t.equal(view.getUint16(2, true), 128, 'queue_depth at byte 2')
  t.equal(view.getUint16(6, true), 64, 'io_desc_size at byte 6')
  t.equal(view.getUint32(12, true), 7, 'dev_id at byte 12')
})

t.test('dev_info without ioDescSize sends 0 there, as 6.12 sent pad0', async (t) => {
  const view = new DataView(new ArrayBuffer(64))
  for (let i = 0; i < 64; i++) view.setUint8(i, 0xff)
  encodeDevInfo(view, devInfo612)
  t.equal(view.getUint16(6, true), 0)
  t.same(decodeDevInfo(view), { ...devInfo612, ioDescSize: 0 })
})

t.test('params round-trip with basic and discard parts', async (t) => {
  const params: Params = {
    types: UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD,
    basic: {
      attrs: 4, logicalBsShift: 12, physicalBsShift: 12, ioOptShift: 12, ioMinShift: 12,
      maxSectors: 1024, chunkSectors: 0, devSectors: 2n ** 40n, virtBoundaryMask: 0n,
    },
    discard: {
      discardAlignment: 0, discardGranularity: 4096, maxDiscardSectors: 1 << 20,
      maxWriteZeroesSectors: 1 << 20, maxDiscardSegments: 1,
    },
  }
  const view = new DataView(new ArrayBuffer(ublkParams.bytes))
  encodeParams(view, params, params.types)
  t.equal(view.getUint32(0, true), 152, 'len is the whole 7.3 struct')
  t.equal(view.getUint8(8 + 4), 12, 'logical_bs_shift at basic+4')
  t.same(decodeParams(view), params)
})

t.test('params round-trip with every settable 7.3 part, each at its header offset', async (t) => {
  const params: Params = {
    types: UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_ZONED | UBLK_PARAM_TYPE_DMA_ALIGN |
      UBLK_PARAM_TYPE_SEGMENT | UBLK_PARAM_TYPE_INTEGRITY,
    basic: {
      attrs: 0, logicalBsShift: 9, physicalBsShift: 12, ioOptShift: 0, ioMinShift: 0,
      maxSectors: 256, chunkSectors: 1 << 16, devSectors: 1n << 30n, virtBoundaryMask: 0xfffn,
    },
    zoned: { maxOpenZones: 14, maxActiveZones: 15, maxZoneAppendSectors: 256 },
    dma: { alignment: 511 },
    seg: { segBoundaryMask: 0xffff_ffffn, maxSegmentSize: 1 << 16, maxSegments: 128 },
    integrity: {
      flags: 3, maxIntegritySegments: 0, intervalExp: 9, metadataSize: 8, piOffset: 0, csumType: 2,
      tagSize: 2,
    },
  }
  const view = new DataView(new ArrayBuffer(ublkParams.bytes))
  encodeParams(view, params, params.types)
  t.same(decodeParams(view), params)
  t.equal(view.getUint32(76 + 4, true), 15, 'zoned.max_active_zones at 80')
  t.equal(view.getUint32(108, true), 511, 'dma.alignment at 108')
  t.equal(view.getBigUint64(120, true), 0xffff_ffffn, 'seg.seg_boundary_mask at 120 (8-aligned)')
  t.equal(view.getUint16(120 + 12, true), 128, 'seg.max_segments at 132')
  t.equal(view.getUint8(136 + 7), 8, 'integrity.metadata_size at 143')
  t.equal(view.getUint8(136 + 10), 2, 'integrity.tag_size at 146')
})

t.test('params decode only the parts their types field names', async (t) => {
  const view = new DataView(new ArrayBuffer(ublkParams.bytes))
  for (let i = 0; i < ublkParams.bytes; i++) view.setUint8(i, 1)
  view.setUint32(ublkParams.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DEVT, true)
  const params = decodeParams(view)
  t.same(Object.keys(params).sort(), ['basic', 'devt', 'types'])
  t.equal(params.devt?.diskMinor, 0x01010101)
})

t.test('auto_buf_reg packs index in bits 0-15 and flags in 16-23 of sqe->addr', async (t) => {
  t.equal(ublkAutoBufRegToSqeAddr(0, 0), 0)
  t.equal(ublkAutoBufRegToSqeAddr(0xffff, 0), 0xffff)
  t.equal(ublkAutoBufRegToSqeAddr(3, UBLK_AUTO_BUF_REG_FALLBACK), 0x1_0003)
  t.throws(() => ublkAutoBufRegToSqeAddr(0x1_0000, 0), /not a u16/)
  t.throws(() => ublkAutoBufRegToSqeAddr(1, 2), /flags 2/)
})

t.test('a control command lands at the given offset and zeroes the rest', async (t) => {
  const view = new DataView(new ArrayBuffer(128))
  for (let i = 0; i < 128; i++) view.setUint8(i, 0xff)
  encodeCtrlCmd(view, 48, { devId: 3, queueId: 0xffff, len: 64, addr: 0x1234_5678_9abcn, data0: 99n })
  t.equal(view.getUint32(48, true), 3)
  t.equal(view.getUint16(52, true), 0xffff)
  t.equal(view.getUint16(54, true), 64)
  t.equal(view.getBigUint64(56, true), 0x1234_5678_9abcn)
  t.equal(view.getBigUint64(64, true), 99n)
  t.equal(view.getBigUint64(72, true), 0n, 'dev_path_len and reserved are zero')
  t.equal(view.getUint8(47), 0xff, 'bytes before the payload untouched')
})

t.test('cpu masks decode to cpu numbers', async (t) => {
  t.same(decodeCpuMask(new Uint8Array([0b101, 0, 0b1000_0000])), [0, 2, 23])
  t.same(decodeCpuMask(new Uint8Array(8)), [])
})
