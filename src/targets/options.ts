// Validation helpers shared by targets' parseOptions().
import { UsageError } from '../common/errors.js'
import { parseSize } from '../common/size.js'
import type { RawTargetOptions } from './target.js'

export const kDefaultLogicalBlockSize = 512

/** --size: a positive multiple of the logical block size. */
export function sizeOption(raw: RawTargetOptions, logicalBlockSize: number, fallback?: number): number {
  const value = raw['size']
  let bytes: number
  if (value === undefined) {
    if (fallback === undefined) throw new UsageError('--size is required for this target')
    bytes = fallback
  } else if (typeof value === 'number') {
    bytes = value
  } else if (typeof value === 'string') {
    bytes = parseSize(value, '--size')
  } else {
    throw new UsageError('--size must be a size such as 1G')
  }
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new UsageError('--size must be greater than 0')
  if (bytes % logicalBlockSize !== 0) {
    throw new UsageError(`--size ${bytes} is not a multiple of the logical block size ${logicalBlockSize}`)
  }
  return bytes
}

/** Refuse options the target does not know, so typos are not silently ignored. */
export function rejectUnknownOptions(raw: RawTargetOptions, known: readonly string[], target: string): void {
  for (const key of Object.keys(raw)) {
    if (raw[key] !== undefined && !known.includes(key)) {
      throw new UsageError(`target ${target} does not take --${key}`)
    }
  }
}
