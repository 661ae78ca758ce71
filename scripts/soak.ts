// `npm run soak`: boot the VM and run the soak (test/lib/soak.ts) for --minutes N (default 10, or
// SOAK_MINUTES), print its report, and exit 1 when it found verify or I/O errors, a leak beyond
// the tolerances (docs/testing.md) or any other problem.
import { runSoak, soakFailures, soakSummary } from '../test/lib/soak.js'
import { bootVm, vmKernel } from '../test/lib/vm.js'

function usage(why: string): never {
  process.stderr.write(`soak: ${why}\nusage: npm run soak [-- --minutes N]   (or SOAK_MINUTES=N; UBLKD_VM_KERNEL=6.12|7.3)\n`)
  process.exit(2)
}

let minutes = Number(process.env['SOAK_MINUTES'] ?? 10)
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--minutes') minutes = Number(argv[++i] ?? usage('--minutes needs a value'))
  else usage(`unknown argument ${argv[i]}`)
}
if (!Number.isFinite(minutes) || minutes <= 0) usage(`${minutes} is not a number of minutes`)

const started = Date.now()
const stamp = () => `[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s]`
process.stdout.write(`${stamp()} booting Linux ${vmKernel} (UBLKD_VM_KERNEL) for a ${minutes}-minute soak\n`)
const vm = await bootVm()
let failures: string[]
try {
  const report = await runSoak(vm, { durationMs: minutes * 60_000, log: (line) => process.stdout.write(`${stamp()} ${line}\n`) })
  process.stdout.write(`\n${soakSummary(report)}\n`)
  failures = soakFailures(report)
} finally {
  await vm.shutdown()
}
process.stdout.write(failures.length === 0 ? '\nsoak passed\n' : `\nsoak FAILED:\n${failures.map((f) => `  - ${f}`).join('\n')}\n`)
process.exit(failures.length === 0 ? 0 : 1)
