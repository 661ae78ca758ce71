// loop: a regular file or a block device exposed as a ublk device, with the semantics of the
// kernel's loop driver. The backing is opened once per device (main thread); every queue
// submits its file I/O on its own ring, in the same turn as its commits, or performs it inline
// (below):
//   READ / WRITE    IORING_OP_READ / WRITE at the request's offset; partial transfers are
//                   resubmitted for the rest; a read that meets the end of a regular file
//                   is zero-filled (the file may be shorter than the device), the end of a
//                   block device fails with EIO (it shrank under us: there is no data);
//                   FUA writes carry RWF_DSYNC so they are durable before they complete
//   FLUSH           fdatasync of the backing
//   DISCARD         punch hole: a regular file frees the range, a block device zeroes it with
//                   its write-zeroes (which may unmap), as the kernel loop driver does
//   WRITE_ZEROES    zero range; a regular file's range is punched instead unless the request
//                   says NOUNMAP, and on a filesystem that punches but cannot zero a range
//                   (tmpfs) a NOUNMAP range is punched, then allocated again
// A backing error completes the request with its negative errno. Each is advertised only as far
// as the backing can do it (probeZeroing, at setup): the device's limits cannot change once it
// started, and a request the backing refuses would fail with EOPNOTSUPP, logged by the kernel.
//
// Inline I/O: a file without FMODE_NOWAIT (tmpfs and ramfs in Linux 6.12) cannot be read or
// written from io_uring without blocking, so the kernel hands every such SQE to an io-wq worker
// thread: one more thread hop per request. On a memory filesystem the I/O is a memory copy that
// never waits, so the queue thread performs the same SQEs itself, a turn's batch in one call
// (native.executeSqes) at the end of the turn, at most kTurnDataBytes of it (a deep queue
// of large requests takes several short turns, none long enough for the stall watch to take
// the queue for stuck). --inline-io on|off overrides the choice.
import fs from 'node:fs'
import path from 'node:path'

import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  IORING_FSYNC_DATASYNC, IORING_OP_NOP, IORING_OP_READ, IORING_OP_READ_FIXED, IORING_OP_WRITE, IORING_OP_WRITE_FIXED,
  RWF_DSYNC, encodeFallocate, encodeFixedReadWrite, encodeFsync, encodeReadWrite, encodeSqeHeader, kSqeWords,
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
  kIoPending, kTurnDataBytes, requestBytes, type IoRequest, type QueueContext, type QueueHandler, type Target, type ZeroCopyLimits,
} from './target.js'

const kEagain = -11
const kEintr = -4
const kEio = -5
const kEinval = -22
const kEopnotsupp = -95
const kMaxZeroingSectors = 0x7fffffff
/** The cookie of the NOP that brings the next turn while inline SQEs are left: not a tag. */
const kWakeCookie = 0xffff

