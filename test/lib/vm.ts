// Boots one of Debian's kernels (6.12 or 7.3, see vmKernel) under QEMU (software emulation) with
// the host's root as the VM's read-only root over 9p, and runs commands in it through the in-VM
// agent (scripts/vm/agent.mjs) over a virtio-serial port. One boot serves many commands, also
// concurrently. Assets come from scripts/vm/prepare.sh.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root: the nearest directory above this file holding package.json. */
export const repoRoot: string = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error('repository root not found')
    dir = parent
  }
  return dir
})()

/** The kernels the harness boots (scripts/vm/prepare.sh fetches each). */
export const vmKernels = ['6.12', '7.3'] as const
export type VmKernel = typeof vmKernels[number]

/** The kernel this process boots: UBLKD_VM_KERNEL (scripts/test.sh runs test/vm once per
 *  kernel), the newest when unset. */
export const vmKernel: VmKernel = (() => {
  const wanted = process.env['UBLKD_VM_KERNEL'] ?? '7.3'
  const kernel = vmKernels.find((name) => name === wanted)
  if (!kernel) throw new Error(`UBLKD_VM_KERNEL=${wanted}: the harness boots ${vmKernels.join(' or ')}`)
  return kernel
})()

export interface VmOptions {
  /** Default: vmKernel. */
  kernel?: VmKernel
  cpus?: number
  memMiB?: number
  /** A host directory mounted read-write at the same path inside the VM. */
  shareDir?: string
  bootTimeoutMs?: number
  /** Guest TCP ports to forward from free ports on the host's 127.0.0.1 (see Vm.hostPort). */
  forwardPorts?: number[]
  /** For experiments (scripts/vm/boot-soak.ts): the -cpu model instead of kCpuModel, more
   *  kernel command-line words, more QEMU arguments. */
  cpuModel?: string
  extraKernelArgs?: string[]
  extraQemuArgs?: string[]
  /** Boots tried before giving up on one that dies before the agent answers; default 3. */
  bootAttempts?: number
  /** 'systemd': systemd is PID 1 (scripts/vm/init), running the agent as a unit; default: the
   *  initramfs runs the agent itself. */
  init?: 'agent' | 'systemd'
}

/** How a boot failed before the agent answered: the kernel panicked, QEMU exited otherwise,
 *  the agent did not answer in time, or its port failed. */
export type VmBootFailure = 'panic' | 'qemu-exit' | 'agent-timeout' | 'agent-error'

/** A boot that died before the agent answered, with the whole console and, for a kernel panic
 *  or oops, its signature (first Oops/BUG/panic line and the RIP). */
export class VmBootError extends Error {
  constructor(readonly kind: VmBootFailure, readonly why: string, readonly console: string) {
    super(`VM boot failed (${kind}): ${why}\n${bootFailureSignature(console) ?? ''}\nconsole tail:\n${tail(console, 40)}`)
  }

  get signature(): string | null {
    return bootFailureSignature(this.console)
  }
}

const kOopsLine = /(Kernel panic - not syncing.*|BUG: .*|Oops: .*|general protection fault.*|kernel BUG at .*|WARNING: CPU: .*|watchdog: .*lockup.*|rcu: .*(stall|Stall).*)/
const kRipLine = /RIP: [0-9a-f]{4}:(\S+)/

/** The text without terminal escapes (the firmware clears the screen). */
function withoutEscapes(text: string): string {
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
}

/** The console's lines of a kernel oops or panic (from the first such line, at most 60), without
 *  terminal escapes and timestamps (and what the firmware printed before one on its line); none
 *  when the kernel reported nothing. */
export function panicLines(consoleText: string): string[] {
  const lines = withoutEscapes(consoleText).split(/\r?\n/)
    .map((line) => line.replace(/^.*?\[\s*\d+\.\d+\]\s?/, ''))
  const first = lines.findIndex((line) => kOopsLine.test(line))
  return first < 0 ? [] : lines.slice(first, first + 60)
}

/** "<first oops line> @ <RIP symbol>", or null when the console shows no oops. */
export function bootFailureSignature(consoleText: string): string | null {
  const lines = panicLines(consoleText)
  if (lines.length === 0) return null
  const oops = kOopsLine.exec(lines[0]!)![1]!.trim()
  const rip = lines.map((line) => kRipLine.exec(line)?.[1]).find((symbol) => symbol !== undefined)
  return rip ? `${oops} @ ${rip}` : oops
}

export interface ExecOptions {
  timeoutMs?: number
  env?: Record<string, string>
  stdin?: string
}

