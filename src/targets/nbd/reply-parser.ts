// Reads the server's replies out of whatever chunks the connection delivers: simple replies
// (16-byte header, then a successful READ's data) and, where negotiated, structured reply chunks
// (20-byte header, then a body by type: OFFSET_DATA's offset and data, OFFSET_HOLE's range,
// ERROR's errno and message). The sink places the data and says whether a chunk fits a request
// in flight; anything else (a bad magic, an unknown handle, a length that does not match its
// type, a chunk outside its request) is a broken stream, after which nothing is parsed.
//
// No allocation: headers and small bodies are gathered in buffers of the parser's own, data is
// passed by range of the chunk it arrived in.
import {
  NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE, kNbdSimpleReplyMagic, kNbdStructuredReplyMagic, kSimpleReplyBytes, kStructuredReplyBytes,
} from './protocol.js'

export interface ReplySink {
  /** A reply or chunk for this handle begins: false when no request in flight has it. */
  begin(handleHi: number, handleLo: number): boolean
  /** Simple reply: the payload bytes that follow (a READ's length when `error` is 0, else 0), or
   *  -1 when such a reply is not acceptable here. */
  simple(error: number): number
  /** OFFSET_DATA: `length` bytes for `offset` of the disk follow; false if they are outside the
   *  request. */
  data(offset: number, length: number): boolean
  /** OFFSET_HOLE: `length` zero bytes at `offset`; false if outside the request. */
  hole(offset: number, length: number): boolean
  /** ERROR / ERROR_OFFSET: the request failed with `error`. */
  error(error: number): void
  /** `length` bytes of the current data, at `start` of `chunk`. */
  payload(chunk: Buffer, start: number, length: number): void
  /** The reply or chunk ended; `done`: it was the last one for its handle. */
  end(done: boolean): void
}

/** An error chunk's body: errno, message length, a message of at most 4096 bytes, an offset. */
const kMaxErrorBodyBytes = 4 + 2 + 4096 + 8
const kOffsetDataPrefixBytes = 8
const kHoleBodyBytes = 12

type State = 'magic' | 'header' | 'body' | 'data'

export class ReplyParser {
  private readonly header = Buffer.alloc(kStructuredReplyBytes)
  private readonly body = Buffer.alloc(kMaxErrorBodyBytes)
  private state: State = 'magic'
  private have = 0
  private need = 4
  private structuredChunk = false
  private chunkFlags = 0
  private chunkType = 0
  private chunkLength = 0
  private dataLeft = 0
  /** NBD_OPT_STRUCTURED_REPLY was negotiated on this connection. */
  structured = false
  /** Why the stream became unreadable; nothing is parsed after it. */
  failure: string | null = null

  constructor(private readonly sink: ReplySink) {}

  /** Start afresh (a new connection). */
  reset(structured: boolean): void {
    this.structured = structured
    this.state = 'magic'
    this.have = 0
    this.need = 4
    this.dataLeft = 0
    this.failure = null
  }

  /** Consume `chunk[start, end)`; false once the stream broke the protocol (see `failure`). */
  feed(chunk: Buffer, start: number, end: number): boolean {
    let at = start
    while (at < end && this.failure === null) {
      if (this.state === 'data') {
        const take = Math.min(this.dataLeft, end - at)
        this.dataLeft -= take
        this.sink.payload(chunk, at, take)
        at += take
        if (this.dataLeft === 0) this.finish()
        continue
      }
      const into = this.state === 'body' ? this.body : this.header
      const take = Math.min(this.need - this.have, end - at)
      chunk.copy(into, this.have, at, at + take)
      this.have += take
      at += take
      if (this.have === this.need) this.advance()
    }
    return this.failure === null
  }

  private fail(why: string): void {
    this.failure = why
  }

