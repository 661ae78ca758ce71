// fault: a RAM disk that misbehaves on purpose, for testing supervision and recovery. From the
// Nth request of the device on (counted across its queues, and across queue restarts), for
// --fault-count requests, it:
//   error   completes the request with -errno (--fault-errno, default 5 = EIO)
//   throw   throws from the queue thread: the queue task fails
//   exit    exits the queue thread (process.exit in a worker ends that thread only)
//   stall   spins the queue thread for --fault-stall-ms (default 60000): a stuck queue
//   delay   serves the request, but completes it --fault-delay-ms (default 100) later from a
//           timer, the thread serving others meanwhile: a slow backend (event-loop mode)
// and one fault that needs no request:
//   no-fetch  queue 0 leaves its last tag without a FETCH_REQ: the kernel never sees the
//           device ready, so START_DEV does not complete (tests the control commands' deadline)
// Not for data you care about.
import { UsageError } from '../common/errors.js'
import { MemoryQueue, memorySetup, type MemorySpec } from './memory.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions, sizeOption } from './options.js'
import { kIoPending, type IoRequest, type QueueContext, type QueueHandler, type Target } from './target.js'

const kFaults = ['error', 'throw', 'exit', 'stall', 'delay', 'no-fetch'] as const
type Fault = (typeof kFaults)[number]

interface FaultOptions {
  sizeBytes: number
  logicalBlockSize: number
  fault: Fault
  at: number
  count: number
  errno: number
  stallMs: number
  delayMs: number
}

interface FaultSpec {
  memory: MemorySpec
  fault: Fault
  at: number
  count: number
  errno: number
  stallMs: number
  delayMs: number
  /** Requests seen by the whole device: one Int32 shared by every queue. */
  seen: SharedArrayBuffer
}

function positiveInteger(raw: Record<string, unknown>, name: string, flag: string, fallback: number): number {
  const value = raw[name]
  if (value === undefined) return fallback
  const number = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
  if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < 1) {
    throw new UsageError(`${flag} must be a positive integer, got '${String(value)}'`)
  }
  return number
}

class FaultQueue implements QueueHandler {
  private readonly memory: MemoryQueue
  private readonly seen: Int32Array
  /** Tags of --fault delay requests the RAM disk has yet to complete: completed late. */
  private readonly delayed: Uint8Array
  readonly armedTags?: number

  constructor(private readonly spec: FaultSpec, private readonly queue: QueueContext) {
    this.delayed = new Uint8Array(queue.depth)
    this.memory = new MemoryQueue(spec.memory, queue, (tag, result) => {
      if (this.delayed[tag] === 0) return queue.complete(tag, result)
      this.delayed[tag] = 0
      this.completeLate(tag, result)
    })
    this.seen = new Int32Array(spec.seen)
    if (spec.fault === 'no-fetch' && queue.queueId === 0) this.armedTags = queue.depth - 1
  }

  handleIo(request: IoRequest): number {
    const nth = Atomics.add(this.seen, 0, 1) + 1
    const spec = this.spec
    if (nth < spec.at || nth >= spec.at + spec.count) return this.memory.handleIo(request)
    switch (spec.fault) {
      case 'error':
        return -spec.errno
      case 'throw':
        throw new Error(`fault target: injected failure at request ${nth}`)
      case 'exit':
        process.exit(70)
      case 'stall': {
        const until = Date.now() + spec.stallMs
        while (Date.now() < until) {
          // Spin: a stuck thread, which only termination ends.
        }
        return this.memory.handleIo(request)
      }
      case 'delay': {
        const tag = request.tag
        this.delayed[tag] = 1
        const result = this.memory.handleIo(request)
        // What the RAM disk completes itself (READ, WRITE, a long zeroing) comes through its
        // completion hook.
        if (result === kIoPending) return result
        this.delayed[tag] = 0
        this.completeLate(tag, result)
        return kIoPending
      }
      case 'no-fetch':
        return this.memory.handleIo(request)
    }
  }

  private completeLate(tag: number, result: number): void {
    setTimeout(() => this.queue.complete(tag, result), this.spec.delayMs)
  }

  onCompletion(cookie: number, res: number): void {
    this.memory.onCompletion(cookie, res)
  }

  endTurn(): void {
    this.memory.endTurn()
  }

  close(): void {}
}

export const faultTarget: Target<FaultOptions, FaultSpec> = {
  name: 'fault',
  survivesRestart: false,
  // A RAM disk: the memory target's modes.
  ioModes: ['user-copy', 'copy'],
  summary: 'a RAM disk that fails on purpose (testing tool, see docs/operations.md)',
  optionHelp: [
    '--size SIZE            device size (required)',
    '--fault error|throw|exit|stall|delay|no-fetch   what to do (required)',
    '--fault-at N           from the Nth request of the device on (default 1000)',
    '--fault-count N        for this many requests (default 1)',
    '--fault-errno N        errno for --fault error (default 5, EIO)',
    '--fault-stall-ms MS    how long --fault stall spins (default 60000)',
    '--fault-delay-ms MS    how late --fault delay completes (default 100; event-loop mode)',
  ],
  flags: [
    { name: 'size', field: 'size', type: 'string', short: 's' },
    { name: 'fault', field: 'fault', type: 'string' },
    { name: 'fault-at', field: 'faultAt', type: 'string' },
    { name: 'fault-count', field: 'faultCount', type: 'string' },
    { name: 'fault-errno', field: 'faultErrno', type: 'string' },
    { name: 'fault-stall-ms', field: 'faultStallMs', type: 'string' },
    { name: 'fault-delay-ms', field: 'faultDelayMs', type: 'string' },
  ],
  parseOptions(raw, requestedBlockSize) {
    rejectUnknownOptions(raw, ['size', 'fault', 'faultAt', 'faultCount', 'faultErrno', 'faultStallMs', 'faultDelayMs'], 'fault')
    const fault = raw['fault']
    if (typeof fault !== 'string' || !(kFaults as readonly string[]).includes(fault)) {
      throw new UsageError(`--fault must be one of ${kFaults.join(', ')}`)
    }
    const logicalBlockSize = requestedBlockSize ?? kDefaultLogicalBlockSize
    const errno = positiveInteger(raw, 'faultErrno', '--fault-errno', 5)
    if (errno > 4095) throw new UsageError('--fault-errno must be at most 4095')
    return {
      sizeBytes: sizeOption(raw, logicalBlockSize),
      logicalBlockSize,
      fault: fault as Fault,
      at: positiveInteger(raw, 'faultAt', '--fault-at', 1000),
      count: positiveInteger(raw, 'faultCount', '--fault-count', 1),
      errno,
      stallMs: positiveInteger(raw, 'faultStallMs', '--fault-stall-ms', 60_000),
      delayMs: positiveInteger(raw, 'faultDelayMs', '--fault-delay-ms', 100),
    }
  },
  setup(options) {
    const memory = memorySetup(options.sizeBytes, options.logicalBlockSize)
    const { fault, at, count, errno, stallMs, delayMs } = options
    return {
      geometry: memory.geometry,
      spec: { memory: memory.spec, fault, at, count, errno, stallMs, delayMs, seen: new SharedArrayBuffer(4) },
      describe: { fault, faultAt: at, faultCount: count },
      needsEventLoop: fault === 'delay',
    }
  },
  undo() {},
  openQueue(spec, queue) {
    return new FaultQueue(spec, queue)
  },
}
