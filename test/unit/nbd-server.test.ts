// The nbd client (handshake and queue) against a scripted NBD server written here: fixed
// newstyle with NBD_OPT_GO, a RAM disk served with simple replies (or, with `structured`, READs
// as structured reply chunks), and knobs to misbehave.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

import t, { type Test } from 'tap'

import {
  UBLK_IO_F_FUA, UBLK_IO_F_NOUNMAP, UBLK_IO_OP_DISCARD, UBLK_IO_OP_FLUSH, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE,
  UBLK_IO_OP_WRITE_ZEROES,
} from '../../src/abi/ublk-cmd.js'
import { createLogger } from '../../src/common/log.js'
import { dialNbd, NbdError, type NbdExport, type NbdSession } from '../../src/targets/nbd/handshake.js'
import {
  NBD_CMD_DISC, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES, NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_OPT_GO, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK, NBD_REP_ERR_POLICY, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO,
  NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE, kDefaultMaxBlockBytes, kNbdMagic, kNbdOldstyleMagic, kNbdOptMagic, kNbdOptReplyMagic,
  kNbdRequestMagic, kNbdSimpleReplyMagic, kNbdStructuredReplyMagic,
} from '../../src/targets/nbd/protocol.js'
import { NbdQueue, type NbdSpec } from '../../src/targets/nbd/queue.js'
import { nbdTarget } from '../../src/targets/nbd.js'
import { parseNbdUri } from '../../src/targets/nbd/uri.js'
import { kIoPending, type QueueContext } from '../../src/targets/target.js'
import { until } from '../lib/until.js'

const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason)
}
process.on('unhandledRejection', onUnhandled)

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-nbd-'))
t.teardown(() => {
  process.off('unhandledRejection', onUnhandled)
  fs.rmSync(dir, { recursive: true, force: true })
})
let sockets = 0

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** `promise`, or a rejection naming `what` after `ms`. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

// The scripted server.

class Closed extends Error {}

/** The server's side of one connection: bytes by exact counts. */
class Reader {
  private buffered = Buffer.alloc(0)
  private waiter: (() => void) | null = null
  private closed = false

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk])
      this.wake()
    })
    socket.on('close', () => {
      this.closed = true
      this.wake()
    })
    socket.on('error', () => {})
  }

  async read(count: number): Promise<Buffer> {
    while (this.buffered.length < count) {
      if (this.closed) throw new Closed('closed')
      await new Promise<void>((resolve) => {
        this.waiter = resolve
      })
    }
    const bytes = Buffer.from(this.buffered.subarray(0, count))
    this.buffered = this.buffered.subarray(count)
    return bytes
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = null
    waiter?.()
  }
}

/** How the handshake goes. */
type Handshake =
  | 'good' | 'bad-magic' | 'oldstyle' | 'close-mid' | 'silent' | 'huge-reply' | 'tls-reqd' | 'starttls-then-silent'
  | 'no-block-size' | 'ack-then-close'

interface NbdRequest {
  /** The connection it came on, from 1. */
  conn: number
  type: number
  flags: number
  handle: Buffer
  offset: number
  length: number
  payload: Buffer
}

/** How a server that agreed to structured replies answers READs: the data in 3 OFFSET_DATA
 *  chunks sent backwards, or also the zero sectors as OFFSET_HOLE chunks. */
type StructuredMode = 'data' | 'holes'

class Conn {
  /** NBD_OPT_STRUCTURED_REPLY was agreed on this connection. */
  structured = false

  constructor(readonly index: number, readonly socket: net.Socket, private readonly server: ScriptedServer) {}

  /** One structured reply chunk: header (its length that of `body` unless said), then `body`. */
  chunk(request: NbdRequest, type: number, flags: number, body: Buffer = Buffer.alloc(0), options: { handle?: Buffer; length?: number } = {}): void {
    const header = Buffer.alloc(20)
    header.writeUInt32BE(kNbdStructuredReplyMagic, 0)
    header.writeUInt16BE(flags, 4)
    header.writeUInt16BE(type, 6)
    ;(options.handle ?? request.handle).copy(header, 8)
    header.writeUInt32BE(options.length ?? body.length, 16)
    this.socket.write(Buffer.concat([header, body]))
    this.server.chunks.push(type)
  }

  /** OFFSET_DATA: the disk's bytes at `[offset, offset + length)` (or `data`). */
  dataChunk(request: NbdRequest, offset: number, length: number, done: boolean, options: { handle?: Buffer; data?: Buffer } = {}): void {
    const body = Buffer.alloc(8 + length)
    body.writeBigUInt64BE(BigInt(offset), 0)
    ;(options.data ?? this.server.disk.subarray(offset, offset + length)).copy(body, 8)
    this.chunk(request, NBD_REPLY_TYPE_OFFSET_DATA, done ? NBD_REPLY_FLAG_DONE : 0, body, options)
  }

  holeChunk(request: NbdRequest, offset: number, length: number, done: boolean): void {
    const body = Buffer.alloc(12)
    body.writeBigUInt64BE(BigInt(offset), 0)
    body.writeUInt32BE(length, 8)
    this.chunk(request, NBD_REPLY_TYPE_OFFSET_HOLE, done ? NBD_REPLY_FLAG_DONE : 0, body)
  }

  /** ERROR (or ERROR_OFFSET with `offset`); `messageBytes` may lie about the message's length. */
  errorChunk(request: NbdRequest, error: number, message: string, done: boolean, options: { offset?: number; messageBytes?: number } = {}): void {
    const text = Buffer.from(message, 'utf8')
    const body = Buffer.alloc(6 + text.length + (options.offset === undefined ? 0 : 8))
    body.writeUInt32BE(error, 0)
    body.writeUInt16BE(options.messageBytes ?? text.length, 4)
    text.copy(body, 6)
    if (options.offset !== undefined) body.writeBigUInt64BE(BigInt(options.offset), 6 + text.length)
    this.chunk(request, options.offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET, done ? NBD_REPLY_FLAG_DONE : 0, body)
  }

  noneChunk(request: NbdRequest, flags = NBD_REPLY_FLAG_DONE): void {
    this.chunk(request, NBD_REPLY_TYPE_NONE, flags)
  }

