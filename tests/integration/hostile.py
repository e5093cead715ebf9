#!/usr/bin/env python3
"""tests/integration/hostile.py - a hostile client and a health checker for
the status, agent and node API ports, for tests/integration/security.sh,
haproxy.sh and bench/hostile.sh. Standard library only. Every attack binds
its connections to the source addresses it is given (they must exist on
this host: the tests add them to the bridge namespace's interface) and
runs for a fixed time; each prints one summary line of key=value words.

  hostile.py hold IP --ports 7948,7949 --sources A,B,... [--seconds S]
        every source keeps as many connections as it can on every port, of
        three kinds at once: requests sent and answered but never closed
        (renewed when the server closes them), heads sent a byte at a time
        (slowloris), and garbage as fast as it goes
  hostile.py check IP [--http 7948] [--agent 7949] [--rate 2] [--seconds S]
        [--source ADDR]: /livez, /readyz and the agent line, each RATE times
        a second, one fresh connection each (a load balancer's checks);
        prints the success rate per kind
  hostile.py hsflood IP --port 7947 --sources A,B --conns N [--seconds S]
        N half-sent TLS ClientHellos spread over the sources, each renewed
        as soon as the server drops it
  hostile.py joinflood IP --port 7947 --sources-file F --cert C --key K
        [--seconds S] [--threads T]: wrong join passwords from every
        address in F (one per line), as fast as the master answers
"""
import argparse
import os
import random
import selectors
import socket
import ssl
import struct
import sys
import threading
import time


def parse_sources(s):
    out = []
    for part in s.split(','):
        part = part.strip()
        if not part:
            continue
        if '-' in part.rsplit('.', 1)[-1]:
            base, rng = part.rsplit('.', 1)
            lo, hi = rng.split('-')
            out += ['%s.%d' % (base, i) for i in range(int(lo), int(hi) + 1)]
        else:
            out.append(part)
    return out


