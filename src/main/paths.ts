// Where the daemon keeps its socket and log. One daemon per state dir.
import path from 'node:path'

export const kDefaultStateDir = '/run/ublkd'

export function stateDirFrom(flag: string | undefined): string {
  return path.resolve(flag ?? process.env['UBLKD_STATE_DIR'] ?? kDefaultStateDir)
}

export function socketPath(stateDir: string): string {
  return path.join(stateDir, 'ublkd.sock')
}

export function daemonLogPath(stateDir: string): string {
  return path.join(stateDir, 'daemon.log')
}