  /** A READ answered in chunks, sent last piece first; the last chunk sent (the first piece) says DONE. */
  readChunks(request: NbdRequest, mode: StructuredMode): void {
    const { disk } = this.server
    const pieces: { offset: number; length: number; hole: boolean }[] = []
    if (mode === 'data') {
      const third = Math.max(Math.floor(request.length / 3), 1)
      for (let at = 0; at < request.length; at += third) {
        pieces.push({ offset: request.offset + at, length: Math.min(third, request.length - at), hole: false })
      }
    } else {
      // Runs of all-zero sectors are holes, the rest data.
      for (let at = 0; at < request.length; at += kSector) {
        const from = request.offset + at
        const length = Math.min(kSector, request.length - at)
        const hole = disk.subarray(from, from + length).every((b) => b === 0)
        const last = pieces.at(-1)
        if (last && last.hole === hole) last.length += length
        else pieces.push({ offset: from, length, hole })
      }
    }
    for (let i = pieces.length - 1; i >= 0; i--) {
      const { offset, length, hole } = pieces[i]!
      if (hole) this.holeChunk(request, offset, length, i === 0)
      else this.dataChunk(request, offset, length, i === 0)
    }
  }

  /** A simple reply; a READ's data follows a successful one. */
  reply(request: NbdRequest, error = 0, options: { handle?: Buffer; magic?: number; payload?: Buffer } = {}): void {
    const header = Buffer.alloc(16)
    header.writeUInt32BE(options.magic ?? kNbdSimpleReplyMagic, 0)
    header.writeUInt32BE(error, 4)
    ;(options.handle ?? request.handle).copy(header, 8)
    this.socket.write(header)
    if (options.payload) this.socket.write(options.payload)
  }

  /** The data a READ asks for. */
  readData(request: NbdRequest): Buffer {
    return Buffer.from(this.server.disk.subarray(request.offset, request.offset + request.length))
  }

  /** Do what the request asks, and answer. */
  serve(request: NbdRequest): void {
    const { disk } = this.server
    if (request.offset + request.length > disk.length) {
      this.reply(request, 22)
      return
    }
    const mode = this.structured ? this.server.structured : null
    switch (request.type) {
      case NBD_CMD_READ:
        if (mode) this.readChunks(request, mode)
        else this.reply(request, 0, { payload: this.readData(request) })
        return
      case NBD_CMD_WRITE:
        request.payload.copy(disk, request.offset)
        break
      case NBD_CMD_TRIM:
      case NBD_CMD_WRITE_ZEROES:
        disk.fill(0, request.offset, request.offset + request.length)
        break
      case NBD_CMD_FLUSH:
        break
      default:
        this.reply(request, 22)
        return
    }
    // With structured replies, a WRITE is answered with a NONE chunk; the others with simple
    // replies (still legal).
    if (mode && request.type === NBD_CMD_WRITE) this.noneChunk(request)
    else this.reply(request)
  }
}

interface ServerOptions {
  handshake?: Handshake
  exportName?: string
  sizeBytes?: number
  exportFlags?: number
  blocks?: [number, number, number]
  /** Agree to NBD_OPT_STRUCTURED_REPLY and answer READs so (default: refuse it). */
  structured?: StructuredMode
  onRequest?: (request: NbdRequest, conn: Conn) => void
}

const kAllFlags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
  NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN

class ScriptedServer {
  readonly path = path.join(dir, `s${sockets++}.sock`)
  readonly disk: Buffer
  readonly requests: NbdRequest[] = []
  readonly clientFlags: number[] = []
  readonly goRequests: { name: string; infos: number[] }[] = []
  /** Every option asked, in order; the types of structured chunks sent. */
  readonly options: number[] = []
  readonly chunks: number[] = []
  /** Connections accepted, and those that reached transmission. */
  connections = 0
  transmitting = 0
  /** NBD_CMD_DISC requests received. */
  disconnects = 0
  handshake: Handshake
  exportName: string
  exportFlags: number
  blocks: [number, number, number]
  structured: StructuredMode | null
  onRequest: (request: NbdRequest, conn: Conn) => void
  private readonly server = net.createServer((socket) => this.accept(socket))
  private readonly live = new Set<net.Socket>()

  constructor(options: ServerOptions = {}) {
    this.handshake = options.handshake ?? 'good'
    this.exportName = options.exportName ?? ''
    this.exportFlags = options.exportFlags ?? kAllFlags
    this.blocks = options.blocks ?? [512, 4096, 4096]
    this.structured = options.structured ?? null
    this.onRequest = options.onRequest ?? ((request, conn) => conn.serve(request))
    this.disk = Buffer.alloc(options.sizeBytes ?? 1 << 20)
    for (let i = 0; i < this.disk.length; i++) this.disk[i] = (i * 31 + (i >>> 12)) & 0xff
  }

  get uri(): string {
    return `nbd+unix:///${encodeURIComponent(this.exportName)}?socket=${this.path}`
  }

  listen(): Promise<void> {
    fs.rmSync(this.path, { force: true })
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.path, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
  }

