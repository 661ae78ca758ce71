// The target interface: what a backend implements to serve a ublk device.
//
// A target is one file in src/targets/ and one entry in registry.ts. Its hooks run on two
// threads:
//   main thread   parseOptions() validates the user's options; setup() computes the device
//                 geometry (at once, or asynchronously when it asks a server) and a structured-cloneable spec (opening files, allocating shared
//                 memory) and undo() releases what setup() took.
//   queue worker  openQueue() builds the per-queue handler from the spec; handleIo() serves one
//                 request, at once or by staging its own SQEs on the queue's ring, whose
//                 completions come back through onCompletion(); close() releases the queue's
//                 resources.
// Nothing outside registry.ts switches on a target name.
import type { IoMode } from '../common/io-mode.js'
import type { Logger } from '../common/log.js'

/** Options as the user gave them (CLI flags or API fields), before validation. */
export type RawTargetOptions = Record<string, unknown>

export interface DiscardGeometry {
  granularityBytes: number
  maxDiscardSectors: number
  maxWriteZeroesSectors: number
}

/**
 * Zero copy hands a request's own pages to the backing (the loop target's O_DIRECT file I/O), so
 * the device must not take a buffer the backing would refuse (its DMA alignment: ublk takes any
 * 4-byte-aligned one) nor build segments it would split. In the other modes the daemon's
 * buffers or the char device sit between, and the kernel's defaults stand.
 */
export interface ZeroCopyLimits {
  /** The buffer address alignment the backing's direct I/O needs, in bytes (a power of 2). */
  dmaAlignmentBytes: number
  /** The backing queue's segment limits, when it has a block queue to read them from. */
  segments?: { maxSegments: number, maxSegmentBytes: number } | undefined
}

/** What the device looks like to the block layer (becomes struct ublk_params). */
export interface DeviceGeometry {
  sizeBytes: number
  logicalBlockSize: number
  physicalBlockSize: number
  readOnly: boolean
  /** The target has a volatile cache: the block layer sends FLUSH. */
  volatileCache: boolean
  /** With volatileCache: the target honours UBLK_IO_F_FUA, so the block layer sends FUA writes. */
  fua: boolean
  discard?: DiscardGeometry
  /** The largest READ/WRITE the block layer may send (default: the device's max_io_buf_bytes). */
  maxIoBytes?: number
  /** Applied in zero-copy mode only (UBLK_PARAM_TYPE_DMA_ALIGN and _SEGMENT). */
  zeroCopyLimits?: ZeroCopyLimits | undefined
}

export interface TargetSetup<Spec> {
  geometry: DeviceGeometry
  spec: Spec
  /** Shown by `ublkd list` (e.g. the backing file). */
  describe: Record<string, string | number | boolean>
  /** Two devices with the same key may not exist at once (e.g. the backing file's dev:ino). */
  exclusiveKey?: string
  /** The queues complete requests from timers or promises: they need --queue-mode event-loop. */
  needsEventLoop?: boolean
  /** The most queues the backing can serve correctly, and why (refused beyond it). */
  maxQueues?: number
  maxQueuesReason?: string
}

/** One request, reused for every I/O of a queue (no allocation per I/O). */
export interface IoRequest {
  tag: number
  /** UBLK_IO_OP_* */
  op: number
  /** UBLK_IO_F_* */
  flags: number
  /** 512-byte sectors, whatever the logical block size. */
  startSector: number
  nrSectors: number
  /**
   * Copy mode: the tag's I/O buffer (max_io_buf_bytes long): write data arrives here, read data
   * goes here. A Buffer so targets can copy ranges with buffer.copy() without allocating views.
   * Empty in user-copy mode (the data is reached through QueueContext.data).
   */
  buffer: Buffer
}

/** Where the queue's requests' data is (src/common/io-mode.ts), as a native.Copier endpoint. */
export interface RequestData {
  /** copy: the queue's I/O buffers (one Uint8Array); user-copy: the char device's descriptor
   *  (pwrite a READ's data to it, pread a WRITE's from it). */
  endpoint: Uint8Array | number
  /** Where tag t's data starts in `endpoint`. */
  tagOffset: Float64Array
}

/**
 * The most data a target moves synchronously in one loop turn (the memory target's copies, the
 * loop target's inline file I/O); what is left waits for the next turns. A turn that runs for
 * seconds is taken for a stuck queue by the stall watch: under emulation a copy into fresh
 * buffers ran at ~40 MiB/s (a 128 MiB turn outlasted its 3 s). On hardware 16 MiB is a few
 * milliseconds, and a turn costs microseconds.
 */
export const kTurnDataBytes = 16 * 2 ** 20

/** Returned by handleIo() when the result comes later through QueueContext.complete(). */
export const kIoPending = 1 << 30

