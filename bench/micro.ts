// Micro-benchmarks of the hot path's pure pieces (ns/op), a NOP batch through the real ring,
// and a heap-growth check of the queue loop: `npm run bench -- micro` (run with --expose-gc).
import { pino } from 'pino'

import { IORING_OP_NOP, IORING_SETUP_SQE128, encodeSqeHeader, encodeUringCmd, kCqeWords, kSqeCmdWord, kSqeWords } from '../src/abi/io-uring.js'
import { UBLK_IO_OP_READ, UBLK_IO_RES_ABORT, UBLK_U_IO_COMMIT_AND_FETCH_REQ } from '../src/abi/ublk-cmd.js'
import { QueueStatsWriter, allocQueueStats, queueStatsView } from '../src/common/stats-layout.js'
import { kUserDataUblk } from '../src/common/user-data.js'
import { native, type NativeRing } from '../src/native/addon.js'
import { descNrSectors, descOp, descStartSector } from '../src/queue-worker/io-desc.js'
import { QueueLoop } from '../src/queue-worker/queue-loop.js'
import { findTarget } from '../src/targets/registry.js'
import type { QueueHandler } from '../src/targets/target.js'

function nsPerOp(name: string, ops: number, body: () => void): void {
  const rounds: number[] = []
  for (let round = 0; round < 7; round++) {
    const started = process.hrtime.bigint()
    body()
    rounds.push(Number(process.hrtime.bigint() - started) / ops)
  }
  rounds.sort((a, b) => a - b)
  process.stdout.write(`${name.padEnd(44)} ${rounds[3]!.toFixed(1).padStart(8)} ns/op (median of 7)\n`)
}

const sqes = new Uint32Array(256 * kSqeWords)
nsPerOp('encode COMMIT_AND_FETCH_REQ SQE', 1e6, () => {
  for (let i = 0; i < 1e6; i++) {
    const base = encodeUringCmd(sqes, i & 255, 5, UBLK_U_IO_COMMIT_AND_FETCH_REQ, i & 127, kUserDataUblk)
    sqes[base + kSqeCmdWord] = 1 | ((i & 127) << 16)
    sqes[base + kSqeCmdWord + 1] = 4096
  }
})

const descs = new Uint32Array(128 * 6).map((_, i) => i * 7)
let sink = 0
nsPerOp('decode ublksrv_io_desc (op, sectors, start)', 1e6, () => {
  for (let i = 0; i < 1e6; i++) sink += descOp(descs, i & 127) + descNrSectors(descs, i & 127) + descStartSector(descs, i & 127)
})

const writer = new QueueStatsWriter(queueStatsView(allocQueueStats(1), 0))
nsPerOp('publish queue stats (once per loop turn)', 1e5, () => {
  for (let i = 0; i < 1e5; i++) {
    writer.values[0]! += 1
    writer.publish()
  }
})

const ring = new native.Ring(64, 128, IORING_SETUP_SQE128)
const ringSqes = new Uint32Array(ring.sqes)
nsPerOp('NOP through the real ring, batches of 32 (per NOP)', 32 * 2e4, () => {
  for (let batch = 0; batch < 2e4; batch++) {
    for (let slot = 0; slot < 32; slot++) encodeSqeHeader(ringSqes, slot, IORING_OP_NOP, -1, slot, 0)
    ring.enter(32, 32, 0)
  }
})
ring.close()

/**
 * A ring where every tag fetched or committed in one turn gets its next request in the next
 * turn (like a device that is never idle), until `requests` are served; then every tag aborts.
 */
class SteadyRing implements NativeRing {
  readonly sqes = new ArrayBuffer(512 * 128)
  readonly cqes = new ArrayBuffer(1024 * 16)
  readonly sqEntries = 512
  readonly cqEntries = 1024
  readonly fd = -1
  readonly closed = false
  private readonly sqWords = new Uint32Array(this.sqes)
  private readonly cqWords = new Int32Array(this.cqes)
  private served = 0
  private readonly armedTags = new Int32Array(512)
  private armed = 0
  constructor(private readonly requests: number) {}
  enter(staged: number): number {
    const count = this.armed
    for (let i = 0; i < count; i++) {
      const cqe = i * kCqeWords
      this.cqWords[cqe] = this.armedTags[i]!
      this.cqWords[cqe + 1] = kUserDataUblk
      this.cqWords[cqe + 2] = this.served++ < this.requests ? 0 : UBLK_IO_RES_ABORT
    }
    this.armed = 0
    for (let slot = 0; slot < staged; slot++) {
      const base = slot * kSqeWords
      if (this.sqWords[base + 9] === kUserDataUblk) this.armedTags[this.armed++] = this.sqWords[base + 8]!
    }
    return count
  }
  watchCompletions(): void {}
  close(): void {}
}

function heapGrowth(targetName: string, options: Record<string, unknown>): void {
  const depth = 128
  const requests = 1e6
  const target = findTarget(targetName)
  const setup = target.setup(target.parseOptions(options, undefined))
  const ring = new SteadyRing(requests)
  const descs = new Uint32Array(depth * 6)
  for (let tag = 0; tag < depth; tag++) descs.set([UBLK_IO_OP_READ, 8, tag * 8, 0, 0, 0], tag * 6)
  const loop = new QueueLoop({
    queueId: 0, depth, charFd: -1, ring, descs,
    tagBuffers: Array.from({ length: depth }, () => Buffer.alloc(4096)),
    tagAddressLo: new Uint32Array(depth), tagAddressHi: new Uint32Array(depth),
    stopEventFd: -1, stopReadAddressLo: 0, stopReadAddressHi: 0,
    stats: new QueueStatsWriter(queueStatsView(allocQueueStats(1), 0)), publishEveryTurn: true,
    log: pino({ level: 'silent' }),
  })
  const handler: QueueHandler = target.openQueue(setup.spec, {
    queueId: 0, depth, maxIoBufBytes: 4096, tagAddressLo: new Uint32Array(depth), tagAddressHi: new Uint32Array(depth),
    sqes: loop.stagingSqes, reserveSqe: () => loop.reserveSqe(), complete: (tag, result) => loop.complete(tag, result),
  })
  const gc = (globalThis as { gc?: () => void }).gc
  loop.arm(handler)
  gc?.()
  const before = process.memoryUsage().heapUsed
  const started = process.hrtime.bigint()
  loop.run()
  const elapsedNs = Number(process.hrtime.bigint() - started)
  gc?.()
  const grown = process.memoryUsage().heapUsed - before
  process.stdout.write(`queue loop, ${targetName} target, ${requests} reads: ${(elapsedNs / requests).toFixed(0)} ns/request, ` +
    `heap ${grown >= 0 ? '+' : ''}${(grown / 1024).toFixed(0)} KiB (${(grown / requests).toFixed(3)} bytes/request)${gc ? '' : ' (no --expose-gc: not settled)'}\n`)
}

heapGrowth('null', {})
heapGrowth('memory', { size: '64M' })
if (sink === -1) process.stdout.write('')