  /** Stop listening and cut every connection. */
  stop(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) {
        resolve()
        return
      }
      this.server.close(() => resolve())
      for (const socket of this.live) socket.destroy()
    })
  }

  /** Requests of one connection. */
  on(conn: number): NbdRequest[] {
    return this.requests.filter((request) => request.conn === conn)
  }

  private accept(socket: net.Socket): void {
    this.live.add(socket)
    socket.on('close', () => this.live.delete(socket))
    const conn = new Conn(++this.connections, socket, this)
    const reader = new Reader(socket)
    this.converse(conn, reader).catch(() => socket.destroy())
  }

  private optionReply(socket: net.Socket, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(20)
    header.writeBigUInt64BE(kNbdOptReplyMagic, 0)
    header.writeUInt32BE(option, 8)
    header.writeUInt32BE(type, 12)
    header.writeUInt32BE(data.length, 16)
    socket.write(Buffer.concat([header, data]))
  }

  private async converse(conn: Conn, reader: Reader): Promise<void> {
    const socket = conn.socket
    const mode = this.handshake
    if (mode === 'silent') return
    const hello = Buffer.alloc(18)
    hello.writeBigUInt64BE(mode === 'bad-magic' ? 0x4e42444d41474958n : kNbdMagic, 0)
    if (mode === 'oldstyle') {
      // The whole oldstyle greeting: magic, size, flags, 124 zero bytes.
      const old = Buffer.alloc(152)
      hello.copy(old, 0, 0, 8)
      old.writeBigUInt64BE(kNbdOldstyleMagic, 8)
      old.writeBigUInt64BE(BigInt(this.disk.length), 16)
      socket.write(old)
      return
    }
    hello.writeBigUInt64BE(kNbdOptMagic, 8)
    hello.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16)
    socket.write(hello)
    this.clientFlags.push((await reader.read(4)).readUInt32BE(0))
    for (;;) {
      const header = await reader.read(16)
      if (header.readBigUInt64BE(0) !== kNbdOptMagic) throw new Error('bad option magic')
      const option = header.readUInt32BE(8)
      const data = await reader.read(header.readUInt32BE(12))
      this.options.push(option)
      if (option === NBD_OPT_STRUCTURED_REPLY && this.structured !== null) {
        this.optionReply(socket, option, NBD_REP_ACK)
        conn.structured = true
        continue
      }
      if (option === NBD_OPT_STARTTLS) {
        if (mode === 'starttls-then-silent') {
          this.optionReply(socket, option, NBD_REP_ACK)
          return
        }
        this.optionReply(socket, option, NBD_REP_ERR_POLICY)
        continue
      }
      if (option !== NBD_OPT_GO) {
        this.optionReply(socket, option, NBD_REP_ERR_UNSUP)
        continue
      }
      const nameBytes = data.readUInt32BE(0)
      const name = data.subarray(4, 4 + nameBytes).toString('utf8')
      const infos: number[] = []
      for (let i = 0; i < data.readUInt16BE(4 + nameBytes); i++) infos.push(data.readUInt16BE(6 + nameBytes + 2 * i))
      this.goRequests.push({ name, infos })
      if (mode === 'close-mid') {
        // Half an option reply header, then goodbye.
        const partial = Buffer.alloc(10)
        partial.writeBigUInt64BE(kNbdOptReplyMagic, 0)
        socket.end(partial)
        return
      }
      if (mode === 'tls-reqd') {
        this.optionReply(socket, option, NBD_REP_ERR_TLS_REQD, Buffer.from('TLS is required here'))
        continue
      }
      if (name !== this.exportName) {
        this.optionReply(socket, option, NBD_REP_ERR_UNKNOWN, Buffer.from(`no export named ${name}`))
        continue
      }
      if (mode === 'huge-reply') {
        const huge = Buffer.alloc(20)
        huge.writeBigUInt64BE(kNbdOptReplyMagic, 0)
        huge.writeUInt32BE(option, 8)
        huge.writeUInt32BE(NBD_REP_INFO, 12)
        huge.writeUInt32BE(65537, 16)
        socket.write(huge)
        socket.write(Buffer.alloc(1024))
        return
      }
      const info = Buffer.alloc(12)
      info.writeUInt16BE(NBD_INFO_EXPORT, 0)
      info.writeBigUInt64BE(BigInt(this.disk.length), 2)
      info.writeUInt16BE(this.exportFlags, 10)
      this.optionReply(socket, option, NBD_REP_INFO, info)
      if (mode !== 'no-block-size') {
        const blocks = Buffer.alloc(14)
        blocks.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0)
        this.blocks.forEach((value, i) => blocks.writeUInt32BE(value, 2 + 4 * i))
        this.optionReply(socket, option, NBD_REP_INFO, blocks)
      }
      this.optionReply(socket, option, NBD_REP_ACK)
      if (mode === 'ack-then-close') {
        socket.destroy()
        return
      }
      break
    }
    this.transmitting++
    for (;;) {
      const header = await reader.read(28)
      if (header.readUInt32BE(0) !== kNbdRequestMagic) throw new Error('bad request magic')
      const type = header.readUInt16BE(6)
      const length = header.readUInt32BE(24)
      const request: NbdRequest = {
        conn: conn.index,
        flags: header.readUInt16BE(4),
        type,
        handle: Buffer.from(header.subarray(8, 16)),
        offset: Number(header.readBigUInt64BE(16)),
        length,
        payload: type === NBD_CMD_WRITE ? await reader.read(length) : Buffer.alloc(0),
      }
      if (type === NBD_CMD_DISC) {
        this.disconnects++
        socket.end()
        return
      }
      this.requests.push(request)
      this.onRequest(request, conn)
    }
  }
}

async function startServer(t: Test, options: ServerOptions = {}): Promise<ScriptedServer> {
  const server = new ScriptedServer(options)
  await server.listen()
  t.teardown(() => server.stop())
  return server
}

// The tests run niced beside the VMs: a deadline shorter than seconds is set only where the
// timeout is what a test checks.
function dial(server: ScriptedServer, timeoutMs = 10_000, uri = server.uri): Promise<NbdSession> {
  return dialNbd({ uri: parseNbdUri(uri), tlsFiles: {}, timeoutMs })
}

// dialNbd.

t.test('dialNbd: fixed newstyle and NBD_OPT_GO give the export, its flags and block sizes', async (t) => {
  const server = await startServer(t, { exportName: 'disk 1', sizeBytes: 3 << 20, blocks: [512, 4096, 1 << 20] })
  const session = await dial(server)
  t.teardown(() => session.socket.destroy())
  const expected: NbdExport = { sizeBytes: 3 << 20, flags: kAllFlags, minBlockBytes: 512, preferredBlockBytes: 4096, maxBlockBytes: 1 << 20 }
  t.same(session.export, expected)
  t.same(server.clientFlags, [NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES], 'the client says fixed newstyle and no zeroes')
  t.same(server.goRequests, [{ name: 'disk 1', infos: [NBD_INFO_BLOCK_SIZE] }], 'GO names the (decoded) export and asks for block sizes')
  t.ok(session.socket.isPaused(), 'the socket is handed over paused')
})

t.test('dialNbd: a server that says nothing of block sizes gets the protocol\'s defaults; flags without HAS_FLAGS are none', async (t) => {
  const server = await startServer(t, { handshake: 'no-block-size', exportFlags: NBD_FLAG_SEND_FLUSH })
  const session = await dial(server)
  t.teardown(() => session.socket.destroy())
  t.same(session.export, { sizeBytes: 1 << 20, flags: 0, minBlockBytes: 1, preferredBlockBytes: 4096, maxBlockBytes: kDefaultMaxBlockBytes })
})

