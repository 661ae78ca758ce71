// Encoders and decoders for the ublk structs we exchange with the kernel. Offsets are the
// kernel's (checked against the C header in test/addon/abi-layout.test.ts).

import { UBLK_PARAM_TYPE_DEVT, UBLK_PARAM_TYPE_DISCARD } from './ublk-cmd.js'

/** struct ublksrv_ctrl_cmd: the payload of every control command (32 bytes). */
export const ublksrvCtrlCmd = { bytes: 32, devId: 0, queueId: 4, len: 6, addr: 8, data: 16 } as const

/** struct ublksrv_ctrl_dev_info (64 bytes). */
export const ublksrvCtrlDevInfo = {
  bytes: 64, nrHwQueues: 0, queueDepth: 2, state: 4, maxIoBufBytes: 8, devId: 12, ublksrvPid: 16,
  flags: 24, ublksrvFlags: 32, ownerUid: 40, ownerGid: 44,
} as const

/** struct ublk_params (152 bytes; 112 in 6.12) with its basic (@8), discard (@40) and devt (@60) parts. */
export const ublkParams = {
  bytes: 152, len: 0, types: 4,
  basic: {
    offset: 8, bytes: 32, attrs: 0, logicalBsShift: 4, physicalBsShift: 5, ioOptShift: 6,
    ioMinShift: 7, maxSectors: 8, chunkSectors: 12, devSectors: 16, virtBoundaryMask: 24,
  },
  discard: {
    offset: 40, bytes: 20, discardAlignment: 0, discardGranularity: 4, maxDiscardSectors: 8,
    maxWriteZeroesSectors: 12, maxDiscardSegments: 16,
  },
  devt: { offset: 60, bytes: 16, charMajor: 0, charMinor: 4, diskMajor: 8, diskMinor: 12 },
} as const

/** struct ublksrv_io_desc (24 bytes), one per tag in the mmap'd descriptor array. */
export const ublksrvIoDesc = { bytes: 24, opFlags: 0, nrSectors: 4, startSector: 8, addr: 16 } as const

/** struct ublksrv_io_cmd (16 bytes): the payload of FETCH_REQ / COMMIT_AND_FETCH_REQ. */
export const ublksrvIoCmd = { bytes: 16, qId: 0, tag: 2, result: 4, addr: 8 } as const

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
  for (let i = 0; i < c.bytes; i++) view.setUint8(offset + i, 0)
  view.setUint32(offset + c.devId, cmd.devId, true)
  view.setUint16(offset + c.queueId, cmd.queueId, true)
  view.setUint16(offset + c.len, cmd.len, true)
  view.setBigUint64(offset + c.addr, cmd.addr, true)
  view.setBigUint64(offset + c.data, cmd.data0, true)
}

export interface DevInfo {
  nrHwQueues: number
  queueDepth: number
  state: number
  maxIoBufBytes: number
  devId: number
  ublksrvPid: number
  flags: bigint
  ublksrvFlags: bigint
  ownerUid: number
  ownerGid: number
}

export function encodeDevInfo(view: DataView, info: DevInfo): void {
  const d = ublksrvCtrlDevInfo
  for (let i = 0; i < d.bytes; i++) view.setUint8(i, 0)
  view.setUint16(d.nrHwQueues, info.nrHwQueues, true)
  view.setUint16(d.queueDepth, info.queueDepth, true)
  view.setUint16(d.state, info.state, true)
  view.setUint32(d.maxIoBufBytes, info.maxIoBufBytes, true)
  view.setUint32(d.devId, info.devId, true)
  view.setInt32(d.ublksrvPid, info.ublksrvPid, true)
  view.setBigUint64(d.flags, info.flags, true)
  view.setBigUint64(d.ublksrvFlags, info.ublksrvFlags, true)
  view.setUint32(d.ownerUid, info.ownerUid, true)
  view.setUint32(d.ownerGid, info.ownerGid, true)
}

export function decodeDevInfo(view: DataView): DevInfo {
  const d = ublksrvCtrlDevInfo
  return {
    nrHwQueues: view.getUint16(d.nrHwQueues, true),
    queueDepth: view.getUint16(d.queueDepth, true),
    state: view.getUint16(d.state, true),
    maxIoBufBytes: view.getUint32(d.maxIoBufBytes, true),
    devId: view.getUint32(d.devId, true),
    ublksrvPid: view.getInt32(d.ublksrvPid, true),
    flags: view.getBigUint64(d.flags, true),
    ublksrvFlags: view.getBigUint64(d.ublksrvFlags, true),
    ownerUid: view.getUint32(d.ownerUid, true),
    ownerGid: view.getUint32(d.ownerGid, true),
  }
}

