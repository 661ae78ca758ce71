#!/usr/bin/env python3
"""A service manager's notification socket, for tests of sd_notify(3) senders: binds a unix
datagram socket at PATH and appends every datagram to OUT as one JSON line {"ms": epoch ms,
"fields": {VAR: VALUE}}, until killed."""
import json
import os
import socket
import sys
import time

path, out = sys.argv[1], sys.argv[2]
if os.path.exists(path):
    os.unlink(path)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
with open(out, 'a', buffering=1) as log:
    while True:
        data = sock.recv(65536).decode()
        fields = dict(line.split('=', 1) for line in data.split('\n') if '=' in line)
        log.write(json.dumps({'ms': int(time.time() * 1000), 'fields': fields}) + '\n')
