// The daemon: one long-running process hosting every device. Owns /dev/ublk-control, serves the
// control API on a unix socket, and on SIGTERM/SIGINT stops and deletes every device, then
// exits 0 (a second signal exits at once with 1).
import fs from 'node:fs'
import type http from 'node:http'
import os from 'node:os'
import type net from 'node:net'

import { UBLK_F_SAFE_STOP_DEV } from '../abi/ublk-cmd.js'
import { KernelError, UblkdError, UsageError, messageOf } from '../common/errors.js'
import { waitForExit } from '../common/process-exit.js'
import { parseSize } from '../common/size.js'
import { createLogger, type Logger } from '../common/log.js'
import type { LogLevel } from '../common/log-level.js'
import { callDaemon } from './api-client.js'
import type { ApiReply, ApiRequest } from './api-protocol.js'
import { listenApi } from './api-server.js'
import { UblkControl } from './control.js'
import { Device, type BackingClaim, type DeviceDeps } from './device.js'
import type { Config } from './config.js'
import { parseDeviceRequest, type DeviceRequest } from './device-request.js'
import { diskUsers, everyUser } from './disk-users.js'
import { planReconcile, type ReconcilePlan, type RunningDevice } from './reconcile.js'
import { ServiceNotifier, serveNotifier } from './service-notify.js'
import type { ListenAddress } from './listen-address.js'
import { listenMetrics } from './metrics-server.js'
import { keepUblkMountsOut, ownMountNamespace } from './mount-namespace.js'
import { socketPath } from './paths.js'
import { describeOrphan, listOrphans } from './orphans.js'
import { sendStop, stopIfIdle, type StopCommand } from './safe-stop.js'
import { StateStore, type DeviceRecord } from './state-store.js'

const kShutdownTimeoutMs = 60_000

export interface ReloadResult {
  added: string[]
  removed: string[]
  resized: string[]
  unchanged: string[]
  /** At start: the devices that could not be applied, with why (a reload refuses instead). */
  failed: string[]
}

export interface RunningConfig {
  file: string | null
  daemon: Record<string, unknown>
  devices: Record<string, unknown>[]
  addedByHand: Record<string, unknown>[]
}

/** A running device as reconcile sees it, with the Device to act on. */
type Running = RunningDevice & { device: Device }

export interface DaemonOptions {
  stateDir: string
  logLevel: LogLevel
  /** Where to serve /metrics and the status page; null for nowhere. */
  metrics: ListenAddress | null
  /** How often a busy queue publishes its counters, µs (--stats-publish-us). */
  statsPublishMicros: number
  /** On SIGTERM/SIGINT, leave devices created with --recovery for the next daemon to re-attach. */
  keepDevicesOnExit: boolean
  /** Deadline of every control command (--kernel-timeout). */
  kernelTimeoutMs: number
  /** The configuration file (--config), as read at start; null: devices only by hand. */
  config: Config | null
  /** --take-over: start up, then have the daemon of the state dir hand its devices over (an
   *  upgrade: the devices pause only while this one attaches them, not while it starts). */
  takeOver: boolean
}

class Daemon {
  private readonly devices = new Map<number, Device>()
  /** Ids being added, so two adds of the same -n do not race into the kernel. */
  private readonly adding = new Set<number>()
  /** UUIDs given with --uuid by adds in progress (the devices' own are in this.devices). */
  private readonly addingUuids = new Set<string>()
  /** Adds in progress: a shutdown waits for them, then stops their devices too. */
  private readonly pendingAdds = new Set<Promise<unknown>>()
  private readonly exclusiveKeys = new Map<string, BackingClaim>()
  /** See DeviceDeps.arriving. */
  private readonly arriving = new Set<number>()
  private server: net.Server | null = null
  private metricsServer: http.Server | null = null
  private stopping = false
  private reloading = false
  /** Told when a reload starts and ends (the service manager's RELOADING=1, READY=1). */
  onReloading: (reloading: boolean) => void = () => {}
  /** Every device was handed over (ublkd upgrade): exit once the reply is out. */
  private handedOver = false
  private socket: string | null = null
  /** How the next daemon is started by `ublkd upgrade`: this one's arguments and directory. */
  private readonly restart = { argv: process.argv.slice(2).filter((arg) => arg !== '--take-over'), cwd: process.cwd() }
  /** Devices removed because a queue died and they had no recovery (ublkd_devices_failed_total). */
  devicesFailed = 0