def connect_nb(ip, port, src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if src:
        s.bind((src, 0))
    try:
        s.connect((ip, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return s


# ---- hold: answered-and-kept, slowloris and garbage at every cap -------------

def cmd_hold(a):
    ip = a.ip
    ports = [int(p) for p in a.ports.split(',')]
    srcs = parse_sources(a.sources)
    sel = selectors.DefaultSelector()
    per = a.per_source  # connections per source, port and kind
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
    stats = {'opened': 0, 'held_answers': 0, 'slow_bytes': 0,
             'garbage': 0, 'closed_by_server': 0}
    conns = {}  # sock -> dict(kind, port, src, pos)

    def open_one(kind, port, src):
        s = connect_nb(ip, port, src)
        if s is None:
            return
        c = {'kind': kind, 'port': port, 'src': src, 'pos': 0,
             'sent': False, 't': time.time()}
        conns[s] = c
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        stats['opened'] += 1

    def drop(s):
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()
        c = conns.pop(s)
        stats['closed_by_server'] += 1
        return c

    agent_port = ports[1] if len(ports) > 1 else None
    for src in srcs:
        for port in ports:
            kinds = ['hold'] if port == agent_port else ['hold', 'slow']
            for kind in kinds:
                for _ in range(per):
                    open_one(kind, port, src)
    end = time.time() + a.seconds
    last_trickle = 0.0
    while time.time() < end:
        for key, ev in sel.select(timeout=0.05):
            s, c = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE and not c['sent']:
                c['sent'] = True
                try:
                    sel.modify(s, selectors.EVENT_READ, c)
                except (KeyError, ValueError):
                    continue
                try:
                    if c['kind'] == 'hold' and c['port'] != agent_port:
                        s.send(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                    elif c['kind'] == 'slow':
                        s.send(head[:1])
                        c['pos'] = 1
                except OSError:
                    pass
                continue
            if ev & selectors.EVENT_READ:
                try:
                    d = s.recv(65536)
                except OSError:
                    d = b''
                if d:
                    if c['kind'] == 'hold':
                        stats['held_answers'] += 1
                    continue  # keep the socket: that is the attack
                c = drop(s)
                open_one(c['kind'], c['port'], c['src'])
        now = time.time()
        if now - last_trickle >= 0.2:
            last_trickle = now
            for s, c in list(conns.items()):
                if c['kind'] != 'slow' or not c['sent']:
                    continue
                if c['pos'] >= len(head):
                    continue
                try:
                    s.send(head[c['pos']:c['pos'] + 1])
                    c['pos'] += 1
                    stats['slow_bytes'] += 1
                except OSError:
                    pass
            # garbage: a burst from every source on the HTTP port
            for src in srcs[:4]:
                g = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                g.settimeout(0.5)
                try:
                    g.bind((src, 0))
                    g.connect((ip, ports[0]))
                    g.send(b"\x16\x03\x01\x02\x00" + os.urandom(300))
                    stats['garbage'] += 1
                except OSError:
                    pass
                g.close()
    held = len(conns)
    for s in list(conns):
        s.close()
    print('hold sources=%d opened=%d open_at_end=%d held_answers=%d '
          'slow_bytes=%d garbage=%d closed_by_server=%d' % (
              len(srcs), stats['opened'], held, stats['held_answers'],
              stats['slow_bytes'], stats['garbage'],
              stats['closed_by_server']))


# ---- check: what a load balancer does -----------------------------------------

def http_get(ip, port, path, src, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        s.connect((ip, port))
        s.sendall(('GET %s HTTP/1.0\r\n\r\n' % path).encode())
        out = b''
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except OSError:
        return None
    finally:
        s.close()
    return out


def agent_line(ip, port, src, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        s.connect((ip, port))
        out = b''
        while True:
            d = s.recv(4096)
            if not d:
                break
            out += d
    except OSError:
        return None
    finally:
        s.close()
    return out


def cmd_check(a):
    kinds = [('livez', lambda: http_get(a.ip, a.http, '/livez', a.source, a.timeout),
              lambda r: r is not None and r.startswith(b'HTTP/1.1 200')),
             ('readyz', lambda: http_get(a.ip, a.http, '/readyz', a.source, a.timeout),
              lambda r: r is not None and r.startswith(b'HTTP/1.1 200')),
             ('agent', lambda: agent_line(a.ip, a.agent, a.source, a.timeout),
              lambda r: r is not None and r.startswith(b'up ready'))]
    res = {k: [0, 0, 0.0] for k, _, _ in kinds}  # ok, n, max seconds
    lat = []
    end = time.time() + a.seconds
    period = 1.0 / a.rate
    nxt = time.time()
    while time.time() < end:
        for name, fn, good in kinds:
            t0 = time.time()
            r = fn()
            dt = time.time() - t0
            res[name][1] += 1
            lat.append(dt)
            if good(r):
                res[name][0] += 1
            if dt > res[name][2]:
                res[name][2] = dt
        nxt += period
        d = nxt - time.time()
        if d > 0:
            time.sleep(d)
    ok = sum(v[0] for v in res.values())
    n = sum(v[1] for v in res.values())
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0
    print('check ' + ' '.join('%s=%d/%d %s_max_ms=%d' % (k, v[0], v[1], k, v[2] * 1000)
                              for k, v in res.items()) +
          ' all=%d/%d rate=%.2f%% p50_ms=%.1f p99_ms=%.1f' % (
              ok, n, 100.0 * ok / n if n else 0, pct(0.5), pct(0.99)))


# ---- hsflood: half-sent ClientHellos ------------------------------------------

HALF_HELLO = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc,
                    0x03, 0x03]) + bytes(range(20))


def cmd_hsflood(a):
    srcs = parse_sources(a.sources)
    sel = selectors.DefaultSelector()
    stats = {'opened': 0, 'dropped': 0}

    def open_one(src):
        s = connect_nb(a.ip, a.port, src)
        if s is None:
            return
        sel.register(s, selectors.EVENT_WRITE, {'src': src, 'sent': False})
        stats['opened'] += 1

    for i in range(a.conns):
        open_one(srcs[i % len(srcs)])
    end = time.time() + a.seconds
    while time.time() < end:
        for key, ev in sel.select(timeout=0.1):
            s, c = key.fileobj, key.data
            if not c['sent']:
                c['sent'] = True
                try:
                    s.send(HALF_HELLO)
                except OSError:
                    pass
                sel.modify(s, selectors.EVENT_READ, c)
                continue
            try:
                d = s.recv(4096)
            except OSError:
                d = b''
            if d:
                continue
            sel.unregister(s)
            s.close()
            stats['dropped'] += 1
            open_one(c['src'])
    n = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print('hsflood sources=%d opened=%d dropped_by_server=%d open_at_end=%d' % (
        len(srcs), stats['opened'], stats['dropped'], n))


# ---- joinflood: wrong passwords from many addresses ----------------------------

def pb_varint(n):
    out = b''
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_field(num, wt, payload):
    key = pb_varint(num << 3 | wt)
    if wt == 0:
        return key + pb_varint(payload)
    return key + pb_varint(len(payload)) + payload


def join_request(password, name, ip):
    jr = (pb_field(1, 2, password.encode()) + pb_field(2, 2, name.encode()) +
          pb_field(3, 2, ip.encode()) + pb_field(4, 0, 7946) +
          pb_field(5, 0, 7947) + pb_field(6, 2, os.urandom(16)))
    return pb_field(1, 0, 1) + pb_field(2, 2, jr)


def cmd_joinflood(a):
    srcs = [l.strip() for l in open(a.sources_file) if l.strip()]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    lock = threading.Lock()
    st = {'attempts': 0, 'wrong': 0, 'busy': 0, 'global': 0, 'full': 0,
          'other': 0, 'failed': 0}
    others = {}
    end = time.time() + a.seconds
    queue = list(srcs)
    random.shuffle(queue)

    def worker(k):
        i = k
        while time.time() < end:
            src = queue[i % len(queue)]
            i += a.threads
            try:
                raw = socket.create_connection((a.ip, a.port), timeout=15,
                                               source_address=(src, 0))
                s = ctx.wrap_socket(raw)
                req = join_request('not the password %d' % random.randint(0, 1 << 30),
                                   'atk%d' % (i % 100000), src)
                s.sendall(struct.pack('!I', len(req)) + req)
                buf = b''
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    buf += d
                s.close()
            except (OSError, ssl.SSLError):
                with lock:
                    st['failed'] += 1
                time.sleep(0.05)
                continue
            with lock:
                st['attempts'] += 1
                if b'wrong password' in buf:
                    st['wrong'] += 1
                elif b'in progress' in buf:
                    st['busy'] += 1
                elif b'too many wrong join passwords' in buf:
                    st['global'] += 1
                elif b'too many addresses' in buf:
                    st['full'] += 1
                else:
                    st['other'] += 1
                    txt = buf[6:90].decode(errors='replace')
                    others[txt] = others.get(txt, 0) + 1
            if b'wrong password' not in buf:
                time.sleep(0.2)  # refused at once: do not spin

    t0 = time.time()
    th = [threading.Thread(target=worker, args=(k,), daemon=True)
          for k in range(a.threads)]
    for t in th:
        t.start()
    for t in th:
        t.join(a.seconds + 30)
    secs = time.time() - t0
    print('joinflood addresses=%d seconds=%.1f attempts=%d guesses=%d '
          'guesses_per_s=%.3f refused_busy=%d refused_global=%d '
          'refused_full=%d other=%d failed=%d' % (
              len(srcs), secs, st['attempts'], st['wrong'],
              st['wrong'] / secs, st['busy'], st['global'], st['full'],
              st['other'], st['failed']))
    for k, v in sorted(others.items(), key=lambda x: -x[1])[:3]:
        print('# other answer x%d: %r' % (v, k))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest='cmd', required=True)
    h = sub.add_parser('hold')
    h.add_argument('ip')
    h.add_argument('--ports', default='7948,7949')
    h.add_argument('--sources', required=True)
    h.add_argument('--per-source', type=int, default=8)
    h.add_argument('--seconds', type=float, default=20)
    c = sub.add_parser('check')
    c.add_argument('ip')
    c.add_argument('--http', type=int, default=7948)
    c.add_argument('--agent', type=int, default=7949)
    c.add_argument('--rate', type=float, default=2)
    c.add_argument('--seconds', type=float, default=20)
    c.add_argument('--source', default=None)
    c.add_argument('--timeout', type=float, default=2)
    f = sub.add_parser('hsflood')
    f.add_argument('ip')
    f.add_argument('--port', type=int, default=7947)
    f.add_argument('--sources', required=True)
    f.add_argument('--conns', type=int, default=100)
    f.add_argument('--seconds', type=float, default=20)
    j = sub.add_parser('joinflood')
    j.add_argument('ip')
    j.add_argument('--port', type=int, default=7947)
    j.add_argument('--sources-file', required=True)
    j.add_argument('--cert', required=True)
    j.add_argument('--key', required=True)
    j.add_argument('--seconds', type=float, default=30)
    j.add_argument('--threads', type=int, default=32)
    a = p.parse_args()
    {'hold': cmd_hold, 'check': cmd_check, 'hsflood': cmd_hsflood,
     'joinflood': cmd_joinflood}[a.cmd](a)


if __name__ == '__main__':
    main()
