// Who uses a block device: the filesystems mounted on it or its partitions (in any mount
// namespace: the daemon runs in one of its own, src/main/mount-namespace.ts), the devices stacked
// on it (dm, md: sysfs holders) and the processes that have it open. For the messages of a
// refused delete, and on kernels without TRY_STOP_DEV for the check itself.
import fs from 'node:fs'
import path from 'node:path'

import { parseMountinfo } from './mountinfo.js'

const kMaxProcesses = 5

function readTrimmed(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return null
  }
}

function entries(dir: string): string[] {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

/** The disk and its partitions: name -> "major:minor". */
function diskParts(disk: string): Map<string, string> {
  const parts = new Map<string, string>()
  const sys = `/sys/block/${disk}`
  for (const name of [disk, ...entries(sys).filter((entry) => entry.startsWith(disk))]) {
    const dev = readTrimmed(name === disk ? `${sys}/dev` : `${sys}/${name}/dev`)
    if (dev !== null) parts.set(name, dev)
  }
  return parts
}

/** Whether /proc/`pid`/root is the directory `root` (dev and inode). */
function hasRoot(pid: string, root: fs.Stats | null): boolean {
  if (root === null) return false
  try {
    const stats = fs.statSync(`/proc/${pid}/root`)
    return stats.dev === root.dev && stats.ino === root.ino
  } catch {
    return false
  }
}

/**
 * The mountinfo of each mount namespace a process lives in (the daemon's own included: it may
 * be the users' one). A mountinfo names mount points from its process's root directory: of each
 * namespace, a process whose root is the daemon's is read if there is one, so that the names are
 * the ones users see.
 */
function everyNamespaceMountinfo(): string[] {
  let ownRoot: fs.Stats | null = null
  try {
    ownRoot = fs.statSync('/proc/self/root')
  } catch {
    // Then any process of a namespace will do.
  }
  const reader = new Map<string, { pid: string; sameRoot: boolean }>()
  for (const pid of entries('/proc').filter((entry) => /^\d+$/.test(entry))) {
    let namespace: string
    try {
      namespace = fs.readlinkSync(`/proc/${pid}/ns/mnt`)
    } catch {
      continue
    }
    if (reader.get(namespace)?.sameRoot) continue
    reader.set(namespace, { pid, sameRoot: hasRoot(pid, ownRoot) })
  }
  return [...reader.values()].map(({ pid }) => readTrimmed(`/proc/${pid}/mountinfo`)).filter((table) => table !== null)
}

function mounts(parts: Map<string, string>): string[] {
  const numbers = new Set(parts.values())
  const found = new Set<string>()
  for (const entry of everyNamespaceMountinfo().flatMap(parseMountinfo)) {
    if (numbers.has(entry.device)) found.add(`mounted on ${entry.mountPoint} (${entry.fsType})`)
  }
  return [...found]
}

function holders(disk: string, parts: Map<string, string>): string[] {
  const found: string[] = []
  for (const name of parts.keys()) {
    const dir = name === disk ? `/sys/block/${disk}/holders` : `/sys/block/${disk}/${name}/holders`
    for (const holder of entries(dir)) {
      const dmName = readTrimmed(`/sys/block/${holder}/dm/name`)
      found.push(`held by ${holder}${dmName ? ` (${dmName})` : ''}${name === disk ? '' : ` through ${name}`}`)
    }
  }
  return found
}

/** The processes (but `exceptPid`) that have one of the device `nodes` open, one phrase each.
 *  An fd's link names the node as its process's namespace sees it, which for a process in
 *  another mount namespace may carry a prefix ("/newroot/dev/ublkb0"): the node's name in /dev
 *  is compared, which needs no stat of each open file (one network round trip each on 9p or NFS). */
export function processesWithOpen(nodes: ReadonlySet<string>, exceptPid: number): string[] {
  const names = [...nodes].map((node) => `/dev/${path.basename(node)}`)
  const found: string[] = []
  let more = 0
  for (const pid of entries('/proc').filter((entry) => /^\d+$/.test(entry))) {
    if (Number(pid) === exceptPid) continue
    const fdDir = path.join('/proc', pid, 'fd')
    const open = entries(fdDir).some((fd) => {
      try {
        const target = fs.readlinkSync(path.join(fdDir, fd))
        return names.some((name) => target.endsWith(name))
      } catch {
        return false
      }
    })
    if (!open) continue
    if (found.length === kMaxProcesses) {
      more++
      continue
    }
    found.push(`open by pid ${pid} (${readTrimmed(`/proc/${pid}/comm`) ?? '?'})`)
  }
  if (more > 0) found.push(`and ${more} more process${more === 1 ? '' : 'es'}`)
  return found
}

export interface DiskUsers {
  /** Mounts and stacked devices: they stay until someone removes them. */
  lasting: string[]
  /** Processes with the disk open: some only pass (udev's blkid). */
  processes: string[]
}

/** Every user in one list, the lasting ones first. */
export function everyUser({ lasting, processes }: DiskUsers): string[] {
  return [...lasting, ...processes]
}

/** What uses /dev/`disk` now, one phrase each. */
export function diskUsers(disk: string): DiskUsers {
  const parts = diskParts(disk)
  const nodes = new Set([...parts.keys()].map((name) => `/dev/${name}`))
  return { lasting: [...mounts(parts), ...holders(disk, parts)], processes: processesWithOpen(nodes, process.pid) }
}
