"""The compiled batch plan decides exactly as the Python path, at its edges.

tests/serve/test_fastpath.py draws rules and clients from a few small
networks.  Here the generated policies and streams aim at what the plan
itself computes (ext/acl/_engine.pyx, acl/fastpath.py):

* range edges: every client is a rule prefix's first or last address or
  the address just outside it (IPv4, IPv6 with prefixes of any length, so
  ranges that differ only in their low 64 bits, and v4-mapped forms);
* what must go to Python: hosts_access rules a prefix table cannot say
  (names, EXCEPT, LOCAL) and ``setenv`` names expanded per request,
  tcprules keys tcpserver never prints (``1.2.3.4.``, ``10.256.``) and
  IPv6 keys, host and user names that are not ASCII (or not UTF-8),
  service names that only begin like a planned one;
* the reply stream: request ids using all 32 bits, answers big enough
  that the reply buffer fills after ~130 frames (status 2), a read of more
  than 4,096 frames (the scratch arrays' size), an answer of exactly 64 KiB
  (the plan's) and one a byte longer (Python's), a read past 64 KiB (the
  GIL let go: another thread runs meanwhile);
* xinetd services in one plan with IPv6 clients of one network (per_source
  by address, the rate limit by ``ipv6_prefix``), leases, and a SENSOR;
* the counters: decisions, limit trips, latency observations, and the
  plan's ``residual`` (exactly one per frame it left to Python);
* the per-source token bucket with fractional bursts, ties in the eviction
  order, clock steps back: the compiled ``SourceTable`` against its twin.

Each stream is answered by an engine with the plan (read whole and in
chunks) and by one without; the reply bytes must be identical.  ACL_SLOW=1
runs eight times the seeds (from ACL_SEED_BASE on).
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from acl import _engine_py
from acl.engine import KERNEL, Engine
from acl.model import Request
from acl.policy import Limits, Policy, Source
from acl.wire import binary as wb
from tests.conftest import SLOW, SLOW_SEED_BASE

from .test_fastpath import answer

pytestmark = pytest.mark.skipif(KERNEL != "compiled", reason="the compiled engine is not built")

SCALE = 8 if SLOW else 1
BASE = SLOW_SEED_BASE if SLOW else 0
V4_LENGTHS = [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32]
V6_LENGTHS = [0, 1, 32, 48, 63, 64, 65, 96, 127, 128]
#: the planned services, and names that begin like one or that one begins with
SERVICES = ["sshd", "smtpd", "ftpd"] * 6 + ["ssh", "sshd2", "smtp", "s", "SSHD", "nosuch"]


def v4_prefix(rng: random.Random) -> tuple[int, int]:
    ln = rng.choice(V4_LENGTHS)
    net = rng.choice([0x0A000000, 0xC0A80000, 0xFFFFFFFF, 0xFFFFFFFE, 0, rng.getrandbits(32)])
    net |= rng.getrandbits(24) if rng.random() < 0.5 else 0
    mask = ((1 << ln) - 1) << (32 - ln)
    return net & mask, ln


def v6_prefix(rng: random.Random) -> tuple[int, int]:
    ln = rng.choice(V6_LENGTHS)
    net = (0x20010DB8 << 96) | (rng.getrandbits(16) << 80) if rng.random() < 0.7 else \
        rng.getrandbits(128)
    if rng.random() < 0.5:
        net |= rng.getrandbits(64)           # low-half bits: ranges split inside a /64
    mask = ((1 << ln) - 1) << (128 - ln)
    return net & mask, ln


def v4_text(net: int, ln: int, rng: random.Random) -> str:
    a = ipaddress.IPv4Address(net)
    if ln in (8, 16, 24) and rng.random() < 0.5:
        return ".".join(str(a).split(".")[:ln // 8]) + "."
    if ln == 32 and rng.random() < 0.5:
        return str(a)
    return f"{a}/{ipaddress.IPv4Address(((1 << ln) - 1) << (32 - ln) if ln else 0)}"


class Gen:
    """One generated policy's files, and the prefixes its rules name."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.v4: list[tuple[int, int]] = []
        self.v6: list[tuple[int, int]] = []
        #: a rule a prefix table cannot say (then no service has a plan:
        #: the hosts_access layer gives no view)
        self.residual = rng.random() < 0.2

    def pattern(self) -> str:
        rng = self.rng
        k = rng.random()
        if self.residual and k < 0.1:
            return rng.choice(["h.example.org", ".example.org", "LOCAL",
                               "10.0.0.0/255.0.0.0 EXCEPT 10.1.", "ALL EXCEPT [2001:db8::]/32"])
        if k < 0.7:
            p = v4_prefix(rng)
            self.v4.append(p)
            return v4_text(*p, rng)
        p = v6_prefix(rng)
        self.v6.append(p)
        return f"[{ipaddress.IPv6Address(p[0])}]/{p[1]}"

    def option(self, big: bool) -> str:
        rng = self.rng
        if big and rng.random() < 0.4:
            # a large answer (libwrap's lines end at 2,047 bytes): the
            # plan's reply buffer holds ~130 of them
            return f": setenv BIG {'b' * rng.randrange(1500, 1950)}"
        if rng.random() < 0.08:
            # a setenv name expanded per request (%u: the client's user)
            return rng.choice([": setenv %u x", ": setenv X%d y : allow"])
        return rng.choice(["", "", "", ": allow", ": deny", ": setenv FOO bar",
                           ": severity auth.info"])

    def hosts(self, lines: int, big: bool) -> str:
        rng = self.rng
        out = []
        for _ in range(lines):
            pats = " ".join(self.pattern() for _ in range(rng.randrange(1, 4)))
            daemons = rng.choice(["sshd", "smtpd", "ALL", "sshd, smtpd", "ftpd"])
            out.append(f"{daemons}: {pats} {self.option(big)}".rstrip())
        return "\n".join(out) + "\n"

    def tcprules(self, lines: int) -> str:
        rng = self.rng
        out = []
        for _ in range(lines):
            net, ln = v4_prefix(rng)
            octets = str(ipaddress.IPv4Address(net)).split(".")
            k = rng.random()
            if k < 0.2:
                # keys tcpserver never prints: never equal to a probe key
                key = rng.choice([".".join(octets) + ".", f"{octets[0]}.256.", "300.",
                                  f"0{octets[0]}.", ".".join(octets + ["5"])])
            elif k < 0.4:
                # IPv6 keys (IPv6 clients are then Python's), keys on names
                key = rng.choice(["2001:db8::1", "2001:db8:", "2001:", "=h.example.org",
                                  "joe@" + ".".join(octets)])
            else:
                n = rng.choice([4, 3, 2, 1])
                key = ".".join(octets[:n]) + ("." if n < 4 else "")
                self.v4.append((net & (((1 << (8 * n)) - 1) << (32 - 8 * n)), 8 * n))
            action = rng.choice(["allow", "deny", f'allow,X="{rng.randrange(9)}"'])
            out.append(f"{key}:{action}")
        if rng.random() < 0.5:
            out.append(":" + rng.choice(["allow", "deny"]))
        return "\n".join(out) + "\n"

    def policy(self, tmp, limits: Limits) -> Policy:
        from acl.compile.tcprules import load_tcprules
        from acl.compile.tcpw import load_hosts_access

        rng = self.rng
        big = rng.random() < 0.5
        (tmp / "hosts.allow").write_text(self.hosts(rng.randrange(1, 12), big))
        (tmp / "hosts.deny").write_text(self.hosts(rng.randrange(0, 5), big))
        hosts, _ = load_hosts_access(str(tmp / "hosts.allow"), str(tmp / "hosts.deny"))
        sources = [Source("hosts_access", hosts, None, ())]
        if rng.random() < 0.6:
            (tmp / "tcp.rules").write_text(self.tcprules(rng.randrange(1, 10)))
            sources.append(Source("tcprules", load_tcprules(str(tmp / "tcp.rules"),
                                                            use_host=rng.random() < 0.7),
                                  frozenset({"smtpd", "ftpd"}), ()))
        return Policy(None, sources, limits=limits)

    def client(self, plain: bool = False) -> str:
        """A rule prefix's first or last address, or one just outside it
        (``plain``: IPv4, not mapped)."""
        rng = self.rng
        if self.v6 and not plain and rng.random() < 0.3:
            net, ln = rng.choice(self.v6)
            end = net | ((1 << (128 - ln)) - 1)
            a = rng.choice([net, end, net - 1, end + 1, net + rng.randrange(3)]) % (1 << 128)
            return str(ipaddress.IPv6Address(a))
        if not self.v4 or rng.random() < 0.05:
            return rng.choice(["255.255.255.255", "0.0.0.0", str(ipaddress.IPv4Address(
                rng.getrandbits(32)))])
        net, ln = rng.choice(self.v4)
        end = net | ((1 << (32 - ln)) - 1)
        a = rng.choice([net, end, net - 1, end + 1, net + 1, end - 1]) % (1 << 32)
        text = str(ipaddress.IPv4Address(a))
        return f"::ffff:{text}" if not plain and rng.random() < 0.1 else text

    def plain(self, policy: Policy, n: int) -> tuple[bytes, int]:
        """``n`` DECIDEs that a plan of ``policy`` answers itself (found by
        asking one of another engine): long runs fill its reply buffer."""
        probe = Engine(policy).plan
        pairs = []
        for _ in range(200):
            req = Request(self.rng.choice(SERVICES[:3]), self.client(True))
            one = wb.encode_decide(0, req)
            if probe is not None and probe.run(one, 0, 0.0)[::2] == (len(one), 0):
                pairs.append(req)
        if not pairs:
            return b"", 0
        return b"".join(wb.encode_decide(self.rng.getrandbits(32), self.rng.choice(pairs))
                        for _ in range(n)), n

    def stream(self, n: int) -> bytes:
        rng = self.rng
        frames = []
        for _ in range(n):
            rid = rng.getrandbits(32)
            if rng.random() < 0.02:
                frames.append(wb.encode_ping(rid))
                continue
            req = Request(rng.choice(SERVICES), self.client(), rng.randrange(65536),
                          rng.choice([None, "127.0.0.1", "::1"]), rng.randrange(65536),
                          rng.choice([None] * 6 + ["h.example.org", "hé.example.org", "h~~"]),
                          rng.choice([None] * 6 + ["joe", "j=oe", "jöe", "j~~e"]))
            # "~~": two bytes that are not UTF-8 (the Python path's error)
            frames.append(wb.encode_decide(rid, req).replace(b"~~", b"\xc3("))
        return b"".join(frames)


