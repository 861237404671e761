"""The compiled batch path answers exactly as the Python path does.

Differential: generated hosts.allow/hosts.deny and tcprules files (address
rules, options, env; tcprules keys on hosts and users, and keys tcpserver
never prints such as ``010.``) and generated request streams (v4, v6,
mapped, 255.255.255.255, names, users, leases, unknown services, bad frames)
are answered twice -- by the compiled plan with its Python fallback, and by
the Python path alone -- and the reply bytes must be identical.  The source
table (rate limit) is checked against its pure twin the same way.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import _engine_py
from acl.engine import KERNEL, Engine
from acl.policy import Limits, Policy, Source
from acl.serve.conn import answer_frames
from acl.wire import binary as wb

pytestmark = pytest.mark.skipif(KERNEL != "compiled", reason="the compiled engine is not built")

DAEMONS = ["sshd", "smtpd", "ALL", "sshd, smtpd", "ftpd"]
OPTIONS = ["", "", "", ": allow", ": deny", ": setenv FOO bar", ": severity auth.info",
           ": twist /bin/echo no", ": banners /nonexistent : allow"]


def v4_pattern(rng: random.Random) -> str:
    if rng.random() < 0.05:
        # patterns that cover 255.255.255.255, which libwrap's net/mask
        # never matches (inet_addr's INADDR_NONE) but a prefix table would
        return rng.choice(["0.0.0.0/0.0.0.0", "255.255.0.0/255.255.0.0", "255.",
                           "255.255.255.255"])
    k = rng.randrange(6)
    a, b, c, d = (rng.choice([10, 192, 198, 203]), rng.randrange(4), rng.randrange(4),
                  rng.randrange(8))
    if k == 0:
        return f"{a}.{b}.{c}.{d}"
    if k == 1:
        return f"{a}.{b}."
    if k == 2:
        return f"{a}."
    if k == 3:
        return f"{a}.{b}.0.0/255.255.0.0"
    if k == 4:
        return f"{a}.{b}.{c}.0/255.255.255.0"
    return "ALL" if rng.random() < 0.3 else f"{a}.{b}.{c}."


def v6_pattern(rng: random.Random) -> str:
    n = rng.choice([32, 48, 64, 128])
    net = ipaddress.ip_network(f"2001:db8:{rng.randrange(4):x}::/{n}", strict=False)
    return f"[{net.network_address}]/{n}" if n < 128 else f"[2001:db8::{rng.randrange(8):x}]"


def hosts_file(rng: random.Random, lines: int) -> str:
    out = []
    for _ in range(lines):
        pats = [v4_pattern(rng) if rng.random() < 0.75 else v6_pattern(rng)
                for _ in range(rng.randrange(1, 4))]
        out.append(f"{rng.choice(DAEMONS)}: {' '.join(pats)} {rng.choice(OPTIONS)}".rstrip())
    return "\n".join(out) + "\n"


def tcprules_file(rng: random.Random, lines: int) -> str:
    out = []
    for _ in range(lines):
        a, b, c = rng.choice([10, 192, 198]), rng.randrange(4), rng.randrange(4)
        d = rng.randrange(8)
        key = rng.choice([f"{a}.{b}.{c}.{d}", f"{a}.{b}.{c}.", f"{a}.{b}.", f"{a}."])
        if rng.random() < 0.25:
            # keys on the client's host or user (stream() sends h.example.org
            # and joe), and keys tcpserver never prints (leading zeros)
            key = rng.choice([f"joe@{a}.{b}.{c}.{d}", "joe@=h.example.org", "=h.example.org",
                              "=.example.org", "=", f"0{a}.", f"{a}.0{b}.", f"0{a}.{b}.{c}.{d}",
                              f"{a}.{b}.{c}.0{d}"])
        action = rng.choice(["allow", "deny", f'allow,X="{rng.randrange(9)}"'])
        out.append(f"{key}:{action}")
    if rng.random() < 0.5:
        out.append(":" + rng.choice(["allow", "deny"]))
    return "\n".join(out) + "\n"


def make_policy(tmp, rng: random.Random, rate: float = 0.0, burst: float = 0.0) -> Policy:
    from acl.compile.tcprules import load_tcprules
    from acl.compile.tcpw import load_hosts_access

    (tmp / "hosts.allow").write_text(hosts_file(rng, rng.randrange(0, 12)))
    (tmp / "hosts.deny").write_text(hosts_file(rng, rng.randrange(0, 6)))
    (tmp / "tcp.rules").write_text(tcprules_file(rng, rng.randrange(1, 10)))
    hosts, _ = load_hosts_access(str(tmp / "hosts.allow"), str(tmp / "hosts.deny"))
    sources = [Source("hosts_access", hosts, None, ())]
    if rng.random() < 0.6:
        # use_host=False: tcpserver -H, which never looks a host up
        sources.append(Source("tcprules", load_tcprules(str(tmp / "tcp.rules"),
                                                        use_host=rng.random() < 0.7),
                              frozenset({"smtpd", "ftpd"}), ()))
    return Policy(None, sources, limits=Limits(sources=64, rate=rate, burst=burst))


def client(rng: random.Random) -> str:
    k = rng.randrange(10)
    if k < 5:
        return f"{rng.choice([10, 192, 198, 203])}.{rng.randrange(4)}.{rng.randrange(4)}." \
               f"{rng.randrange(10)}"
    if k < 7:
        return f"2001:db8:{rng.randrange(4):x}::{rng.randrange(10):x}"
    if k == 7:
        return f"::ffff:192.{rng.randrange(4)}.{rng.randrange(4)}.{rng.randrange(10)}"
    if k == 8:
        if rng.random() < 0.2:
            return "255.255.255.255"       # the hosts_access layer's own case
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    return str(ipaddress.IPv6Address(rng.getrandbits(128)))


def stream(rng: random.Random, n: int) -> bytes:
    from acl.model import Request

    frames = []
    for i in range(n):
        k = rng.random()
        if k < 0.03:
            frames.append(wb.frame(0x55, i))                       # unknown type
            continue
        if k < 0.05:
            frames.append(wb.encode_release(i, rng.randrange(1, 5)))
            continue
        if k < 0.06:
            frames.append(wb.encode_ping(i))
            continue
        service = rng.choice(["sshd", "smtpd", "ftpd", "nosuch", "SSHD"])
        req = Request(service, client(rng), rng.randrange(65536),
                      rng.choice([None, "127.0.0.1", "::1"]), rng.randrange(65536),
                      rng.choice([None, None, None, "h.example.org"]),
                      rng.choice([None, None, None, "joe"]), lease=rng.random() < 0.05)
        frames.append(wb.encode_decide(i, req))
    return b"".join(frames)


def answer(engine, blob: bytes, now: float, chunk: int) -> bytes:
    buf = bytearray()
    leases: set = set()
    out = []
    for i in range(0, len(blob), chunk):
        buf += blob[i:i + chunk]
        got, fatal, _ = answer_frames(engine, buf, now, leases, True)
        out.extend(got)
        assert not fatal
    return b"".join(out)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([5, 64, 1 << 20]),
       st.sampled_from([(0.0, 0.0), (5.0, 3.0)]))
def test_plan_equals_python_path(tmp_path_factory, seed, chunk, rate):
    rng = random.Random(seed)
    tmp = tmp_path_factory.mktemp("fp")
    policy = make_policy(tmp, rng, *rate)
    fast = Engine(policy)
    slow = Engine(policy, batch=False)
    assert slow.plan is None
    blob = stream(rng, 400)
    assert len(wb.BinaryDecoder().feed(blob)) == 400
    for now in (1000.0, 1000.5, 1003.0):
        assert answer(fast, blob, now, chunk) == answer(slow, blob, now, 1 << 20)
    # the plan answered frames itself (residual: frames it handed to Python)
    if fast.plan is not None:
        assert fast.plan.residual < 400 * 3
    assert fast.counters()["decisions"] == slow.counters()["decisions"]
    assert fast.counters()["limit_trips"] == slow.counters()["limit_trips"]


def test_plan_handles_the_common_policy_without_python(tmp_path):
    (tmp_path / "a").write_text("sshd: 192.0.2.0/255.255.255.0 [2001:db8::]/32\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    from acl.compile.tcpw import load_hosts_access

    layer, _ = load_hosts_access(str(tmp_path / "a"), str(tmp_path / "d"))
    eng = Engine(Policy(None, [Source("hosts_access", layer, frozenset({"sshd"}), ())]))
    from acl.model import Request

    blob = b"".join(wb.encode_decide(i, Request("sshd", c)) for i, c in
                    enumerate(["192.0.2.1", "192.0.3.1", "2001:db8::7", "2001:db9::7"] * 50))
    pos, out, status = eng.plan.run(blob, 0, 1.0)
    assert (pos, status) == (len(blob), 0) and eng.plan.residual == 0
    verdicts = [r.decision.verdict.name for r in wb.ReplyDecoder().feed(out)]
    assert verdicts == ["ALLOW", "DENY", "ALLOW", "DENY"] * 50


def test_a_plan_of_many_rules_keeps_no_decision_per_rule(tmp_path):
    """A DenyHosts-shaped file of 3,000 lines: the layer keeps its lines as
    columns, and the plan encodes each rule's answer once and keeps the
    bytes, not a Decision per rule (the layer makes one when the Python path
    asks): no object per rule, where there were 21.  (Counted
    as blocks: Engine freezes the collector's view, gc.get_objects.)  The
    answers are the rules'."""
    import gc
    import sys

    from acl.compile.tcpw import load_hosts_access
    from acl.model import Request

    (tmp_path / "a").write_text("".join(f"sshd: 10.0.{i >> 8}.{i & 255}\n" for i in range(3000)))
    (tmp_path / "d").write_text("ALL: ALL\n")
    gc.collect()
    before = sys.getallocatedblocks()
    layer, _ = load_hosts_access(str(tmp_path / "a"), str(tmp_path / "d"))
    eng = Engine(Policy(None, [Source("hosts_access", layer, frozenset({"sshd"}), ())]))
    gc.collect()
    assert sys.getallocatedblocks() - before < 3000
    blob = b"".join(wb.encode_decide(i, Request("sshd", c)) for i, c in
                    enumerate(["10.0.1.2", "10.0.11.183", "10.0.11.184"]))
    pos, out, status = eng.plan.run(blob, 0, 1.0)
    assert (pos, status, eng.plan.residual) == (len(blob), 0, 0)
    got = [(r.decision.verdict.name, str(r.decision.location))
           for r in wb.ReplyDecoder().feed(out)]
    assert got == [("ALLOW", f"{tmp_path / 'a'}:259"), ("ALLOW", f"{tmp_path / 'a'}:3000"),
                   ("DENY", f"{tmp_path / 'd'}:1")]


def test_plan_reads_any_contiguous_buffer_the_same(tmp_path):
    """run() takes bytes, bytearray and memoryview alike, short reads (the
    GIL kept) and reads past RUN_NOGIL_BYTES (the GIL let go) alike; a
    buffer that is not contiguous is refused, not misread."""
    (tmp_path / "a").write_text("sshd: 192.0.2.0/255.255.255.0 [2001:db8::]/32\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    from acl.compile.tcpw import load_hosts_access
    from acl.model import Request

    layer, _ = load_hosts_access(str(tmp_path / "a"), str(tmp_path / "d"))
    eng = Engine(Policy(None, [Source("hosts_access", layer, frozenset({"sshd"}), ())]))
    one = [wb.encode_decide(i, Request("sshd", c)) for i, c in
           enumerate(["192.0.2.1", "192.0.3.1", "2001:db8::7", "2001:db9::7"])]
    short = b"".join(one)
    long = short * 2000                  # ~100 KB: past RUN_NOGIL_BYTES (64 KiB)
    assert len(long) > 1 << 16
    def run_all(buf):
        """Every pass run() needs (a pass stops when its reply buffer is full)."""
        pos, out = 0, []
        for _ in range(100):
            pos, chunk, status = eng.plan.run(buf, pos, 1.0)
            out.append(chunk)
            if pos == len(buf) or status != 2:
                return pos, b"".join(out), status
        raise AssertionError("run() made no progress")

    for blob in (short, long):
        want = run_all(blob)
        assert want[0] == len(blob) and want[2] == 0
        assert len(wb.ReplyDecoder().feed(want[1])) == len(blob) // len(short) * 4
        for kind in (bytearray, memoryview):
            assert run_all(kind(blob)) == want
        cut = len(one[0]) + 5                       # a frame and a half: stop after one
        first_reply = eng.plan.run(one[0], 0, 1.0)[1]
        assert eng.plan.run(blob[:cut], 0, 1.0) == (len(one[0]), first_reply, 0)
    with pytest.raises(BufferError):
        eng.plan.run(memoryview(long)[::2], 0, 1.0)
    with pytest.raises(ValueError):
        eng.plan.run(short, len(short) + 1, 1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3_000_000)), min_size=1,
                max_size=300),
       st.sampled_from([(1.0, 1.0), (2.5, 4.0), (0.5, 0.0), (3.0, 0.0), (100.0, 2.0)]),
       st.sampled_from([16, 20, 64]), st.booleans())
