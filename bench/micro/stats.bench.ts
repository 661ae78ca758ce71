// The statistics the queue loop keeps: QueueStatsWriter.publish (once per loop turn, every turn
// by default), the latency-histogram bucket (once per run of requests that arrived together)
// and the batch bucket (once per turn). performance.now() is timed for comparison: the loop
// reads no clock of its own (the ring stamps each enter).
import { QueueStatsWriter, allocQueueStats, batchBucket, kStatCqes, latencyBucketMicros, queueStatsView } from '../../src/common/stats-layout.js'
import { sink, timeOps, type MicroBench } from './harness.js'

const kPublishes = 200_000
const kOps = 1_000_000

export const benches: MicroBench[] = [{
  id: 'stats',
  run: () => {
    const writer = new QueueStatsWriter(queueStatsView(allocQueueStats(2), 1))
    return [
      timeOps('QueueStatsWriter.publish (per loop turn)', kPublishes, () => {
        for (let i = 0; i < kPublishes; i++) {
          writer.values[kStatCqes]! += 25
          writer.publish()
        }
      }),
      timeOps('performance.now() (not on the hot path)', kOps, () => {
        let acc = 0
        for (let i = 0; i < kOps; i++) acc += performance.now()
        sink.value += acc > 0 ? 1 : 0
      }),
      timeOps('latencyBucketMicros + batchBucket', kOps, () => {
        let acc = 0
        for (let i = 0; i < kOps; i++) acc += latencyBucketMicros(1 + (i & 0xffff) * 37) + batchBucket(i & 63)
        sink.value += acc
      }),
    ]
  },
}]
