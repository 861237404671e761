"""One bad client never disturbs others: a live ``acl serve`` under good
and bad clients at once, reloads good and broken, a connection flood past
its descriptors and metrics scrapes -- on asyncio's loop and on uvloop's.

The run, bounded in time (``BASELINE_S`` + ``STORM_S``, then at most the
bad clients' ``BAD_WAIT``; the whole under ``RUN_LIMIT``):

1. The good clients (isolation_good.py, a process of their own) alone, for
   a quiet baseline: pipelined batches, leases taken and released
   (per_source), a cps-limited service, the Postfix door.  Every answer is
   checked against the oracle (isolation_policy.py): what version A or
   version B of the policy answers.  They keep going to the end.
2. The storm: bad clients (isolation_bad.py: their schedule;
   isolation_binary.py, isolation_doors.py) on the query, Postfix, admin
   and metrics sockets -- garbage, bad frames and requests, frames and
   lines too long, a sealed connection, slow senders, clients that vanish
   mid-frame or never read -- generated from ``SEED`` (every failure names
   it and the client's own seed), each checked against exactly what
   docs/protocol.md promises it; reloads via ``acl reload --admin``, in
   turn to the other version (exit 0, and a probe then gets the new
   version's answers) and of a broken file (exit 100 with the
   ``file:line:column``, and the probe still gets the running version's); a
   flood of connections past the server's descriptors (RLIMIT_NOFILE
   ``NOFILE``); GET /metrics every second.  The flood and the reloads take
   turns: out of descriptors, ``acl reload`` is answered that the server is
   out of descriptors and a reload cannot read the files -- a temporary failure
   (test_reload_out_of_descriptors.py), but one after which this test could
   not tell which version answers.
3. Afterwards: no failure; each good client got answers in every second of
   the storm and its worst latency stayed within ``LATENCY_RATIO`` times its
   quiet worst (an isolation check, not a benchmark: generous -- the
   storm's own clients share the machine's CPUs); the server's peak RSS
   grew by less than what docs/protocol.md lets clients make it hold
   (``rss_bound``); the metrics counted exactly the protocol errors the bad
   clients' bytes call for, every reload, every cps refusal and decision
   of cpsd, and the descriptors running out; once every client is gone no
   connection and no lease is left; the log has no traceback.

Ports: metrics on 127.0.0.1:2448x (PORTS["serve"]).  ``ACL_SEED_BASE``
shifts the seed (tests/conftest.py); ACL_SLOW=1 storms longer.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import resource
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from acl.client import AsyncClient
from tests.conftest import SLOW, SLOW_SEED_BASE

from . import isolation_bad as ib
from .conftest import ROOT, start_server
from .isolation_policy import GOOD_REQUESTS, Oracle, key, write_broken, write_version

SEED = 20250 + SLOW_SEED_BASE
LOOPS = {"asyncio": ("1", 24480), "uvloop": ("0", 24481)}
NOFILE = 256                 # the server's descriptors: the flood passes them
FLOOD = NOFILE + 64
BASELINE_S = 1.5
STORM_S = 15.0 if SLOW else 6.0
BAD_AT_ONCE = 8
LATENCY_RATIO = 200
RUN_LIMIT = 150              # seconds: the whole run, whatever hangs
MiB = 1 << 20


def _limit() -> None:                  # in the server's child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """VmHWM back to the RSS of now (proc(5), clear_refs "5"): the peak
    then is the storm's, not the start's."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def rss_bound(connections: int) -> int:
    """What clients may make the server hold (docs/protocol.md, server
    notes): for the one connection at a time that does not read, 1 MiB of
    replies waiting and one read's replies (a read of 256 KiB of requests:
    about 1 MiB of DECISIONs); per connection a partial frame or line and
    its buffers; plus room for the allocator and the reloads' policies."""
    return 3 * MiB + connections * 32 * 1024 + 16 * MiB


