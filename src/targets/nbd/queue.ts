// One queue of an nbd device: its own connection to the server (event-loop mode: the socket's
// callbacks complete requests), many requests in flight on it, matched by handle.
//
// A request becomes one NBD request per part: READ/WRITE longer than the server's maximum
// payload are split, each part's handle naming its tag, its part and the tag's generation (so a
// reply to an older use of the tag is recognised as bogus). READ data goes from the received
// bytes into the tag's buffer at the part's offset (structured replies: at each chunk's offset,
// holes zeroed; a READ whose chunks do not cover it fails rather than return stale bytes).
//
// When the connection drops (server restart, network cut, a server that breaks the protocol or
// stops answering), the requests in flight and the new ones are held; the queue reconnects with
// backoff and sends again every part not yet answered. Until the server answers again, a
// reconnect that succeeds does not count as recovery. After --reconnect-timeout without it, the
// held requests fail with EIO, and so do new ones until a reconnect succeeds.
import {
  UBLK_IO_F_FUA, UBLK_IO_F_NOUNMAP, UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE,
  UBLK_IO_OP_WRITE_ZEROES,
} from '../../abi/ublk-cmd.js'
import { messageOf } from '../../common/errors.js'
import type { Logger } from '../../common/log.js'
import { kIoPending, type IoRequest, type QueueContext, type QueueHandler } from '../target.js'
import { dialNbd, type NbdExport, type NbdSession, type NbdTlsFiles } from './handshake.js'
import {
  NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FUA, disconnectRequest, encodeRequest, errnoOfServerError, kRequestHeaderBytes,
} from './protocol.js'
import { ReplyParser, type ReplySink } from './reply-parser.js'
import { RingTransport, kKindBits } from './ring-transport.js'
import { StreamTransport } from './stream-transport.js'
import type { NbdBuffers, NbdTransport, TransportEvents } from './transport.js'
import { describeAddress, type NbdUri } from './uri.js'
import { native } from '../../native/addon.js'

export interface NbdSpec {
  uri: NbdUri
  tlsFiles: NbdTlsFiles
  /** What the server said at `add`. */
  export: NbdExport
  /** The largest READ/WRITE payload of one NBD request. */
  maxPayloadBytes: number
  /** The largest TRIM/WRITE_ZEROES of one NBD request (the device never sends more). */
  maxZeroingBytes: number
  connectTimeoutMs: number
  reconnectTimeoutMs: number
  /** A connection with requests in flight and nothing received for this long is dropped. */
  replyTimeoutMs: number
  /** How plaintext connections move bytes: the queue's ring (the daemon), or Node's socket (unit
   *  tests, which have no ring). TLS connections always use the socket. */
  plainTransport: 'ring' | 'stream'
}

const kEio = -5
const kEopnotsupp = -95
const kNoCommand = 255
const kFirstBackoffMs = 100
const kMaxBackoffMs = 2_000
const kWatchIntervalMs = 1_000
/** Separate (not adjacent) ranges one READ part may have received at once. */
const kMaxRangesPerPart = 32

type LinkState = 'connecting' | 'ready' | 'waiting' | 'closed'

export class NbdQueue implements QueueHandler, ReplySink, TransportEvents {
  private readonly log: Logger
  private readonly depth: number
  private readonly maxParts: number
  /** Per tag: the NBD command, its flags, byte offset and length, part size and parts left. */
  private readonly command: Uint8Array
  private readonly commandFlags: Uint16Array
  private readonly fromBytes: Float64Array
  private readonly lengthBytes: Float64Array
  private readonly partBytes: Float64Array
  private readonly partCount: Uint32Array
  private readonly partsLeft: Uint32Array
  /** Per tag and part: answered; the bytes of a READ part the server has sent, and the ranges
   *  they came in (so that a chunk over bytes already sent is caught, not summed); an error. */
  private readonly partDone: Uint8Array
  private readonly covered: Uint32Array
  private readonly rangeCount: Uint8Array
  private readonly rangeStart: Float64Array
  private readonly rangeEnd: Float64Array
  private readonly partError: Int32Array
  /** Per tag: bumped by every request, the upper half of its handles. */
  private readonly generation: Uint32Array
  /** Per tag: 0, or the first error a part brought (-errno). */
  private readonly result: Int32Array
  private readonly inService: Uint8Array
  private inServiceCount = 0
  private readonly buffers: NbdBuffers
  private readonly parser = new ReplyParser(this)
  /** The READ part whose payload is arriving: where its next byte goes. */
  private replyTag = -1
  private replyPart = 0
  private replyAt = 0

