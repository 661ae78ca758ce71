// The daemon: one long-running process hosting every device. Owns /dev/ublk-control, serves the
// control API on a unix socket, and on SIGTERM/SIGINT stops and deletes every device, then
// exits 0 (a second signal exits at once with 1).
import fs from 'node:fs'
import type http from 'node:http'
import type net from 'node:net'

import { UblkdError, UsageError, messageOf } from '../common/errors.js'
import { createLogger, type LogLevel, type Logger } from '../common/log.js'
import { callDaemon } from './api-client.js'
import type { ApiReply, ApiRequest } from './api-protocol.js'
import { listenApi } from './api-server.js'
import { UblkControl } from './control.js'
import { Device } from './device.js'
import { parseDeviceRequest } from './device-request.js'
import { listenMetrics, type ListenAddress } from './metrics-server.js'
import { socketPath } from './paths.js'

export interface DaemonOptions {
  stateDir: string
  logLevel: LogLevel
  /** Where to serve /metrics and the status page; null for nowhere. */
  metrics: ListenAddress | null
}

class Daemon {
  private readonly devices = new Map<number, Device>()
  /** Ids being added, so two adds of the same -n do not race into the kernel. */
  private readonly adding = new Set<number>()
  private readonly exclusiveKeys = new Map<string, number>()
  private server: net.Server | null = null
  private metricsServer: http.Server | null = null
  private stopping = false

  constructor(private readonly control: UblkControl, private readonly log: Logger, private readonly logLevel: LogLevel) {}

  async handle(request: ApiRequest): Promise<ApiReply> {
    if (this.stopping) throw new UblkdError('UBLKD_ERR_DAEMON', 'the daemon is shutting down')
    switch (request.op) {
      case 'ping':
        return { ok: true, pid: process.pid }
      case 'list':
        return { ok: true, devices: [...this.devices.values()].map((device) => device.summary()) }
      case 'add':
        return { ok: true, device: (await this.add(request.device)).summary() }
      case 'del':
        return { ok: true, deleted: await this.del(request) }
    }
  }

  private async add(raw: Record<string, unknown>): Promise<Device> {
    const request = parseDeviceRequest(raw)
    if (request.id !== undefined) {
      if (this.devices.has(request.id) || this.adding.has(request.id)) {
        throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `device ${request.id} already exists`)
      }
      this.adding.add(request.id)
    }
    try {
      const device = await Device.create(request, {
        control: this.control, log: this.log, logLevel: this.logLevel, exclusiveKeys: this.exclusiveKeys,
      })
      device.onFailure = (failed) => {
        void this.remove(failed)
      }
      this.devices.set(device.id, device)
      return device
    } finally {
      if (request.id !== undefined) this.adding.delete(request.id)
    }
  }

  private async del(request: { id?: number; all?: boolean }): Promise<number[]> {
    if (request.all === true) {
      const all = [...this.devices.values()]
      await Promise.all(all.map((device) => this.remove(device)))
      return all.map((device) => device.id)
    }
    if (typeof request.id !== 'number' || !Number.isInteger(request.id) || request.id < 0) {
      throw new UsageError('del needs a device id (-n ID) or --all')
    }
    const device = this.devices.get(request.id)
    if (!device) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no device ${request.id} in this daemon`)
    await this.remove(device)
    return [device.id]
  }

  private async remove(device: Device): Promise<void> {
    await device.delete()
    this.devices.delete(device.id)
  }

  async listen(socket: string): Promise<void> {
    this.server = await listenApi(socket, (request) => this.handle(request), this.log)
  }

  async serveMetrics(address: ListenAddress): Promise<void> {
    try {
      this.metricsServer = await listenMetrics(address, () => [...this.devices.values()], this.log)
    } catch (error) {
      throw new UblkdError('UBLKD_ERR_DAEMON', `cannot serve metrics on ${address.host}:${address.port}: ` +
        `${messageOf(error)} (choose another with --metrics HOST:PORT, or --metrics off)`)
    }
  }

  /** Stop taking requests, delete every device, release the control channel. */
  async shutdown(): Promise<void> {
    this.stopping = true
    this.server?.close()
    this.metricsServer?.close()
    await Promise.all([...this.devices.values()].map((device) =>
      this.remove(device).catch((error: unknown) => {
        this.log.error({ devId: device.id, err: messageOf(error) }, 'device did not stop cleanly')
      })))
    this.control.close()
  }
}

/** Refuse to start next to a live daemon; clear a socket left by a dead one. */
async function claimSocket(socket: string): Promise<void> {
  if (!fs.existsSync(socket)) return
  try {
    const reply = await callDaemon(socket, { op: 'ping' }, 2000)
    const pid = reply.ok ? reply.pid : undefined
    throw new UblkdError('UBLKD_ERR_DAEMON', `a daemon already listens on ${socket} (pid ${pid ?? '?'})`)
  } catch (error) {
    if (error instanceof UblkdError) throw error
    fs.unlinkSync(socket)
  }
}

export async function runDaemon(options: DaemonOptions): Promise<void> {
  const log = createLogger(options.logLevel, { role: 'daemon' })
  fs.mkdirSync(options.stateDir, { recursive: true, mode: 0o700 })
  fs.chmodSync(options.stateDir, 0o700)
  const socket = socketPath(options.stateDir)
  await claimSocket(socket)
  const control = UblkControl.open()
  const daemon = new Daemon(control, log, options.logLevel)
  try {
    if (options.metrics) await daemon.serveMetrics(options.metrics)
    await daemon.listen(socket)
  } catch (error) {
    await daemon.shutdown()
    throw error
  }

  let signalled = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      log.error({ signal }, 'second signal: exiting without finishing the shutdown')
      process.exit(1)
    }
    signalled = true
    log.info({ signal }, 'shutting down')
    daemon.shutdown().then(() => {
      log.info('all devices stopped, exiting')
      process.exit(0)
    }, (error: unknown) => {
      log.error({ err: messageOf(error) }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  log.info({ socket, stateDir: options.stateDir,
    metrics: options.metrics ? `${options.metrics.host}:${options.metrics.port}` : 'off' }, 'daemon ready')
}
