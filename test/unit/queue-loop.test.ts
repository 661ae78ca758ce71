// The queue loop against a fake ring (pure logic): what it stages for the kernel in answer to
// the CQEs it is handed. The real driver is exercised by test/vm.
import { pino } from 'pino'
import t from 'tap'

import { IORING_OP_URING_CMD, IOSQE_FIXED_FILE, kCqeWords, kSqeCmdWord, kSqeWords } from '../../src/abi/io-uring.js'
import {
  UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_RES_ABORT, UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  UBLK_U_IO_FETCH_REQ,
} from '../../src/abi/ublk-cmd.js'
import {
  QueueStatsWriter, allocQueueStats, kLatencyBuckets, kStatLatencyFirstBucket, latencyBucketMicros, queueStatsView, readQueueStats,
  statIndex,
} from '../../src/common/stats-layout.js'
import type { NativeRing } from '../../src/native/addon.js'
import { QueueLoop } from '../../src/queue-worker/queue-loop.js'
import { ublkAutoBufRegToSqeAddr } from '../../src/abi/structs.js'
import { kUserDataStop, kUserDataTarget, kUserDataUblk } from '../../src/common/user-data.js'
import { kIoPending, type IoRequest, type QueueHandler } from '../../src/targets/target.js'
import { createStartGate, openStartGate, startFaults } from '../../src/common/start-gate.js'
import { IORING_OP_ASYNC_CANCEL } from '../../src/abi/io-uring.js'
import { kUserDataCancel } from '../../src/common/user-data.js'
import { until } from '../lib/until.js'

interface Staged {
  opcode: number; sqeFlags: number; fd: number; cmdOp: number; tag: number; queue: number; result: number
  userData: [number, number]
  /** The SQE's own addr, low word. */
  addr: number
}

/** A ring that records what is submitted and replays scripted CQE batches. */
class FakeRing implements NativeRing {
  readonly sqes = new ArrayBuffer(64 * 128)
  readonly cqes = new ArrayBuffer(128 * 16)
  readonly clock = new ArrayBuffer(12)
  readonly sqEntries = 64
  readonly cqEntries = 128
  readonly fd = 99
  closed = false
  submitted: Staged[][] = []
  batches: [lo: number, hi: number, res: number][][] = []
  /** Per enter: the µs stamps it leaves in `clock` (submitted, reaped); 0, 0 when unscripted. */
  stamps: [submitted: number, reaped: number][] = []

  /** The wait timeout of every enter, ns. */
  timeouts: number[] = []
  /** Called at each enter, before it returns its batch. */
  onEnter: () => void = () => {}
  /** Per enter: how many of the staged SQEs the SQ has no room for (the real ring keeps them). */
  keeps: number[] = []

  enter(staged: number, _minComplete: number, timeoutNs: number): number {
    this.timeouts.push(timeoutNs)
    this.onEnter()
    const [submitted, reaped] = this.stamps.shift() ?? [0, 0]
    const kept = Math.min(this.keeps.shift() ?? 0, staged)
    new Int32Array(this.clock).set([submitted, reaped, kept])
    const words = new Uint32Array(this.sqes)
    const turn: Staged[] = []
    for (let slot = 0; slot < staged - kept; slot++) {
      const base = slot * kSqeWords
      turn.push({
        opcode: words[base]! & 0xff, sqeFlags: (words[base]! >>> 8) & 0xff, fd: new Int32Array(this.sqes)[base + 1]!,
        cmdOp: words[base + 2]!, tag: words[base + kSqeCmdWord]! >>> 16, queue: words[base + kSqeCmdWord]! & 0xffff,
        result: new Int32Array(this.sqes)[base + kSqeCmdWord + 1]!, userData: [words[base + 8]!, words[base + 9]!],
        addr: words[base + 4]!,
      })
    }
    this.submitted.push(turn)
    words.copyWithin(0, (staged - kept) * kSqeWords, staged * kSqeWords)
    const batch = this.batches.shift() ?? []
    const cqes = new Int32Array(this.cqes)
    batch.forEach(([lo, hi, res], i) => {
      cqes[i * kCqeWords] = lo
      cqes[i * kCqeWords + 1] = hi
      cqes[i * kCqeWords + 2] = res
    })
    return batch.length
  }

