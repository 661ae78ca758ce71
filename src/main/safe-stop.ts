// Safe delete: stop a device's disk only when nothing uses it (no mount, no stacked device, no
// process with it open); otherwise refuse with UBLKD_ERR_BUSY naming the users, the device
// untouched. Two ways, by what the kernel offers:
//   UBLK_F_SAFE_STOP_DEV (7.0+)  TRY_STOP_DEV: the kernel checks for openers and shuts new ones
//                                out under the disk's open mutex, so there is no window
//   older kernels                an exclusive open of the disk fails while it is mounted or
//                                claimed, and keeps mounts and claims out until STOP_DEV; the
//                                processes are found in /proc. A process that opens the disk
//                                between that scan and STOP_DEV gets I/O errors
// A process that comes and goes (udev's blkid probing a new disk), or an opener nobody can name
// (the kernel's own partition scan), is waited out for up to 2 s; a mount or holder is not.
import fs from 'node:fs'

import { KernelError, UblkdError } from '../common/errors.js'
import type { UblkControl } from './control.js'
import { diskUsers, everyUser, type DiskUsers } from './disk-users.js'

const kPassingUserMs = 2_000
const kRetryMs = 200
const kEbusy = -16

export type StopCommand = 'STOP_DEV' | 'TRY_STOP_DEV'

/** Send `command` for device `id`; resolves with its error, or null once the disk is stopped. */
export function sendStop(control: UblkControl, id: number, command: StopCommand): Promise<unknown> {
  return (command === 'STOP_DEV' ? control.stopDev(id) : control.tryStopDev(id)).then(() => null, (error: unknown) => error)
}

export interface SafeStopParts {
  id: number
  /** UBLK_F_SAFE_STOP_DEV is among the device's flags. */
  tryStopDev: boolean
  /** Run the kernel command; resolves with its error, or null once the disk is stopped. */
  runStop: (command: StopCommand) => Promise<unknown>
}

function busy(id: number, found: DiskUsers): UblkdError {
  const users = everyUser(found)
  const what = users.length > 0 ? users.join('; ') : 'open by a holder the daemon cannot name'
  return new UblkdError('UBLKD_ERR_BUSY', `device ${id} is in use: ${what}; del --force deletes it anyway`)
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Stop the disk if nothing uses it, else throw UBLKD_ERR_BUSY (the disk is left running). */
export async function stopIfIdle(parts: SafeStopParts): Promise<void> {
  const disk = `ublkb${parts.id}`
  const deadline = Date.now() + kPassingUserMs
  for (;;) {
    const users = parts.tryStopDev ? await tryStop(parts) : await claimAndStop(parts, disk)
    if (users === null) return
    if (users.lasting.length > 0 || Date.now() >= deadline) throw busy(parts.id, users)
    await sleep(kRetryMs)
  }
}

/** TRY_STOP_DEV: null once stopped, else who uses the disk. */
async function tryStop(parts: SafeStopParts): Promise<DiskUsers | null> {
  const error = await parts.runStop('TRY_STOP_DEV')
  if (error === null) return null
  if (error instanceof KernelError && error.errno === kEbusy) return diskUsers(`ublkb${parts.id}`)
  throw error
}

/** Exclusive open, scan, STOP_DEV: null once stopped, else who uses the disk. */
async function claimAndStop(parts: SafeStopParts, disk: string): Promise<DiskUsers | null> {
  let fd: number
  try {
    // Without O_CREAT, O_EXCL on a block device claims it: EBUSY while mounted or held.
    fd = fs.openSync(`/dev/${disk}`, fs.constants.O_RDONLY | fs.constants.O_EXCL)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EBUSY') return diskUsers(disk)
    throw error
  }
  try {
    const users = diskUsers(disk)
    if (users.lasting.length + users.processes.length > 0) return users
    const error = await parts.runStop('STOP_DEV')
    if (error !== null) throw error
    return null
  } finally {
    // Before DEL_DEV, which waits for the last opener of the disk.
    fs.closeSync(fd)
  }
}
