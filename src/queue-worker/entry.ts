// The piscina task of one hardware queue: runs on its own worker thread for the life of the
// queue. Pins itself to the queue's CPUs, marks itself an I/O flusher, builds its own io_uring,
// maps its descriptors, sets up its I/O mode's data (the I/O buffers in copy mode), arms every
// tag, reports ready, then serves until the device stops.
import { IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SQE128, IORING_SETUP_SUBMIT_ALL } from '../abi/io-uring.js'
import { UBLK_MAX_QUEUE_DEPTH } from '../abi/ublk-cmd.js'
import { createLogger } from '../common/log.js'
import { kTargetDrainMs, type QueueDraining, type QueueExit, type QueueReady, type QueueTaskInput } from '../common/messages.js'
import { QueueStatsWriter, queueStatsView } from '../common/stats-layout.js'
import { native } from '../native/addon.js'
import { findTarget } from '../targets/registry.js'
import { ioDescMapBytes, ioDescMapOffset } from './io-desc.js'
import { openQueueData, type QueueData } from './io-mode.js'
import { QueueLoop } from './queue-loop.js'

function nextPowerOfTwo(n: number): number {
  return 2 ** Math.ceil(Math.log2(n))
}

export default async function queueTask(input: QueueTaskInput): Promise<QueueExit> {
  const log = createLogger(input.logLevel, { role: 'queue', devId: input.devId, queueId: input.queueId })
  native.pinThread(input.cpus)
  // Reclaim this thread triggers must not wait on the device it serves (as ublksrv, libublk-rs).
  native.setIoFlusher()
  const tid = native.gettid()
  const pageSize = native.pageSize
  const target = findTarget(input.targetName)

  // Every tag has at most one command in flight plus the stop read; targets that stage their
  // own SQEs get as many again. The CQ is twice the SQ so it never overflows.
  const sqEntries = nextPowerOfTwo(2 * input.depth + 2)
  const ring = new native.Ring(sqEntries, 2 * sqEntries,
    IORING_SETUP_SQE128 | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN)
  const mappings: ArrayBuffer[] = []
  let queueData: QueueData | null = null
  let abandoned = false
  try {
    const descBuffer = native.mmapReadOnly(input.charFd,
      ioDescMapOffset(input.queueId, pageSize, UBLK_MAX_QUEUE_DEPTH), ioDescMapBytes(input.depth, pageSize))
    mappings.push(descBuffer)
    const stopBuffer = native.allocBuffer(pageSize)
    mappings.push(stopBuffer)
    const stopAddress = native.bufferAddress(stopBuffer, 0)
    queueData = openQueueData(input.ioMode, input)
    const { tagBuffers, commandAddressLo: tagAddressLo, commandAddressHi: tagAddressHi } = queueData
    // Zero copy: the table the kernel puts each request's pages in, slot = tag.
    if (input.ioMode === 'zero-copy') ring.registerSparseBuffers(input.depth)

    const loop: QueueLoop = new QueueLoop({
      queueId: input.queueId,
      depth: input.depth,
      charFd: input.charFd,
      ring,
      descs: new Uint32Array(descBuffer),
      tagBuffers,
      tagAddressLo,
      tagAddressHi,
      sqeAddress: queueData.sqeAddress,
      stopEventFd: input.stopEventFd,
      stopReadAddressLo: Number(stopAddress & 0xffffffffn),
      stopReadAddressHi: Number(stopAddress >> 32n),
      stats: new QueueStatsWriter(queueStatsView(input.stats, input.queueId)),
      statsPublishMicros: input.statsPublishMicros,
      startGate: input.startGate,
      log,
    })
    const handler = await target.openQueue(input.targetSpec, {
      queueId: input.queueId,
      log,
      ioMode: input.ioMode,
      depth: input.depth,
      maxIoBufBytes: input.maxIoBufBytes,
      tagAddressLo,
      tagAddressHi,
      data: queueData.data,
      sqes: loop.stagingSqes,
      reserveSqe: () => loop.reserveSqe(),
      complete: (tag, result) => loop.complete(tag, result),
      submitSoon: () => loop.submitStaged(),
    })
    try {
      loop.arm(handler)
      const ready: QueueReady = { type: 'ready', queueId: input.queueId, tid }
      input.port.postMessage(ready)
      log.info({ tid, cpus: input.cpus, sqEntries, queueMode: input.queueMode, ioMode: input.ioMode }, 'queue ready')
      const reason = input.queueMode === 'event-loop' ? await loop.runOnEventLoop() : loop.run()
      log.info({ reason, requestsServed: loop.requestsServed }, 'queue stopped')
      return { queueId: input.queueId, tid, reason, requestsServed: loop.requestsServed }
    } finally {
      const inFlight = loop.targetIoInFlight()
      if (inFlight > 0) {
        const draining: QueueDraining = { type: 'draining', queueId: input.queueId, inFlight }
        input.port.postMessage(draining)
      }
      if (!loop.drainTargetIo(kTargetDrainMs)) {
        log.error({ inFlight, waitMs: kTargetDrainMs, leakedBytes: queueData.mappedBytes + stopBuffer.byteLength },
          'target I/O still in flight: its buffers are left mapped (leaked) so that no one else reuses them')
        abandoned = true
        native.abandonMapping(stopBuffer)
      } else if (inFlight > 0) {
        log.info({ inFlight }, 'waited for the target\'s I/O in flight before releasing its buffers')
      }
      handler.close(!abandoned)
    }
  } finally {
    // Closing the ring cancels whatever ublk commands are still outstanding; the char fd (this
    // worker's own) is closed by the pool once the thread is gone.
    ring.close()
    queueData?.release(abandoned)
    for (const mapping of mappings) native.munmap(mapping)
    input.port.close()
  }
}