interface Backing {
  path: string
  isBlockDevice: boolean
  sizeBytes: number
  logicalBlockSize: number
  physicalBlockSize: number
  /** Block devices: whether they zero ranges themselves (write_zeroes_max_bytes > 0). */
  writeZeroes: boolean
  /** Allocation unit of a regular file's filesystem: the discard granularity. */
  allocationBytes: number
  /** A regular file: the alignment O_DIRECT needs there (statx), 0 when its filesystem does not say. */
  directIoAlignment: number
  /** The buffer address alignment O_DIRECT needs (sysfs dma_alignment of a block device, statx
   *  of a file), 0 when unknown. */
  directIoMemoryAlignment: number
  /** The block queue serving the backing's I/O (the disk's, for a partition or a file on one);
   *  null for a filesystem without one (tmpfs, btrfs, overlay, 9p). */
  queueDir: string | null
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

/** The fallocate modes that serve DISCARD and WRITE_ZEROES on a backing; 0: not advertised. */
interface ZeroingModes {
  discard: number
  /** WRITE_ZEROES that may deallocate the range. */
  zeroes: number
  /** WRITE_ZEROES with NOUNMAP: the range stays allocated. */
  zeroesKept: number
  /** zeroesKept punches: allocate the range again after it (a filesystem without zero range). */
  allocateAfterPunch: boolean
}

interface LoopSpec {
  fd: number
  path: string
  readOnly: boolean
  blockDevice: boolean
  directIo: boolean
  inlineIo: boolean
  zeroing: ZeroingModes
}

const kPunch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
const kZeroRange = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
const kAllocate = FALLOC_FL_KEEP_SIZE

/** fallocate(2) now, on the calling thread, through the inline executor; returns 0 or -errno. */
function fallocateNow(fd: number, mode: number, offset: number, length: number): number {
  const sqe = new Uint32Array(kSqeWords)
  const result = new Int32Array(1)
  encodeFallocate(sqe, 0, fd, mode, offset, length, 0, 0)
  native.executeSqes(sqe.buffer as ArrayBuffer, 1, result)
  return result[0]!
}

/**
 * What the backing can do for DISCARD and WRITE_ZEROES. A block device: fallocate PUNCH_HOLE is
 * its write-zeroes without a fallback (so only when it has one), ZERO_RANGE falls back to writing
 * zeros and always works. A regular file: each mode is tried past the end of the file and of the
 * device (KEEP_SIZE: the size stays), where no data lives, and what that allocated is given back.
 */
function probeZeroing(fd: number, backing: Backing, fileBytes: number, sizeBytes: number, readOnly: boolean): ZeroingModes {
  if (readOnly) return { discard: 0, zeroes: 0, zeroesKept: 0, allocateAfterPunch: false }
  if (backing.isBlockDevice) {
    const unmap = backing.writeZeroes ? kPunch : kZeroRange
    return { discard: backing.writeZeroes ? kPunch : 0, zeroes: unmap, zeroesKept: kZeroRange, allocateAfterPunch: false }
  }
  const unit = backing.allocationBytes
  const at = Math.ceil(Math.max(fileBytes, sizeBytes) / unit) * unit
  const works = (mode: number): boolean => {
    const result = fallocateNow(fd, mode, at, unit)
    return result !== kEopnotsupp && result !== kEinval
  }
  const punch = works(kPunch)
  const zeroRange = works(kZeroRange)
  const allocate = punch && !zeroRange && works(kAllocate)
  if (zeroRange || allocate) {
    // Past the end of the file: tmpfs keeps such pages through a truncate to the same size and
    // frees them on a punch, ext4 punches nothing past the end and frees them on that truncate.
    if (punch) fallocateNow(fd, kPunch, at, unit)
    fs.ftruncateSync(fd, fileBytes)
  }
  const kept = zeroRange ? kZeroRange : punch ? kPunch : 0
  return { discard: punch ? kPunch : 0, zeroes: punch ? kPunch : kept, zeroesKept: kept, allocateAfterPunch: allocate }
}

// statfs f_type of the filesystems whose files are memory: their reads and writes never wait.
const kMemoryFilesystems = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */])

function onMemoryFilesystem(backing: Backing): boolean {
  return !backing.isBlockDevice && kMemoryFilesystems.has(Number(fs.statfsSync(backing.path).type))
}

function readSysfsNumber(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim())
}

/** /sys/dev/block/MAJ:MIN of a dev_t as glibc encodes it: 12 bits of major above 8 low bits of
 *  minor (majors < 4096 here). */
function sysfsBlockDir(dev: number): string {
  const major = Math.floor(dev / 256) & 0xfff
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00)
  return `/sys/dev/block/${major}:${minor}`
}

/** The queue directory of a disk's sysfs `dir`, or for a partition its disk's (`..` resolves
 *  past the symlink); null for a device without one. */
