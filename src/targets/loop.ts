// loop: a regular file or a block device exposed as a ublk device, with the semantics of the
// kernel's loop driver. The backing is opened once per device (main thread); every queue
// submits its file I/O on its own ring, in the same turn as its commits:
//   READ / WRITE    IORING_OP_READ / WRITE at the request's offset; partial transfers are
//                   resubmitted for the rest; a read that meets end-of-file is zero-filled;
//                   FUA writes carry RWF_DSYNC so they are durable before they complete
//   FLUSH           fdatasync of the backing
//   DISCARD         punch hole (regular file) or a real discard (block device)
//   WRITE_ZEROES    zero range; without NOUNMAP a regular file's range is punched instead
// A backing error completes the request with its negative errno.
import fs from 'node:fs'
import path from 'node:path'

import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_NO_HIDE_STALE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  IORING_FSYNC_DATASYNC, IORING_OP_READ, IORING_OP_WRITE, RWF_DSYNC, encodeFallocate, encodeFsync,
  encodeReadWrite,
} from '../abi/io-uring.js'
import {
  UBLK_IO_F_FUA, UBLK_IO_F_NOUNMAP, UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ,
  UBLK_IO_OP_WRITE, UBLK_IO_OP_WRITE_ZEROES,
} from '../abi/ublk-cmd.js'
import { UsageError } from '../common/errors.js'
import { kUserDataTarget } from '../common/user-data.js'
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
}

interface LoopSpec {
  fd: number
  isBlockDevice: boolean
  directIo: boolean
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

  constructor(private readonly spec: LoopSpec, private readonly queue: QueueContext) {
    this.op = new Uint8Array(queue.depth)
    this.fua = new Uint8Array(queue.depth)
    this.offset = new Float64Array(queue.depth)
    this.total = new Uint32Array(queue.depth)
    this.done = new Uint32Array(queue.depth)
    this.buffers = new Array<Buffer | null>(queue.depth).fill(null)
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
        encodeFsync(this.queue.sqes, this.queue.reserveSqe(), this.spec.fd, IORING_FSYNC_DATASYNC, tag, kUserDataTarget)
        return kIoPending
      case UBLK_IO_OP_DISCARD: {
        const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE | (this.spec.isBlockDevice ? FALLOC_FL_NO_HIDE_STALE : 0)
        encodeFallocate(this.queue.sqes, this.queue.reserveSqe(), this.spec.fd, mode, offset, bytes, tag, kUserDataTarget)
        return kIoPending
      }
      case UBLK_IO_OP_WRITE_ZEROES: {
        // A punched hole reads as zeros and frees the space, unless the caller wants it kept.
        const unmap = !this.spec.isBlockDevice && (request.flags & UBLK_IO_F_NOUNMAP) === 0
        const mode = (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE
        encodeFallocate(this.queue.sqes, this.queue.reserveSqe(), this.spec.fd, mode, offset, bytes, tag, kUserDataTarget)
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
    encodeReadWrite(this.queue.sqes, this.queue.reserveSqe(), write ? IORING_OP_WRITE : IORING_OP_READ,
      this.spec.fd, addressLo, addressHi, this.total[tag]! - done, this.offset[tag]! + done, tag, kUserDataTarget,
      write && this.fua[tag] ? RWF_DSYNC : 0)
  }

  private finish(tag: number, result: number): void {
    this.buffers[tag] = null
    this.queue.complete(tag, result)
  }

  close(): void {}
}

export const loopTarget: Target<LoopOptions, LoopSpec> = {
  name: 'loop',
  survivesRestart: true,
  summary: 'a regular file or block device (like the kernel loop driver)',
  optionHelp: [
    '-f, --file PATH          backing regular file or block device (required)',
    '--size SIZE              device size (default: the backing\'s size)',
    '--direct-io on|off       O_DIRECT on the backing (default: on where supported)',
    '--read-only              serve the backing read-only',
  ],
  flags: [
    { name: 'file', field: 'file', type: 'string', short: 'f' },
    { name: 'size', field: 'size', type: 'string', short: 's' },
    { name: 'direct-io', field: 'directIo', type: 'string' },
    { name: 'read-only', field: 'readOnly', type: 'boolean' },
  ],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['file', 'size', 'directIo', 'readOnly'], 'loop')
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
    return { backing, sizeBytes, logicalBlockSize, readOnly, directIo: onOff(raw['directIo'], '--direct-io') }
  },
  setup(options) {
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
      spec: { fd, isBlockDevice: backing.isBlockDevice, directIo },
      describe: { file: backing.path, directIo, readOnly: options.readOnly },
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
