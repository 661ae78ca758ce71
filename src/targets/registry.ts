// The one place that lists the targets.
import { UsageError } from '../common/errors.js'
import { loopTarget } from './loop.js'
import { memoryTarget } from './memory.js'
import { nullTarget } from './null.js'
import type { Target } from './target.js'

const targets: ReadonlyMap<string, Target> = new Map<string, Target>(
  ([nullTarget, memoryTarget, loopTarget] as Target[]).map((target) => [target.name, target]),
)

export function targetNames(): string[] {
  return [...targets.keys()]
}

export function allTargets(): Target[] {
  return [...targets.values()]
}

export function findTarget(name: string): Target {
  const target = targets.get(name)
  if (!target) {
    throw new UsageError(`unknown target '${name}' (known: ${targetNames().join(', ')})`)
  }
  return target
}
