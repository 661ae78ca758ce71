// The Prometheus exposition built from shared queue stats, and the catalog in metrics/README.md.
import fs from 'node:fs'

import t from 'tap'

import {
  QueueStatsWriter, allocQueueStats, kStatLatencyFirstBucket, kStatLatencySumNs, latencyBucketMicros,
  queueStatsView, readQueueStats, statIndex,
} from '../../src/common/stats-layout.js'
import type { Device } from '../../src/main/device.js'
import { createMetricsRegistry, metricDefinitions } from '../../src/main/metrics.js'

function fakeDevice(): Device {
  const stats = allocQueueStats(2)
  const writer = new QueueStatsWriter(queueStatsView(stats, 1))
  writer.values[statIndex('write_ops')] = 3
  writer.values[statIndex('write_bytes')] = 12288
  writer.values[statIndex('inflight')] = 1
  writer.values[kStatLatencyFirstBucket + latencyBucketMicros(2)] = 2 // 2 µs -> le 2 µs bucket
  writer.values[kStatLatencyFirstBucket + latencyBucketMicros(3e6)] = 1 // slower than every bound
  writer.values[kStatLatencySumNs] = 3e9 + 3000
  writer.publish()
  const device = {
    id: 4,
    summary: () => ({ uuid: '5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b', target: 'memory', state: 'LIVE', ioMode: 'user-copy', sizeBytes: 2 ** 20, depth: 64, recoveries: 2 }),
    queueStatValues: () => [0, 1].map((queue) => readQueueStats(queueStatsView(stats, queue))),
  }
  return device as unknown as Device
}

t.test('queue counters, gauges and a cumulative histogram are exported with device/queue/op labels', async (t) => {
  const registry = createMetricsRegistry({ devices: () => [fakeDevice()], devicesFailed: () => 3 })
  const text = await registry.metrics()
  t.match(text, 'ublkd_io_ops_total{device="ublkb4",queue="1",op="write"} 3')
  t.match(text, 'ublkd_io_bytes_total{device="ublkb4",queue="1",op="write"} 12288')
  t.notMatch(text, /ublkd_io_bytes_total\{[^}]*op="flush"/, 'bytes only for read and write')
  t.match(text, 'ublkd_io_inflight{device="ublkb4",queue="1"} 1')
  t.match(text, 'ublkd_io_service_seconds_bucket{device="ublkb4",queue="1",le="0.000001"} 0')
  t.match(text, 'ublkd_io_service_seconds_bucket{device="ublkb4",queue="1",le="0.000002"} 2')
  t.match(text, 'ublkd_io_service_seconds_bucket{device="ublkb4",queue="1",le="+Inf"} 3')
  t.match(text, 'ublkd_io_service_seconds_count{device="ublkb4",queue="1"} 3')
  t.match(text, /ublkd_io_service_seconds_sum\{device="ublkb4",queue="1"\} 3\.000003/)
  t.match(text, 'ublkd_device_size_bytes{device="ublkb4",target="memory"} 1048576')
  t.match(text, 'ublkd_device_info{device="ublkb4",target="memory",state="LIVE",uuid="5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b",io_mode="user-copy"} 1')
  t.match(text, 'ublkd_devices 1')
  t.match(text, 'ublkd_device_recoveries_total{device="ublkb4"} 2')
  t.match(text, 'ublkd_devices_failed_total 3')
  t.match(text, /ublkd_process_resident_memory_bytes \d+/, 'process metrics')
})

t.test('every exported metric is in the catalog, and the catalog lists nothing else', async (t) => {
  const catalog = fs.readFileSync(new URL('../../metrics/README.md', import.meta.url), 'utf8')
  const listed = [...catalog.matchAll(/^\| `(ublkd_[a-z_]+)` \|/gm)].map((match) => match[1])
  t.same(listed.sort(), metricDefinitions.map((definition) => definition.name).sort())
})
