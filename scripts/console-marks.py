#!/usr/bin/env python3
"""Follows a QEMU console log as QEMU writes it (scripts/vm-systemd-test.sh):
prints the guest test's `VMTEST` lines, and appends them and its `VMTS`
timing marks to MARKS with the host time each line was seen (polled every
5 ms, so the host time of a mark is at most a few ms after the guest wrote
it). Returns once PID (QEMU) has exited and the log is read to its end.
Usage: console-marks.py CONSOLE MARKS PID"""
import os
import sys
import time

console, marks, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])


def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


while not os.path.exists(console):
    if not alive():
        sys.exit(0)
    time.sleep(0.005)
with open(console, "rb") as f, open(marks, "a") as out:
    buf = b""
    while True:
        running = alive()
        chunk = f.read()
        if chunk:
            now = time.time()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip("\r")
                if line.startswith(("VMTEST", "VMTS")):
                    out.write(f"{now:.3f} {line}\n")
                    out.flush()
                if line.startswith("VMTEST"):
                    print(line, flush=True)
        elif not running:
            break
        else:
            time.sleep(0.005)
