// Recovery modes: the add field (names, and the booleans of the API and records before modes),
// and the CLI's `--recovery [MODE]`.
import t from 'tap'

import { parseDeviceRequest } from '../../src/main/device-request.js'
import { recoveryModeField, withRecoveryModes } from '../../src/main/recovery-mode.js'

t.test('mode names, booleans of older clients and records, absent is off', async (t) => {
  t.equal(recoveryModeField(undefined), 'off')
  t.equal(recoveryModeField(false), 'off')
  t.equal(recoveryModeField(true), 'reissue')
  for (const mode of ['off', 'reissue', 'fail-io']) t.equal(recoveryModeField(mode), mode)
  t.throws(() => recoveryModeField('sometimes'), { code: 'UBLKD_ERR_USAGE', message: "--recovery must be off, reissue, fail-io, got 'sometimes'" })
  t.throws(() => recoveryModeField(1), { code: 'UBLKD_ERR_USAGE' })
  t.equal(parseDeviceRequest({ target: 'null' }).recovery, 'off')
  t.equal(parseDeviceRequest({ target: 'null', recovery: 'fail-io' }).recovery, 'fail-io')
  t.same(parseDeviceRequest({ target: 'null', recovery: 'fail-io' }).targetOptions, {}, 'not a target option')
})

t.test('--recovery takes an optional mode', async (t) => {
  t.same(withRecoveryModes(['-t', 'null', '--recovery']), ['-t', 'null', '--recovery=reissue'], 'alone: reissue')
  t.same(withRecoveryModes(['--recovery', '-t', 'null']), ['--recovery=reissue', '-t', 'null'], 'before another flag')
  t.same(withRecoveryModes(['--recovery', 'fail-io', '-t', 'null']), ['--recovery=fail-io', '-t', 'null'])
  t.same(withRecoveryModes(['--recovery', 'off']), ['--recovery=off'])
  t.same(withRecoveryModes(['--recovery=reissue']), ['--recovery=reissue'], 'the = form as it is')
  t.same(withRecoveryModes(['--recovery', 'later']), ['--recovery=reissue', 'later'], 'not a mode: left as an argument')
})
