"""Live differential: the real xinetd vs ``acl match --xinetd --limits --batch``.

Generated configurations (tests/xinetd/gen.py) are loaded by a real xinetd
in the foreground on 127.0.0.1 / ::1; every service is probed from every
client source (bound to 127.x.y.z, or ::1) and what xinetd did -- ran the
server, accepted and closed, or had no socket because it dropped the
service -- must equal acl's answer for the same service and client.  Zero
disagreements.  ``--limits``: the generated instances / per_source / cps
lines decide too (none that a count of single probes could trip).  Eight
configurations by default (a mutation audit found two left one-in-a-few
address forms -- an IPv6 /128, ``-=`` of an entry with another mask, a
name with a domain twice -- unasked); ``ACL_XINETD_SEEDS`` (comma separated)
replaces the seeds.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.conftest import PORTS, SLOW, SLOW_SEED_BASE
from tests.xinetd import gen
from tests.xinetd.live_support import (
    Xinetd,
    acl_match_batch,
    acl_outcomes,
    probe,
    require_live,
)

pytestmark = pytest.mark.live

SEEDS = [int(s) for s in os.environ.get("ACL_XINETD_SEEDS", "11,12,13,14,15,16,17,18").split(",")]
SERVICES_PER_CONFIG = 40


@pytest.mark.parametrize("seed", SEEDS)
def test_address_decisions_match_real_xinetd(seed, tmp_path):
    _differential(seed, SEEDS.index(seed) % 4, tmp_path)


def _differential(seed, block, tmp_path):
    require_live()
    lo, hi = PORTS["xinetd"]
    first_port = lo + 100 * block
    assert first_port + SERVICES_PER_CONFIG <= lo + 400 <= hi
    rng = random.Random(seed)
    text, services = gen.config(rng, first_port, SERVICES_PER_CONFIG)
    xd = Xinetd(text, len(services))
    try:
        xd.start()
        queries, observed = [], []
        for svc in services:
            if svc["kind"] == "v6only":
                pairs = [("::1", "::1", "::1")]
            else:
                mapped = svc["kind"] == "mapped"
                pairs = [(c, "127.0.0.1", ("::ffff:" + c) if mapped else c)
                         for c in gen.CLIENTS]
            for src, dst, as_seen in pairs:
                observed.append(probe(svc["port"], src, dst))
                queries.append(f"{svc['id']} {as_seen}")
        answers = acl_match_batch(tmp_path, text, queries, limits=True)
        disagreements = [
            (q, obs, ans) for q, obs, ans in zip(queries, observed, answers, strict=True)
            if obs != ans
        ]
        # the generated input must exercise all three outcomes
        assert {"ok", "closed"} <= set(observed), observed
        if disagreements:
            conf_lines = text.splitlines()
            detail = "\n".join(f"{q}: xinetd {o}, acl {a}" for q, o, a in disagreements[:30])
            pytest.fail(f"{len(disagreements)} disagreements of {len(queries)}:\n{detail}\n"
                        f"--- config ---\n" + "\n".join(conf_lines) +
                        f"\n--- xinetd log ---\n{xd.log_text()[-4000:]}")
    finally:
        xd.stop()


def test_enabled_and_disabling_edges_match_real_xinetd(tmp_path):
    """``enabled`` brings back services a bad value disabled (not ``disable =
    yes``); a list that failed half-way is present and empty."""
    require_live()
    from tests.xinetd.helpers import defaults, svc

    lo, _ = PORTS["xinetd"]
    base = lo + 450
    text = (defaults("enabled = a b c d f")
            + svc("a", "cps = x 1", port=base) + svc("b", "only_from = 1,2", port=base + 1)
            + svc("c", "only_from = 127.0.0.2 1,2", "disable = no", port=base + 2)
            + svc("d", "per_source = zz", "disable = yes", port=base + 3)
            + svc("e", port=base + 4)
            + svc("f", "only_from = 127.0.0.{2,3} 127.0.0.{4", port=base + 5)
            + svc("g", "only_from = 127.0.0.{258}", port=base + 6))
    text = text.replace("  server = /bin/echo\n", "  server = /bin/echo\n  server_args = ok\n")
    xd = Xinetd(text, 7)
    try:
        xd.start()
        rows = [(sid, src, probe(base + i, src))
                for i, sid in enumerate("abcdefg") for src in ("127.0.0.2", "127.0.1.2")]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert {r[2] for r in rows} == {"ok", "closed", "refused"}


def test_sensor_list_matches_real_xinetd():
    """A ``flags = SENSOR`` service refuses and puts the client on the global
    list that every other service then refuses (spec C.5, sensor.c)."""
    require_live()
    from acl.compile.xinetd import XinetdLayer, load_xinetd_text
    from acl.model import Request
    from tests.xinetd.helpers import RESOLVER, svc

    lo, _ = PORTS["xinetd"]
    base = lo + 470
    text = (svc("trap", "deny_time = 1", flags="SENSOR NOLIBWRAP", port=base)
            + svc("real", "server_args = ok", port=base + 1))
    policy, _ = load_xinetd_text(text, "s.conf", RESOLVER)
    layer = XinetdLayer(policy, resolver=RESOLVER)
    plan = [("real", "127.0.0.7"), ("trap", "127.0.0.7"), ("real", "127.0.0.7"),
            ("real", "127.0.0.8"), ("trap", "127.0.0.0"), ("real", "127.0.0.8")]
    xd = Xinetd(text, 2)
    rows = []
    try:
        xd.start()
        import time

        for sid, src in plan:
            now = time.time()
            d = layer.check(Request(service=sid, client=src), now)
            rows.append((sid, src, "ok" if d.allowed else "closed",
                         probe(base + (sid == "real"), src)))
            time.sleep(0.1)
    finally:
        xd.stop()
    assert [r[2] for r in rows] == [r[3] for r in rows], rows
    assert rows[2][2] == "closed" and rows[3][2] == "ok"
    # 127.0.0.0 went on the list through the numeric reader: as 127.0.0.0/8
    assert rows[5][2] == "closed"


def test_include_includedir_and_defaults_order_match_real_xinetd(tmp_path):
    """includedir reads names without '.' or a trailing '~' in strcmp order
    (of two files defining one service on one address, the first read is
    kept: "m1" before "m2"); list defaults reach only services read after
    them (spec C.1, C.2)."""
    require_live()
    from tests.xinetd.helpers import defaults, svc

    lo, _ = PORTS["xinetd"]
    base = lo + 480
    inc = tmp_path / "xinetd.d"
    inc.mkdir()
    files = {"b": svc("b", port=base + 1), "a.conf": svc("skipdot", port=base + 2),
             "c~": svc("skiptilde", port=base + 3), "A": svc("upper", port=base + 4),
             "m2": svc("order", "only_from = 127.0.0.3", port=base + 6),
             "m1": svc("order", "only_from = 127.0.0.2", port=base + 6)}
    for name, body in files.items():
        (inc / name).write_text(body.replace("  server = /bin/echo\n",
                                             "  server = /bin/echo\n  server_args = ok\n"))
    (tmp_path / "more.conf").write_text(
        svc("inc", "only_from += 127.0.0.3", port=base + 5).replace(
            "  server = /bin/echo\n", "  server = /bin/echo\n  server_args = ok\n"))
    text = (svc("early", "server_args = ok", port=base)
            + defaults("only_from = 127.0.0.2") + f"includedir {inc}\n"
            + f"include {tmp_path / 'more.conf'}\n")
    xd = Xinetd(text, 7)
    try:
        xd.start()
        rows = [(sid, src, probe(base + i, src))
                for i, sid in enumerate(["early", "b", "skipdot", "skiptilde", "upper", "inc",
                                         "order"])
                for src in ("127.0.0.2", "127.0.0.3")]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert {r[2] for r in rows} == {"ok", "closed", "refused"}
    assert [r[2] for r in rows if r[0] == "order"] == ["ok", "closed"]


def _ok_server(text: str) -> str:
    return text.replace("  server = /bin/echo\n", "  server = /bin/echo\n  server_args = ok\n")


def test_cr_in_files_and_includes_matches_real_xinetd(tmp_path):
    """xinetd ends lines at LF only, in the main file, ``include`` and
    ``includedir``: ``127.0.0.2\r`` fails to parse (nobody is let in) and
    a CRLF service has bad values, so it is disabled (spec C.1)."""
    require_live()
    from tests.xinetd.helpers import svc

    lo, _ = PORTS["xinetd"]
    base = lo + 500
    inc = tmp_path / "xinetd.d"
    inc.mkdir()
    crlf = {"inc": base + 1, "dir": base + 2}
    (tmp_path / "more.conf").write_bytes(
        _ok_server(svc("inc", port=crlf["inc"])).replace("\n", "\r\n").encode())
    (inc / "dir").write_bytes(
        _ok_server(svc("dir", port=crlf["dir"])).replace("\n", "\r\n").encode())
    text = _ok_server(svc("cr", "only_from = 127.0.0.2\r", port=base)
                      + svc("lf", "only_from = 127.0.0.2", port=base + 3)
                      + f"include {tmp_path / 'more.conf'}\n" + f"includedir {inc}\n")
    xd = Xinetd(text, 4)
    try:
        xd.start()
        rows = [(sid, src, probe(port, src))
                for sid, port in (("cr", base), ("lf", base + 3), *crlf.items())
                for src in ("127.0.0.2", "127.0.0.3")]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert {r[2] for r in rows} == {"ok", "closed", "refused"}


#: (only_from value, mapped?) -- a %scope is a number (< 2**32) on any
#: address, an interface name on link-local addresses only (glibc's numeric
#: getaddrinfo, which xinetd calls); an IPv6 /N from 129 to 640 starts and
#: matches nothing
V6_VALUES = [("::1%lo", False), ("::1%1", False), ("::1%4294967296", False),
             ("::%lo/0", False), ("::%1/0", False), ("fe80::%lo/0", False),
             ("::ffff:127.0.0.2%lo", True), ("::ffff:127.0.0.2%1", True),
             ("::/129", False), ("::/600", False)]


def test_v6_scope_ids_and_wide_masks_match_real_xinetd(tmp_path):
    require_live()
    from tests.xinetd.helpers import svc

    lo, _ = PORTS["xinetd"]
    base = lo + 510
    text = "".join(
        _ok_server(svc(f"v{i}", f"only_from = {value}", port=base + i, flags="IPv6 NOLIBWRAP",
                       bind="::ffff:127.0.0.1" if mapped else "::1"))
        for i, (value, mapped) in enumerate(V6_VALUES))
    xd = Xinetd(text, len(V6_VALUES))
    try:
        xd.start()
        rows = [(f"v{i}", "::ffff:127.0.0.2", probe(base + i, "127.0.0.2")) if mapped
                else (f"v{i}", "::1", probe(base + i, "::1", "::1"))
                for i, (_value, mapped) in enumerate(V6_VALUES)]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert {r[2] for r in rows} == {"ok", "closed"}


@pytest.mark.parametrize("mask,does", [("129", "starts"), ("1000", "aborts at start"),
                                       ("-1", "hangs at start")])
def test_v6_mask_overrun_warning_says_what_real_xinetd_does(mask, does):
    """Each tier of the warning for an IPv6 /N over 128, against a real
    xinetd given only that service; a hang is waited for 2 s, then the
    daemon is killed by its PID (Xinetd.stop)."""
    require_live()
    from acl.compile.xinetd import load_xinetd_text
    from tests.xinetd.helpers import RESOLVER, svc

    lo, _ = PORTS["xinetd"]
    port = lo + 530 + ["129", "1000", "-1"].index(mask)
    text = svc("w", f"only_from = ::1/{mask}", port=port, bind="::1", flags="IPv6 NOLIBWRAP")
    _, diags = load_xinetd_text(text, "w.conf", RESOLVER)
    warned = [d.message for d in diags if "over 128" in d.message]
    assert len(warned) == 1 and f"and {does}" in warned[0]
    xd = Xinetd(text, 1)
    try:
        xd.start(timeout=2.0)
        seen = "starts"
    except RuntimeError as exc:
        seen = ("aborts at start" if "stack smashing detected" in str(exc)
                else "hangs at start" if "did not start" in str(exc) else str(exc))
    finally:
        xd.stop()
    assert seen == does


#: factorized values with four or more dots before '{': xinetd shifts by a
#: negative count there (undefined in C); Debian's amd64 build keeps the
#: service and reads each as the entry below says (shifts modulo 32)
MANY_DOTS = [("127.0.0.2.{0}", "127/8"), ("127.0.0.0.{2}", "129/8"),
             ("0.0.0.0.127.{1}", "127.1/16"), ("0.0.0.0.127.0.{0}", "127.0.0/24"),
             ("0.0.0.0.127.0.0.{2}", "127.0.0.2"), ("1.1.1.1.0.0.0.0.{127}", "127/8"),
             ("9.9.9.9.9.{0,127}", "9.0/16 9.127/16"), ("0.0.0.0.{127}", "127/8")]


def test_factorized_values_with_many_dots_match_real_xinetd(tmp_path):
    require_live()
    from tests.xinetd.helpers import svc

    lo, _ = PORTS["xinetd"]
    base = lo + 540
    text = "".join(_ok_server(svc(f"d{i}", f"only_from = {value}", port=base + i))
                   for i, (value, _) in enumerate(MANY_DOTS))
    xd = Xinetd(text, len(MANY_DOTS))
    try:
        xd.start()
        rows = [(f"d{i}", src, probe(base + i, src))
                for i in range(len(MANY_DOTS)) for src in gen.CLIENTS]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert {r[2] for r in rows} == {"ok", "closed"}


SLOW_SEEDS = list(range(100 + SLOW_SEED_BASE, 108 + SLOW_SEED_BASE))


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long run: set ACL_SLOW=1")
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_address_decisions_many_seeds(seed, tmp_path):
    """More generated configurations (ACL_SLOW=1)."""
    _differential(seed, SLOW_SEEDS.index(seed) % 4, tmp_path)


def test_services_sharing_an_id_match_real_xinetd(tmp_path):
    """xinetd keeps a repeated id on another bind address (spec C.2): each
    address is decided by its own service's lists; acl is told which one by
    the server address (``acl match ... SERVICE IP SERVER``)."""
    require_live()
    from tests.xinetd.helpers import svc

    lo, _ = PORTS["xinetd"]
    base = lo + 600
    text = _ok_server(svc("dupb", "only_from = 127.0.0.2", port=base)
                      + svc("dupb", "only_from = 127.0.0.3", port=base, bind="127.0.0.10")
                      + svc("dupc", "only_from = 127.0.0.2", "id = same", port=base + 1)
                      + svc("dupc", "only_from = 127.0.0.3", "id = same", port=base + 1,
                            bind="127.0.0.10"))
    xd = Xinetd(text, 4)
    try:
        xd.start()
        plan = [(sid, port, dst, src) for sid, port in (("dupb", base), ("same", base + 1))
                for dst in ("127.0.0.1", "127.0.0.10") for src in ("127.0.0.2", "127.0.0.3")]
        observed = [probe(port, src, dst) for _, port, dst, src in plan]
    finally:
        xd.stop()
    assert acl_match_batch(tmp_path, text,
                           [f"{sid} {src} {dst}" for sid, _, dst, src in plan]) == observed
    assert observed.count("ok") == 4 and observed.count("closed") == 4


def test_services_without_a_socket_match_real_xinetd(tmp_path):
    """socket_type stream with protocol udp: xinetd reads the service, cannot
    create its socket and never serves it; acl drops it (unknown service)."""
    require_live()
    from tests.xinetd.helpers import svc

    lo, _ = PORTS["xinetd"]
    base = lo + 610
    text = _ok_server(svc("su", port=base).replace("protocol = tcp", "protocol = udp")
                      + svc("ok", port=base + 1))
    xd = Xinetd(text, 2)
    try:
        xd.start()
        rows = [(sid, "127.0.0.2", probe(base + i, "127.0.0.2")) for i, sid in enumerate(["su", "ok"])]
    finally:
        xd.stop()
    assert acl_outcomes(tmp_path, text, rows) == rows
    assert [r[2] for r in rows] == ["refused", "ok"]