  constructor(
    private readonly control: UblkControl,
    private readonly log: Logger,
    private readonly logLevel: LogLevel,
    private readonly store: StateStore,
    private readonly statsPublishMicros: number,
    private readonly kernelFeatures: bigint,
    private config: Config | null,
    /** What `config dump` shows as the daemon's options (the effective ones). */
    private readonly daemonOptions: Record<string, unknown>,
  ) {}

  private get configFile(): string | null {
    return this.config?.file ?? null
  }

  private deps(): DeviceDeps {
    return {
      control: this.control, log: this.log, logLevel: this.logLevel, exclusiveKeys: this.exclusiveKeys, arriving: this.arriving,
      store: this.store, statsPublishMicros: this.statsPublishMicros, kernelFeatures: this.kernelFeatures,
    }
  }

  private adopt(device: Device): Device {
    device.onFailure = (failed) => {
      this.devicesFailed++
      void this.remove(failed)
    }
    this.devices.set(device.id, device)
    return device
  }

  /**
   * Re-attach the devices a previous daemon left (state dir records). Records of devices the
   * kernel no longer has are dropped; devices that can never be re-attached (a RAM disk, no
   * recovery) are stopped and deleted so their I/O fails instead of hanging. Any other failure
   * (a backing file gone, a timeout) leaves the device QUIESCED and its record in place for
   * `ublkd recover -n ID` once the cause is fixed.
   */
  async reattachAll(): Promise<void> {
    const { records, broken } = this.store.list()
    for (const name of broken) this.log.warn({ file: name }, 'unreadable device record ignored')
    // In parallel: after an upgrade every device waits for this, and its queue threads' start
    // is most of each one's share.
    await Promise.all(records.filter((record) => !this.devices.has(record.id)).map(async (record) => {
      try {
        await this.attach(record)
      } catch (error) {
        if (error instanceof KernelError && error.errno === -19) {
          this.log.info({ devId: record.id }, 'device of a previous daemon is gone; record dropped')
          this.store.remove(record.id)
        } else if (error instanceof UblkdError && error.code === 'UBLKD_ERR_NOT_RECOVERABLE') {
          await this.dropDevice(record.id, error)
        } else if (error instanceof UblkdError && error.code === 'UBLKD_ERR_IDENTITY') {
          // Someone else's device now has the id: it is left alone, the stale record goes.
          this.log.error({ devId: record.id, err: error.message }, 'record of a device the kernel no longer has dropped')
          this.store.remove(record.id)
        } else {
          this.log.error({ devId: record.id, err: messageOf(error) }, 'cannot re-attach device now; retry with ublkd recover')
        }
      }
    }))
  }

  private async attach(record: DeviceRecord): Promise<Device> {
    this.arriving.add(record.id)
    try {
      return this.adopt(await Device.attach(record, this.deps()))
    } finally {
      this.arriving.delete(record.id)
    }
  }

  private async dropDevice(id: number, cause: unknown): Promise<void> {
    // Expected of a RAM disk after a daemon death (its data died with it): a warning, not an error.
    this.log.warn({ devId: id, err: messageOf(cause) }, 'cannot re-attach device: stopping and deleting it')
    await this.control.stopDev(id).catch(() => {})
    await this.control.delDev(id).catch((error: unknown) => {
      this.log.error({ devId: id, err: messageOf(error) }, 'DEL_DEV failed')
    })
    this.store.remove(id)
  }