def test_source_table_twins_agree(events, rate_burst, capacity, dense):
    """Same answers and counters, request for request.  ``dense``: the
    requests come milliseconds apart, in order, so buckets run empty and
    which entry an eviction takes shows in the later answers."""
    from acl import _engine

    rate, burst = rate_burst
    a = _engine.SourceTable(capacity)
    b = _engine_py.SourceTable(capacity)
    t_dense = 0
    for who, t in events:
        key = _engine.source_key(bytes([10, 0, who // 256, who % 256]))
        assert key == _engine_py.source_key(bytes([10, 0, who // 256, who % 256]))
        t_dense += t % 50
        now = (t_dense if dense else t) / 1000.0
        assert a.take(key, now, rate, burst) == b.take(key, now, rate, burst)
    assert (a.tracked, a.evictions) == (b.tracked, b.evictions)
    assert a.tracked <= a.capacity


@pytest.mark.parametrize("kind", ["compiled", "pure"])
def test_source_table_keeps_the_recently_refilled_and_a_burst_of_rate(kind):
    """docs/configuration.md [limits]: a full table evicts the least recently
    refilled entry, and ``burst = 0`` means ``max(1, rate)`` -- on each twin
    alone, so a mistake made in both is seen too."""
    from tests.conftest import load_impl

    mod = load_impl(kind, "acl._engine", "acl._engine_py")
    t = mod.SourceTable(16)
    keys = [mod.source_key(bytes([10, 1, i // 256, i % 256])) for i in range(4000)]
    # 16 slots: sources arrive at time 1 until the first eviction; each
    # spends its one token
    held = []
    for k in keys:
        assert t.take(k, 1.0, 1.0, 1.0)
        if t.evictions:
            break
        held.append(k)
    # one of them refills at 2 (and spends that token at once)
    young = held[0]
    assert t.take(young, 2.0, 1.0, 1.0) and not t.take(young, 2.0, 1.0, 1.0)
    # new sources, stamped 1.5: every probe window holding `young` holds
    # older entries too, so no eviction takes it -- its bucket stays empty
    # (evicted, it would come back full)
    for k in keys[len(held) + 1:len(held) + 300]:
        assert t.take(k, 1.5, 1.0, 1.0)
        assert not t.take(young, 2.0, 1.0, 1.0), "the recently refilled entry was evicted"
    assert t.evictions >= 250
    # burst 0 with rate 3: three requests at once, then refused
    key = mod.source_key(bytes([192, 0, 2, 9]))
    assert [t.take(key, 50.0, 3.0, 0.0) for _ in range(4)] == [True, True, True, False]
    key = mod.source_key(bytes([192, 0, 2, 10]))
    assert [t.take(key, 50.0, 0.5, 0.0) for _ in range(2)] == [True, False]


MAPPED = b"\0" * 10 + b"\xff\xff"


@given(st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4),
                 st.binary(min_size=4, max_size=4).map(lambda v4: MAPPED + v4)),
       st.integers(0, 128))
@settings(deadline=None)
def test_source_keys_agree(raw, prefix):
    """Both twins key a source alike -- a v4-mapped address (an IPv4 client
    of an IPv6 socket) as its IPv4 address, never cut to ``prefix``."""
    from acl import _engine

    key = _engine.source_key(raw, prefix)
    assert key == _engine_py.source_key(raw, prefix)
    if len(raw) == 4 or raw[:12] == MAPPED:
        assert key == MAPPED + raw[-4:]


NAN, INF = float("nan"), float("inf")
KEY = b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])
ENGINE_OUT_OF_RANGE = {
    "source_key b''": lambda m, t: m.source_key(b"", 64),
    "source_key b'' /128": lambda m, t: m.source_key(b"", 128),
    "source_key 5 bytes": lambda m, t: m.source_key(b"12345", 64),
    "source_key 17 bytes": lambda m, t: m.source_key(b"\1" * 17, 64),
    "source_key prefix -1": lambda m, t: m.source_key(b"\x20" * 16, -1),
    "source_key prefix 129": lambda m, t: m.source_key(b"\x20" * 16, 129),
    "source_key prefix 2**31": lambda m, t: m.source_key(b"\x20" * 16, 2**31),
    "source_key None": lambda m, t: m.source_key(None, 64),
    "take 1-byte key": lambda m, t: t.take(b"x", 1.0, 1.0, 1.0),
    "take None key": lambda m, t: t.take(None, 1.0, 1.0, 1.0),
    "take burst nan": lambda m, t: t.take(KEY, 1.0, 5.0, NAN),
    "take rate nan": lambda m, t: t.take(KEY, 1.0, NAN, 1.0),
    "take rate inf": lambda m, t: t.take(KEY, 1.0, INF, 1.0),
    "take rate -1": lambda m, t: t.take(KEY, 1.0, -1.0, 1.0),
    "take burst -1": lambda m, t: t.take(KEY, 1.0, 1.0, -1.0),
    "take now nan": lambda m, t: t.take(KEY, NAN, 1.0, 1.0),
    "take now inf": lambda m, t: t.take(KEY, INF, 1.0, 1.0),
    "take now 1e19": lambda m, t: t.take(KEY, 1e19, 1.0, 1.0),
}


@pytest.mark.parametrize("case", ENGINE_OUT_OF_RANGE)
def test_out_of_range_input_is_refused_alike(case):
    """The audit's table: source_key of a wrong length or take of a short
    key answered in the twin and raised in the compiled core; a NaN burst
    made the compiled table see its bucket as an empty slot and insert the
    source again on every request (acl_sources_tracked grew without bound).
    Both refuse each case, with the same exception (and message)."""
    from acl import _engine
    from tests.xinetd.test_limits_twins import outcome

    call = ENGINE_OUT_OF_RANGE[case]
    tables = _engine.SourceTable(16), _engine_py.SourceTable(16)
    got = outcome(lambda: call(_engine, tables[0]))
    assert got == outcome(lambda: call(_engine_py, tables[1])), case
    assert got[0] != "ok", got
    for t in tables:              # the refusal left nothing behind
        assert t.tracked == 0
        assert [t.take(KEY, 1000.0 + i, 5.0, 2.0) for i in range(4)] == [True] * 4
        assert t.tracked == 1


def test_a_source_table_no_memory_holds_is_refused_alike():
    """SourceTable(2**59) multiplied its slot count into a byte size that
    wrapped to 0, got a tiny allocation and wrote 2**59 slots into it (ASan:
    heap-buffer-overflow in __cinit__); past 2**62 its doubling overflowed
    and never ended.  Both twins refuse such capacities: MemoryError, and
    OverflowError past 2**62 (the twin's table of 2**63 slots).  The
    compiled core is asked in a child process, which the old one killed or
    hung."""
    import json
    import os
    import subprocess
    import sys

    from tests.xinetd.test_limits_twins import outcome

    sizes = [2**56 + 1, 2**59, 2**62, 2**62 + 1, 2**63 - 1]
    script = ("import json\nfrom acl._engine import SourceTable\n"
              "from tests.xinetd.test_limits_twins import outcome\n"
              f"print(json.dumps([outcome(lambda: SourceTable(c))[0] for c in {sizes}]))\n")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60, env=env, cwd=root)
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout) == [outcome(lambda c=c: _engine_py.SourceTable(c))[0]
                                        for c in sizes] == ["MemoryError"] * 3 + ["OverflowError"] * 2


def test_a_batch_plan_needs_a_source_table():
    """A plan built with None for its SourceTable crashed (NULL call) at the
    first frame of a rate-limited service: it is refused when built."""
    from acl import _engine

    with pytest.raises(TypeError):
        _engine.BatchPlan([], [], None)


def test_source_table_is_bounded_and_counts_evictions():
    t = _engine_py.SourceTable(16)
    for i in range(1000):
        t.take(_engine_py.source_key(i.to_bytes(4, "big")), 1.0, 1.0, 1.0)
    assert t.tracked == 16 and t.evictions == 1000 - 16


@pytest.mark.parametrize("kind", ["compiled", "pure"])
def test_source_table_refills_after_the_clock_steps_back(kind):
    # an NTP step or `date` moves the clock back an hour: the bucket is not
    # refilled by the step, and refills again from the new time on (it was
    # refused for the whole hour)
    from tests.conftest import load_impl

    mod = load_impl(kind, "acl._engine", "acl._engine_py")
    t = mod.SourceTable(16)
    key = mod.source_key(bytes([127, 0, 0, 2]))
    T = 1_700_000_000.0
    assert [t.take(key, T, 1.0, 2.0) for _ in range(3)] == [True, True, False]
    assert not t.take(key, T - 3600, 1.0, 2.0)          # the step adds nothing
    assert not t.take(key, T - 3600 + 0.5, 1.0, 2.0)
    assert t.take(key, T - 3600 + 1.0, 1.0, 2.0)        # a second later: a token
    assert [t.take(key, T - 3600 + 3.0, 1.0, 2.0) for _ in range(3)] == [True, True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 50)),
                max_size=40),
       st.booleans())
def test_compiled_range_builder_equals_the_python_one(entries, first_match):
    from array import array

    from acl import _engine
    from acl.fastpath import ranges

    entries = [(n & (((1 << ln) - 1) << (32 - ln)), ln, v) for n, ln, v in entries]
    want = ranges(entries, 32, first_match)
    starts, vals = _engine.ranges4(array("I", [e[0] for e in entries]),
                                   array("B", [e[1] for e in entries]),
                                   array("i", [e[2] for e in entries]), first_match)
    assert list(zip(starts, vals, strict=True)) == want


@pytest.mark.parametrize("seed", range(4))
def test_compiled_range_builder_sorts_big_shuffled_sets(seed):
    """Above 4,096 prefixes an unsorted input takes the radix sort: nested,
    duplicated and shuffled prefixes still give the Python builder's ranges."""
    import random
    from array import array

    from acl import _engine
    from acl.fastpath import ranges

    rng = random.Random(seed)
    entries = []
    for _ in range(rng.randrange(5000, 12000)):
        ln = rng.choice([0, 8, 16, 20, 24, 24, 28, 32, rng.randrange(33)])
        net = (rng.choice([0x0A000000, 0xC0A80000, rng.getrandbits(32)])
               | rng.getrandbits(16)) & ((((1 << ln) - 1) << (32 - ln)) & 0xFFFFFFFF)
        entries.append((net, ln, rng.randrange(3000)))
    entries += rng.sample(entries, 500)                  # exact duplicates
    # one prefix named by a hundred rules: more than the 34-deep nesting stack
    entries += [(0x0A000000, 8, rng.randrange(3000)) for _ in range(100)]
    rng.shuffle(entries)
    for first_match in (True, False):
        starts, vals = _engine.ranges4(array("I", [e[0] for e in entries]),
                                       array("B", [e[1] for e in entries]),
                                       array("i", [e[2] for e in entries]), first_match)
        assert list(zip(starts, vals, strict=True)) == ranges(entries, 32, first_match)


def test_remap_values_maps_through_the_table_and_refuses_strays():
    from array import array

    from acl import _engine

    got = _engine.remap_values(array("i", [-1, 0, 2, 2, 1]), array("i", [7, 8, 9, 10]))
    assert list(got) == [7, 8, 10, 10, 9]
    with pytest.raises(ValueError):
        _engine.remap_values(array("i", [3]), array("i", [7, 8, 9, 10]))


@pytest.mark.parametrize("first_match", [True, False])
def test_a_prefix_repeated_by_many_rules_stays_one_range(first_match):
    """A small (qsort) input with the same prefix in 200 rules."""
    from array import array

    from acl import _engine
    from acl.fastpath import ranges

    entries = [(0x0A000000, 8, 500 - i) for i in range(200)] + [(0x0A010000, 16, 7)]
    starts, vals = _engine.ranges4(array("I", [e[0] for e in entries]),
                                   array("B", [e[1] for e in entries]),
                                   array("i", [e[2] for e in entries]), first_match)
    assert list(zip(starts, vals, strict=True)) == ranges(entries, 32, first_match)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 50)),
                max_size=30),
       st.booleans(), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_ranges_answer_like_the_prefix_core(entries, first_match, probes):
    """The leaf-pushed ranges give, for any address, what the prefix core's
    first_match / most_specific lookups give."""
    from bisect import bisect_right

    from acl._core_py import PrefixTable
    from acl.fastpath import ranges

    entries = [(n & (((1 << ln) - 1) << (32 - ln)), ln, v) for n, ln, v in entries]
    table = PrefixTable(4, entries)
    r = ranges(entries, 32, first_match)
    starts = [s for s, _ in r]
    for a in probes + [e[0] for e in entries]:
        got = r[bisect_right(starts, a) - 1][1]
        want = table.first_match(a) if first_match else table.most_specific(a)
        assert got == want, (a, got, want)