function blockQueueDir(dir: string): string | null {
  return [`${dir}/queue`, `${dir}/../queue`].find((queue) => fs.existsSync(queue)) ?? null
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
    const sys = sysfsBlockDir(stat.rdev)
    const queue = blockQueueDir(sys)
    if (queue === null) throw new UsageError(`block device ${resolved} has no queue in ${sys}`)
    return {
      path: resolved,
      isBlockDevice: true,
      sizeBytes: readSysfsNumber(`${sys}/size`) * 512,
      logicalBlockSize: readSysfsNumber(`${queue}/logical_block_size`),
      physicalBlockSize: readSysfsNumber(`${queue}/physical_block_size`),
      writeZeroes: readSysfsNumber(`${queue}/write_zeroes_max_bytes`) > 0,
      allocationBytes: readSysfsNumber(`${queue}/logical_block_size`),
      directIoAlignment: 0,
      directIoMemoryAlignment: readSysfsNumber(`${queue}/dma_alignment`) + 1,
      queueDir: queue,
    }
  }
  if (!stat.isFile()) throw new UsageError(`backing file ${resolved} is neither a regular file nor a block device`)
  const [directIoAlignment, directIoMemoryAlignment] = native.directIoAlignment(resolved)
  return {
    path: resolved,
    isBlockDevice: false,
    sizeBytes: stat.size,
    logicalBlockSize: kDefaultLogicalBlockSize,
    physicalBlockSize: kDefaultLogicalBlockSize,
    writeZeroes: false,
    allocationBytes: stat.blksize > 0 ? stat.blksize : 4096,
    directIoAlignment,
    directIoMemoryAlignment,
    queueDir: blockQueueDir(sysfsBlockDir(stat.dev)),
  }
}

/** What the backing's direct I/O asks of a request's pages (see ZeroCopyLimits); none for
 *  buffered I/O, which copies through the page cache, or when the filesystem does not say. */
function zeroCopyLimits(backing: Backing, directIo: boolean): ZeroCopyLimits | undefined {
  if (!directIo || backing.directIoMemoryAlignment === 0) return undefined
  const queue = backing.queueDir
  return {
    dmaAlignmentBytes: backing.directIoMemoryAlignment,
    segments: queue === null ? undefined : {
      maxSegments: readSysfsNumber(`${queue}/max_segments`),
      maxSegmentBytes: readSysfsNumber(`${queue}/max_segment_size`),
    },
  }
}

/** The backing's logical block size, or for a regular file the alignment its direct I/O needs
 *  (a file on a 4 KiB-sector disk), as the kernel loop driver chooses with direct I/O. */
