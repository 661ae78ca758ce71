// Rates from two readings of a queue's counters, for `ublkd stats --watch`.
import { ioOps, kLatencyBucketBoundsNs, type StatName } from '../common/stats-layout.js'

export type QueueCounters = Record<StatName, number>

export interface QueueRates {
  iops: number
  mibPerSecond: number
  /** p99 service time over the interval in µs (upper bucket bound), or null without requests. */
  p99Us: number | null
}

function total(counters: QueueCounters, field: 'ops' | 'errors'): number {
  return ioOps.reduce((sum, op) => sum + counters[`${op}_${field}`], 0)
}

export function totalOps(counters: QueueCounters): number {
  return total(counters, 'ops')
}

export function totalErrors(counters: QueueCounters): number {
  return total(counters, 'errors')
}

export function queueRates(now: QueueCounters, before: QueueCounters, seconds: number): QueueRates {
  const ops = totalOps(now) - totalOps(before)
  const bytes = now.read_bytes + now.write_bytes - before.read_bytes - before.write_bytes
  const counts = Array.from({ length: kLatencyBucketBoundsNs.length + 1 }, (_, i) => {
    const name = `latency_bucket_${i}` as StatName
    return now[name] - before[name]
  })
  const requests = counts.reduce((a, b) => a + b, 0)
  let p99Us: number | null = null
  if (requests > 0) {
    let seen = 0
    p99Us = Infinity
    for (let i = 0; i < kLatencyBucketBoundsNs.length; i++) {
      seen += counts[i]!
      if (seen >= 0.99 * requests) {
        p99Us = kLatencyBucketBoundsNs[i]! / 1000
        break
      }
    }
  }
  return { iops: ops / seconds, mibPerSecond: bytes / seconds / 2 ** 20, p99Us }
}
