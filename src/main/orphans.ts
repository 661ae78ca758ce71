// Orphans: the kernel's ublk devices that this daemon does not serve: another server's, or a dead
// daemon's that nobody re-attached (no record, or a record that could not be re-attached).
// `list --all` shows them; `del --orphan -n ID` removes one whose server is gone.
import fs from 'node:fs'

import { describeFeatureMask } from '../abi/feature-names.js'
import type { DevInfo } from '../abi/structs.js'
import {
  UBLK_F_USER_RECOVERY, UBLK_S_DEV_DEAD, UBLK_S_DEV_FAIL_IO, UBLK_S_DEV_LIVE, UBLK_S_DEV_QUIESCED,
} from '../abi/ublk-cmd.js'
import type { UblkControl } from './control.js'
import { processesWithOpen } from './disk-users.js'

export interface OrphanSummary {
  id: number
  state: 'DEAD' | 'LIVE' | 'QUIESCED' | 'FAIL_IO' | `state ${number}`
  /** The processes that have its char device open: its server, while one runs. */
  servedBy: string[]
  recovery: boolean
  queues: number
  depth: number
  /** The block device exists (the device was started and not stopped). */
  blockDevice: string | null
  flags: string[]
}

const kStateNames: Record<number, OrphanSummary['state']> = {
  [UBLK_S_DEV_DEAD]: 'DEAD', [UBLK_S_DEV_LIVE]: 'LIVE', [UBLK_S_DEV_QUIESCED]: 'QUIESCED', [UBLK_S_DEV_FAIL_IO]: 'FAIL_IO',
}

/** Ids of every ublk device the kernel has (its char devices in sysfs). */
export function kernelDeviceIds(): number[] {
  let entries: string[] = []
  try {
    entries = fs.readdirSync('/sys/class/ublk-char')
  } catch {
    return []
  }
  return entries.flatMap((name) => /^ublkc(\d+)$/.exec(name)?.[1] ?? []).map(Number).sort((a, b) => a - b)
}

/** What the kernel and /proc say of device `id`. A server holds the char device open for as
 *  long as it serves (even before START_DEV, when the kernel knows no server pid yet). */
export function describeOrphan(id: number, info: DevInfo): OrphanSummary {
  const { names, unknownBits } = describeFeatureMask(info.flags)
  return {
    id,
    state: kStateNames[info.state] ?? `state ${info.state}`,
    servedBy: processesWithOpen(new Set([`/dev/ublkc${id}`]), process.pid),
    recovery: (info.flags & UBLK_F_USER_RECOVERY) !== 0n,
    queues: info.nrHwQueues,
    depth: info.queueDepth,
    blockDevice: fs.existsSync(`/sys/block/ublkb${id}`) ? `/dev/ublkb${id}` : null,
    flags: [...names, ...unknownBits.map((bit) => `bit ${bit}`)],
  }
}

/** Every kernel ublk device that is not `ours`. */
export async function listOrphans(control: UblkControl, ours: (id: number) => boolean): Promise<OrphanSummary[]> {
  const orphans: OrphanSummary[] = []
  for (const id of kernelDeviceIds()) {
    if (ours(id)) continue
    // Gone meanwhile (ENODEV): not listed.
    const info = await control.getDevInfo(id).catch(() => null)
    if (info) orphans.push(describeOrphan(id, info))
  }
  return orphans
}
