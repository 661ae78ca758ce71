// Per-queue statistics in shared memory: one Int32Array slice per queue, written only by that
// queue's worker and read by the main thread at scrape time.
//
// Every value is a 53-bit unsigned integer stored as two int32 words (lo, hi). A seqlock makes a
// reader's copy consistent: the writer bumps kSeq to odd, stores, bumps it to even; a reader
// retries while kSeq is odd or changed under it. The writer publishes once per loop turn.
//
//   word 0            kSeq (seqlock)
//   words 2..         values, 2 words each, in the order of statNames below
export const kSeqWord = 0
const kFirstValueWord = 2

export const ioOps = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'] as const
export type IoOpName = (typeof ioOps)[number]

/** Value slots: per op (ops, bytes, errors), then queue-wide values. */
export const statNames = [
  ...ioOps.flatMap((op) => [`${op}_ops`, `${op}_bytes`, `${op}_errors`]),
  'inflight', // requests taken from the kernel and not committed yet
  'loop_turns', // io_uring_enter calls of the queue loop
  'cqes', // CQEs reaped (cqes / loop_turns = mean batch size)
  'heartbeat_ms', // Date.now() at the end of the last loop turn
] as const
export type StatName = (typeof statNames)[number]

export const kStatCount = statNames.length
export const kQueueStatsWords = kFirstValueWord + kStatCount * 2

export function statIndex(name: StatName): number {
  return statNames.indexOf(name)
}

/** Slot of op `op` (index into ioOps) and field 0 ops, 1 bytes, 2 errors. */
export function opStatIndex(op: number, field: 0 | 1 | 2): number {
  return op * 3 + field
}

export const kStatInflight = statIndex('inflight')
export const kStatLoopTurns = statIndex('loop_turns')
export const kStatCqes = statIndex('cqes')
export const kStatHeartbeatMs = statIndex('heartbeat_ms')

export function allocQueueStats(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(queues * kQueueStatsWords * Int32Array.BYTES_PER_ELEMENT)
}

export function queueStatsView(buffer: SharedArrayBuffer, queue: number): Int32Array {
  return new Int32Array(buffer, queue * kQueueStatsWords * Int32Array.BYTES_PER_ELEMENT, kQueueStatsWords)
}

/** Writer side (the queue worker): values accumulate locally, publish() copies them out. */
export class QueueStatsWriter {
  readonly values = new Float64Array(kStatCount)
  constructor(private readonly shared: Int32Array) {}

  publish(): void {
    const shared = this.shared
    const values = this.values
    Atomics.add(shared, kSeqWord, 1)
    for (let i = 0; i < kStatCount; i++) {
      const value = values[i]!
      Atomics.store(shared, kFirstValueWord + i * 2, value % 0x1_0000_0000 | 0)
      Atomics.store(shared, kFirstValueWord + i * 2 + 1, Math.floor(value / 0x1_0000_0000))
    }
    Atomics.add(shared, kSeqWord, 1)
  }
}

// A writer that died mid-publish leaves kSeq odd forever: give up after this many tries and
// return the last copy rather than spin.
const kReadAttemptsMax = 1000

/** Reader side (main thread): a consistent copy of every value. */
export function readQueueStats(shared: Int32Array, out = new Float64Array(kStatCount)): Float64Array {
  for (let attempt = 0; attempt < kReadAttemptsMax; attempt++) {
    const before = Atomics.load(shared, kSeqWord)
    for (let i = 0; i < kStatCount; i++) {
      const lo = Atomics.load(shared, kFirstValueWord + i * 2) >>> 0
      const hi = Atomics.load(shared, kFirstValueWord + i * 2 + 1) >>> 0
      out[i] = hi * 0x1_0000_0000 + lo
    }
    if ((before & 1) === 0 && Atomics.load(shared, kSeqWord) === before) break
  }
  return out
}
