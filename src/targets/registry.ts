// The one place that lists the targets.
import { UsageError } from '../common/errors.js'
import { faultTarget } from './fault.js'
import { loopTarget } from './loop.js'
import { memoryTarget } from './memory.js'
import { nbdTarget } from './nbd.js'
import { nullTarget } from './null.js'
import type { Target, TargetFlag } from './target.js'

const targets: ReadonlyMap<string, Target> = new Map<string, Target>(
  ([nullTarget, memoryTarget, loopTarget, nbdTarget, faultTarget] as Target[]).map((target) => [target.name, target]),
)

export function targetNames(): string[] {
  return [...targets.keys()]
}

export function allTargets(): Target[] {
  return [...targets.values()]
}

/** The union of every target's flags, each name once (for the CLI's parser). */
export function allTargetFlags(): TargetFlag[] {
  const byName = new Map<string, TargetFlag>()
  for (const target of targets.values()) for (const flag of target.flags) byName.set(flag.name, flag)
  return [...byName.values()]
}

export function findTarget(name: string): Target {
  const target = targets.get(name)
  if (!target) {
    throw new UsageError(`unknown target '${name}' (known: ${targetNames().join(', ')})`)
  }
  return target
}
