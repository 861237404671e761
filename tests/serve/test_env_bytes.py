"""tcprules environments that are not UTF-8, served end to end.

tcprules and tcpserver treat an env item as bytes: ``LAT1="caf\\xe9"`` (a
Latin-1 e-acute) is set as those bytes.  acl compiles the real tcprules' cdb,
serves it, and the decision must carry the same bytes -- on the binary
protocol by the batch plan's path and by the Python path (a lease) alike, in
``acl query`` and in ``acl match`` -- never ERROR 6 "decision too large".
The oracle is tcprulescheck on the same cdb.  The Postfix answer carries no
environment: a grant is ``action=DUNNO``.

The live server binds only Unix sockets in the test's temp dir.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from acl.client import Client
from acl.model import Decision, Location, Request, Verdict
from acl.serve.conn import answer_frames
from acl.wire import binary as wb
from tests.tcprules.real import check_many, need_tools, parse_check, run_tcprules

from .conftest import connect, policy_toml, start_server

ADDRS = [f"192.0.2.{i}" for i in range(1, 129)]      # hosts.allow lets smtpd in


def _se(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _rules(seed: int = 3) -> bytes:
    """One rule per high byte B: B in a value, B in a name, and a random run
    of bytes 0x80-0xFF (mostly not UTF-8, sometimes a valid sequence)."""
    r = random.Random(seed)
    lines = []
    for addr, b in zip(ADDRS, range(0x80, 0x100), strict=True):
        mixed = bytes(r.choice([r.randrange(0x80, 0x100), 0xC3, 0xA9, 0x61])
                      for _ in range(r.randrange(1, 9)))
        lines.append(addr.encode() + b':allow,V="x' + bytes([b]) + b'y",N' + bytes([b])
                     + b'="n",R="' + mixed + b'"\n')
    return b"".join(lines) + b":deny\n"


@pytest.fixture
def cdb_served(tmp_path):
    real = run_tcprules(_rules())
    assert real.status == "ok", real.stderr
    (tmp_path / "rules.cdb").write_bytes(real.cdb)
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace('file = "tcp.smtpd"', 'file = "rules.cdb"'))
    live = start_server(tmp_path, cfg)
    try:
        yield live, tmp_path / "rules.cdb"
    finally:
        live.stop()


@need_tools
def test_env_bytes_reach_the_client_as_tcprulescheck_sets_them(cdb_served):
    live, cdb = cdb_served
    outs = check_many(os.fspath(cdb), [(a, None, None) for a in ADDRS])
    want = {}
    for addr, out in zip(ADDRS, outs, strict=True):
        key, deny, env = parse_check(out)
        assert (key, deny) == (addr.encode(), False)
        assert any(0x80 <= c for item in env for c in item)
        want[addr] = env
    with Client(live.query) as c:
        for lease in (False, True):                  # the plan's path, then Python's
            got = c.decide_many([Request("smtpd", a, lease=lease) for a in ADDRS])
            for addr, d in zip(ADDRS, got, strict=True):
                assert d.verdict is Verdict.ALLOW
                assert [_se(n) + b"=" + _se(v) for n, v in d.env] == want[addr], addr

    # acl query prints the bytes, whatever the locale's error handler (a
    # UTF-8 locale but C's is strict); acl match prints what tcprulescheck does
    run = [sys.executable, "-m", "acl"]
    strict = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    q = subprocess.run(run + ["query", "-s", live.query, "smtpd", "192.0.2.106"],
                       capture_output=True, timeout=30, env=strict)
    assert q.returncode == 0, q.stderr
    assert b"\n  env V=x\xe9y\n  env N\xe9=n\n" in q.stdout
    m = subprocess.run(run + ["match", "--tcprules", os.fspath(cdb), "192.0.2.106"],
                       capture_output=True, timeout=30, env=strict)
    assert m.returncode == 0, m.stderr
    assert m.stdout.split(b"\n")[1:] == outs[105].split(b"\n")[1:]

    # the Postfix policy answer has no environment to carry: a grant is DUNNO
    with connect(live.policy) as s:
        s.sendall(b"request=smtpd_access_policy\nclient_address=192.0.2.106\n\n")
        assert s.recv(4096) == b"action=DUNNO\n\n"
    assert "Traceback" not in live.text()


class _OneDecision:
    """An engine that gives one decision to every request."""

    plan = None

    def __init__(self, decision: Decision):
        self.decision = decision

    def decide(self, request, now):
        return self.decision

    def release(self, lease):
        return True


@pytest.mark.parametrize("decision, code, text", [
    (Decision(Verdict.ALLOW, env=(("C", "c" * 70000),)), wb.E_DECISION_SIZE,
     "decision too large to send: env value longer than 65535 bytes"),
    (Decision(Verdict.ALLOW, env=(("A", ""),) * 65536), wb.E_DECISION_SIZE,
     "decision too large to send: more than 65535 env or option items"),
    (Decision(Verdict.ALLOW, env=(("A", "\ud800"),)), wb.E_DECISION_ENCODING,
     "decision cannot be encoded: 'utf-8' codec can't encode character '\\ud800'"),
])
def test_only_a_decision_too_large_is_called_too_large(decision, code, text):
    """Text decoded from bytes always encodes back; a str nothing decodes to
    (a lone surrogate) is ERROR 7, its own code, not ERROR 6."""
    errors: list[int] = []
    blob = wb.encode_decide(9, Request("smtpd", "192.0.2.1"))
    out, fatal, _ = answer_frames(_OneDecision(decision), bytearray(blob), 0.0, set(), True,
                                  errors.append)
    (rep,) = wb.ReplyDecoder().feed(b"".join(out))
    assert (rep.type, rep.request_id, rep.code, fatal) == (wb.T_ERROR, 9, code, False)
    assert rep.text.startswith(text) and errors == [code]


def test_decision_text_round_trips_as_bytes():
    d = Decision(Verdict.ALLOW, location=Location("/etc/r\udce9.cdb[1.2.3.4]", 0),
                 env=(("LAT1", "caf\udce9"), ("N\udcff", "v"), ("U", "é"), ("", "x")),
                 options=(("setenv", "A \udce9"),))
    f = wb.encode_decision(1, d)
    assert b"LAT1caf\xe9" in f and b"N\xffv" in f and b"U\xc3\xa9" in f and b"\xe9.cdb" in f
    (rep,) = wb.ReplyDecoder().feed(f)
    assert rep.decision == d


def test_hosts_options_reach_the_client_as_the_file_has_them(tmp_path):
    """libwrap hands an option's value on as the file's bytes (a ``setenv``
    value, a ``banners`` directory): a byte such as 0xE9 must leave the
    sidecar as 0xE9, not as its UTF-8 spelling C3 A9."""
    cfg = policy_toml(tmp_path)
    rule = b"sshd: 198.51.100.7: setenv LAT1 caf\xe9: banners /srv/b\xe9n: spawn echo \xff\n"
    (tmp_path / "hosts.allow").write_bytes(rule + (tmp_path / "hosts.allow").read_bytes())
    live = start_server(tmp_path, cfg)
    try:
        with Client(live.query) as c:
            for lease in (False, True):                  # the plan's path, then Python's
                d = c.decide(Request("sshd", "198.51.100.7", lease=lease))
                assert d.verdict is Verdict.ALLOW
                assert [(_se(k), _se(v)) for k, v in d.options] == [
                    (b"setenv", b"LAT1 caf\xe9"), (b"banners", b"/srv/b\xe9n"),
                    (b"spawn", b"echo \xff")]
    finally:
        live.stop()
    assert "Traceback" not in live.text()
