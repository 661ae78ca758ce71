// The queue workers of one device: a piscina pool with exactly one thread per hardware queue and
// one long task per queue that settles only when the queue stops.
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { MessageChannel } from 'node:worker_threads'

import { Piscina } from 'piscina'

import { UblkdError } from '../common/errors.js'
import type { IoMode } from '../common/io-mode.js'
import type { LogLevel } from '../common/log-level.js'
import { kTargetDrainMs, type QueueEvent, type QueueExit, type QueueMode, type QueueTaskInput } from '../common/messages.js'
import { native } from '../native/addon.js'

// A path, not a URL: piscina require()s it, and a CommonJS bundle loads without the ES module
// loader in each queue thread (scripts/bundle.mjs).
const queueWorkerFile = fileURLToPath(new URL('../queue-worker/entry.js', import.meta.url))
// A queue loop that turns sees its stop eventfd within one turn.
const kStopEventGraceMs = 1000

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const settled = await Promise.race([
    promise.then(() => true),
    new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), ms) }),
  ])
  clearTimeout(timer)
  return settled
}

export interface QueuePoolSpec {
  devId: number
  depth: number
  maxIoBufBytes: number
  ioMode: IoMode
  hugePageBuffers: boolean
  mlockBuffers: boolean
  charFd: number
  affinity: number[][]
  targetName: string
  targetSpec: unknown
  stats: SharedArrayBuffer
  logLevel: LogLevel
  statsPublishMicros: number
  startGate: Int32Array
  queueMode: QueueMode
}

export interface QueueTask {
  queueId: number
  cpus: number[]
  stopEventFd: number
  /** The worker's own descriptor of the char device: closed only once its thread is gone. */
  charFd: number
  /** Thread id (gettid) once the queue reported ready. */
  tid: number | null
  /** Settles when the queue's loop ends or its worker dies. */
  done: Promise<QueueExit>
  settled: boolean
  /** Its worker died (the task threw or the thread exited) rather than its loop ending. */
  died: boolean
  /** Its loop ended and it waits for its target's I/O in flight (QueueDraining). */
  draining: boolean
}

export class QueuePool {
  readonly tasks: QueueTask[] = []
  private readonly pool: Piscina
  private readonly ready: Promise<void>

  constructor(spec: QueuePoolSpec) {
    const queues = spec.affinity.length
    this.pool = new Piscina({
      filename: queueWorkerFile,
      minThreads: queues,
      maxThreads: queues,
      idleTimeout: Infinity,
      concurrentTasksPerWorker: 1,
      // The queue loop blocks its thread; piscina must not park idle workers in Atomics.wait.
      atomics: 'disabled',
    })
    const readyPromises: Promise<void>[] = []
    for (let queueId = 0; queueId < queues; queueId++) {
      const { port1, port2 } = new MessageChannel()
      const stopEventFd = native.eventFd()
      const charFd = native.dupFd(spec.charFd)
      const input: QueueTaskInput = {
        devId: spec.devId,
        queueId,
        depth: spec.depth,
        maxIoBufBytes: spec.maxIoBufBytes,
        ioMode: spec.ioMode,
        hugePageBuffers: spec.hugePageBuffers,
        mlockBuffers: spec.mlockBuffers,
        charFd,
        cpus: spec.affinity[queueId]!,
        targetName: spec.targetName,
        targetSpec: spec.targetSpec,
        stats: spec.stats,
        stopEventFd,
        logLevel: spec.logLevel,
        statsPublishMicros: spec.statsPublishMicros,
        startGate: spec.startGate,
        queueMode: spec.queueMode,
        port: port2,
      }
      const task: QueueTask = {
        queueId, cpus: input.cpus, stopEventFd, charFd, tid: null, settled: false, died: false, draining: false,
        done: this.pool.run(input, { transferList: [port2] }) as Promise<QueueExit>,
      }
      task.done.then(() => { task.settled = true }, () => {
        task.settled = true
        task.died = true
      })
      readyPromises.push(new Promise<void>((resolve, reject) => {
        port1.on('message', (event: QueueEvent) => {
          if (event.type === 'ready') {
            task.tid = event.tid
            resolve()
          } else if (event.type === 'draining') {
            task.draining = true
          }
        })
        task.done.then(
          (exit) => reject(new UblkdError('UBLKD_ERR_QUEUE',
            `queue ${queueId} ended (${exit.reason}) before it was ready`)),
          (error: Error) => reject(new UblkdError('UBLKD_ERR_QUEUE',
            `queue ${queueId} failed to start: ${error.message}`, { cause: error })),
        ).finally(() => port1.close())
      }))
      this.tasks.push(task)
    }
    this.ready = Promise.all(readyPromises).then(() => undefined)
    // Rejections are consumed by whoever awaits `ready` or `done`; never let one go unhandled.
    this.ready.catch(() => {})
  }

  /** Resolves when every queue has armed all its tags; rejects if any queue fails first. */
  whenReady(): Promise<void> {
    return this.ready
  }

  /** Rejects as soon as any queue task ends, for racing against other waits. */
  firstExit(): Promise<never> {
    return Promise.race(this.tasks.map((task) => task.done.then(
      (exit) => { throw new UblkdError('UBLKD_ERR_QUEUE', `queue ${task.queueId} ended (${exit.reason})`) },
      (error: Error) => { throw new UblkdError('UBLKD_ERR_QUEUE', `queue ${task.queueId} died: ${error.message}`, { cause: error }) },
    )))
  }

  /**
   * Wait for every queue to end by itself (after STOP_DEV) for up to `graceMs`, then tell the
   * rest through their stop eventfds and wait as long again; a queue still running then is stuck
   * (not turning its loop), and destroying the pool terminates its thread. A queue that drains
   * its target's I/O is not stuck: it gets the time the drain may take.
   */
  async shutdown(graceMs: number): Promise<void> {
    const all = Promise.allSettled(this.tasks.map((task) => task.done))
    if (!(await settlesWithin(all, graceMs))) {
      for (const task of this.tasks) if (!task.settled) native.eventFdWrite(task.stopEventFd)
      await settlesWithin(all, Math.max(graceMs, kStopEventGraceMs))
      if (this.tasks.some((task) => task.draining && !task.settled)) await settlesWithin(all, kTargetDrainMs + kStopEventGraceMs)
    }
    await this.pool.destroy()
    for (const task of this.tasks) {
      fs.closeSync(task.stopEventFd)
      fs.closeSync(task.charFd)
    }
  }
}
