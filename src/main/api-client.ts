// Client side of the daemon's control API (used by the CLI).
import net from 'node:net'

import { UblkdError } from '../common/errors.js'
import type { ApiReply, ApiRequest } from './api-protocol.js'

export function callDaemon(socket: string, request: ApiRequest, timeoutMs: number): Promise<ApiReply> {
  return new Promise((resolve, reject) => {
    const connection = net.createConnection(socket)
    let reply = ''
    const timer = setTimeout(() => {
      connection.destroy()
      reject(new UblkdError('UBLKD_ERR_TIMEOUT', `the daemon did not answer within ${timeoutMs} ms`))
    }, timeoutMs)
    connection.setEncoding('utf8')
    connection.on('connect', () => connection.write(`${JSON.stringify(request)}\n`))
    connection.on('data', (chunk: string) => { reply += chunk })
    connection.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      if (error.code === 'EACCES') {
        reject(new UblkdError('UBLKD_ERR_DAEMON', `permission denied on ${socket}: run ublkd as root`))
      } else {
        reject(error)
      }
    })
    connection.on('end', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(reply) as ApiReply)
      } catch {
        reject(new UblkdError('UBLKD_ERR_DAEMON', `malformed reply from the daemon: ${reply.slice(0, 200)}`))
      }
    })
  })
}

/** True when nothing listens on the socket (as opposed to a daemon that failed the request). */
export function isNoDaemon(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code
  return code === 'ENOENT' || code === 'ECONNREFUSED'
}
