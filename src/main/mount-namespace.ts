// The daemon's own mount namespace. A process that ends as the last holder of a mount namespace
// in which one of its own ublk devices is mounted unmounts it in do_exit(): the filesystem's
// writeback then waits on a device whose server is the exiting process, for ever (ublksrv PR
// #186). So the daemon re-executes itself in a namespace of its own, a slave of the one it was
// started in (filesystems mounted there later, a loop target's backing among them, still
// appear), and detaches from it every mount of a ublk device: at start, and whenever mount
// propagation brought one in since. Where the root mount is not shared (no systemd; some
// containers) a slave would see no later mount, so the daemon stays where it was started.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'

import type { Logger } from '../common/log.js'
import { messageOf } from '../common/errors.js'
import { native } from '../native/addon.js'
import { parseMountinfo } from './mountinfo.js'

/** Set across the re-exec: the inode of the namespace the daemon was started in. */
const kEnvironmentKey = 'UBLKD_PARENT_MOUNT_NAMESPACE'
/** How often mounts of ublk devices that propagated in are looked for. */
const kSweepIntervalMs = 2_000

function namespaceInode(): string {
  return fs.readlinkSync('/proc/self/ns/mnt')
}

/** Whether the root mount propagates (mountinfo's optional field "shared:N"). */
function rootMountShared(): boolean {
  const root = parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8')).find((entry) => entry.mountPoint === '/')
  return root?.optional.some((field) => field.startsWith('shared:')) ?? false
}

/**
 * Before anything else of the daemon runs: re-execute the process (same pid, arguments and
 * environment) in a mount namespace of its own. Returns once in it, or at once if that cannot
 * or should not be done (no CAP_SYS_ADMIN, a private root mount): runDaemon's
 * ownMountNamespace() tells which.
 */
export function enterOwnMountNamespace(): void {
  if (process.env[kEnvironmentKey] !== undefined) return
  if (!rootMountShared()) {
    process.env[kEnvironmentKey] = 'unavailable: the root mount is private (not shared), so a namespace of its own would not see mounts made later'
    return
  }
  const parent = namespaceInode()
  try {
    native.unshareMountNamespace()
  } catch (error) {
    process.env[kEnvironmentKey] = `unavailable: ${messageOf(error)}`
    return
  }
  process.env[kEnvironmentKey] = parent
  native.exec(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)])
}

/** Whether the daemon runs in a namespace of its own; if not, why. */
export function ownMountNamespace(): { own: true } | { own: false; reason: string } {
  const parent = process.env[kEnvironmentKey]
  if (parent === undefined) return { own: false, reason: 'not asked for (--shared-mount-namespace)' }
  if (parent.startsWith('unavailable')) return { own: false, reason: parent }
  if (parent === namespaceInode()) return { own: false, reason: 'the namespace did not change' }
  return { own: true }
}

/** major:minor of every ublk disk and partition. */
function ublkDeviceNumbers(): Set<string> {
  const numbers = new Set<string>()
  for (const name of fs.readdirSync('/sys/class/block')) {
    if (!/^ublkb\d+(p\d+)?$/.test(name)) continue
    try {
      numbers.add(fs.readFileSync(`/sys/class/block/${name}/dev`, 'utf8').trim())
    } catch {
      // Gone meanwhile.
    }
  }
  return numbers
}

/** Mount points of this namespace whose filesystem lives on a ublk device, deepest first. */
function ublkMountPoints(): string[] {
  const numbers = ublkDeviceNumbers()
  if (numbers.size === 0) return []
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'))
    .filter((entry) => numbers.has(entry.device)).map((entry) => entry.mountPoint)
    .sort((a, b) => b.length - a.length)
}

/** Detach (umount -l) every mount of a ublk device from the daemon's own namespace; never from
 *  any other: it checks that it runs in its own first. */
export function detachUblkMounts(log: Logger): void {
  if (!ownMountNamespace().own) return
  for (const point of ublkMountPoints()) {
    try {
      execFileSync('umount', ['--lazy', '--no-mtab', point], { stdio: ['ignore', 'ignore', 'pipe'] })
      log.debug({ mountPoint: point }, 'detached a ublk device\'s mount from the daemon\'s namespace')
    } catch (error) {
      log.warn({ mountPoint: point, err: messageOf(error) }, 'cannot detach a ublk device\'s mount from the daemon\'s namespace')
    }
  }
}

/** Keep the daemon's namespace free of ublk mounts; the timer does not hold the process. */
export function keepUblkMountsOut(log: Logger): NodeJS.Timeout {
  detachUblkMounts(log)
  const timer = setInterval(() => detachUblkMounts(log), kSweepIntervalMs)
  timer.unref()
  return timer
}
