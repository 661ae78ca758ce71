// Read-only view of a queue's mmap'd struct ublksrv_io_desc array (24 bytes = 6 words per tag):
//   word 0 op_flags (op = low 8 bits)   word 1 nr_sectors
//   words 2-3 start_sector (lo, hi)     words 4-5 addr (unused: we pass buffers on FETCH)
import { ublksrvIoDesc } from '../abi/structs.js'

export const kIoDescWords = ublksrvIoDesc.bytes / 4

export function descOp(descs: Uint32Array, tag: number): number {
  return descs[tag * kIoDescWords]! & 0xff
}

export function descFlags(descs: Uint32Array, tag: number): number {
  return descs[tag * kIoDescWords]! & ~0xff
}

export function descNrSectors(descs: Uint32Array, tag: number): number {
  return descs[tag * kIoDescWords + 1]!
}

export function descStartSector(descs: Uint32Array, tag: number): number {
  const base = tag * kIoDescWords
  return descs[base + 3]! * 0x1_0000_0000 + descs[base + 2]!
}

/** Bytes to mmap for one queue's descriptors: the driver insists on exactly this length. */
export function ioDescMapBytes(depth: number, pageSize: number): number {
  return Math.ceil((depth * ublksrvIoDesc.bytes) / pageSize) * pageSize
}

/** mmap offset of queue `queueId`'s descriptors: each queue has room for the maximum depth. */
export function ioDescMapOffset(queueId: number, pageSize: number, maxDepth: number): number {
  return queueId * ioDescMapBytes(maxDepth, pageSize)
}
