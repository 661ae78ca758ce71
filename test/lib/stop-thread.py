#!/usr/bin/env python3
# Inside the test VM: stop one thread of a process (not its whole thread group, as SIGSTOP
# would) for some seconds, as a scheduler that gives it no CPU would: ptrace SEIZE + INTERRUPT
# put that thread alone in a tracing stop (state t); DETACH lets it run on.
#   stop-thread.py TID SECONDS
import ctypes
import os
import sys
import time

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long


def ptrace(request: int, tid: int) -> None:
    if libc.ptrace(request, tid, None, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f'ptrace({request:#x}, {tid}): {os.strerror(error)}')


tid, seconds = int(sys.argv[1]), float(sys.argv[2])
ptrace(PTRACE_SEIZE, tid)
ptrace(PTRACE_INTERRUPT, tid)
os.waitpid(tid, WALL)
time.sleep(seconds)
ptrace(PTRACE_DETACH, tid)
