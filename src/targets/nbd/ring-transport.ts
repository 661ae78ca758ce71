// The transport of a plaintext connection (TCP or unix socket): the queue's own io_uring sends
// and receives, so the hot path allocates nothing and crosses into the kernel once per loop turn.
//
// The socket is taken from Node after the handshake (a dup of its descriptor; Node's socket is
// destroyed). Out: the turn's headers and WRITE payloads are a list of iovecs, sent by one
// SENDMSG straight from the header slots and the tag buffers; one SENDMSG at a time, so a short
// send simply continues where it stopped and the byte stream keeps its order. In: one RECV at a
// time into a receive buffer, whose bytes go to the reply parser.
//
// Dropping the connection shuts the socket down (IORING_OP_SHUTDOWN), which ends the pending
// RECV; the descriptor is closed and the memory unmapped once none of its SQEs is in flight.
import fs from 'node:fs'
import type net from 'node:net'

import { SHUT_RDWR, encodeRecv, encodeSendmsg, encodeShutdown } from '../../abi/io-uring.js'
import { errnoName } from '../../common/errors.js'
import { kUserDataTarget } from '../../common/user-data.js'
import { native } from '../../native/addon.js'
import type { QueueContext } from '../target.js'
import type { NbdBuffers, NbdTransport, TransportEvents } from './transport.js'

/** Cookie kinds (the low 2 bits; the connection's generation above). */
export const kRecvKind = 0
export const kSendKind = 1
export const kShutdownKind = 2
export const kKindBits = 2

const kRecvBytes = 256 * 1024
const kIovecBytes = 16
const kMsghdrBytes = 56
/** UIO_MAXIOV: the most iovecs one SENDMSG takes. */
const kMaxIovecsPerSend = 1024

/** The descriptor behind a Node socket (libuv's stream handle keeps it there). */
function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd
  if (typeof fd !== 'number' || fd < 0) throw new Error('the connection has no file descriptor')
  return fd
}

export class RingTransport implements NbdTransport {
  private readonly fd: number
  private readonly memory: ArrayBuffer
  private readonly recvBuffer: Buffer
  private readonly recvAddressLo: number
  private readonly recvAddressHi: number
  /** iovec i: words 4i..4i+3 = base lo, base hi, len lo, len hi. */
  private readonly iovecs: Uint32Array
  private readonly iovecsAddressLo: number
  private readonly iovecsAddressHi: number
  private readonly msghdr: Uint32Array
  private readonly msghdrAddressLo: number
  private readonly msghdrAddressHi: number
  private head = 0
  private tail = 0
  /** iovecs the SENDMSG in flight carries (0: none in flight). */
  private sending = 0
  private inFlight = 0
  private dead = false
  private closed = false

  constructor(socket: net.Socket, private readonly cookieBase: number, private readonly queue: QueueContext,
    private readonly buffers: NbdBuffers, private readonly events: TransportEvents, maxIovecs: number) {
    this.fd = native.dupFd(socketFd(socket))
    socket.destroy()
    const iovecBytes = maxIovecs * kIovecBytes
    this.memory = native.allocBuffer(kRecvBytes + iovecBytes + kMsghdrBytes)
    this.recvBuffer = Buffer.from(this.memory, 0, kRecvBytes)
    const base = native.bufferAddress(this.memory, 0)
    this.recvAddressLo = Number(base & 0xffffffffn)
    this.recvAddressHi = Number(base >> 32n)
    this.iovecs = new Uint32Array(this.memory, kRecvBytes, maxIovecs * 4)
    const iovecsAddress = base + BigInt(kRecvBytes)
    this.iovecsAddressLo = Number(iovecsAddress & 0xffffffffn)
    this.iovecsAddressHi = Number(iovecsAddress >> 32n)
    this.msghdr = new Uint32Array(this.memory, kRecvBytes + iovecBytes, kMsghdrBytes / 4)
    const msghdrAddress = base + BigInt(kRecvBytes + iovecBytes)
    this.msghdrAddressLo = Number(msghdrAddress & 0xffffffffn)
    this.msghdrAddressHi = Number(msghdrAddress >> 32n)
    this.armRecv()
    queue.submitSoon()
  }

  get released(): boolean {
    return this.closed
  }

  send(slot: number, tag: number, payloadOffset: number, payloadBytes: number): void {
    const b = this.buffers
    this.push(b.headersAddressLo, b.headersAddressHi, slot * 28, 28)
    if (payloadBytes > 0) this.push(b.tagAddressLo[tag]!, b.tagAddressHi[tag]!, payloadOffset, payloadBytes)
  }

