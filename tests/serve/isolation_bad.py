"""The bad clients' schedule and the flood, for the mixed isolation test
(test_isolation_mixed.py): every kind of bad client -- on the query socket
(isolation_binary.py), the Postfix door, the admin socket and the metrics
address (isolation_doors.py) -- once, then drawn by weight, a few at a
time, one that never reads at a time; and a connection flood past the
server's descriptors.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

from acl.wire import binary as wb

from .isolation_binary import bad_frames, bad_garbage, bad_never_reads, bad_sealed, bad_vanish
from .isolation_doors import admin_pipeline, metrics_bad, pf_bad, pf_never_reads, pf_vanish
from .isolation_policy import postfix_request
from .isolation_sockets import BAD_WAIT, WAIT, Storm

__all__ = ["BAD", "BAD_WAIT", "WAIT", "Storm", "bad_clients", "flood"]


#: bad client kind -> (coroutine, weight)
BAD = {
    "frames": (bad_frames, 6),
    "garbage": (bad_garbage, 6),
    "sealed": (bad_sealed, 2),
    "vanish": (bad_vanish, 3),
    "never_reads": (bad_never_reads, 2),
    "pf_bad": (pf_bad, 5),
    "pf_vanish": (pf_vanish, 2),
    "pf_never_reads": (pf_never_reads, 1),
    "admin_pipeline": (admin_pipeline, 1),
    "metrics_bad": (metrics_bad, 1),
}


async def bad_clients(storm: Storm, rng: random.Random, at_once: int, at_most: int) -> None:
    """Bad clients, ``at_once`` running, until the storm ends (at most
    ``at_most`` in all): each kind once, then drawn by weight; each within
    ``BAD_WAIT`` seconds."""
    names = sorted(BAD)
    weights = [BAD[k][1] for k in names]
    running: set[asyncio.Task] = set()
    started = 0

    async def one(kind: str, seed: int, i: int) -> None:
        who = f"bad {kind} #{i} (client seed {seed})"
        try:
            await asyncio.wait_for(BAD[kind][0](storm, random.Random(seed), who), BAD_WAIT)
        except Exception as exc:        # noqa: BLE001  (whatever broke is the finding)
            storm.fail(who, f"{type(exc).__name__}: {exc}")

    first = rng.sample(names, len(names))      # every kind once, then by weight
    while not storm.ended.is_set() and started < at_most:
        while len(running) < at_once and started < at_most:
            kind = first[-1] if first else rng.choices(names, weights)[0]
            if kind.endswith("never_reads") and any(
                    t.get_name().endswith("never_reads") for t in running):
                break               # one at a time: each makes the server hold 1 MiB
            if first:
                first.pop()
            storm.kinds[kind] += 1
            t = asyncio.ensure_future(one(kind, rng.getrandbits(32), started))
            t.set_name(kind)
            running.add(t)
            started += 1
        done, running = await asyncio.wait(running, timeout=0.05,
                                           return_when=asyncio.FIRST_COMPLETED)
        running = set(running)
    if running:
        await asyncio.wait(running, timeout=BAD_WAIT + 5)


# -- the flood ---------------------------------------------------------------------
async def flood(storm: Storm, n: int, emfile_seen, hold: float = 0.5) -> int:
    """``n`` connections at once (a quarter to the Postfix door), more than
    the server has descriptors for; once it says it ran out (``emfile_seen``),
    each asks one question and must be answered -- the ones waiting in the
    backlog as soon as answered ones close.  How many connected."""
    socks = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            postfix = i % 4 == 3
            s.connect(storm.policy if postfix else storm.query)
            socks.append((s, postfix))
        give_up = time.monotonic() + WAIT
        while not await emfile_seen():
            if time.monotonic() > give_up:
                storm.fail("flood", f"{n} connections: the server never ran out of descriptors")
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(hold)
        waiting = {}
        for i, (s, postfix) in enumerate(socks):
            msg = (postfix_request(random.Random(i), b"127.0.0.1") if postfix
                   else wb.encode_ping(i + 1))
            await loop.sock_sendall(s, msg)
            waiting[s] = (postfix, i + 1, bytearray())
        give_up = time.monotonic() + 3 * WAIT
        while waiting and time.monotonic() < give_up:
            for s in list(waiting):
                postfix, rid, got = waiting[s]
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                got += chunk
                done = got.endswith(b"\n\n") if postfix else len(got) >= 13
                if done or not chunk:
                    if postfix:
                        ok = bytes(got) in storm.oracle.postfix_replies("127.0.0.1")
                    else:
                        reps = wb.ReplyDecoder().feed(bytes(got))
                        ok = [(r.type, r.request_id) for r in reps] == [(wb.T_PONG, rid)]
                    if not ok:
                        storm.fail("flood", f"connection {rid}: {bytes(got)!r}")
                    del waiting[s]
                    s.close()
            await asyncio.sleep(0.02)
        if waiting:
            storm.fail("flood", f"{len(waiting)} of {n} connections never answered")
        return len(socks)
    finally:
        for s, _ in socks:
            s.close()
