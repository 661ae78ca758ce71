// Prometheus metrics of the daemon. Values are read from the queues' shared stats at scrape
// time (collect on demand), so exporting costs the I/O path nothing. Every ublkd_* metric is a
// small custom collector: the registry only needs {name, help, type, get()}.
// metrics/README.md is the catalog; test/unit/metrics.test.ts keeps the two in step.
import { Registry, collectDefaultMetrics, type Metric } from 'prom-client'

import {
  ioOps, kBatchBucketBounds, kLatencyBucketBoundsNs, kStatBatchFirstBucket, kStatCqes,
  kStatHeartbeatMs, kStatInflight, kStatLatencyFirstBucket, kStatLatencySumNs, kStatLoopTurns,
  opStatIndex,
} from '../common/stats-layout.js'
import type { Device } from './device.js'

type Labels = Record<string, string>
interface Sample {
  value: number
  labels: Labels
  metricName?: string
}
type MetricType = 'counter' | 'gauge' | 'histogram'

export interface MetricDefinition {
  name: string
  help: string
  type: MetricType
  labels: readonly string[]
}

/** What the metrics are read from. */
export interface MetricsSource {
  devices(): Device[]
  /** Devices removed because a queue died without recovery. */
  devicesFailed(): number
}

/** One consistent read of a device for a scrape. */
interface DeviceView {
  name: string
  uuid: string | null
  recoveries: number
  target: string
  state: string
  ioMode: string
  sizeBytes: number
  depth: number
  queues: Float64Array[]
}

// A scrape asks every collector in turn; they share one read of the shared stats.
const kSnapshotMaxAgeMs = 100

export const metricDefinitions: readonly MetricDefinition[] = [
  { name: 'ublkd_io_ops_total', type: 'counter', labels: ['device', 'queue', 'op'], help: 'Requests served, by request type.' },
  { name: 'ublkd_io_bytes_total', type: 'counter', labels: ['device', 'queue', 'op'], help: 'Bytes read or written by requests (read and write only).' },
  { name: 'ublkd_io_errors_total', type: 'counter', labels: ['device', 'queue', 'op'], help: 'Requests completed with an error.' },
  { name: 'ublkd_io_inflight', type: 'gauge', labels: ['device', 'queue'], help: 'Requests taken from the kernel and not completed yet.' },
  { name: 'ublkd_io_service_seconds', type: 'histogram', labels: ['device', 'queue'], help: 'Daemon-side service time: from the loop turn that reaped a request to the io_uring_enter that hands its commit to the kernel.' },
  { name: 'ublkd_queue_loop_turns_total', type: 'counter', labels: ['device', 'queue'], help: 'Turns of the queue loop (one io_uring_enter each).' },
  { name: 'ublkd_queue_cqes_total', type: 'counter', labels: ['device', 'queue'], help: 'Completions handled by the queue loop.' },
  { name: 'ublkd_queue_batch_cqes', type: 'histogram', labels: ['device', 'queue'], help: 'Completions handled per loop turn that had any.' },
  { name: 'ublkd_queue_heartbeat_age_seconds', type: 'gauge', labels: ['device', 'queue'], help: 'Time since the queue loop last refreshed its heartbeat (every 100 ms at most while turning; it turns at least twice a second).' },
  { name: 'ublkd_device_size_bytes', type: 'gauge', labels: ['device', 'target'], help: 'Device size.' },
  { name: 'ublkd_device_queues', type: 'gauge', labels: ['device'], help: 'Hardware queues of the device.' },
  { name: 'ublkd_device_depth', type: 'gauge', labels: ['device'], help: 'Queue depth of the device.' },
  { name: 'ublkd_device_live', type: 'gauge', labels: ['device'], help: '1 while the device is LIVE, else 0.' },
  { name: 'ublkd_device_info', type: 'gauge', labels: ['device', 'target', 'state', 'uuid', 'io_mode'], help: 'Always 1; the labels describe the device (uuid: empty for a device re-attached from a record older than identities; io_mode: copy or user-copy).' },
  { name: 'ublkd_device_recoveries_total', type: 'counter', labels: ['device'], help: 'Times the device was healed in-process or re-attached after a daemon death.' },
  { name: 'ublkd_devices', type: 'gauge', labels: [], help: 'Devices hosted by the daemon.' },
  { name: 'ublkd_devices_failed_total', type: 'counter', labels: [], help: 'Devices removed because a queue died and they had no recovery.' },
]

