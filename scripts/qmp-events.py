#!/usr/bin/env python3
"""QMP event logger for the QEMU tests: connects to QEMU's QMP socket (QEMU
waits for it with wait=on, so no event is missed) and appends each event with
a host timestamp to a file. Usage: qmp-events.py SOCKET LOG"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(200):
    try:
        s.connect(sys.argv[1]); break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rw")
f.readline(); f.write('{"execute":"qmp_capabilities"}\n'); f.flush()
with open(sys.argv[2], "w") as out:
    for line in f:
        m = json.loads(line)
        if "event" in m:
            out.write(f"{time.time():.3f} {m['event']} {json.dumps(m.get('data', {}))}\n"); out.flush()
