"""Live differential for the limits: cps (trip and reactivation), per_source
and instances held open, against the real xinetd.

acl's :class:`XinetdLayer` is driven with the same real clock as xinetd, one
call per connection, and must predict each connection's fate:

* ``ok``      -- granted (the server ran / the held ``cat`` echoes);
* ``closed``  -- accepted then closed: a refusal by a parent check (cps
  trip, instances, per_source) or by address;
* ``refused`` -- no listening socket: cps switched the service off.

cps works on whole seconds, so connections are timed away from second
boundaries and from the moment a tripped service comes back.  The
sequences are generated (seeded) and the services' limits drawn at random.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from acl.compile.xinetd import XinetdLayer, load_xinetd_text
from acl.model import Reason, Request
from acl.parse.xinetd_resolve import HostsResolver
from tests.conftest import PORTS
from tests.xinetd.live_support import HOSTS, Held, Xinetd, probe, require_live

pytestmark = pytest.mark.live

BASE = PORTS["xinetd"][0] + 500     # 23500..: clear of the address test


def _service(sid, port, server, args, extra):
    return "\n".join([
        f"service {sid}", "{", "  type = UNLISTED", f"  port = {port}", "  socket_type = stream",
        "  protocol = tcp", "  wait = no", "  user = root", f"  server = {server}",
        *([f"  server_args = {args}"] if args else []), "  bind = 127.0.0.1",
        "  flags = NOLIBWRAP IPv4", *("  " + e for e in extra), "}", ""])


def _side_by_side(services, first_port, server="/bin/echo", args="ok", loadavg=None):
    """``services`` ([(id, extra lines)]) on ports from ``first_port``: the
    parsed policy, acl's layer over it and the real xinetd (not started) on
    the same text -- both at the load ``loadavg`` (/proc/loadavg's text)
    when given."""
    text = "defaults\n{\n}\n" + "".join(
        _service(sid, first_port + i, server, args, extra) for i, (sid, extra) in enumerate(services))
    policy, _ = load_xinetd_text(text)
    if loadavg is None:
        return policy, XinetdLayer(policy, resolver=HostsResolver(HOSTS)), Xinetd(text, len(services))
    load = float(loadavg.split()[0])
    return (policy, XinetdLayer(policy, resolver=HostsResolver(HOSTS), loadavg=lambda: load),
            Xinetd(text, len(services), loadavg=loadavg))


def _sleep_to_fraction(lo=0.25, hi=0.6):
    """Sleep until the current second's fraction is inside [lo, hi)."""
    now = time.time()
    frac = now - int(now)
    if lo <= frac < hi:
        return
    time.sleep((lo - frac) % 1.0 + 0.01)


def _predict(layer, sid, src, now):
    """What acl says of one connection, in the probe's vocabulary."""
    active = layer.cps_active(sid, now)
    d = layer.check(Request(service=sid, client=src), now)
    if d.allowed:
        return "ok", d
    if d.reason is Reason.CPS and not active:
        return "refused", d
    return "closed", d


def test_cps_trip_and_reactivation_match_real_xinetd():
    require_live()
    rng = random.Random(5)
    # cps = 1 1: a window of one second, so a probe a second after the
    # window opened starts a new one (a window one second longer trips it)
    specs = [("cpsa", (2, 1)), ("cpsb", (3, 1)), ("cpsc", (1, 1))]
    policy, layer, xd = _side_by_side([(sid, [f"cps = {m} {w}"]) for sid, (m, w) in specs], BASE)
    rows = []
    try:
        xd.start()
        # A burst of quick connections, then single probes a second apart:
        # trips, refusals while off, re-trips on the old window, new windows.
        for i, (sid, _) in enumerate(specs):
            port = BASE + i
            burst = rng.randint(3, 5)
            plan = [0.0] * burst + [0.15] + [1.0] * rng.randint(3, 4)
            _sleep_to_fraction()
            for gap in plan:
                if gap:
                    time.sleep(gap)
                    _sleep_to_fraction()
                # keep clear of the instant a tripped service comes back
                off_until = layer.state.cps_state(layer._slots[sid])[2]
                for _ in range(3):
                    if abs(time.time() - off_until) >= 0.3:
                        break
                    time.sleep(off_until + 0.3 - time.time())
                    _sleep_to_fraction()
                now = time.time()
                assert abs(now - off_until) >= 0.2
                want, d = _predict(layer, sid, "127.0.0.2", now)
                got = probe(port, "127.0.0.2")
                rows.append((sid, round(now % 100, 2), want, got, d.reason.name))
    finally:
        xd.stop()
    kinds = {w for _, _, w, _, _ in rows}
    assert {"ok", "closed", "refused"} <= kinds, rows     # trip, off and back all seen
    bad = [r for r in rows if r[2] != r[3]]
    assert not bad, f"disagreements (service, t, acl, xinetd, reason): {bad}\nall: {rows}"


def test_a_reload_restarts_the_cps_window_as_in_real_xinetd():
    """xinetd keeps a service's cps count in the service's configuration,
    which a reload (SIGHUP) replaces with the one just read: two
    connections in one second, a reload, and a third a second later opens a
    new window -- where without the reload it trips (3 // 1 > 2).  A
    service the cps check switched off stays off across the reload.  acl's
    layer is rebuilt around the same state and put in force, as the engine
    does at a reload's swap."""
    require_live()
    specs = [("plain", ["cps = 2 30"]), ("reloaded", ["cps = 2 30"])]
    policy, layer, xd = _side_by_side(specs, BASE + 60)
    rows = []

    def connect(sid, port):
        now = time.time()
        want, d = _predict(layer, sid, "127.0.0.2", now)
        rows.append((sid, round(now % 100, 2), want, probe(port, "127.0.0.2"), d.reason.name))

    try:
        xd.start()
        _sleep_to_fraction(0.05, 0.3)
        start = int(time.time())
        for _ in range(2):
            connect("plain", BASE + 60)
            connect("reloaded", BASE + 61)
        time.sleep(max(0.0, start + 1.1 - time.time()))
        connect("plain", BASE + 60)                    # the old window: trips
        reloads = xd.log_text().count("Reconfigured")
        xd.proc.send_signal(signal.SIGHUP)
        layer = XinetdLayer(policy, state=layer.state, resolver=HostsResolver(HOSTS))
        layer.activate()
        for _ in range(200):                           # bounded: 2 s
            if xd.log_text().count("Reconfigured") > reloads:
                break
            time.sleep(0.01)
        connect("reloaded", BASE + 61)
        connect("plain", BASE + 60)                    # still switched off
        assert int(time.time()) == start + 1, "the reload took a second: nothing was asked"
    finally:
        xd.stop()
    assert [r[2] for r in rows] == [r[3] for r in rows], rows
    assert [r[3] for r in rows] == ["ok"] * 4 + ["closed", "ok", "refused"], rows


def test_cps_default_and_a_one_value_cps_line_match_real_xinetd():
    """Without a cps line a service has xinetd's 50 10; ``cps = 10`` has the
    wrong number of values, is ignored, and keeps 50 10 too (spec D.3.10,
    D.3.11).  A burst of 55 quick connections trips each at the 51st (when
    it stays inside one second or two: acl predicts every connection at its
    own time, so a slower burst is still compared, only later)."""
    require_live()
    specs = [("cpsdef", []), ("cpsten", ["cps = 10"])]
    policy, layer, xd = _side_by_side(specs, BASE + 40)
    rows = []
    try:
        xd.start()
        for i, (sid, _) in enumerate(specs):
            _sleep_to_fraction(0.02, 0.2)
            for _ in range(55):
                now = time.time()
                want, d = _predict(layer, sid, "127.0.0.2", now)
                rows.append((sid, round(now % 100, 3), want, probe(BASE + 40 + i, "127.0.0.2"),
                             d.reason.name))
    finally:
        xd.stop()
    bad = [r for r in rows if r[2] != r[3]]
    assert not bad, f"disagreements (service, t, acl, xinetd, reason): {bad}\nall: {rows}"
    for sid, _ in specs:
        mine = [r[2] for r in rows if r[0] == sid]
        if mine[:51] == ["ok"] * 50 + ["closed"]:      # the burst stayed in one second
            assert set(mine[51:]) == {"refused"}, rows


def test_per_source_and_instances_held_open_match_real_xinetd():
    require_live()
    rng = random.Random(9)
    specs = [("ps", [f"per_source = {rng.choice([1, 2])}"]),
             ("inst", [f"instances = {rng.choice([2, 3])}"]),
             ("both", ["per_source = 1", "instances = 2"])]
    policy, layer, xd = _side_by_side(specs, BASE + 10, "/bin/cat", "")
    rows = []
    held: list[tuple[Held, int]] = []
    try:
        xd.start()
        for i, (sid, _) in enumerate(specs):
            port = BASE + 10 + i
            for _ in range(14):
                if held and rng.random() < 0.35:
                    conn, lease = held.pop(rng.randrange(len(held)))
                    conn.close()
                    assert layer.release(lease)
                    xd.wait_children(len(held))  # let xinetd reap the server
                    continue
                src = rng.choice(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
                now = time.time()
                want, _d = _predict(layer, sid, src, now)
                conn = Held(port, src)
                rows.append((sid, src, want, conn.result))
                if want == "ok":
                    lease = layer.take_lease(Request(service=sid, client=src, lease=True), now)
                    if conn.result == "ok":
                        held.append((conn, lease))
                    else:
                        layer.release(lease)
            while held:
                conn, lease = held.pop()
                conn.close()
                layer.release(lease)
            xd.wait_children(0)
    finally:
        for conn, _ in held:
            conn.close()
        xd.stop()
    assert {"ok", "closed"} <= {r[2] for r in rows}, rows
    bad = [r for r in rows if r[2] != r[3]]
    assert not bad, f"disagreements (service, source, acl, xinetd): {bad}\nall: {rows}"


def _hm(minute: int) -> str:
    return f"{minute // 60}:{minute % 60:02d}"


def test_max_load_and_access_times_match_real_xinetd():
    """Parent checks b and c against the real load average and local clock.

    access_times intervals are inclusive at both ends, to the minute: the
    intervals ending and starting at the current minute admit, those ending
    just before it or starting just after it do not; an interval that is
    empty or wraps over midnight is a parse error (the service is
    disabled)."""
    require_live()
    now = time.localtime()
    hour, minute = now.tm_hour, now.tm_hour * 60 + now.tm_min
    far = (hour + 12) % 24
    specs = [("loadlow", ["max_load = 0.001"]), ("loadhigh", ["max_load = 999"]),
             ("closed", [f"access_times = {far}:00-{far}:30"]),
             ("open", ["access_times = 0:00-23:59"]),
             ("both", ["max_load = 0.001", f"access_times = {far}:00-{far}:30"]),
             ("empty", ["access_times = 10:00-10:00"]),
             ("wraps", ["access_times = 23:00-1:00"])]
    edges = 2 <= minute <= 1437         # the four intervals below need no wrap
    if edges:
        specs += [("endsnow", [f"access_times = {_hm(minute - 1)}-{_hm(minute)}"]),
                  ("startsnow", [f"access_times = {_hm(minute)}-{_hm(minute + 1)}"]),
                  ("endedjust", [f"access_times = {_hm(minute - 2)}-{_hm(minute - 1)}"]),
                  ("startsnext", [f"access_times = {_hm(minute + 1)}-{_hm(minute + 2)}"])]
    policy, layer, xd = _side_by_side(specs, BASE + 20)
    rows = []
    try:
        xd.start()
        for i, (sid, _) in enumerate(specs):
            if sid in policy.services:
                want, d = _predict(layer, sid, "127.0.0.2", time.time())
                why = d.reason.name
            else:
                want, why = "refused", "DISABLED"          # acl dropped it
            rows.append((sid, want, probe(BASE + 20 + i, "127.0.0.2"), why))
    finally:
        xd.stop()
    assert [r[1] for r in rows] == [r[2] for r in rows], rows
    seen = dict((r[0], r[2]) for r in rows)
    assert seen["empty"] == seen["wraps"] == "refused", rows
    if edges and time.localtime().tm_hour * 60 + time.localtime().tm_min == minute:
        # still the minute the intervals were written for: the edges were asked
        assert [seen[k] for k in ("endsnow", "startsnow", "endedjust", "startsnext")] == \
            ["ok", "ok", "closed", "closed"], rows
    from acl.compile.xinetd import read_loadavg

    if read_loadavg() >= 0.01:                     # an idle machine may show 0.00
        why = dict((r[0], r[3]) for r in rows)
        assert why["both"] == "LOAD"               # load is checked before time
        assert {why[k] for k in ("loadlow", "loadhigh", "closed", "open")} == \
            {"OK", "LOAD", "TIME"}


def test_max_load_edges_match_real_xinetd_at_a_fixed_load():
    """xinetd refuses when the 1-minute load is at or above max_load (spec
    C.6 b): at a load of exactly 0.50 -- the text xinetd reads as
    /proc/loadavg, bind-mounted in its namespace -- max_load 0.5 refuses,
    0.51 admits, 0.49 refuses; acl's layer reads the same number."""
    require_live()
    specs = [("at", "max_load = 0.5"), ("above", "max_load = 0.51"),
             ("below", "max_load = 0.49"), ("hex", "max_load = 0x1p-1")]
    policy, layer, xd = _side_by_side([(sid, [line]) for sid, line in specs], BASE + 50,
                                      loadavg="0.50 0.40 0.30 1/100 4242\n")
    try:
        xd.start()
        rows = [(sid, _predict(layer, sid, "127.0.0.2", time.time())[0],
                 probe(BASE + 50 + i, "127.0.0.2")) for i, (sid, _) in enumerate(specs)]
    finally:
        xd.stop()
    assert [r[1] for r in rows] == [r[2] for r in rows], rows
    assert [r[2] for r in rows] == ["closed", "ok", "closed", "closed"], rows