LIMITS = [(0.0, 0.0), (5.0, 3.0), (2.0, 0.5), (1.0, 1.5), (3.0, 0.0), (0.5, 0.0)]


def check(fast: Engine, slow: Engine, blob: bytes, frames: int, now: float, chunk: int) -> None:
    plan = fast.plan
    before = (plan.residual, sum(plan.counts().values())) if plan is not None else (0, 0)
    assert answer(fast, blob, now, chunk) == answer(slow, blob, now, 1 << 20)
    if plan is not None and chunk >= len(blob):
        # read whole: each frame is answered by the plan or left to Python
        # (one status 1 each), never both
        residual = plan.residual - before[0]
        planned = sum(plan.counts().values()) - before[1]
        assert residual + planned == frames, (residual, planned, frames)


@pytest.mark.parametrize("seed", range(BASE, BASE + 12 * SCALE))
def test_plan_equals_python_path_at_range_edges(tmp_path, seed):
    rng = random.Random(seed)
    gen = Gen(rng)
    rate, burst = rng.choice(LIMITS)
    limits = Limits(sources=rng.choice([16, 64, 1000]), ipv6_prefix=rng.choice([0, 48, 64, 128]),
                    rate=rate, burst=burst)
    policy = gen.policy(tmp_path, limits)
    fast, slow = Engine(policy), Engine(policy, batch=False)
    now = 1000.0
    for i in range(4):
        n = rng.randrange(100, 400)
        blob, n = gen.plain(policy, n) if i == 3 else (gen.stream(n), n)
        check(fast, slow, blob, n, now, rng.choice([1 << 20, 1 << 20, 29, 500]))
        now += rng.choice([0.0, 0.3, 1.7])
    if seed % 4 == 0:
        # one read past 4,096 frames and past 64 KiB
        blob, n = gen.plain(policy, 4300)
        check(fast, slow, blob, n, now, 1 << 20)
    a, b = fast.counters(), slow.counters()
    assert a["decisions"] == b["decisions"]
    assert a["limit_trips"] == b["limit_trips"]
    # one latency observation per decision, on either path
    assert sum(a["latency_counts"]) == sum(b["latency_counts"]) == sum(b["decisions"].values())
    assert (a["sources_tracked"], a["sources_evictions"]) == \
        (b["sources_tracked"], b["sources_evictions"])


