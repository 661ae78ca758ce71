// The VM harness itself: the right kernel with ublk_drv, the host root read-only, writable
// tmpfs and share, concurrent commands, and the kernel's own block drivers to compare with.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { bootVm, repoRoot } from '../lib/vm.js'

const shareDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-share-'))
const vm = await bootVm({ shareDir })
t.teardown(async () => {
  await vm.shutdown()
  fs.rmSync(shareDir, { recursive: true, force: true })
})

t.test('boots Debian 6.12 with ublk_drv loaded and 2 CPUs', async (t) => {
  t.match(await vm.run('uname -r'), /^6\.12\./)
  t.equal((await vm.exec('test -c /dev/ublk-control')).code, 0)
  t.equal((await vm.run('nproc')).trim(), '2')
  t.match(await vm.run('node --version'), /^v20\./)
  t.match(await vm.run('fio --version'), /^fio-3/)
})

t.test('the host root is read-only, /tmp and the share are writable', async (t) => {
  t.not((await vm.exec(`touch ${repoRoot}/.vm-write-probe`)).code, 0)
  t.equal((await vm.exec('echo hi > /tmp/probe && cat /tmp/probe')).stdout, 'hi\n')
  await vm.run(`echo from-vm > ${shareDir}/note`)
  t.equal(fs.readFileSync(path.join(shareDir, 'note'), 'utf8'), 'from-vm\n')
})

t.test('commands run concurrently and report exit codes and stderr', async (t) => {
  const started = Date.now()
  const results = await Promise.all([1, 2, 3].map(() => vm.exec('sleep 2')))
  t.ok(Date.now() - started < 5500, `3 x sleep 2 took ${Date.now() - started} ms`)
  t.same(results.map((r) => r.code), [0, 0, 0])
  const failed = await vm.exec('echo oops >&2; exit 3')
  t.equal(failed.code, 3)
  t.equal(failed.stderr, 'oops\n')
  const timedOut = await vm.exec('sleep 30', { timeoutMs: 500 })
  t.equal(timedOut.signal, 'TIMEOUT')
})

t.test('the kernel null_blk driver loads from the module cache', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh null_blk nr_devices=1`)
  t.equal((await vm.exec('test -b /dev/nullb0')).code, 0)
  t.equal((await vm.run('dd if=/dev/nullb0 of=/dev/null bs=1M count=1 2>&1')).includes('1048576 bytes'), true)
})
