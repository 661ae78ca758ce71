// When a queue is stalled: its loop has not turned (its published heartbeat has not changed) for
// kQueueStallMs of time in which it could have turned. Time does not count while
//   - the daemon itself did not run: a supervision tick that comes late (the machine, the VM or
//     the process was paused or starved) counts for at most two intervals;
//   - the queue thread is stopped (state T) or waits for a CPU (runnable, its CPU time unchanged).
// A thread that spins (runnable, using CPU) or blocks (sleeping, in the kernel) without turning
// is stalled.
import fs from 'node:fs'

export const kQueueStallMs = 3_000

export interface ThreadSample {
  /** /proc/<pid>/task/<tid>/stat field 3: R, S, D, T, t, Z, ... */
  state: string
  /** utime + stime, in clock ticks. */
  cpuTicks: number
}

export interface WatchedQueue {
  queueId: number
  tid: number | null
  settled: boolean
}

/** This process's thread `tid` from /proc; null once it is gone. */
export function readThread(tid: number): ThreadSample | null {
  let text: string
  try {
    text = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
  } catch {
    return null
  }
  // The command name (field 2) is in parentheses and may contain spaces.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return { state: fields[0]!, cpuTicks: Number(fields[11]) + Number(fields[12]) }
}

interface QueueState {
  heartbeat: number
  thread: ThreadSample | null
  stalledMs: number
}

export class StallWatch {
  private lastTickMs: number
  private readonly queues = new Map<number, QueueState>()

  constructor(
    private readonly intervalMs: number,
    nowMs: number,
    private readonly sampleThread: (tid: number) => ThreadSample | null = readThread,
  ) {
    this.lastTickMs = nowMs
  }

  /** One supervision tick: the first stalled queue, described, or null. */
  check(nowMs: number, heartbeats: readonly number[], tasks: readonly WatchedQueue[]): string | null {
    const elapsedMs = Math.min(Math.max(nowMs - this.lastTickMs, 0), 2 * this.intervalMs)
    this.lastTickMs = nowMs
    let stalled: string | null = null
    for (const task of tasks) {
      if (task.settled) continue
      const heartbeat = heartbeats[task.queueId]!
      const thread = task.tid === null ? null : this.sampleThread(task.tid)
      const last = this.queues.get(task.queueId)
      const state: QueueState = { heartbeat, thread, stalledMs: 0 }
      this.queues.set(task.queueId, state)
      if (last === undefined || last.heartbeat !== heartbeat) continue
      state.stalledMs = last.stalledMs + (this.counts(last.thread, thread) ? elapsedMs : 0)
      if (state.stalledMs > kQueueStallMs && stalled === null) {
        stalled = `queue ${task.queueId} stalled: no loop turn for ${Math.round(state.stalledMs)} ms` +
          `${thread ? ` (thread ${task.tid} in state ${thread.state})` : ''}`
      }
    }
    return stalled
  }

  /** Whether the time between two samples of a thread counts against it. */
  private counts(before: ThreadSample | null, now: ThreadSample | null): boolean {
    if (now === null || before === null) return true
    if (now.state === 'T' || now.state === 't') return false
    if (now.state === 'R' && now.cpuTicks === before.cpuTicks) return false
    return true
  }
}
