// `npm run bench -- micro [ID...]`: every bench/micro/*.bench.ts (or those whose id is given),
// printed as a table and written to bench/results/micro.json. Run node with --expose-gc (run.sh
// does) so the heap-growth check can settle the heap.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { repoRoot } from '../../test/lib/vm.js'
import { sink, type MicroBench, type MicroResult } from './harness.js'

const here = path.dirname(fileURLToPath(import.meta.url))
const wanted = process.argv.slice(2)

const benches: MicroBench[] = []
for (const file of fs.readdirSync(here).filter((name) => name.endsWith('.bench.js')).sort()) {
  const module = (await import(path.join(here, file))) as { benches: MicroBench[] }
  benches.push(...module.benches)
}
const selected = benches.filter((bench) => wanted.length === 0 || wanted.includes(bench.id))
if (selected.length === 0) {
  process.stderr.write(`no micro-benchmark matches ${wanted.join(' ')} (known: ${benches.map((b) => b.id).join(' ')})\n`)
  process.exit(2)
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
process.stdout.write(`ublkd micro-benchmarks, ${new Date().toISOString()}: node ${process.version}, ${os.cpus().length} x ${cpu}, ` +
  `load ${os.loadavg()[0]!.toFixed(2)}; medians of several rounds after warm-up (host, no VM)\n\n`)
const results: (MicroResult & { id: string })[] = []
for (const bench of selected) {
  for (const result of await bench.run()) {
    results.push({ id: bench.id, ...result })
    const value = result.unit === 'B/request' ? result.value.toFixed(3) : result.value.toFixed(1)
    process.stdout.write(`${result.name.padEnd(62)} ${value.padStart(9)} ${result.unit.padEnd(9)}  ${result.detail}\n`)
  }
}
const dir = path.join(repoRoot, 'bench', 'results')
fs.mkdirSync(dir, { recursive: true })
fs.writeFileSync(path.join(dir, 'micro.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpu, results }, null, 2)}\n`)
process.stdout.write(`\nwritten: bench/results/micro.json${sink.value === Number.MIN_VALUE ? ' ' : ''}\n`)