function defaultBlockSize(backing: Backing, directIo: boolean | undefined): number {
  const alignment = backing.directIoAlignment
  if (directIo !== false && alignment > backing.logicalBlockSize && alignment <= 4096) return alignment
  return backing.logicalBlockSize
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
  /** WRITE_ZEROES: the range's length, and whether it is allocated again once punched. */
  private readonly zeroBytes: Float64Array
  private readonly allocateNext: Uint8Array
  private readonly total: Uint32Array
  private readonly done: Uint32Array
  private readonly buffers: (Buffer | null)[]
  /** Where this queue's SQEs are encoded: the ring's staging area, or the inline batch. */
  private readonly sqes: Uint32Array
  private readonly inline: InlineBatch | null
  /** Zero copy: request `tag`'s pages are the ring's fixed buffer `tag`; the end of a file is
   *  zero-filled from /dev/zero into them (READ_FIXED) rather than by the daemon. */
  private readonly zeroCopy: boolean
  private readonly zeroFd: number
  /** Per tag: the READ is being zero-filled past the end of the file. */
  private readonly zeroFilling: Uint8Array
  /** Inline mode: a NOP is in flight to bring the next turn. */
  private wakePending = false

  constructor(private readonly spec: LoopSpec, private readonly queue: QueueContext) {
    this.op = new Uint8Array(queue.depth)
    this.fua = new Uint8Array(queue.depth)
    this.offset = new Float64Array(queue.depth)
    this.zeroBytes = new Float64Array(queue.depth)
    this.allocateNext = new Uint8Array(queue.depth)
    this.total = new Uint32Array(queue.depth)
    this.done = new Uint32Array(queue.depth)
    this.buffers = new Array<Buffer | null>(queue.depth).fill(null)
    this.zeroCopy = queue.ioMode === 'zero-copy'
    this.zeroFd = this.zeroCopy ? fs.openSync('/dev/zero', 'r') : -1
    this.zeroFilling = new Uint8Array(queue.depth)
    // Inline I/O performs SQEs with plain system calls, which cannot name a fixed buffer.
    this.inline = spec.inlineIo && !this.zeroCopy ? new InlineBatch(queue.depth) : null
    this.sqes = this.inline ? this.inline.sqes : queue.sqes
  }

  private reserveSqe(tag: number): number {
    return this.inline ? this.inline.reserve(tag) : this.queue.reserveSqe()
  }

  /**
   * Inline mode: perform the turn's SQEs, and those their completions stage (partial transfers),
   * within the turn's budget; a NOP on the ring brings the next turn for what is left.
   */
  endTurn(): void {
    const inline = this.inline
    if (!inline) return
    let budget = kTurnDataBytes
    while (inline.count > 0 && budget > 0) {
      const count = inline.execute(budget)
      budget -= inline.doneBytes
      for (let i = 0; i < count; i++) this.onCompletion(inline.doneTags[i]!, inline.doneResults[i]!)
    }
    if (inline.count > 0 && !this.wakePending) {
      encodeSqeHeader(this.queue.sqes, this.queue.reserveSqe(), IORING_OP_NOP, -1, kWakeCookie, kUserDataTarget)
      this.wakePending = true
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
        this.zeroFilling[tag] = 0
        this.fua[tag] = request.flags & UBLK_IO_F_FUA ? 1 : 0
        this.buffers[tag] = request.buffer
        this.stageTransfer(tag)
        return kIoPending
      case UBLK_IO_OP_FLUSH:
        encodeFsync(this.sqes, this.reserveSqe(tag), this.spec.fd, IORING_FSYNC_DATASYNC, tag, kUserDataTarget)
        return kIoPending
      case UBLK_IO_OP_DISCARD:
        return this.stageFallocate(tag, this.spec.zeroing.discard, offset, bytes)
      case UBLK_IO_OP_WRITE_ZEROES: {
        // A punched hole reads as zeros and frees the space, unless the caller wants it kept.
        const zeroing = this.spec.zeroing
        const keep = (request.flags & UBLK_IO_F_NOUNMAP) !== 0
        this.offset[tag] = offset
        this.zeroBytes[tag] = bytes
        this.allocateNext[tag] = keep && zeroing.allocateAfterPunch ? 1 : 0
        return this.stageFallocate(tag, keep ? zeroing.zeroesKept : zeroing.zeroes, offset, bytes)
      }
      default:
        return kEopnotsupp
    }
  }

  /** Mode 0: the device does not advertise the op, so the block layer never sends it. */
  private stageFallocate(tag: number, mode: number, offset: number, bytes: number): number {
    if (mode === 0) return kEopnotsupp
    encodeFallocate(this.sqes, this.reserveSqe(tag), this.spec.fd, mode, offset, bytes, tag, kUserDataTarget)
    return kIoPending
  }

  onCompletion(tag: number, res: number): void {
    if (tag === kWakeCookie) {
      this.wakePending = false
      return
    }
    const op = this.op[tag]
    if (op !== UBLK_IO_OP_READ && op !== UBLK_IO_OP_WRITE) {
      if (res === 0 && this.allocateNext[tag] === 1) {
        this.allocateNext[tag] = 0
        this.stageFallocate(tag, kAllocate, this.offset[tag]!, this.zeroBytes[tag]!)
        return
      }
      this.queue.complete(tag, res < 0 ? res : 0)
      return
    }
    if (res === kEagain || res === kEintr) {
      if (this.zeroFilling[tag] === 1) this.stageZeroFill(tag)
      else this.stageTransfer(tag)
      return
    }
    if (res < 0) {
      this.finish(tag, res)
      return
    }
    const total = this.total[tag]!
    if (this.zeroFilling[tag] === 1) {
      const filled = this.done[tag]! + res
      this.done[tag] = filled
      if (res === 0) this.finish(tag, kEio)
      else if (filled < total) this.stageZeroFill(tag)
      else this.finish(tag, total)
      return
    }
    if (res === 0) {
      if (op === UBLK_IO_OP_WRITE) {
        this.finish(tag, kEio) // no progress: do not spin
        return
      }
      if (this.spec.blockDevice) {
        this.finish(tag, kEio)
        return
      }
      // End of the backing file: the rest of the device reads as zeros.
      if (this.zeroCopy) {
        this.zeroFilling[tag] = 1
        this.stageZeroFill(tag)
        return
      }
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
    const write = this.op[tag] === UBLK_IO_OP_WRITE
    if (this.zeroCopy) {
      encodeFixedReadWrite(this.sqes, this.reserveSqe(tag), write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED,
        this.spec.fd, done, this.total[tag]! - done, this.offset[tag]! + done, tag, tag, kUserDataTarget,
        write && this.fua[tag] ? RWF_DSYNC : 0)
      return
    }
    const sum = this.queue.tagAddressLo[tag]! + done
    const addressLo = sum % 0x1_0000_0000
    const addressHi = this.queue.tagAddressHi[tag]! + (sum >= 0x1_0000_0000 ? 1 : 0)
    encodeReadWrite(this.sqes, this.reserveSqe(tag), write ? IORING_OP_WRITE : IORING_OP_READ,
      this.spec.fd, addressLo, addressHi, this.total[tag]! - done, this.offset[tag]! + done, tag, kUserDataTarget,
      write && this.fua[tag] ? RWF_DSYNC : 0)
  }

  /** Zero copy: the rest of a READ past the end of the file, from /dev/zero. */
  private stageZeroFill(tag: number): void {
    const done = this.done[tag]!
    encodeFixedReadWrite(this.sqes, this.reserveSqe(tag), IORING_OP_READ_FIXED, this.zeroFd, done, this.total[tag]! - done,
      0, tag, tag, kUserDataTarget)
  }

  private finish(tag: number, result: number): void {
    this.buffers[tag] = null
    this.queue.complete(tag, result)
  }

  close(): void {
    if (this.zeroFd >= 0) fs.closeSync(this.zeroFd)
  }
}

/** SQEs staged for inline execution, in order: at most one per tag. */
class InlineBatch {
  readonly sqes: Uint32Array
  private readonly tags: Int32Array
  private readonly results: Int32Array
  /** The last executed batch, copied out: completions may stage new SQEs over the batch. */
  readonly doneTags: Int32Array
  readonly doneResults: Int32Array
  /** The READ/WRITE bytes the last batch asked for. */
  doneBytes = 0
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

  /**
   * Perform the staged SQEs from the first, as many as `budgetBytes` of READ/WRITE allows (at
   * least one); returns how many, their tags and results in done*. The rest move to the front.
   */
  execute(budgetBytes: number): number {
    const sqes = this.sqes
    let count = 0
    let bytes = 0
    for (; count < this.count; count++) {
      const base = count * kSqeWords
      const opcode = sqes[base]! & 0xff
      // The SQE's len (bytes 24-27) is a READ/WRITE's length; other ops carry no data there.
      const sqeBytes = opcode === IORING_OP_READ || opcode === IORING_OP_WRITE ? sqes[base + 6]! : 0
      if (count > 0 && bytes + sqeBytes > budgetBytes) break
      bytes += sqeBytes
    }
    native.executeSqes(sqes.buffer as ArrayBuffer, count, this.results)
    for (let i = 0; i < count; i++) {
      this.doneTags[i] = this.tags[i]!
      this.doneResults[i] = this.results[i]!
    }
    sqes.copyWithin(0, count * kSqeWords, this.count * kSqeWords)
    this.tags.copyWithin(0, count, this.count)
    this.count -= count
    this.doneBytes = bytes
    return count
  }
}

export const loopTarget: Target<LoopOptions, LoopSpec> = {
  name: 'loop',
  survivesRestart: true,
  // Its file I/O reads into and writes from the tag buffers.
  // Zero copy is not auto's choice yet (opt in).
  ioModes: ['copy', 'zero-copy'],
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
    let directIo = onOff(raw['directIo'], '--direct-io')
    const logicalBlockSize = requestedBlockSize ?? defaultBlockSize(backing, directIo)
    if (logicalBlockSize < backing.logicalBlockSize) {
      throw new UsageError(`--logical-block-size ${logicalBlockSize} is smaller than ${backing.path}'s ${backing.logicalBlockSize}`)
    }
    // O_DIRECT on a file needs the alignment of its filesystem's device: a smaller block size
    // is served with buffered I/O, unless direct I/O was asked for.
    if (directIo !== false && logicalBlockSize < backing.directIoAlignment) {
      if (directIo === true) {
        throw new UsageError(`--logical-block-size ${logicalBlockSize} is smaller than the ${backing.directIoAlignment}-byte ` +
          `alignment direct I/O needs on ${backing.path}: use --logical-block-size ${backing.directIoAlignment} or --direct-io off`)
      }
      directIo = false
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
      backing, sizeBytes, logicalBlockSize, readOnly, directIo,
      inlineIo: onOff(raw['inlineIo'], '--inline-io'),
    }
  },
  setup(options) {
    const inlineIo = options.inlineIo ?? onMemoryFilesystem(options.backing)
    const { fd, directIo } = openBacking(options)
    const backing = options.backing
    let stat: fs.Stats
    let zeroing: ZeroingModes
    try {
      stat = fs.fstatSync(fd)
      zeroing = probeZeroing(fd, backing, stat.size, options.sizeBytes, options.readOnly)
    } catch (error) {
      fs.closeSync(fd)
      throw error
    }
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
          maxDiscardSectors: zeroing.discard !== 0 ? kMaxZeroingSectors : 0,
          maxWriteZeroesSectors: zeroing.zeroes !== 0 ? kMaxZeroingSectors : 0,
        },
        zeroCopyLimits: zeroCopyLimits(backing, directIo),
      },
      spec: { fd, path: backing.path, readOnly: options.readOnly, blockDevice: backing.isBlockDevice, directIo, inlineIo, zeroing },
      describe: { file: backing.path, directIo, inlineIo, readOnly: options.readOnly },
      exclusiveKey: backing.isBlockDevice ? `block:${stat.rdev}` : `file:${stat.dev}:${stat.ino}`,
    }
  },
  resize(spec, _fromBytes, sizeBytes) {
    if (spec.blockDevice) {
      const backing = inspectBacking(spec.path)
      if (sizeBytes > backing.sizeBytes) {
        throw new UsageError(`${spec.path} holds ${backing.sizeBytes} bytes: the device cannot be larger`)
      }
      return
    }
    // The file grows (sparsely) so that its size says what the device holds. It never shrinks:
    // what lies past a smaller device stays, for a resize back or for the operator to cut.
    if (spec.readOnly || fs.fstatSync(spec.fd).size >= sizeBytes) return
    try {
      fs.ftruncateSync(spec.fd, sizeBytes)
    } catch (error) {
      throw new UsageError(`cannot grow ${spec.path} to ${sizeBytes} bytes: ${(error as Error).message}`)
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
