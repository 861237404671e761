"""The compiled limits core and its twin agree call for call (hypothesis).

Random configurations and random sequences of checks, batches, leases and
releases on a small table (so evictions and pinned groups happen) must give
the same reason codes, the same counters and the same evictions -- for the
same hash key (each twin draws its own per process; the tests pass one).
"""

from __future__ import annotations

import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import acl._limits_py as pure
from tests.conftest import load_impl

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
            g = stt.check_batch(raw * 3, array.array("i", [s, (s + 1) % 3, s]), now, load,
                                buf, minute)
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


def test_twin_api_matches_compiled_api():
    compiled = _compiled()
    assert sorted(compiled.__all__) == sorted(pure.__all__)
    public = {n for n in dir(pure.LimitState) if not n.startswith("_")}
    assert public <= set(dir(compiled.LimitState))
    assert compiled.ENTRY_BYTES == pure.ENTRY_BYTES == 32


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "::ffff:10.1.2.3", "2001:db8::1"])
def test_pack_source_agrees(addr):
    assert _compiled().pack_source(addr) == pure.pack_source(addr)
