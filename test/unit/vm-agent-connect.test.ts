import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { connectWhenListening } from '../lib/vm.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-connect-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))

/** A socket file nobody listens on: its server was killed, so it did not unlink it. */
function staleSocket(file: string): void {
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(file)}, () => process.kill(process.pid, 'SIGKILL'))`])
}

function listenLater(file: string, ms: number): Promise<net.Server> {
  return new Promise((resolve) => setTimeout(() => {
    fs.rmSync(file, { force: true })
    const server = net.createServer((socket) => socket.end('hello\n')).listen(file, () => resolve(server))
  }, ms))
}

const never = () => {}
const asIs = (error: Error) => error

t.test('a socket file that refuses connections (bound, not yet listening) is retried', async (t) => {
  const file = path.join(dir, 'stale.sock')
  staleSocket(file)
  t.ok(fs.existsSync(file), 'the file is there')
  const server = listenLater(file, 300)
  const socket = await connectWhenListening(file, never, asIs)
  const hello = await new Promise<string>((resolve) => socket.once('data', (data) => resolve(String(data))))
  t.equal(hello, 'hello\n')
  socket.destroy()
  ;(await server).close()
})

t.test('no file yet is retried too; check() gives up', async (t) => {
  const file = path.join(dir, 'later.sock')
  const server = listenLater(file, 200)
  const socket = await connectWhenListening(file, never, asIs)
  t.equal(await new Promise<string>((resolve) => socket.once('data', (data) => resolve(String(data)))), 'hello\n')
  socket.destroy()
  ;(await server).close()
  const deadline = Date.now() + 300
  await t.rejects(connectWhenListening(path.join(dir, 'never.sock'), () => {
    if (Date.now() > deadline) throw new Error('gave up')
  }, asIs), { message: 'gave up' })
})
