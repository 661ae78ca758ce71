// pino loggers. JSON lines on stdout (journald-friendly), pretty only when stdout is a TTY of the
// main thread is not needed: operators pipe through pino-pretty themselves. Workers use a sync
// destination so nothing is lost when a worker exits.
import { pino, type Logger } from 'pino'

export type { Logger }

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

export function isLogLevel(value: string): value is LogLevel {
  return (logLevels as readonly string[]).includes(value)
}

/** Level from an explicit flag, else LOG_LEVEL, else info. */
export function resolveLogLevel(flag?: string): LogLevel {
  const candidate = flag ?? process.env['LOG_LEVEL'] ?? 'info'
  return isLogLevel(candidate) ? candidate : 'info'
}

export function createLogger(level: LogLevel, bindings: Record<string, unknown>, fd = 1): Logger {
  return pino(
    { level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: fd, sync: true }),
  )
}