  /** Stop and delete a kernel device whose server is gone: safely (its disk unused) unless `force`. */
  private async deleteOrphan(id: unknown, force: boolean): Promise<number> {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new UsageError('del --orphan needs a device id (-n ID)')
    if (this.devices.has(id) || this.arriving.has(id)) {
      throw new UsageError(`device ${id} is this daemon's, not an orphan: ublkd del -n ${id}`)
    }
    const info = await this.control.getDevInfo(id).catch((error: unknown) => {
      if (error instanceof KernelError && error.errno === -19) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no ublk device ${id} in the kernel`)
      throw error
    })
    const orphan = describeOrphan(id, info)
    if (orphan.servedBy.length > 0) {
      throw new UblkdError('UBLKD_ERR_BUSY', `device ${id} is served: its char device is ${orphan.servedBy.join('; ')}; stop that server instead`)
    }
    this.log.info({ devId: id, state: orphan.state, force }, 'deleting an orphaned device')
    if (orphan.blockDevice !== null) {
      const stop = (command: StopCommand) => sendStop(this.control, id, command)
      if (force) {
        const error = await stop('STOP_DEV')
        if (error !== null) throw error
      } else {
        await stopIfIdle({ id, tryStopDev: (info.flags & UBLK_F_SAFE_STOP_DEV) !== 0n, runStop: stop })
      }
    }
    await this.control.delDev(id)
    // A record left for `ublkd recover` describes what is now gone.
    this.store.remove(id)
    this.log.info({ devId: id }, 'orphaned device deleted')
    return id
  }

  private async recover(id: unknown): Promise<Device> {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new UsageError('recover needs a device id (-n ID)')
    // Already served (a starting daemon re-attaches every recorded device): nothing to do.
    const served = this.devices.get(id)
    if (served) return served
    const record = this.store.list().records.find((candidate) => candidate.id === id)
    if (!record) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no record of device ${id} in the state dir`)
    return await this.attach(record)
  }

  async handle(request: ApiRequest): Promise<ApiReply> {
    if (this.stopping) throw new UblkdError('UBLKD_ERR_DAEMON', 'the daemon is shutting down')
    switch (request.op) {
      case 'ping':
        return { ok: true, pid: process.pid }
      case 'list': {
        const devices = [...this.devices.values()].map((device) => device.summary())
        if (request.all !== true) return { ok: true, devices }
        return { ok: true, devices, orphans: await listOrphans(this.control, (id) => this.devices.has(id) || this.arriving.has(id)) }
      }
      case 'add':
        return { ok: true, device: (await this.add(request.device)).summary() }
      case 'del':
        return { ok: true, deleted: await this.del(request) }
      case 'recover':
        return { ok: true, device: (await this.recover(request.id)).summary() }
      case 'resize':
        return { ok: true, device: (await this.resize(request)).summary() }
      case 'upgrade':
        if (request.check === true) {
          return { ok: true, pid: process.pid, handedOver: this.checkHandOver().map((device) => device.id), restart: this.restart }
        }
        return { ok: true, pid: process.pid, handedOver: await this.handOver(), restart: this.restart }
      case 'reload':
        return { ok: true, reload: await this.reloadConfig() }
      case 'config':
        return { ok: true, config: this.runningConfig() }
    }
  }

  /** The devices as reconcile sees them. */
  private running(): Running[] {
    return [...this.devices.values()].map((device) => ({ id: device.id, request: device.deviceRequest, sizeBytes: device.sizeBytes, device }))
  }

  /** At start: make the devices what the file declares, as far as it can be done; what cannot
   *  is logged (the daemon serves the rest). */
  async reconcileAtStart(): Promise<void> {
    if (this.config === null) return
    const plan = planReconcile(this.config.devices, this.running())
    for (const why of plan.refused) this.log.error({ config: this.config.file }, `cannot apply the configuration: ${why}`)
    const result = await this.apply(plan)
    this.log.info({ config: this.config.file, ...result }, 'configuration applied')
  }

  /**
   * `ublkd reload` and SIGHUP: read the file again and apply it all, or refuse it with every
   * reason and change nothing. What is checked before anything is done: the file, each change
   * (see reconcile.ts), the deletions' disks are unused, the resizes can be made.
   */
  async reloadConfig(): Promise<ReloadResult> {
    if (this.configFile === null) throw new UblkdError('UBLKD_ERR_CONFIG', 'the daemon runs without --config: nothing to reload')
    if (this.reloading) throw new UblkdError('UBLKD_ERR_BUSY', 'a reload is in progress')
    this.reloading = true
    this.onReloading(true)
    try {
      // Loaded on demand: its schema validator (ajv) is a good part of a daemon's start.
      const { loadConfig } = await import('./config.js')
      const config = loadConfig(this.configFile)
      const plan = planReconcile(config.devices, this.running())
      for (const { device } of plan.remove) {
        const users = everyUser(diskUsers(`ublkb${device.id}`))
        if (users.length > 0) plan.refused.push(`device ${device.name} (/dev/ublkb${device.id}) is no longer declared but in use (${users.join('; ')})`)
      }
      for (const { device: { device }, sizeBytes } of plan.resize) {
        const why = device.resizeRefusal(sizeBytes)
        if (why !== null) plan.refused.push(`device ${device.name} (/dev/ublkb${device.id}): ${why.message}`)
      }
      if (plan.refused.length > 0) {
        throw new UblkdError('UBLKD_ERR_CONFIG', `${config.file}: reload refused, nothing changed: ${plan.refused.join('; ')}`)
      }
      this.config = config
      const result = await this.apply(plan)
      this.log.info({ config: config.file, ...result }, 'configuration reloaded')
      return result
    } finally {
      this.reloading = false
      this.onReloading(false)
    }
  }

  /** Deletions, then resizes, then additions (a name or id freed first may be taken again). A
   *  step that fails after the checks (the kernel refused, a disk got a user meanwhile) is
   *  reported in `failed`; the others go on. */
  private async apply(plan: ReconcilePlan<Running>): Promise<ReloadResult> {
    const result: ReloadResult = { added: [], removed: [], resized: [], unchanged: plan.unchanged.map((device) => device.request.name!), failed: [] }
    const attempt = async (name: string, list: string[], work: () => Promise<unknown>) => {
      try {
        await work()
        list.push(name)
      } catch (error) {
        this.log.error({ device: name, err: messageOf(error) }, 'configuration: device not applied')
        result.failed.push(`${name}: ${messageOf(error)}`)
      }
    }
    for (const { device } of plan.remove) {
      await attempt(device.name!, result.removed, () => this.remove(device, false))
    }
    for (const { device: { device }, sizeBytes } of plan.resize) {
      await attempt(device.name!, result.resized, () => device.resize(sizeBytes, false))
    }
    for (const declared of plan.add) await attempt(declared.name, result.added, () => this.addRequest(declared.request))
    return result
  }

  /** Every device the file declares is served and LIVE (what READY=1 waits for). */
  declaredLive(): boolean {
    const live = new Set([...this.devices.values()].filter((device) => device.state === 'LIVE').map((device) => device.name))
    return (this.config?.devices ?? []).every((declared) => live.has(declared.name))
  }

  /** No device is being healed or has failed: what the service watchdog vouches for. */
  healthy(): boolean {
    return [...this.devices.values()].every((device) => device.state !== 'RECOVERING' && device.state !== 'FAILED')
  }

  /** One line for the service manager's STATUS=: `3 devices live (2 declared), 1 recovering`. */
  statusLine(): string {
    const devices = [...this.devices.values()]
    const count = (state: string) => devices.filter((device) => device.state === state).length
    const declared = this.config?.devices.length ?? 0
    const missing = declared - devices.filter((device) => device.deviceRequest.origin === 'config').length
    return [`${count('LIVE')} device${count('LIVE') === 1 ? '' : 's'} live (${declared} declared)`,
      ...(count('RECOVERING') > 0 ? [`${count('RECOVERING')} recovering`] : []),
      ...(missing > 0 ? [`${missing} declared not created (see the log)`] : [])].join(', ')
  }

  /** `ublkd config dump`: the file the daemon runs with, its daemon options, and its devices. */
  private runningConfig(): RunningConfig {
    const declared = (device: Device) => device.deviceRequest.origin === 'config'
    const describe = (device: Device) => ({ ...device.declaredFields(), sizeBytes: device.sizeBytes, blockDevice: `/dev/ublkb${device.id}` })
    return {
      file: this.configFile,
      daemon: this.daemonOptions,
      devices: [...this.devices.values()].filter(declared).map(describe),
      addedByHand: [...this.devices.values()].filter((device) => !declared(device)).map(describe),
    }
  }

  private async resize(request: { id?: unknown; size?: unknown; force?: unknown }): Promise<Device> {
    if (typeof request.id !== 'number' || !Number.isInteger(request.id) || request.id < 0) {
      throw new UsageError('resize needs a device id (-n ID)')
    }
    const size = request.size
    if (typeof size !== 'string' && typeof size !== 'number') throw new UsageError('resize needs a size (--size SIZE)')
    const sizeBytes = typeof size === 'number' ? size : parseSize(size, '--size')
    const device = this.devices.get(request.id)
    if (!device) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no device ${request.id} in this daemon`)
    await device.resize(sizeBytes, request.force === true)
    return device
  }

  /**
   * `ublkd upgrade`: hand every device over to the next daemon and exit once the reply is out
   * (the next daemon asked, or the CLI or the service manager starts it). Refused before
   * anything is touched when a device would see I/O errors; from then on this daemon takes no
   * other request.
   */
  private async handOver(): Promise<number[]> {
    const devices = this.checkHandOver()
    this.stopping = true
    this.log.info({ devices: devices.map((device) => device.id) }, 'upgrade: handing every device over to the next daemon')
    await Promise.all(devices.map((device) => device.handOver().then(() => this.forget(device), (error: unknown) => {
      this.log.error({ devId: device.id, err: messageOf(error) }, 'device did not hand over cleanly')
    })))
    this.handedOver = true
    return devices.map((device) => device.id)
  }

  /** The devices an upgrade would hand over; throws, naming each, if one cannot be. */
  private checkHandOver(): Device[] {
    if (this.pendingAdds.size > 0 || this.arriving.size > 0) {
      throw new UblkdError('UBLKD_ERR_BUSY', 'a device is being added or re-attached: upgrade once it is done')
    }
    const devices = [...this.devices.values()]
    const refusals = devices.flatMap((device) => {
      const why = device.handOverRefusal()
      return why === null ? [] : [`device ${device.id}: ${why}`]
    })
    if (refusals.length > 0) {
      throw new UblkdError('UBLKD_ERR_NOT_RECOVERABLE', `cannot upgrade without I/O errors: ${refusals.join('; ')}. ` +
        'Delete those devices first (ublkd del), or stop the daemon instead')
    }
    return devices
  }

  /** After the upgrade reply is out: release everything and exit, leaving the devices. */
  onAnswered(request: ApiRequest): void {
    if (request.op !== 'upgrade' || !this.handedOver) return
    this.server?.close()
    // Gone now, not once close() is done: the next daemon may already be starting.
    if (this.socket !== null) fs.rmSync(this.socket, { force: true })
    this.metricsServer?.close()
    this.control.close()
    this.log.info('upgrade: devices handed over, exiting')
    process.exit(0)
  }

  private async add(raw: Record<string, unknown>): Promise<Device> {
    return this.addRequest(parseDeviceRequest(raw))
  }

  private async addRequest(request: DeviceRequest): Promise<Device> {
    if (request.name !== undefined && [...this.devices.values()].some((device) => device.name === request.name)) {
      throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `a device named ${request.name} exists`)
    }
    if (request.id !== undefined) {
      if (this.devices.has(request.id) || this.adding.has(request.id)) {
        throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `device ${request.id} already exists`)
      }
      this.adding.add(request.id)
    }
    const uuid = request.uuid!
    const holder = [...this.devices.values()].find((device) => device.uuid === uuid)
    if (holder !== undefined || this.addingUuids.has(uuid)) {
      if (request.id !== undefined) this.adding.delete(request.id)
      throw new UblkdError('UBLKD_ERR_DEVICE_EXISTS', `uuid ${uuid} is already ${holder ? `device ${holder.id}'s` : 'being added'}`)
    }
    this.addingUuids.add(uuid)
    const creating = Device.create(request, this.deps())
    this.pendingAdds.add(creating)
    try {
      const device = this.adopt(await creating)
      this.arriving.delete(device.id)
      return device
    } finally {
      this.pendingAdds.delete(creating)
      if (request.id !== undefined) this.adding.delete(request.id)
      this.addingUuids.delete(uuid)
    }
  }

  private async del(request: { id?: number; all?: boolean; force?: boolean; orphan?: boolean }): Promise<number[]> {
    const force = request.force === true
    if (request.orphan === true) return [await this.deleteOrphan(request.id, force)]
    if (request.all === true) {
      const all = [...this.devices.values()]
      const results = await Promise.allSettled(all.map((device) => this.remove(device, force)))
      const failures = results.flatMap((result) => result.status === 'rejected' ? [result.reason as unknown] : [])
      if (failures.length === 0) return all.map((device) => device.id)
      const deleted = all.filter((_, i) => results[i]!.status === 'fulfilled').map((device) => device.id)
      const first = failures[0]
      const code = first instanceof UblkdError ? first.code : 'UBLKD_ERR_DAEMON'
      throw new UblkdError(code, `${deleted.length > 0 ? `deleted ${deleted.map((id) => `/dev/ublkb${id}`).join(', ')}; ` : ''}` +
        failures.map(messageOf).join('; '))
    }
    if (typeof request.id !== 'number' || !Number.isInteger(request.id) || request.id < 0) {
      throw new UsageError('del needs a device id (-n ID) or --all')
    }
    const device = this.devices.get(request.id)
    if (!device) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no device ${request.id} in this daemon`)
    await this.remove(device, force)
    return [device.id]
  }

