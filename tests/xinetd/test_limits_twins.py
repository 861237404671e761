"""The compiled limits core and its twin agree call for call (hypothesis).

Random configurations and random sequences of checks, batches, leases and
releases on a small table (so evictions and pinned groups happen) must give
the same reason codes, the same counters and the same evictions -- for the
same hash key (each twin draws its own per process; the tests pass one).
Seeded generated scenarios do the same on tables of 2 to 16,384 entries
(262,144 with ACL_SLOW=1), long enough to fill them: evictions, groups
pinned full of leases, a full overflow area, reloads and retires.
"""

from __future__ import annotations

import array
import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import acl._limits_py as pure
from tests.conftest import SLOW, SLOW_SEED_BASE, load_impl

SOURCES = st.one_of(
    st.integers(0, 40).map(lambda i: f"127.0.{i % 3}.{i}"),
    st.integers(0, 40).map(lambda i: f"2001:db8:{i % 4}::{i}"),
    st.binary(min_size=16, max_size=16),
)
CONFIG = st.fixed_dictionaries({
    "cps_max": st.sampled_from([0, 1, 2, 3, 50]),
    "cps_wait": st.integers(0, 3),
    "instances": st.sampled_from([-1, 0, 1, 2, 5]),
    "per_source": st.sampled_from([-1, 0, 1, 2]),
    "max_load": st.sampled_from([0.0, 0.5, 2.0]),
    "times": st.one_of(st.none(), st.lists(
        st.tuples(st.integers(0, 1439), st.integers(0, 1439)).map(lambda t: tuple(sorted(t))),
        max_size=3)),
    "rate": st.sampled_from([0.0, 0.5, 3.0, 1000.0]),
    "burst": st.sampled_from([1.0, 2.0, 4.5]),
})
OPS = st.lists(st.tuples(
    st.sampled_from(["check", "check", "check", "lease", "release", "batch", "retire"]),
    st.integers(0, 2), SOURCES, st.floats(0, 0.7), st.floats(0, 3), st.integers(0, 1439)),
    max_size=120)


def _drive(mod, configs, ops, v6_prefix, key=0):
    stt = mod.LimitState(max_sources=16, v6_prefix=v6_prefix, max_services=4, key=key)
    slots = [stt.slot(f"s{i}") for i in range(3)]
    for s, cfg in zip(slots, configs, strict=True):
        stt.configure(s, **cfg)
    now = 1_700_000_000.0
    leases, out = [], []
    for op, s, src, dt, load, minute in ops:
        now += dt
        raw = mod.pack_source(src)
        if op == "check":
            out.append(stt.check(s, raw, now, load, minute))
        elif op == "lease":
            leases.append(stt.take_lease(s, raw))
        elif op == "release" and leases:
            out.append(stt.release(leases.pop(minute % len(leases))))
        elif op == "batch":
            buf = bytearray(3)
            slots3 = array.array("i", [s, (s + 1) % 3, s])
            if minute % 2:
                # a buffer whose ints are not aligned for ints (a slice of
                # bytes at an odd offset): the core must not load them as
                # ints (UBSan: misaligned load)
                slots3 = memoryview(b"\0" + slots3.tobytes())[1:]
            g = stt.check_batch(raw * 3, slots3, now, load, buf, minute)
            out.append((g, bytes(buf)))
        elif op == "retire":
            # a reload without service s: freed unless it holds leases, then
            # asked for again (a reused slot starts afresh)
            out.append(stt.retire({f"s{i}" for i in range(3) if i != s}))
            slots[s] = stt.slot(f"s{s}")
            stt.configure(slots[s], **configs[s])
    counters = (stt.evictions, stt.tracked_sources, stt.lease_overflows,
                stt.overflow_entries, stt.overflow_full,
                [(stt.active_leases(s), stt.cps_trips(s), stt.cps_state(s),
                  [stt.refusals(s, r) for r in range(10)]) for s in slots])
    return out, counters


@settings(max_examples=150, deadline=None)
@given(configs=st.lists(CONFIG, min_size=3, max_size=3), ops=OPS,
       v6_prefix=st.sampled_from([0, 48, 64, 100, 128]),
       key=st.one_of(st.just(0), st.integers(0, pure.MAX_LIMITS_KEY)))
def test_compiled_and_twin_agree(configs, ops, v6_prefix, key):
    compiled = _compiled()
    assert (_drive(compiled, configs, ops, v6_prefix, key)
            == _drive(pure, configs, ops, v6_prefix, key))