t.test('dialNbd: each broken handshake rejects with an NbdError naming the problem', async (t) => {
  const cases: [string, ServerOptions, RegExp, string?][] = [
    ['wrong magic', { handshake: 'bad-magic' }, /is not an NBD server \(no NBDMAGIC\)/],
    ['an oldstyle greeting', { handshake: 'oldstyle' }, /speaks only the oldstyle protocol/],
    ['closed mid-handshake', { handshake: 'close-mid' }, /the server closed the connection during the handshake/],
    ['never answers', { handshake: 'silent' }, /the handshake did not finish within 0\.3 s/],
    ['an option reply over 64 KiB', { handshake: 'huge-reply' }, /option reply of 65537 bytes \(more than 65536\)/],
    ['inconsistent block sizes', { blocks: [512, 256, 4096] }, /inconsistent block sizes \(minimum 512, preferred 256, maximum 4096\)/],
    ['a maximum not a multiple of the minimum', { blocks: [4096, 4096, 6144] }, /inconsistent block sizes/],
    ['no such export', { exportName: 'disk' }, /export 'nope': no such export: no export named nope/, 'nope'],
    ['TLS required', { handshake: 'tls-reqd' }, /the server requires TLS \(use nbds:\/\/\): TLS is required here/],
  ]
  for (const [what, options, message, exportName] of cases) {
    const server = await startServer(t, options)
    const uri = exportName === undefined ? server.uri : `nbd+unix:///${exportName}?socket=${server.path}`
    const started = Date.now()
    const timeoutMs = what === 'never answers' ? 300 : 10_000
    await t.rejects(within(dial(server, timeoutMs, uri), 15_000, what), { name: 'NbdError', code: 'UBLKD_ERR_BACKEND', message }, what)
    if (what === 'never answers') t.ok(Date.now() - started >= 290, 'the timeout is the one given')
    await server.stop()
  }
  const error = await dial(new ScriptedServer()).catch((error: unknown) => error)
  t.ok(error instanceof NbdError, 'no server at all')
  t.match((error as Error).message, /^nbd server unix:.*: no such socket$/)
})

t.test('dialNbd: nbds:// times out when the server accepts STARTTLS and then says nothing', async (t) => {
  const server = await startServer(t, { handshake: 'starttls-then-silent' })
  const dialing = dial(server, 300, `nbds+unix:///?socket=${server.path}`)
  dialing.catch(() => {})
  await t.rejects(within(dialing, 10_000, 'nbds dial'), { name: 'NbdError', message: /did not finish within 0\.3 s/ })
  // Unblock it for the next tests: cutting the connection ends the TLS attempt.
  await server.stop()
  await within(dialing, 10_000, 'nbds dial after the server left').catch(() => {})
})

t.test('dialNbd: structured replies are asked for before GO, and reported as the server answers', async (t) => {
  for (const structured of ['data', undefined] as const) {
    const server = await startServer(t, structured === undefined ? {} : { structured })
    const session = await dial(server)
    t.equal(session.structuredReplies, structured !== undefined, structured === undefined ? 'refused (ERR_UNSUP): false' : 'acknowledged: true')
    t.same(server.options, [NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO], 'NBD_OPT_STRUCTURED_REPLY, then NBD_OPT_GO')
    t.same(session.export, { sizeBytes: 1 << 20, flags: kAllFlags, minBlockBytes: 512, preferredBlockBytes: 4096, maxBlockBytes: 4096 })
    session.socket.destroy()
    await server.stop()
  }
})

// NbdQueue.

const kIoBytes = 65536
const kSector = 512

interface FakeQueue {
  context: QueueContext
  completions: [number, number][]
  /** The tag's I/O buffer. */
  buffer(tag: number): Buffer
  /** The next result of `tag` (one that already came, or the next one), within `ms`. */
  result(tag: number, ms?: number): Promise<number>
}

function fakeQueue(): FakeQueue {
  const endpoint = new Uint8Array(4 * kIoBytes)
  const completions: [number, number][] = []
  const unclaimed = new Map<number, number[]>()
  const waiters = new Map<number, (result: number) => void>()
  const context: QueueContext = {
    queueId: 0, log: createLogger('silent', {}), ioMode: 'copy', depth: 4, maxIoBufBytes: kIoBytes,
    tagAddressLo: new Uint32Array(4), tagAddressHi: new Uint32Array(4),
    data: { endpoint, tagOffset: Float64Array.from([0, 1, 2, 3], (tag) => tag * kIoBytes) },
    sqes: new Uint32Array(32 * 8), reserveSqe: () => 0, submitSoon: () => {},
    complete: (tag, result) => {
      completions.push([tag, result])
      const waiter = waiters.get(tag)
      if (waiter) {
        waiters.delete(tag)
        waiter(result)
      } else {
        unclaimed.set(tag, [...(unclaimed.get(tag) ?? []), result])
      }
    },
  }
  return {
    context,
    completions,
    buffer: (tag) => Buffer.from(endpoint.buffer, tag * kIoBytes, kIoBytes),
    result: (tag, ms = 10_000) => {
      const already = unclaimed.get(tag)
      if (already && already.length > 0) return Promise.resolve(already.shift()!)
      return within(new Promise<number>((resolve) => waiters.set(tag, resolve)), ms, `tag ${tag}`)
    },
  }
}

const kExport: NbdExport = { sizeBytes: 1 << 20, flags: kAllFlags, minBlockBytes: 512, preferredBlockBytes: 4096, maxBlockBytes: 4096 }

function openQueue(t: Test, server: ScriptedServer, queue: FakeQueue, spec: Partial<NbdSpec> = {}): NbdQueue {
  const handler = new NbdQueue({
    uri: parseNbdUri(`nbd+unix:///?socket=${server.path}`),
    tlsFiles: {},
    export: kExport,
    maxPayloadBytes: 4096,
    maxZeroingBytes: 1 << 30,
    // Deadlines with room for a starved process (libuv runs due timers before pending I/O);
    // the tests of the timeouts themselves pass their own.
    connectTimeoutMs: 5000,
    reconnectTimeoutMs: 10_000,
    replyTimeoutMs: 5000,
    plainTransport: 'stream',
    ...spec,
  }, queue.context)
  t.teardown(() => handler.close(true))
  return handler
}

/** One request, then the turn's end (which sends it). */
function submit(handler: NbdQueue, queue: FakeQueue, tag: number, op: number, startSector: number, nrSectors: number, flags = 0): number {
  const result = handler.handleIo({ tag, op, flags, startSector, nrSectors, buffer: queue.buffer(tag) })
  handler.endTurn()
  return result
}

/** The server's disk at a sector range. */
const diskAt = (server: ScriptedServer, sector: number, bytes: number): Buffer => server.disk.subarray(sector * kSector, sector * kSector + bytes)

const k16K = 16384
const kSectors16K = k16K / kSector