  /** `force` false: only if nothing uses the device's disk (else UBLKD_ERR_BUSY, still served). */
  private async remove(device: Device, force = true): Promise<void> {
    await (force ? device.delete() : device.deleteIfIdle())
    this.forget(device)
  }

  /** Drop `device` from the table, unless a newer device got its id meanwhile. */
  private forget(device: Device): void {
    if (this.devices.get(device.id) === device) this.devices.delete(device.id)
  }

  async listen(socket: string): Promise<void> {
    this.server = await listenApi(socket, (request) => this.handle(request), this.log, (request) => this.onAnswered(request))
    this.socket = socket
  }

  async serveMetrics(address: ListenAddress): Promise<void> {
    try {
      this.metricsServer = await listenMetrics(address, {
        devices: () => [...this.devices.values()],
        devicesFailed: () => this.devicesFailed,
      }, this.log)
    } catch (error) {
      throw new UblkdError('UBLKD_ERR_DAEMON', `cannot serve metrics on ${address.host}:${address.port}: ` +
        `${messageOf(error)} (choose another with --metrics HOST:PORT, or --metrics off)`)
    }
  }

  /** Stop taking requests, delete every device (or detach the recoverable ones when asked to
   *  keep them), release the control channel. */
  async shutdown(keepDevices: boolean): Promise<void> {
    this.stopping = true
    this.server?.close()
    this.metricsServer?.close()
    // An add under way would leave its kernel device behind: let it finish (each of its control
    // commands has a deadline), then stop it with the rest.
    await Promise.allSettled([...this.pendingAdds])
    await Promise.all([...this.devices.values()].map((device) => {
      const keep = keepDevices && device.reattachable
      const done = keep ? device.detach().then(() => this.forget(device)) : this.remove(device)
      return done.catch((error: unknown) => {
        this.log.error({ devId: device.id, err: messageOf(error) }, 'device did not stop cleanly')
      })
    }))
    this.control.close()
  }
}

