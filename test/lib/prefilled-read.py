#!/usr/bin/env python3
# Reads COUNT MiB of DEVICE from SKIP MiB on with O_DIRECT into a buffer filled with 0xAA before
# each read, and prints how many bytes read are not zero. A device that completes a READ
# without writing all of its bytes leaves the reader's old bytes there: they show up here,
# where a freshly allocated (kernel-zeroed) buffer would hide them.
#   prefilled-read.py DEVICE SKIP_MIB COUNT_MIB
import mmap
import os
import sys

MIB = 1 << 20
device, skip, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
buffer = mmap.mmap(-1, MIB)
nonzero = 0
for i in range(count):
    buffer.seek(0)
    buffer.write(b'\xaa' * MIB)
    done = os.preadv(fd, [buffer], (skip + i) * MIB)
    if done != MIB:
        sys.exit(f'short read at MiB {skip + i}: {done} bytes')
    nonzero += MIB - buffer[:].count(0)
print(nonzero)
