// The configuration file: each malformed file is refused with the file, the JSON path in it and
// the problem named exactly; a good one gives the devices as `ublkd add` would make them.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { loadConfig, parseConfig } from '../../src/main/config.js'

const file = '/etc/ublkd/ublkd.json'
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-config-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
const backing = path.join(dir, 'disk.img')
fs.writeFileSync(backing, Buffer.alloc(1 << 20))

const malformed: [string, string][] = [
  ['{', 'not valid JSON: Expected property name or \'}\' in JSON at position 1'],
  ['[]', '/: must be object'],
  ['{"devices": {}}', '/devices: must be array'],
  ['{"disks": []}', '/: unknown field \'disks\''],
  ['{"devices": [{"target": "null"}]}', '/devices/0: must have required property \'name\''],
  ['{"devices": [{"name": "a"}]}', '/devices/0: must have required property \'target\''],
  ['{"devices": [{"name": "a", "target": "floppy"}]}', '/devices/0/target: must be one of the targets (floppy is not)'],
  ['{"devices": [{"name": "a", "target": 3}]}', '/devices/0/target: must be a target name (a string)'],
  ['{"devices": [{"name": "a", "target": "null", "fil": 1}]}', '/devices/0: unknown field \'fil\''],
  ['{"devices": [{"name": "a", "target": "null", "file": "/x"}]}', '/devices/0: unknown field \'file\''],
  ['{"devices": [{"name": "a", "target": "null", "queues": 0}]}', '/devices/0/queues: must be >= 1'],
  ['{"devices": [{"name": "a", "target": "null", "depth": 5000}]}', '/devices/0/depth: must be <= 4096'],
  ['{"devices": [{"name": "a", "target": "null", "queues": "2"}]}', '/devices/0/queues: must be integer'],
  ['{"devices": [{"name": "a", "target": "null", "recovery": "yes"}]}', '/devices/0/recovery: must be one of "off", "reissue", "fail-io"'],
  ['{"devices": [{"name": "a", "target": "null", "logicalBlockSize": 3000}]}', '/devices/0/logicalBlockSize: must be one of 512, 1024, 2048, 4096'],
  ['{"devices": [{"name": "a b", "target": "null"}]}', '/devices/0/name: must match pattern "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"'],
  ['{"devices": [{"name": "a", "target": "null", "hugePageBuffers": "yes"}]}', '/devices/0/hugePageBuffers: must be boolean'],
  ['{"devices": [{"name": "a", "target": "null", "size": "12Q"}]}', '/devices/0: --size: \'12Q\' is not a size (examples: 4096, 512M, 1G, 10T)'],
  ['{"devices": [{"name": "a", "target": "null", "size": 1000}]}', '/devices/0: --size 1000 is not a multiple of the logical block size 512'],
  ['{"devices": [{"name": "a", "target": "memory"}]}', '/devices/0: --size is required for this target'],
  ['{"devices": [{"name": "a", "target": "loop", "file": "/nonexistent/disk.img"}]}', '/devices/0: backing file /nonexistent/disk.img does not exist'],
  ['{"devices": [{"name": "a", "target": "null", "uuid": "nope"}]}', '/devices/0: --uuid must be a UUID such as 5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b, got \'nope\''],
  ['{"devices": [{"name": "a", "target": "null"}, {"name": "a", "target": "null"}]}', '/devices/1: name \'a\' is also /devices/0\'s'],
  ['{"devices": [{"name": "a", "target": "null", "id": 3}, {"name": "b", "target": "null", "id": 3}]}', '/devices/1: id 3 is also /devices/0\'s'],
  ['{"daemon": {"logLevel": "loud"}}', '/daemon/logLevel: must be one of "fatal", "error", "warn", "info", "debug", "trace", "silent"'],
  ['{"daemon": {"port": 9568}}', '/daemon: unknown field \'port\''],
  ['{"daemon": {"kernelTimeoutSeconds": 0}, "devices": [{"name": "a", "target": "null", "queues": 0}]}',
    '/daemon/kernelTimeoutSeconds: must be >= 1; /devices/0/queues: must be >= 1'],
]

t.test(`${malformed.length} malformed files, each refused with its exact message`, async (t) => {
  for (const [text, message] of malformed) {
    t.throws(() => parseConfig(text, file), { code: 'UBLKD_ERR_CONFIG', message: `${file}: ${message}` }, text)
  }
})

t.test('a good file: daemon options, and devices validated as ublkd add does', async (t) => {
  const config = parseConfig(JSON.stringify({
    $schema: 'https://example.invalid/ublkd.schema.json',
    daemon: { metrics: 'off', logLevel: 'debug', kernelTimeoutSeconds: 20 },
    devices: [
      { name: 'scratch', target: 'memory', size: '64M', queues: 2 },
      { name: 'data.0', target: 'loop', file: backing, recovery: 'reissue', directIo: 'off' },
      { name: 'bench_null', target: 'null', size: 4096 * 1024 },
    ],
  }), file)
  t.same(config.daemon, { metrics: 'off', logLevel: 'debug', kernelTimeoutSeconds: 20 })
  t.same(config.devices.map((device) => device.name), ['scratch', 'data.0', 'bench_null'])
  t.match(config.devices[0]!.request, { target: 'memory', queues: 2, name: 'scratch', origin: 'config', targetOptions: { size: '64M' } })
  t.match(config.devices[1]!.request, { target: 'loop', recovery: 'reissue', targetOptions: { file: backing, directIo: 'off' } })
  t.equal(config.devices[2]!.request.recovery, 'off')
})

t.test('loadConfig names an unreadable file; {} is a valid empty configuration', async (t) => {
  t.throws(() => loadConfig(path.join(dir, 'missing.json')), { code: 'UBLKD_ERR_CONFIG', message: `${path.join(dir, 'missing.json')}: cannot read it (ENOENT)` })
  fs.writeFileSync(path.join(dir, 'empty.json'), '{}')
  t.same(loadConfig(path.join(dir, 'empty.json')).devices, [])
})
