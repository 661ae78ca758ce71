import t from 'tap'

import { KernelError } from '../../src/common/errors.js'
import { stopIfIdle, type StopCommand } from '../../src/main/safe-stop.js'

// No /sys/block/ublkb4093 here: the disk has no users the daemon can name.
const id = 4093

function kernel(results: unknown[]) {
  const commands: StopCommand[] = []
  return {
    commands,
    runStop: async (command: StopCommand) => {
      commands.push(command)
      return results.shift() ?? null
    },
  }
}

t.test('TRY_STOP_DEV: a passing opener (EBUSY, then not) is waited out', async (t) => {
  const fake = kernel([new KernelError('TRY_STOP_DEV', -16), null])
  await stopIfIdle({ id, tryStopDev: true, runStop: fake.runStop })
  t.same(fake.commands, ['TRY_STOP_DEV', 'TRY_STOP_DEV'])
})

t.test('TRY_STOP_DEV: EBUSY for 2 s is UBLKD_ERR_BUSY, other errors are the kernel\'s', async (t) => {
  const fake = kernel(Array.from({ length: 20 }, () => new KernelError('TRY_STOP_DEV', -16)))
  await t.rejects(stopIfIdle({ id, tryStopDev: true, runStop: fake.runStop }), {
    code: 'UBLKD_ERR_BUSY',
    message: `device ${id} is in use: open by a holder the daemon cannot name; del --force deletes it anyway`,
  })
  // Every 200 ms for 2 s: at most 11 tries; fewer when this process is starved (the tests run
  // niced beside the VMs), but more than one.
  t.ok(fake.commands.length >= 2 && fake.commands.length <= 11, `tried for 2 s: ${fake.commands.length} times`)
  const failing = kernel([new KernelError('TRY_STOP_DEV', -19)])
  await t.rejects(stopIfIdle({ id, tryStopDev: true, runStop: failing.runStop }), { code: 'UBLKD_ERR_KERNEL', errno: -19 })
})

t.test('without TRY_STOP_DEV the disk is claimed first: a disk that cannot be opened is not stopped', async (t) => {
  const fake = kernel([])
  await t.rejects(stopIfIdle({ id, tryStopDev: false, runStop: fake.runStop }), { code: 'ENOENT' })
  t.same(fake.commands, [], 'no STOP_DEV')
})