  private transport: NbdTransport | null = null
  /** Connections given up whose SQEs are still in flight (ring transport), by generation. */
  private retiring: { generation: number; transport: NbdTransport }[] = []
  /** Each connection's number (its cookies carry it), to route a CQE to its transport. */
  private connectionNumber = 0
  private transportGeneration = -1
  private state: LinkState = 'waiting'
  /** When the server was last known good (0: it is). Set by a drop or the first connect. */
  private downSinceMs = Date.now()
  /** --reconnect-timeout ran out: new requests fail at once until the server answers again. */
  private expired = false
  private backoffMs = kFirstBackoffMs
  private lastReceiveMs = 0
  private connected = false
  private reconnectTimer: NodeJS.Timeout | null = null
  private expiryTimer: NodeJS.Timeout | null = null
  private readonly watch: NodeJS.Timeout

  constructor(private readonly spec: NbdSpec, private readonly queue: QueueContext) {
    this.log = queue.log.child({ server: describeAddress(spec.uri.address) })
    this.depth = queue.depth
    this.maxParts = Math.max(Math.ceil(queue.maxIoBufBytes / spec.maxPayloadBytes), 1)
    const depth = this.depth
    this.command = new Uint8Array(depth).fill(kNoCommand)
    this.commandFlags = new Uint16Array(depth)
    this.fromBytes = new Float64Array(depth)
    this.lengthBytes = new Float64Array(depth)
    this.partBytes = new Float64Array(depth)
    this.partCount = new Uint32Array(depth)
    this.partsLeft = new Uint32Array(depth)
    this.partDone = new Uint8Array(depth * this.maxParts)
    this.covered = new Uint32Array(depth * this.maxParts)
    this.rangeCount = new Uint8Array(depth * this.maxParts)
    this.rangeStart = new Float64Array(depth * this.maxParts * kMaxRangesPerPart)
    this.rangeEnd = new Float64Array(depth * this.maxParts * kMaxRangesPerPart)
    this.partError = new Int32Array(depth * this.maxParts)
    this.generation = new Uint32Array(depth)
    this.result = new Int32Array(depth)
    this.inService = new Uint8Array(depth)
    // An ArrayBuffer of its own: its address is stable, so SENDMSG may name it.
    const headersMemory = new ArrayBuffer(depth * this.maxParts * kRequestHeaderBytes)
    const headers = Buffer.from(headersMemory)
    const headerViews: Buffer[] = []
    for (let slot = 0; slot < depth * this.maxParts; slot++) {
      headerViews.push(headers.subarray(slot * kRequestHeaderBytes, (slot + 1) * kRequestHeaderBytes))
    }
    const headersAddress = native.bufferAddress(headersMemory, 0)
    const endpoint = queue.data.endpoint
    if (typeof endpoint === 'number') throw new Error('the nbd target serves copy mode only')
    this.buffers = {
      headers, headerViews,
      headersAddressLo: Number(headersAddress & 0xffffffffn), headersAddressHi: Number(headersAddress >> 32n),
      data: Buffer.from(endpoint.buffer, endpoint.byteOffset, endpoint.byteLength),
      tagOffset: queue.data.tagOffset, tagAddressLo: queue.tagAddressLo, tagAddressHi: queue.tagAddressHi,
    }
    this.watch = setInterval(() => this.checkSilence(), kWatchIntervalMs)
    this.connect()
  }

  handleIo(request: IoRequest): number {
    const tag = request.tag
    const spec = this.spec
    let command: number
    let flags = 0
    let partBytes = spec.maxPayloadBytes
    switch (request.op) {
      case UBLK_IO_OP_READ:
        command = NBD_CMD_READ
        break
      case UBLK_IO_OP_WRITE:
        command = NBD_CMD_WRITE
        if ((request.flags & UBLK_IO_F_FUA) !== 0 && (spec.export.flags & NBD_FLAG_SEND_FUA) !== 0) flags = NBD_CMD_FLAG_FUA
        break
      case UBLK_IO_OP_FLUSH:
        command = NBD_CMD_FLUSH
        break
      case UBLK_IO_OP_DISCARD:
        command = NBD_CMD_TRIM
        partBytes = spec.maxZeroingBytes
        break
      case UBLK_IO_OP_WRITE_ZEROES:
        command = NBD_CMD_WRITE_ZEROES
        partBytes = spec.maxZeroingBytes
        if ((request.flags & UBLK_IO_F_NOUNMAP) !== 0) flags = NBD_CMD_FLAG_NO_HOLE
        break
      default:
        return kEopnotsupp
    }
    if (this.expired) return kEio
    const length = command === NBD_CMD_FLUSH ? 0 : request.nrSectors * 512
    const parts = Math.max(Math.ceil(length / partBytes), 1)
    if (parts > this.maxParts) return kEio
    this.command[tag] = command
    this.commandFlags[tag] = flags
    this.fromBytes[tag] = command === NBD_CMD_FLUSH ? 0 : request.startSector * 512
    this.lengthBytes[tag] = length
    this.partBytes[tag] = partBytes
    this.partCount[tag] = parts
    this.partsLeft[tag] = parts
    this.partDone.fill(0, tag * this.maxParts, tag * this.maxParts + parts)
    this.generation[tag] = (this.generation[tag]! + 1) >>> 0
    this.result[tag] = 0
    this.inService[tag] = 1
    // The silence watch counts from the first request in flight, not from an idle connection.
    if (this.inServiceCount++ === 0) this.lastReceiveMs = Date.now()
    if (this.state === 'ready') {
      for (let part = 0; part < parts; part++) this.sendPart(tag, part)
    }
    return kIoPending
  }

