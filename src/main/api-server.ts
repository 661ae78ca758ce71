// Server side of the control API: parses one request line per connection and hands it over.
import fs from 'node:fs'
import net from 'node:net'

import { UsageError, isUblkdError, messageOf } from '../common/errors.js'
import type { Logger } from '../common/log.js'
import { kMaxRequestBytes, type ApiReply, type ApiRequest } from './api-protocol.js'

export type ApiHandler = (request: ApiRequest) => Promise<ApiReply>
/** Called once a reply was handed to the kernel in full (an upgrade exits only then). */
export type AnsweredHandler = (request: ApiRequest, reply: ApiReply) => void

const kOps: readonly ApiRequest['op'][] = ['add', 'del', 'list', 'recover', 'resize', 'upgrade', 'reload', 'config', 'ping']

function parseRequest(line: string): ApiRequest {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    throw new UsageError('request is not valid JSON')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new UsageError('request must be a JSON object')
  }
  const op = (value as { op?: unknown }).op
  if (!kOps.some((known) => known === op)) {
    throw new UsageError(`unknown op ${JSON.stringify(op)} (${kOps.join(', ')})`)
  }
  if (op === 'add') {
    const device = (value as { device?: unknown }).device
    if (typeof device !== 'object' || device === null || Array.isArray(device)) {
      throw new UsageError('add needs a "device" object')
    }
  }
  return value as ApiRequest
}

function errorReply(error: unknown): ApiReply {
  return {
    ok: false,
    error: { code: isUblkdError(error) ? error.code : 'UBLKD_ERR_DAEMON', message: messageOf(error) },
  }
}

export function listenApi(socket: string, handler: ApiHandler, log: Logger,
  onAnswered: AnsweredHandler = () => {}): Promise<net.Server> {
  const server = net.createServer((connection) => {
    let buffered = ''
    let answered = false
    let request: ApiRequest | null = null
    connection.setEncoding('utf8')
    const answer = (reply: ApiReply) => {
      if (answered) return
      answered = true
      connection.end(`${JSON.stringify(reply)}\n`, () => {
        if (request !== null) onAnswered(request, reply)
      })
    }
    connection.on('error', (error) => log.debug({ err: messageOf(error) }, 'api connection error'))
    connection.on('data', (chunk: string) => {
      buffered += chunk
      if (buffered.length > kMaxRequestBytes) {
        answer(errorReply(new UsageError(`request larger than ${kMaxRequestBytes} bytes`)))
        return
      }
      const newline = buffered.indexOf('\n')
      if (newline < 0 || answered) return
      let parsed: ApiRequest
      try {
        parsed = parseRequest(buffered.slice(0, newline))
      } catch (error) {
        answer(errorReply(error))
        return
      }
      request = parsed
      handler(parsed).then(answer, (error: unknown) => answer(errorReply(error)))
    })
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(socket, () => {
      fs.chmodSync(socket, 0o600)
      server.off('error', reject)
      // After listen, an error is a failed accept (EMFILE, ENFILE, ENOMEM): that client is
      // refused, the daemon and its devices carry on.
      server.on('error', (error) => log.error({ err: messageOf(error) }, 'api socket: accept failed'))
      resolve(server)
    })
  })
}
