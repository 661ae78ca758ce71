// The metrics listener's address, as --metrics gives it.
import { UsageError } from '../common/errors.js'

export const kDefaultMetricsAddress = '127.0.0.1:9568'

export interface ListenAddress {
  host: string
  port: number
}

/** 'HOST:PORT' or '[v6]:PORT'; 'off' disables the listener (null). */
export function parseListenAddress(text: string): ListenAddress | null {
  if (text === 'off') return null
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text)
  const port = match ? Number(match[3]) : NaN
  if (!match || port > 65535) throw new UsageError(`--metrics must be HOST:PORT or off, got '${text}'`)
  return { host: match[1] ?? match[2]!, port }
}
