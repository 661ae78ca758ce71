// Sizes on the command line: plain bytes or a binary suffix (K, M, G, T, P; KiB/MiB/... too).
import { UsageError } from './errors.js'

const multipliers: Record<string, number> = {
  '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50,
}

export function parseSize(text: string, what: string): number {
  const match = /^\s*(\d+)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text)
  if (!match) throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 512M, 1G, 10T)`)
  const bytes = Number(match[1]) * multipliers[match[2]!.toLowerCase()]!
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`${what}: '${text}' is too large`)
  return bytes
}

/** 1073741824 -> '1 GiB'; exact multiples only, else bytes. */
export function formatSize(bytes: number): string {
  for (const [unit, shift] of [['PiB', 50], ['TiB', 40], ['GiB', 30], ['MiB', 20], ['KiB', 10]] as const) {
    const scale = 2 ** shift
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale} ${unit}`
  }
  return `${bytes} B`
}
