"""The limits core, compiled and twin (``limits`` fixture), on an injected clock."""

from __future__ import annotations

import array

import pytest

from acl.model import Reason

SRC = "127.0.0.2"


def state(limits, **cfg):
    st = limits.LimitState(max_sources=64)
    s = st.slot("svc")
    st.configure(s, **cfg)
    return st, s


def run(st, s, times, src=SRC, limits=None, **kw):
    return [st.check(s, limits.pack_source(src), t, **kw) for t in times]


def test_reason_codes_are_the_model_reasons(limits):
    assert limits.CPS == Reason.CPS and limits.LOAD == Reason.LOAD
    assert limits.TIME == Reason.TIME and limits.SERVICE_LIMIT == Reason.SERVICE_LIMIT
    assert limits.PER_SOURCE_LIMIT == Reason.PER_SOURCE_LIMIT
    assert limits.RATE == Reason.RATE and limits.OK == Reason.OK


def test_cps_window_trip_wait_and_no_reset(limits):
    st, s = state(limits, cps_max=2, cps_wait=3)
    ok, cps = limits.OK, limits.CPS
    # 1000.1: window opens; .2 count 2 (2//1 = 2, not > 2); .3 count 3 trips
    assert run(st, s, [1000.1, 1000.2, 1000.3], limits=limits) == [ok, ok, cps]
    assert st.cps_state(s) == (3, 1000, pytest.approx(1003.3))
    # closed for 3 s: refused, not counted
    assert run(st, s, [1001.0, 1003.2], limits=limits) == [cps, cps]
    assert st.cps_state(s)[0] == 3
    assert not st.cps_active(s, 1003.2) and st.cps_active(s, 1003.4)
    # back at 1003.4: 3 s after the window start >= 2 -> new window
    assert run(st, s, [1003.4], limits=limits) == [ok]
    assert st.cps_state(s)[:2] == (1, 1003)
    assert st.cps_trips(s) == 1


def test_cps_retrips_on_the_old_window_after_reactivation(limits):
    st, s = state(limits, cps_max=3, cps_wait=1)
    seq = run(st, s, [50.1, 50.2, 50.3, 50.4], limits=limits)
    assert seq == [0, 0, 0, limits.CPS]
    # off until 51.4; at 51.5 the window (3 s from 50) still runs: 5 // 1 > 3
    assert run(st, s, [51.5], limits=limits) == [limits.CPS]
    # at 52.6: count 6, 6 // 2 = 3, not > 3
    assert run(st, s, [52.6], limits=limits) == [0]


def test_cps_zero_is_off_and_default_is_50_10(limits):
    st, s = state(limits, cps_max=0, cps_wait=0)
    assert set(run(st, s, [7.0] * 500, limits=limits)) == {0}
    st = limits.LimitState(max_sources=8)
    d = st.slot("d")
    got = run(st, d, [7.5] * 52, limits=limits)
    assert got[:50] == [0] * 50 and got[50:] == [limits.CPS] * 2
    assert not st.cps_active(d, 17.4) and st.cps_active(d, 17.5)


def test_load_time_instances_per_source(limits):
    st, s = state(limits, cps_max=0, max_load=1.5, times=[(600, 720)], instances=2,
                  per_source=1)
    src = limits.pack_source(SRC)
    assert st.check(s, src, 1.0, load=1.5, minute=700) == limits.LOAD
    assert st.check(s, src, 1.0, load=1.49, minute=721) == limits.TIME
    assert st.check(s, src, 1.0, load=0.0, minute=720) == limits.OK
    assert st.check(s, src, 1.0, load=0.0, minute=600) == limits.OK
    a = st.take_lease(s, src)
    assert st.check(s, src, 1.0, minute=650) == limits.PER_SOURCE_LIMIT
    other = limits.pack_source("127.0.0.3")
    b = st.take_lease(s, other)
    assert st.active_leases(s) == 2 and st.held(s, src) == 1
    assert st.check(s, limits.pack_source("127.0.0.4"), 1.0, minute=650) == \
        limits.SERVICE_LIMIT
    assert st.release(a) and st.release(b) and not st.release(b)
    assert st.active_leases(s) == 0 and st.tracked_sources == 0
    assert st.check(s, src, 1.0, minute=650) == limits.OK
    # the same client in either family is one source
    assert limits.pack_source("::ffff:127.0.0.2") == src


