// One operation at a time: each starts after the previous one settled, failures included.
import t from 'tap'

import { OperationLane } from '../../src/main/operation-lane.js'

t.test('operations run one after the other, in the order asked, whatever their outcome', async (t) => {
  const lane = new OperationLane()
  const events: string[] = []
  const step = (name: string, ms: number, fail = false) => lane.run(async () => {
    events.push(`${name} start`)
    await new Promise((resolve) => setTimeout(resolve, ms))
    events.push(`${name} end`)
    if (fail) throw new Error(`${name} failed`)
    return name
  })
  const heal = step('heal', 30, true)
  const del = step('delete', 1)
  const detach = step('detach', 1)
  await t.rejects(heal, /heal failed/)
  t.equal(await del, 'delete')
  t.equal(await detach, 'detach')
  t.same(events, ['heal start', 'heal end', 'delete start', 'delete end', 'detach start', 'detach end'])
})

t.test('an operation that throws synchronously does not block the lane', async (t) => {
  const lane = new OperationLane()
  await t.rejects(lane.run(() => { throw new Error('at once') }), /at once/)
  t.equal(await lane.run(async () => 'next'), 'next')
})