t.test('queue: a 16 KiB WRITE then READ round-trip, each split into 4 requests of 4096; FLUSH, DISCARD, WRITE_ZEROES', async (t) => {
  const server = await startServer(t)
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  const data = queue.buffer(1)
  for (let i = 0; i < k16K; i++) data[i] = (i * 7 + 3) & 0xff
  const written = Buffer.from(data.subarray(0, k16K))
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_WRITE, 64, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K, 'the WRITE completes with its length')
  t.ok(diskAt(server, 64, k16K).equals(written), 'the server has the data')
  t.same(server.requests.map((r) => [r.type, r.offset, r.length]),
    [0, 1, 2, 3].map((part) => [NBD_CMD_WRITE, 64 * kSector + part * 4096, 4096]), '4 WRITE requests of 4096')
  queue.buffer(2).fill(0xee)
  t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 64, kSectors16K), kIoPending)
  t.equal(await queue.result(2), k16K)
  t.ok(queue.buffer(2).subarray(0, k16K).equals(written), 'the READ returns it')
  t.ok(queue.buffer(2).subarray(k16K).every((b) => b === 0xee), 'and nothing past its length is touched')
  t.same(server.requests.slice(4).map((r) => [r.type, r.offset, r.length]),
    [0, 1, 2, 3].map((part) => [NBD_CMD_READ, 64 * kSector + part * 4096, 4096]), '4 READ requests of 4096')

  // A short READ at an odd place: one part of its own length.
  t.equal(submit(handler, queue, 3, UBLK_IO_OP_READ, 3, 3), kIoPending)
  t.equal(await queue.result(3), 1536)
  t.ok(queue.buffer(3).subarray(0, 1536).equals(diskAt(server, 3, 1536)))

  server.requests.length = 0
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_FLUSH, 0, 0), kIoPending)
  t.equal(await queue.result(0), 0, 'FLUSH')
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_DISCARD, 64, 16), kIoPending)
  t.equal(await queue.result(0), 0, 'DISCARD')
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_WRITE_ZEROES, 80, 16), kIoPending)
  t.equal(await queue.result(0), 0, 'WRITE_ZEROES')
  t.same(server.requests.map((r) => [r.type, r.offset, r.length, r.flags]), [
    [NBD_CMD_FLUSH, 0, 0, 0], [NBD_CMD_TRIM, 64 * kSector, 8192, 0], [NBD_CMD_WRITE_ZEROES, 80 * kSector, 8192, 0],
  ], 'one request each, zeroing not split at the payload limit')
  t.ok(diskAt(server, 64, k16K).equals(Buffer.alloc(k16K)), 'the range reads as zeros on the server')
  t.equal(submit(handler, queue, 0, 99, 0, 1), -95, 'an unknown op is EOPNOTSUPP')
  t.equal(server.connections, 1, 'all on one connection')
})

t.test('queue: several tags in flight in one turn complete independently', async (t) => {
  const server = await startServer(t)
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  for (let tag = 0; tag < 4; tag++) handler.handleIo({ tag, op: UBLK_IO_OP_READ, flags: 0, startSector: tag * 100, nrSectors: 64, buffer: queue.buffer(tag) })
  handler.endTurn()
  for (let tag = 0; tag < 4; tag++) {
    t.equal(await queue.result(tag), 32768)
    t.ok(queue.buffer(tag).subarray(0, 32768).equals(diskAt(server, tag * 100, 32768)), `tag ${tag}'s data`)
  }
  t.equal(server.requests.length, 32, '8 parts each')
})

t.test('queue: a server error on one part fails the request with its errno; unknown errors are EIO', async (t) => {
  let failWith = 0
  const server = await startServer(t, {
    onRequest: (request, conn) => {
      // The third part of each request fails.
      if (failWith !== 0 && request.offset % k16K === 2 * 4096) conn.reply(request, failWith)
      else conn.serve(request)
    },
  })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  for (const [error, expected] of [[5, -5], [28, -28], [999, -5], [22, -22]] as const) {
    failWith = error
    t.equal(submit(handler, queue, 1, UBLK_IO_OP_WRITE, 32, kSectors16K), kIoPending)
    t.equal(await queue.result(1), expected, `server error ${error} on a WRITE part`)
    t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
    t.equal(await queue.result(2), expected, `server error ${error} on a READ part (no payload follows)`)
  }
  failWith = 0
  t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
  t.equal(await queue.result(2), k16K, 'the next request is fine')
  t.ok(queue.buffer(2).subarray(0, k16K).equals(diskAt(server, 32, k16K)))
  t.equal(server.connections, 1, 'an error reply is not a broken connection')
})

/** A server whose first connection misbehaves on the READ part at `badPart` (the others are served). */
async function misbehaving(t: Test, badPart: number, misbehave: (request: NbdRequest, conn: Conn) => void,
  options: ServerOptions = {}): Promise<ScriptedServer> {
  return startServer(t, {
    ...options,
    onRequest: (request, conn) => {
      if (conn.index === 1 && request.type === NBD_CMD_READ && request.offset % k16K === badPart * 4096) misbehave(request, conn)
      else conn.serve(request)
    },
  })
}

/** A 16 KiB READ at sector 32 on tag 1 completes with the disk's data, over a second connection. */
async function readSurvives(t: Test, server: ScriptedServer, resentParts: number[]): Promise<void> {
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  queue.buffer(1).fill(0)
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K, 'the READ completes')
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 32, k16K)), 'with the right data')
  t.equal(server.connections, 2, 'after one reconnect')
  t.same(server.on(2).map((r) => (r.offset - 32 * kSector) / 4096), resentParts, 'the parts not yet answered were sent again')
  t.same(queue.completions, [[1, k16K]], 'completed once')
  // And the new connection keeps working.
  t.equal(submit(handler, queue, 2, UBLK_IO_OP_WRITE, 0, 8), kIoPending)
  t.equal(await queue.result(2), 4096)
}

t.test('queue: a reply to a handle no request has drops the connection; the request is re-sent and completes', async (t) => {
  const server = await misbehaving(t, 2, (request, conn) => {
    const bogus = Buffer.from(request.handle)
    bogus[0]! ^= 0x5a // another generation
    conn.reply(request, 0, { handle: bogus, payload: conn.readData(request) })
  })
  await readSurvives(t, server, [2, 3])
})

t.test('queue: a reply with bad magic drops the connection; the request is re-sent and completes', async (t) => {
  const server = await misbehaving(t, 1, (request, conn) => conn.reply(request, 0, { magic: 0xdeadbeef, payload: conn.readData(request) }))
  await readSurvives(t, server, [1, 2, 3])
})

t.test('queue: a connection that ends in the middle of a READ payload: reconnect, re-send, complete', async (t) => {
  const server = await misbehaving(t, 1, (request, conn) => {
    conn.reply(request, 0, { payload: conn.readData(request).subarray(0, 1000) })
    conn.socket.end()
  })
  await readSurvives(t, server, [1, 2, 3])
})