/** Cumulative histogram samples (`_bucket` with `le`, `_sum`, `_count`) from per-bucket counts. */
function histogramSamples(name: string, labels: Labels, counts: ArrayLike<number>, bounds: readonly number[],
  scale: number, sum: number): Sample[] {
  const samples: Sample[] = []
  let cumulative = 0
  for (let i = 0; i <= bounds.length; i++) {
    cumulative += counts[i]!
    // Rounded so that 1 µs reads 0.000001, not 0.0000010000000000000002.
    const le = i < bounds.length ? String(Number((bounds[i]! * scale).toPrecision(6))) : '+Inf'
    samples.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: cumulative })
  }
  samples.push({ metricName: `${name}_sum`, labels, value: sum })
  samples.push({ metricName: `${name}_count`, labels, value: cumulative })
  return samples
}

function samplesOf(name: string, views: DeviceView[], source: MetricsSource): Sample[] {
  const samples: Sample[] = []
  const now = Date.now()
  if (name === 'ublkd_devices') return [{ labels: {}, value: views.length }]
  if (name === 'ublkd_devices_failed_total') return [{ labels: {}, value: source.devicesFailed() }]
  for (const view of views) {
    const { name: deviceName, queues } = view
    switch (name) {
      case 'ublkd_device_size_bytes':
        samples.push({ labels: { device: deviceName, target: view.target }, value: view.sizeBytes })
        continue
      case 'ublkd_device_queues':
        samples.push({ labels: { device: deviceName }, value: queues.length })
        continue
      case 'ublkd_device_depth':
        samples.push({ labels: { device: deviceName }, value: view.depth })
        continue
      case 'ublkd_device_live':
        samples.push({ labels: { device: deviceName }, value: view.state === 'LIVE' ? 1 : 0 })
        continue
      case 'ublkd_device_info':
        samples.push({ labels: { device: deviceName, target: view.target, state: view.state, uuid: view.uuid ?? '', io_mode: view.ioMode }, value: 1 })
        continue
      case 'ublkd_device_recoveries_total':
        samples.push({ labels: { device: deviceName }, value: view.recoveries })
        continue
    }
    queues.forEach((values, queue) => {
      const labels = { device: deviceName, queue: String(queue) }
      switch (name) {
        case 'ublkd_io_ops_total':
        case 'ublkd_io_bytes_total':
        case 'ublkd_io_errors_total': {
          const field = name === 'ublkd_io_ops_total' ? 0 : name === 'ublkd_io_bytes_total' ? 1 : 2
          ioOps.forEach((op, index) => {
            if (field === 1 && op !== 'read' && op !== 'write') return
            samples.push({ labels: { ...labels, op }, value: values[opStatIndex(index, field)]! })
          })
          break
        }
        case 'ublkd_io_inflight':
          samples.push({ labels, value: values[kStatInflight]! })
          break
        case 'ublkd_queue_loop_turns_total':
          samples.push({ labels, value: values[kStatLoopTurns]! })
          break
        case 'ublkd_queue_cqes_total':
          samples.push({ labels, value: values[kStatCqes]! })
          break
        case 'ublkd_queue_heartbeat_age_seconds':
          samples.push({ labels, value: values[kStatHeartbeatMs]! > 0 ? (now - values[kStatHeartbeatMs]!) / 1000 : 0 })
          break
        case 'ublkd_io_service_seconds':
          samples.push(...histogramSamples(name, labels, values.subarray(kStatLatencyFirstBucket),
            kLatencyBucketBoundsNs, 1e-9, values[kStatLatencySumNs]! / 1e9))
          break
        case 'ublkd_queue_batch_cqes':
          samples.push(...histogramSamples(name, labels, values.subarray(kStatBatchFirstBucket),
            kBatchBucketBounds, 1, values[kStatCqes]!))
          break
      }
    })
  }
  return samples
}

function collectorHeader(definition: MetricDefinition) {
  return { name: definition.name, help: definition.help, type: definition.type }
}

/** A registry with the process metrics and every ublkd_* metric, read from `devices()`. */
export function createMetricsRegistry(source: MetricsSource): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'ublkd_' })
  let snapshot: DeviceView[] = []
  let snapshotMs = 0
  const views = (): DeviceView[] => {
    if (Date.now() - snapshotMs > kSnapshotMaxAgeMs) {
      snapshot = source.devices().map((device) => {
        const { uuid, target, state, ioMode, sizeBytes, depth, recoveries } = device.summary({ withStats: false })
        return { name: `ublkb${device.id}`, uuid, target, state, ioMode, sizeBytes, depth, recoveries, queues: device.queueStatValues() }
      })
      snapshotMs = Date.now()
    }
    return snapshot
  }
  for (const definition of metricDefinitions) {
    const collector = {
      name: definition.name,
      help: definition.help,
      type: definition.type,
      get: () => ({ ...collectorHeader(definition), values: samplesOf(definition.name, views(), source) }),
    }
    // prom-client types registerMetric for its own classes; the registry itself needs only this.
    registry.registerMetric(collector as unknown as Metric)
  }
  return registry
}
