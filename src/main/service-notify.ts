// The service manager's notification protocol (sd_notify(3)): datagrams of NEWLINE-separated
// VAR=VALUE to the unix socket named by $NOTIFY_SOCKET. systemd learns from them when the
// daemon is ready (READY=1), what it is doing (STATUS=), that it is alive (WATCHDOG=1, which it
// expects every $WATCHDOG_USEC when the unit has WatchdogSec=), and when it reloads or stops.
// Without $NOTIFY_SOCKET (not under systemd, or Type= other than notify) nothing is sent.
import type { Logger } from '../common/log.js'
import { native } from '../native/addon.js'

export class ServiceNotifier {
  private lastStatus = ''

  private constructor(
    private readonly socket: string,
    /** How often to send WATCHDOG=1: half the manager's timeout; null when it expects none. */
    readonly watchdogIntervalMs: number | null,
    private readonly log: Logger,
  ) {}

  /** The notifier the environment asks for, or null. */
  static fromEnvironment(log: Logger, env: NodeJS.ProcessEnv = process.env, pid = process.pid): ServiceNotifier | null {
    const socket = env['NOTIFY_SOCKET']
    if (socket === undefined || socket === '') return null
    const usec = Number(env['WATCHDOG_USEC'])
    // WATCHDOG_PID names the process meant (it may be another's environment we inherited).
    const forUs = env['WATCHDOG_PID'] === undefined || Number(env['WATCHDOG_PID']) === pid
    const interval = Number.isInteger(usec) && usec > 0 && forUs ? Math.max(1, Math.floor(usec / 2000)) : null
    return new ServiceNotifier(socket, interval, log)
  }

  private send(message: string): void {
    try {
      native.sendDatagram(this.socket, message)
    } catch (error) {
      // The manager may be gone (shutdown) or the socket misconfigured: the daemon carries on.
      this.log.warn({ err: (error as Error).message, socket: this.socket }, 'cannot notify the service manager')
    }
  }

  ready(status: string): void {
    this.lastStatus = status
    this.send(`READY=1\nSTATUS=${status}`)
  }

  /** STATUS= when it changed. */
  status(status: string): void {
    if (status === this.lastStatus) return
    this.lastStatus = status
    this.send(`STATUS=${status}`)
  }

  reloading(): void {
    this.send('RELOADING=1\nSTATUS=reloading the configuration')
  }

  stopping(): void {
    this.send('STOPPING=1\nSTATUS=stopping')
  }

  watchdog(): void {
    this.send('WATCHDOG=1')
  }
}

/** What the notifications report about the daemon. */
export interface ServiceState {
  /** Every device the configuration declares is live. */
  declaredLive(): boolean
  /** No device is being healed or has failed. */
  healthy(): boolean
  statusLine(): string
  onReloading: (reloading: boolean) => void
}

// STATUS= follows the devices at this pace.
const kStatusIntervalMs = 2_000

/** READY=1 once every declared device is live, STATUS= as the devices change, WATCHDOG=1 while
 *  the daemon is healthy, RELOADING=1 then READY=1 around a reload. */
export function serveNotifier(daemon: ServiceState, notifier: ServiceNotifier, log: Logger): void {
  let ready = false
  const update = () => {
    if (!ready && daemon.declaredLive()) {
      ready = true
      notifier.ready(daemon.statusLine())
      log.info('service manager told: ready')
    } else {
      notifier.status(daemon.statusLine())
    }
  }
  update()
  setInterval(update, kStatusIntervalMs).unref()
  daemon.onReloading = (reloading) => {
    if (reloading) notifier.reloading()
    else notifier.ready(daemon.statusLine())
  }
  const interval = notifier.watchdogIntervalMs
  if (interval === null) return
  let wasHealthy = true
  setInterval(() => {
    const healthy = daemon.healthy()
    if (healthy) notifier.watchdog()
    else if (wasHealthy) log.warn('a device is being healed or has failed: the service watchdog is not fed meanwhile')
    wasHealthy = healthy
  }, interval).unref()
}