export interface ExecResult {
  code: number | null
  signal: string | null
  stdout: string
  stderr: string
  ms: number
}

export interface Vm {
  /** Run `/bin/sh -c cmd` in the VM (cwd /tmp); never throws for a non-zero exit. */
  exec(cmd: string, opts?: ExecOptions): Promise<ExecResult>
  /** Like exec, but throws unless the command exits 0; returns its stdout. */
  run(cmd: string, opts?: ExecOptions): Promise<string>
  /** The serial console so far (kernel messages), for diagnostics. */
  consoleLog(): string
  /** The host port (on 127.0.0.1) forwarded to a guest port given in VmOptions.forwardPorts. */
  hostPort(guestPort: number): number
  shutdown(): Promise<void>
}

async function freeHostPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

/**
 * QEMU's most capable emulated CPU, without ERMS. TCG emulates `rep movsb` one byte per
 * translated-block iteration, and with ERMS the guest kernel copies to and from user memory
 * (copy_to_user) and clears pages that way: a 4 KiB pread into a user buffer then costs about
 * ten times a 4 KiB memcpy, where on hardware the two are alike. Without ERMS the kernel uses
 * 8-byte moves. The kernel's own drivers copy with memcpy either way, so ERMS under TCG taxes
 * exactly the copies a userspace server makes (docs/performance.md measures both).
 */
const kCpuModel = process.env['UBLKD_VM_CPU'] ?? 'max,-erms'
/**
 * Both vCPUs on one host thread (round-robin TCG), not one thread each (MTTCG, QEMU's default).
 * Under MTTCG a vCPU can run a stale translation of kernel text another vCPU just patched. The
 * guest flips static keys at run time (text_poke: an int3 first, then the new bytes, an IPI to
 * every CPU after each step); now and then a vCPU still executes the int3 after the patch is
 * done, and the kernel dies of "Oops: int3 ... Fatal exception in interrupt". Seen at the
 * sched_clock_stable() sites (sched_clock_tick in CI, sched_clock_idle_wakeup_event in
 * boot-soak), whose key is flipped late in boot and which the patching IPIs themselves run
 * through: 1 of 40 kernel boots on a loaded host (QEMU 7.2, Linux 7.3). With one thread no vCPU
 * runs while another writes code, and QEMU drops the translations a write hits before any other
 * vCPU runs again. Still two vCPUs; boots took as long (docs/testing.md, scripts/vm/boot-soak.ts).
 */
const kAccel = process.env['UBLKD_VM_ACCEL'] ?? 'tcg,thread=single'
/** Where prepare.sh put the kernels ($UBLKD_VM_CACHE, or the repo's .cache/vm). */
export const vmCacheDir: string = process.env['UBLKD_VM_CACHE'] ?? path.join(repoRoot, '.cache', 'vm')
const kDefaultExecTimeoutMs = 300_000

const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const qemu of running) qemu.kill('SIGKILL')
})

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n')
}

let bootRetries = 0

/** Boots retried in this process so far (see bootVm). */
export function vmBootRetries(): number {
  return bootRetries
}

process.on('exit', () => {
  if (bootRetries > 0) process.stderr.write(`# vm boot retries: ${bootRetries}\n`)
})

/**
 * Boots the VM. A boot that dies before the agent answered (a guest kernel panic, QEMU gone, no
 * agent in time) is tried again, at most bootAttempts times in all (default 3): under TCG a
 * rare boot can die of emulation trouble that says nothing about ublkd. Each retry prints the
 * guest's panic lines to stderr and counts in vmBootRetries() and the `# vm boot retries: N`
 * line printed at exit; with UBLKD_VM_BOOT_RETRY_LOG set it also appends a line to that file
 * (scripts/test.sh sums them). Once the agent has answered nothing is retried: a VM that dies
 * later is the test's failure.
 */
