import t from 'tap'

import { statNames, type StatName } from '../../src/common/stats-layout.js'
import { queueRates } from '../../src/main/stats-view.js'

function counters(values: Partial<Record<StatName, number>>): Record<StatName, number> {
  return Object.fromEntries(statNames.map((name) => [name, values[name] ?? 0])) as Record<StatName, number>
}

t.test('rates and p99 over an interval come from counter deltas', async (t) => {
  const before = counters({ read_ops: 100, read_bytes: 409600, latency_bucket_3: 100 })
  const now = counters({
    read_ops: 300, write_ops: 100, read_bytes: 409600 + 200 * 4096, write_bytes: 100 * 4096,
    latency_bucket_3: 100 + 297, latency_bucket_10: 3,
  })
  const rates = queueRates(now, before, 2)
  t.equal(rates.iops, 150)
  t.equal(rates.mibPerSecond, (300 * 4096) / 2 / 2 ** 20)
  t.equal(rates.p99Us, 2 ** 1.5, '297 of 300 within bucket 3 (2.83 us) is exactly 99%')
  t.equal(queueRates(now, now, 1).p99Us, null, 'no requests, no p99')
})