  registeredFiles: number[] = []
  registerFiles(fds: readonly number[]): void { this.registeredFiles = [...fds] }
  registerSparseBuffers(): void {}
  /** Event-loop mode: the loop's wake-up callback. */
  wake: (() => void) | null = null
  watchCompletions(callback: () => void): void { this.wake = callback }
  close(): void { this.closed = true }
}

function setup(depth: number, handle: (request: IoRequest) => number, onCompletion?: (cookie: number, res: number) => void,
  statsPublishMicros = 0, startGate = createStartGate(true), sqeAddress = new Uint32Array(depth)) {
  const ring = new FakeRing()
  const descs = new Uint32Array(depth * 6)
  const stats = allocQueueStats(1)
  const seen: { tag: number; op: number; startSector: number; nrSectors: number }[] = []
  const handler: QueueHandler = {
    handleIo(request) {
      seen.push({ tag: request.tag, op: request.op, startSector: request.startSector, nrSectors: request.nrSectors })
      return handle(request)
    },
    close() {},
  }
  if (onCompletion) handler.onCompletion = onCompletion
  const loop = new QueueLoop({
    queueId: 1, depth, charFd: 42, ring, descs,
    tagBuffers: Array.from({ length: depth }, () => Buffer.alloc(4096)),
    tagAddressLo: Uint32Array.from({ length: depth }, (_, tag) => 0x1000 * (tag + 1)),
    tagAddressHi: new Uint32Array(depth).fill(0x7f),
    sqeAddress,
    stopEventFd: 5, stopReadAddressLo: 0, stopReadAddressHi: 0,
    stats: new QueueStatsWriter(queueStatsView(stats, 0)),
    statsPublishMicros,
    startGate,
    log: pino({ level: 'silent' }),
  })
  loop.arm(handler)
  return { ring, descs, loop, seen, stats }
}

t.test('arm fetches every tag with its buffer address, plus the stop read', async (t) => {
  const { ring } = setup(4, () => 0)
  t.same(ring.registeredFiles, [42], 'the char device is the ring\'s fixed file 0')
  const first = ring.submitted[0]!
  t.equal(first.length, 5)
  t.same(first.slice(0, 4).map((s) => [s.opcode, s.sqeFlags, s.fd, s.cmdOp, s.tag, s.queue]),
    [0, 1, 2, 3].map((tag) => [IORING_OP_URING_CMD, IOSQE_FIXED_FILE, 0, UBLK_U_IO_FETCH_REQ, tag, 1]),
    'URING_CMDs on fixed file 0')
  t.same(first[4]!.userData, [0, kUserDataStop])
  const words = new Uint32Array(ring.sqes)
  t.equal(words[2 * kSqeWords + kSqeCmdWord + 2], 0x3000, 'tag 2 buffer address, low word')
  t.equal(words[2 * kSqeWords + kSqeCmdWord + 3], 0x7f, 'high word')
})

t.test('zero copy: every FETCH and COMMIT SQE carries its tag\'s buffer slot in the SQE\'s own addr', async (t) => {
  const slots = Uint32Array.from([0, 1, 2, 3], (tag) => ublkAutoBufRegToSqeAddr(tag, 0))
  const { ring, descs, loop } = setup(4, (request) => request.nrSectors * 512, undefined, 0, createStartGate(true), slots)
  const words = new Uint32Array(ring.sqes)
  t.same([0, 1, 2, 3].map((slot) => [words[slot * kSqeWords + 4], words[slot * kSqeWords + 5]]), [[0, 0], [1, 0], [2, 0], [3, 0]],
    'FETCH_REQ of tag t: addr = t')
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 2 * 6)
  ring.batches.push([[2, kUserDataUblk, 0]])
  ring.batches.push([0, 1, 2, 3].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  loop.run()
  const commit = ring.submitted.flat().find((sqe) => sqe.cmdOp === UBLK_U_IO_COMMIT_AND_FETCH_REQ)
  t.equal(commit?.tag, 2)
  t.equal(commit?.addr, 2, 'COMMIT_AND_FETCH_REQ of tag 2: addr = 2')
})