  flush(): void {
    if (this.sending > 0 || this.head === this.tail || this.dead) return
    this.stageSend()
    this.queue.submitSoon()
  }

  onCompletion(kind: number, res: number): void {
    this.inFlight--
    if (this.dead) {
      this.releaseIfIdle()
      return
    }
    if (kind === kRecvKind) {
      if (res > 0) {
        this.events.received(this.recvBuffer, 0, res)
        if (!this.dead) this.armRecv()
      } else {
        this.events.lost(res === 0 ? 'the server closed the connection' : `receive failed (${errnoName(res)})`)
      }
    } else if (kind === kSendKind) {
      if (res < 0) this.events.lost(`send failed (${errnoName(res)})`)
      else this.sent(res)
    }
  }

  destroy(): void {
    if (this.dead) return
    this.dead = true
    if (this.inFlight > 0) {
      encodeShutdown(this.queue.sqes, this.queue.reserveSqe(), this.fd, SHUT_RDWR, this.cookieBase | kShutdownKind, kUserDataTarget)
      this.inFlight++
      this.queue.submitSoon()
    } else {
      this.releaseIfIdle()
    }
  }

  close(disc: Buffer, drained: boolean): void {
    if (this.closed) return
    if (!this.dead) {
      try {
        fs.writeSync(this.fd, disc)
      } catch { /* a goodbye that does not go is no loss */ }
    }
    this.dead = true
    this.closed = true
    fs.closeSync(this.fd)
    // A RECV that did not drain may still write into the receive buffer.
    if (drained) native.munmap(this.memory)
    else native.abandonMapping(this.memory)
  }

  private releaseIfIdle(): void {
    if (this.inFlight > 0 || this.closed) return
    this.closed = true
    fs.closeSync(this.fd)
    native.munmap(this.memory)
  }

  /** Append an iovec of `bytes` at (addressLo, addressHi) + offset. The array holds every
   *  iovec of the requests in flight; those sent are dropped from its front, and when the back
   *  is reached the rest moves to the front (the kernel copied the in-flight SENDMSG's iovecs
   *  when it was submitted). */
  private push(addressLo: number, addressHi: number, offset: number, bytes: number): void {
    if (this.tail * 4 === this.iovecs.length) {
      this.iovecs.copyWithin(0, this.head * 4, this.tail * 4)
      this.tail -= this.head
      this.head = 0
    }
    const lo = addressLo + offset
    const at = this.tail++ * 4
    this.iovecs[at] = lo >>> 0
    this.iovecs[at + 1] = addressHi + (lo >= 0x1_0000_0000 ? 1 : 0)
    this.iovecs[at + 2] = bytes
    this.iovecs[at + 3] = 0
  }

  private stageSend(): void {
    const count = Math.min(this.tail - this.head, kMaxIovecsPerSend)
    // struct msghdr: no name, the iovecs from head on, no control data.
    const lo = this.iovecsAddressLo + this.head * kIovecBytes
    this.msghdr.fill(0)
    this.msghdr[4] = lo >>> 0
    this.msghdr[5] = this.iovecsAddressHi + (lo >= 0x1_0000_0000 ? 1 : 0)
    this.msghdr[6] = count
    encodeSendmsg(this.queue.sqes, this.queue.reserveSqe(), this.fd, this.msghdrAddressLo, this.msghdrAddressHi,
      this.cookieBase | kSendKind, kUserDataTarget)
    this.sending = count
    this.inFlight++
  }

  /** A SENDMSG sent `bytes`: drop the iovecs it covered, trim a partly sent one, send the rest. */
  private sent(bytes: number): void {
    let left = bytes
    const end = this.head + this.sending
    while (this.head < end && left > 0) {
      const at = this.head * 4
      const length = this.iovecs[at + 2]!
      if (length > left) {
        const lo = this.iovecs[at]! + left
        this.iovecs[at] = lo >>> 0
        if (lo >= 0x1_0000_0000) this.iovecs[at + 1]!++
        this.iovecs[at + 2] = length - left
        left = 0
        break
      }
      left -= length
      this.head++
    }
    this.sending = 0
    if (this.head === this.tail) this.head = this.tail = 0
    else this.stageSend()
  }

  private armRecv(): void {
    encodeRecv(this.queue.sqes, this.queue.reserveSqe(), this.fd, this.recvAddressLo, this.recvAddressHi, kRecvBytes,
      this.cookieBase | kRecvKind, kUserDataTarget)
    this.inFlight++
  }
}
