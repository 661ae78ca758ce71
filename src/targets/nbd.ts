// nbd: a device served by an NBD server (nbdkit, qemu-nbd, nbd-server, ...), over TCP, a unix
// socket or TLS. `add` connects once to learn the export (size, read-only, block sizes, which
// commands the server takes); the device's parameters follow it, so the block layer never sends
// what the server cannot do. Each queue then has its own connection (src/targets/nbd/queue.ts),
// which is why several queues need a server that advertises CAN_MULTI_CONN: only then does a
// FLUSH on one connection cover the writes completed on the others.
import fs from 'node:fs'

import { UsageError } from '../common/errors.js'
import type { NbdExport, NbdTlsFiles } from './nbd/handshake.js'
import {
  NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES, disconnectRequest,
} from './nbd/protocol.js'
import type { NbdSpec } from './nbd/queue.js'
import { parseNbdUri, type NbdUri } from './nbd/uri.js'
import { kDefaultLogicalBlockSize, rejectUnknownOptions } from './options.js'
import type { DeviceGeometry, Target } from './target.js'

interface NbdOptions {
  url: string
  uri: NbdUri
  tlsFiles: NbdTlsFiles
  readOnly: boolean
  logicalBlockSize: number | undefined
  connectTimeoutMs: number
  reconnectTimeoutMs: number
}

const kDefaultConnectTimeoutS = 10
const kDefaultReconnectTimeoutS = 60
const kReplyTimeoutMs = 30_000
/** The block layer does not take a request size limit below a page. */
const kMinRequestBytes = 4096
/** One TRIM or WRITE_ZEROES at most (NBD lengths are 32-bit); the device's discard limits. */
const kMaxZeroingBytes = 2 ** 30

function seconds(raw: Record<string, unknown>, field: string, flag: string, fallback: number): number {
  const value = raw[field]
  if (value === undefined) return fallback * 1000
  const number = typeof value === 'number' ? value : typeof value === 'string' && /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN
  if (!Number.isFinite(number) || number <= 0 || number > 86_400) {
    throw new UsageError(`${flag} must be a number of seconds between 0 and 86400, got '${String(value)}'`)
  }
  return number * 1000
}

function readPem(raw: Record<string, unknown>, field: string, flag: string): string | undefined {
  const path = raw[field]
  if (path === undefined) return undefined
  if (typeof path !== 'string' || path === '') throw new UsageError(`${flag} must be a file name`)
  try {
    return fs.readFileSync(path, 'utf8')
  } catch (error) {
    throw new UsageError(`cannot read ${flag} ${path} (${(error as NodeJS.ErrnoException).code ?? String(error)})`)
  }
}

function isPowerOfTwo(value: number): boolean {
  return value > 0 && (value & (value - 1)) === 0
}

