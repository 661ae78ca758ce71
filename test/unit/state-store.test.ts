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

t.test('records from before recovery modes read as modes; upgrade fields are kept', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-store-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const store = new StateStore(dir)
  const old = (recovery: boolean) => JSON.stringify({ version: 1, id: 0, request: { ...request, recovery }, createdMs: 1 })
  fs.writeFileSync(path.join(dir, 'devices', '0.json'), old(true))
  t.equal(store.list().records[0]!.request.recovery, 'reissue')
  fs.writeFileSync(path.join(dir, 'devices', '0.json'), old(false))
  t.equal(store.list().records[0]!.request.recovery, 'off')
  store.save({ version: 1, id: 2, request: { ...request, recovery: 'fail-io' }, createdMs: 5, handOverMs: 7, lastPauseMs: 9 })
  t.match(store.list().records.find((record) => record.id === 2), { handOverMs: 7, lastPauseMs: 9, request: { recovery: 'fail-io' } })
  fs.writeFileSync(path.join(dir, 'devices', '3.json'), JSON.stringify({ version: 1, id: 3, request: { ...request, recovery: 'maybe' }, createdMs: 1 }))
  t.same(store.list().broken, ['3.json'], 'an unknown mode makes the record unreadable, not the daemon')
})
