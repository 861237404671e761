"""The Postfix door without Postfix: the decoder's attributes, the reply to
a twist, the SMTP session memory (acl/serve/sessions.py) over a real
engine, and a live server's policy_service across a reload.

The live Postfix runs of the same behaviour are in test_postfix_live.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from acl.engine import Engine
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.serve.sessions import IDLE, Sessions
from acl.wire import postfix as wp

from .conftest import connect, policy_toml, start_server
from .test_server import admin


def pf(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines) + b"\n"


# -- 1. an 8-bit attribute acl does not read -----------------------------------
def test_eight_bit_attributes_acl_does_not_read_are_skipped():
    """smtputf8_enable = no: Postfix passes an 8-bit sender through; acl reads
    no sender, so the request is decided as any other."""
    blob = pf(b"request=smtpd_access_policy", b"protocol_state=RCPT",
              b"sender=caf\xe9@example.org", b"recipient=b\xff@example.net",
              b"helo_name=h\xc3", b"n\xe9me=x", b"client_address=192.0.2.7",
              b"client_port=4567")
    got = wp.PostfixDecoder("smtpd").feed(blob)
    assert got == [wp.Asked(Request("smtpd", "192.0.2.7", 4567), "RCPT")]
    split = wp.PostfixDecoder("smtpd")
    assert [r for i in range(len(blob)) for r in split.feed(blob[i:i + 1])] == got


@pytest.mark.parametrize("attr", [b"client_address", b"client_name", b"reverse_client_name",
                                  b"server_address", b"service", b"request"])
def test_an_attribute_acl_reads_that_is_not_utf8_is_a_bad_request(attr):
    lines = [b"client_address=192.0.2.7"] if attr != b"client_address" else []
    got = wp.PostfixDecoder().feed(pf(*lines, attr + b"=x\xe9"))
    assert len(got) == 1 and isinstance(got[0], wp.BadRequest) and not got[0].fatal
    assert wp.encode_error(got[0]) == (b"action=DEFER_IF_PERMIT acl: bad policy request: "
                                       + attr + b" is not UTF-8\n\n")


# -- 5. twist: the client never reaches the server -------------------------------
def test_twist_is_rejected_spawn_and_banners_stay_dunno():
    where = Location("/etc/hosts.allow", 4)
    twist = Decision(Verdict.DELEGATE, Reason.OK, where, (),
                     (("twist", '/bin/echo "421 go away"'),))
    assert wp.encode(twist) == (b"action=REJECT Access denied: twist (the rule replaces "
                                b"the server) (hosts.allow:4)\n\n")
    for options in ((("spawn", "/bin/true"),), (("banners", "/etc/banners"),),
                    (("setenv", "A B"), ("severity", "mail.info"))):
        assert wp.encode(Decision(Verdict.ALLOW, Reason.OK, where, (), options)) == \
            b"action=DUNNO\n\n"


# -- 2. one SMTP session counts once for cps and rate ------------------------------
XINETD_CPS = """\
service smtpd
{{
	type		= UNLISTED
	socket_type	= stream
	protocol	= tcp
	port		= 25
	wait		= no
	user		= root
	server		= /bin/true
	libwrap		= smtpd
	flags		= IPv4
	only_from	= 127.0.0.0/8 192.0.2.0/24
	cps		= {cps} 30
}}
"""


def engine_with_cps(d, cps: int) -> Engine:
    cfg = policy_toml(d)
    (d / "xinetd.conf").write_text(XINETD_CPS.format(cps=cps))
    return Engine.from_path(cfg)


@pytest.fixture
def cps_engine(tmp_path):
    return engine_with_cps(tmp_path, 3)


def layer_slot(engine) -> int:
    return engine.policy.sources[0].layer._slots["smtpd"]


def asked(port: int, client: str = "127.0.0.1", state: str = "RCPT", instance: str = ""):
    return wp.Asked(Request("smtpd", client, port, "127.0.0.1", 25), state, instance)


def test_requests_of_one_session_count_once_for_cps(cps_engine):
    """cps = 3 30: twenty RCPTs of one session are one connection; three
    more connections trip it, as xinetd would, for every client."""
    sessions = Sessions()
    now = 1_000_000.0
    for i in range(20):
        d = sessions.decide(cps_engine, asked(40001, instance="1a.2b.3c.0"), now + i * 0.01)
        assert d.allowed, (i, d)
    for port in (40002, 40003):
        assert sessions.decide(cps_engine, asked(port), now).allowed
    tripped = sessions.decide(cps_engine, asked(40004), now)
    assert tripped.reason is Reason.CPS and not tripped.allowed
    # a session refused stays refused, one let in stays in
    assert sessions.decide(cps_engine, asked(40004), now + 1).reason is Reason.CPS
    assert sessions.decide(cps_engine, asked(40001, instance="1a.2b.3c.1"), now + 1).allowed
    # another client's new connection is refused while cps has the service off
    assert sessions.decide(cps_engine, asked(40005, "127.0.0.2"), now + 1).reason is Reason.CPS


def test_requests_of_one_session_count_once_for_rate(tmp_path):
    """[limits] rate 1, burst 2: an SMTP session spends one token, however
    many RCPTs it sends; the third session at once is refused for rate (as
    its later requests are), a session let in stays in, and a second later
    the bucket has one token again."""
    engine = Engine.from_path(policy_toml(tmp_path, rate=1.0, burst=2.0))
    sessions = Sessions()
    now = 1_000_000.0
    for port in (40001, 40002):
        for i in range(10):
            d = sessions.decide(engine, asked(port, instance=f"s{port}"), now)
            assert d.allowed and d.reason is Reason.OK, (port, i, d)
    for _ in range(3):
        d = sessions.decide(engine, asked(40003, instance="s3"), now)
        assert not d.allowed and d.reason is Reason.RATE, d
    assert sessions.decide(engine, asked(40001, instance="s40001"), now).allowed
    assert engine.counters()["limit_trips"] == {("smtpd", "rate"): 1}
    assert sessions.decide(engine, asked(40004, instance="s4"), now + 1).allowed
    assert not sessions.decide(engine, asked(40005, instance="s5"), now + 1).allowed


def test_later_requests_ask_the_address_rules_again(cps_engine):
    sessions = Sessions()
    now = 1_000_000.0
    assert sessions.decide(cps_engine, asked(40001, "192.0.2.66"), now).reason is Reason.TCPRULES
    assert sessions.decide(cps_engine, asked(40001, "192.0.2.66"), now).reason is Reason.TCPRULES
    assert sessions.decide(cps_engine, asked(40002, "10.0.0.1"), now).reason is Reason.ADDRESS
    assert sessions.decide(cps_engine, asked(40002, "10.0.0.1"), now).reason is Reason.ADDRESS
    # two connections counted (cps 3: a third would trip, a fourth is refused)
    assert cps_engine.policy.sources[0].layer.state.cps_state(layer_slot(cps_engine))[0] == 2


def test_what_starts_a_new_session(tmp_path):
    """No client_port: counted each time.  CONNECT, a first-message instance
    unlike the last one, or an idle entry: a new connection, counted.  (cps
    100: a window of 100 s, never tripped here.)"""
    cps_engine = engine_with_cps(tmp_path, 100)
    sessions = Sessions()
    now = 1_000_000.0
    state = cps_engine.policy.sources[0].layer.state

    def count():
        return state.cps_state(layer_slot(cps_engine))[0]

    sessions.decide(cps_engine, asked(0), now)
    sessions.decide(cps_engine, asked(0), now)
    assert count() == 2 and len(sessions) == 0
    sessions.decide(cps_engine, asked(40001, state="CONNECT"), now)
    sessions.decide(cps_engine, asked(40001, instance="a.1.2.0"), now + 5)   # same session
    assert count() == 3
    sessions.decide(cps_engine, asked(40001, instance="a.1.2.1"), now + 10)  # its 2nd message
    sessions.decide(cps_engine, asked(40001, instance="a.1.2.1"), now + 15)
    assert count() == 3
    sessions.decide(cps_engine, asked(40001, instance="b.9.9.0"), now + 20)  # port reused
    assert count() == 4
    sessions.decide(cps_engine, asked(40001, state="CONNECT"), now + 25)     # again
    assert count() == 5
    sessions.decide(cps_engine, asked(40001), now + 30 + IDLE)               # forgotten
    assert count() == 1           # (counted: in a new cps window, the last one is over)


def test_the_session_memory_is_bounded():
    sessions = Sessions(max_sessions=4)
    for port in range(40001, 40011):
        sessions.remember(asked(port).request, "", Decision(Verdict.ALLOW), 1.0)
    assert len(sessions) == 4 and sessions.forgotten == 6
    sessions.remember(asked(40011).request, "", Decision(Verdict.ALLOW), 2 + IDLE)
    assert len(sessions) == 1


# -- 4. policy_service follows a reload --------------------------------------------
def test_reload_applies_a_new_policy_service(tmp_path):
    cfg = policy_toml(tmp_path)
    with open(tmp_path / "hosts.allow", "a") as f:
        f.write("postfix-in: 127.0.0.9\n")
    live = start_server(tmp_path, cfg)
    try:
        s = connect(live.policy)     # open across the reload
        ask = b"request=smtpd_access_policy\nclient_address=127.0.0.9\n\n"
        s.sendall(ask)
        assert s.recv(4096).startswith(b"action=REJECT")       # smtpd: denied
        cfg.write_text(cfg.read_text().replace('policy_service = "smtpd"',
                                               'policy_service = "postfix-in"'))
        assert admin(live.admin, "reload")["ok"]
        s.sendall(ask)
        assert s.recv(4096) == b"action=DUNNO\n\n"               # postfix-in: allowed
        s2 = connect(live.policy)
        s2.sendall(ask)
        assert s2.recv(4096) == b"action=DUNNO\n\n"
        assert "policy_service is now 'postfix-in' (was 'smtpd')" in live.text()
        s.close()
        s2.close()
    finally:
        live.stop()


# -- 3. per_source and instances never count Postfix requests: say so ------------------
XINETD_LEASES = XINETD_CPS.format(cps=0).replace("\tcps\t\t= 0 30\n",
                                                 "\tper_source\t= 1\n\tinstances\t= 2\n")


@pytest.mark.parametrize("policy_socket", [True, False])
def test_check_warns_that_per_source_and_instances_do_not_limit_postfix(tmp_path,
                                                                        policy_socket):
    cfg = policy_toml(tmp_path, policy_socket=policy_socket)
    (tmp_path / "xinetd.conf").write_text(XINETD_LEASES)
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    warning = (f"acl serve: {tmp_path}/xinetd.conf:1: warning: service smtpd: per_source = 1 "
               "and instances = 2: no limit on Postfix policy requests")
    assert (warning in out.stderr) is policy_socket, out.stderr
    # a Postfix request is not refused by them: it takes no lease
    engine = Engine.from_path(cfg)
    sessions = Sessions()
    for port in range(40001, 40005):
        assert sessions.decide(engine, asked(port), 1_000_000.0 + port).allowed


def test_the_warning_covers_every_service_sharing_the_id(tmp_path):
    """xinetd keeps an id twice when the bind address differs: a limit on the
    second entry is no more applied to Postfix than one on the first."""
    from acl.policy import load_policy, postfix_door_warnings

    cfg = policy_toml(tmp_path, policy_socket=True)
    plain = XINETD_CPS.format(cps=0).replace("\tcps\t\t= 0 30\n", "\tbind\t\t= 127.0.0.1\n")
    limited = XINETD_LEASES.replace("\tflags", "\tbind\t\t= 127.0.0.2\n\tflags")
    (tmp_path / "xinetd.conf").write_text(plain + limited)
    lines = [d.line for d in postfix_door_warnings(load_policy(cfg))]
    assert lines == [plain.count("\n") + 1]