t.test('requests are served from their descriptors and committed in one turn', async (t) => {
  const { ring, descs, loop, seen, stats } = setup(4, (request) => request.nrSectors * 512)
  descs.set([UBLK_IO_OP_READ, 8, 0x10, 1, 0, 0], 1 * 6) // start sector 2^32 + 16
  descs.set([UBLK_IO_OP_WRITE | (1 << 13), 16, 64, 0, 0, 0], 3 * 6)
  ring.batches.push([[1, kUserDataUblk, 0], [3, kUserDataUblk, 0]])
  ring.batches.push([0, 1, 2, 3].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  t.equal(loop.run(), 'aborted', 'ends when every tag was aborted')
  t.same(seen, [
    { tag: 1, op: UBLK_IO_OP_READ, startSector: 2 ** 32 + 16, nrSectors: 8 },
    { tag: 3, op: UBLK_IO_OP_WRITE, startSector: 64, nrSectors: 16 },
  ])
  const commits = ring.submitted[2]!
  t.same(commits.map((s) => [s.cmdOp, s.tag, s.result]), [
    [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 1, 4096],
    [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 3, 8192],
  ])
  const values = readQueueStats(queueStatsView(stats, 0))
  t.equal(values[statIndex('read_ops')], 1)
  t.equal(values[statIndex('read_bytes')], 4096)
  t.equal(values[statIndex('write_bytes')], 8192)
  t.equal(values[statIndex('inflight')], 0)
  t.equal(values[statIndex('loop_turns')], 2)
})

t.test('service times run from the turn a request arrived in to the enter that submits its commit', async (t) => {
  const parts = setup(4, (request) => (request.tag === 2 ? kIoPending : 4096), () => parts.loop.complete(2, 4096))
  const { ring, descs, loop, stats } = parts
  for (const tag of [0, 1, 2]) descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], tag * 6)
  // (setup() already armed.) The µs clock is 32 bits and wraps: start just below 2^31. Turn 1 (reaped at t0) brings
  // tags 0, 1 and 2; 0 and 1 are served at once, 2 is left pending. Turn 2 submits at t0 + 150
  // and brings the target CQE that completes tag 2. Turn 3 submits at t0 + 700 (past the wrap
  // of the signed stamp) and aborts every tag.
  const t0 = 0x7ffffe00
  ring.stamps.push([t0 - 50, t0], [t0 + 150, t0 + 200], [(t0 + 700) | 0, (t0 + 710) | 0])
  ring.batches.push([[0, kUserDataUblk, 0], [1, kUserDataUblk, 0], [2, kUserDataUblk, 0]])
  ring.batches.push([[7, kUserDataTarget, 0]])
  ring.batches.push([0, 1, 2, 3].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  loop.run()
  const values = readQueueStats(queueStatsView(stats, 0))
  t.equal(values[kStatLatencyFirstBucket + latencyBucketMicros(150)], 2, 'tags 0 and 1: 150 µs')
  t.equal(values[kStatLatencyFirstBucket + latencyBucketMicros(700)], 1, 'tag 2: 700 µs, across the wrap')
  t.equal(values[statIndex('latency_sum_ns')], (2 * 150 + 700) * 1000)
})

