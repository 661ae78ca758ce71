// Heap growth of the hot path: the real QueueLoop with the real null and memory targets, against
// a scripted ring that behaves like a busy device (every tag committed in one turn comes back
// with a new request in a later turn, at most kBatch per turn), for kRequests requests. The heap
// is measured after global.gc() once the loop has warmed up and again at the end: if nothing is
// allocated per request, the difference divided by the requests is ~0 bytes. Retained growth
// alone would miss short-lived garbage, so the garbage collections during the measured part are
// counted too (a PerformanceObserver on 'gc'), and without any, the growth of the young
// generation is the bytes allocated.
import { PerformanceObserver } from 'node:perf_hooks'
import v8 from 'node:v8'

import { pino } from 'pino'

import { kCqeWords, kSqeWords } from '../../src/abi/io-uring.js'
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_RES_ABORT } from '../../src/abi/ublk-cmd.js'
import { QueueStatsWriter, allocQueueStats, queueStatsView } from '../../src/common/stats-layout.js'
import { kUserDataUblk } from '../../src/common/user-data.js'
import type { NativeRing } from '../../src/native/addon.js'
import { kIoDescWords } from '../../src/queue-worker/io-desc.js'
import { QueueLoop } from '../../src/queue-worker/queue-loop.js'
import { createStartGate } from '../../src/common/start-gate.js'
import { findTarget } from '../../src/targets/registry.js'
import { collectGarbage, type MicroBench, type MicroResult } from './harness.js'

const kDepth = 128
const kBatch = 32 // CQEs per turn, a qd32 client's worth
const kRequests = 1_000_000
const kWarmup = 100_000
const kIoBytes = 4096
const kSpanSectors = (64 * 2 ** 20) / 512 // requests land in the first 64 MiB

interface Checkpoint { heapUsed: number; newSpaceUsed: number; at: bigint }

function newSpaceUsed(): number {
  return v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_used_size ?? 0
}

/** A ring that plays a device: FETCH/COMMIT_AND_FETCH re-arm a tag, an armed tag gets a request. */
class BusyDeviceRing implements NativeRing {
  readonly sqEntries = 2 * kDepth
  readonly cqEntries = 4 * kDepth
  readonly sqes = new ArrayBuffer(this.sqEntries * kSqeWords * 4)
  readonly cqes = new ArrayBuffer(this.cqEntries * kCqeWords * 4)
  readonly clock = new ArrayBuffer(12)
  readonly fd = -1
  closed = false
  served = 0
  warm: Checkpoint | null = null
  private readonly sqWords = new Uint32Array(this.sqes)
  private readonly cqWords = new Int32Array(this.cqes)
  /** FIFO of armed tags. */
  private readonly armed = new Int32Array(kDepth + 1)
  private head = 0
  private tail = 0

  constructor(private readonly descs: Uint32Array, private readonly mixWrites: boolean, private readonly onWarm: () => void) {}

  enter(staged: number, minComplete: number): number {
    for (let slot = 0; slot < staged; slot++) {
      const base = slot * kSqeWords
      if (this.sqWords[base + 9] === kUserDataUblk) this.push(this.sqWords[base + 8]!)
    }
    if (minComplete === 0) return 0 // QueueLoop.arm: submit only
    let count = 0
    while (count < kBatch && this.head !== this.tail) {
      const tag = this.pop()
      const cqe = count * kCqeWords
      this.cqWords[cqe] = tag
      this.cqWords[cqe + 1] = kUserDataUblk
      if (this.served < kRequests) {
        this.describe(tag, this.served++)
        this.cqWords[cqe + 2] = 0
      } else {
        this.cqWords[cqe + 2] = UBLK_IO_RES_ABORT
      }
      count++
    }
    if (this.warm === null && this.served >= kWarmup) {
      collectGarbage()
      this.warm = { heapUsed: process.memoryUsage().heapUsed, newSpaceUsed: newSpaceUsed(), at: process.hrtime.bigint() }
      this.onWarm()
    }
    return count
  }

  /** The kernel's part: fill the tag's descriptor with a 4 KiB request. */
  private describe(tag: number, n: number): void {
    const base = tag * kIoDescWords
    this.descs[base] = this.mixWrites && (n & 1) === 1 ? UBLK_IO_OP_WRITE : UBLK_IO_OP_READ
    this.descs[base + 1] = kIoBytes / 512
    this.descs[base + 2] = ((Math.imul(n, 2654435761) >>> 0) % (kSpanSectors / 8)) * 8
    this.descs[base + 3] = 0
  }

  private push(tag: number): void {
    this.armed[this.tail] = tag
    this.tail = (this.tail + 1) % this.armed.length
  }

