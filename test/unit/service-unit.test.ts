// The shipped systemd unit (examples/systemd/ublkd.service) as systemd itself reads it:
// `systemd-analyze verify` with ExecStart pointing at this checkout's ublkd. Unknown keys and
// bad values are only warnings for it, so any output fails the test.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import t from 'tap'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

t.test('systemd-analyze verify accepts the unit without a warning', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-unit-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const cli = path.join(dir, 'ublkd')
  fs.writeFileSync(cli, `#!/bin/sh\nexec ${process.execPath} ${repo}/dist/main/cli.js "$@"\n`, { mode: 0o755 })
  const unit = fs.readFileSync(path.join(repo, 'examples/systemd/ublkd.service'), 'utf8')
  t.match(unit, /^Type=notify$/m)
  t.match(unit, /^ExecReload=\/usr\/local\/bin\/ublkd reload$/m)
  t.match(unit, /^WatchdogSec=\d+$/m)
  fs.writeFileSync(path.join(dir, 'ublkd.service'), unit.replaceAll('/usr/local/bin/ublkd', cli))
  const result = spawnSync('systemd-analyze', ['verify', path.join(dir, 'ublkd.service')], { encoding: 'utf8' })
  t.equal(result.error, undefined, 'systemd-analyze runs')
  t.equal(result.status, 0, result.stderr)
  t.equal(`${result.stdout}${result.stderr}`, '', 'not a warning')

  // The check has teeth: a misspelt key is reported.
  fs.writeFileSync(path.join(dir, 'typo.service'), unit.replaceAll('/usr/local/bin/ublkd', cli).replace('WatchdogSec', 'WatchdogSek'))
  const typo = spawnSync('systemd-analyze', ['verify', path.join(dir, 'typo.service')], { encoding: 'utf8' })
  t.match(typo.stderr, /Unknown key 'WatchdogSek'/)
})