class _Transport:
    """Collects what the connection writes (the socket is not under test here)."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False

    def write(self, b):
        self.data += b

    def close(self):
        self.closed = True

    def set_write_buffer_limits(self, **kw):
        pass


class _Server:
    def __init__(self, engine):
        self.engine = engine
        self.compiled = True
        self.errors = []
        self.lease_store = None

    def connected(self, c):
        pass

    def disconnected(self, c):
        pass

    def protocol_error(self, proto, code):
        self.errors.append(code)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_connection_reads_answer_like_the_python_path(tmp_path_factory, seed, cuts):
    """BinaryConnection.data_received (with its no-copy shortcut) gives the
    bytes the Python path gives, however the stream is cut into reads."""
    import time as _time

    from acl.serve.conn import BinaryConnection

    rng = random.Random(seed)
    policy = make_policy(tmp_path_factory.mktemp("conn"), rng)
    fast, slow = Engine(policy), Engine(policy, batch=False)
    blob = stream(rng, 300)
    conn = BinaryConnection(_Server(fast))
    conn.connection_made(_Transport())
    now = 5000.0
    real_time = _time.time
    _time.time = lambda: now            # both paths must see the same clock
    try:
        pos = 0
        for cut in cuts * (len(blob) // sum(cuts) + 1):
            if pos >= len(blob):
                break
            conn.data_received(blob[pos:pos + cut])
            pos += cut
    finally:
        _time.time = real_time
    assert bytes(conn.transport.data) == answer(slow, blob, now, 1 << 20)


#: the 1-minute load the xinetd layers of test_plan_with_xinetd_limits_...
#: read (acl.policy._loadavg), so that max_load refuses for certain
LOADAVG = 1.0


def xinetd_conf(rng: random.Random, n: int) -> tuple[str, list[str], set[str]]:
    """An xinetd.conf of ``n`` services, their ids, and the ids of those
    with ``max_load`` (the batch path leaves them to Python: the load is
    read per request)."""
    out, ids, loaded = ["defaults\n{\n\tinstances\t= 40\n}\n"], [], set()
    builtins = ["echo", "daytime", "discard", "chargen", "time"]
    for k in range(n):
        name = builtins[k % len(builtins)]
        sid = f"{name}-{k}"
        ids.append(sid)
        attrs = [("type", "INTERNAL UNLISTED"), ("id", sid), ("socket_type", "stream"),
                 ("protocol", "tcp"), ("wait", "no"), ("user", "root"), ("port", str(4000 + k)),
                 ("flags", "IPv4")]
        if rng.random() < 0.7:
            attrs.append(("only_from", " ".join(v4_cidr(rng) for _ in range(rng.randrange(1, 4)))))
        if rng.random() < 0.5:
            attrs.append(("no_access", " ".join(v4_cidr(rng) for _ in range(rng.randrange(1, 3)))))
        attrs.append(("cps", rng.choice(["0 0", "3 2", "5 1", "50 10"])))
        if rng.random() < 0.5:
            attrs.append(("per_source", str(rng.randrange(0, 3))))
        if rng.random() < 0.5:
            attrs.append(("instances", str(rng.randrange(0, 4))))
        if rng.random() < 0.2:
            attrs.append(("access_times", rng.choice(["00:00-23:59", "02:00-02:01"])))
        if rng.random() < 0.15:
            # below LOADAVG (refuses every request) or above it
            attrs.append(("max_load", rng.choice(["0.5", "4"])))
            loaded.add(sid)
        body = "".join(f"\t{a}\t= {v}\n" for a, v in attrs)
        out.append(f"service {name}\n{{\n{body}}}\n")
    return "".join(out), ids, loaded


def v4_cidr(rng: random.Random) -> str:
    ln = rng.choice([8, 16, 24, 32])
    a, b, c, d = rng.choice([10, 192, 198]), rng.randrange(4), rng.randrange(4), rng.randrange(10)
    return f"{a}.{b}.{c}.{d}/{ln}" if ln != 32 else f"{a}.{b}.{c}.{d}"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_plan_with_xinetd_limits_equals_python_path(tmp_path_factory, seed):
    """xinetd services: address lists as ranges, cps/instances/per_source/
    access_times through the limits core's check_batch -- same bytes as the
    Python path, leases (taken in Python) included; services with max_load
    (a fixed load, LOADAVG) stay Python's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("acl.policy._loadavg", lambda: LOADAVG)
        _plan_with_xinetd_limits(tmp_path_factory, seed)