@pytest.mark.parametrize("seed", range(BASE, BASE + 30 * SCALE))
def test_source_table_twins_agree_on_ties_and_steps(seed):
    """Compiled and pure tables, step for step: the same answers, sizes and
    counters.  Bursts of sources at one instant (equally old entries: which
    one an eviction takes shows when it comes back), fractional bursts, a
    clock that stands still or steps back, IPv4 and masked IPv6 keys."""
    from acl import _engine

    rng = random.Random(seed)
    capacity = rng.choice([1, 15, 16, 17, 31, 32, 33, 100])
    a, b = _engine.SourceTable(capacity), _engine_py.SourceTable(capacity)
    assert a.capacity == b.capacity
    prefix = rng.choice([0, 1, 48, 64, 127, 128])
    pool = []
    for _ in range(rng.choice([8, 40, 200])):
        raw = rng.getrandbits(32).to_bytes(4, "big") if rng.random() < 0.5 else \
            ((0x20010DB8 << 96) | rng.getrandbits(rng.choice([16, 64, 96]))).to_bytes(16, "big")
        key = _engine.source_key(raw, prefix)
        assert key == _engine_py.source_key(raw, prefix)
        pool.append(key)
    rate = rng.choice([0.0, 0.01, 0.5, 1.0, 3.0])
    burst = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 4.0])
    now = 1000.0
    for step in range(600):
        r = rng.random()
        if r < 0.1:
            now -= rng.choice([0.5, 3600.0])         # the clock steps back
        elif r < 0.4:
            now += rng.choice([0.001, 0.25, 1.0, 7.0])
        key = rng.choice(pool)
        assert a.take(key, now, rate, burst) == b.take(key, now, rate, burst), (seed, step)
        assert (a.tracked, a.evictions) == (b.tracked, b.evictions), (seed, step)


