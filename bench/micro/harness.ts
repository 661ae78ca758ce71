// The micro-benchmark harness: each bench/micro/*.bench.ts exports `benches`, a list of named
// measurements; bench/micro/run.ts runs them. Timing is process.hrtime.bigint() around a round of
// many operations, after warm-up rounds (so the JIT has optimised the body), and the median of
// several rounds is reported.

export interface MicroResult {
  /** What was measured, e.g. "encode COMMIT_AND_FETCH_REQ SQE". */
  name: string
  value: number
  unit: string
  /** Spread and anything else worth a glance (min/max of the rounds, bytes per request...). */
  detail: string
}

export interface MicroBench {
  /** Short id, used to filter: `npm run bench -- micro sqe`. */
  id: string
  run(): MicroResult[] | Promise<MicroResult[]>
}

export interface TimeOptions {
  rounds?: number
  warmupRounds?: number
}

/** Median ns per operation of `body`, which performs `opsPerRound` operations per call. */
export function timeOps(name: string, opsPerRound: number, body: () => void, options: TimeOptions = {}): MicroResult {
  const rounds = options.rounds ?? 9
  for (let i = 0; i < (options.warmupRounds ?? 3); i++) body()
  const samples: number[] = []
  for (let i = 0; i < rounds; i++) {
    const started = process.hrtime.bigint()
    body()
    samples.push(Number(process.hrtime.bigint() - started) / opsPerRound)
  }
  samples.sort((a, b) => a - b)
  return {
    name, value: median(samples), unit: 'ns/op',
    detail: `min ${samples[0]!.toFixed(1)}, max ${samples[samples.length - 1]!.toFixed(1)} over ${rounds} rounds of ${opsPerRound}`,
  }
}

export function median(sorted: readonly number[]): number {
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/**
 * A place to put results the optimiser must not discard. Benchmarks add to it; the runner
 * prints nothing from it but reads it, so the computations stay observable.
 */
export const sink = { value: 0 }

/** global.gc when node runs with --expose-gc. */
export function collectGarbage(): boolean {
  const gc = (globalThis as { gc?: () => void }).gc
  if (!gc) return false
  gc()
  gc()
  return true
}
