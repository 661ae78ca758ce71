// --io-mode: which mode a device gets from its target's modes and the kernel's features, and
// the refusals before anything is created.
import t from 'tap'

import { UBLK_F_AUTO_BUF_REG, UBLK_F_USER_COPY, UBLK_F_USER_RECOVERY } from '../../src/abi/ublk-cmd.js'
import { ioModeFlags, ioModeOfFlags } from '../../src/common/io-mode.js'
import { chooseIoMode, ioModeChoiceField } from '../../src/main/io-mode-choice.js'
import { parseDeviceRequest } from '../../src/main/device-request.js'
import { findTarget } from '../../src/targets/registry.js'

const memory = findTarget('memory')
const loop = findTarget('loop')
const noBuffers = { hugePageBuffers: false, mlockBuffers: false }
const everything = UBLK_F_USER_COPY | UBLK_F_USER_RECOVERY | UBLK_F_AUTO_BUF_REG

t.test('auto: the target\'s fastest mode the kernel offers', async (t) => {
  t.equal(chooseIoMode('auto', memory, everything, noBuffers), 'user-copy')
  t.equal(chooseIoMode('auto', memory, UBLK_F_USER_RECOVERY, noBuffers), 'copy', 'a kernel without user copy')
  t.equal(chooseIoMode('auto', loop, everything, noBuffers), 'copy', 'zero copy is opt-in: auto keeps copy')
  t.equal(chooseIoMode('auto', memory, everything, { hugePageBuffers: true }), 'copy', 'copy mode\'s buffer options ask for copy')
  t.equal(chooseIoMode('auto', memory, everything, { hugePageBuffers: false, mlockBuffers: true }), 'copy')
})

t.test('an explicit mode is given as asked, or refused naming why', async (t) => {
  t.equal(chooseIoMode('copy', memory, everything, noBuffers), 'copy')
  t.equal(chooseIoMode('user-copy', memory, everything, noBuffers), 'user-copy')
  t.equal(chooseIoMode('copy', memory, 0n, { hugePageBuffers: true, mlockBuffers: true }), 'copy')
  t.throws(() => chooseIoMode('user-copy', loop, everything, noBuffers),
    { code: 'UBLKD_ERR_USAGE', message: 'the loop target serves --io-mode copy or zero-copy, not user-copy' })
  t.equal(chooseIoMode('zero-copy', loop, everything, noBuffers), 'zero-copy')
  t.throws(() => chooseIoMode('zero-copy', loop, UBLK_F_USER_COPY, noBuffers),
    { code: 'UBLKD_ERR_UNSUPPORTED', message: /--io-mode zero-copy needs UBLK_F_AUTO_BUF_REG \(Linux 6\.16 or later\)/ })
  t.throws(() => chooseIoMode('zero-copy', memory, everything, noBuffers),
    { code: 'UBLKD_ERR_USAGE', message: 'the memory target serves --io-mode user-copy or copy, not zero-copy' })
  t.throws(() => chooseIoMode('zero-copy', loop, everything, { hugePageBuffers: true }),
    { code: 'UBLKD_ERR_USAGE', message: /--io-mode zero-copy has none/ })
  t.throws(() => chooseIoMode('user-copy', memory, UBLK_F_USER_RECOVERY, noBuffers),
    { code: 'UBLKD_ERR_UNSUPPORTED', message: /--io-mode user-copy needs UBLK_F_USER_COPY \(Linux 6\.12 or later\)/ })
  t.throws(() => chooseIoMode('user-copy', memory, everything, { hugePageBuffers: false, mlockBuffers: true }),
    { code: 'UBLKD_ERR_USAGE', message: /copy mode's I\/O buffers: --io-mode user-copy has none/ })
})

t.test('the mode round-trips through the device\'s flags; the request field is checked', async (t) => {
  t.equal(ioModeOfFlags(ioModeFlags('user-copy') | UBLK_F_USER_RECOVERY), 'user-copy')
  t.equal(ioModeOfFlags(ioModeFlags('copy') | UBLK_F_USER_RECOVERY), 'copy')
  t.equal(ioModeOfFlags(ioModeFlags('zero-copy') | UBLK_F_USER_RECOVERY), 'zero-copy')
  t.equal(ioModeChoiceField(undefined), undefined)
  t.throws(() => ioModeChoiceField('zerocopy'), { code: 'UBLKD_ERR_USAGE', message: "--io-mode must be auto, copy, user-copy, zero-copy, got 'zerocopy'" })
  t.equal(parseDeviceRequest({ target: 'memory', size: '1M', ioMode: 'user-copy' }).ioMode, 'user-copy')
  t.equal(parseDeviceRequest({ target: 'memory', size: '1M' }).ioMode, undefined, 'absent: auto')
  t.same(parseDeviceRequest({ target: 'memory', size: '1M', ioMode: 'copy' }).targetOptions, { size: '1M' }, 'not a target option')
})
