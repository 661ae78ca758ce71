// allocBuffer's mappings as the kernel sees them: the VmFlags of /proc/self/smaps say whether
// transparent huge pages may back them (hg) or never will (nh).
import fs from 'node:fs'

import t from 'tap'

import { native } from '../../src/native/addon.js'

function vmFlagsOf(buffer: ArrayBuffer): string[] {
  const start = native.bufferAddress(buffer, 0).toString(16)
  const lines = fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')
  const header = lines.findIndex((line) => line.startsWith(`${start}-`))
  if (header < 0) throw new Error(`no mapping starts at ${start}`)
  const flags = lines.slice(header + 1).find((line) => line.startsWith('VmFlags:'))
  return flags?.slice('VmFlags:'.length).trim().split(/\s+/) ?? []
}

t.test('I/O buffers are kept out of transparent huge pages unless asked for them', async (t) => {
  const size = 4 * 2 ** 20
  const plain = native.allocBuffer(size)
  const huge = native.allocBuffer(size, true)
  t.teardown(() => { native.munmap(plain); native.munmap(huge) })
  t.ok(vmFlagsOf(plain).includes('nh'), 'default: MADV_NOHUGEPAGE')
  t.notOk(vmFlagsOf(plain).includes('hg'))
  t.ok(vmFlagsOf(huge).includes('hg'), 'hugePages: MADV_HUGEPAGE')
  t.notOk(vmFlagsOf(huge).includes('nh'))
  t.equal(new Uint8Array(huge).every((b) => b === 0), true, 'zeroed like the default')
})

t.test('bad arguments are TypeErrors', async (t) => {
  t.throws(() => native.allocBuffer(4096, 'yes' as unknown as boolean), TypeError)
  t.throws(() => native.allocBuffer(0), TypeError)
})
