// Connecting to an NBD server and negotiating one export: the fixed-newstyle handshake, with
// NBD_OPT_STARTTLS first when TLS is asked, NBD_OPT_STRUCTURED_REPLY where offered, then
// NBD_OPT_GO asking for the block size constraints (NBD_OPT_EXPORT_NAME from a server that does
// not know GO). Used at `add` (to
// learn the device's geometry) and by every queue's connection, at start and on each reconnect.
//
// Everything the server says is checked before it is believed: magics, reply lengths (capped),
// the export's size and block sizes. A server that says too little, too much or too late ends
// the attempt with a message that names what was wrong; nothing here throws anything else.
import net from 'node:net'
import tls from 'node:tls'

import { UblkdError } from '../../common/errors.js'
import {
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK,
  NBD_REP_ERR_UNSUP, NBD_REP_INFO, kDefaultMaxBlockBytes, kDefaultMinBlockBytes, kDefaultPreferredBlockBytes,
  kNbdMagic, kNbdOldstyleMagic, kNbdOptMagic, kNbdOptReplyMagic, optionErrorNames,
} from './protocol.js'
import { describeAddress, type NbdUri } from './uri.js'

/** What the server says about the export. */
export interface NbdExport {
  sizeBytes: number
  /** NBD_FLAG_* transmission flags. */
  flags: number
  minBlockBytes: number
  preferredBlockBytes: number
  maxBlockBytes: number
}

/** PEM contents (read by the main thread, so workers need no file access). */
export interface NbdTlsFiles {
  ca?: string
  cert?: string
  key?: string
}

export interface NbdDialOptions {
  uri: NbdUri
  tlsFiles: NbdTlsFiles
  /** The whole attempt (connect, TLS, negotiation) must end within this. */
  timeoutMs: number
}

export interface NbdSession {
  socket: net.Socket
  export: NbdExport
  /** NBD_OPT_STRUCTURED_REPLY was accepted: READ data comes in chunks. */
  structuredReplies: boolean
}

/** A reply longer than this is not believed (the longest legitimate one is an error message). */
const kMaxOptionReplyBytes = 64 * 1024
/** NBD_OPT_EXPORT_NAME's reply is padded with 124 zero bytes unless both sides said NO_ZEROES. */
const kExportNamePadBytes = 124
/** Sizes beyond this are not exact as doubles (and no disk is that big). */
const kMaxExportBytes = Number.MAX_SAFE_INTEGER

/** The server could not be reached or did not give us the export. */
export class NbdError extends UblkdError {
  constructor(message: string) {
    super('UBLKD_ERR_BACKEND', message)
    this.name = 'NbdError'
  }
}

/** Bytes as they arrive, handed out by exact counts. */
class ByteQueue {
  private chunks: Buffer[] = []
  private queued = 0
  private waiter: { bytes: number; resolve: (data: Buffer) => void } | null = null
  private failure: Error | null = null

  push(chunk: Buffer): void {
    this.chunks.push(Buffer.from(chunk))
    this.queued += chunk.length
    this.wake()
  }

  fail(error: Error): void {
    this.failure ??= error
    this.wake()
  }

  read(bytes: number, fail: (error: Error) => void): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve }
      this.rejectWaiter = (error) => { reject(error); fail(error) }
      this.wake()
    })
  }

  /** What arrived beyond the last read (a server talking out of turn). */
  get leftover(): number {
    return this.queued
  }

  private rejectWaiter: (error: Error) => void = () => {}

  private wake(): void {
    const waiter = this.waiter
    if (!waiter) return
    if (this.queued >= waiter.bytes) {
      this.waiter = null
      const all = Buffer.concat(this.chunks)
      this.chunks = [all.subarray(waiter.bytes)]
      this.queued -= waiter.bytes
      waiter.resolve(all.subarray(0, waiter.bytes))
    } else if (this.failure) {
      this.waiter = null
      this.rejectWaiter(this.failure)
    }
  }
}

