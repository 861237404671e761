"""The limits core, compiled and twin (``limits`` fixture), on an injected clock."""

from __future__ import annotations

import array
import math
import time

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


def test_cps_reopens_exactly_cps_wait_seconds_after_the_trip(limits):
    # closed for cps_wait seconds from the tripping connection: at that very
    # instant the service is back (as cps_active says), and counting again
    st, s = state(limits, cps_max=1, cps_wait=2)
    assert run(st, s, [1000.25, 1000.5], limits=limits) == [limits.OK, limits.CPS]
    assert not st.cps_active(s, 1002.25) and st.cps_active(s, 1002.5)
    assert run(st, s, [1002.25, 1002.5], limits=limits) == [limits.CPS, limits.OK]
    assert st.cps_state(s) == (1, 1002, 1002.5)


def test_cps_retrips_on_the_old_window_after_reactivation(limits):
    st, s = state(limits, cps_max=3, cps_wait=1)
    seq = run(st, s, [50.1, 50.2, 50.3, 50.4], limits=limits)
    assert seq == [0, 0, 0, limits.CPS]
    # off until 51.4; at 51.5 the window (3 s from 50) still runs: 5 // 1 > 3
    assert run(st, s, [51.5], limits=limits) == [limits.CPS]
    # at 52.6: count 6, 6 // 2 = 3, not > 3
    assert run(st, s, [52.6], limits=limits) == [0]


def test_cps_window_is_cps_max_whole_seconds_long(limits):
    # xinetd: "now - start < max" counts into the window; at exactly max
    # whole seconds a new window opens (count 1), so cps = 1 admits one
    # connection a second however they fall in it (live: cps = 1 1 in
    # test_live_limits.py); a window one second longer would trip here
    st, s = state(limits, cps_max=1, cps_wait=5)
    assert run(st, s, [1000.9, 1001.0], limits=limits) == [limits.OK, limits.OK]
    assert st.cps_state(s) == (1, 1001, 0.0)


def test_a_reload_restarts_the_cps_window_but_not_a_switch_off(limits):
    # real xinetd keeps the count and window start in the service's
    # configuration, which a SIGHUP replaces with the one just read: two
    # connections, a reload, then one a second later is the new window's
    # first, not the old one's third (3 // 1 > 2) -- live in
    # test_live_limits.py.  A service switched off stays off.
    st, s = state(limits, cps_max=2, cps_wait=3)
    assert run(st, s, [1000.1, 1000.2], limits=limits) == [limits.OK] * 2
    st.configure(s, cps_max=2, cps_wait=3)
    assert st.cps_state(s) == (0, 0, 0.0)
    assert run(st, s, [1001.3], limits=limits) == [limits.OK]
    assert st.cps_state(s) == (1, 1001, 0.0)
    assert run(st, s, [1001.4, 1001.5], limits=limits) == [limits.OK, limits.CPS]
    st.configure(s, cps_max=2, cps_wait=3)
    assert run(st, s, [1004.4, 1004.5], limits=limits) == [limits.CPS, limits.OK]
    assert st.cps_trips(s) == 1


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


def test_a_single_minute_interval_admits_that_minute_only(limits):
    # the core's intervals are inclusive minute ranges, so (m, m) is one
    # minute.  xinetd itself cannot show it: its parser refuses a start
    # that is not before the end ("10:00-10:00" disables the service, as
    # acl's reader does), so the narrowest interval it keeps is two minutes
    st, s = state(limits, cps_max=0, times=[(600, 600), (1439, 1439)])
    got = [st.check(s, limits.pack_source(SRC), 1.0, minute=m) for m in (599, 600, 601, 1439)]
    assert got == [limits.TIME, limits.OK, limits.TIME, limits.OK]


def test_lease_ids_are_positive_and_never_reused(limits):
    # the engine reads an inner lease id of 0 as "no xinetd lease" (and
    # never releases it): the core's ids start at 1 and are not given twice
    st, s = state(limits, cps_max=0, instances=1)
    src = limits.pack_source(SRC)
    ids = []
    for _ in range(3):
        ids.append(st.take_lease(s, src))
        assert st.check(s, src, 1.0) == limits.SERVICE_LIMIT
        assert st.release(ids[-1]) and st.check(s, src, 1.0) == limits.OK
    assert min(ids) >= 1 and len(set(ids)) == 3


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


def test_ipv6_sources_that_look_v4_mapped_in_the_low_half_are_aggregated(limits):
    # only ::ffff:a.b.c.d is an IPv4 client; 2001:db8::ffff:a.b.c.d is an
    # IPv6 one (its low 64 bits read 0:ffff:a.b.c.d) and shares its /64's bucket
    st = limits.LimitState(max_sources=64, v6_prefix=64)
    s = st.slot("r")
    st.configure(s, cps_max=0, rate=1.0, burst=2.0)
    got = [st.check(s, limits.pack_source(f"2001:db8::ffff:192.0.2.{i}"), 10.0)
           for i in range(1, 4)]
    assert got == [limits.OK, limits.OK, limits.RATE]


