// `npm run build` (after tsc has type-checked src/): bundles the two programs, the CLI (with the
// daemon) and the queue worker, into dist/ with esbuild. Why: loading ~90 modules one by one
// (resolution, stat calls, the CJS export scan of pino and prom-client) was most of a daemon's
// start and of each queue thread's; bundled, a daemon imports in a third of the time (3.2 s ->
// 1.0 s under the test VM's emulation, 157 -> 73 ms on the host) and a queue thread in half.
//
// CommonJS, not ES modules: Node's ES module loader is itself a few dozen internal modules that
// each process and each queue thread compiles before it loads a first file. A CommonJS file is
// loaded by the loader Node starts with, and piscina require()s the worker's. Measured in one
// test VM boot (three runs each): an add 4.1 -> 3.0 s, a 2-queue add 5.3 -> 4.8 s, a daemon start
// 5.4 -> 5.1 s; a CLI call that only asks the daemon is as fast as before (`--help` 0.1 s slower:
// the one file also holds the daemon, parsed, never run). One file per program: esbuild splits
// only ES module output.
//
// Layout: dist/main/cli.js (the bin) and dist/queue-worker/entry.js (piscina's task file), with
// dist/package.json marking them CommonJS in this "type": "module" package. Code that finds
// files relative to its own module (the addon's build/Release, the worker entry from the queue
// pool) sits one directory below dist/ either way.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { build } from 'esbuild'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const outdir = path.join(repo, 'dist')

fs.rmSync(outdir, { recursive: true, force: true })
await build({
  absWorkingDir: repo,
  entryPoints: ['src/main/cli.ts', 'src/queue-worker/entry.ts'],
  outdir,
  outbase: 'src',
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  // piscina starts its worker threads from its own worker.js, found next to its own files.
  external: ['piscina'],
  // The sources are ES modules that find files next to their own (the addon, the worker entry).
  define: { 'import.meta.url': 'ublkdModuleUrl' },
  inject: ['scripts/module-url.mjs'],
  logLevel: 'warning',
})
// The package is "type": "module"; the bundles are CommonJS (see the top of this file).
fs.writeFileSync(path.join(outdir, 'package.json'), '{ "type": "commonjs" }\n')