function connectError(uri: NbdUri, error: NodeJS.ErrnoException): NbdError {
  const where = describeAddress(uri.address)
  const reasons: Record<string, string> = {
    ECONNREFUSED: 'connection refused (no server listening)',
    ENOENT: 'no such socket',
    EHOSTUNREACH: 'host unreachable',
    ENETUNREACH: 'network unreachable',
    ENOTFOUND: 'unknown host',
    EAI_AGAIN: 'host name lookup failed',
    ECONNRESET: 'connection reset by the server',
    EPIPE: 'the server closed the connection',
  }
  const reason = (error.code && reasons[error.code]) ?? error.message
  return new NbdError(`nbd server ${where}: ${reason}`)
}

/** Connect, negotiate and return the socket ready for transmission. */
export async function dialNbd(options: NbdDialOptions): Promise<NbdSession> {
  const { uri } = options
  const where = describeAddress(uri.address)
  const raw = uri.address.kind === 'unix'
    ? net.connect({ path: uri.address.path })
    : net.connect({ host: uri.address.host, port: uri.address.port })
  raw.setNoDelay?.(true)
  let socket: net.Socket = raw
  const bytes = new ByteQueue()
  let failed: NbdError | null = null
  const fail = (error: Error): void => {
    failed ??= error instanceof NbdError ? error : connectError(uri, error as NodeJS.ErrnoException)
    socket.destroy()
    raw.destroy()
  }
  const onData = (chunk: Buffer): void => bytes.push(chunk)
  const onError = (error: Error): void => bytes.fail(connectError(uri, error as NodeJS.ErrnoException))
  const onClose = (): void => bytes.fail(new NbdError(`nbd server ${where}: the server closed the connection during the handshake`))
  const listen = (stream: net.Socket): void => {
    stream.on('data', onData)
    stream.on('error', onError)
    stream.on('close', onClose)
  }
  const unlisten = (stream: net.Socket): void => {
    stream.off('data', onData)
    stream.off('error', onError)
    stream.off('close', onClose)
  }
  listen(raw)
  // Destroying the sockets also ends a TLS handshake in progress, where no read is pending.
  const timer = setTimeout(() => {
    const late = new NbdError(`nbd server ${where}: the handshake did not finish within ${options.timeoutMs / 1000} s`)
    fail(late)
    bytes.fail(late)
  }, options.timeoutMs)
  const read = (count: number): Promise<Buffer> => bytes.read(count, fail)
  const send = (data: Buffer): void => {
    socket.write(data)
  }
  try {
    const hello = await read(16)
    if (hello.readBigUInt64BE(0) !== kNbdMagic) throw new NbdError(`${where} is not an NBD server (no NBDMAGIC)`)
    const style = hello.readBigUInt64BE(8)
    if (style === kNbdOldstyleMagic) throw new NbdError(`nbd server ${where} speaks only the oldstyle protocol, which has no export names; ublkd needs fixed newstyle`)
    if (style !== kNbdOptMagic) throw new NbdError(`nbd server ${where}: unknown handshake (magic 0x${style.toString(16)})`)
    const serverFlags = (await read(2)).readUInt16BE(0)
    if ((serverFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new NbdError(`nbd server ${where} does not speak fixed newstyle`)
    const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0
    const clientFlags = Buffer.alloc(4)
    clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0))
    send(clientFlags)

    const option = (code: number, data: Buffer = Buffer.alloc(0)): void => {
      const header = Buffer.alloc(16)
      header.writeBigUInt64BE(kNbdOptMagic, 0)
      header.writeUInt32BE(code, 8)
      header.writeUInt32BE(data.length, 12)
      send(Buffer.concat([header, data]))
    }
    const reply = async (code: number): Promise<{ type: number; data: Buffer }> => {
      const header = await read(20)
      if (header.readBigUInt64BE(0) !== kNbdOptReplyMagic) throw new NbdError(`nbd server ${where}: bad option reply magic`)
      const replyOption = header.readUInt32BE(8)
      const type = header.readUInt32BE(12)
      const length = header.readUInt32BE(16)
      if (replyOption !== code) throw new NbdError(`nbd server ${where}: reply to option ${replyOption} when option ${code} was asked`)
      if (length > kMaxOptionReplyBytes) throw new NbdError(`nbd server ${where}: option reply of ${length} bytes (more than ${kMaxOptionReplyBytes})`)
      return { type, data: length === 0 ? Buffer.alloc(0) : await read(length) }
    }
    const refusal = (what: string, type: number, data: Buffer): NbdError => {
      const meaning = optionErrorNames.get(type) ?? `error reply 0x${type.toString(16)}`
      const text = data.length > 0 ? `: ${data.toString('utf8').replace(/[^\x20-\x7e]/g, '?').slice(0, 200)}` : ''
      return new NbdError(`nbd server ${where}: ${what}: ${meaning}${text}`)
    }

    if (uri.tls) {
      option(NBD_OPT_STARTTLS)
      const started = await reply(NBD_OPT_STARTTLS)
      if (started.type !== NBD_REP_ACK) throw refusal('STARTTLS refused (the server does not offer TLS; nbds:// never falls back to plaintext)', started.type, started.data)
      if (bytes.leftover > 0) throw new NbdError(`nbd server ${where}: sent data after accepting STARTTLS`)
      unlisten(raw)
      socket = await startTls(raw, uri, options.tlsFiles, where)
      listen(socket)
    }

    // Structured replies where the server offers them: a READ can then fail part way, and
    // sparse ranges come as holes rather than zeros on the wire.
    option(NBD_OPT_STRUCTURED_REPLY)
    const structured = await reply(NBD_OPT_STRUCTURED_REPLY)
    if (structured.type !== NBD_REP_ACK && structured.type < 2 ** 31) {
      throw new NbdError(`nbd server ${where}: reply type ${structured.type} to NBD_OPT_STRUCTURED_REPLY`)
    }
    const exportInfo = await negotiateExport(uri, where, option, reply, refusal, read, noZeroes)
    if (bytes.leftover > 0) throw new NbdError(`nbd server ${where}: sent ${bytes.leftover} bytes nobody asked for after the handshake`)
    clearTimeout(timer)
    // Paused until the connection listens: a flowing stream without a 'data' listener drops data.
    socket.pause()
    unlisten(socket)
    return { socket, export: exportInfo, structuredReplies: structured.type === NBD_REP_ACK }
  } catch (error) {
    clearTimeout(timer)
    const reason = failed ?? (error instanceof NbdError ? error : connectError(uri, error as NodeJS.ErrnoException))
    socket.destroy()
    raw.destroy()
    throw reason
  }
}