def _at_ns(ns: int) -> float:
    """A ``now`` (s) the cores read as exactly ``ns`` nanoseconds."""
    now = ns / 1e9
    for _ in range(16):
        got = int(now * 1e9)
        if got == ns:
            return now
        now = math.nextafter(now, math.inf if got < ns else -math.inf)
    raise AssertionError(ns)


@pytest.mark.parametrize("rate", [7.0, 3.0, 1e3 / 7, 0.3, 6e4 / 7, 2.5e7 / 3])
def test_a_bucket_refills_one_token_every_rounded_interval(limits, rate):
    # the interval between tokens is 1e9 / rate rounded to the nearest ns
    # (both twins alike): a nanosecond early is refused, on time is granted
    st = limits.LimitState(max_sources=64)
    s = st.slot("r")
    st.configure(s, cps_max=0, rate=rate, burst=1.0)
    src, t_ns, start = limits.pack_source(SRC), round(1e9 / rate), 1_000_000_000
    assert st.check(s, src, _at_ns(start)) == limits.OK
    for k in (1, 2):
        assert st.check(s, src, _at_ns(start + k * t_ns - 1)) == limits.RATE, k
        assert st.check(s, src, _at_ns(start + k * t_ns)) == limits.OK, k


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
        st2.check_batch(b"\0" * 16, array.array("i", [99999]), 9.0, 0.0, bytearray(1))


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


# -- a group pinned full of other sources' leases (the overflow area) -------

KEY = 0x0123456789ABCDEF_FEDCBA9876543210


def _colliders(limits, st, slot, target, n, key=KEY):
    """``n`` IPv4 sources that share ``target``'s group under ``key`` (worked
    out with the twin's hash, which the compiled core must equal)."""
    import acl._limits_py as pure

    groups = st.capacity // limits.WAYS

    def group(ip):
        lo = int.from_bytes(limits.pack_source(ip)[8:], "big")
        return pure._hash(0, lo, pure._USED | slot, key & pure._M64, key >> 64) & (groups - 1)

    g, out = group(target), []
    for i in range(1, 1 << 20):
        ip = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        if ip != target and group(ip) == g:
            out.append(ip)
            if len(out) == n:
                return out
    raise AssertionError("no colliders")


def test_per_source_stays_exact_when_the_group_is_pinned_full(limits):
    st = limits.LimitState(max_sources=1024, key=KEY)
    s = st.slot("echo")
    st.configure(s, cps_max=0, per_source=1)
    target = "127.0.0.2"
    for ip in _colliders(limits, st, s, target, 2):
        assert st.check(s, limits.pack_source(ip), 1.0) == limits.OK
        st.take_lease(s, limits.pack_source(ip))
    src = limits.pack_source(target)
    assert st.check(s, src, 1.0) == limits.OK
    lease = st.take_lease(s, src)
    assert st.lease_overflows == 1 and st.overflow_entries == 1 and st.held(s, src) == 1
    assert [st.check(s, src, 1.0) for _ in range(3)] == [limits.PER_SOURCE_LIMIT] * 3
    assert st.release(lease) and st.overflow_entries == 0 and st.held(s, src) == 0
    assert st.check(s, src, 1.0) == limits.OK


def test_the_hash_is_keyed(limits):
    # sources that collide under one key do not under another, and a state
    # made without a key uses this process's secret, not a fixed one
    st = limits.LimitState(max_sources=1 << 16, key=0)
    s = st.slot("echo")
    a, b = _colliders(limits, st, s, "127.0.0.2", 2, key=0)

    def same_group(state):
        state.configure(state.slot("echo"), cps_max=0)
        for ip in ("127.0.0.2", a, b):
            state.take_lease(s, limits.pack_source(ip))
        return state.lease_overflows == 1

    assert same_group(limits.LimitState(max_sources=1 << 16, key=0))
    assert not same_group(limits.LimitState(max_sources=1 << 16, key=KEY))
    assert not same_group(limits.LimitState(max_sources=1 << 16))
    with pytest.raises(ValueError):
        limits.LimitState(key=-1)