def _plan_with_xinetd_limits(tmp_path_factory, seed):
    from acl.model import Request
    from acl.policy import load_policy

    rng = random.Random(seed)
    d = tmp_path_factory.mktemp("xi")
    conf, ids, loaded = xinetd_conf(rng, rng.randrange(1, 4))
    (d / "xinetd.conf").write_text(conf)
    (d / "hosts.allow").write_text("ALL: 10.0.0.0/255.0.0.0 192.0.0.0/255.0.0.0\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    rate = rng.choice([0, 0, 3])
    (d / "policy.toml").write_text(f"""
[limits]
rate = {rate}
burst = {rate}
[[source]]
type = "xinetd"
file = "xinetd.conf"
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
""")
    fast = Engine(load_policy(d / "policy.toml"))
    slow = Engine(load_policy(d / "policy.toml"), batch=False)
    batched = [sid for sid in ids if sid not in loaded]
    planned = set(fast.plan.services) if fast.plan is not None else set()
    assert set(batched) <= planned and not loaded & planned
    frames = []
    for i in range(300):
        r = rng.random()
        if r < 0.05:
            frames.append(wb.encode_release(i, rng.randrange(1, 30)))
            continue
        client = f"{rng.choice([10, 192, 198])}.{rng.randrange(4)}.{rng.randrange(4)}." \
                 f"{rng.randrange(10)}" if rng.random() < 0.85 else \
                 f"2001:db8::{rng.randrange(9):x}"
        frames.append(wb.encode_decide(i, Request(rng.choice(ids + ["nosuch"]), client,
                                                  lease=rng.random() < 0.15)))
    blob = b"".join(frames)
    residual = 0
    for now in (1000.0, 1000.4, 1001.2, 1003.5, 1010.0):
        assert answer(fast, blob, now, rng.choice([7, 300, 1 << 20])) == \
            answer(slow, blob, now, 1 << 20)
        residual = fast.plan.residual if fast.plan is not None else 0
    if batched:
        assert residual < 5 * 300
    assert fast.counters()["decisions"] == slow.counters()["decisions"]
    assert fast.counters()["limit_trips"] == slow.counters()["limit_trips"]


def test_xinetd_cps_trips_inside_the_batch_path(tmp_path):
    from acl.model import Request
    from acl.policy import load_policy

    (tmp_path / "xinetd.conf").write_text(
        "service echo\n{\n\ttype = INTERNAL\n\tid = echo-stream\n\tsocket_type = stream\n"
        "\tprotocol = tcp\n\twait = no\n\tuser = root\n\tflags = IPv4\n"
        "\tonly_from = 192.0.2.0/24\n\tcps = 3 2\n}\n")
    (tmp_path / "p.toml").write_text('[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    eng = Engine(load_policy(tmp_path / "p.toml"))
    blob = b"".join(wb.encode_decide(i, Request("echo-stream", c)) for i, c in
                    enumerate(["192.0.2.1", "198.51.100.1", "192.0.2.2", "192.0.2.3",
                               "192.0.2.4", "192.0.2.5"]))
    pos, out, status = eng.plan.run(blob, 0, 100.0)
    assert (pos, status, eng.plan.residual) == (len(blob), 0, 0)
    got = [(r.decision.verdict.name, r.decision.reason.name)
           for r in wb.ReplyDecoder().feed(out)]
    # the refused address counts toward cps too (spec C.7); the 4th trips it
    assert got == [("ALLOW", "OK"), ("DENY", "ADDRESS"), ("ALLOW", "OK"),
                   ("DENY", "CPS"), ("DENY", "CPS"), ("DENY", "CPS")]
    assert eng.counters()["limit_trips"] == {("echo-stream", "cps"): 3}
