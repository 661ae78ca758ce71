// Layouts, encoders and decoders for the ublk structs we exchange with the kernel, in Linux 7.3's
// layout. 7.3 extends 6.12's structs without moving a field: 6.12's pad0 in ublksrv_ctrl_dev_info
// is io_desc_size, and ublk_params gained dma, seg and integrity after its 112 bytes.
// Offsets are the kernel's (checked against the C header in test/addon/abi-layout.test.ts).
// A layout object is { bytes, <field>: offset, ... } (a part of a larger struct also has its
// `offset` in it); field names are the header's in camelCase.

import assert from 'node:assert/strict'

import {
  UBLK_AUTO_BUF_REG_F_MASK, UBLK_PARAM_TYPE_DEVT, UBLK_PARAM_TYPE_DISCARD, UBLK_PARAM_TYPE_DMA_ALIGN,
  UBLK_PARAM_TYPE_INTEGRITY, UBLK_PARAM_TYPE_SEGMENT, UBLK_PARAM_TYPE_ZONED,
} from './ublk-cmd.js'

/** How the codec reads and writes a field (little-endian). */
type FieldType = 'u8' | 'u16' | 'u32' | 's32' | 'u64'
/** A struct's fields: name -> [byte offset, type]. Padding and reserved fields are left out. */
type FieldSpecs = Readonly<Record<string, readonly [offset: number, type: FieldType]>>
type FieldValue<T extends FieldType> = T extends 'u64' ? bigint : number
/** A struct's values: u64 fields are bigints, the others numbers. */
type FieldValues<F extends FieldSpecs> = { [K in keyof F]: FieldValue<F[K][1]> }

function offsetsOf<const F extends FieldSpecs>(fields: F): { readonly [K in keyof F]: F[K][0] } {
  const offsets = Object.entries(fields).map(([name, [offset]]) => [name, offset])
  return Object.fromEntries(offsets) as { readonly [K in keyof F]: F[K][0] }
}

function writeFields<F extends FieldSpecs>(view: DataView, base: number, fields: F, values: FieldValues<F>): void {
  for (const name in fields) {
    const [offset, type] = fields[name]!
    const value = values[name]
    if (type === 'u64') view.setBigUint64(base + offset, value as bigint, true)
    else if (type === 'u32') view.setUint32(base + offset, value as number, true)
    else if (type === 's32') view.setInt32(base + offset, value as number, true)
    else if (type === 'u16') view.setUint16(base + offset, value as number, true)
    else view.setUint8(base + offset, value as number)
  }
}

function readFields<F extends FieldSpecs>(view: DataView, base: number, fields: F): FieldValues<F> {
  const values: Record<string, number | bigint> = {}
  for (const name in fields) {
    const [offset, type] = fields[name]!
    if (type === 'u64') values[name] = view.getBigUint64(base + offset, true)
    else if (type === 'u32') values[name] = view.getUint32(base + offset, true)
    else if (type === 's32') values[name] = view.getInt32(base + offset, true)
    else if (type === 'u16') values[name] = view.getUint16(base + offset, true)
    else values[name] = view.getUint8(base + offset)
  }
  return values as FieldValues<F>
}

function zero(view: DataView, offset: number, bytes: number): void {
  for (let i = 0; i < bytes; i++) view.setUint8(offset + i, 0)
}

/** struct ublksrv_ctrl_cmd: the payload of every control command (32 bytes). */
export const ublksrvCtrlCmd = {
  bytes: 32, devId: 0, queueId: 4, len: 6, addr: 8, data: 16, devPathLen: 24,
} as const

const devInfoFields = {
  nrHwQueues: [0, 'u16'], queueDepth: [2, 'u16'], state: [4, 'u16'], ioDescSize: [6, 'u16'],
  maxIoBufBytes: [8, 'u32'], devId: [12, 'u32'], ublksrvPid: [16, 's32'], flags: [24, 'u64'],
  ublksrvFlags: [32, 'u64'], ownerUid: [40, 'u32'], ownerGid: [44, 'u32'],
} as const satisfies FieldSpecs

/** struct ublksrv_ctrl_dev_info (64 bytes). io_desc_size @6 was 6.12's pad0. */
export const ublksrvCtrlDevInfo = { bytes: 64, ...offsetsOf(devInfoFields) } as const

