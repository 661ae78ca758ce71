import t from 'tap'

import { formatRecord } from '../../src/common/log.js'
import { resolveLogLevel } from '../../src/common/log-level.js'

t.test('a JSON record becomes one readable line with its bindings', async (t) => {
  const line = formatRecord(JSON.stringify({ level: 30, time: '2026-11-24T20:00:01.234Z', pid: 7, role: 'daemon', devId: 3, queues: [0, 1], msg: 'device live' }))
  t.equal(line, '20:00:01.234 INFO  device live role=daemon devId=3 queues=[0,1]\n')
})

t.test('the level comes from the flag, then LOG_LEVEL, then info', async (t) => {
  const saved = process.env['LOG_LEVEL']
  t.teardown(() => { if (saved === undefined) delete process.env['LOG_LEVEL']; else process.env['LOG_LEVEL'] = saved })
  process.env['LOG_LEVEL'] = 'debug'
  t.equal(resolveLogLevel('warn'), 'warn')
  t.equal(resolveLogLevel(undefined), 'debug')
  process.env['LOG_LEVEL'] = 'nonsense'
  t.equal(resolveLogLevel(undefined), 'info')
})
