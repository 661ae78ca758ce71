import t from 'tap'

import { deviceDefaults, parseDeviceRequest } from '../../src/main/device-request.js'
import { findTarget } from '../../src/targets/registry.js'

t.test('defaults follow ublksrv: 1 queue, depth 128; the block size is the target\'s to choose', async (t) => {
  const request = parseDeviceRequest({ target: 'null' })
  t.equal(request.queues, 1)
  t.equal(request.depth, 128)
  t.equal(request.logicalBlockSize, undefined)
  t.equal(request.maxIoBufBytes, deviceDefaults.maxIoBufBytes)
  t.equal(request.id, undefined)
  t.equal(request.ioScheduler, 'none', 'no block-layer scheduler, as the kernel loop driver')
  t.equal(parseDeviceRequest({ target: 'null', ioScheduler: 'mq-deadline' }).ioScheduler, 'mq-deadline')
  t.same(parseDeviceRequest({ target: 'null', ioScheduler: 'kyber' }).targetOptions, {}, 'not a target option')
  t.equal(request.hugePageBuffers, false, 'I/O buffers in 4 KiB pages: resident only where requests touch')
  const huge = parseDeviceRequest({ target: 'null', hugePageBuffers: true })
  t.equal(huge.hugePageBuffers, true)
  t.same(huge.targetOptions, {}, 'not a target option')
})

t.test('every device gets a UUID: the one given (canonical lower case) or a new random one', async (t) => {
  const given = parseDeviceRequest({ target: 'null', uuid: '5F0C3D52-7A1E-4B8E-9A55-1C2D3E4F5A6B' })
  t.equal(given.uuid, '5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b')
  t.same(given.targetOptions, {}, 'not a target option')
  const first = parseDeviceRequest({ target: 'null' }).uuid
  const second = parseDeviceRequest({ target: 'null' }).uuid
  t.match(first, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random (v4) UUID')
  t.not(first, second)
})

t.test('strings from the CLI and numbers from the API are both accepted', async (t) => {
  const request = parseDeviceRequest({ target: 'memory', queues: '2', depth: 64, id: '5', size: '1G' })
  t.equal(request.queues, 2)
  t.equal(request.depth, 64)
  t.equal(request.id, 5)
  t.same(request.targetOptions, { size: '1G' })
})

t.test('bad common fields are usage errors with the flag named', async (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{}, /target is required/],
    [{ target: 'null', depth: 0 }, /--depth must be between 1 and 4096/],
    [{ target: 'null', depth: 4097 }, /--depth/],
    [{ target: 'null', queues: 0 }, /--queues/],
    [{ target: 'null', queues: 'two' }, /--queues must be an integer/],
    [{ target: 'null', id: -1 }, /--number/],
    [{ target: 'null', logicalBlockSize: 1000 }, /--logical-block-size must be one of/],
    [{ target: 'null', depth: 1.5 }, /--depth must be an integer/],
    [{ target: 'null', ioScheduler: '../../x' }, /--io-scheduler must be a scheduler name/],
    [{ target: 'null', ioScheduler: 'None' }, /--io-scheduler/],
    [{ target: 'null', ioScheduler: 3 }, /--io-scheduler/],
    [{ target: 'null', hugePageBuffers: 'yes' }, /--huge-page-buffers must be true or false/],
    [{ target: 'null', uuid: 'not-a-uuid' }, /--uuid must be a UUID/],
    [{ target: 'null', uuid: '5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6' }, /--uuid must be a UUID/],
    [{ target: 'null', uuid: 7 }, /--uuid must be a UUID such as .*, got '7'$/],
  ]
  for (const [raw, message] of cases) {
    t.throws(() => parseDeviceRequest(raw), { code: 'UBLKD_ERR_USAGE', message }, JSON.stringify(raw))
  }
})

t.test('targets validate their own options', async (t) => {
  t.throws(() => findTarget('nope'), { message: /unknown target 'nope' \(known: null, memory, loop, nbd, fault\)/ })
  const memory = findTarget('memory')
  t.throws(() => memory.parseOptions({}, 512), { message: /--size is required/ })
  t.throws(() => memory.parseOptions({ size: '0' }, 512), { message: /greater than 0/ })
  t.throws(() => memory.parseOptions({ size: '1000' }, 512), { message: /not a multiple of the logical block size 512/ })
  t.throws(() => memory.parseOptions({ size: '4K', file: 'x' }, 512), { message: /does not take --file/ })
  t.same(memory.parseOptions({ size: '1M' }, undefined), { sizeBytes: 2 ** 20, maxSizeBytes: 2 ** 20, logicalBlockSize: 512 })
  t.same(findTarget('null').parseOptions({}, 4096), { sizeBytes: 250 * 2 ** 30, logicalBlockSize: 4096 })
})
