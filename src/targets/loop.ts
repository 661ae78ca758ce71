// loop: a regular file or a block device exposed as a ublk device, with the semantics of the
// kernel's loop driver. The backing is opened once per device (main thread); every queue
// submits its file I/O on its own ring, in the same turn as its commits, or performs it inline
// (below):
//   READ / WRITE    IORING_OP_READ / WRITE at the request's offset; partial transfers are
//                   resubmitted for the rest; a read that meets end-of-file is zero-filled;
//                   FUA writes carry RWF_DSYNC so they are durable before they complete
//   FLUSH           fdatasync of the backing
//   DISCARD         punch hole (regular file) or a real discard (block device)
//   WRITE_ZEROES    zero range; without NOUNMAP a regular file's range is punched instead
// A backing error completes the request with its negative errno.
//
// Inline I/O: a file without FMODE_NOWAIT (tmpfs and ramfs in Linux 6.12) cannot be read or
// written from io_uring without blocking, so the kernel hands every such SQE to an io-wq worker
// thread: one more thread hop per request. On a memory filesystem the I/O is a memory copy that
// never waits, so the queue thread performs the same SQEs itself, a turn's batch in one call
// (native.executeSqes) at the end of the turn. --inline-io on|off overrides the choice.
import fs from 'node:fs'
import path from 'node:path'

import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_NO_HIDE_STALE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  IORING_FSYNC_DATASYNC, IORING_OP_READ, IORING_OP_WRITE, RWF_DSYNC, encodeFallocate, encodeFsync,
  encodeReadWrite, kSqeWords,
} from '../abi/io-uring.js'
import {
  UBLK_IO_F_FUA, UBLK_IO_F_NOUNMAP, UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ,
  UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../abi/ublk-cmd.js'
import { UsageError } from '../common/errors.js'
import { kUserDataTarget } from '../common/user-data.js'
import { native } from '../native/addon.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import {
  kIoPending, requestBytes, type IoRequest, type QueueContext, type QueueHandler, type Target,
} from './target.js'

const kEagain = -11
const kEintr = -4
const kEio = -5
const kEopnotsupp = -95

interface Backing {
  path: string
  isBlockDevice: boolean
  sizeBytes: number
  logicalBlockSize: number
  physicalBlockSize: number
  /** Block devices: whether they take discards at all. */
  discards: boolean
  /** Allocation unit of a regular file's filesystem: the discard granularity. */
  allocationBytes: number
}

interface LoopOptions {
  backing: Backing
  sizeBytes: number
  logicalBlockSize: number
  readOnly: boolean
  /** undefined: O_DIRECT where the backing supports it, buffered otherwise. */
  directIo: boolean | undefined
  /** undefined: inline for a file on a memory filesystem, on the ring otherwise. */
  inlineIo: boolean | undefined
}

interface LoopSpec {
  fd: number
  isBlockDevice: boolean
  directIo: boolean
  inlineIo: boolean
}

// statfs f_type of the filesystems whose files are memory: their reads and writes never wait.
const kMemoryFilesystems = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */])

function onMemoryFilesystem(backing: Backing): boolean {
  return !backing.isBlockDevice && kMemoryFilesystems.has(Number(fs.statfsSync(backing.path).type))
}

function readSysfsNumber(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim())
}

