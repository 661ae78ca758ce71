// The daemon's one TCP listener: Prometheus metrics at /metrics, the live status page at / and
// its data at /status.json. Read-only: the control API never listens on TCP.
import http from 'node:http'

import { messageOf } from '../common/errors.js'
import type { Logger } from '../common/log.js'
import { kLatencyBucketBoundsNs, type StatName } from '../common/stats-layout.js'
import type { DeviceState } from './device.js'
import type { ListenAddress } from './listen-address.js'
import { createMetricsRegistry, type MetricsSource } from './metrics.js'
import { statusPageHtml } from './status-page.js'

const kStatusSampleMs = 1000

interface StatusSample {
  time: number
  devices: { name: string, target: string, state: DeviceState, sizeBytes: number, queues: Record<StatName, number>[] }[]
}

export function listenMetrics(address: ListenAddress, source: MetricsSource, log: Logger): Promise<http.Server> {
  const registry = createMetricsRegistry(source)
  const devices = source.devices
  const statusSample = (): StatusSample => ({
    time: Date.now(),
    devices: devices().map((device) => {
      const summary = device.summary()
      return {
        name: `ublkb${device.id}`, target: summary.target, state: summary.state,
        sizeBytes: summary.sizeBytes, queues: summary.queueStats ?? [],
      }
    }),
  })
  // /status.json carries a sample 1-2 s old beside the current one, so that a page shows rates at
  // its first poll, and rates do not depend on how far apart the page's polls are.
  let reference: StatusSample | null = null
  let newest: StatusSample | null = null
  const sampler = setInterval(() => {
    reference = newest
    newest = statusSample()
  }, kStatusSampleMs).unref()
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { Allow: 'GET, HEAD' }).end()
      return
    }
    const path = (request.url ?? '/').split('?')[0]
    if (path === '/metrics') {
      registry.metrics().then((text) => {
        response.writeHead(200, { 'Content-Type': registry.contentType }).end(text)
      }, (error: unknown) => {
        log.error({ err: messageOf(error) }, 'metrics collection failed')
        response.writeHead(500).end()
      })
    } else if (path === '/status.json') {
      const status = { ...statusSample(), pid: process.pid, latencyBoundsNs: kLatencyBucketBoundsNs, previous: reference }
      response.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }).end(JSON.stringify(status))
    } else if (path === '/') {
      response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(statusPageHtml)
    } else {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: try /metrics or /\n')
    }
  })
  server.on('close', () => clearInterval(sampler))
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(address.port, address.host, () => {
      server.off('error', reject)
      // A failed accept (EMFILE, ...) loses that scrape, never the daemon.
      server.on('error', (error) => log.error({ err: messageOf(error) }, 'metrics listener: accept failed'))
      resolve(server)
    })
  })
}
