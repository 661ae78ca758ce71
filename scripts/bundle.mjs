// `npm run build` (after tsc has type-checked src/): bundles the two programs, the CLI (with the
// daemon) and the queue worker, into dist/ with esbuild. Why: loading ~90 modules one by one
// (resolution, stat calls, the CJS export scan of pino and prom-client) was most of a daemon's
// start and of each queue thread's; bundled, a daemon imports in a third of the time (3.2 s ->
// 1.0 s under the test VM's emulation, 157 -> 73 ms on the host) and a queue thread in half.
//
// Layout: dist/main/cli.js (the bin), dist/queue-worker/entry.js (piscina's task file) and shared
// or lazily imported code in dist/chunks/. Code that finds files relative to its own module (the
// addon's build/Release, the worker entry from the queue pool) sits one directory below dist/
// either way.
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
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  // piscina starts its worker threads from its own worker.js, found next to its own files.
  external: ['piscina'],
  // The CommonJS packages bundled here (pino, prom-client, ajv) call require() for Node's modules.
  banner: { js: "import { createRequire as ublkdCreateRequire } from 'node:module'; const require = ublkdCreateRequire(import.meta.url);" },
  logLevel: 'warning',
})
