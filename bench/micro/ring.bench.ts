// A batch of NOPs through the real addon ring (native.Ring, set up like a queue ring: SQE128,
// SUBMIT_ALL, COOP_TASKRUN): stage 32 NOPs, enter(32, 32, 0), which submits them, waits for the
// 32 CQEs and copies them out. The time per NOP is the io_uring + JS/C++ crossing cost a request
// pays beyond its own work; the batch of 1 shows the fixed cost of one enter.
import { IORING_OP_NOP, IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SQE128, IORING_SETUP_SUBMIT_ALL, encodeSqeHeader } from '../../src/abi/io-uring.js'
import { native } from '../../src/native/addon.js'
import { sink, timeOps, type MicroBench, type MicroResult } from './harness.js'

function nopBatches(batch: number, batches: number): MicroResult {
  const ring = new native.Ring(64, 128, IORING_SETUP_SQE128 | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN)
  try {
    const sqes = new Uint32Array(ring.sqes)
    const result = timeOps(`NOP through the real ring, batch of ${batch} (per NOP)`, batch * batches, () => {
      let reaped = 0
      for (let b = 0; b < batches; b++) {
        for (let slot = 0; slot < batch; slot++) encodeSqeHeader(sqes, slot, IORING_OP_NOP, -1, slot, 0)
        reaped += ring.enter(batch, batch, 0)
      }
      if (reaped !== batch * batches) throw new Error(`reaped ${reaped} CQEs, expected ${batch * batches}`)
      sink.value += reaped
    }, { rounds: 7, warmupRounds: 2 })
    result.detail += ` NOPs; ${(result.value * batch / 1000).toFixed(2)} us per enter`
    return result
  } finally {
    ring.close()
  }
}

export const benches: MicroBench[] = [{
  id: 'ring',
  run: () => [nopBatches(32, 10_000), nopBatches(1, 100_000)],
}]
