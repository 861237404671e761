"""Decisions bigger than 64 KiB (docs/protocol.md, "DECISION frames may be
larger"): a tcprules rule whose environment is 80 KB is sent whole, by the
batch plan's path and by the Python path alike, over a real Unix socket and
through the real acl-wrap; one that cannot be sent at all (a value over
65535 bytes) is ERROR 6 for that request, the connection goes on, and a
lease it took is given back.

The live server binds only Unix sockets in the test's temp dir; acl-wrap's
hand-off listens on 127.0.0.1:24400 (PORTS["serve"]) and its client is
bound to 127.0.0.2.
"""

from __future__ import annotations

import struct

import pytest

from acl.client import Client
from acl.engine import Engine
from acl.errors import ProtocolError
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.policy import load_policy
from acl.serve.conn import answer_frames
from acl.wire import binary as wb

from .conftest import policy_toml, start_server

A, B = "a" * 40000, "b" * 40000        # 80 KB of environment: tcpserver execs it
HUGE = "c" * 70000                     # one value longer than a u16 can say
WRAP_PORT = 24400


def big_policy(d):
    cfg = policy_toml(d)
    (d / "tcp.smtpd").write_text(f'127.0.0.2:allow,A="{A}",B="{B}"\n'
                                 f'127.0.0.3:allow,C="{HUGE}"\n'
                                 ':allow,SMALL="1"\n')
    allow = d / "hosts.allow"
    allow.write_text(allow.read_text().replace("smtpd: 127.0.0.1 127.0.0.2", "smtpd: 127.0.0.0/8"))
    return cfg


def test_codec_sends_decisions_up_to_one_mib_and_no_further():
    d = Decision(Verdict.ALLOW, Reason.OK, Location("/x/tcp.smtpd", 1), (("A", A), ("B", B)))
    f = wb.encode_decision(7, d)
    assert len(f) > wb.MAX_FRAME
    (rep,) = wb.ReplyDecoder().feed(f)
    assert rep.request_id == 7 and rep.decision == d
    # byte by byte too (the type is known only after six bytes)
    dec = wb.ReplyDecoder()
    assert [r for i in range(len(f)) for r in dec.feed(f[i:i + 1])] == [rep]
    many = tuple((f"V{i}", "x" * 60000) for i in range(18))          # ~1.08 MB
    with pytest.raises(ValueError):
        wb.encode_decision(1, Decision(Verdict.ALLOW, env=many))
    with pytest.raises(ValueError):
        wb.encode_decision(1, Decision(Verdict.ALLOW, env=(("C", HUGE),)))
    # the client's bounds: 1 MiB for a DECISION, 64 KiB for anything else
    over = struct.pack("<IBBHI", wb.MAX_DECISION_FRAME - 3, 1, wb.T_DECISION, 0, 1)
    with pytest.raises(ProtocolError):
        wb.ReplyDecoder().feed(over)
    pong = struct.pack("<IBBHI", wb.MAX_FRAME - 3, 1, wb.T_PONG, 0, 1)
    with pytest.raises(ProtocolError):
        wb.ReplyDecoder().feed(pong)


def test_plan_and_python_paths_give_the_same_bytes(tmp_path):
    """The plan leaves the big answers to Python; the replies of a pipelined
    stream are the same with the plan and without, and nothing raises."""
    engine = Engine(load_policy(big_policy(tmp_path)))
    assert "smtpd" in engine.plan.services
    slow = Engine(load_policy(tmp_path / "policy.toml"), batch=False)
    reqs = [Request("smtpd", a) for a in ("127.0.0.2", "127.0.0.9", "127.0.0.3", "127.0.0.2")]
    blob = b"".join(wb.encode_decide(i, r) for i, r in enumerate(reqs, 1))
    errors: list[int] = []
    got, fatal, _ = answer_frames(engine, bytearray(blob), 100.0, set(), True, errors.append)
    want, _, _ = answer_frames(slow, bytearray(blob), 100.0, set(), True, [].append)
    assert not fatal and b"".join(got) == b"".join(want)
    reps = wb.ReplyDecoder().feed(b"".join(got))
    assert [r.request_id for r in reps] == [1, 2, 3, 4]
    assert reps[0].decision.env == (("A", A), ("B", B)) == reps[3].decision.env
    assert reps[1].decision.env == (("SMALL", "1"),)
    assert (reps[2].type, reps[2].code) == (wb.T_ERROR, wb.E_DECISION_SIZE)
    assert "env value longer than 65535 bytes" in reps[2].text
    assert errors == [wb.E_DECISION_SIZE]


def test_a_decision_that_cannot_be_sent_gives_its_lease_back(tmp_path):
    engine = Engine(load_policy(big_policy(tmp_path)))
    leases: set = set()
    blob = wb.encode_decide(5, Request("smtpd", "127.0.0.3", lease=True))
    out, fatal, _ = answer_frames(engine, bytearray(blob), 100.0, leases, True)
    (rep,) = wb.ReplyDecoder().feed(b"".join(out))
    assert (rep.type, rep.request_id, rep.code, fatal) == (wb.T_ERROR, 5, 6, False)
    assert leases == set() and engine.counters()["leases"] == {"smtpd": 0}   # taken, given back


@pytest.fixture
def big_server(tmp_path):
    srv = start_server(tmp_path, big_policy(tmp_path))
    try:
        yield srv
    finally:
        srv.stop()


def test_live_big_decisions_and_the_connection_goes_on(big_server):
    with Client(big_server.query, timeout=10) as c:
        for lease in (False, True):               # the plan's path, then Python's
            d = c.decide("smtpd", "127.0.0.2", lease=lease)
            assert d.allowed and d.env == (("A", A), ("B", B))
            assert bool(d.lease) is lease
        with pytest.raises(ProtocolError, match="error 6: decision too large to send"):
            c.decide("smtpd", "127.0.0.3", lease=True)
        assert c.decide("smtpd", "127.0.0.9").env == (("SMALL", "1"),)
        assert c.ping() == "compiled"
    from .test_server import admin

    st = admin(big_server.admin, "stats")
    assert st["protocol_errors"] == [["binary", 6, 1]]
    assert not any(st["leases"].values())


def test_real_acl_wrap_runs_the_server_with_the_80_kb_environment(big_server, tmp_path):
    from tests.wrap import harness

    # this checkout's sources, whatever acl-wrap is installed (an older one
    # would refuse the 80 KB frame)
    wrap_bin = harness.build_wrap(tmp_path)
    echo = harness.write_exe(tmp_path / "echo-env", harness.ECHO_SERVER)
    argv = [str(wrap_bin), "-s", big_server.query, "-n", "smtpd", str(echo)]
    h = harness.Handoff(argv, "127.0.0.2", WRAP_PORT, env={"PATH": "/usr/bin:/bin"})
    try:
        report = h.read_until(b"READY\n")
    finally:
        rc = h.finish()
    env, _fds = harness.parse_report(report)
    assert env.get("A") == A and env.get("B") == B, report[-300:]
    assert env["TCPREMOTEIP"] == "127.0.0.2" and int(env["ACL_LEASE_ID"]) > 0
    assert rc == 0
