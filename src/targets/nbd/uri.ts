// NBD URIs (the NBD project's doc/uri.md): nbd://host[:port][/export], nbds:// for TLS,
// nbd+unix:///[export]?socket=PATH and nbds+unix://. The export is the path without its first
// '/', percent-decoded; no path is the server's default export ("").
import { UsageError } from '../../common/errors.js'

export const kNbdDefaultPort = 10809

export type NbdAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string }

export interface NbdUri {
  address: NbdAddress
  exportName: string
  tls: boolean
}

const kSchemes: ReadonlyMap<string, { tls: boolean; unix: boolean }> = new Map([
  ['nbd:', { tls: false, unix: false }],
  ['nbds:', { tls: true, unix: false }],
  ['nbd+unix:', { tls: false, unix: true }],
  ['nbds+unix:', { tls: true, unix: true }],
])

/** The export name may be at most 4096 bytes (the protocol's limit for strings). */
const kMaxExportNameBytes = 4096

export function parseNbdUri(text: string): NbdUri {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new UsageError(`--url '${text}' is not a URI (expected nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH)`)
  }
  const scheme = kSchemes.get(url.protocol)
  if (!scheme) {
    throw new UsageError(`--url '${text}': the scheme must be nbd, nbds, nbd+unix or nbds+unix, got '${url.protocol.slice(0, -1)}'`)
  }
  if (url.username || url.password) throw new UsageError(`--url '${text}': user names and passwords are not supported`)
  if (url.hash) throw new UsageError(`--url '${text}': a fragment is not allowed`)
  let exportName: string
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''))
  } catch {
    throw new UsageError(`--url '${text}': the export name is not valid percent-encoding`)
  }
  if (Buffer.byteLength(exportName) > kMaxExportNameBytes) throw new UsageError(`--url '${text}': the export name is longer than 4096 bytes`)
  const socket = url.searchParams.get('socket')
  for (const key of url.searchParams.keys()) {
    if (key !== 'socket') throw new UsageError(`--url '${text}': query parameter '${key}' is not supported (TLS files: --tls-ca, --tls-cert, --tls-key)`)
  }
  if (scheme.unix) {
    if (url.host !== '') throw new UsageError(`--url '${text}': a unix socket URI has no host (nbd+unix:///export?socket=PATH)`)
    if (!socket) throw new UsageError(`--url '${text}': nbd+unix needs ?socket=PATH`)
    return { address: { kind: 'unix', path: socket }, exportName, tls: scheme.tls }
  }
  if (socket !== null) throw new UsageError(`--url '${text}': ?socket= belongs to nbd+unix:// URIs`)
  if (url.hostname === '') throw new UsageError(`--url '${text}': no host`)
  const port = url.port === '' ? kNbdDefaultPort : Number(url.port)
  // An IPv6 literal keeps its brackets in URL.hostname.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  return { address: { kind: 'tcp', host, port }, exportName, tls: scheme.tls }
}

/** How logs and `list` show the server: the URI without anything secret (there is nothing). */
export function describeAddress(address: NbdAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`
}
