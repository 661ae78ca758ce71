import t from 'tap'

import { StallWatch, kQueueStallMs, readThread, type ThreadSample } from '../../src/main/stall-watch.js'

const interval = 250

/** Ticks of `interval` ms from 0 with the given thread samples and a heartbeat that never moves. */
function run(samples: (tick: number) => ThreadSample, ticks: number, gapMs = interval) {
  let tick = 0
  const watch = new StallWatch(interval, 0, () => samples(tick))
  const tasks = [{ queueId: 0, tid: 1, settled: false }]
  for (tick = 1; tick <= ticks; tick++) {
    const stalled = watch.check(tick * gapMs, [42], tasks)
    if (stalled) return { tick, stalled }
  }
  return null
}

t.test('a queue that spins (runnable, using CPU) or blocks without turning is stalled after 3 s', async (t) => {
  const spinning = run((tick) => ({ state: 'R', cpuTicks: tick * 25 }), 40)
  t.equal(spinning?.tick, kQueueStallMs / interval + 2, 'the first tick past 3 s after the baseline')
  t.match(spinning?.stalled, /^queue 0 stalled: no loop turn for 3250 ms \(thread 1 in state R\)$/)
  t.ok(run(() => ({ state: 'D', cpuTicks: 7 }), 40), 'blocked in the kernel')
  t.ok(run(() => ({ state: 'S', cpuTicks: 7 }), 40), 'asleep')
})

t.test('time the queue could not run does not count', async (t) => {
  t.equal(run(() => ({ state: 'T', cpuTicks: 7 }), 400), null, 'stopped (SIGSTOP) for 100 s')
  t.equal(run(() => ({ state: 'R', cpuTicks: 7 }), 400), null, 'waiting for a CPU for 100 s')
  // The daemon itself was paused: one tick 10 s after the last counts for two intervals.
  t.equal(run(() => ({ state: 'S', cpuTicks: 7 }), 7, 10_000), null, 'six 10 s pauses after the first tick count 3 s')
  t.ok(run(() => ({ state: 'S', cpuTicks: 7 }), 8, 10_000), 'seven count 3.5 s')
})

t.test('a turn resets the count; a settled queue is not watched', async (t) => {
  const watch = new StallWatch(interval, 0, () => ({ state: 'S', cpuTicks: 0 }))
  const tasks = [{ queueId: 0, tid: 1, settled: false }, { queueId: 1, tid: 2, settled: true }]
  for (let tick = 1; tick <= 100; tick++) {
    t.equal(watch.check(tick * interval, [tick % 10 === 0 ? tick : tick - (tick % 10), 5], tasks), null)
  }
})

t.test('readThread reads this process\'s own threads', async (t) => {
  const self = readThread(process.pid)
  t.equal(self?.state, 'R', 'the main thread is running')
  t.ok(Number.isInteger(self?.cpuTicks))
  t.equal(readThread(2 ** 30), null)
})
