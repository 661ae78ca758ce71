// The service manager's notification protocol against a real unix datagram socket (a python
// listener), and the journal's priority prefix.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import t from 'tap'

import { createLogger, withJournalPriority } from '../../src/common/log.js'
import { ServiceNotifier } from '../../src/main/service-notify.js'
import { until } from '../lib/until.js'

const listener = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../lib/notify-listener.py')
const log = createLogger('silent', {})

// Niced beside the VMs, python3 can take many seconds to start.
const kPatienceMs = 60_000

t.test('datagrams reach the socket, STATUS= only when it changed, watchdog interval from the environment', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-notify-'))
  const socket = path.join(dir, 'notify.sock')
  const out = path.join(dir, 'notify.log')
  const child = spawn('python3', [listener, socket, out], { stdio: 'ignore' })
  t.teardown(() => {
    child.kill()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  await until(() => fs.existsSync(socket), kPatienceMs, 'the listener')
  const notifier = ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: socket, WATCHDOG_USEC: '3000000' })!
  t.equal(notifier.watchdogIntervalMs, 1500, 'half the watchdog timeout')
  notifier.ready('2 devices live (2 declared)')
  notifier.status('2 devices live (2 declared)')
  notifier.status('1 device live (2 declared)')
  notifier.watchdog()
  notifier.reloading()
  notifier.stopping()
  const received = () => (fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '').split('\n')
    .filter((line) => line.endsWith('}')).map((line) => (JSON.parse(line) as { fields: object }).fields)
  await until(() => received().length >= 5, kPatienceMs, 'five datagrams')
  t.same(received(), [
    { READY: '1', STATUS: '2 devices live (2 declared)' },
    { STATUS: '1 device live (2 declared)' },
    { WATCHDOG: '1' },
    { RELOADING: '1', STATUS: 'reloading the configuration' },
    { STOPPING: '1', STATUS: 'stopping' },
  ])
})

t.test('no NOTIFY_SOCKET: no notifier; a watchdog meant for another process is not ours', async (t) => {
  t.equal(ServiceNotifier.fromEnvironment(log, {}), null)
  t.equal(ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' }, 2)!.watchdogIntervalMs, null)
  t.equal(ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '2' }, 2)!.watchdogIntervalMs, 500)
  t.equal(ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: '@x' })!.watchdogIntervalMs, null)
})

t.test('a missing socket is logged, not thrown', async (t) => {
  const notifier = ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: '/nonexistent/notify.sock' })!
  t.doesNotThrow(() => notifier.ready('x'))
})

t.test('journal lines carry the syslog priority of their level', async (t) => {
  t.equal(withJournalPriority('{"level":30,"msg":"x"}\n'), '<6>{"level":30,"msg":"x"}\n')
  t.equal(withJournalPriority('{"level":40,"msg":"x"}\n'), '<4>{"level":40,"msg":"x"}\n')
  t.equal(withJournalPriority('{"level":50,"msg":"x"}\n'), '<3>{"level":50,"msg":"x"}\n')
  t.equal(withJournalPriority('{"level":60,"msg":"x"}\n'), '<2>{"level":60,"msg":"x"}\n')
  t.equal(withJournalPriority('{"level":20,"msg":"x"}\n'), '<7>{"level":20,"msg":"x"}\n')
})