export async function bootVm(options: VmOptions = {}): Promise<Vm> {
  const attempts = Math.max(1, options.bootAttempts ?? 3)
  for (let attempt = 1; ; attempt++) {
    try {
      return await bootOnce(options)
    } catch (error) {
      if (!(error instanceof VmBootError) || attempt >= attempts) throw error
      bootRetries++
      const lines = panicLines(error.console)
      const what = `${options.kernel ?? vmKernel} boot ${attempt}/${attempts} failed (${error.kind}: ${error.why})` +
        `${error.signature ? `: ${error.signature}` : ''}`
      process.stderr.write(`# vm boot retry: ${what}; booting again\n` +
        `${(lines.length > 0 ? lines.slice(0, 40) : tail(withoutEscapes(error.console), 20).split('\n')).map((line) => `#   ${line}`).join('\n')}\n`)
      const logFile = process.env['UBLKD_VM_BOOT_RETRY_LOG']
      if (logFile) fs.appendFileSync(logFile, `${what}\n`)
    }
  }
}

async function bootOnce(options: VmOptions): Promise<Vm> {
  const kernelName = options.kernel ?? vmKernel
  const assets = path.join(vmCacheDir, kernelName)
  const kernel = path.join(assets, 'vmlinuz')
  const initramfs = path.join(assets, 'initramfs.cpio.gz')
  if (!fs.existsSync(kernel) || !fs.existsSync(initramfs)) {
    throw new Error(`VM assets missing in ${assets}: run scripts/vm/prepare.sh ${kernelName}`)
  }
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-vm-'))
  const agentSocket = path.join(workDir, 'agent.sock')
  // no_timer_check: at boot the kernel checks that the PIT ticks through the IO-APIC, at least 4
  // ticks within a ~10-tick TSC delay, and panics "IO-APIC + timer doesn't work!" when not. On a
  // loaded host QEMU's timer thread can fall that far behind the vCPU (seen in boot-soak with
  // CI-like load); QEMU's routing is fine, only the check's timing is not.
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'no_timer_check', `ublkd.repo=${repoRoot}`,
    `ublkd.modules=${path.join(assets, 'modules')}`, ...(options.extraKernelArgs ?? [])]
  const args = [
    '-accel', kAccel, '-cpu', options.cpuModel ?? kCpuModel, '-smp', String(options.cpus ?? 2), '-m', String(options.memMiB ?? 2048),
    '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
    '-kernel', kernel, '-initrd', initramfs,
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-device', 'virtio-serial-pci',
    '-chardev', `socket,id=agent,path=${agentSocket},server=on,wait=off`,
    '-device', 'virtserialport,chardev=agent,name=agent',
  ]
  const forwards = new Map<number, number>()
  if (options.forwardPorts && options.forwardPorts.length > 0) {
    for (const guestPort of options.forwardPorts) forwards.set(guestPort, await freeHostPort())
    const rules = [...forwards].map(([guest, host]) => `hostfwd=tcp:127.0.0.1:${host}-:${guest}`).join(',')
    args.push('-netdev', `user,id=net0,${rules}`, '-device', 'virtio-net-pci,netdev=net0')
    append.push('ublkd.net=1')
  }
  if (options.init === 'systemd') append.push('ublkd.init=systemd')
  if (options.shareDir) {
    args.push('-virtfs', `local,path=${options.shareDir},mount_tag=share,security_model=none,multidevs=remap`)
    append.push(`ublkd.share=${options.shareDir}`)
  }
  args.push(...(options.extraQemuArgs ?? []), '-append', append.join(' '))

  // QEMU dies with this process however it ends: a test file killed at tap's timeout (SIGALRM)
  // runs no exit handler, and an orphaned VM went on eating a CPU for the rest of the run.
  const qemu = spawn('setpriv', ['--pdeathsig', 'KILL', 'qemu-system-x86_64', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  running.add(qemu)
  let consoleText = ''
  qemu.stdout!.setEncoding('utf8').on('data', (chunk: string) => { consoleText += chunk })
  qemu.stderr!.setEncoding('utf8').on('data', (chunk: string) => { consoleText += chunk })
  let exited = false
  // 'close', not 'exit': after the console's last bytes (a panic's) were read.
  const exitPromise = new Promise<void>((resolve) => qemu.on('close', () => {
    exited = true
    running.delete(qemu)
    resolve()
  }))

  const pending = new Map<number, (result: ExecResult) => void>()
  let nextId = 1
  let socket: net.Socket | null = null
  const cleanup = () => fs.rmSync(workDir, { recursive: true, force: true })

  try {
    socket = await connectAgent(agentSocket, () => exited, options.bootTimeoutMs ?? 120_000, () => consoleText)
  } catch (error) {
    qemu.kill('SIGKILL')
    await exitPromise
    cleanup()
    throw error
  }
  const agent = socket
  agent.on('error', () => {})

  const vm: Vm = {
    exec(cmd, opts = {}) {
      if (exited) return Promise.reject(new Error(`VM is gone; console:\n${tail(consoleText, 30)}`))
      const id = nextId++
      const timeoutMs = opts.timeoutMs ?? kDefaultExecTimeoutMs
      return new Promise<ExecResult>((resolve) => {
        pending.set(id, resolve)
        agent.write(`${JSON.stringify({ id, cmd, env: opts.env, stdin: opts.stdin, timeoutMs })}\n`)
      })
    },
    async run(cmd, opts) {
      const result = await vm.exec(cmd, opts)
      if (result.code !== 0) {
        throw new Error(`in VM: \`${cmd}\` exited ${result.code ?? result.signal}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`)
      }
      return result.stdout
    },
    consoleLog: () => consoleText,
    hostPort(guestPort) {
      const port = forwards.get(guestPort)
      if (port === undefined) throw new Error(`guest port ${guestPort} is not forwarded`)
      return port
    },
    async shutdown() {
      if (!exited) {
        agent.end()
        qemu.kill('SIGTERM')
        const timer = setTimeout(() => qemu.kill('SIGKILL'), 5000)
        await exitPromise
        clearTimeout(timer)
      }
      cleanup()
    },
  }

  let buffered = ''
  agent.on('data', (chunk: string) => {
    buffered += chunk
    let newline
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline)
      buffered = buffered.slice(newline + 1)
      const reply = JSON.parse(line) as ExecResult & { id?: number }
      if (reply.id === undefined) continue
      const resolve = pending.get(reply.id)
      pending.delete(reply.id)
      resolve?.({ code: reply.code, signal: reply.signal, stdout: reply.stdout, stderr: reply.stderr, ms: reply.ms })
    }
  })
  void exitPromise.then(() => {
    for (const [, resolve] of pending) {
      resolve({ code: null, signal: 'VM_EXITED', stdout: '', stderr: tail(consoleText, 30), ms: 0 })
    }
    pending.clear()
  })
  return vm
}

