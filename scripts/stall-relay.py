#!/usr/bin/env python3
"""A TCP relay the VM test can cut (scripts/vm-systemd-test.sh).

  stall-relay.py PORT UPSTREAM    relays 127.0.0.1:PORT to 127.0.0.1:UPSTREAM

The cut is SIGSTOP to this process: every connection through it, open or
new, then stalls (the kernel still completes new handshakes into the listen
backlog), as a cut link looks through QEMU's user networking."""
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(port, upstream):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    while True:
        c, _ = srv.accept()
        try:
            u = socket.create_connection(("127.0.0.1", upstream), timeout=5)
            u.settimeout(None)
        except OSError:
            c.close()
            continue
        for a, b in ((c, u), (u, c)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
