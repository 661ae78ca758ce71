// The NBD protocol's numbers (the NBD project's doc/proto.md), as this client uses them: the
// fixed-newstyle handshake with NBD_OPT_GO (or NBD_OPT_EXPORT_NAME from servers that lack it),
// NBD_OPT_STARTTLS and NBD_OPT_STRUCTURED_REPLY, and transmission with simple or structured
// replies.

/** "NBDMAGIC": every handshake starts with it. */
export const kNbdMagic = 0x4e42444d41474943n
/** "IHAVEOPT": newstyle negotiation follows. */
export const kNbdOptMagic = 0x49484156454f5054n
/** An oldstyle server sends this instead of IHAVEOPT. */
export const kNbdOldstyleMagic = 0x00420281861253n
/** Prefix of every option reply. */
export const kNbdOptReplyMagic = 0x3e889045565a9n
export const kNbdRequestMagic = 0x25609513
export const kNbdSimpleReplyMagic = 0x67446698
export const kNbdStructuredReplyMagic = 0x668e33ef

// Handshake flags (server) and client flags.
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_NO_ZEROES = 1 << 1
export const NBD_FLAG_C_FIXED_NEWSTYLE = NBD_FLAG_FIXED_NEWSTYLE
export const NBD_FLAG_C_NO_ZEROES = NBD_FLAG_NO_ZEROES

// Options.
export const NBD_OPT_EXPORT_NAME = 1
export const NBD_OPT_STARTTLS = 5
export const NBD_OPT_GO = 7
export const NBD_OPT_STRUCTURED_REPLY = 8

// Option reply types.
export const NBD_REP_ACK = 1
export const NBD_REP_INFO = 3
const kRepError = 2 ** 31
export const NBD_REP_ERR_UNSUP = kRepError + 1
export const NBD_REP_ERR_POLICY = kRepError + 2
export const NBD_REP_ERR_INVALID = kRepError + 3
export const NBD_REP_ERR_PLATFORM = kRepError + 4
export const NBD_REP_ERR_TLS_REQD = kRepError + 5
export const NBD_REP_ERR_UNKNOWN = kRepError + 6
export const NBD_REP_ERR_SHUTDOWN = kRepError + 7
export const NBD_REP_ERR_BLOCK_SIZE_REQD = kRepError + 8
export const NBD_REP_ERR_TOO_BIG = kRepError + 9

/** What each error reply means, for messages. */
export const optionErrorNames: ReadonlyMap<number, string> = new Map([
  [NBD_REP_ERR_UNSUP, 'the server does not support this option'],
  [NBD_REP_ERR_POLICY, 'refused by the server\'s policy'],
  [NBD_REP_ERR_INVALID, 'the server found the request invalid'],
  [NBD_REP_ERR_PLATFORM, 'not supported on the server\'s platform'],
  [NBD_REP_ERR_TLS_REQD, 'the server requires TLS (use nbds://)'],
  [NBD_REP_ERR_UNKNOWN, 'no such export'],
  [NBD_REP_ERR_SHUTDOWN, 'the server is shutting down'],
  [NBD_REP_ERR_BLOCK_SIZE_REQD, 'the server requires block size negotiation'],
  [NBD_REP_ERR_TOO_BIG, 'the request is too big for the server'],
])

// NBD_OPT_GO information types.
export const NBD_INFO_EXPORT = 0
export const NBD_INFO_BLOCK_SIZE = 3

// Transmission flags (per export).
export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_ROTATIONAL = 1 << 4
export const NBD_FLAG_SEND_TRIM = 1 << 5
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8

// Commands and their flags.
export const NBD_CMD_READ = 0
export const NBD_CMD_WRITE = 1
export const NBD_CMD_DISC = 2
export const NBD_CMD_FLUSH = 3
export const NBD_CMD_TRIM = 4
export const NBD_CMD_WRITE_ZEROES = 6
export const NBD_CMD_FLAG_FUA = 1 << 0
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1

// Structured reply chunks.
export const NBD_REPLY_FLAG_DONE = 1 << 0
export const NBD_REPLY_TYPE_NONE = 0
export const NBD_REPLY_TYPE_OFFSET_DATA = 1
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

export const kRequestHeaderBytes = 28
export const kSimpleReplyBytes = 16
export const kStructuredReplyBytes = 20
/** The protocol's own floor for a block size, and what a server that says nothing allows. */
export const kDefaultMinBlockBytes = 1
export const kDefaultPreferredBlockBytes = 4096
/** Without NBD_INFO_BLOCK_SIZE a client should send at most 32 MiB per request. */
export const kDefaultMaxBlockBytes = 32 * 2 ** 20

/** Errors a server may send, by their (Linux) errno; anything else is EIO. */
const kKnownErrnos = new Set([1, 5, 12, 22, 28, 75, 95, 108])
const kEio = 5

/** The errno a client sees for a server's error value. */
export function errnoOfServerError(error: number): number {
  return kKnownErrnos.has(error) ? error : kEio
}

/** Write a request header at `offset` of `into` (no allocation: the caller owns the bytes). */
export function encodeRequest(into: Buffer, offset: number, type: number, flags: number, handleHi: number, handleLo: number,
  from: number, length: number): void {
  into.writeUInt32BE(kNbdRequestMagic, offset)
  into.writeUInt16BE(flags, offset + 4)
  into.writeUInt16BE(type, offset + 6)
  into.writeUInt32BE(handleHi, offset + 8)
  into.writeUInt32BE(handleLo, offset + 12)
  // Offsets stay below 2^53: split in exact 32-bit halves.
  into.writeUInt32BE(Math.floor(from / 2 ** 32), offset + 16)
  into.writeUInt32BE(from % 2 ** 32, offset + 20)
  into.writeUInt32BE(length, offset + 24)
}

/** NBD_CMD_DISC: the client's goodbye, after which it sends nothing more. */
export function disconnectRequest(): Buffer {
  const header = Buffer.alloc(kRequestHeaderBytes)
  encodeRequest(header, 0, NBD_CMD_DISC, 0, 0, 0, 0, 0)
  return header
}