/** struct ublk_params: the header, then one part per UBLK_PARAM_TYPE_* bit. */
const paramParts = {
  basic: {
    offset: 8, bytes: 32,
    fields: {
      attrs: [0, 'u32'], logicalBsShift: [4, 'u8'], physicalBsShift: [5, 'u8'], ioOptShift: [6, 'u8'],
      ioMinShift: [7, 'u8'], maxSectors: [8, 'u32'], chunkSectors: [12, 'u32'], devSectors: [16, 'u64'],
      virtBoundaryMask: [24, 'u64'],
    },
  },
  discard: {
    offset: 40, bytes: 20,
    fields: {
      discardAlignment: [0, 'u32'], discardGranularity: [4, 'u32'], maxDiscardSectors: [8, 'u32'],
      maxWriteZeroesSectors: [12, 'u32'], maxDiscardSegments: [16, 'u16'],
    },
  },
  devt: {
    offset: 60, bytes: 16,
    fields: { charMajor: [0, 'u32'], charMinor: [4, 'u32'], diskMajor: [8, 'u32'], diskMinor: [12, 'u32'] },
  },
  zoned: {
    offset: 76, bytes: 32,
    fields: { maxOpenZones: [0, 'u32'], maxActiveZones: [4, 'u32'], maxZoneAppendSectors: [8, 'u32'] },
  },
  // Past 6.12's 112 bytes: DMA_ALIGN (by 6.15), SEGMENT (by 6.16), INTEGRITY (7.0). A 6.12 kernel
  // copies only the first 112 bytes and clears these type bits.
  dma: { offset: 108, bytes: 8, fields: { alignment: [0, 'u32'] } },
  seg: {
    offset: 120, bytes: 16,
    fields: { segBoundaryMask: [0, 'u64'], maxSegmentSize: [8, 'u32'], maxSegments: [12, 'u16'] },
  },
  integrity: {
    offset: 136, bytes: 16,
    fields: {
      flags: [0, 'u32'], maxIntegritySegments: [4, 'u16'], intervalExp: [6, 'u8'], metadataSize: [7, 'u8'],
      piOffset: [8, 'u8'], csumType: [9, 'u8'], tagSize: [10, 'u8'],
    },
  },
} as const satisfies Record<string, { offset: number, bytes: number, fields: FieldSpecs }>

type ParamPartName = keyof typeof paramParts
type ParamPart<N extends ParamPartName> = FieldValues<(typeof paramParts)[N]['fields']>

/** The type bit that marks each optional part valid. */
const paramTypeBits: Readonly<Record<Exclude<ParamPartName, 'basic'>, number>> = {
  discard: UBLK_PARAM_TYPE_DISCARD,
  devt: UBLK_PARAM_TYPE_DEVT,
  zoned: UBLK_PARAM_TYPE_ZONED,
  dma: UBLK_PARAM_TYPE_DMA_ALIGN,
  seg: UBLK_PARAM_TYPE_SEGMENT,
  integrity: UBLK_PARAM_TYPE_INTEGRITY,
}

function partLayout<N extends ParamPartName>(name: N) {
  const part = paramParts[name]
  return { offset: part.offset, bytes: part.bytes, ...offsetsOf(part.fields) }
}

/**
 * struct ublk_params (152 bytes; 112 in 6.12). SET_PARAMS and GET_PARAMS send `len` = bytes: each
 * driver clamps a longer len to its own sizeof and copies that much (ublk_drv.c in 7.3:
 * ublk_ctrl_get_params and ublk_ctrl_set_params; the same clamp is in 6.12), so 152 suits both.
 */
export const ublkParams = {
  bytes: 152, len: 0, types: 4,
  basic: partLayout('basic'),
  discard: partLayout('discard'),
  devt: partLayout('devt'),
  zoned: partLayout('zoned'),
  dma: partLayout('dma'),
  seg: partLayout('seg'),
  integrity: partLayout('integrity'),
} as const

/** struct ublksrv_io_desc (24 bytes), one per tag in the mmap'd descriptor array (the stride is
 *  dev_info.io_desc_size instead under UBLK_F_IO_DESC_SIZE). nr_zones shares nr_sectors' place. */
export const ublksrvIoDesc = {
  bytes: 24, opFlags: 0, nrSectors: 4, nrZones: 4, startSector: 8, addr: 16,
} as const

/** struct ublksrv_io_cmd (16 bytes): the payload of the per-tag I/O commands. zone_append_lba
 *  shares addr's place (the LBA a ZONE_APPEND landed at, on commit). */
export const ublksrvIoCmd = { bytes: 16, qId: 0, tag: 2, result: 4, addr: 8, zoneAppendLba: 8 } as const

/** struct ublk_auto_buf_reg (8 bytes): never in memory, packed into sqe->addr by
 *  ublkAutoBufRegToSqeAddr (byte offset N is bit 8N there). */
export const ublkAutoBufReg = { bytes: 8, index: 0, flags: 2, reserved0: 3, reserved1: 4 } as const

/** struct ublk_elem_header (8 bytes): one element of a BATCH_IO PREP/COMMIT buffer, followed by
 *  buf_addr (UBLK_BATCH_F_HAS_BUF_ADDR) and zone_lba (UBLK_BATCH_F_HAS_ZONE_LBA), u64 each. */
export const ublkElemHeader = { bytes: 8, tag: 0, bufIndex: 2, result: 4 } as const

/** struct ublk_batch_io (16 bytes): the payload of PREP/COMMIT/FETCH_IO_CMDS. */
export const ublkBatchIo = {
  bytes: 16, qId: 0, flags: 2, nrElem: 4, elemBytes: 6, reserved: 7, reserved2: 8,
} as const

/** struct ublk_shmem_buf_reg (24 bytes): what ctrl_cmd.addr points at for REG_BUF. */
export const ublkShmemBufReg = { bytes: 24, addr: 0, len: 8, flags: 16, reserved: 20 } as const

