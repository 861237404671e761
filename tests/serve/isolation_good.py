"""The good clients of the mixed isolation test (test_isolation_mixed.py),
run as a process of their own:

    python -m tests.serve.isolation_good SETUP.json

Rules of this file:

* A process of their own, so that what they measure is the server: the bad
  clients' work in the test process (building, sending and checking
  megabytes) would otherwise hold up this loop and show as latency.  Times
  are ``time.monotonic()``, the same clock in both processes.
* Each client keeps one connection open for the whole run (a flood that
  fills the server's descriptors holds up only new connections), checks
  EVERY answer against the oracle (what version A or version B of the
  policy answers: a reload may land anywhere) and logs each operation's end
  time and latency.
* Protocol, on stdout: ``ready`` once every client is connected; at EOF on
  stdin (the test says stop; or after ``LIFETIME`` seconds, if nobody does)
  every client ends its operation and stops, and the results are one JSON
  line: failures, each client's operations, the cps answers.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import sys
import time

from acl.client import AsyncClient
from acl.model import Reason, Request, Verdict

from .isolation_policy import GOOD_REQUESTS, POSTFIX_CLIENTS, postfix_request

WAIT = 15.0          # one answer
LIFETIME = 120.0     # seconds at most, whoever forgets to stop us


class Run:
    """What the clients found and measured."""

    def __init__(self, oracle, query: str, policy: str) -> None:
        self.oracle, self.query, self.policy = oracle, query, policy
        self.ended = asyncio.Event()
        self.failures: list[str] = []
        self.ops: dict[str, list[tuple[float, float]]] = {}
        self.cps_asked = self.cps_refused = 0

    def fail(self, who: str, what: str) -> None:
        self.failures.append(f"good {who}: {what}")

    def op(self, who: str, t0: float) -> None:
        t = time.monotonic()
        self.ops.setdefault(who, []).append((t, t - t0))


async def batches(run: Run, rng: random.Random, who: str, c: AsyncClient) -> None:
    """Pipelined batches of every good request."""
    while not run.ended.is_set():
        batch = [rng.choice(GOOD_REQUESTS) for _ in range(rng.randrange(20, 61))]
        t0 = time.monotonic()
        got = await c.decide_many(batch)
        run.op(who, t0)
        for r, d in zip(batch, got, strict=True):
            why = run.oracle.check(r, d)
            if why:
                run.fail(who, why)
        await asyncio.sleep(rng.uniform(0.002, 0.01))


async def leases(run: Run, rng: random.Random, who: str, c: AsyncClient, addr: str) -> None:
    """per_source = 2 of echo-stream, for an address only this client uses:
    two leases granted, a third refused, one given back (once), granted
    again -- across reloads, whose limits are the same."""
    r = Request("echo-stream", addr, lease=True)

    async def call(what):
        t0 = time.monotonic()
        out = await what
        run.op(who, t0)
        return out

    while not run.ended.is_set():
        a, b, full = [await call(c.decide(r)) for _ in range(3)]
        for d in (a, b):
            why = run.oracle.check(r, d)
            if why or not d.lease:
                run.fail(who, why or f"a grant without a lease: {d}")
        if (full.verdict, full.reason, full.lease) != (Verdict.DENY, Reason.PER_SOURCE_LIMIT, 0):
            run.fail(who, f"third lease: {full}")
        if not await call(c.release(a.lease)) or await call(c.release(a.lease)):
            run.fail(who, f"release of {a.lease}: not once")
        again = await call(c.decide(r))
        if not again.lease or run.oracle.check(r, again):
            run.fail(who, f"lease after a release: {again}")
        for lease in (b.lease, again.lease):
            if lease and not await call(c.release(lease)):
                run.fail(who, f"release of {lease} refused")
        await asyncio.sleep(rng.uniform(0.002, 0.01))


async def cps(run: Run, rng: random.Random, who: str, c: AsyncClient) -> None:
    """cpsd (cps = 20 1), asked about 60 times a second: its answer, or a
    cps refusal while the service is off; both counted for the metrics."""
    r = Request("cpsd", "127.0.0.1")
    while not run.ended.is_set():
        t0 = time.monotonic()
        d = await c.decide(r)
        run.op(who, t0)
        run.cps_asked += 1
        if (d.verdict, d.reason) == (Verdict.DENY, Reason.CPS):
            run.cps_refused += 1
        elif run.oracle.check(r, d):
            run.fail(who, run.oracle.check(r, d))
        await asyncio.sleep(rng.uniform(0.01, 0.02))


async def postfix(run: Run, rng: random.Random, who: str, conn) -> None:
    """The Postfix door: one to five requests at a time, every reply checked."""
    reader, writer = conn
    while not run.ended.is_set():
        clients = [rng.choice(POSTFIX_CLIENTS) for _ in range(rng.randrange(1, 6))]
        t0 = time.monotonic()
        writer.write(b"".join(postfix_request(rng, c.encode()) for c in clients))
        for c in clients:
            got = await asyncio.wait_for(reader.readuntil(b"\n\n"), WAIT)
            if got not in run.oracle.postfix_replies(c):
                run.fail(who, f"{c}: {got!r}")
        run.op(who, t0)
        await asyncio.sleep(rng.uniform(0.002, 0.01))


async def guarded(run: Run, who: str, coro) -> None:
    try:
        await coro
    except Exception as exc:        # noqa: BLE001  (a good client that broke is the finding)
        run.fail(who, f"{type(exc).__name__}: {exc}")


async def main(setup: dict) -> dict:
    with open(setup["oracle"], "rb") as f:
        oracle = pickle.load(f)
    run = Run(oracle, setup["query"], setup["policy"])
    rng = random.Random(setup["seed"])
    binary = [await AsyncClient.connect(run.query, timeout=WAIT) for _ in range(5)]
    door = [await asyncio.wait_for(asyncio.open_unix_connection(run.policy), WAIT)
            for _ in range(2)]
    clients = [
        ("batches-1", batches(run, random.Random(rng.random()), "batches-1", binary[0])),
        ("batches-2", batches(run, random.Random(rng.random()), "batches-2", binary[1])),
        ("leases-1", leases(run, random.Random(rng.random()), "leases-1", binary[2],
                            "127.0.0.21")),
        ("leases-2", leases(run, random.Random(rng.random()), "leases-2", binary[3],
                            "127.0.0.22")),
        ("cps", cps(run, random.Random(rng.random()), "cps", binary[4])),
        ("postfix-1", postfix(run, random.Random(rng.random()), "postfix-1", door[0])),
        ("postfix-2", postfix(run, random.Random(rng.random()), "postfix-2", door[1])),
    ]
    tasks = [asyncio.ensure_future(guarded(run, who, c)) for who, c in clients]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(stdin.read(), LIFETIME)
    except TimeoutError:
        run.fail("run", f"not told to stop within {LIFETIME} s")
    run.ended.set()
    _done, pending = await asyncio.wait(tasks, timeout=2 * WAIT)
    if pending:
        run.fail("run", f"{len(pending)} clients did not stop")
    for c in binary:
        await c.close()
    for _reader, writer in door:
        writer.close()
    return {"failures": run.failures, "ops": run.ops, "cps_asked": run.cps_asked,
            "cps_refused": run.cps_refused}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        out = asyncio.run(main(json.load(f)))
    print(json.dumps(out), flush=True)