t.test('queue: replies out of order are fine (on the same connection)', async (t) => {
  const held: [NbdRequest, Conn][] = []
  const server = await startServer(t, {
    onRequest: (request, conn) => {
      held.push([request, conn])
      if (held.length < 8) return
      // Both requests' parts, answered backwards.
      for (const [r, c] of held.reverse()) c.serve(r)
      held.length = 0
    },
  })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  handler.handleIo({ tag: 1, op: UBLK_IO_OP_READ, flags: 0, startSector: 32, nrSectors: kSectors16K, buffer: queue.buffer(1) })
  handler.handleIo({ tag: 3, op: UBLK_IO_OP_READ, flags: 0, startSector: 1000, nrSectors: kSectors16K, buffer: queue.buffer(3) })
  handler.endTurn()
  t.equal(await queue.result(3), k16K)
  t.equal(await queue.result(1), k16K)
  t.same(queue.completions, [[3, k16K], [1, k16K]], 'the later request completed first')
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 32, k16K)), 'tag 1\'s data, each part at its place')
  t.ok(queue.buffer(3).subarray(0, k16K).equals(diskAt(server, 1000, k16K)), 'tag 3\'s data')
  t.equal(server.connections, 1, 'no reconnect')
})

t.test('queue: a server down past reconnectTimeoutMs fails the held request and new ones with EIO, until it is back', async (t) => {
  const server = await startServer(t)
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue, { reconnectTimeoutMs: 600 })
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_FLUSH, 0, 0), kIoPending)
  t.equal(await queue.result(0), 0, 'served while the server is up')
  await server.stop()
  const down = Date.now()
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending, 'held while the server is away')
  t.equal(await queue.result(1), -5, 'then EIO')
  t.ok(Date.now() - down >= 500, 'after about reconnectTimeoutMs')
  t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 32, kSectors16K), -5, 'a new request fails at once')
  t.same(queue.completions.slice(1), [[1, -5]], 'and is not completed later')
  await server.listen()
  // The next reconnect attempt finds it (the backoff is at most a few hundred ms here).
  const back = Date.now()
  let result = -5
  while (result === -5 && Date.now() - back < 20_000) {
    await sleep(25)
    result = submit(handler, queue, 2, UBLK_IO_OP_READ, 32, kSectors16K)
  }
  t.equal(result, kIoPending, 'once the server is back, requests are taken again')
  t.equal(await queue.result(2), k16K, 'and served')
  t.ok(queue.buffer(2).subarray(0, k16K).equals(diskAt(server, 32, k16K)))
})

t.test('queue: no server from the start: the held request fails with EIO after reconnectTimeoutMs', async (t) => {
  // No server at all when the queue opens: its requests are held, then fail.
  const server = new ScriptedServer()
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue, { reconnectTimeoutMs: 400 })
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_READ, 0, 8), kIoPending)
  t.equal(await queue.result(0), -5)
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 0, 8), -5, 'then fails at once')
})

t.test('queue: a server that takes requests but never answers is dropped after replyTimeoutMs; the request is re-sent', async (t) => {
  const server = await startServer(t, {
    onRequest: (request, conn) => {
      if (conn.index > 1) conn.serve(request)
    },
  })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue, { replyTimeoutMs: 300 })
  const started = Date.now()
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K)
  t.ok(Date.now() - started >= 300, 'not before replyTimeoutMs')
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 32, k16K)))
  t.equal(server.connections, 2)
  t.same(server.on(1).length, 4, 'sent on the first connection')
  t.same(server.on(2).length, 4, 'and again on the second')
})

t.test('queue: a connection idle for longer than replyTimeoutMs is not dropped when its next request is answered in time', async (t) => {
  const server = await startServer(t, {
    onRequest: (request, conn) => {
      setTimeout(() => conn.serve(request), 200)
    },
  })
  const queue = fakeQueue()
  const opened = Date.now()
  const handler = openQueue(t, server, queue, { replyTimeoutMs: 3000 })
  await until(() => server.transmitting === 1, 3000, 'connected')
  // The silence watch ticks every second from the queue's start: send 100 ms before a tick,
  // after more than replyTimeoutMs of silence; the server answers 200 ms later, in time (with
  // seconds to spare for a starved process).
  await sleep(3900 - (Date.now() - opened))
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_FLUSH, 0, 0), kIoPending)
  t.equal(await queue.result(0), 0)
  t.equal(server.connections, 1, 'the connection was kept')
})

t.test('queue: FUA maps to NBD_CMD_FLAG_FUA when the export takes it; NOUNMAP to NBD_CMD_FLAG_NO_HOLE', async (t) => {
  const server = await startServer(t)
  for (const [exportFlags, fua] of [[kAllFlags, NBD_CMD_FLAG_FUA], [kAllFlags & ~NBD_FLAG_SEND_FUA, 0]] as const) {
    server.requests.length = 0
    const queue = fakeQueue()
    const handler = openQueue(t, server, queue, { export: { ...kExport, flags: exportFlags } })
    t.equal(submit(handler, queue, 0, UBLK_IO_OP_WRITE, 0, 16, UBLK_IO_F_FUA), kIoPending)
    t.equal(await queue.result(0), 8192)
    t.equal(submit(handler, queue, 1, UBLK_IO_OP_WRITE, 0, 8), kIoPending)
    t.equal(await queue.result(1), 4096)
    t.equal(submit(handler, queue, 2, UBLK_IO_OP_WRITE_ZEROES, 0, 8, UBLK_IO_F_NOUNMAP), kIoPending)
    t.equal(await queue.result(2), 0)
    t.equal(submit(handler, queue, 3, UBLK_IO_OP_WRITE_ZEROES, 0, 8), kIoPending)
    t.equal(await queue.result(3), 0)
    t.same(server.requests.map((r) => [r.type, r.flags]), [
      [NBD_CMD_WRITE, fua], [NBD_CMD_WRITE, fua], [NBD_CMD_WRITE, 0],
      [NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE], [NBD_CMD_WRITE_ZEROES, 0],
    ], fua ? 'FUA on every part of the FUA write' : 'no FUA flag to a server that did not offer it')
    handler.close(true)
  }
})

t.test('queue: close() says goodbye with NBD_CMD_DISC', async (t) => {
  const server = await startServer(t)
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  t.equal(submit(handler, queue, 0, UBLK_IO_OP_FLUSH, 0, 0), kIoPending)
  t.equal(await queue.result(0), 0)
  handler.close(true)
  await until(() => server.disconnects === 1, 10_000, 'NBD_CMD_DISC')
  t.equal(server.connections, 1)
})

// Structured replies.

/** `bytes` of a pattern with no zero byte, but zero in the sectors `zeroSectors` names: holes for the 'holes' server. */
function sparsePattern(bytes: number, zeroSectors: (sector: number) => boolean): Buffer {
  const data = Buffer.alloc(bytes)
  for (let i = 0; i < bytes; i++) data[i] = zeroSectors(Math.floor(i / kSector)) ? 0 : ((i * 13 + 5) & 0xff) | 1
  return data
}