export interface BasicParams {
  attrs: number
  logicalBsShift: number
  physicalBsShift: number
  ioOptShift: number
  ioMinShift: number
  maxSectors: number
  chunkSectors: number
  devSectors: bigint
  virtBoundaryMask: bigint
}

export interface DiscardParams {
  discardAlignment: number
  discardGranularity: number
  maxDiscardSectors: number
  maxWriteZeroesSectors: number
  maxDiscardSegments: number
}

export interface DevtParams {
  charMajor: number
  charMinor: number
  diskMajor: number
  diskMinor: number
}

export interface Params {
  types: number
  basic: BasicParams
  discard?: DiscardParams
  devt?: DevtParams
}

export function encodeParams(view: DataView, params: Params, types: number): void {
  const p = ublkParams
  for (let i = 0; i < p.bytes; i++) view.setUint8(i, 0)
  view.setUint32(p.len, p.bytes, true)
  view.setUint32(p.types, types, true)
  const b = p.basic
  const basic = params.basic
  view.setUint32(b.offset + b.attrs, basic.attrs, true)
  view.setUint8(b.offset + b.logicalBsShift, basic.logicalBsShift)
  view.setUint8(b.offset + b.physicalBsShift, basic.physicalBsShift)
  view.setUint8(b.offset + b.ioOptShift, basic.ioOptShift)
  view.setUint8(b.offset + b.ioMinShift, basic.ioMinShift)
  view.setUint32(b.offset + b.maxSectors, basic.maxSectors, true)
  view.setUint32(b.offset + b.chunkSectors, basic.chunkSectors, true)
  view.setBigUint64(b.offset + b.devSectors, basic.devSectors, true)
  view.setBigUint64(b.offset + b.virtBoundaryMask, basic.virtBoundaryMask, true)
  if (params.discard) {
    const d = p.discard
    const discard = params.discard
    view.setUint32(d.offset + d.discardAlignment, discard.discardAlignment, true)
    view.setUint32(d.offset + d.discardGranularity, discard.discardGranularity, true)
    view.setUint32(d.offset + d.maxDiscardSectors, discard.maxDiscardSectors, true)
    view.setUint32(d.offset + d.maxWriteZeroesSectors, discard.maxWriteZeroesSectors, true)
    view.setUint16(d.offset + d.maxDiscardSegments, discard.maxDiscardSegments, true)
  }
}

export function decodeParams(view: DataView): Params {
  const p = ublkParams
  const b = p.basic
  const d = p.discard
  const t = p.devt
  const types = view.getUint32(p.types, true)
  const params: Params = {
    types,
    basic: {
      attrs: view.getUint32(b.offset + b.attrs, true),
      logicalBsShift: view.getUint8(b.offset + b.logicalBsShift),
      physicalBsShift: view.getUint8(b.offset + b.physicalBsShift),
      ioOptShift: view.getUint8(b.offset + b.ioOptShift),
      ioMinShift: view.getUint8(b.offset + b.ioMinShift),
      maxSectors: view.getUint32(b.offset + b.maxSectors, true),
      chunkSectors: view.getUint32(b.offset + b.chunkSectors, true),
      devSectors: view.getBigUint64(b.offset + b.devSectors, true),
      virtBoundaryMask: view.getBigUint64(b.offset + b.virtBoundaryMask, true),
    },
  }
  if (types & UBLK_PARAM_TYPE_DISCARD) {
    params.discard = {
      discardAlignment: view.getUint32(d.offset + d.discardAlignment, true),
      discardGranularity: view.getUint32(d.offset + d.discardGranularity, true),
      maxDiscardSectors: view.getUint32(d.offset + d.maxDiscardSectors, true),
      maxWriteZeroesSectors: view.getUint32(d.offset + d.maxWriteZeroesSectors, true),
      maxDiscardSegments: view.getUint16(d.offset + d.maxDiscardSegments, true),
    }
  }
  if (types & UBLK_PARAM_TYPE_DEVT) {
    params.devt = {
      charMajor: view.getUint32(t.offset + t.charMajor, true),
      charMinor: view.getUint32(t.offset + t.charMinor, true),
      diskMajor: view.getUint32(t.offset + t.diskMajor, true),
      diskMinor: view.getUint32(t.offset + t.diskMinor, true),
    }
  }
  return params
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