function startTls(raw: net.Socket, uri: NbdUri, files: NbdTlsFiles, where: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({
      socket: raw,
      ...(files.ca === undefined ? {} : { ca: files.ca }),
      ...(files.cert === undefined ? {} : { cert: files.cert }),
      ...(files.key === undefined ? {} : { key: files.key }),
      // A TCP server's certificate must name the host of the URI; a unix socket has no host
      // name, so only its chain is checked.
      ...(uri.address.kind === 'tcp'
        ? { servername: net.isIP(uri.address.host) === 0 ? uri.address.host : undefined, host: uri.address.host }
        : { checkServerIdentity: () => undefined }),
      rejectUnauthorized: true,
    })
    const failed = (error: Error): void => {
      secure.destroy()
      reject(new NbdError(`nbd server ${where}: TLS handshake failed: ${error.message}`))
    }
    const closed = (): void => failed(new Error('the connection closed'))
    secure.once('error', failed)
    secure.once('close', closed)
    secure.once('secureConnect', () => {
      secure.off('error', failed)
      secure.off('close', closed)
      resolve(secure)
    })
  })
}

type SendOption = (code: number, data?: Buffer) => void
type ReadReply = (code: number) => Promise<{ type: number; data: Buffer }>
type Refusal = (what: string, type: number, data: Buffer) => NbdError