def _compiled():
    return load_impl("compiled", "acl._limits", "acl._limits_py")


def _churn(mod, seed: int, capacity: int):
    """Seeded lease churn (see the test): every answer, then every source's
    held count and the table's counters."""
    rng = random.Random(seed)
    stt = mod.LimitState(max_sources=capacity, max_services=2, key=seed)
    slots = [stt.slot("a"), stt.slot("b")]
    for s in slots:
        stt.configure(s, cps_max=0, per_source=rng.choice([1, 2, 3]))
    pool = [mod.pack_source(f"10.{i // 250}.{i % 250}.1") for i in range(150)]
    held: list[int] = []
    out = []
    for step in range(1500):
        filling = step < 500 or step % 300 < 100       # lease-heavy phases
        op = rng.random()
        s, src = rng.choice(slots), rng.choice(pool)
        if op < (0.75 if filling else 0.35):
            r = stt.check(s, src, 1000.0, 0.0, 0)
            out.append(r)
            if r == 0:
                held.append(stt.take_lease(s, src))
        elif op < 0.85 and held:
            out.append(stt.release(held.pop(rng.randrange(len(held)))))
        else:
            out.append(stt.held(s, src))
    return out, [stt.held(s, src) for s in slots for src in pool], (
        stt.tracked_sources, stt.evictions, stt.lease_overflows, stt.overflow_entries,
        stt.overflow_full, [stt.active_leases(s) for s in slots])


@pytest.mark.parametrize("capacity", [2, 16, 64])
@pytest.mark.parametrize("seed", range(3))
def test_lease_churn_twins_agree(seed, capacity):
    """Many sources taking and giving back leases on a small table: groups
    pin full of leases, the overflow area fills, empties in any order (the
    compiled area's deletion shifts entries back along their probe runs)
    and fills again, and per_source fails closed only for a source whose
    group is pinned.  Both twins answer alike, call for call, and end with
    the same held count for every source."""
    got = _churn(_compiled(), seed, capacity)
    assert got == _churn(pure, seed, capacity)
    # the run reached what it is for: a full overflow area, refusals for it
    if capacity <= 16:
        assert got[2][2] > 16 and got[2][4] > 0, got[2]


# -- generated scenarios at any capacity (evictions, pinned groups, the overflow area)

_STEPS = (0.0, 0.0, 0.25, 0.5, 1.0, 3.0)     # exact in binary: cps_wait lands on a check


def _config(rng, rated=False):
    """A service's limits; a ``rated`` one has a token bucket slow enough to
    run dry (0.5 to 142 tokens a second, burst 1 to 4.5) and no parent limit
    that would refuse first, so checks reach the bucket."""
    if rated:
        return {"cps_max": rng.choice([0, 50]), "cps_wait": rng.choice([0, 1, 2, 3]),
                "instances": rng.choice([-1, 1 << 20]), "per_source": -1,
                "rate": rng.choice([0.5, 3.0, 7.0, 1e3 / 7]),
                "burst": rng.choice([1.0, 1.0, 2.0, 4.5])}
    return {
        "cps_max": rng.choice([0, 0, 0, 1, 2, 3, 50]), "cps_wait": rng.choice([0, 1, 2, 3]),
        "instances": rng.choice([-1, -1, -1, 0, 1, 3, 1 << 20]),
        "per_source": rng.choice([-1, 0, 1, 1, 2, 3]),
        "max_load": rng.choice([0.0, 0.0, 0.5, 2.0, -1.0]),
        "times": rng.choice([None, None, [(600, 600)], [(0, 1439)], [(0, 10), (700, 1000)]]),
        # rates whose 1e9 / rate is not a whole number of ns (the rounding
        # itself is pinned at token boundaries in test_limits_core)
        "rate": rng.choice([0.0, 0.5, 3.0, 7.0, 1e3 / 7, 3e4]),
        "burst": rng.choice([1.0, 2.0, 4.5, 10.0]),
    }


