import t from 'tap'

import { formatSize, parseSize } from '../../src/common/size.js'

t.test('sizes with binary suffixes', async (t) => {
  t.equal(parseSize('4096', 'x'), 4096)
  t.equal(parseSize('512M', 'x'), 512 * 2 ** 20)
  t.equal(parseSize('1g', 'x'), 2 ** 30)
  t.equal(parseSize('10T', 'x'), 10 * 2 ** 40)
  t.equal(parseSize('2GiB', 'x'), 2 * 2 ** 30)
})

t.test('garbage, negative and fractional sizes are usage errors', async (t) => {
  for (const bad of ['', 'abc', '-1', '1.5G', '1X', '99999999999P']) {
    t.throws(() => parseSize(bad, '--size'), { code: 'UBLKD_ERR_USAGE' }, bad)
  }
})

t.test('formatSize prints exact binary units', async (t) => {
  t.equal(formatSize(2 ** 30), '1 GiB')
  t.equal(formatSize(256 * 2 ** 20), '256 MiB')
  t.equal(formatSize(1000), '1000 B')
})