/**
 * Connect to a unix socket a server is about to listen on. Its file exists from bind() on, before
 * listen(): until then a connect is refused (ECONNREFUSED), as it is while there is no file
 * (ENOENT); both are retried every 50 ms, after `check()`, which throws to give up. Any other
 * error is `fail(error)`.
 */
export async function connectWhenListening(socketPath: string, check: () => void,
  fail: (error: Error) => Error): Promise<net.Socket> {
  for (;;) {
    check()
    const result = await new Promise<net.Socket | NodeJS.ErrnoException>((resolve) => {
      const socket = net.createConnection(socketPath)
      const onError = (error: NodeJS.ErrnoException) => resolve(error)
      socket.once('error', onError)
      socket.once('connect', () => {
        socket.off('error', onError)
        resolve(socket)
      })
    })
    if (result instanceof net.Socket) return result
    if (result.code !== 'ECONNREFUSED' && result.code !== 'ENOENT') throw fail(result)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Connect to the agent's port once QEMU listens on it, and wait for the agent's hello. */
async function connectAgent(socketPath: string, hasExited: () => boolean, timeoutMs: number,
  consoleText: () => string): Promise<net.Socket> {
  const deadline = Date.now() + timeoutMs
  const fail = (kind: VmBootFailure, why: string) => {
    const text = consoleText()
    return new VmBootError(/Kernel panic - not syncing/.test(text) ? 'panic' : kind, why, text)
  }
  const socket = await connectWhenListening(socketPath, () => {
    if (hasExited()) throw fail('qemu-exit', 'qemu exited')
    if (Date.now() > deadline) throw fail('agent-timeout', 'no agent socket')
  }, (error) => fail(hasExited() ? 'qemu-exit' : 'agent-error', error.message))
  socket.setEncoding('utf8')
  await new Promise<void>((resolve, reject) => {
    let hello = ''
    const timer = setInterval(() => {
      if (hasExited()) done(fail('qemu-exit', 'qemu exited before the agent was ready'))
      else if (Date.now() > deadline) done(fail('agent-timeout', `agent not ready within ${timeoutMs} ms`))
    }, 100)
    const onData = (chunk: string) => {
      hello += chunk
      const newline = hello.indexOf('\n')
      if (newline < 0) return
      const rest = hello.slice(newline + 1)
      if (rest.length > 0) socket.unshift(rest)
      done(null)
    }
    const done = (error: Error | null) => {
      clearInterval(timer)
      socket.off('data', onData)
      if (error) {
        socket.destroy()
        reject(error)
      } else {
        resolve()
      }
    }
    socket.on('data', onData)
    socket.on('error', (error) => done(fail(hasExited() ? 'qemu-exit' : 'agent-error', error.message)))
  })
  return socket
}