  /** The bytes of the current state are all there. */
  private advance(): void {
    if (this.state === 'magic') {
      const magic = this.header.readUInt32BE(0)
      if (magic === kNbdSimpleReplyMagic) {
        this.structuredChunk = false
        this.expect('header', kSimpleReplyBytes, 4)
      } else if (magic === kNbdStructuredReplyMagic && this.structured) {
        this.structuredChunk = true
        this.expect('header', kStructuredReplyBytes, 4)
      } else {
        this.fail(magic === kNbdStructuredReplyMagic ? 'a structured reply, which was not negotiated' : `a reply with bad magic 0x${magic.toString(16)}`)
      }
    } else if (this.state === 'header') {
      this.parseHeader()
    } else {
      this.parseBody()
    }
  }

  private expect(state: State, need: number, have = 0): void {
    this.state = state
    this.need = need
    this.have = have
  }

  private parseHeader(): void {
    const h = this.header
    if (!this.structuredChunk) {
      if (!this.sink.begin(h.readUInt32BE(8), h.readUInt32BE(12))) return this.fail(this.unknownHandle(8))
      const payload = this.sink.simple(h.readUInt32BE(4))
      if (payload < 0) return this.fail('a simple reply with data where a structured one is required')
      this.chunkFlags = NBD_REPLY_FLAG_DONE
      this.startData(payload)
      return
    }
    this.chunkFlags = h.readUInt16BE(4)
    this.chunkType = h.readUInt16BE(6)
    this.chunkLength = h.readUInt32BE(16)
    if (!this.sink.begin(h.readUInt32BE(8), h.readUInt32BE(12))) return this.fail(this.unknownHandle(8))
    const type = this.chunkType
    const length = this.chunkLength
    if (type === NBD_REPLY_TYPE_NONE) {
      if (length !== 0 || (this.chunkFlags & NBD_REPLY_FLAG_DONE) === 0) return this.fail('a NONE chunk with a length or without DONE')
      this.finish()
    } else if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      if (length <= kOffsetDataPrefixBytes) return this.fail(`an OFFSET_DATA chunk of ${length} bytes`)
      this.expect('body', kOffsetDataPrefixBytes)
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (length !== kHoleBodyBytes) return this.fail(`an OFFSET_HOLE chunk of ${length} bytes`)
      this.expect('body', kHoleBodyBytes)
    } else if (type === NBD_REPLY_TYPE_ERROR || type === NBD_REPLY_TYPE_ERROR_OFFSET) {
      if (length < 6 || length > kMaxErrorBodyBytes) return this.fail(`an error chunk of ${length} bytes`)
      this.expect('body', length)
    } else {
      this.fail(`a reply chunk of unknown type ${type}`)
    }
  }

  private parseBody(): void {
    const b = this.body
    const type = this.chunkType
    if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      const length = this.chunkLength - kOffsetDataPrefixBytes
      if (!this.sink.data(readOffset(b, 0), length)) return this.fail(`${length} bytes of data outside the request they answer`)
      this.startData(length)
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const length = b.readUInt32BE(8)
      if (length === 0 || !this.sink.hole(readOffset(b, 0), length)) return this.fail(`a hole of ${length} bytes outside the request it answers`)
      this.finish()
    } else {
      const messageBytes = b.readUInt16BE(4)
      const expected = 6 + messageBytes + (type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0)
      if (expected !== this.chunkLength) return this.fail(`an error chunk whose message does not fit its length`)
      const error = b.readUInt32BE(0)
      if (error === 0) return this.fail('an error chunk without an error')
      this.sink.error(error)
      this.finish()
    }
  }

  private startData(length: number): void {
    if (length === 0) return this.finish()
    this.state = 'data'
    this.dataLeft = length
  }

  private finish(): void {
    this.expect('magic', 4)
    this.sink.end((this.chunkFlags & NBD_REPLY_FLAG_DONE) !== 0)
  }

  private unknownHandle(at: number): string {
    const hex = (word: number): string => word.toString(16).padStart(8, '0')
    return `a reply to handle 0x${hex(this.header.readUInt32BE(at))}${hex(this.header.readUInt32BE(at + 4))}, which no request in flight has`
  }
}

/** A 64-bit offset as a double (exact below 2^53; anything larger fits no request anyway). */
function readOffset(buffer: Buffer, at: number): number {
  return buffer.readUInt32BE(at) * 2 ** 32 + buffer.readUInt32BE(at + 4)
}
