// Reconcile: what it takes to make the daemon's devices what the configuration file declares.
// Declared devices are matched with running ones by name. A new name is added; a configured
// device whose name is gone is deleted; a changed size is a resize; any other change cannot be
// made to a live device and refuses the whole reload, so that a reload applies all or nothing.
// Devices added by hand (no origin) are never touched, and a name they hold cannot be declared.
import path from 'node:path'

import { parseSize } from '../common/size.js'
import type { DeclaredDevice } from './config.js'
import type { DeviceRequest } from './device-request.js'

export interface RunningDevice {
  id: number
  request: DeviceRequest
  sizeBytes: number
}

/** What to do; `Running` is the caller's own description of a running device, handed back. */
export interface ReconcilePlan<Running extends RunningDevice = RunningDevice> {
  add: DeclaredDevice[]
  remove: Running[]
  resize: { device: Running; sizeBytes: number }[]
  unchanged: Running[]
  /** Why the plan cannot be applied, one phrase per device; empty: it can. */
  refused: string[]
}

// Compared when the file states them (the kernel or the target picks them otherwise).
const kStatedFields = ['id', 'uuid', 'logicalBlockSize', 'queueMode', 'ioMode'] as const
// Compared always: the file's value or the default, against the device's.
const kFields = ['target', 'queues', 'depth', 'recovery', 'ioScheduler', 'hugePageBuffers', 'mlockBuffers', 'noPartitionScan'] as const

function normalized(key: string, value: unknown): string {
  if (value === undefined) return '(default)'
  if ((key === 'size' || key === 'maxSize') && typeof value === 'string') return String(parseSize(value, key))
  if (key === 'file' && typeof value === 'string') return path.resolve(value)
  return String(value)
}

/** What differs between a declared device and the running one, as `field A -> B` phrases. */
function changes(declared: DeclaredDevice, running: DeviceRequest): string[] {
  const found: string[] = []
  const differs = (key: string, want: unknown, have: unknown) => {
    if (normalized(key, want) !== normalized(key, have)) found.push(`${key} ${normalized(key, have)} -> ${normalized(key, want)}`)
  }
  for (const key of kFields) differs(key, declared.request[key], running[key])
  for (const key of kStatedFields) if (declared.fields[key] !== undefined) differs(key, declared.request[key], running[key])
  const options = new Set([...Object.keys(declared.request.targetOptions), ...Object.keys(running.targetOptions)])
  options.delete('size')
  for (const key of options) differs(key, declared.request.targetOptions[key], running.targetOptions[key])
  return found
}

export function planReconcile<Running extends RunningDevice>(declared: readonly DeclaredDevice[],
  running: readonly Running[]): ReconcilePlan<Running> {
  const plan: ReconcilePlan<Running> = { add: [], remove: [], resize: [], unchanged: [], refused: [] }
  const byName = new Map(running.filter((device) => device.request.name !== undefined).map((device) => [device.request.name!, device]))
  const matched = new Set<Running>()
  for (const want of declared) {
    const have = byName.get(want.name)
    if (have === undefined) {
      const taken = want.request.id === undefined ? undefined : running.find((device) => device.id === want.request.id)
      if (taken !== undefined && taken.request.name !== want.name) {
        plan.refused.push(`device ${want.name}: id ${want.request.id} is /dev/ublkb${taken.id}'s, ${taken.request.origin === 'config' ? `declared as ${taken.request.name}` : 'added by hand'}`)
      } else {
        plan.add.push(want)
      }
      continue
    }
    matched.add(have)
    if (have.request.origin !== 'config') {
      plan.refused.push(`device ${want.name}: the name is /dev/ublkb${have.id}'s, which was added by hand; rename one of them`)
      continue
    }
    const found = changes(want, have.request)
    if (found.length > 0) {
      plan.refused.push(`device ${want.name} (/dev/ublkb${have.id}): ${found.join(', ')} cannot change while it exists; ` +
        'remove it from the file, reload, then declare it again (its data stays in its backing)')
      continue
    }
    const size = want.request.targetOptions['size']
    const sizeBytes = size === undefined ? have.sizeBytes : Number(normalized('size', size))
    if (sizeBytes !== have.sizeBytes) plan.resize.push({ device: have, sizeBytes })
    else plan.unchanged.push(have)
  }
  for (const device of running) {
    if (device.request.origin === 'config' && !matched.has(device)) plan.remove.push(device)
  }
  return plan
}
