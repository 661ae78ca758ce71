// How one connection of an nbd queue moves bytes: request headers and WRITE payloads out, the
// server's replies in. Two kinds, one file each: ring-transport.ts (plaintext: the queue's own
// io_uring sends and receives, one SENDMSG per loop turn) and stream-transport.ts (TLS: Node's
// TLS socket, which must see the bytes to encrypt them).

/** What the queue keeps for every connection: request headers and the requests' data. */
export interface NbdBuffers {
  /** One 28-byte request header per tag and part (slot), and a view of each. */
  readonly headers: Buffer
  readonly headerViews: readonly Buffer[]
  /** The headers' user address, in 32-bit halves. */
  readonly headersAddressLo: number
  readonly headersAddressHi: number
  /** The requests' data (copy mode: the tag buffers), tag t's at tagOffset[t]. */
  readonly data: Buffer
  readonly tagOffset: Float64Array
  /** The user address of each tag's data, in 32-bit halves. */
  readonly tagAddressLo: Uint32Array
  readonly tagAddressHi: Uint32Array
}

export interface TransportEvents {
  /** Bytes from the server: chunk[start, end), valid only during the call. */
  received(chunk: Buffer, start: number, end: number): void
  /** The connection broke (closed by the server, an error); said at most once. */
  lost(reason: string): void
}

export interface NbdTransport {
  /** Queue request header `slot` and, for a WRITE, `payloadBytes` of tag `tag`'s data from
   *  `payloadOffset` on: they go out in this order with the next flush(). */
  send(slot: number, tag: number, payloadOffset: number, payloadBytes: number): void
  /** Hand what is queued to the kernel (called at the end of each loop turn). */
  flush(): void
  /** A CQE of one of this transport's SQEs (`kind`: the low bits of its cookie). */
  onCompletion(kind: number, res: number): void
  /** The connection is given up: no more events; it closes once nothing of it is in flight. */
  destroy(): void
  /** Everything of the connection is released (closed, no SQE in flight). */
  readonly released: boolean
  /** The queue ends: a polite NBD_CMD_DISC (`disc`), then close. `drained`: the queue's SQEs
   *  all completed, so memory the kernel wrote into may be freed. */
  close(disc: Buffer, drained: boolean): void
}
