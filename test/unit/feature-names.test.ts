import t from 'tap'

import { describeFeatureMask } from '../../src/abi/feature-names.js'
import { ublkFeatures } from '../../src/abi/ublk-cmd.js'

t.test('a 6.12 mask (0x1fe) names bits 1-8', async (t) => {
  t.same(describeFeatureMask(0x1fen), {
    mask: 0x1fen,
    names: [
      'UBLK_F_URING_CMD_COMP_IN_TASK', 'UBLK_F_NEED_GET_DATA', 'UBLK_F_USER_RECOVERY',
      'UBLK_F_USER_RECOVERY_REISSUE', 'UBLK_F_UNPRIVILEGED_DEV', 'UBLK_F_CMD_IOCTL_ENCODE',
      'UBLK_F_USER_COPY', 'UBLK_F_ZONED',
    ],
    unknownBits: [],
  })
})

t.test("7.3's UBLK_F_ALL (0x1fffff) names all 21 bits in order", async (t) => {
  const described = describeFeatureMask(0x1fffffn)
  t.same(described.names, ublkFeatures.map(({ name }) => name))
  t.equal(described.names.length, 21)
  t.equal(described.names[0], 'UBLK_F_SUPPORT_ZERO_COPY')
  t.equal(described.names[20], 'UBLK_F_IO_DESC_SIZE')
  t.same(described.unknownBits, [])
})

t.test('bits no kernel we know sets are kept as numbers', async (t) => {
  const mask = (1n << 63n) | (1n << 21n) | (1n << 12n)
  t.same(describeFeatureMask(mask), { mask, names: ['UBLK_F_QUIESCE'], unknownBits: [21, 63] })
})

t.test('an empty mask has no names; a value wider than u64 is a bug', async (t) => {
  t.same(describeFeatureMask(0n), { mask: 0n, names: [], unknownBits: [] })
  t.throws(() => describeFeatureMask(1n << 64n), /not a u64/)
  t.throws(() => describeFeatureMask(-1n), /not a u64/)
})