t.test('structured: WRITE then READ round-trip, the READ as 3 OFFSET_DATA chunks out of order; NONE and simple replies for the rest', async (t) => {
  const server = await startServer(t, { structured: 'data' })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue, { maxPayloadBytes: kIoBytes })
  const data = queue.buffer(1)
  for (let i = 0; i < k16K; i++) data[i] = (i * 11 + 7) & 0xff
  const written = Buffer.from(data.subarray(0, k16K))
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_WRITE, 64, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K, 'the WRITE (answered with a NONE chunk) completes with its length')
  t.ok(diskAt(server, 64, k16K).equals(written), 'the server has the data')
  queue.buffer(2).fill(0xee)
  t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 64, kSectors16K), kIoPending)
  t.equal(await queue.result(2), k16K)
  t.ok(queue.buffer(2).subarray(0, k16K).equals(written), 'the READ returns it, each chunk at its offset')
  t.ok(queue.buffer(2).subarray(k16K).every((b) => b === 0xee), 'nothing past its length is touched')
  t.same(server.chunks, [NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_DATA,
    NBD_REPLY_TYPE_OFFSET_DATA], 'a NONE chunk, then the READ in chunks (16384 / 5461 is 4 pieces)')
  // An odd-sized READ: the pieces are not sector-aligned.
  t.equal(submit(handler, queue, 3, UBLK_IO_OP_READ, 3, 3), kIoPending)
  t.equal(await queue.result(3), 1536)
  t.ok(queue.buffer(3).subarray(0, 1536).equals(diskAt(server, 3, 1536)))
  for (const [op, what] of [[UBLK_IO_OP_FLUSH, 'FLUSH'], [UBLK_IO_OP_DISCARD, 'DISCARD'], [UBLK_IO_OP_WRITE_ZEROES, 'WRITE_ZEROES']] as const) {
    t.equal(submit(handler, queue, 0, op, 64, op === UBLK_IO_OP_FLUSH ? 0 : 16), kIoPending)
    t.equal(await queue.result(0), 0, `${what} (a simple reply on a structured connection)`)
  }
  t.equal(server.connections, 1, 'all on one connection')
})

t.test('structured: a READ split in parts (maxPayloadBytes 4096), each part answered in chunks', async (t) => {
  const server = await startServer(t, { structured: 'data' })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  queue.buffer(1).fill(0xaa)
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 40, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K)
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 40, k16K)), 'each part\'s chunks at their place')
  t.same(server.requests.map((r) => [r.type, r.offset, r.length]),
    [0, 1, 2, 3].map((part) => [NBD_CMD_READ, 40 * kSector + part * 4096, 4096]), '4 READ requests of 4096')
  t.equal(server.chunks.length, 16, '4096 / 1365 is 4 chunks per part')
  // Two tags at once, their chunks interleaved on the connection.
  for (let tag = 0; tag < 4; tag++) handler.handleIo({ tag, op: UBLK_IO_OP_READ, flags: 0, startSector: tag * 100 + 1, nrSectors: 64, buffer: queue.buffer(tag) })
  handler.endTurn()
  for (let tag = 0; tag < 4; tag++) {
    t.equal(await queue.result(tag), 32768)
    t.ok(queue.buffer(tag).subarray(0, 32768).equals(diskAt(server, tag * 100 + 1, 32768)), `tag ${tag}'s data`)
  }
  t.equal(server.connections, 1)
})

t.test('structured: zero ranges come as OFFSET_HOLE chunks and are zeroed in the tag buffer', async (t) => {
  const server = await startServer(t, { structured: 'holes' })
  const queue = fakeQueue()
  for (const maxPayloadBytes of [kIoBytes, 4096]) {
    server.chunks.length = 0
    const handler = openQueue(t, server, queue, { maxPayloadBytes })
    // Sectors 2-5, 8 and 12-31 are zero (a hole across the 4096 boundary, one ending the request).
    const sparse = sparsePattern(k16K, (sector) => (sector >= 2 && sector <= 5) || sector === 8 || sector >= 12)
    sparse.copy(queue.buffer(1))
    t.equal(submit(handler, queue, 1, UBLK_IO_OP_WRITE, 128, kSectors16K), kIoPending)
    t.equal(await queue.result(1), k16K)
    queue.buffer(2).fill(0xaa)
    t.equal(submit(handler, queue, 2, UBLK_IO_OP_READ, 128, kSectors16K), kIoPending)
    t.equal(await queue.result(2), k16K, `the READ completes (parts of ${maxPayloadBytes})`)
    t.ok(queue.buffer(2).subarray(0, k16K).equals(sparse), 'data where there is data, zeros in the holes (not the 0xAA left there)')
    t.ok(queue.buffer(2).subarray(k16K).every((b) => b === 0xaa), 'nothing past its length is touched')
    t.ok(server.chunks.filter((type) => type === NBD_REPLY_TYPE_OFFSET_HOLE).length >= 3, 'holes were sent')
    // All of it a hole.
    queue.buffer(3).fill(0xaa)
    t.equal(submit(handler, queue, 3, UBLK_IO_OP_READ, 128 + 12, 16), kIoPending)
    t.equal(await queue.result(3), 8192)
    t.ok(queue.buffer(3).subarray(0, 8192).every((b) => b === 0), 'a READ that is one big hole reads zeros')
    handler.close(true)
  }
  t.equal(server.connections, 2, 'one connection per queue, no reconnect')
})

t.test('structured: an ERROR or ERROR_OFFSET chunk fails the READ with its errno; the connection stays', async (t) => {
  let how: 'error' | 'error-offset' | 'error-then-none' | null = null
  const server = await startServer(t, {
    structured: 'data',
    onRequest: (request, conn) => {
      // The third part of a READ fails part way: some data, then the error.
      if (how === null || request.type !== NBD_CMD_READ || request.offset % k16K !== 2 * 4096) return conn.serve(request)
      conn.dataChunk(request, request.offset + 2048, 2048, false)
      if (how === 'error') conn.errorChunk(request, 28, 'no space left', true)
      else if (how === 'error-offset') conn.errorChunk(request, 28, 'no space at', true, { offset: request.offset + 1024 })
      else {
        conn.errorChunk(request, 28, '', false)
        conn.noneChunk(request)
      }
    },
  })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  for (const variant of ['error', 'error-offset', 'error-then-none'] as const) {
    how = variant
    t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
    t.equal(await queue.result(1), -28, `${variant}: ENOSPC`)
  }
  how = null
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K, 'the next READ is fine')
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 32, k16K)))
  t.equal(server.connections, 1, 'an error chunk is not a broken connection')
})

