import t from 'tap'

import {
  QueueStatsWriter, allocQueueStats, kSeqWord, kStatCount, queueStatsView, readQueueStats,
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
  Atomics.store(view, kSeqWord, 1)
  t.equal(readQueueStats(view).length, kStatCount)
})