def xinetd_policy(d, rng: random.Random) -> list[str]:
    """xinetd services whose parent checks run in the plan (per_source,
    instances, cps) beside hosts_access, with rate limits on or off; their
    ids."""
    out, ids = ["defaults\n{\n\tinstances\t= 50\n}\n"], []
    for k in range(rng.randrange(1, 5)):
        name = ["echo", "daytime", "discard", "chargen"][k]
        ids.append(f"{name}-{k}")
        attrs = {"type": "INTERNAL UNLISTED", "id": f"{name}-{k}", "socket_type": "stream",
                 "protocol": "tcp", "wait": "no", "user": "root", "port": str(5000 + k),
                 "flags": "IPv4", "per_source": str(rng.randrange(1, 3))}
        if rng.random() < 0.5:
            attrs["only_from"] = rng.choice(["10.0.0.0/8 2001:db8::/32", "10.1.0.0/16",
                                             "2001:db8:0:1::/64 10.0.0.0/8"])
        if rng.random() < 0.5:
            attrs["instances"] = str(rng.randrange(1, 6))
        if rng.random() < 0.5:
            attrs["cps"] = rng.choice(["4 1", "50 10"])
        out.append(f"service {name}\n{{\n" + "".join(f"\t{a}\t= {v}\n" for a, v in attrs.items())
                   + "}\n")
    if rng.random() < 0.3:
        # a SENSOR: its clients are refused by every service for a while
        # (state the address lists alone do not hold: Python's)
        ids.append("sensor-9")
        out.append("service time\n{\n\ttype = INTERNAL UNLISTED\n\tid = sensor-9\n"
                   "\tsocket_type = stream\n\tprotocol = tcp\n\twait = no\n\tuser = root\n"
                   "\tport = 5009\n\tflags = IPv4 SENSOR\n\tdeny_time = 10\n}\n")
    (d / "xinetd.conf").write_text("".join(out))
    (d / "hosts.allow").write_text("ALL: 10.0.0.0/255.0.0.0 [2001:db8::]/32\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    rate = rng.choice([0, 2, 5])
    (d / "policy.toml").write_text(
        f"[limits]\nrate = {rate}\nburst = {rate}\nipv6_prefix = {rng.choice([48, 64, 128])}\n"
        '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\ndeny = "hosts.deny"\n'
        '[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    return ids


@pytest.mark.parametrize("seed", range(BASE, BASE + 10 * SCALE))
def test_plan_with_xinetd_sources_equals_python_path(tmp_path, seed):
    """Several xinetd services in one plan (their LimitState slots are not
    their places in the plan) and IPv6 clients of one network: per_source
    counts each address apart whatever ``ipv6_prefix`` makes of the rate
    limit's key.  Leases are taken (in Python) and released between reads."""
    from acl.policy import load_policy

    rng = random.Random(seed)
    ids = xinetd_policy(tmp_path, rng)
    fast = Engine(load_policy(tmp_path / "policy.toml"))
    slow = Engine(load_policy(tmp_path / "policy.toml"), batch=False)
    planned = set(fast.plan.services) if fast.plan is not None else set()
    assert not set(ids) & planned if "sensor-9" in ids else set(ids) <= planned
    clients = ["10.1.1.1", "10.1.1.2", "10.2.0.1", "2001:db8:0:1::1", "2001:db8:0:1::2",
               "2001:db8:0:1:8000::1", "2001:db8:0:2::1", "2001:db8::"]
    now = 1000.0
    for _ in range(6):
        frames = []
        for _ in range(rng.randrange(20, 120)):
            rid = rng.getrandbits(32)
            if rng.random() < 0.1:
                frames.append(wb.encode_release(rid, rng.randrange(1, 40)))
                continue
            frames.append(wb.encode_decide(rid, Request(rng.choice(ids), rng.choice(clients),
                                                        lease=rng.random() < 0.3)))
        blob = b"".join(frames)
        assert answer(fast, blob, now, rng.choice([1 << 20, 50])) == \
            answer(slow, blob, now, 1 << 20)
        now += rng.choice([0.0, 0.2, 1.0])
    a, b = fast.counters(), slow.counters()
    assert (a["decisions"], a["limit_trips"]) == (b["decisions"], b["limit_trips"])


def test_a_read_of_thousands_of_small_answers_equals_python_path(tmp_path, monkeypatch):
    """Small answers (files named "a" and "d": short locations): the reply
    buffer holds more than the 4,096 frames a pass can track, so a long
    read is cut into passes by that count."""
    from acl.compile.tcpw import load_hosts_access

    monkeypatch.chdir(tmp_path)
    Path("a").write_text("sshd: 10.0.0.0/255.0.0.0 [2001:db8::]/32\n")
    Path("d").write_text("ALL: ALL\n")
    layer, _ = load_hosts_access("a", "d")
    policy = Policy(None, [Source("hosts_access", layer, frozenset({"sshd"}), ())])
    fast, slow = Engine(policy), Engine(policy, batch=False)
    rng = random.Random(5)
    blob = b"".join(wb.encode_decide(rng.getrandbits(32), Request("sshd", c)) for c in
                    rng.choices(["10.0.0.1", "11.0.0.1", "2001:db8::1", "2001:db9::1"], k=9000))
    check(fast, slow, blob, 9000, 1.0, 1 << 20)
    assert fast.plan.residual == 0


@pytest.mark.parametrize("rules", [
    "sshd: 255.255.255.254 : deny\nsshd: 255.255.255.0/255.255.255.0 : allow\n",
    "sshd: 255.255.255.254 : deny\nsshd: 0.0.0.0/0.0.0.0\n",
    "sshd: 255.255.255.128/255.255.255.128 255.255.255.254\n",
    "sshd: 255.\nsshd: 255.255.255.254 : deny\n",
])
def test_the_top_address_after_a_range_that_ends_below_it(tmp_path, rules):
    """A range table whose last range starts at 255.255.255.255 (a rule's
    range ends at .254): libwrap's net/mask never matches that address, so
    it stays Python's there too."""
    from acl.compile.tcpw import load_hosts_access

    (tmp_path / "a").write_text(rules)
    (tmp_path / "d").write_text("sshd: 255.255.255.0/255.255.255.0\n")
    layer, _ = load_hosts_access(str(tmp_path / "a"), str(tmp_path / "d"))
    policy = Policy(None, [Source("hosts_access", layer, None, ())])
    fast, slow = Engine(policy), Engine(policy, batch=False)
    blob = b"".join(wb.encode_decide(i, Request("sshd", f"255.255.255.{k}"))
                    for i, k in enumerate([255, 254, 253, 128, 127, 0]))
    check(fast, slow, blob, 6, 1.0, 1 << 20)


@pytest.mark.parametrize("over", [0, 1])
def test_an_answer_of_64_kib_is_planned_one_byte_more_is_python_s(tmp_path, over):
    """A DECISION frame of exactly 64 KiB is the plan's; one a byte longer
    is left to Python (which sends it: DECISION frames may be larger)."""
    from acl.compile.tcprules import load_tcprules
    from acl.wire.binary import MAX_FRAME, decision_payload

    rules = tmp_path / "tcp.rules"

    def layer(n: int):
        rules.write_text(f'10.0.0.1:allow,X="{"v" * n}"\n')
        return load_tcprules(str(rules))

    def frame_size(n: int) -> int:
        return 12 + len(decision_payload(layer(n)._decisions["10.0.0.1"]))

    n = 1000 + MAX_FRAME - frame_size(1000) + over
    assert frame_size(n) == MAX_FRAME + over
    policy = Policy(None, [Source("tcprules", layer(n), frozenset({"smtpd"}), ())])
    fast, slow = Engine(policy), Engine(policy, batch=False)
    blob = b"".join(wb.encode_decide(i, Request("smtpd", c))
                    for i, c in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.1"]))
    check(fast, slow, blob, 3, 1.0, 1 << 20)
    assert fast.plan.residual == 2 * over



def test_a_long_read_lets_other_threads_run(tmp_path):
    """run() lets the GIL go for a read of RUN_NOGIL_BYTES or more (the
    module rules): a thread that counts (and gives the GIL back after each
    step) counts during the run() calls.  With the switch interval set far
    beyond the test, it can take the GIL only when the main thread lets it
    go: a run() that kept it would see the count stand still.  Many calls,
    so that the counting thread is scheduled during one of them however
    busy the machine is."""
    import sys
    import threading
    import time

    from acl.compile.tcpw import load_hosts_access

    (tmp_path / "a").write_text("sshd: 10.0.0.0/255.0.0.0\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    layer, _ = load_hosts_access(str(tmp_path / "a"), str(tmp_path / "d"))
    plan = Engine(Policy(None, [Source("hosts_access", layer, None, ())])).plan
    blob = b"".join(wb.encode_decide(i, Request("sshd", "10.0.0.1")) for i in range(3000))
    assert len(blob) >= 1 << 16
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)                  # gives the GIL back: no forced switch needed

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    t = threading.Thread(target=spin)
    t.start()
    try:
        # no GIL released between the calls (no blocking call, no forced
        # switch): only inside them, if run() lets it go
        before = count[0]
        for _ in range(300):
            pos, _, status = plan.run(blob, 0, 1.0)       # one pass: status 0 or 2
            assert pos >= 1 << 16 and status in (0, 2)
        moved = count[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join(timeout=30)
    assert moved, "the counting thread never ran during a long read"


def test_a_reload_that_only_changes_limits_rebuilds_the_rate_answers(tmp_path):
    """The per-service tables kept across reloads (acl/fastpath.py
    ``build_plan``'s cache) hold the rate refusal's action only while the
    rate is on: a reload that turns it on, with the rule files unchanged,
    builds them again -- the plan then refuses by rate as the Python path
    does, and a reload that turns it off answers everything again."""
    from .test_rate_table import verdicts, write

    (tmp_path / "hosts.allow").write_text("sshd: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    write(tmp_path, 16, 0.0, 0.0, 64)
    fast = Engine.from_path(tmp_path / "policy.toml")
    slow = Engine(fast.policy, batch=False)
    one = [Request("sshd", "192.0.2.1")]
    now = 1000.0
    for rate in (0.0, 1.0, 0.0, 2.0, 2.0, 0.0):
        write(tmp_path, 16, rate, 0.0, 64)
        for eng in (fast, slow):
            eng.reload(tmp_path / "policy.toml")
        now += 10.0
        want = [("ALLOW", "OK")] * (3 if rate == 0 else int(max(1.0, rate)))
        want += [("DENY", "RATE")] * (3 - len(want))
        assert verdicts(fast, one * 3, now) == verdicts(slow, one * 3, now) == want, rate
        assert fast.plan is not None and "sshd" in fast.plan.services


@pytest.mark.parametrize("lists", [
    "only_from = 192.0.2.0/24 h.example.org",
    "no_access = h.example.org .other.example.org",
    "only_from = 10.0.0.0/8\n\tno_access = h.example.org",
])
def test_an_xinetd_service_with_names_in_its_lists_stays_python_s(tmp_path, lists):
    """A name in only_from or no_access is matched on the client's name
    (``[names] hosts_file`` here, no DNS): the service is left out of the
    plan, and the answers are the Python path's."""
    from acl.policy import load_policy

    (tmp_path / "hosts").write_text("10.0.0.1 h.example.org\n10.0.0.2 a.other.example.org\n")
    (tmp_path / "xinetd.conf").write_text(
        "service echo\n{\n\ttype = INTERNAL UNLISTED\n\tid = echo-0\n\tsocket_type = stream\n"
        "\tprotocol = tcp\n\twait = no\n\tuser = root\n\tport = 5000\n\tflags = IPv4\n"
        f"\t{lists}\n}}\n")
    (tmp_path / "policy.toml").write_text(
        f'[names]\nhosts_file = "{tmp_path / "hosts"}"\n'
        '[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    fast = Engine(load_policy(tmp_path / "policy.toml"))
    slow = Engine(load_policy(tmp_path / "policy.toml"), batch=False)
    assert fast.plan is None or "echo-0" not in fast.plan.services
    blob = b"".join(wb.encode_decide(i, Request("echo-0", c)) for i, c in
                    enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.5", "198.51.100.1"]))
    assert answer(fast, blob, 1.0, 1 << 20) == answer(slow, blob, 1.0, 1 << 20)


@pytest.mark.parametrize("rules", ["2001:db8::1:deny\n:allow\n", "2001:db8::deny\n:allow\n",
                                   "2001:db8:1::5:deny\n10.0.0.1:deny\n:allow\n"])
def test_tcprules_ipv6_keys_leave_ipv6_clients_to_python(tmp_path, rules):
    """tcpserver's IPv6 keys are texts (the address, its prefixes ending in
    ':'): no range table, so IPv6 clients are Python's; IPv4 still the plan's."""
    from acl.compile.tcprules import load_tcprules

    (tmp_path / "r").write_text(rules)
    policy = Policy(None, [Source("tcprules", load_tcprules(str(tmp_path / "r")),
                                  frozenset({"smtpd"}), ())])
    fast, slow = Engine(policy), Engine(policy, batch=False)
    clients = ["2001:db8::1", "2001:db8:1::5", "2001:db9::1", "10.0.0.1", "10.0.0.2"]
    blob = b"".join(wb.encode_decide(i, Request("smtpd", c)) for i, c in enumerate(clients))
    check(fast, slow, blob, 5, 1.0, 1 << 20)
    assert fast.plan.residual == 3