def test_a_full_overflow_area_fails_closed_for_per_source(limits):
    # one group of 2 and an overflow area of 16: the 19th source cannot be
    # counted, so a per_source service refuses it; an unlimited one counts
    # its lease for instances only
    st = limits.LimitState(max_sources=2, key=KEY)
    s, u = st.slot("ps"), st.slot("free")
    st.configure(s, cps_max=0, per_source=2, instances=100)
    st.configure(u, cps_max=0)
    assert st.capacity == 2 and st.overflow_capacity == 16
    srcs = [limits.pack_source(f"127.0.1.{i}") for i in range(19)]
    for src in srcs[:18]:
        assert st.check(s, src, 1.0) == limits.OK
        st.take_lease(s, src)
    assert st.overflow_entries == 16 and st.lease_overflows == 16
    assert st.check(s, srcs[18], 1.0) == limits.PER_SOURCE_LIMIT
    assert st.check(s, srcs[3], 1.0) == limits.OK          # counted: 1 of 2
    assert st.overflow_full == 1
    assert st.check(u, srcs[18], 1.0) == limits.OK
    untracked = st.take_lease(u, srcs[18])
    assert st.overflow_full == 2 and st.active_leases(u) == 1 and st.held(u, srcs[18]) == 0
    # its release gives the instance back (it was never in the table)
    assert st.release(untracked) and st.active_leases(u) == 0 and st.overflow_full == 2
    # per_source = 0 refuses every client anyway: not counted as the area's doing
    z = st.slot("zero")
    st.configure(z, cps_max=0, per_source=0)
    assert st.check(z, srcs[18], 1.0) == limits.PER_SOURCE_LIMIT
    assert st.overflow_full == 2
    # a per_source service far below its limit (no lease at all) refuses
    # the uncountable source too: the area is full, whatever its own count
    f = st.slot("five")
    st.configure(f, cps_max=0, per_source=5)
    assert st.check(f, srcs[18], 1.0) == limits.PER_SOURCE_LIMIT
    assert st.overflow_full == 3 and st.active_leases(f) == 0


# -- service slots come and go ------------------------------------------------

def test_retire_frees_slots_without_leases_and_resets_them(limits):
    st = limits.LimitState(max_sources=64, max_services=3, key=KEY)
    a, b, c = st.slot("a"), st.slot("b"), st.slot("c")
    st.configure(a, cps_max=2, cps_wait=5, rate=1.0, burst=1.0)
    src = limits.pack_source("127.0.0.2")
    assert [st.check(a, src, 1.1) for _ in range(3)] == [0, limits.RATE, limits.CPS]
    lease = st.take_lease(b, src)
    with pytest.raises(ValueError, match="more than 3 services"):
        st.slot("d")
    assert st.retire({"c"}) == ["a"]          # b holds a lease: kept
    assert st.slots() == {"b": b, "c": c} and st.tracked_sources == 1
    d = st.slot("d")
    assert d == a
    assert st.cps_state(d) == (0, 0, 0.0) and st.cps_trips(d) == 0
    assert st.refusals(d, limits.CPS) == 0 and st.check(d, src, 1.2) == limits.OK
    assert st.retire({"c", "d"}) == [] and "b" in st.slots()
    assert st.release(lease) and st.active_leases(b) == 0
    assert st.retire({"c", "d"}) == ["b"] and st.tracked_sources == 0
    assert st.slot("e") == b


def test_services_grow_to_max_services(limits):
    st = limits.LimitState(max_sources=64)
    assert st.max_services == limits.MAX_SERVICES
    slots = [st.slot(f"s{i}") for i in range(3000)]
    assert slots == list(range(3000))
    st.configure(slots[-1], instances=0)
    assert st.check(slots[-1], limits.pack_source("127.0.0.2"), 1.0) == limits.SERVICE_LIMIT


# -- xinetd's own arithmetic --------------------------------------------------

def test_cps_never_trips_while_the_clock_is_behind_the_window(limits):
    # svc_allowed: time_diff = now - start; only 0 becomes 1, so a negative
    # difference (wall clock stepped back) gives count / diff <= 0: no trip
    st, s = state(limits, cps_max=2, cps_wait=1)
    assert run(st, s, [1000.5], limits=limits) == [limits.OK]
    assert run(st, s, [900.5 + i * 0.01 for i in range(20)], limits=limits) == [limits.OK] * 20
    assert st.cps_state(s)[:2] == (21, 1000)
    assert st.cps_trips(s) == 0


def test_negative_max_load_refuses_every_client(limits):
    # xinetd keeps max_load = -1 and refuses for load whatever the load is
    st, s = state(limits, cps_max=0, max_load=-1.0)
    assert run(st, s, [1.0, 2.0], limits=limits, load=0.0) == [limits.LOAD] * 2


def test_access_times_are_read_in_local_time(limits, monkeypatch):
    # with no minute given, the check reads the local clock (xinetd's
    # localtime): in a zone 5:30 ahead of UTC, 00:00-00:29 UTC is 05:30-05:59
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    try:
        st, s = state(limits, cps_max=0, times=[(330, 359)])
        midnight = 1_700_006_400.0          # 2023-11-15 00:00:00 UTC
        assert time.localtime(midnight).tm_hour == 5
        got = [st.check(s, limits.pack_source(SRC), midnight + m * 60.0) for m in (0, 29, 30)]
        assert got == [limits.OK, limits.OK, limits.TIME]
    finally:
        monkeypatch.undo()
        time.tzset()