function inspectBacking(file: string): Backing {
  const resolved = path.resolve(file)
  let stat: fs.Stats
  try {
    stat = fs.statSync(resolved)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new UsageError(`backing file ${resolved} does not exist`)
    throw new UsageError(`cannot stat backing file ${resolved}: ${(error as Error).message}`)
  }
  if (stat.isDirectory()) throw new UsageError(`backing file ${resolved} is a directory`)
  if (stat.isBlockDevice()) {
    // dev_t as glibc encodes it: 12 bits of major above 8 low bits of minor (majors < 4096 here).
    const major = Math.floor(stat.rdev / 256) & 0xfff
    const minor = (stat.rdev & 0xff) | (Math.floor(stat.rdev / 4096) & 0xfff00)
    const sys = `/sys/dev/block/${major}:${minor}`
    return {
      path: resolved,
      isBlockDevice: true,
      sizeBytes: readSysfsNumber(`${sys}/size`) * 512,
      logicalBlockSize: readSysfsNumber(`${sys}/queue/logical_block_size`),
      physicalBlockSize: readSysfsNumber(`${sys}/queue/physical_block_size`),
      discards: readSysfsNumber(`${sys}/queue/discard_max_bytes`) > 0,
      allocationBytes: readSysfsNumber(`${sys}/queue/logical_block_size`),
    }
  }
  if (!stat.isFile()) throw new UsageError(`backing file ${resolved} is neither a regular file nor a block device`)
  return {
    path: resolved,
    isBlockDevice: false,
    sizeBytes: stat.size,
    logicalBlockSize: kDefaultLogicalBlockSize,
    physicalBlockSize: kDefaultLogicalBlockSize,
    discards: true,
    allocationBytes: stat.blksize > 0 ? stat.blksize : 4096,
  }
}

function onOff(value: unknown, flag: string): boolean | undefined {
  if (value === undefined) return undefined
  if (value === 'on' || value === true) return true
  if (value === 'off' || value === false) return false
  throw new UsageError(`${flag} must be on or off, got '${String(value)}'`)
}

function openBacking(options: LoopOptions): { fd: number; directIo: boolean } {
  const access = options.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR
  const tryOpen = (direct: boolean) => fs.openSync(options.backing.path, access | (direct ? fs.constants.O_DIRECT : 0))
  try {
    if (options.directIo !== false) {
      try {
        return { fd: tryOpen(true), directIo: true }
      } catch (error) {
        // A filesystem without O_DIRECT says EINVAL; only then fall back, and only when asked to.
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL' || options.directIo === true) throw error
      }
    }
    return { fd: tryOpen(false), directIo: false }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    const mode = options.readOnly ? 'reading' : 'reading and writing'
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new UsageError(`cannot open ${options.backing.path} for ${mode} (${code})${options.readOnly ? '' : '; use --read-only to serve it read-only'}`)
    }
    if (code === 'EINVAL' && options.directIo === true) {
      throw new UsageError(`${options.backing.path} does not support direct I/O; use --direct-io off`)
    }
    throw new UsageError(`cannot open ${options.backing.path}: ${(error as Error).message}`)
  }
}

class LoopQueue implements QueueHandler {
  private readonly op: Uint8Array
  private readonly fua: Uint8Array
  private readonly offset: Float64Array
  private readonly total: Uint32Array
  private readonly done: Uint32Array
  private readonly buffers: (Buffer | null)[]
  /** Where this queue's SQEs are encoded: the ring's staging area, or the inline batch. */
  private readonly sqes: Uint32Array
  private readonly inline: InlineBatch | null

  constructor(private readonly spec: LoopSpec, private readonly queue: QueueContext) {
    this.op = new Uint8Array(queue.depth)
    this.fua = new Uint8Array(queue.depth)
    this.offset = new Float64Array(queue.depth)
    this.total = new Uint32Array(queue.depth)
    this.done = new Uint32Array(queue.depth)
    this.buffers = new Array<Buffer | null>(queue.depth).fill(null)
    this.inline = spec.inlineIo ? new InlineBatch(queue.depth) : null
    this.sqes = this.inline ? this.inline.sqes : queue.sqes
  }

  private reserveSqe(tag: number): number {
    return this.inline ? this.inline.reserve(tag) : this.queue.reserveSqe()
  }

  /** Inline mode: perform the turn's SQEs, and those their completions stage (partial transfers). */
  endTurn(): void {
    const inline = this.inline
    if (!inline) return
    while (inline.count > 0) {
      const count = inline.execute()
      for (let i = 0; i < count; i++) this.onCompletion(inline.doneTags[i]!, inline.doneResults[i]!)
    }
  }

