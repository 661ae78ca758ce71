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
  const { latencyBucketMicros, kLatencyBucketBoundsNs, kLatencyBuckets, batchBucket } = await import('../../src/common/stats-layout.js')
  t.equal(latencyBucketMicros(-5), 0, 'a clock step backwards counts as fastest')
  t.equal(latencyBucketMicros(0), 0)
  t.equal(latencyBucketMicros(1), 0)
  t.equal(latencyBucketMicros(2), 2, '2 us is the third bound')
  t.equal(latencyBucketMicros(3), 4, '3 us is above 2.83 us, at most 4 us')
  t.equal(latencyBucketMicros(181), 15, '181 us is at most 2^7.5 = 181.02 us')
  t.equal(latencyBucketMicros(182), 16)
  // Every whole number of µs up to 2^22 (past the last bound, 2^20) lands in the first bucket
  // whose bound holds it, or in the last bucket when none does.
  const boundsMicros = kLatencyBucketBoundsNs.map((ns) => ns / 1000)
  let expected = 0
  let wrong = 0
  for (let us = 1; us <= 2 ** 22; us++) {
    while (expected < boundsMicros.length && us > boundsMicros[expected]! * (1 + 1e-12)) expected++
    if (latencyBucketMicros(us) !== expected) wrong++
  }
  t.equal(wrong, 0, 'no µs value between 1 and 2^22 is misfiled')
  t.equal(latencyBucketMicros(0x7fffffff), kLatencyBuckets - 1, 'slower than every bound')
  t.equal(batchBucket(1), 0)
  t.equal(batchBucket(3), 2)
  t.equal(batchBucket(1e6), 11)
})

t.test('a writer that died mid-publish leaves the sequence odd; the next writer makes it even again', async (t) => {
  const slice = queueStatsView(allocQueueStats(1), 0)
  const dead = new QueueStatsWriter(slice)
  dead.values[0] = 7
  dead.publish()
  Atomics.add(slice.seq, 0, 1) // died between the two increments of its next publish
  t.equal(Atomics.load(slice.seq, 0) & 1, 1, 'odd: readers cannot trust the slice')
  const next = new QueueStatsWriter(slice)
  t.equal(next.values[0], 7, 'the next writer carries on from the last published counts')
  t.equal(Atomics.load(slice.seq, 0) & 1, 0, 'even again')
  next.values[0] = 8
  next.publish()
  t.equal(Atomics.load(slice.seq, 0) & 1, 0, 'and stays even after its publishes')
  t.equal(readQueueStats(slice)[0], 8)
})
