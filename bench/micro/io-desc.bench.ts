// Reading a request's struct ublksrv_io_desc from the mmap'd descriptor array, all four fields
// the queue loop reads per request (QueueLoop.serve).
import { descFlags, descNrSectors, descOp, descStartSector, kIoDescWords } from '../../src/queue-worker/io-desc.js'
import { sink, timeOps, type MicroBench } from './harness.js'

const kDepth = 128
const kOps = 1_000_000

// Realistic contents: reads and writes of 8 sectors, start sectors on both sides of 2^32.
const descs = new Uint32Array(kDepth * kIoDescWords)
for (let tag = 0; tag < kDepth; tag++) {
  const base = tag * kIoDescWords
  descs[base] = tag & 1
  descs[base + 1] = 8
  descs[base + 2] = (tag * 2654435761) >>> 0
  descs[base + 3] = tag & 3
}

export const benches: MicroBench[] = [{
  id: 'desc',
  run: () => [
    timeOps('decode io desc (op, flags, nr_sectors, start_sector)', kOps, () => {
      let acc = 0
      for (let i = 0; i < kOps; i++) {
        const tag = i & (kDepth - 1)
        acc += descOp(descs, tag) + descFlags(descs, tag) + descNrSectors(descs, tag) + descStartSector(descs, tag)
      }
      sink.value += acc
    }),
  ],
}]