  endTurn(): void {
    this.transport?.flush()
  }

  onCompletion(cookie: number, res: number): void {
    const generation = cookie >>> kKindBits
    const kind = cookie & ((1 << kKindBits) - 1)
    if (this.transport !== null && generation === this.transportGeneration) {
      this.transport.onCompletion(kind, res)
      return
    }
    // A connection given up earlier: its last SQEs coming back.
    const retired = this.retiring.find((entry) => entry.generation === generation)
    if (!retired) return
    retired.transport.onCompletion(kind, res)
    if (retired.transport.released) this.retiring = this.retiring.filter((entry) => entry !== retired)
  }

  close(targetIoDrained: boolean): void {
    this.state = 'closed'
    clearInterval(this.watch)
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer)
    if (this.expiryTimer) clearTimeout(this.expiryTimer)
    // A polite goodbye; the thread ends right after, which closes the socket anyway.
    const disc = disconnectRequest()
    this.transport?.close(disc, targetIoDrained)
    for (const { transport } of this.retiring) transport.close(disc, targetIoDrained)
    this.transport = null
    this.retiring = []
  }

  // TransportEvents: what the connection says.

  received(chunk: Buffer, start: number, end: number): void {
    this.lastReceiveMs = Date.now()
    if (!this.parser.feed(chunk, start, end)) this.drop(`the server sent ${this.parser.failure!}`)
  }

  lost(reason: string): void {
    this.drop(reason)
  }

  // ReplySink: the parser's view of the requests in flight.

  begin(handleHi: number, handleLo: number): boolean {
    const tag = handleLo & 0xffff
    const part = handleLo >>> 16
    if (tag >= this.depth || this.inService[tag] === 0 || this.generation[tag] !== handleHi ||
        part >= this.partCount[tag]! || this.partDone[tag * this.maxParts + part] !== 0) {
      return false
    }
    this.replyTag = tag
    this.replyPart = part
    return true
  }

  simple(error: number): number {
    const tag = this.replyTag
    if (error !== 0) {
      this.error(error)
      return 0
    }
    if (this.command[tag] !== NBD_CMD_READ) return 0
    // With structured replies negotiated, a READ's data comes in chunks only.
    if (this.parser.structured) return -1
    const part = this.replyPart
    const partBytes = this.partBytes[tag]!
    this.replyAt = this.buffers.tagOffset[tag]! + part * partBytes
    const length = Math.min(partBytes, this.lengthBytes[tag]! - part * partBytes)
    this.covered[tag * this.maxParts + part] = length
    return length
  }

  data(offset: number, length: number): boolean {
    const at = this.placeInPart(offset, length)
    if (at < 0) return false
    this.replyAt = at
    return true
  }

  hole(offset: number, length: number): boolean {
    const at = this.placeInPart(offset, length)
    if (at < 0) return false
    this.buffers.data.fill(0, at, at + length)
    return true
  }

  error(error: number): void {
    const slot = this.replyTag * this.maxParts + this.replyPart
    if (this.partError[slot] === 0) this.partError[slot] = -errnoOfServerError(error)
  }

  payload(chunk: Buffer, start: number, length: number): void {
    chunk.copy(this.buffers.data, this.replyAt, start, start + length)
    this.replyAt += length
  }

  end(done: boolean): void {
    // The server answers: whatever outage there was is over.
    if (this.downSinceMs !== 0) this.recovered()
    if (!done) return
    const tag = this.replyTag
    const slot = tag * this.maxParts + this.replyPart
    if (this.partError[slot] !== 0 && this.result[tag] === 0) this.result[tag] = this.partError[slot]!
    // A READ said done before all its bytes came: what is missing would be whatever the tag's
    // buffer held before, another request's data. It fails instead.
    if (this.command[tag] === NBD_CMD_READ && this.result[tag] === 0 && this.covered[slot] !== this.partLength(tag, this.replyPart)) {
      this.result[tag] = kEio
      this.log.warn({ covered: this.covered[slot], expected: this.partLength(tag, this.replyPart) }, 'the nbd server ended a read without all its data: EIO')
    }
    this.partDone[slot] = 1
    if (--this.partsLeft[tag]! > 0) return
    this.inService[tag] = 0
    this.inServiceCount--
    const result = this.result[tag]!
    const command = this.command[tag]!
    this.queue.complete(tag, result < 0 ? result : command === NBD_CMD_READ || command === NBD_CMD_WRITE ? this.lengthBytes[tag]! : 0)
  }

  /** Where in the tag's data a chunk of the current READ part goes, or -1 when it is not wholly
   *  inside the part or overlaps bytes an earlier chunk brought. Adjacent ranges are merged, so a
   *  part usually holds one however many chunks it came in; a part split into more than
   *  kMaxRangesPerPart separate pieces at once is refused too. */
  private placeInPart(offset: number, length: number): number {
    const tag = this.replyTag
    const part = this.replyPart
    if (this.command[tag] !== NBD_CMD_READ) return -1
    const partStart = this.fromBytes[tag]! + part * this.partBytes[tag]!
    const slot = tag * this.maxParts + part
    const end = offset + length
    if (offset < partStart || end > partStart + this.partLength(tag, part)) return -1
    const first = slot * kMaxRangesPerPart
    const count = this.rangeCount[slot]!
    let merged = -1
    for (let i = first; i < first + count; i++) {
      if (offset < this.rangeEnd[i]! && this.rangeStart[i]! < end) return -1
      if (merged < 0 && end === this.rangeStart[i]) {
        this.rangeStart[i] = offset
        merged = i
      } else if (merged < 0 && offset === this.rangeEnd[i]) {
        this.rangeEnd[i] = end
        merged = i
      }
    }
    if (merged < 0) {
      if (count === kMaxRangesPerPart) return -1
      this.rangeStart[first + count] = offset
      this.rangeEnd[first + count] = end
      this.rangeCount[slot] = count + 1
    }
    this.covered[slot]! += length
    return this.buffers.tagOffset[tag]! + part * this.partBytes[tag]! + (offset - partStart)
  }

  private partLength(tag: number, part: number): number {
    const partBytes = this.partBytes[tag]!
    return Math.min(partBytes, this.lengthBytes[tag]! - part * partBytes)
  }

  // The connection.

  private connect(): void {
    this.reconnectTimer = null
    if (this.state === 'closed') return
    this.state = 'connecting'
    dialNbd({ uri: this.spec.uri, tlsFiles: this.spec.tlsFiles, timeoutMs: this.spec.connectTimeoutMs }).then((session) => {
      if (this.state === 'closed') {
        session.socket.destroy()
        return
      }
      this.checkExport(session.export)
      this.attach(session)
    }, (error: unknown) => {
      if (this.state === 'closed') return
      // The first failure of an outage is worth a warning; the retries every few seconds are not.
      const level = this.backoffMs === kFirstBackoffMs ? 'warn' : 'debug'
      this.log[level]({ err: messageOf(error), retryInMs: this.backoffMs, held: this.inServiceCount }, 'cannot connect to the nbd server')
      this.retryLater()
    })
  }

  /** The export may not change under the device: a different size or access is logged (the
   *  device keeps its geometry; requests past the server's end fail there). */
  private checkExport(now: NbdExport): void {
    const before = this.spec.export
    if (now.sizeBytes !== before.sizeBytes || (now.flags & NBD_FLAG_READ_ONLY) !== (before.flags & NBD_FLAG_READ_ONLY)) {
      this.log.warn({ sizeBytes: now.sizeBytes, wasSizeBytes: before.sizeBytes, flags: now.flags, wasFlags: before.flags },
        'the nbd export changed since the device was added')
    }
  }

  private attach(session: NbdSession): void {
    this.connectionNumber = (this.connectionNumber + 1) & 0xffff
    const generation = this.connectionNumber
    const useRing = !this.spec.uri.tls && this.spec.plainTransport === 'ring'
    this.transport = useRing
      ? new RingTransport(session.socket, generation << kKindBits, this.queue, this.buffers, this, this.depth * this.maxParts * 2)
      : new StreamTransport(session.socket, this.buffers, this)
    this.transportGeneration = generation
    this.state = 'ready'
    this.backoffMs = kFirstBackoffMs
    this.lastReceiveMs = Date.now()
    this.parser.reset(session.structuredReplies)
    const held = this.inServiceCount
    if (this.connected) {
      this.log.info({ held, outageMs: this.downSinceMs === 0 ? 0 : Date.now() - this.downSinceMs }, 'connected to the nbd server again: sending held requests')
    } else {
      this.log.info({ held }, 'connected to the nbd server')
    }
    this.connected = true
    if (held === 0) this.recovered()
    for (let tag = 0; tag < this.depth; tag++) {
      if (this.inService[tag] === 0) continue
      for (let part = 0; part < this.partCount[tag]!; part++) {
        if (this.partDone[tag * this.maxParts + part] === 0) this.sendPart(tag, part)
      }
    }
    this.transport.flush()
  }

  /** The connection is unusable: forget it, hold what is in flight, reconnect. */
  private drop(reason: string): void {
    const transport = this.transport
    if (!transport || this.state === 'closed') return
    const generation = this.transportGeneration
    this.transport = null
    this.transportGeneration = -1
    transport.destroy()
    if (!transport.released) this.retiring.push({ generation, transport })
    this.state = 'waiting'
    if (this.downSinceMs === 0) {
      this.downSinceMs = Date.now()
      this.expiryTimer = setTimeout(() => this.expire(), this.spec.reconnectTimeoutMs)
    }
    this.log.warn({ reason, held: this.inServiceCount, reconnectTimeoutMs: this.spec.reconnectTimeoutMs },
      'lost the nbd server: holding requests and reconnecting')
    this.retryLater()
  }

  private retryLater(): void {
    if (this.state === 'closed') return
    this.state = 'waiting'
    this.reconnectTimer = setTimeout(() => this.connect(), this.backoffMs)
    this.backoffMs = Math.min(this.backoffMs * 2, kMaxBackoffMs)
    if (this.downSinceMs !== 0 && this.expiryTimer === null && !this.expired) {
      this.expiryTimer = setTimeout(() => this.expire(), Math.max(this.downSinceMs + this.spec.reconnectTimeoutMs - Date.now(), 0))
    }
  }

  /** The server answered (or was reached with nothing to answer): the outage is over. */
  private recovered(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer)
    this.expiryTimer = null
    if (this.expired) this.log.info('the nbd server answers again: requests are served again')
    this.expired = false
    this.downSinceMs = 0
  }

  /** --reconnect-timeout ran out: fail what is held, and new requests until the server is back. */
  private expire(): void {
    this.expiryTimer = null
    if (this.state === 'closed' || this.downSinceMs === 0) return
    this.expired = true
    this.log.error({ failed: this.inServiceCount, downMs: Date.now() - this.downSinceMs },
      'the nbd server did not come back within --reconnect-timeout: failing its requests with EIO until it does')
    for (let tag = 0; tag < this.depth; tag++) {
      if (this.inService[tag] === 0) continue
      this.inService[tag] = 0
      this.queue.complete(tag, kEio)
    }
    this.inServiceCount = 0
    // Replies to those requests, should the connection deliver any, name no request in flight.
    if (this.transport) this.drop('requests timed out')
  }

  /** A server that holds requests without answering (and without closing) is dropped. */
  private checkSilence(): void {
    if (this.state !== 'ready' || this.inServiceCount === 0) return
    const silentMs = Date.now() - this.lastReceiveMs
    if (silentMs > this.spec.replyTimeoutMs) this.drop(`no reply for ${Math.round(silentMs / 1000)} s with requests in flight`)
  }

  private sendPart(tag: number, part: number): void {
    const partBytes = this.partBytes[tag]!
    const command = this.command[tag]!
    const offset = part * partBytes
    const length = Math.min(partBytes, this.lengthBytes[tag]! - offset)
    const slot = tag * this.maxParts + part
    this.covered[slot] = 0
    this.rangeCount[slot] = 0
    this.partError[slot] = 0
    encodeRequest(this.buffers.headers, slot * kRequestHeaderBytes, command, this.commandFlags[tag]!, this.generation[tag]!,
      (tag | (part << 16)) >>> 0, this.fromBytes[tag]! + offset, length)
    this.transport!.send(slot, tag, offset, command === NBD_CMD_WRITE ? length : 0)
  }
}