// How long the previous daemon may take to hand over and exit.
const kTakeOverTimeoutMs = 120_000

/** Have the daemon listening on `socket` hand every device over, and wait until it is gone. */
async function takeOver(socket: string, log: Logger): Promise<void> {
  const reply = await callDaemon(socket, { op: 'upgrade' }, kTakeOverTimeoutMs).catch((error: unknown) => {
    throw new UblkdError('UBLKD_ERR_DAEMON', `--take-over: no daemon to take over on ${socket} (${messageOf(error)})`)
  })
  if (!reply.ok) throw new UblkdError(reply.error.code as UblkdError['code'], `--take-over: ${reply.error.message}`)
  log.info({ previousPid: reply.pid, devices: reply.handedOver }, 'taking over from the previous daemon')
  if (!await waitForExit(reply.pid!, kTakeOverTimeoutMs)) {
    throw new UblkdError('UBLKD_ERR_TIMEOUT', `the previous daemon (pid ${reply.pid}) did not exit`)
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
  if (!options.takeOver) await claimSocket(socket)
  const control = UblkControl.open({ timeoutMs: options.kernelTimeoutMs, log })
  let kernelFeatures: bigint
  try {
    kernelFeatures = await control.getFeatures()
    if (options.takeOver) {
      await takeOver(socket, log)
      await claimSocket(socket)
    }
  } catch (error) {
    control.close()
    throw error
  }
  log.info({ kernel: os.release(), features: `0x${kernelFeatures.toString(16)}` }, 'ublk driver features')
  const mounts = ownMountNamespace()
  if (mounts.own) {
    keepUblkMountsOut(log)
    log.info('running in a mount namespace of its own')
  } else {
    log.warn({ reason: mounts.reason }, 'running in the mount namespace it was started in')
  }
  const effective = {
    stateDir: options.stateDir, metrics: options.metrics ? `${options.metrics.host}:${options.metrics.port}` : 'off',
    logLevel: options.logLevel, statsPublishUs: options.statsPublishMicros, kernelTimeoutSeconds: options.kernelTimeoutMs / 1000,
    keepDevicesOnExit: options.keepDevicesOnExit,
  }
  const daemon = new Daemon(control, log, options.logLevel, new StateStore(options.stateDir), options.statsPublishMicros,
    kernelFeatures, options.config, effective)
  try {
    if (options.metrics) await daemon.serveMetrics(options.metrics)
    await daemon.reattachAll()
    await daemon.reconcileAtStart()
    await daemon.listen(socket)
  } catch (error) {
    await daemon.shutdown(true)
    throw error
  }
  const notifier = ServiceNotifier.fromEnvironment(log)
  if (notifier) serveNotifier(daemon, notifier, log)

  let signalled = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      log.error({ signal }, 'second signal: exiting without finishing the shutdown')
      process.exit(1)
    }
    signalled = true
    log.info({ signal }, 'shutting down')
    notifier?.stopping()
    // Devices drain in parallel, each forced after its own grace; this bounds the whole.
    setTimeout(() => {
      log.error({ timeoutMs: kShutdownTimeoutMs }, 'shutdown timed out: exiting without finishing it')
      process.exit(1)
    }, kShutdownTimeoutMs).unref()
    daemon.shutdown(options.keepDevicesOnExit).then(() => {
      log.info('all devices stopped, exiting')
      process.exit(0)
    }, (error: unknown) => {
      log.error({ err: messageOf(error) }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  // SIGHUP reloads the configuration file, as `ublkd reload` does (without one it would end
  // the process, and fail every device, by default).
  process.on('SIGHUP', () => {
    if (options.config === null) {
      log.warn('SIGHUP: no configuration file (--config), nothing to reload')
      return
    }
    daemon.reloadConfig().catch((error: unknown) => log.error({ err: messageOf(error) }, 'SIGHUP: reload failed'))
  })
  // A promise nobody awaited must not take every device down with the process.
  process.on('unhandledRejection', (reason) => {
    log.error({ err: messageOf(reason) }, 'unhandled promise rejection (a bug): the daemon carries on')
  })
  log.info({ socket, stateDir: options.stateDir,
    metrics: options.metrics ? `${options.metrics.host}:${options.metrics.port}` : 'off' }, 'daemon ready')
}
