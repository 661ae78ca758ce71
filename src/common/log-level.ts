// Log levels, apart from the logger itself, so that the CLI parses --log-level without loading pino.
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