/** The device's geometry from the export, or a refusal naming what does not fit. */
function geometryOf(options: NbdOptions, exported: NbdExport): { geometry: DeviceGeometry; maxPayloadBytes: number } {
  const { flags } = exported
  if (exported.minBlockBytes > 4096) {
    throw new UsageError(`the nbd export's minimum block size is ${exported.minBlockBytes} bytes; a ublk device's logical block size is at most 4096`)
  }
  const logicalBlockSize = options.logicalBlockSize ?? Math.max(exported.minBlockBytes, kDefaultLogicalBlockSize)
  if (logicalBlockSize < exported.minBlockBytes) {
    throw new UsageError(`--logical-block-size ${logicalBlockSize} is below the nbd export's minimum block size ${exported.minBlockBytes}`)
  }
  const sizeBytes = exported.sizeBytes - (exported.sizeBytes % logicalBlockSize)
  if (sizeBytes === 0) throw new UsageError(`the nbd export has ${exported.sizeBytes} bytes: less than one ${logicalBlockSize}-byte block`)
  const physicalBlockSize = Math.min(Math.max(isPowerOfTwo(exported.preferredBlockBytes) ? exported.preferredBlockBytes : 0, logicalBlockSize), 4096)
  const maxPayloadBytes = Math.max(exported.maxBlockBytes - (exported.maxBlockBytes % logicalBlockSize), logicalBlockSize)
  const readOnly = options.readOnly || (flags & NBD_FLAG_READ_ONLY) !== 0
  const trim = !readOnly && (flags & NBD_FLAG_SEND_TRIM) !== 0
  const zeroes = !readOnly && (flags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0
  const geometry: DeviceGeometry = {
    sizeBytes,
    logicalBlockSize,
    physicalBlockSize,
    readOnly,
    volatileCache: (flags & NBD_FLAG_SEND_FLUSH) !== 0,
    fua: (flags & NBD_FLAG_SEND_FUA) !== 0,
    maxIoBytes: Math.max(maxPayloadBytes, kMinRequestBytes),
    ...(trim || zeroes ? {
      discard: {
        granularityBytes: logicalBlockSize,
        maxDiscardSectors: trim ? kMaxZeroingBytes / 512 : 0,
        maxWriteZeroesSectors: zeroes ? kMaxZeroingBytes / 512 : 0,
      },
    } : {}),
  }
  return { geometry, maxPayloadBytes }
}

export const nbdTarget: Target<NbdOptions, NbdSpec> = {
  name: 'nbd',
  summary: 'a device served by an NBD server over TCP, a unix socket or TLS',
  // The data lives on the server.
  survivesRestart: true,
  ioModes: ['copy'],
  optionHelp: [
    '--url URL                nbd://host[:port]/export, nbds://... (TLS), nbd+unix:///export?socket=PATH (required)',
    '--export NAME            the export (default: the URL\'s path, else the server\'s default export)',
    '--tls-ca FILE            nbds: the CA certificates (PEM) the server\'s certificate must chain to (default: the system\'s)',
    '--tls-cert FILE          nbds: a client certificate (PEM), for servers that verify their clients',
    '--tls-key FILE           nbds: the client certificate\'s private key (PEM)',
    '--read-only              serve the export read-only (a read-only export always is)',
    '--connect-timeout S      seconds one connection attempt (connect, TLS, handshake) may take (default 10)',
    '--reconnect-timeout S    seconds requests are held while the server is unreachable before they fail with EIO (default 60)',
  ],
  flags: [
    { name: 'url', field: 'url', type: 'string' },
    { name: 'export', field: 'export', type: 'string' },
    { name: 'tls-ca', field: 'tlsCa', type: 'string' },
    { name: 'tls-cert', field: 'tlsCert', type: 'string' },
    { name: 'tls-key', field: 'tlsKey', type: 'string' },
    { name: 'read-only', field: 'readOnly', type: 'boolean' },
    { name: 'connect-timeout', field: 'connectTimeout', type: 'string' },
    { name: 'reconnect-timeout', field: 'reconnectTimeout', type: 'string' },
  ],
  parseOptions(raw, logicalBlockSize) {
    rejectUnknownOptions(raw, ['url', 'export', 'tlsCa', 'tlsCert', 'tlsKey', 'readOnly', 'connectTimeout', 'reconnectTimeout'], 'nbd')
    const url = raw['url']
    if (typeof url !== 'string' || url === '') throw new UsageError('target nbd needs --url (e.g. nbd://server/export)')
    const uri = parseNbdUri(url)
    const exportName = raw['export']
    if (exportName !== undefined) {
      if (typeof exportName !== 'string') throw new UsageError('--export must be a name')
      uri.exportName = exportName
    }
    const tlsFiles: NbdTlsFiles = {}
    const ca = readPem(raw, 'tlsCa', '--tls-ca')
    const cert = readPem(raw, 'tlsCert', '--tls-cert')
    const key = readPem(raw, 'tlsKey', '--tls-key')
    if ((ca ?? cert ?? key) !== undefined && !uri.tls) throw new UsageError('--tls-ca, --tls-cert and --tls-key need an nbds:// URL')
    if ((cert === undefined) !== (key === undefined)) throw new UsageError('--tls-cert and --tls-key go together')
    if (ca !== undefined) tlsFiles.ca = ca
    if (cert !== undefined) tlsFiles.cert = cert
    if (key !== undefined) tlsFiles.key = key
    const readOnly = raw['readOnly'] ?? false
    if (typeof readOnly !== 'boolean') throw new UsageError('--read-only is a switch')
    return {
      url, uri, tlsFiles, readOnly, logicalBlockSize,
      connectTimeoutMs: seconds(raw, 'connectTimeout', '--connect-timeout', kDefaultConnectTimeoutS),
      reconnectTimeoutMs: seconds(raw, 'reconnectTimeout', '--reconnect-timeout', kDefaultReconnectTimeoutS),
    }
  },
  async setup(options) {
    // The client (sockets, TLS) is loaded by the daemon when a device needs it, not by every
    // command and queue thread that lists the targets.
    const { dialNbd } = await import('./nbd/handshake.js')
    const session = await dialNbd({ uri: options.uri, tlsFiles: options.tlsFiles, timeoutMs: options.connectTimeoutMs })
    // A server that closes first must not make the goodbye an uncaught EPIPE.
    session.socket.on('error', () => {})
    session.socket.end(disconnectRequest())
    const exported = session.export
    const { geometry, maxPayloadBytes } = geometryOf(options, exported)
    const multiConn = (exported.flags & NBD_FLAG_CAN_MULTI_CONN) !== 0
    return {
      geometry,
      spec: {
        uri: options.uri,
        tlsFiles: options.tlsFiles,
        export: exported,
        maxPayloadBytes,
        maxZeroingBytes: kMaxZeroingBytes,
        connectTimeoutMs: options.connectTimeoutMs,
        reconnectTimeoutMs: options.reconnectTimeoutMs,
        replyTimeoutMs: kReplyTimeoutMs,
        plainTransport: 'ring',
      },
      describe: { url: options.url, export: options.uri.exportName, tls: options.uri.tls, multiConn, exportBytes: exported.sizeBytes },
      needsEventLoop: true,
      ...(multiConn ? {} : { maxQueues: 1, maxQueuesReason: 'the nbd server does not advertise CAN_MULTI_CONN, so a FLUSH on one queue\'s connection would not cover the writes of another' }),
    }
  },
  undo() {},
  async openQueue(spec, queue) {
    const { NbdQueue } = await import('./nbd/queue.js')
    return new NbdQueue(spec, queue)
  },
}
