// Reconcile plans: declared devices matched with running ones by name; adds, deletions, resizes,
// and every change that cannot be made to a live device refused with its reason.
import t from 'tap'

import { parseConfig } from '../../src/main/config.js'
import { parseDeviceRequest } from '../../src/main/device-request.js'
import { planReconcile, type RunningDevice } from '../../src/main/reconcile.js'

const declare = (devices: Record<string, unknown>[]) => parseConfig(JSON.stringify({ devices }), 'test.json').devices

function running(id: number, fields: Record<string, unknown>, sizeBytes: number, origin?: 'config'): RunningDevice {
  const request = parseDeviceRequest(fields)
  return { id, request: origin ? { ...request, origin } : request, sizeBytes }
}

t.test('new names are added, vanished configured ones deleted, devices added by hand left alone', async (t) => {
  const plan = planReconcile(declare([{ name: 'a', target: 'null' }, { name: 'b', target: 'null', size: '1G' }]), [
    running(0, { target: 'null', name: 'a' }, 250 * 2 ** 30, 'config'),
    running(1, { target: 'null', name: 'gone' }, 2 ** 30, 'config'),
    running(2, { target: 'null', name: 'mine' }, 2 ** 30),
    running(3, { target: 'null' }, 2 ** 30),
  ])
  t.same(plan.add.map((device) => device.name), ['b'])
  t.same(plan.remove.map((device) => device.id), [1])
  t.same(plan.unchanged.map((device) => device.id), [0])
  t.same(plan.resize, [])
  t.same(plan.refused, [])
})

t.test('a changed size is a resize; the same size written another way is no change', async (t) => {
  const plan = planReconcile(declare([{ name: 'a', target: 'null', size: '2G' }, { name: 'b', target: 'null', size: 2 ** 30 }]), [
    running(0, { target: 'null', name: 'a', size: '1G' }, 2 ** 30, 'config'),
    running(1, { target: 'null', name: 'b', size: '1G' }, 2 ** 30, 'config'),
  ])
  t.same(plan.resize.map(({ device, sizeBytes }) => [device.id, sizeBytes]), [[0, 2 ** 31]])
  t.same(plan.unchanged.map((device) => device.id), [1])
})

t.test('changes a live device cannot take are refused, each named with its values', async (t) => {
  const plan = planReconcile(declare([
    { name: 'q', target: 'null', queues: 2 },
    { name: 't', target: 'memory', size: '1G' },
    { name: 'r', target: 'null', recovery: 'reissue' },
    { name: 'hand', target: 'null' },
    { name: 'new', target: 'null', id: 7 },
  ]), [
    running(0, { target: 'null', name: 'q' }, 250 * 2 ** 30, 'config'),
    running(1, { target: 'null', name: 't', size: '1G' }, 2 ** 30, 'config'),
    running(2, { target: 'null', name: 'r' }, 250 * 2 ** 30, 'config'),
    running(3, { target: 'null', name: 'hand' }, 250 * 2 ** 30),
    running(7, { target: 'null' }, 250 * 2 ** 30),
  ])
  t.same(plan.refused, [
    'device q (/dev/ublkb0): queues 1 -> 2 cannot change while it exists; remove it from the file, reload, then declare it again (its data stays in its backing)',
    'device t (/dev/ublkb1): target null -> memory cannot change while it exists; remove it from the file, reload, then declare it again (its data stays in its backing)',
    'device r (/dev/ublkb2): recovery off -> reissue cannot change while it exists; remove it from the file, reload, then declare it again (its data stays in its backing)',
    'device hand: the name is /dev/ublkb3\'s, which was added by hand; rename one of them',
    'device new: id 7 is /dev/ublkb7\'s, added by hand',
  ])
  t.same(plan.add, [])
})
