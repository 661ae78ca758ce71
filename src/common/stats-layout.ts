// Per-queue statistics in shared memory: one slice per queue, written only by that queue's
// worker and read by the main thread at scrape time.
//
//   bytes 0-3    sequence number (Int32, Atomics): odd while the writer is copying
//   bytes 8-     values (Float64, integers below 2^53), in the order of statNames below
//
// A seqlock makes a reader's copy consistent: the writer bumps the sequence to odd (Atomics),
// copies all values in one TypedArray.set, and bumps it to even; a reader retries while the
// sequence is odd or changed under it. The sequentially consistent Atomics order the plain
// value stores between them. The writer publishes once per loop turn.
const kSeqBytes = 8

export const ioOps = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'] as const
export type IoOpName = (typeof ioOps)[number]

/**
 * Service-time histogram (from the request's arrival in the worker to its commit being
 * staged): bucket i counts requests that took at most kLatencyBucketBoundsNs[i]; the bounds
 * grow by sqrt(2) from 1 µs to about 1 s; the last bucket is everything slower. Counts are per
 * bucket, not cumulative.
 */
export const kLatencyBucketBoundsNs: readonly number[] = Array.from({ length: 41 }, (_, i) => 1000 * 2 ** (i / 2))
export const kLatencyBuckets = kLatencyBucketBoundsNs.length + 1

/** Batch-size histogram: CQEs handled per loop turn, bounds 1, 2, 4, ... 1024, then the rest. */
export const kBatchBucketBounds: readonly number[] = Array.from({ length: 11 }, (_, i) => 2 ** i)
export const kBatchBuckets = kBatchBucketBounds.length + 1

/** Value slots: per op (ops, bytes, errors), queue-wide values, then the two histograms. */
export const statNames = [
  ...ioOps.flatMap((op) => [`${op}_ops`, `${op}_bytes`, `${op}_errors`] as const),
  'inflight', // requests taken from the kernel and not committed yet
  'loop_turns', // io_uring_enter calls of the queue loop
  'cqes', // CQEs reaped (cqes / loop_turns = mean batch size)
  'heartbeat_ms', // Date.now() at the end of the last loop turn
  'latency_sum_ns', // sum of the service times counted in the latency histogram
  ...Array.from({ length: kLatencyBuckets }, (_, i) => `latency_bucket_${i}` as const),
  ...Array.from({ length: kBatchBuckets }, (_, i) => `batch_bucket_${i}` as const),
] as const
export type StatName = (typeof statNames)[number]

export const kStatCount = statNames.length
const kQueueStatsBytes = kSeqBytes + kStatCount * Float64Array.BYTES_PER_ELEMENT

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
export const kStatLatencySumNs = statIndex('latency_sum_ns')
export const kStatLatencyFirstBucket = statIndex('latency_bucket_0')
export const kStatBatchFirstBucket = statIndex('batch_bucket_0')

// floor(2^k * sqrt(2)) for k = 0..31: an integer number of µs above 2^k is at most the odd
// bound 2^(k + 1/2) exactly when it is at most this.
const kOddBoundMicros = Int32Array.from({ length: 32 }, (_, k) => Math.min(Math.floor(2 ** k * Math.SQRT2), 0x7fffffff))

/**
 * Latency histogram bucket of a service time in whole µs: the smallest i with
 * us <= 2^(i/2), clamped. Integer arithmetic only: it runs once per request.
 */
export function latencyBucketMicros(us: number): number {
  if (us <= 1) return 0
  const k = 31 - Math.clz32(us)
  const bucket = us === 1 << k ? 2 * k : us <= kOddBoundMicros[k]! ? 2 * k + 1 : 2 * k + 2
  return bucket < kLatencyBuckets - 1 ? bucket : kLatencyBuckets - 1
}

/** Batch histogram bucket of a batch of `count` CQEs: ceil(log2(count)), clamped. */
export function batchBucket(count: number): number {
  if (count <= 1) return 0
  const bucket = Math.ceil(Math.log2(count))
  return bucket < kBatchBuckets - 1 ? bucket : kBatchBuckets - 1
}

/**
 * A busy queue publishes its counters at most this often: a publish is a seqlocked copy of
 * every value, so doing it every loop turn (tens of µs apart under load) costs more than the
 * freshness is worth. An idle queue publishes within this long of its last request.
 */
export const kDefaultStatsPublishMicros = 1000

export function allocQueueStats(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(queues * kQueueStatsBytes)
}

/** One queue's slice: its sequence word and its values. */
export interface QueueStatsSlice {
  seq: Int32Array
  values: Float64Array
}

export function queueStatsView(buffer: SharedArrayBuffer, queue: number): QueueStatsSlice {
  const offset = queue * kQueueStatsBytes
  return {
    seq: new Int32Array(buffer, offset, 1),
    values: new Float64Array(buffer, offset + kSeqBytes, kStatCount),
  }
}

/**
 * Writer side (the queue worker): values accumulate locally, publish() copies them out. A new
 * writer carries on from what the slice holds, so counters survive a queue being restarted.
 */
export class QueueStatsWriter {
  readonly values: Float64Array
  constructor(private readonly shared: QueueStatsSlice) {
    this.values = readQueueStats(shared)
    // What was in flight belonged to the queue's previous life.
    this.values[kStatInflight] = 0
    // A previous writer that died mid-publish left the sequence odd; this writer owns the slice
    // now (the old one is gone), so make it even again, or every read would give up on it.
    if ((Atomics.load(shared.seq, 0) & 1) !== 0) Atomics.add(shared.seq, 0, 1)
  }

  publish(): void {
    const shared = this.shared
    Atomics.add(shared.seq, 0, 1)
    shared.values.set(this.values)
    Atomics.add(shared.seq, 0, 1)
  }
}

// A writer that died mid-publish leaves kSeq odd forever: give up after this many tries and
// return the last copy rather than spin.
const kReadAttemptsMax = 1000

/** Reader side (main thread): a consistent copy of every value. */
export function readQueueStats(shared: QueueStatsSlice, out = new Float64Array(kStatCount)): Float64Array {
  for (let attempt = 0; attempt < kReadAttemptsMax; attempt++) {
    const before = Atomics.load(shared.seq, 0)
    out.set(shared.values)
    if ((before & 1) === 0 && Atomics.load(shared.seq, 0) === before) break
  }
  return out
}