def test_token_bucket_rate_burst_and_v6_aggregation(limits):
    st = limits.LimitState(max_sources=64, v6_prefix=64)
    s = st.slot("r")
    st.configure(s, cps_max=0, rate=2.0, burst=3.0)
    a = limits.pack_source("2001:db8:1:2::5")
    b = limits.pack_source("2001:db8:1:2:ffff::9")     # same /64
    c = limits.pack_source("2001:db8:1:3::5")          # another /64
    got = [st.check(s, x, 10.0) for x in (a, b, a, a, c)]
    assert got == [0, 0, 0, limits.RATE, 0]
    assert st.check(s, a, 10.49) == limits.RATE        # 0.98 token
    assert st.check(s, a, 10.5) == 0                    # one token after 0.5 s
    assert [st.check(s, a, 100.0) for _ in range(4)] == [0, 0, 0, limits.RATE]
    # IPv4 sources are never aggregated
    v4 = [st.check(s, limits.pack_source(f"10.0.0.{i}"), 200.0) for i in range(5)]
    assert v4 == [0] * 5
    assert st.refusals(s, limits.RATE) == 3


def test_bounded_table_evicts_and_counts(limits):
    st = limits.LimitState(max_sources=32, v6_prefix=128)
    s = st.slot("flood")
    st.configure(s, cps_max=0, rate=1.0, burst=1.0)
    assert st.capacity == 32 and st.memory_bytes == 32 * limits.ENTRY_BYTES
    for i in range(2000):
        st.check(s, (0x20010DB8 << 96 | i).to_bytes(16, "big"), 1.0 + i * 1e-3)
    assert st.tracked_sources <= st.capacity
    assert st.evictions == 2000 - st.tracked_sources
    assert st.evictions > 1900


def test_leases_are_pinned_against_eviction(limits):
    st = limits.LimitState(max_sources=8, v6_prefix=128)
    s = st.slot("x")
    st.configure(s, cps_max=0, per_source=1, rate=1.0, burst=1.0)
    pinned = [limits.pack_source(f"127.0.0.{i}") for i in range(1, 9)]
    leases = [st.take_lease(s, p) for p in pinned]
    for i in range(500):
        st.check(s, (i + 1).to_bytes(16, "big"), 5.0)
    assert all(st.held(s, p) + st.lease_overflows >= 1 for p in pinned)
    tracked = [p for p in pinned if st.held(s, p) == 1]
    for p in tracked:
        assert st.check(s, p, 6.0) == limits.PER_SOURCE_LIMIT
    for lease in leases:
        assert st.release(lease)
    assert st.tracked_sources >= 0 and st.leases_outstanding == 0


def test_batch_equals_single_checks(limits):
    def fresh():
        st = limits.LimitState(max_sources=64)
        slots = [st.slot(n) for n in ("a", "b")]
        st.configure(slots[0], cps_max=3, cps_wait=2, per_source=1)
        st.configure(slots[1], cps_max=0, rate=1.0, burst=2.0)
        return st, slots
    srcs = [limits.pack_source(f"127.0.{i % 3}.{i % 5}") for i in range(40)]
    sl = [i % 2 for i in range(40)]
    st1, _ = fresh()
    st1.take_lease(0, srcs[4])
    single = [st1.check(sl[i], srcs[i], 9.0, 0.0, 30) for i in range(40)]
    st2, _ = fresh()
    st2.take_lease(0, srcs[4])
    out = bytearray(40)
    granted = st2.check_batch(b"".join(srcs), array.array("i", sl), 9.0, 0.0, out, 30)
    assert list(out) == single and granted == single.count(0)
    with pytest.raises(ValueError):
        st2.check_batch(b"\0" * 15, array.array("i", [0]), 9.0, 0.0, bytearray(1))
    with pytest.raises(ValueError):
        st2.check_batch(b"\0" * 16, array.array("i", [9999]), 9.0, 0.0, bytearray(1))


def test_bad_arguments_are_value_errors(limits):
    st = limits.LimitState(max_sources=8)
    with pytest.raises(ValueError):
        st.configure(99999)
    with pytest.raises(ValueError):
        st.configure(0, instances=-2)
    with pytest.raises(ValueError):
        st.configure(0, times=[(10, 5)])
    with pytest.raises(ValueError):
        st.check(0, b"\0" * 4, 1.0)
    with pytest.raises(ValueError):
        limits.pack_source("not-an-ip")
    with pytest.raises(ValueError):
        limits.LimitState(max_sources=1)
