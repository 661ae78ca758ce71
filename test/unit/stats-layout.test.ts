import t from 'tap'

import {
  QueueStatsWriter, allocQueueStats, kStatCount, queueStatsView, readQueueStats,
  statIndex,
} from '../../src/common/stats-layout.js'

t.test('published values read back exactly, beyond 32 bits', async (t) => {
  const shared = allocQueueStats(2)
  const writer = new QueueStatsWriter(queueStatsView(shared, 1))
  writer.values[statIndex('read_bytes')] = 2 ** 52 + 12345
  writer.values[statIndex('inflight')] = 3
  writer.publish()
  const values = readQueueStats(queueStatsView(shared, 1))
  t.equal(values[statIndex('read_bytes')], 2 ** 52 + 12345)
  t.equal(values[statIndex('inflight')], 3)
  t.equal(readQueueStats(queueStatsView(shared, 0))[statIndex('inflight')], 0, 'queues do not overlap')
})

t.test('a reader does not spin forever on a writer that died mid-publish', async (t) => {
  const view = queueStatsView(allocQueueStats(1), 0)
  Atomics.store(view.seq, 0, 1)
  t.equal(readQueueStats(view).length, kStatCount)
})

t.test('latency buckets grow by sqrt(2) from 1 us and clamp both ends', async (t) => {
  const { latencyBucket, kLatencyBucketBoundsNs, kLatencyBuckets, batchBucket } = await import('../../src/common/stats-layout.js')
  t.equal(latencyBucket(0), 0)
  t.equal(latencyBucket(1000), 0)
  t.equal(latencyBucket(1001), 1)
  t.equal(latencyBucket(2000), 2)
  for (let i = 0; i < kLatencyBucketBoundsNs.length; i++) {
    t.equal(latencyBucket(kLatencyBucketBoundsNs[i]!), i, `bound ${i} falls in its own bucket`)
  }
  t.equal(latencyBucket(1e12), kLatencyBuckets - 1, 'slower than every bound')
  t.equal(batchBucket(1), 0)
  t.equal(batchBucket(3), 2)
  t.equal(batchBucket(1e6), 11)
})