export interface CtrlCmd {
  devId: number
  queueId: number
  len: number
  addr: bigint
  data0: bigint
}

/** Write a ublksrv_ctrl_cmd at byte `offset` of `view` (the SQE's command area). */
export function encodeCtrlCmd(view: DataView, offset: number, cmd: CtrlCmd): void {
  const c = ublksrvCtrlCmd
  zero(view, offset, c.bytes)
  view.setUint32(offset + c.devId, cmd.devId, true)
  view.setUint16(offset + c.queueId, cmd.queueId, true)
  view.setUint16(offset + c.len, cmd.len, true)
  view.setBigUint64(offset + c.addr, cmd.addr, true)
  view.setBigUint64(offset + c.data, cmd.data0, true)
}

/**
 * struct ublksrv_ctrl_dev_info's fields. ioDescSize matters only with UBLK_F_IO_DESC_SIZE (the
 * descriptor stride, 24..256, a multiple of 8); left out it is sent as 0, as 6.12's pad0 was.
 * A 7.3 kernel reports 24 there for a device without the flag, a 6.12 kernel 0.
 */
export type DevInfo = Omit<FieldValues<typeof devInfoFields>, 'ioDescSize'> & { ioDescSize?: number }

export function encodeDevInfo(view: DataView, info: DevInfo): void {
  zero(view, 0, ublksrvCtrlDevInfo.bytes)
  writeFields(view, 0, devInfoFields, { ...info, ioDescSize: info.ioDescSize ?? 0 })
}

export function decodeDevInfo(view: DataView): DevInfo {
  return readFields(view, 0, devInfoFields)
}

export type BasicParams = ParamPart<'basic'>
export type DiscardParams = ParamPart<'discard'>
export type DevtParams = ParamPart<'devt'>
export type ZonedParams = ParamPart<'zoned'>
export type DmaAlignParams = ParamPart<'dma'>
export type SegmentParams = ParamPart<'seg'>
/** flags are LBMD_PI_CAP_*, csumType an LBMD_PI_CSUM_* (linux/fs.h). */
export type IntegrityParams = ParamPart<'integrity'>

/** struct ublk_params as values: basic always, each other part when present. */
export interface Params {
  types: number
  basic: BasicParams
  discard?: DiscardParams
  /** Read-only: GET_PARAMS fills it in, SET_PARAMS with UBLK_PARAM_TYPE_DEVT is -EINVAL. */
  devt?: DevtParams
  zoned?: ZonedParams
  dma?: DmaAlignParams
  seg?: SegmentParams
  integrity?: IntegrityParams
}

/** Encode `params` with `types` as its types field: every part present is written, and the
 *  kernel reads those whose bit `types` has. */
export function encodeParams(view: DataView, params: Params, types: number): void {
  const p = ublkParams
  zero(view, 0, p.bytes)
  view.setUint32(p.len, p.bytes, true)
  view.setUint32(p.types, types, true)
  for (const name of Object.keys(paramParts) as ParamPartName[]) {
    const values = params[name]
    // The cast only forgets which part `name` is: values is that same part's.
    if (values) writeFields(view, paramParts[name].offset, paramParts[name].fields as FieldSpecs, values)
  }
}

/** Decode basic, and every other part whose bit the types field has. */
export function decodeParams(view: DataView): Params {
  const types = view.getUint32(ublkParams.types, true)
  const params: Params = { types, basic: readFields(view, paramParts.basic.offset, paramParts.basic.fields) }
  for (const name of Object.keys(paramTypeBits) as (keyof typeof paramTypeBits)[]) {
    if (!(types & paramTypeBits[name])) continue
    // As in encodeParams, the cast only forgets which part `name` is.
    const part = paramParts[name]
    Object.assign(params, { [name]: readFields(view, part.offset, part.fields as FieldSpecs) })
  }
  return params
}

/**
 * ublk_auto_buf_reg_to_sqe_addr(): sqe->addr of a FETCH_REQ or COMMIT_AND_FETCH_REQ under
 * UBLK_F_AUTO_BUF_REG, naming the slot of the ring's sparse buffer table the kernel registers the
 * request's buffer in. The reserved fields must be zero, so the value is a number (bits 0-23).
 */
export function ublkAutoBufRegToSqeAddr(index: number, flags: number): number {
  assert(Number.isInteger(index) && index >= 0 && index <= 0xffff, `buffer index ${index} is not a u16`)
  assert(Number.isInteger(flags) && (flags & ~UBLK_AUTO_BUF_REG_F_MASK) === 0, `auto_buf_reg flags ${flags}`)
  return index | (flags << (8 * ublkAutoBufReg.flags))
}

/** Decode a cpu bitmap (GET_QUEUE_AFFINITY) into CPU numbers. */
export function decodeCpuMask(bytes: Uint8Array): number[] {
  const cpus: number[] = []
  for (let byte = 0; byte < bytes.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      if (bytes[byte]! & (1 << bit)) cpus.push(byte * 8 + bit)
    }
  }
  return cpus
}
