// A target's geometry as struct ublk_params: the zero-copy limits become DMA_ALIGN and SEGMENT
// params in zero-copy mode only, within what ublk_drv accepts.
import t from 'tap'

import {
  UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DISCARD, UBLK_PARAM_TYPE_DMA_ALIGN, UBLK_PARAM_TYPE_SEGMENT,
} from '../../src/abi/ublk-cmd.js'
import { paramsFromGeometry } from '../../src/main/device.js'
import type { DeviceGeometry } from '../../src/targets/target.js'

const geometry: DeviceGeometry = {
  sizeBytes: 1 << 30, logicalBlockSize: 512, physicalBlockSize: 4096, readOnly: false, volatileCache: true, fua: true,
  discard: { granularityBytes: 4096, maxDiscardSectors: 1 << 20, maxWriteZeroesSectors: 1 << 20 },
  zeroCopyLimits: { dmaAlignmentBytes: 512, segments: { maxSegments: 128, maxSegmentBytes: 65536 } },
}

t.test('copy and user-copy: the kernel\'s defaults stand, whatever the backing asks of zero copy', async (t) => {
  for (const mode of ['copy', 'user-copy'] as const) {
    const params = paramsFromGeometry(geometry, 512 * 1024, mode)
    t.equal(params.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD, mode)
    t.equal(params.dma, undefined)
    t.equal(params.seg, undefined)
  }
})

t.test('zero copy: the backing\'s DMA alignment as a mask, its segment limits, no segment boundary', async (t) => {
  const params = paramsFromGeometry(geometry, 512 * 1024, 'zero-copy')
  t.equal(params.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD | UBLK_PARAM_TYPE_DMA_ALIGN | UBLK_PARAM_TYPE_SEGMENT)
  t.same(params.dma, { alignment: 511 })
  t.same(params.seg, { segBoundaryMask: 0xffffffffn, maxSegmentSize: 65536, maxSegments: 128 })
})

t.test('zero copy: limits are kept within what ublk_drv validates', async (t) => {
  const params = paramsFromGeometry({
    ...geometry,
    zeroCopyLimits: { dmaAlignmentBytes: 8192, segments: { maxSegments: 100_000, maxSegmentBytes: 512 } },
  }, 512 * 1024, 'zero-copy')
  t.same(params.dma, { alignment: 4095 }, 'a mask below the page size')
  t.same(params.seg, { segBoundaryMask: 0xffffffffn, maxSegmentSize: 4096, maxSegments: 0xffff },
    'segments of at least UBLK_MIN_SEGMENT_SIZE, a count that fits max_segments\' u16')
})

t.test('zero copy without known segment limits (a file on a filesystem without a block queue): DMA_ALIGN only', async (t) => {
  const params = paramsFromGeometry({ ...geometry, zeroCopyLimits: { dmaAlignmentBytes: 4 } }, 512 * 1024, 'zero-copy')
  t.equal(params.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD | UBLK_PARAM_TYPE_DMA_ALIGN)
  t.same(params.dma, { alignment: 3 })
  const none = paramsFromGeometry({ ...geometry, zeroCopyLimits: undefined }, 512 * 1024, 'zero-copy')
  t.equal(none.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD, 'a buffered backing: no limits')
})
