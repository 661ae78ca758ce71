// The state dir's device records: atomic save, listing, and removal that never removes a newer
// device's record under a reused id.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import t from 'tap'

import { deviceDefaults, parseDeviceRequest } from '../../src/main/device-request.js'
import { StateStore } from '../../src/main/state-store.js'

const request = parseDeviceRequest({ target: 'null' })

t.test('records are saved, listed and removed', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-store-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const store = new StateStore(dir)
  store.save({ version: 1, id: 3, request, createdMs: 100 })
  store.save({ version: 1, id: 1, request, createdMs: 200 })
  fs.writeFileSync(path.join(dir, 'devices', '7.json'), '{ not json')
  const { records, broken } = store.list()
  t.same(records.map((record) => record.id), [1, 3])
  t.equal(records[0]!.request.depth, deviceDefaults.depth)
  t.same(broken, ['7.json'])
  store.remove(3)
  t.same(store.list().records.map((record) => record.id), [1])
})

t.test('removing with createdMs leaves a newer record of the same id alone', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-store-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const store = new StateStore(dir)
  store.save({ version: 1, id: 0, request, createdMs: 200 })
  store.remove(0, 100)
  t.same(store.list().records.map((record) => record.createdMs), [200], 'a newer device holds id 0: kept')
  store.remove(0, 200)
  t.same(store.list().records, [], 'its own record: removed')
  t.doesNotThrow(() => store.remove(0, 200), 'removing a missing record is a no-op')
})