t.test('a busy loop publishes its counters once per interval, and at once when it goes idle', async (t) => {
  const { ring, descs, loop, stats } = setup(4, () => 4096, undefined, 1000)
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 0)
  const published: number[] = []
  const timed: number[] = []
  ring.onEnter = () => {
    const values = readQueueStats(queueStatsView(stats, 0))
    published.push(values[statIndex('read_ops')]!)
    timed.push(values.slice(kStatLatencyFirstBucket, kStatLatencyFirstBucket + kLatencyBuckets).reduce((a, b) => a + b, 0))
  }
  // Turn 1 (t 5000): the heartbeat is due, so it publishes. Turn 2 (t 5100) serves a read: not
  // published yet, and the next wait is cut to the 1 ms interval. Turn 3 (t 6050) wakes idle:
  // it publishes. Turn 4 serves a read at t 6200, turn 5 another at t 7300 (interval passed:
  // published, though its service time is only known at the next enter). Turn 6 (t 8400) wakes
  // idle and publishes that service time.
  ring.stamps.push([4990, 5000], [5090, 5100], [6040, 6050], [6190, 6200], [7290, 7300], [8390, 8400], [8490, 8500])
  ring.batches.push([], [[0, kUserDataUblk, 0]], [], [[0, kUserDataUblk, 0]], [[0, kUserDataUblk, 0]], [])
  ring.batches.push([0, 1, 2, 3].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  loop.run()
  // published[i] is what readers saw when run's enter i began, i.e. after turn i.
  t.same(published.slice(1), [0, 0, 1, 1, 3, 3], 'requests seen after turns 1..6')
  t.same(timed.slice(1), [0, 0, 1, 1, 2, 3], 'service times seen after turns 1..6: the last one once idle')
  t.same(ring.timeouts.slice(1, 7), [500e6, 500e6, 1e6, 500e6, 1e6, 1e6], 'waits are cut to 1 ms while counts are unpublished')
})

t.test('event-loop mode: woken by the ring, a request completed from a timer is submitted at once', async (t) => {
  const parts = setup(2, (request) => {
    if (request.tag === 0) return 512
    setTimeout(() => parts.loop.complete(1, 1024), 5)
    return kIoPending
  })
  const { ring, descs, loop } = parts
  descs.set([UBLK_IO_OP_READ, 1, 0, 0, 0, 0], 0)
  descs.set([UBLK_IO_OP_READ, 2, 0, 0, 0, 0], 6)
  ring.batches.push([], [[0, kUserDataUblk, 0], [1, kUserDataUblk, 0]])
  const ended = loop.runOnEventLoop()
  t.ok(ring.wake, 'the loop watches the ring')
  t.equal(ring.submitted.length, 2, 'arm, then one turn that found nothing')
  ring.wake!()
  const commits = () => ring.submitted.flat().filter((s) => s.cmdOp === UBLK_U_IO_COMMIT_AND_FETCH_REQ)
  t.same(commits().map((s) => [s.tag, s.result]), [[0, 512]], 'tag 0 committed in the turn that served it')
  // Nothing wakes the loop: the timer's completion alone must submit the commit.
  await until(() => commits().length >= 2, 30_000, 'tag 1\'s commit')
  t.same(commits().map((s) => [s.tag, s.result]), [[0, 512], [1, 1024]], 'tag 1 committed from its timer, without a wake-up')
  ring.batches.push([0, 1].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  ring.wake!()
  t.equal(await ended, 'aborted')
})

t.test('ring mode: completing a request outside a turn is a target bug, said so', async (t) => {
  const { loop } = setup(2, () => 0)
  t.throws(() => loop.complete(0, 0), /completed outside a loop turn in ring mode/)
})

t.test('negative results are committed and counted as errors', async (t) => {
  const { ring, descs, loop, stats } = setup(2, () => -5)
  descs.set([UBLK_IO_OP_WRITE, 8, 0, 0, 0, 0], 0)
  ring.batches.push([[0, kUserDataUblk, 0]], [[0, kUserDataUblk, UBLK_IO_RES_ABORT], [1, kUserDataUblk, UBLK_IO_RES_ABORT]])
  loop.run()
  t.equal(ring.submitted[2]![0]!.result, -5)
  t.equal(readQueueStats(queueStatsView(stats, 0))[statIndex('write_errors')], 1)
})

t.test('the stop eventfd ends the loop at once', async (t) => {
  const { ring, loop } = setup(2, () => 0)
  ring.batches.push([[0, kUserDataStop, 8]])
  t.equal(loop.run(), 'stopped')
})

t.test('an unexpected error on a ublk command is a bug, not a silent retry', async (t) => {
  const { ring, loop } = setup(2, () => 0)
  ring.batches.push([[0, kUserDataUblk, -22]])
  t.throws(() => loop.run(), /tag 0: ublk command failed with -22/)
})

t.test('a target that throws before START_DEV completed fails the request (EIO); once started, the throw ends the queue', async (t) => {
  const gate = createStartGate(false)
  const { ring, descs, loop } = setup(2, () => { throw new Error('target bug') }, undefined, 0, gate)
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 0)
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 6)
  ring.batches.push([[0, kUserDataUblk, 0]])
  ring.batches.push([[1, kUserDataUblk, 0]])
  // START_DEV returns while the second turn's enter waits.
  ring.onEnter = () => { if (ring.submitted.length === 2) openStartGate(gate) }
  t.throws(() => loop.run(), /target bug/, 'the second request, after the gate opened, ends the queue')
  t.same(ring.submitted[2]!.map((s) => [s.cmdOp, s.tag, s.result]), [[UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0, -5]],
    'the first request was failed with EIO')
  t.equal(startFaults(gate), 1, 'and counted for the daemon')
})