  private pop(): number {
    const tag = this.armed[this.head]!
    this.head = (this.head + 1) % this.armed.length
    return tag
  }

  registerFiles(): void {}
  registerSparseBuffers(): void {}
  watchCompletions(): void {}
  close(): void { this.closed = true }
}

async function heapGrowth(targetName: string, raw: Record<string, unknown>, mixWrites: boolean): Promise<MicroResult> {
  const target = findTarget(targetName)
  const setup = await target.setup(target.parseOptions(raw, undefined))
  const descs = new Uint32Array(kDepth * kIoDescWords)
  // GC entries are delivered asynchronously: count those that started after the warm-up point.
  let warmAtMs = Infinity
  let collections = 0
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (entry.startTime >= warmAtMs) collections++
  })
  observer.observe({ entryTypes: ['gc'] })
  const ring = new BusyDeviceRing(descs, mixWrites, () => { warmAtMs = performance.now() })
  const tagAddressLo = new Uint32Array(kDepth)
  const tagAddressHi = new Uint32Array(kDepth)
  const ioBuffer = new Uint8Array(kDepth * kIoBytes)
  const loop = new QueueLoop({
    queueId: 0, depth: kDepth, charFd: -1, ring, descs,
    tagBuffers: Array.from({ length: kDepth }, (_, tag) => Buffer.from(ioBuffer.buffer, tag * kIoBytes, kIoBytes)),
    tagAddressLo, tagAddressHi, sqeAddress: new Uint32Array(kDepth),
    stopEventFd: -1, stopReadAddressLo: 0, stopReadAddressHi: 0,
    stats: new QueueStatsWriter(queueStatsView(allocQueueStats(1), 0)), statsPublishMicros: 0, startGate: createStartGate(true),
    log: pino({ level: 'silent' }),
  })
  const handler = await target.openQueue(setup.spec, {
    queueId: 0, log: pino({ level: 'silent' }), ioMode: 'copy', depth: kDepth, maxIoBufBytes: kIoBytes, tagAddressLo, tagAddressHi,
    data: { endpoint: ioBuffer, tagOffset: Float64Array.from({ length: kDepth }, (_, tag) => tag * kIoBytes) },
    sqes: loop.stagingSqes, reserveSqe: () => loop.reserveSqe(), complete: (tag, result) => loop.complete(tag, result),
    submitSoon: () => loop.submitStaged(),
  })
  try {
    loop.arm(handler)
    const end = loop.run()
    const endAt = process.hrtime.bigint()
    const endMs = performance.now()
    const youngGrowth = newSpaceUsed() - (ring.warm?.newSpaceUsed ?? 0)
    await new Promise((resolve) => setImmediate(resolve))
    const settled = collectGarbage()
    await new Promise((resolve) => setImmediate(resolve))
    observer.disconnect()
    // Our own collections after the run are not the loop's.
    const gcsDuringRun = collections - (settled ? 2 : 0)
    void endMs
    const heapAfter = process.memoryUsage().heapUsed
    const warm = ring.warm
    if (end !== 'aborted' || !warm || loop.requestsServed !== kRequests) {
      throw new Error(`queue loop ended '${end}' after ${loop.requestsServed} of ${kRequests} requests`)
    }
    const measured = kRequests - kWarmup
    const grown = heapAfter - warm.heapUsed
    const allocation = gcsDuringRun <= 0
      ? `no GC during the run, young generation +${(youngGrowth / 1024).toFixed(0)} KiB: ~${(youngGrowth / measured).toFixed(2)} B/request allocated`
      : `${gcsDuringRun} minor GC(s) during the run: short-lived garbage per request (a scavenge frees ~1-8 MiB)`
    return {
      name: `queue loop, ${targetName} target, ${mixWrites ? '4k reads+writes' : '4k reads'}: heap growth`,
      value: grown / measured, unit: 'B/request',
      detail: `${grown >= 0 ? '+' : ''}${(grown / 1024).toFixed(1)} KiB over ${measured} requests ` +
        `(heap ${(warm.heapUsed / 2 ** 20).toFixed(1)} -> ${(heapAfter / 2 ** 20).toFixed(1)} MiB` +
        `${settled ? ', after gc' : ', NOT settled: run node with --expose-gc'}); ` +
        `${allocation}; ${(Number(endAt - warm.at) / measured).toFixed(0)} ns/request through the whole loop`,
    }
  } finally {
    handler.close(true)
    target.undo(setup.spec)
  }
}

export const benches: MicroBench[] = [{
  id: 'heap',
  run: async () => [
    await heapGrowth('null', {}, false), await heapGrowth('null', {}, true), await heapGrowth('memory', { size: '64M' }, true),
  ],
}]
