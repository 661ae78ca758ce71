// Reads the server's simple replies out of whatever chunks the socket delivers: a 16-byte
// header (magic, error, handle), then, for a successful READ, exactly the bytes that request
// asked for, handed on as they come. No allocation: the header is gathered in a buffer of its
// own, the payload is passed by range of the chunk it arrived in.

import { kNbdSimpleReplyMagic, kNbdStructuredReplyMagic, kSimpleReplyBytes } from './protocol.js'

export interface ReplySink {
  /**
   * A reply header arrived: the payload bytes that follow it (a READ's length when `error` is 0,
   * else 0), or -1 when the handle names no request in flight (the server is not to be trusted).
   */
  replyHeader(error: number, handleHi: number, handleLo: number): number
  /** `length` bytes of the current reply's payload, at `start` of `chunk`. */
  payload(chunk: Buffer, start: number, length: number): void
  /** The current reply (header and payload) is complete. */
  replyDone(): void
}

export class ReplyParser {
  private readonly header = Buffer.alloc(kSimpleReplyBytes)
  private headerBytes = 0
  private payloadLeft = 0
  /** Why the stream became unreadable; nothing is parsed after it. */
  failure: string | null = null

  constructor(private readonly sink: ReplySink) {}

  /** Start afresh (a new connection). */
  reset(): void {
    this.headerBytes = 0
    this.payloadLeft = 0
    this.failure = null
  }

  /** Consume `chunk[start, end)`; false once the stream broke the protocol (see `failure`). */
  feed(chunk: Buffer, start: number, end: number): boolean {
    let at = start
    while (at < end && this.failure === null) {
      if (this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, end - at)
        this.payloadLeft -= take
        this.sink.payload(chunk, at, take)
        at += take
        if (this.payloadLeft === 0) this.sink.replyDone()
        continue
      }
      const take = Math.min(kSimpleReplyBytes - this.headerBytes, end - at)
      chunk.copy(this.header, this.headerBytes, at, at + take)
      this.headerBytes += take
      at += take
      if (this.headerBytes === kSimpleReplyBytes) this.parseHeader()
    }
    return this.failure === null
  }

  private parseHeader(): void {
    this.headerBytes = 0
    const magic = this.header.readUInt32BE(0)
    if (magic !== kNbdSimpleReplyMagic) {
      this.failure = magic === kNbdStructuredReplyMagic
        ? 'a structured reply, which was not negotiated'
        : `a reply with bad magic 0x${magic.toString(16)}`
      return
    }
    const error = this.header.readUInt32BE(4)
    const handleHi = this.header.readUInt32BE(8)
    const handleLo = this.header.readUInt32BE(12)
    const payload = this.sink.replyHeader(error, handleHi, handleLo)
    if (payload < 0) {
      this.failure = `a reply to handle 0x${handleHi.toString(16).padStart(8, '0')}${handleLo.toString(16).padStart(8, '0')}, which no request in flight has`
      return
    }
    this.payloadLeft = payload
    if (payload === 0) this.sink.replyDone()
  }
}
