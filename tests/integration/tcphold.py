#!/usr/bin/env python3
"""tcphold.py - hold gossip TCP connections open the way an attacker would
(test and benchmark tool: tests/integration/security.sh, bench/hostile.sh).

    tcphold.py HOST PORT --src IP[,IP...] [--per-src N] [--announce BYTES]
               [--burst BYTES] [--trickle-ms MS] [--seconds S]

From every source address, keeps N connections to HOST:PORT open: each
sends a frame header announcing BYTES (default 4 MiB, the largest frame a
node accepts), then BURST bytes as fast as the peer reads them (default
1 MiB), then one byte every MS milliseconds (default 500), until the peer
closes it; then it connects again (100 ms later). After S seconds (default 15) it prints
one JSON line: connections opened, closed by the peer, connects refused,
bytes sent, most connections open at once (as this side sees them) and
most held open for a second or more (ones the peer kept).
"""
import argparse
import errno
import json
import selectors
import socket
import struct
import time


class Conn:
    def __init__(self, src):
        self.src = src
        self.sock = None
        self.out = b""
        self.burst_left = 0
        self.next_trickle = 0.0
        self.connected = False
        self.retry_at = 0.0
        self.since = 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--src", required=True)
    ap.add_argument("--per-src", type=int, default=4)
    ap.add_argument("--announce", type=int, default=4 << 20)
    ap.add_argument("--burst", type=int, default=1 << 20)
    ap.add_argument("--trickle-ms", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()

    sel = selectors.DefaultSelector()
    st = {"opened": 0, "closed_by_peer": 0, "refused": 0, "bytes": 0,
          "max_open": 0, "max_held": 0}
    chunk = b"\xa5" * 65536
    conns = [Conn(s) for s in a.src.split(",") for _ in range(a.per_src)]

    def start(c):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((c.src, 0))
        except OSError:
            s.close()
            st["refused"] += 1
            return
        rc = s.connect_ex((a.host, a.port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            st["refused"] += 1
            return
        c.sock, c.connected = s, False
        c.out = struct.pack("!I", a.announce)
        c.burst_left = a.burst
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def stop(c, by_peer):
        if c.sock is None:
            return
        sel.unregister(c.sock)
        c.sock.close()
        c.sock = None
        c.retry_at = time.monotonic() + 0.1  # no reconnect storm
        if by_peer:
            st["closed_by_peer"] += 1

    for c in conns:
        start(c)
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for key, ev in sel.select(timeout=0.05):
            c = key.data
            if ev & selectors.EVENT_READ:
                try:
                    d = c.sock.recv(4096)
                except OSError:
                    d = b""
                if not d:
                    if not c.connected:
                        st["refused"] += 1
                        stop(c, False)
                    else:
                        stop(c, True)
                    continue
            if ev & selectors.EVENT_WRITE:
                if not c.connected:
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        st["refused"] += 1
                        stop(c, False)
                        continue
                    c.connected = True
                    c.since = now
                    st["opened"] += 1
                while c.out or c.burst_left:
                    if not c.out:
                        k = min(len(chunk), c.burst_left)
                        c.out = chunk[:k]
                        c.burst_left -= k
                    try:
                        n = c.sock.send(c.out)
                    except BlockingIOError:
                        break
                    except OSError:
                        stop(c, True)
                        break
                    st["bytes"] += n
                    c.out = c.out[n:]
                if c.sock is not None and not c.out and not c.burst_left:
                    # burst done: from now on only the trickle
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    c.next_trickle = now + a.trickle_ms / 1000.0
        open_now = held = 0
        for c in conns:
            if c.sock is None:
                if now >= c.retry_at:
                    start(c)
                continue
            if c.connected:
                open_now += 1
                held += now - c.since >= 1.0
            if c.connected and not c.out and not c.burst_left and \
                    now >= c.next_trickle:
                try:
                    c.sock.send(b"\xa5")
                    st["bytes"] += 1
                except OSError:
                    stop(c, True)
                    continue
                c.next_trickle = now + a.trickle_ms / 1000.0
        st["max_open"] = max(st["max_open"], open_now)
        st["max_held"] = max(st["max_held"], held)
    for c in conns:
        stop(c, False)
    print(json.dumps(st))


if __name__ == "__main__":
    main()
