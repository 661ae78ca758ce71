// GET_QUEUE_AFFINITY's buffer: the driver refuses one of fewer bits than nr_cpu_ids (EINVAL),
// so its size follows the machine's possible CPUs instead of a fixed 1024.
import t from 'tap'

import { affinityMaskBytes } from '../../src/main/control.js'

t.test('whole 64-bit words covering every possible CPU', async (t) => {
  t.equal(affinityMaskBytes('0\n'), 8)
  t.equal(affinityMaskBytes('0-1\n'), 8)
  t.equal(affinityMaskBytes('0-63\n'), 8)
  t.equal(affinityMaskBytes('0-64\n'), 16)
  t.equal(affinityMaskBytes('0-1023\n'), 128)
  t.equal(affinityMaskBytes('0-4095\n'), 512, 'beyond the old fixed 1024')
  t.equal(affinityMaskBytes('0,2-5,8191\n'), 1024, 'lists with holes: the highest id counts')
})