class Admin:
    """One admin connection for the whole test (a flood must not keep us out)."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Admin:
        return cls(*await asyncio.wait_for(asyncio.open_unix_connection(path), ib.WAIT))

    async def ask(self, command: str) -> dict:
        async with self.lock:
            self.writer.write(command.encode() + b"\n")
            return json.loads(await asyncio.wait_for(self.reader.readline(), ib.WAIT))


async def scrape(port: int) -> dict:
    """GET /metrics: {(name, sorted labels): value}."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3 * ib.WAIT)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: acl\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 3 * ib.WAIT)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def delta(after: dict, before: dict, name: str, **labels) -> float:
    k = (name, tuple(sorted(labels.items())))
    return after.get(k, 0.0) - before.get(k, 0.0)


def by_labels(after: dict, before: dict, name: str, *label_names) -> dict:
    """Nonzero changes of counter ``name``, keyed by the values of ``label_names``."""
    out = {}
    for (n, labels), v in after.items():
        if n == name:
            d = dict(labels)
            change = v - before.get((n, labels), 0.0)
            if change:
                out[tuple(d[x] for x in label_names)] = change
    return out


class Reloader:
    """``acl reload --admin``: the other version and a broken file in turn."""

    def __init__(self, storm: ib.Storm, d, admin_path: str, metrics: str,
                 turn: asyncio.Lock, rng: random.Random) -> None:
        self.storm, self.dir, self.admin_path, self.metrics = storm, d, admin_path, metrics
        self.turn, self.rng = turn, rng
        self.running = "A"
        self.good = self.broken = 0

    async def run(self, probe: AsyncClient) -> None:
        i = 0
        while not self.storm.ended.is_set():
            async with self.turn:
                if i % 2 == 0:
                    self.running = "B" if self.running == "A" else "A"
                    write_version(self.dir, self.running, self.metrics)
                    await self.reload(0, "acl reload: reloaded")
                    self.good += 1
                else:
                    where = write_broken(self.dir, i // 2, self.metrics)
                    await self.reload(100, where)
                    self.broken += 1
                await self.probe(probe, i)
            i += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))

    async def reload(self, want: int, says: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "acl", "reload", "--admin", self.admin_path,
            "--timeout", str(3 * ib.WAIT), cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 4 * ib.WAIT)
        finally:
            if proc.returncode is None:       # timed out: ours to stop, by its handle
                proc.kill()
                await proc.wait()
        text = out.decode()
        if proc.returncode != want or says not in text:
            self.storm.fail("reloader", f"acl reload exit {proc.returncode}, want {want} "
                                        f"saying {says!r}: {text!r}")

    async def probe(self, client: AsyncClient, i: int) -> None:
        """After the reload returned, every answer is the running version's."""
        got = await client.decide_many(GOOD_REQUESTS)
        want = self.storm.oracle.expected[self.running]
        for r, d in zip(GOOD_REQUESTS, got, strict=True):
            if key(d) != key(want[r]):
                self.storm.fail("reloader", f"step {i}, running {self.running}: {r}: {d}, "
                                            f"want {want[r]}")