  handleIo(request: IoRequest): number {
    const tag = request.tag
    const offset = request.startSector * 512
    const bytes = requestBytes(request)
    this.op[tag] = request.op
    switch (request.op) {
      case UBLK_IO_OP_READ:
      case UBLK_IO_OP_WRITE:
        this.offset[tag] = offset
        this.total[tag] = bytes
        this.done[tag] = 0
        this.fua[tag] = request.flags & UBLK_IO_F_FUA ? 1 : 0
        this.buffers[tag] = request.buffer
        this.stageTransfer(tag)
        return kIoPending
      case UBLK_IO_OP_FLUSH:
        encodeFsync(this.sqes, this.reserveSqe(tag), this.spec.fd, IORING_FSYNC_DATASYNC, tag, kUserDataTarget)
        return kIoPending
      case UBLK_IO_OP_DISCARD: {
        const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE | (this.spec.isBlockDevice ? FALLOC_FL_NO_HIDE_STALE : 0)
        encodeFallocate(this.sqes, this.reserveSqe(tag), this.spec.fd, mode, offset, bytes, tag, kUserDataTarget)
        return kIoPending
      }
      case UBLK_IO_OP_WRITE_ZEROES: {
        // A punched hole reads as zeros and frees the space, unless the caller wants it kept.
        const unmap = !this.spec.isBlockDevice && (request.flags & UBLK_IO_F_NOUNMAP) === 0
        const mode = (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE
        encodeFallocate(this.sqes, this.reserveSqe(tag), this.spec.fd, mode, offset, bytes, tag, kUserDataTarget)
        return kIoPending
      }
      default:
        return kEopnotsupp
    }
  }

  onCompletion(tag: number, res: number): void {
    const op = this.op[tag]
    if (op !== UBLK_IO_OP_READ && op !== UBLK_IO_OP_WRITE) {
      this.queue.complete(tag, res < 0 ? res : 0)
      return
    }
    if (res === kEagain || res === kEintr) {
      this.stageTransfer(tag)
      return
    }
    if (res < 0) {
      this.finish(tag, res)
      return
    }
    const total = this.total[tag]!
    if (res === 0) {
      if (op === UBLK_IO_OP_WRITE) {
        this.finish(tag, kEio) // no progress: do not spin
        return
      }
      // End of the backing file: the rest of the device reads as zeros.
      this.buffers[tag]!.fill(0, this.done[tag]!, total)
      this.finish(tag, total)
      return
    }
    const done = this.done[tag]! + res
    this.done[tag] = done
    if (done < total) this.stageTransfer(tag)
    else this.finish(tag, total)
  }

  private stageTransfer(tag: number): void {
    const done = this.done[tag]!
    const sum = this.queue.tagAddressLo[tag]! + done
    const addressLo = sum % 0x1_0000_0000
    const addressHi = this.queue.tagAddressHi[tag]! + (sum >= 0x1_0000_0000 ? 1 : 0)
    const write = this.op[tag] === UBLK_IO_OP_WRITE
    encodeReadWrite(this.sqes, this.reserveSqe(tag), write ? IORING_OP_WRITE : IORING_OP_READ,
      this.spec.fd, addressLo, addressHi, this.total[tag]! - done, this.offset[tag]! + done, tag, kUserDataTarget,
      write && this.fua[tag] ? RWF_DSYNC : 0)
  }

  private finish(tag: number, result: number): void {
    this.buffers[tag] = null
    this.queue.complete(tag, result)
  }

  close(): void {}
}

/** SQEs staged for inline execution this turn: at most one per tag. */
class InlineBatch {
  readonly sqes: Uint32Array
  private readonly tags: Int32Array
  private readonly results: Int32Array
  /** The last executed batch, copied out: completions may stage new SQEs over the batch. */
  readonly doneTags: Int32Array
  readonly doneResults: Int32Array
  count = 0

  constructor(depth: number) {
    this.sqes = new Uint32Array(depth * kSqeWords)
    this.tags = new Int32Array(depth)
    this.results = new Int32Array(depth)
    this.doneTags = new Int32Array(depth)
    this.doneResults = new Int32Array(depth)
  }

  reserve(tag: number): number {
    this.tags[this.count] = tag
    return this.count++
  }

