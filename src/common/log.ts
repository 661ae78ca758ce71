// pino loggers: JSON lines on stdout (what journald and log shippers want), or one readable line
// per record when stdout is a terminal. The destination is synchronous in every thread, so a
// worker that exits loses nothing.
import fs from 'node:fs'
import { Writable } from 'node:stream'
import tty from 'node:tty'

import { pino, type Logger } from 'pino'

import type { LogLevel } from './log-level.js'

export type { Logger }

const levelNames: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
const kHiddenFields = new Set(['level', 'time', 'msg', 'pid', 'hostname'])

/** `12:00:01.234 INFO  device live devId=0 queues=2` from one pino JSON record. */
export function formatRecord(line: string): string {
  const record = JSON.parse(line) as Record<string, unknown>
  const time = typeof record['time'] === 'string' ? record['time'].slice(11, 23) : ''
  const level = (levelNames[record['level'] as number] ?? String(record['level'])).padEnd(5)
  const fields = Object.entries(record)
    .filter(([key]) => !kHiddenFields.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
  return `${time} ${level} ${String(record['msg'] ?? '')}${fields.length > 0 ? ` ${fields.join(' ')}` : ''}\n`
}

/** A synchronous stream that writes each JSON record to `fd` as a readable line. */
function readableDestination(fd: number): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.length > 0) fs.writeSync(fd, formatRecord(line))
      }
      callback()
    },
  })
}

// syslog priorities of pino's levels (sd-daemon(3): crit, err, warning, info, debug).
const kJournalPriority: Record<number, number> = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 }

/** `fd` is the journal's stream (systemd sets JOURNAL_STREAM=DEV:INODE for the service's
 *  stdout/stderr): then a `<N>` prefix gives each line its priority. */
export function isJournalStream(fd: number, journalStream = process.env['JOURNAL_STREAM']): boolean {
  if (journalStream === undefined) return false
  try {
    const stat = fs.fstatSync(fd)
    return journalStream === `${stat.dev}:${stat.ino}`
  } catch {
    return false
  }
}

/** `<6>{"level":30,...}`: the line with the syslog priority of its level in front. */
export function withJournalPriority(line: string): string {
  const level = /"level":(\d+)/.exec(line)?.[1]
  return `<${kJournalPriority[Number(level)] ?? 6}>${line}`
}

export function createLogger(level: LogLevel, bindings: Record<string, unknown>, fd = 1): Logger {
  const options = { level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }
  if (tty.isatty(fd)) return pino(options, readableDestination(fd))
  const hooks = isJournalStream(fd) ? { streamWrite: withJournalPriority } : {}
  return pino({ ...options, hooks }, pino.destination({ dest: fd, sync: true }))
}
