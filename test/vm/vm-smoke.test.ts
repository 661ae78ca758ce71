// The VM harness itself: the right kernel with ublk_drv, the host root read-only, writable
// tmpfs and share, concurrent commands, and the kernel's own block drivers to compare with.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const shareDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-share-'))
const vm = await bootVm({ shareDir })
t.teardown(async () => {
  await vm.shutdown()
  fs.rmSync(shareDir, { recursive: true, force: true })
})

t.test(`boots Debian ${vmKernel} with ublk_drv loaded and 2 CPUs`, async (t) => {
  t.equal((await vm.run('uname -r')).split('.').slice(0, 2).join('.'), vmKernel)
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

t.test('load-module.sh reloads a module loaded with other parameters, or refuses', async (t) => {
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh null_blk nr_devices=2`)
  t.equal((await vm.run('cat /sys/module/null_blk/parameters/nr_devices')).trim(), '2')
  t.equal((await vm.exec('test -b /dev/nullb1')).code, 0, 'reloaded with the new value')
  await vm.run(`${repoRoot}/scripts/vm/load-module.sh null_blk nr_devices=2`)
  const holder = vm.exec('exec 3</dev/nullb0; sleep 5')
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const refused = await vm.exec(`${repoRoot}/scripts/vm/load-module.sh null_blk nr_devices=1`)
  t.not(refused.code, 0, 'a module in use with other parameters is an error')
  t.match(refused.stderr, /null_blk is loaded with nr_devices=2 \(want 1\) and cannot be unloaded/)
  await holder
})

t.test('every module the tests use loads on this kernel', async (t) => {
  for (const module of ['loop', 'nbd', 'ext4', 'xfs', 'dm-mod']) {
    const result = await vm.exec(`${repoRoot}/scripts/vm/load-module.sh ${module}`)
    t.equal(result.code, 0, `${module}: ${result.stderr}`)
  }
  t.match(await vm.run('cat /proc/filesystems'), /\bext4\b[\s\S]*\bxfs\b|\bxfs\b[\s\S]*\bext4\b/)
  await vm.run('dd if=/dev/zero of=/tmp/fs.img bs=1M count=300 2>/dev/null && mkfs.ext4 -q /tmp/fs.img && mkdir -p /tmp/mnt && mount -o loop /tmp/fs.img /tmp/mnt && umount /tmp/mnt')
  await vm.run('mkfs.xfs -q -f /tmp/fs.img && mount -o loop /tmp/fs.img /tmp/mnt && umount /tmp/mnt')
  t.pass('ext4 and xfs mount')
})