  /** Perform the staged SQEs; returns how many, their tags and results in done*. */
  execute(): number {
    const count = this.count
    native.executeSqes(this.sqes.buffer as ArrayBuffer, count, this.results)
    for (let i = 0; i < count; i++) {
      this.doneTags[i] = this.tags[i]!
      this.doneResults[i] = this.results[i]!
    }
    this.count = 0
    return count
  }
}

export const loopTarget: Target<LoopOptions, LoopSpec> = {
  name: 'loop',
  survivesRestart: true,
  summary: 'a regular file or block device (like the kernel loop driver)',
  optionHelp: [
    '-f, --file PATH          backing regular file or block device (required)',
    '--size SIZE              device size (default: the backing\'s size)',
    '--direct-io on|off       O_DIRECT on the backing (default: on where supported)',
    '--inline-io on|off       the queue threads perform the file I/O themselves instead of',
    '                         through io_uring (default: on for tmpfs/ramfs files, whose',
    '                         io_uring I/O the kernel hands to a worker thread)',
    '--read-only              serve the backing read-only',
  ],
  flags: [
    { name: 'file', field: 'file', type: 'string', short: 'f' },
    { name: 'size', field: 'size', type: 'string', short: 's' },
    { name: 'direct-io', field: 'directIo', type: 'string' },
    { name: 'inline-io', field: 'inlineIo', type: 'string' },
    { name: 'read-only', field: 'readOnly', type: 'boolean' },
  ],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['file', 'size', 'directIo', 'inlineIo', 'readOnly'], 'loop')
    const file = raw['file']
    if (typeof file !== 'string' || file.length === 0) throw new UsageError('loop needs a backing file: -f PATH')
    const backing = inspectBacking(file)
    const logicalBlockSize = requestedBlockSize ?? backing.logicalBlockSize
    if (logicalBlockSize < backing.logicalBlockSize) {
      throw new UsageError(`--logical-block-size ${logicalBlockSize} is smaller than ${backing.path}'s ${backing.logicalBlockSize}`)
    }
    if (raw['size'] === undefined && backing.sizeBytes === 0) {
      throw new UsageError(`backing file ${backing.path} is empty: give --size`)
    }
    const sizeBytes = sizeOption(raw, logicalBlockSize, backing.sizeBytes)
    if (backing.isBlockDevice && sizeBytes > backing.sizeBytes) {
      throw new UsageError(`--size ${sizeBytes} is larger than ${backing.path} (${backing.sizeBytes} bytes)`)
    }
    const readOnly = onOff(raw['readOnly'], '--read-only') ?? false
    return {
      backing, sizeBytes, logicalBlockSize, readOnly,
      directIo: onOff(raw['directIo'], '--direct-io'),
      inlineIo: onOff(raw['inlineIo'], '--inline-io'),
    }
  },
  setup(options) {
    const inlineIo = options.inlineIo ?? onMemoryFilesystem(options.backing)
    const { fd, directIo } = openBacking(options)
    const stat = fs.fstatSync(fd)
    const backing = options.backing
    const maxSectors = 0x7fffffff
    return {
      geometry: {
        sizeBytes: options.sizeBytes,
        logicalBlockSize: options.logicalBlockSize,
        physicalBlockSize: Math.max(options.logicalBlockSize, backing.physicalBlockSize),
        readOnly: options.readOnly,
        volatileCache: true,
        fua: true,
        discard: {
          granularityBytes: Math.max(options.logicalBlockSize, backing.allocationBytes),
          maxDiscardSectors: backing.discards ? maxSectors : 0,
          maxWriteZeroesSectors: maxSectors,
        },
      },
      spec: { fd, isBlockDevice: backing.isBlockDevice, directIo, inlineIo },
      describe: { file: backing.path, directIo, inlineIo, readOnly: options.readOnly },
      exclusiveKey: backing.isBlockDevice ? `block:${stat.rdev}` : `file:${stat.dev}:${stat.ino}`,
    }
  },
  undo(spec) {
    // What the device acknowledged is on the backing's media before it is let go.
    try {
      fs.fdatasyncSync(spec.fd)
    } finally {
      fs.closeSync(spec.fd)
    }
  },
  openQueue(spec, queue) {
    return new LoopQueue(spec, queue)
  },
}
