#!/usr/bin/env python3
# Reads 4 KiB from the start of DEVICE with O_DIRECT into a buffer SHIFT bytes past a page
# boundary, then into an aligned one, and prints `read N same|differs` or the errno's name
# (EINVAL: the device's DMA alignment refused the buffer at submission).
#   misaligned-read.py DEVICE SHIFT
import errno
import mmap
import os
import sys

device, shift = sys.argv[1], int(sys.argv[2])
fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
memory = mmap.mmap(-1, 3 * 4096)
aligned = memoryview(memory)[:4096]
shifted = memoryview(memory)[4096 + shift:4096 + shift + 4096]
if os.preadv(fd, [aligned], 0) != 4096:
    sys.exit('short aligned read')
try:
    done = os.preadv(fd, [shifted], 0)
except OSError as error:
    print(errno.errorcode[error.errno])
    sys.exit(0)
print(f'read {done} {"same" if bytes(shifted[:done]) == bytes(aligned[:done]) else "differs"}')
