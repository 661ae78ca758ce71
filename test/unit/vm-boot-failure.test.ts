import t from 'tap'

import { bootFailureSignature, panicLines } from '../lib/vm.js'

// The console of a boot that died (boot-soak, kernel 7.3, QEMU 7.2 MTTCG on a loaded host), cut short.
const kPanic = `SeaBIOS (version 1.16.2-debian-1.16.2-1)
\x1b[2JBooting from ROM..[    3.694419] Oops: int3: 0000 [#1] SMP NOPTI
[    3.696045] CPU: 0 UID: 0 PID: 0 Comm: swapper/0 Not tainted 7.3.4+deb13-amd64 #1 PREEMPT(lazy)  Debian 7.3.4-1~bpo13+1
[    3.701393] RIP: 0010:sched_clock_idle_wakeup_event+0x5/0x40
[    3.729388]  <IRQ>
[    3.739833]  tick_irq_enter+0x82/0x90
[    3.741395] RIP: 0010:pv_native_safe_halt+0xf/0x20
[    3.909215] Kernel panic - not syncing: Fatal exception in interrupt
`

t.test('a panic is named by its first oops line and the first RIP', async (t) => {
  t.equal(bootFailureSignature(kPanic), 'Oops: int3: 0000 [#1] SMP NOPTI @ sched_clock_idle_wakeup_event+0x5/0x40')
  const lines = panicLines(kPanic)
  t.equal(lines[0], 'Oops: int3: 0000 [#1] SMP NOPTI', 'from the oops on, without the timestamp')
  t.equal(lines.at(-2), 'Kernel panic - not syncing: Fatal exception in interrupt')
})

t.test('a console without an oops has no signature', async (t) => {
  t.equal(bootFailureSignature('SeaBIOS\n[    0.1] ublkd-vm: cannot mount the host root\n'), null)
  t.same(panicLines(''), [])
})

t.test('a soft lockup without a RIP is named by its line alone', async (t) => {
  t.equal(bootFailureSignature('[  327.717008] watchdog: BUG: soft lockup - CPU#0 stuck for 28s! [cryptomgr_test:95]\n'),
    'watchdog: BUG: soft lockup - CPU#0 stuck for 28s! [cryptomgr_test:95]')
})