t.test('a queue that ends waits for its target\'s SQEs in flight: it cancels them and counts their CQEs', async (t) => {
  // The target stages one SQE per request and never completes it by itself.
  const parts = setup(2, () => {
    parts.loop.reserveSqe()
    return kIoPending
  })
  const { ring, descs, loop } = parts
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 0)
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 6)
  ring.batches.push([[0, kUserDataUblk, 0], [1, kUserDataUblk, 0]])
  ring.batches.push([[0, kUserDataStop, 8]])
  t.equal(loop.run(), 'stopped')
  t.equal(loop.targetIoInFlight(), 2, 'both SQEs went out with the turn after their requests')
  ring.batches.push([[0, kUserDataCancel, 0], [7, kUserDataTarget, -125]])
  ring.batches.push([])
  t.equal(loop.drainTargetIo(50), false, 'one never completes: not drained by the deadline')
  const cancel = ring.submitted[3]!
  t.same(cancel.map((s) => [s.opcode, s.userData[1]]), [[IORING_OP_ASYNC_CANCEL, kUserDataCancel]], 'one cancel, nothing else staged')
  t.equal(loop.targetIoInFlight(), 1)
  ring.batches.length = 0
  ring.batches.push([[8, kUserDataTarget, 4096]])
  t.equal(loop.drainTargetIo(1000), true, 'drained once its CQE came')
})

t.test('CQEs a throwing turn left undispatched count as completed target I/O', async (t) => {
  const parts = setup(2, (request) => {
    if (request.tag === 1) throw new Error('target bug')
    parts.loop.reserveSqe()
    return kIoPending
  }, () => {})
  const { ring, descs, loop } = parts
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 0)
  descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], 6)
  ring.batches.push([[0, kUserDataUblk, 0]])
  // The target's CQE arrives in the same turn as the request that throws, after it.
  ring.batches.push([[1, kUserDataUblk, 0], [0, kUserDataTarget, 4096]])
  t.throws(() => loop.run(), /target bug/)
  t.equal(loop.targetIoInFlight(), 0, 'the undispatched CQE completed the only SQE in flight')
  t.equal(loop.drainTargetIo(50), true)
})

t.test('SQEs the SQ had no room for stay staged, in order, ahead of the next turn\'s', async (t) => {
  const { ring, descs, loop } = setup(4, () => 4096)
  for (let tag = 0; tag < 4; tag++) descs.set([UBLK_IO_OP_READ, 8, 0, 0, 0, 0], tag * 6)
  ring.batches.push([[0, kUserDataUblk, 0], [1, kUserDataUblk, 0], [2, kUserDataUblk, 0]])
  ring.batches.push([[3, kUserDataUblk, 0]])
  ring.batches.push([])
  ring.batches.push([0, 1, 2, 3].map((tag) => [tag, kUserDataUblk, UBLK_IO_RES_ABORT]))
  ring.keeps.push(0, 2) // (setup() armed already)
  loop.run()
  const tags = (turn: number) => ring.submitted[turn]!.map((s) => [s.cmdOp, s.tag])
  t.same(tags(2), [[UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0]], 'turn 2: room for one of three commits')
  t.same(tags(3), [1, 2, 3].map((tag) => [UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag]), 'turn 3: the two kept, then its own')
})