def _pool(rng, capacity):
    """Sources: IPv4 (twice the table), IPv6 sharing /48 and /64 prefixes,
    IPv6 addresses whose low half looks v4-mapped (0:ffff:a.b.c.d after a
    non-zero prefix: aggregated as IPv6), and random ones."""
    n = max(16, 2 * capacity)
    v4 = [pure.pack_source(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") for i in range(n)]
    # (the 4th group's values differ in the bits next to /48's and /56's edge)
    edges = (0, 1, 0x80, 0xff, 0x100, 0x8000, 0xffff)
    v6 = [pure.pack_source(f"2001:db8:{rng.randrange(4)}:{rng.choice(edges):x}"
                           f"::{i >> 16:x}:{i & 0xffff:x}")
          for i in range(n // 4)]
    like_v4 = [pure.pack_source(f"2001:db8:{rng.randrange(2)}::ffff:192.0.2.{i % 250}")
               for i in range(n // 8)]
    return v4 + v6 + like_v4 + [rng.randbytes(16) for _ in range(n // 8)]


def _scenario(mod, seed: int, capacity: int, steps: int):
    """A seeded run of every call on a table of ``capacity``: configs,
    checks (one by one and in batches), leases (after a grant, and adopted
    without a check), releases, reloads (configure again) and retires with
    the slots asked for again in any order (in the drain phase, half the
    time after every lease of the services let go is released, so their
    slots are freed).  The last service always has a slow token bucket, and
    flurries check one source a few times at one instant, so buckets run
    dry.  Every answer, then the counters, the high-water marks, the held
    count of sampled sources and the checks' answers counted by reason."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(4)]
    max_sources = rng.randrange(capacity // 2 + 1, capacity + 1) if capacity > 2 else 2
    # every prefix class, spread over the seeds and capacities
    v6_prefix = (0, 48, 56, 64, 100, 127, 128)[(seed + capacity.bit_length()) % 7]
    stt = mod.LimitState(max_sources=max_sources, v6_prefix=v6_prefix,
                         max_services=6, key=rng.getrandbits(128))
    rated = names[-1]
    configs = {n: _config(rng, n == rated) for n in names}
    slots = {}
    for n in names:
        slots[n] = stt.slot(n)
        stt.configure(slots[n], **configs[n])
    pool = _pool(rng, capacity)
    hot = pool[:8]
    now = 1_700_000_000.0
    leases, out = [], [stt.capacity, stt.overflow_capacity]    # leases: (service, id)
    most_ovf = freed = 0
    reasons = collections.Counter()          # every check's answer, batches' too
    for step in range(steps):
        # phases: fill (mostly leases: groups pin, the overflow area fills),
        # churn (leases and releases alike), drain (mostly releases)
        phase = 0 if step < 0.4 * steps else 1 if step < 0.8 * steps else 2
        take, give = ((0.75, 0.77), (0.45, 0.7), (0.2, 0.7))[phase]
        now += rng.choice(_STEPS) if rng.random() > 0.01 else -5.0     # a clock step back
        n = rng.choice(names)
        s = slots[n]
        src = rng.choice(hot) if rng.random() < 0.2 else rng.choice(pool)
        load = rng.choice([0.0, 0.4, 0.5, 2.0, 3.0])
        minute = rng.choice([0, 5, 600, 601, 800, 1439])
        op = rng.random()
        if op < take / 2:
            r = stt.check(s, src, now, load, minute)
            out.append(r)
            reasons[r] += 1
            if r == 0:
                leases.append((n, stt.take_lease(s, src)))
        elif op < take:
            leases.append((n, stt.take_lease(s, src)))   # adopted: no check
        elif op < give and leases:
            out.append(stt.release(leases.pop(rng.randrange(len(leases)))[1]))
        elif op < 0.8:
            out.append(stt.check(s, src, now, load, minute))
            reasons[out[-1]] += 1
        elif op < 0.85:
            k = rng.randrange(1, 40)
            srcs = [rng.choice(pool) for _ in range(k)]
            sl = array.array("i", [slots[rng.choice(names)] for _ in range(k)])
            buf = bytearray(k)
            out.append((stt.check_batch(b"".join(srcs), sl, now, load, buf, minute), bytes(buf)))
            reasons.update(buf)
        elif op < 0.86:
            out.append(stt.held(s, src))
        elif op < 0.93:
            # a flurry: one source checked a few times at one instant
            f = slots[rated] if rng.random() < 0.5 else s
            got = [stt.check(f, src, now, load, minute) for _ in range(rng.randrange(2, 7))]
            out.append(got)
            reasons.update(got)
        elif op < (0.97 if phase < 2 else 0.95):        # (draining: retire more)
            configs[n] = _config(rng, n == rated)        # a reload: leases kept
            stt.configure(s, **configs[n])
        else:
            keep = {m for m in names if rng.random() < 0.5}
            if phase == 2 and rng.random() < 0.8:    # draining: the others' leases go first
                out += [stt.release(i) for m, i in leases if m not in keep]
                leases = [(m, i) for m, i in leases if m in keep]
            before = len(stt.slots())
            out.append(stt.retire(keep))
            freed += len(stt.slots()) < before
            for m in rng.sample(names, len(names)):      # asked for again, any order
                slots[m] = stt.slot(m)
                stt.configure(slots[m], **configs[m])
            out.append(sorted(stt.slots().items()))
        most_ovf = max(most_ovf, stt.overflow_entries)
    sample = pool if len(pool) <= 512 else rng.sample(pool, 512)
    held = [stt.held(slots[m], x) for m in names for x in sample]
    # the test's own count, not the twin's: every lease it holds is outstanding
    granted = sum(1 for _, i in leases if i)
    assert stt.leases_outstanding == granted == sum(stt.active_leases(slots[m]) for m in names), \
        (stt.leases_outstanding, granted, seed, capacity)
    counters = (stt.evictions, stt.tracked_sources, stt.lease_overflows,
                stt.overflow_entries, stt.overflow_full, stt.leases_outstanding,
                [(stt.active_leases(slots[m]), stt.cps_trips(slots[m]), stt.cps_state(slots[m]),
                  [stt.refusals(slots[m], r) for r in range(10)]) for m in names])
    for _, lease in leases:                              # everything given back
        stt.release(lease)
    after = (stt.overflow_entries, stt.leases_outstanding,
             [stt.active_leases(slots[m]) for m in names],
             sum(stt.held(slots[m], x) for m in names for x in sample), stt.tracked_sources)
    return out, held, counters, after, most_ovf, freed, reasons


def _agree(seed: int, capacity: int, steps: int):
    got = _scenario(_compiled(), seed, capacity, steps)
    want = _scenario(pure, seed, capacity, steps)
    if got[0] != want[0]:
        # the first answer that differs (not a diff of thousands of answers)
        i = next(i for i in range(max(len(got[0]), len(want[0])))
                 if got[0][i:i + 1] != want[0][i:i + 1])
        raise AssertionError(f"seed {seed}, capacity {capacity}: answer {i} differs: "
                             f"compiled {got[0][i:i + 3]}, twin {want[0][i:i + 3]}")
    assert got[1:] == want[1:], (seed, capacity)
    return got


# one run at 16,384 (about 1 s); more and larger ones behind ACL_SLOW
SCENARIOS = [(c, s) for c in (2, 16, 64, 256, 1024, 4096) for s in range(3)] + [(16384, 0)]


@pytest.mark.parametrize(("capacity", "seed"), SCENARIOS)
def test_generated_scenarios_twins_agree(capacity, seed):
    """Generated runs on tables of 2 to 16,384 entries, each long enough to
    fill the table with leases and buckets: evictions, groups pinned full of
    leases, the overflow area filling (and per_source failing closed), its
    entries deleted in any order, reloads and retires.  The compiled core and
    the twin answer alike, call for call, and end alike (every release
    gives everything back: no lease, no lease entry left)."""
    _reached(_agree(seed, capacity, steps=4 * capacity + 600))


def _reached(got):
    """The run reached what it is for -- evictions, a full overflow area,
    per_source failing closed for it, retires that freed a slot, checks
    refused for every reason (token buckets run dry: RATE) -- and its
    releases gave everything back."""
    answers, counters, after, most_ovf, freed = got[0], got[2], got[3], got[4], got[5]
    # (at capacity 2 the one group is pinned by leases most of the run, so a
    # bucket often has nowhere to live: about 1 seed in 7 meets no RATE
    # there; every seed at 16 and up does)
    reasons = got[6]
    assert {pure.OK, pure.CPS, pure.LOAD, pure.TIME, pure.SERVICE_LIMIT,
            pure.PER_SOURCE_LIMIT, pure.RATE} <= {r for r, n in reasons.items() if n}, reasons
    evictions, overflow_full = counters[0], counters[4]
    overflow_capacity = answers[1]
    assert evictions > 0 and most_ovf == overflow_capacity, (counters, most_ovf)
    assert overflow_full > 0 and freed > 0, (overflow_full, freed)
    assert after[:4] == (0, 0, [0] * 4, 0), after


SLOW_SCENARIOS = [(c, s + SLOW_SEED_BASE) for c in (16, 1024, 65536, 262144) for s in range(10, 16)]


@pytest.mark.skipif(not SLOW, reason="long run: set ACL_SLOW=1")
@pytest.mark.parametrize(("capacity", "seed"), SLOW_SCENARIOS)
def test_generated_scenarios_twins_agree_long(capacity, seed):
    """More and larger generated runs (ACL_SLOW=1)."""
    _reached(_agree(seed, capacity, steps=4 * capacity + 2000))


def _bucket_flood(mod, seed: int, capacity: int):
    """Token buckets only: many sources checked at the same instants (equal
    arrival times: ties for eviction), services retired and brought back
    (their buckets freed, empty ways left behind).  Every answer, then the
    counters."""
    rng = random.Random(seed)
    stt = mod.LimitState(max_sources=capacity, v6_prefix=128, max_services=4, key=seed)
    names = ["a", "b", "c"]
    cfg = {n: {"cps_max": 0, "rate": rng.choice([0.5, 2.0, 7.0]),
               "burst": rng.choice([1.0, 2.0])} for n in names}
    for n in names:
        stt.configure(stt.slot(n), **cfg[n])
    pool = [pure.pack_source(f"10.9.{i >> 8}.{i & 255}") for i in range(4 * capacity)]
    now, out = 1_000.0, []
    for _ in range(30 * capacity + 200):
        now += rng.choice((0.0, 0.0, 0.0, 0.5))
        if rng.random() < 0.02:
            gone = rng.choice(names)
            out.append(stt.retire(set(names) - {gone}))
            stt.configure(stt.slot(gone), **cfg[gone])
        else:
            out.append(stt.check(stt.slot(rng.choice(names)), rng.choice(pool), now, 0.0, 0))
    return out, stt.evictions, stt.tracked_sources


@pytest.mark.parametrize("capacity", [2, 4, 16, 64])
@pytest.mark.parametrize("seed", range(3))
def test_bucket_evictions_twins_agree(seed, capacity):
    """Which entry a full group gives up -- the oldest arrival time, the
    first way on a tie, an empty way before any -- is the same in both
    twins (so are their answers after it)."""
    got = _bucket_flood(_compiled(), seed, capacity)
    assert got == _bucket_flood(pure, seed, capacity)
    assert got[1] > 0


def test_twin_api_matches_compiled_api():
    compiled = _compiled()
    assert sorted(compiled.__all__) == sorted(pure.__all__)
    public = {n for n in dir(pure.LimitState) if not n.startswith("_")}
    assert public <= set(dir(compiled.LimitState))
    assert compiled.ENTRY_BYTES == pure.ENTRY_BYTES == 32


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "::ffff:10.1.2.3", "2001:db8::1"])
def test_pack_source_agrees(addr):
    assert _compiled().pack_source(addr) == pure.pack_source(addr)


# -- out-of-range input: refused alike, before anything changes ---------------
def outcome(call):
    """What a call gives: its value, or the exception type -- and for a
    ValueError (the caller's value) its message too, which must match."""
    try:
        return "ok", call()
    except ValueError as exc:
        return "ValueError", str(exc)
    except Exception as exc:  # noqa: BLE001 -- the type is what is compared
        return type(exc).__name__, None


def _state(mod):
    st = mod.LimitState(16, key=1)
    st.slot("a")
    return st


NAN, INF = float("nan"), float("inf")
SRC = b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])
OUT_OF_RANGE = {
    "instances 2**31": lambda st: st.configure(0, instances=2**31),
    "per_source 2**31": lambda st: st.configure(0, per_source=2**31),
    "instances -2": lambda st: st.configure(0, instances=-2),
    "instances nan": lambda st: st.configure(0, instances=NAN),
    "cps_max 2**32": lambda st: st.configure(0, cps_max=2**32),
    "cps_wait nan": lambda st: st.configure(0, cps_wait=NAN),
    "rate 1e-10": lambda st: st.configure(0, rate=1e-10, burst=1),
    "rate 1e-300": lambda st: st.configure(0, rate=1e-300, burst=1),
    "burst 1e12": lambda st: st.configure(0, rate=1.0, burst=1e12),
    "rate nan": lambda st: st.configure(0, rate=NAN, burst=1),
    "rate inf": lambda st: st.configure(0, rate=INF, burst=1),
    "burst nan": lambda st: st.configure(0, rate=1.0, burst=NAN),
    "burst inf, rate 0": lambda st: st.configure(0, rate=0.0, burst=INF),
    "rate -1": lambda st: st.configure(0, rate=-1.0, burst=1),
    "burst 0.5": lambda st: st.configure(0, rate=1.0, burst=0.5),
    "max_load nan (xinetd's sscanf takes it)": lambda st: st.configure(0, max_load=NAN),
    "times float": lambda st: st.configure(0, times=[(0.5, 3)]),
    "times 1440": lambda st: st.configure(0, times=[(0, 1440)]),
    "check now nan": lambda st: st.check(0, SRC, NAN, 0.0, -1),
    "check now inf": lambda st: st.check(0, SRC, INF, 0.0, 0),
    "check now -inf": lambda st: st.check(0, SRC, -INF, 0.0, 0),
    "check now 1e19": lambda st: st.check(0, SRC, 1e19, 0.0, -1),
    "check now 2**32 + 1": lambda st: st.check(0, SRC, 2.0**32 + 1, 0.0, 0),
    "check now 2**32": lambda st: st.check(0, SRC, 2.0**32, 0.0, 0),
    "check now -2**32": lambda st: st.check(0, SRC, -(2.0**32), 0.0, 0),
    "batch now nan": lambda st: st.check_batch(SRC, array.array("i", [0]), NAN, 0.0,
                                               bytearray(1), 0),
    "check minute 1440": lambda st: st.check(0, SRC, 1.0, 0.0, 1440),
    "batch minute 1440": lambda st: st.check_batch(SRC, array.array("i", [0]), 1.0, 0.0,
                                                   bytearray(1), 1440),
    "batch out read-only": lambda st: st.check_batch(SRC, array.array("i", [0]), 1.0, 0.0,
                                                     b"\0", 0),
    "refusals -1": lambda st: st.refusals(0, -1),
    "refusals 10": lambda st: st.refusals(0, 10),
    "slot of an int": lambda st: st.slot(5),
    "configure slot 2**31": lambda st: st.configure(2**31),
    "configure slot 2**63": lambda st: st.configure(2**63),
    "configure slot 1.5": lambda st: st.configure(1.5),
    "check slot 2**31": lambda st: st.check(2**31, SRC, 1.0, 0.0, 0),
    "check slot -1": lambda st: st.check(-1, SRC, 1.0, 0.0, 0),
    "take_lease slot 0.0": lambda st: st.take_lease(0.0, SRC),
    "held slot 2**40": lambda st: st.held(2**40, SRC),
    "held source 4 bytes": lambda st: st.held(0, SRC[12:]),
    "held source b''": lambda st: st.held(0, b""),
    "held source 17 bytes": lambda st: st.held(0, SRC + b"\0"),
    "cps_state slot '0'": lambda st: st.cps_state("0"),
    "active_leases slot 2**31": lambda st: st.active_leases(2**31),
    "refusals slot 2**31": lambda st: st.refusals(2**31, 0),
    "cps_trips slot 2**31": lambda st: st.cps_trips(2**31),
    "cps_active slot 2**31": lambda st: st.cps_active(2**31, 1.0),
    "batch slots 3 bytes": lambda st: st.check_batch(SRC, b"\0\0\0", 1.0, 0.0, bytearray(1), 0),
    "max_sources 2**31": lambda st: type(st)(max_sources=2**31),
    "v6_prefix 2**31": lambda st: type(st)(v6_prefix=2**31),
    "max_services 2**31": lambda st: type(st)(max_services=2**31),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_out_of_range_input_is_refused_alike(case):
    """The audit's table: the compiled core raised OverflowError (or cast
    NaN to int64: undefined) where the twin accepted, or the reverse."""
    call = OUT_OF_RANGE[case]
    c_state, p_state = _state(_compiled()), _state(pure)
    got = outcome(lambda: call(c_state))
    assert got == outcome(lambda: call(p_state)), case
    # and a refusal changed nothing: the same check answers the same after it
    if got[0] != "ok":
        assert (_drive_one(c_state), c_state.tracked_sources) == (
            _drive_one(p_state), p_state.tracked_sources)


def _drive_one(st):
    return [st.check(0, SRC, 1000.0, 0.0, 0) for _ in range(3)], [
        st.refusals(0, r) for r in range(10)]


IN_RANGE = {"check now 2**32", "check now -2**32", "max_load nan (xinetd's sscanf takes it)"}


@pytest.mark.parametrize("case", [c for c in OUT_OF_RANGE if c not in IN_RANGE])
def test_out_of_range_cases_are_refusals(case):
    """Every case of the table but the in-range ones (2**32 exactly, a
    max_load xinetd takes) is refused, by either twin."""
    assert outcome(lambda: OUT_OF_RANGE[case](_state(pure)))[0] != "ok"
