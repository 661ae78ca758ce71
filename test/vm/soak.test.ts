// The soak's short variant (issue #14; `npm run soak` is the long one, docs/testing.md): the
// same scenario as test/lib/soak.ts for 45 s of fio verify without the kill -9 restarts (the long
// one has two; each costs a minute of emulated CPU here, and test/vm/recovery.test.ts kills and
// restarts daemons under fio verify), and the same verdict (soakFailures): no verify or I/O
// error, no leaked descriptor, RSS within its tolerance, nothing left behind, every operation of
// the scenario done.
import t from 'tap'

import { runSoak, soakFailures, soakSummary } from '../lib/soak.js'
import { commentLogsIfFailed } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

t.test('a 45-second soak: verify, faults, churn; no error, no leak', async (t) => {
  const report = await runSoak(vm, { durationMs: 45_000, iopsPerDevice: 10, restarts: 0, log: (line) => t.comment(line) })
  t.comment(soakSummary(report))
  t.same(soakFailures(report, 0), [])
  t.ok(report.ios > 0, `fio did ${report.ios} I/Os`)
  t.ok(report.operations.adds > 0 && report.operations.heals > 0, 'churn and healed faults happened')
})
