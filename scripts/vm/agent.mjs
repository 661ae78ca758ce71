// The in-VM agent: runs the host's commands and sends back their results, over a virtio-serial
// port, as JSON lines.
//   request  {id, cmd, env?, timeoutMs?, stdin?}    runs `/bin/sh -c cmd` in /tmp; many at once
//   reply    {id, code, signal, stdout, stderr, ms}  when the command's process exits
// The first line sent is {ready: true, kernel}. Replies go out when the shell has exited and its
// pipes have closed, or kOutputGraceMs after the exit when a process it started in the background
// still holds them (a daemon must not hold the reply back).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'

const portPath = process.argv[2]
const portFd = fs.openSync(portPath, 'r+')
const kOutputGraceMs = 50
// A command killed at its timeout may not die: a process blocked in the kernel (state D, e.g.
// on I/O that never completes) ignores SIGKILL. Reply this long after the kill anyway, with
// what the blocked tasks are waiting on, rather than never.
const kKillGraceMs = 5000

/** Every task in uninterruptible sleep, with its kernel stack, and the kernel log's tail. */
function blockedTasks() {
  const lines = []
  for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let tids = []
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`)
    } catch {
      continue
    }
    for (const tid of tids) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
        if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'D') continue
        const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
        let stack = ''
        try {
          stack = fs.readFileSync(`/proc/${pid}/task/${tid}/stack`, 'utf8').trim().split('\n').slice(0, 12).join(' < ')
        } catch {}
        lines.push(`D ${pid}/${tid} ${comm}: ${stack}`)
      } catch {}
    }
  }
  return lines.join('\n')
}

function sendMessage(message) {
  const line = Buffer.from(`${JSON.stringify(message)}\n`)
  let written = 0
  while (written < line.length) written += fs.writeSync(portFd, line, written)
}

function run(request) {
  const started = Date.now()
  const child = spawn('/bin/sh', ['-c', request.cmd], {
    cwd: '/tmp',
    env: { ...process.env, ...(request.env ?? {}) },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  })
  const stdout = []
  const stderr = []
  child.stdout.on('data', (chunk) => stdout.push(chunk))
  child.stderr.on('data', (chunk) => stderr.push(chunk))
  let openPipes = 2
  let exited = null
  const onPipeClosed = () => {
    if (--openPipes === 0 && exited) send()
  }
  child.stdout.on('close', onPipeClosed)
  child.stderr.on('close', onPipeClosed)
  child.stdin.on('error', () => {})
  child.stdin.end(request.stdin ?? '')
  let timedOut = false
  const timer = request.timeoutMs
    ? setTimeout(() => {
      timedOut = true
      try { process.kill(-child.pid, 'SIGKILL') } catch {}
      setTimeout(() => {
        if (exited) return
        stderr.push(Buffer.from(`\nagent: the command did not die ${kKillGraceMs} ms after SIGKILL; blocked tasks:\n${blockedTasks()}\n`))
        reply(null, 'TIMEOUT')
      }, kKillGraceMs).unref()
    }, request.timeoutMs)
    : null
  let sent = false
  const send = () => {
    if (sent) return
    sent = true
    child.stdout.destroy()
    child.stderr.destroy()
    sendMessage({
      id: request.id,
      code: timedOut ? null : exited.code,
      signal: timedOut ? 'TIMEOUT' : exited.signal,
      stdout: Buffer.concat(stdout).toString(),
      stderr: Buffer.concat(stderr).toString(),
      ms: Date.now() - started,
    })
  }
  const reply = (code, signal) => {
    if (exited) return
    if (timer) clearTimeout(timer)
    exited = { code, signal }
    if (openPipes === 0) send()
    else setTimeout(send, kOutputGraceMs)
  }
  child.on('exit', reply)
  child.on('error', (error) => {
    stderr.push(Buffer.from(String(error)))
    reply(127, null)
  })
}

let pending = ''
function onData(chunk) {
  pending += chunk
  let newline
  while ((newline = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, newline)
    pending = pending.slice(newline + 1)
    if (line.trim().length === 0) continue
    let request
    try {
      request = JSON.parse(line)
    } catch {
      continue
    }
    if (request.cmd === undefined) continue
    run(request)
  }
}

// A virtio port reads as end-of-file while the host side is not connected: read again later.
function listen() {
  const input = fs.createReadStream(null, { fd: portFd, autoClose: false, highWaterMark: 65536 })
  input.setEncoding('utf8')
  input.on('data', onData)
  input.on('end', () => setTimeout(listen, 100))
  input.on('error', (error) => {
    process.stderr.write(`agent: ${error}\n`)
    process.exit(1)
  })
}
listen()

sendMessage({ ready: true, kernel: os.release() })
