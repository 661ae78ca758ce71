// Boot-soak: boot the test VM many times, one after another, and count the boots that die before
// the agent answers. Each boot must answer the agent and run `true`; it is then shut down. Every
// failure's whole console is kept, and classified: a kernel panic or oops (its first Oops/BUG
// line and RIP), a QEMU exit, an agent timeout. See docs/testing.md.
//   node .build/scripts/vm/boot-soak.js --kernel 7.3 --boots 100 [--load N] [--timeout S]
//     [--out DIR] [--keep-all] [--kernel-only] [--cpu MODEL] [--append WORD]... [--qemu-arg ARG]...
// --load N runs N CPU hogs on the host meanwhile (CI's unit tests run beside a VM's boot).
// --kernel-only boots the kernel alone: its init powers off at once (about a third of a full boot,
// all of the kernel's own boot, SMP bring-up included); a boot passes when it powers off cleanly.
// --cpu, --append, --qemu-arg try another CPU model, kernel arguments, QEMU arguments.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { bootFailureSignature, bootVm, panicLines, VmBootError, vmKernel, vmKernels, type VmKernel, type VmOptions } from '../../test/lib/vm.js'

function usage(why: string): never {
  process.stderr.write(`boot-soak: ${why}\nusage: boot-soak [--kernel 6.12|7.3] [--boots N] [--load N] [--timeout S] ` +
    '[--out DIR] [--keep-all] [--kernel-only] [--cpu MODEL] [--append WORD]... [--qemu-arg ARG]...\n')
  process.exit(2)
}

let kernel: VmKernel = vmKernel
let boots = 100
let load = 0
let timeoutS = 120
let outDir = ''
let cpuModel: string | undefined
let kernelOnly = false
let keepAll = false
const extraKernelArgs: string[] = []
const extraQemuArgs: string[] = []
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const flag = argv[i]!
  const value = (): string => argv[++i] ?? usage(`${flag} needs a value`)
  const count = (): number => {
    const text = value()
    if (!/^\d+$/.test(text)) usage(`${flag} ${text}: not a count`)
    return Number(text)
  }
  switch (flag) {
    case '--kernel': {
      const name = value()
      kernel = vmKernels.find((known) => known === name) ?? usage(`--kernel ${name}: 6.12 or 7.3`)
      break
    }
    case '--boots': boots = count(); break
    case '--load': load = count(); break
    case '--timeout': timeoutS = count(); break
    case '--out': outDir = value(); break
    case '--kernel-only': kernelOnly = true; break
    case '--keep-all': keepAll = true; break
    case '--cpu': cpuModel = value(); break
    case '--append': extraKernelArgs.push(value()); break
    case '--qemu-arg': extraQemuArgs.push(value()); break
    default: usage(`unknown argument ${flag}`)
  }
}
outDir ||= fs.mkdtempSync(path.join(os.tmpdir(), `ublkd-boot-soak-${kernel}-`))
fs.mkdirSync(outDir, { recursive: true })

function log(text: string): void {
  process.stdout.write(`${text}\n`)
}

const hogs: ChildProcess[] = []
for (let i = 0; i < load; i++) {
  hogs.push(spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }))
}
const stopHogs = () => { for (const hog of hogs) hog.kill('SIGKILL') }
process.on('exit', stopHogs)
process.on('SIGINT', () => process.exit(130))
process.on('SIGTERM', () => process.exit(143))

// Everything after `--` goes to init: busybox's poweroff, at once.
const kernelArgs = kernelOnly ? [...extraKernelArgs, 'rdinit=/bin/busybox', '--', 'poweroff', '-f'] : extraKernelArgs
const options: VmOptions = {
  kernel, bootTimeoutMs: timeoutS * 1000, bootAttempts: 1, extraKernelArgs: kernelArgs, extraQemuArgs,
  ...(cpuModel ? { cpuModel } : {}),
}
log(`# boot-soak: kernel ${kernel}${kernelOnly ? ' (kernel only)' : ''}, ${boots} boots, ${load} host CPU hogs, timeout ${timeoutS} s` +
  `${cpuModel ? `, -cpu ${cpuModel}` : ''}${extraKernelArgs.length ? `, append ${extraKernelArgs.join(' ')}` : ''}` +
  `${extraQemuArgs.length ? `, qemu ${extraQemuArgs.join(' ')}` : ''}; consoles of failures in ${outDir}`)

const bootMs: number[] = []
const failures = new Map<string, number[]>()
const warnings = new Map<string, number[]>()
for (let n = 1; n <= boots; n++) {
  const started = Date.now()
  let failure: string | null = null
  let consoleText = ''
  try {
    const vm = await bootVm(options)
    try {
      const readyMs = Date.now() - started
      const result = await vm.exec('true', { timeoutMs: 60_000 })
      consoleText = vm.consoleLog()
      if (result.code !== 0) {
        failure = `\`true\` failed after the agent answered: ${result.code ?? result.signal}`
      } else {
        bootMs.push(readyMs)
      }
    } finally {
      await vm.shutdown()
    }
  } catch (error) {
    if (error instanceof VmBootError && kernelOnly && error.kind === 'qemu-exit' && /reboot: Power down/.test(error.console)) {
      bootMs.push(Date.now() - started)
      consoleText = error.console
    } else if (error instanceof VmBootError) {
      failure = `${error.kind}${error.signature ? `: ${error.signature}` : ''}`
      consoleText = error.console
    } else {
      failure = `error: ${(error as Error).message.split('\n')[0]}`
    }
  }
  const ms = Date.now() - started
  const file = path.join(outDir, `boot-${String(n).padStart(3, '0')}.log`)
  if (failure === null) {
    // A boot that came up but logged an oops or a warning (a soft lockup, say) passes, and is counted.
    const warning = bootFailureSignature(consoleText)
    if (warning) warnings.set(warning, [...(warnings.get(warning) ?? []), n])
    if (keepAll || warning) fs.writeFileSync(file, consoleText)
    log(`boot ${n}: ok ${(ms / 1000).toFixed(1)} s${warning ? `, but the kernel logged: ${warning} (console: ${file})` : ''}`)
    continue
  }
  fs.writeFileSync(file, consoleText)
  failures.set(failure, [...(failures.get(failure) ?? []), n])
  log(`boot ${n}: FAILED after ${(ms / 1000).toFixed(1)} s: ${failure} (console: ${file})`)
  for (const line of panicLines(consoleText).slice(0, 12)) log(`    ${line}`)
}

const failed = [...failures.values()].reduce((sum, list) => sum + list.length, 0)
const sorted = [...bootMs].sort((a, b) => a - b)
const quantile = (q: number) => sorted.length ? (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! / 1000).toFixed(1) : '-'
log(`# kernel ${kernel}, load ${load}: ${failed}/${boots} boots failed (${(100 * failed / boots).toFixed(1)}%); ` +
  `${kernelOnly ? 'time to power-off' : 'time to agent ready'}: median ${quantile(0.5)} s, p90 ${quantile(0.9)} s, max ${quantile(1)} s`)
for (const [failure, which] of failures) log(`#   ${which.length}x ${failure} (boots ${which.join(', ')})`)
for (const [warning, which] of warnings) log(`#   passed, but logged: ${which.length}x ${warning} (boots ${which.join(', ')})`)
process.exit(failed > 0 ? 1 : 0)