t.test('structured: a READ whose chunks do not cover it but say DONE fails with EIO, never with stale bytes', async (t) => {
  let how: 'short' | 'none-only' | 'data-then-none' | null = null
  const server = await startServer(t, {
    structured: 'data',
    onRequest: (request, conn) => {
      if (how === null || request.type !== NBD_CMD_READ || request.offset % k16K !== 1 * 4096) return conn.serve(request)
      if (how === 'short') {
        // 2 of 3 pieces; the hole between them is never sent.
        conn.dataChunk(request, request.offset + 3072, 1024, false)
        conn.dataChunk(request, request.offset, 2048, true)
      } else if (how === 'none-only') {
        conn.noneChunk(request)
      } else {
        // Everything, then NONE with DONE: complete (not a failure).
        conn.dataChunk(request, request.offset + 2048, 2048, false)
        conn.dataChunk(request, request.offset, 2048, false)
        conn.noneChunk(request)
      }
    },
  })
  const queue = fakeQueue()
  const handler = openQueue(t, server, queue)
  for (const variant of ['short', 'none-only'] as const) {
    how = variant
    queue.buffer(1).fill(0xaa)
    t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
    t.equal(await queue.result(1), -5, `${variant}: EIO`)
  }
  how = 'data-then-none'
  queue.buffer(1).fill(0xaa)
  t.equal(submit(handler, queue, 1, UBLK_IO_OP_READ, 32, kSectors16K), kIoPending)
  t.equal(await queue.result(1), k16K, 'all the data, then a NONE chunk with DONE: complete')
  t.ok(queue.buffer(1).subarray(0, k16K).equals(diskAt(server, 32, k16K)))
  t.equal(server.connections, 1, 'a short READ is not a broken connection')
  t.same(queue.completions.map(([, result]) => result), [-5, -5, k16K])
})

/** Another generation's handle of `request`. */
function bogusHandle(request: NbdRequest): Buffer {
  const bogus = Buffer.from(request.handle)
  bogus[0]! ^= 0x5a
  return bogus
}

const kMalicious: [string, (request: NbdRequest, conn: Conn) => void, number[]?][] = [
  ['OFFSET_DATA past the part (in the next part)', (r, c) => c.dataChunk(r, r.offset + r.length, 512, true)],
  ['OFFSET_DATA before the part', (r, c) => c.dataChunk(r, r.offset - 512, 512, true)],
  ['OFFSET_DATA straddling the part\'s end', (r, c) => c.dataChunk(r, r.offset + r.length - 512, 1024, true)],
  ['OFFSET_DATA longer than the request', (r, c) => c.dataChunk(r, r.offset, r.length + 512, true)],
  ['OFFSET_DATA without data', (r, c) => c.chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_FLAG_DONE, Buffer.alloc(8))],
  ['chunks covering more than the part (overlap)', (r, c) => {
    c.dataChunk(r, r.offset, r.length, false)
    c.dataChunk(r, r.offset, 512, true)
  }],
  ['OFFSET_HOLE past the part', (r, c) => c.holeChunk(r, r.offset + 2048, r.length, true)],
  ['OFFSET_HOLE of length 0', (r, c) => c.holeChunk(r, r.offset, 0, true)],
  ['OFFSET_HOLE of a wrong chunk length', (r, c) => c.chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_FLAG_DONE, Buffer.alloc(16))],
  ['a chunk of unknown type (5, BLOCK_STATUS)', (r, c) => c.chunk(r, 5, NBD_REPLY_FLAG_DONE, Buffer.alloc(12))],
  ['an ERROR chunk whose message length is more than its chunk has', (r, c) => c.errorChunk(r, 28, 'no space', true, { messageBytes: 20 })],
  ['an ERROR chunk whose message length is less than its chunk has', (r, c) => c.errorChunk(r, 28, 'no space', true, { messageBytes: 2 })],
  ['an ERROR chunk shorter than its fixed fields', (r, c) => c.chunk(r, NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE, Buffer.alloc(4, 1))],
  ['an ERROR chunk with error 0', (r, c) => c.errorChunk(r, 0, 'fine?', true)],
  ['a NONE chunk without DONE', (r, c) => c.noneChunk(r, 0)],
  ['a NONE chunk with a length', (r, c) => c.chunk(r, NBD_REPLY_TYPE_NONE, NBD_REPLY_FLAG_DONE, Buffer.alloc(4))],
  ['a structured chunk to a handle no request has', (r, c) => c.dataChunk(r, r.offset, r.length, true, { handle: bogusHandle(r) })],
  ['a chunk after DONE', (r, c) => {
    c.dataChunk(r, r.offset, r.length, true)
    c.noneChunk(r)
  }, [2, 3]],
  ['a successful simple reply with data to a READ', (r, c) => c.reply(r, 0, { payload: c.readData(r) })],
]


for (const [what, misbehave, resent] of kMalicious) {
  t.test(`structured: ${what} drops the connection; the READ is re-sent and completes`, async (t) => {
    const server = await misbehaving(t, 1, misbehave, { structured: 'data' })
    await readSurvives(t, server, resent ?? [1, 2, 3])
    t.ok(server.chunks.length > 4, 'the second connection answered in chunks')
  })
}

t.test('structured: a structured chunk from a server that did not agree to them drops the connection; the READ is re-sent and completes', async (t) => {
  const server = await misbehaving(t, 1, (request, conn) => conn.dataChunk(request, request.offset, request.length, true))
  await readSurvives(t, server, [1, 2, 3])
})

t.test('structured: chunks that overlap but add up to the part\'s length (half of it sent twice) do not pass for the whole part', async (t) => {
  for (const twice of ['data', 'hole'] as const) {
    const server = await misbehaving(t, 1, (request, conn) => {
      if (twice === 'data') conn.dataChunk(request, request.offset, 2048, false)
      else conn.holeChunk(request, request.offset, 2048, false)
      conn.dataChunk(request, request.offset, 2048, true)
    }, { structured: 'data' })
    await readSurvives(t, server, [1, 2, 3])
    await server.stop()
  }
})

t.test('nbd target setup: a server that closes right after NBD_OPT_GO does not crash the daemon', async (t) => {
  const server = await startServer(t, { handshake: 'ack-then-close' })
  const setup = await nbdTarget.setup(nbdTarget.parseOptions({ url: server.uri }, undefined))
  t.equal(setup.geometry.sizeBytes, 1 << 20)
  await sleep(50)
})

t.test('no unhandled rejections', async (t) => {
  t.same(unhandled, [])
})