async function negotiateExport(uri: NbdUri, where: string, option: SendOption, reply: ReadReply, refusal: Refusal,
  read: (count: number) => Promise<Buffer>, noZeroes: boolean): Promise<NbdExport> {
  const name = Buffer.from(uri.exportName, 'utf8')
  const go = Buffer.alloc(4 + name.length + 2 + 2)
  go.writeUInt32BE(name.length, 0)
  name.copy(go, 4)
  go.writeUInt16BE(1, 4 + name.length)
  go.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 6 + name.length)
  option(NBD_OPT_GO, go)
  let sizeBytes: number | null = null
  let flags = 0
  let blocks: [number, number, number] | null = null
  const what = `export '${uri.exportName}'`
  for (;;) {
    const { type, data } = await reply(NBD_OPT_GO)
    if (type === NBD_REP_ACK) break
    if (type === NBD_REP_ERR_UNSUP) return exportByName(uri, where, option, read, noZeroes)
    if (type !== NBD_REP_INFO) throw refusal(what, type, data)
    if (data.length < 2) throw new NbdError(`nbd server ${where}: an information reply without its type`)
    const info = data.readUInt16BE(0)
    if (info === NBD_INFO_EXPORT) {
      if (data.length !== 12) throw new NbdError(`nbd server ${where}: NBD_INFO_EXPORT of ${data.length} bytes (12 expected)`)
      sizeBytes = checkedSize(data.readBigUInt64BE(2), where)
      flags = data.readUInt16BE(10)
    } else if (info === NBD_INFO_BLOCK_SIZE) {
      if (data.length !== 14) throw new NbdError(`nbd server ${where}: NBD_INFO_BLOCK_SIZE of ${data.length} bytes (14 expected)`)
      blocks = [data.readUInt32BE(2), data.readUInt32BE(6), data.readUInt32BE(10)]
    }
    // Other information (names, descriptions) is not needed.
  }
  if (sizeBytes === null) throw new NbdError(`nbd server ${where}: NBD_OPT_GO ended without the export's size`)
  return exportOf(sizeBytes, flags, blocks, where)
}

/** Servers older than NBD_OPT_GO: the export is entered at once, with no block size information. */
async function exportByName(uri: NbdUri, where: string, option: SendOption, read: (count: number) => Promise<Buffer>,
  noZeroes: boolean): Promise<NbdExport> {
  option(NBD_OPT_EXPORT_NAME, Buffer.from(uri.exportName, 'utf8'))
  // A server without the export closes the connection here: the read fails with "closed".
  const answer = await read(10 + (noZeroes ? 0 : kExportNamePadBytes))
  return exportOf(checkedSize(answer.readBigUInt64BE(0), where), answer.readUInt16BE(8), null, where)
}

function checkedSize(size: bigint, where: string): number {
  if (size > BigInt(kMaxExportBytes)) throw new NbdError(`nbd server ${where}: export size ${size} is beyond what ublkd serves`)
  return Number(size)
}

function isPowerOfTwo(value: number): boolean {
  return value > 0 && (value & (value - 1)) === 0
}

function exportOf(sizeBytes: number, flags: number, blocks: [number, number, number] | null, where: string): NbdExport {
  if ((flags & NBD_FLAG_HAS_FLAGS) === 0) flags = 0
  const [minBlockBytes, preferredBlockBytes, maxBlockBytes] = blocks ?? [kDefaultMinBlockBytes, kDefaultPreferredBlockBytes, kDefaultMaxBlockBytes]
  // The protocol's own rules for these three (doc/proto.md, "Block size constraints").
  if (!isPowerOfTwo(minBlockBytes) || minBlockBytes > 65536 || !isPowerOfTwo(preferredBlockBytes) ||
      preferredBlockBytes < minBlockBytes || maxBlockBytes < preferredBlockBytes || maxBlockBytes % minBlockBytes !== 0) {
    throw new NbdError(`nbd server ${where}: inconsistent block sizes (minimum ${minBlockBytes}, preferred ${preferredBlockBytes}, maximum ${maxBlockBytes})`)
  }
  return { sizeBytes, flags, minBlockBytes, preferredBlockBytes, maxBlockBytes }
}
