#!/usr/bin/python3
"""bench/detect_poll.py - one poller for bench/detect's kill rounds.

    detect_poll.py pmg|serf VICTIM T0_MS DEADLINE_MS I:ADDR [I:ADDR ...]

Asks every survivor at once, from this one process, for its view of VICTIM
(a node name), every ~100 ms until each shows it dead ("D" for pmgclusterd,
"failed" for Serf) or DEADLINE_MS (a CLOCK_REALTIME ms timestamp) passes.
pmgclusterd: ADDR is the control socket; one {"cmd":"status"} request per
connection, as `pmgcm status` sends it. Serf: ADDR is host:port of its RPC;
one connection per survivor (handshake once), a "members" request per round,
as `serf members` sends it (msgpack, python3-msgpack).

Why one process: bench/detect used to start one status client per survivor
per round (29 at N=30); on a loaded 2-core machine a round then took over
3 s, and that delay was counted as detection time for both daemons.

Prints one line per survivor: "I MS" (MS = the time its answer showing the
victim dead came back, minus T0_MS), or "I timeout". Exit 0 if every
survivor showed it dead, 1 otherwise, 2 on bad arguments.
"""
import asyncio
import json
import sys
import time

ROUND_S = 0.1
QUERY_TIMEOUT_S = 5.0


def now_ms():
    return time.time_ns() // 1_000_000


async def pmg_state(path, victim):
    r, w = await asyncio.open_unix_connection(path)
    try:
        w.write(b'{"cmd":"status"}\n')
        await w.drain()
        w.write_eof()
        data = await r.read()  # the daemon closes after its answer
    finally:
        w.close()
    doc = json.loads(data)
    for m in doc.get("nodes") or doc.get("members") or []:
        if m.get("name") == victim:
            return m.get("state")
    return None


class Serf:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.r = self.w = None
        self.seq = 0
        self.unp = None

    async def _msg(self):
        while True:
            for obj in self.unp:
                return obj
            data = await self.r.read(65536)
            if not data:
                raise ConnectionError("serf closed the RPC connection")
            self.unp.feed(data)

    async def _call(self, cmd, body=None, has_reply=True):
        import msgpack
        self.seq += 1
        self.w.write(msgpack.packb({"Command": cmd, "Seq": self.seq}))
        if body is not None:
            self.w.write(msgpack.packb(body))
        await self.w.drain()
        hdr = await self._msg()
        if hdr.get("Error"):
            raise RuntimeError(hdr["Error"])
        return await self._msg() if has_reply else None

    async def state(self, victim):
        import msgpack
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
            self.unp = msgpack.Unpacker(raw=False)
            await self._call("handshake", {"Version": 1}, has_reply=False)
        try:
            body = await self._call("members")
        except Exception:
            self.w.close()
            self.w = None
            raise
        for m in body.get("Members", []):
            if m.get("Name") == victim:
                return m.get("Status")
        return None


async def main(argv):
    if len(argv) < 5 or argv[0] not in ("pmg", "serf"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, victim, t0, deadline = argv[0], argv[1], int(argv[2]), int(argv[3])
    dead = "D" if kind == "pmg" else "failed"
    pend = {}
    for a in argv[4:]:
        i, addr = a.split(":", 1)
        pend[i] = Serf(addr) if kind == "serf" else addr
    seen = {}

    async def ask(i):
        try:
            if kind == "pmg":
                st = await asyncio.wait_for(pmg_state(pend[i], victim), QUERY_TIMEOUT_S)
            else:
                st = await asyncio.wait_for(pend[i].state(victim), QUERY_TIMEOUT_S)
        except Exception:
            return  # unanswered this round: asked again next round
        if st == dead:
            seen[i] = now_ms() - t0

    while pend and now_ms() < deadline:
        start = time.monotonic()
        await asyncio.gather(*(ask(i) for i in list(pend)))
        for i in seen:
            pend.pop(i, None)
        left = ROUND_S - (time.monotonic() - start)
        if pend and left > 0:
            await asyncio.sleep(left)
    for i in sorted(seen, key=int):
        print(i, seen[i])
    for i in sorted(pend, key=int):
        print(i, "timeout")
    return 0 if not pend else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