async def guarded(storm: ib.Storm, who: str, coro) -> None:
    try:
        await coro
    except Exception as exc:        # noqa: BLE001  (whatever broke is the finding)
        storm.fail(who, f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_bad_clients_reloads_and_a_flood_never_disturb_good_clients(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    no_uvloop, port = LOOPS[loop]
    metrics = f"127.0.0.1:{port}"
    oracle = Oracle(tmp_path, metrics)
    with open(tmp_path / "oracle.pickle", "wb") as f:
        pickle.dump(oracle, f)
    cfg = write_version(tmp_path, "A", metrics)
    srv = start_server(tmp_path, cfg, env={"ACL_NO_UVLOOP": no_uvloop}, preexec=_limit)
    seed = SEED + (0 if loop == "asyncio" else 1)
    storm = ib.Storm(oracle, srv.query, srv.policy, srv.admin, port, seed)
    try:
        assert f"{loop} loop" in srv.text()
        report = asyncio.run(asyncio.wait_for(
            run_storm(storm, srv, tmp_path, port, metrics, random.Random(seed)), RUN_LIMIT))
        stopped = srv.stop()
    finally:
        srv.stop()
    failures = storm.failures + [f"{f} (seed {seed})" for f in report["good"]["failures"]]
    assert not failures, (f"seed {seed}: {len(failures)} failures, the first:\n"
                          + "\n".join(failures[:15]))
    check_report(storm, report, srv, stopped)


async def good_clients(d, storm: ib.Storm, seed: int):
    """The good clients' process (isolation_good.py), once it says they are
    all connected."""
    setup = d / "good.json"
    setup.write_text(json.dumps({"oracle": str(d / "oracle.pickle"), "query": storm.query,
                                 "policy": storm.policy, "seed": seed}))
    with open(d / "good.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.serve.isolation_good", str(setup), cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 2 * ib.WAIT)
        assert line == b"ready\n", (line, (d / "good.log").read_text())
    except BaseException:
        proc.kill()                         # ours, by its handle
        await proc.wait()
        raise
    return proc


async def good_results(d, proc) -> dict:
    proc.stdin.close()
    try:
        out = await asyncio.wait_for(proc.stdout.read(), 4 * ib.WAIT)
        await asyncio.wait_for(proc.wait(), ib.WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (proc.returncode, (d / "good.log").read_text())
    return json.loads(out)


async def run_storm(storm: ib.Storm, srv, d, port: int, metrics: str,
                    rng: random.Random) -> dict:
    admin = await Admin.open(srv.admin)
    pid = srv.proc.pid
    before = await scrape(port)
    good = await good_clients(d, storm, rng.getrandbits(32))
    t_quiet = time.monotonic()
    try:
        await asyncio.sleep(BASELINE_S)
        reset_peak(pid)
        rss_before = status_kib(pid, "VmRSS") * 1024
        t_storm = time.monotonic()
        turn = asyncio.Lock()           # the flood and the reloads take turns (module doc)
        reloader = Reloader(storm, d, srv.admin, metrics, turn, random.Random(rng.random()))
        probe = await AsyncClient.connect(srv.query, timeout=ib.WAIT)
        scrapes = []

        async def scraper() -> None:
            while not storm.ended.is_set():
                await asyncio.sleep(1.0)
                scrapes.append(await scrape(port))

        async def emfile_seen() -> bool:
            st = await admin.ask("stats")
            return any(code == "EMFILE" and n for _sock, code, n in st["accept_errors"])

        flooded = []

        async def flood() -> None:
            await asyncio.sleep(STORM_S * 0.3)
            async with turn:
                flooded.append(await ib.flood(storm, FLOOD, emfile_seen))

        stormy = [asyncio.ensure_future(guarded(storm, name, c)) for name, c in (
            ("bad clients", ib.bad_clients(storm, random.Random(rng.random()), BAD_AT_ONCE,
                                           10_000)),
            ("reloader", reloader.run(probe)),
            ("scraper", scraper()),
            ("flood", flood()),
        )]
        await asyncio.sleep(STORM_S)
        t_end = time.monotonic()
        storm.ended.set()
        _done, pending = await asyncio.wait(stormy, timeout=ib.BAD_WAIT + 15)
        assert not pending, f"seed {storm.seed}: still running: {pending}"
        await probe.close()
    finally:
        good_out = await good_results(d, good)
    peak = status_kib(pid, "VmHWM") * 1024
    after = await scrape(port)
    # every client gone: no connection, no lease left
    stats = {}

    async def settled() -> bool:
        nonlocal stats
        stats = await admin.ask("stats")
        return stats["clients"] == {"binary": 0, "postfix": 0} and not any(
            stats["leases"].values())

    give_up = time.monotonic() + ib.WAIT
    while not await settled() and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    admin.writer.close()
    return {"t_quiet": t_quiet, "t_storm": t_storm, "t_end": t_end, "before": before,
            "after": after, "scrapes": scrapes, "stats": stats, "good": good_out,
            "rss_before": rss_before, "peak": peak, "flooded": flooded,
            "reloads": (reloader.good, reloader.broken)}


def check_report(storm: ib.Storm, rep: dict, srv, stopped) -> None:
    seed = storm.seed
    before, after = rep["before"], rep["after"]
    # the storm happened: every kind of bad client, reloads of both kinds, the flood
    assert set(storm.kinds) == set(ib.BAD), (seed, storm.kinds)
    assert rep["reloads"][0] >= 2 and rep["reloads"][1] >= 2, (seed, rep["reloads"])
    assert rep["flooded"] == [FLOOD], (seed, rep["flooded"])
    assert len(rep["scrapes"]) >= 2, (seed, len(rep["scrapes"]))
    # good clients: answers throughout, latency within a generous ratio of the quiet one
    t_quiet, t_storm, t_end = rep["t_quiet"], rep["t_storm"], rep["t_end"]
    lat = {}
    for who, ops in sorted(rep["good"]["ops"].items()):
        quiet = [x for t, x in ops if t_quiet <= t < t_storm]
        busy = [x for t, x in ops if t_storm <= t < t_end]
        assert quiet and busy, (seed, who, len(quiet), len(busy))
        for s in range(int(t_end - t_storm)):
            lo = t_storm + s
            assert any(lo <= t < lo + 1 for t, _ in ops), \
                f"seed {seed}: {who} got no answer in second {s} of the storm"
        lat[who] = (max(quiet), max(busy), len(busy))
    print(f"\nseed {seed}: worst latency quiet -> storm (ms), answers in the storm:")
    for who, (q, b, n) in lat.items():
        print(f"  {who:10} {q * 1000:7.2f} -> {b * 1000:7.2f}  x{b / q:6.1f}  {n}")
    for who, (q, b, _n) in lat.items():
        assert b <= LATENCY_RATIO * q, \
            f"seed {seed}: {who}: worst latency {b * 1000:.1f} ms, quiet {q * 1000:.2f} ms"
    # memory: bounded by what the protocol lets clients make the server hold
    grew = rep["peak"] - rep["rss_before"]
    bound = rss_bound(FLOOD + BAD_AT_ONCE + 8)
    print(f"  peak RSS grew {grew / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB); never-readers "
          f"sent {[(p, n // 1024) for p, n in storm.never_read_bytes]} KiB; "
          f"bad clients {dict(storm.kinds)}")
    assert grew <= bound, (seed, grew, bound)
    # the metrics count what the bad clients' bytes call for, and the rest
    errors = by_labels(after, before, "acl_protocol_errors_total", "protocol", "code")
    want = {(p, str(c)): float(n) for (p, c), n in storm.errors.items() if n}
    assert errors == want, (seed, errors, want)
    good, broken = rep["reloads"]
    assert delta(after, before, "acl_reloads_total", result="success") == good, seed
    assert delta(after, before, "acl_reloads_total", result="failure") == broken, seed
    asked, refused = rep["good"]["cps_asked"], rep["good"]["cps_refused"]
    assert refused, (seed, asked)
    assert delta(after, before, "acl_limit_trips_total", service="cpsd",
                 limit="cps") == refused, seed
    cpsd = sum(v for (p, _code), v in by_labels(after, before, "acl_decisions_total",
                                               "service", "reason").items() if p == "cpsd")
    assert cpsd == asked, (seed, cpsd, asked)
    assert delta(after, before, "acl_accept_errors_total", socket="query", errno="EMFILE") >= 1
    # nothing left behind, and nothing went wrong inside
    assert rep["stats"]["clients"] == {"binary": 0, "postfix": 0}, (seed, rep["stats"])
    assert not any(rep["stats"]["leases"].values()), (seed, rep["stats"]["leases"])
    assert stopped == 0, (seed, stopped)
    log = srv.text()
    assert "Traceback" not in log and "exception" not in log.lower(), log[-3000:]
