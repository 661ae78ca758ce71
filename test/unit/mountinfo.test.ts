// /proc/PID/mountinfo lines as the kernel writes them.
import t from 'tap'

import { parseMountinfo } from '../../src/main/mountinfo.js'

t.test('device, mount point (unescaped), optional fields and filesystem type of each line', async (t) => {
  const text = [
    '22 1 0:21 / / rw,relatime shared:1 - 9p rootfs rw,trans=virtio',
    '41 22 259:0 / /tmp/my\\040disk rw,relatime shared:20 master:3 - ext4 /dev/ublkb0 rw',
    '42 22 259:1 / /mnt/a\\134b rw - xfs /dev/ublkb1 rw',
    '',
  ].join('\n')
  t.same(parseMountinfo(text), [
    { device: '0:21', mountPoint: '/', optional: ['shared:1'], fsType: '9p' },
    { device: '259:0', mountPoint: '/tmp/my disk', optional: ['shared:20', 'master:3'], fsType: 'ext4' },
    { device: '259:1', mountPoint: '/mnt/a\\b', optional: [], fsType: 'xfs' },
  ])
})

t.test('a line that is not a mountinfo entry is skipped', async (t) => {
  t.same(parseMountinfo('garbage\n1 2 3'), [])
})
