// The control API on the daemon's unix socket: one JSON request line per connection, one JSON
// reply line back. Root-only by the socket's mode (0600) inside a 0700 state dir.
import type { ReloadResult, RunningConfig } from './daemon.js'
import type { DeviceSummary } from './device.js'
import type { OrphanSummary } from './orphans.js'

export type ApiRequest =
  | { op: 'add'; device: Record<string, unknown> }
  | { op: 'del'; id?: number; all?: boolean; force?: boolean; orphan?: boolean }
  | { op: 'list'; all?: boolean }
  | { op: 'recover'; id?: number }
  | { op: 'resize'; id?: number; size?: string | number; force?: boolean }
  /** check: only whether every device can be handed over (nothing is touched). */
  | { op: 'upgrade'; check?: boolean }
  | { op: 'reload' }
  | { op: 'config' }
  | { op: 'ping' }

export interface ApiErrorBody {
  code: string
  message: string
}

export type ApiReply =
  | { ok: true; devices?: DeviceSummary[]; orphans?: OrphanSummary[]; device?: DeviceSummary; deleted?: number[]; pid?: number;
      /** upgrade: what the next daemon is started with (`ublkd` arguments, working directory). */
      restart?: { argv: string[]; cwd: string }; handedOver?: number[]; reload?: ReloadResult; config?: RunningConfig }
  | { ok: false; error: ApiErrorBody }

/** Requests larger than this are refused (a device request is a few hundred bytes). */
export const kMaxRequestBytes = 64 * 1024
