// What the kernel does with a device's I/O while no server serves it (a queue or the daemon
// died, or an upgrade hands the device over):
//   off       the device is stopped and deleted: its I/O fails (the default)
//   reissue   I/O is held, and what the dead server had taken is sent again to the next one
//             (UBLK_F_USER_RECOVERY + USER_RECOVERY_REISSUE): nothing fails, callers wait
//   fail-io   I/O fails at once until a server re-attaches (UBLK_F_USER_RECOVERY +
//             USER_RECOVERY_FAIL_IO): callers never hang, the device stays
import { UsageError } from '../common/errors.js'

export const recoveryModes = ['off', 'reissue', 'fail-io'] as const
export type RecoveryMode = (typeof recoveryModes)[number]

/**
 * The recovery mode of an add request or a device record: a mode name, or a boolean (the API
 * and records before recovery modes: true was reissue). Absent: off.
 */
export function recoveryModeField(value: unknown): RecoveryMode {
  if (value === undefined || value === false) return 'off'
  if (value === true) return 'reissue'
  const mode = recoveryModes.find((candidate) => candidate === value)
  if (mode === undefined) throw new UsageError(`--recovery must be ${recoveryModes.join(', ')}, got '${String(value)}'`)
  return mode
}

/** A daemon that dies or hands over leaves the device to the next one. */
export function isRecoverable(mode: RecoveryMode): boolean {
  return mode !== 'off'
}

/** `ublkd add` arguments with `--recovery [MODE]` (a flag whose value is optional, which
 *  node:util's parseArgs cannot express) as `--recovery=MODE`; alone it means reissue. */
export function withRecoveryModes(args: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < args.length; i++) {
    if (args[i] !== '--recovery') {
      out.push(args[i]!)
      continue
    }
    const mode = recoveryModes.find((candidate) => candidate === args[i + 1])
    if (mode !== undefined) i++
    out.push(`--recovery=${mode ?? 'reissue'}`)
  }
  return out
}
