import t from 'tap'

import {
  decodeCpuMask, decodeDevInfo, decodeParams, encodeCtrlCmd, encodeDevInfo, encodeParams,
  ublkParams, type DevInfo, type Params,
} from '../../src/abi/structs.js'
import { UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DISCARD } from '../../src/abi/ublk-cmd.js'

t.test('dev_info round-trips through its 64-byte encoding', async (t) => {
  const info: DevInfo = {
    nrHwQueues: 2, queueDepth: 128, state: 1, maxIoBufBytes: 524288, devId: 7, ublksrvPid: -1,
    flags: 0x42n, ublksrvFlags: 0xdeadbeefcafen, ownerUid: 1000, ownerGid: 100,
  }
  const view = new DataView(new ArrayBuffer(64))
  encodeDevInfo(view, info)
  t.same(decodeDevInfo(view), info)
  t.equal(view.getUint16(2, true), 128, 'queue_depth at byte 2')
  t.equal(view.getUint32(12, true), 7, 'dev_id at byte 12')
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