export interface QueueContext {
  queueId: number
  /** The queue's logger (devId and queueId bound): lifecycle events only, never one line per I/O. */
  log: Logger
  /** The device's I/O mode, one of the target's ioModes. Zero copy: request `tag`'s pages are the
   *  ring's fixed buffer `tag`, for the target's READ_FIXED/WRITE_FIXED (IoRequest.buffer is empty). */
  ioMode: IoMode
  depth: number
  maxIoBufBytes: number
  /** Copy mode: user addresses of each tag's buffer, split in 32-bit halves, for the target's own
   *  SQEs (0 in user-copy mode). */
  tagAddressLo: Uint32Array
  tagAddressHi: Uint32Array
  data: RequestData
  /** The queue ring's staging SQEs (src/abi/io-uring.ts encodes them). */
  sqes: Uint32Array
  /**
   * Reserve the next SQE slot of this loop turn. The target encodes it with user_data
   * (cookie, kUserDataTarget); the SQE is submitted with the turn's commits, and its CQE comes
   * back through QueueHandler.onCompletion(cookie, res). At most one target SQE per tag may be
   * in flight (the ring is sized for that).
   */
  reserveSqe(): number
  /**
   * Event-loop mode: have the SQEs reserved outside a loop turn (from a timer, a promise, a
   * socket's callback) submitted as soon as the current callback returns. Within a turn they go
   * with the turn's anyway.
   */
  submitSoon(): void
  /**
   * Report the result of a request handleIo() left pending. In ring mode only from
   * onCompletion() or endTurn(); in event-loop mode at any time (a timer, a promise).
   */
  complete(tag: number, result: number): void
}

export interface QueueHandler {
  /**
   * Serve one request: return bytes done (READ/WRITE), 0 (FLUSH/DISCARD/WRITE_ZEROES), a
   * negative errno, or kIoPending.
   */
  handleIo(request: IoRequest): number
  /** A CQE of an SQE this target staged (targets that stage none need not implement it). */
  onCompletion?(cookie: number, res: number): void
  /**
   * Called once per loop turn, after the turn's CQEs were dispatched and before its SQEs are
   * submitted: a target that batches work across a turn's requests does it here, completing
   * them with QueueContext.complete().
   */
  endTurn?(): void
  /**
   * How many tags (from 0) the queue arms with FETCH_REQ when it starts; default all. Only a
   * testing tool arms fewer (the fault target's `no-fetch`): START_DEV then never completes.
   */
  readonly armedTags?: number
  /** The queue ends. `targetIoDrained`: every SQE the target staged has completed (false: some
   *  did not within the drain's deadline, so memory they name must stay mapped). */
  close(targetIoDrained: boolean): void
}

/** A command-line flag of a target: `--name VALUE` (or a switch) becomes option `field`. */
export interface TargetFlag {
  name: string
  field: string
  type: 'string' | 'boolean'
  short?: string
}

export interface Target<Options = unknown, Spec = unknown> {
  name: string
  summary: string
  /**
   * Whether a restarted daemon may re-attach the device: its data outlives the process (a
   * file) or it has none (null). A RAM disk's data died with the old process.
   */
  survivesRestart: boolean
  /** The I/O modes the target serves (src/common/io-mode.ts), fastest first: `--io-mode auto`
   *  takes the first one the kernel offers. */
  ioModes: readonly IoMode[]
  /** Lines for `ublkd add --help`. */
  optionHelp: readonly string[]
  /** Flags `ublkd add` accepts for this target (several targets may share one). */
  flags: readonly TargetFlag[]
  /** `logicalBlockSize` is the user's --logical-block-size, if given; the target picks otherwise. */
  parseOptions(raw: RawTargetOptions, logicalBlockSize: number | undefined): Options
  /** May connect to a server (a promise) to learn the geometry; a refusal is a UblkdError. */
  setup(options: Options): TargetSetup<Spec> | Promise<TargetSetup<Spec>>
  /**
   * `ublkd resize` (main thread): make room for a larger size (grow the backing) before the
   * kernel sees it, or release what a smaller one leaves after the kernel has it; refuse with a
   * UsageError. The caller checked that the size is a positive multiple of the logical block
   * size. Absent: the target cannot change its size.
   */
  resize?(spec: Spec, fromBytes: number, toBytes: number): void
  undo(spec: Spec): void
  /** May load the target's queue-side code first (a promise), so that threads of other targets
   *  never load it. */
  openQueue(spec: Spec, queue: QueueContext): QueueHandler | Promise<QueueHandler>
}

/** Bytes a READ/WRITE moves. */
export function requestBytes(request: IoRequest): number {
  return request.nrSectors * 512
}
