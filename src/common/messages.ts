// The only shapes that cross between the main thread and a queue worker. Everything here must
// survive structured cloning (SharedArrayBuffers are shared, MessagePorts transferred).
import type { MessagePort } from 'node:worker_threads'

import type { IoMode } from './io-mode.js'
import type { LogLevel } from './log-level.js'

/**
 * How a queue thread waits for work: `ring` blocks in io_uring_enter (fastest; the thread runs
 * nothing else), `event-loop` is woken through an eventfd by the worker's event loop (targets
 * may then complete requests from timers and promises).
 */
export const queueModes = ['ring', 'event-loop'] as const
export type QueueMode = (typeof queueModes)[number]

/** What the main thread hands a queue worker (one piscina task per hardware queue). */
export interface QueueTaskInput {
  devId: number
  queueId: number
  depth: number
  maxIoBufBytes: number
  /** How the requests' data travels (src/common/io-mode.ts); the buffer options below are copy
   *  mode's. */
  ioMode: IoMode
  /** The I/O buffers may use transparent huge pages (--huge-page-buffers). */
  hugePageBuffers: boolean
  /** The I/O buffers' pages are locked in RAM once touched (--mlock-buffers). */
  mlockBuffers: boolean
  /** This worker's own descriptor of /dev/ublkcN (the device opened it once; the pool dup'ed it). */
  charFd: number
  /** CPUs from UBLK_CMD_GET_QUEUE_AFFINITY for this queue. */
  cpus: number[]
  targetName: string
  targetSpec: unknown
  /** Per-device stats buffer; this queue writes its own slice (src/common/stats-layout.ts). */
  stats: SharedArrayBuffer
  /** Writing this eventfd makes the queue loop exit at once (forced stop). */
  stopEventFd: number
  logLevel: LogLevel
  /** A busy queue publishes its counters at most this often (µs); 0: every loop turn. */
  statsPublishMicros: number
  /** The device's start gate (src/common/start-gate.ts), shared by its queues. */
  startGate: Int32Array
  queueMode: QueueMode
  /** Carries QueueEvent messages to the main thread. */
  port: MessagePort
}

/** Sent by a queue worker once every tag has a FETCH_REQ outstanding. */
export interface QueueReady {
  type: 'ready'
  queueId: number
  tid: number
}

/** Sent by a queue worker whose loop ended with target SQEs still in flight: it waits up to
 *  kTargetDrainMs for them before it releases its buffers, and is not stuck meanwhile. */
export interface QueueDraining {
  type: 'draining'
  queueId: number
  inFlight: number
}

export type QueueEvent = QueueReady | QueueDraining

/** How long a queue that ends waits for its target's SQEs still in flight (a slow backing). */
export const kTargetDrainMs = 10_000

/** The value a queue task resolves with when its loop ends. */
export interface QueueExit {
  queueId: number
  tid: number
  /** 'aborted': the kernel aborted every tag (STOP_DEV); 'stopped': the stop eventfd fired. */
  reason: 'aborted' | 'stopped'
  requestsServed: number
}
