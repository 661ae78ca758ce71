// The statistics the queue loop keeps: QueueStatsWriter.publish (once per loop turn, every turn
// by default), and the per-request pieces: two performance.now() (arrival and commit) and the
// latency-histogram bucket.
import { QueueStatsWriter, allocQueueStats, batchBucket, kStatCqes, latencyBucket, queueStatsView } from '../../src/common/stats-layout.js'
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
      timeOps('performance.now() (twice per request)', kOps, () => {
        let acc = 0
        for (let i = 0; i < kOps; i++) acc += performance.now()
        sink.value += acc > 0 ? 1 : 0
      }),
      timeOps('latencyBucket + batchBucket', kOps, () => {
        let acc = 0
        for (let i = 0; i < kOps; i++) acc += latencyBucket(1000 + (i & 0xffff) * 37) + batchBucket(i & 63)
        sink.value += acc
      }),
    ]
  },
}]
