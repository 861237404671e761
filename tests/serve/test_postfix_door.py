"""The Postfix door without Postfix: the decoder's attributes, the reply to
a twist, the SMTP session memory (acl/serve/sessions.py) over a real
engine, and a live server's policy_service across a reload.

The live Postfix runs of the same behaviour are in test_postfix_live.py.
"""

from __future__ import annotations

import random
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


# -- 1b. what the door reads is what the query door is asked -----------------------
#: name rules, so that the client name read from the request decides too
#: (answered from a hosts file of the test's: no lookup leaves the machine)
NAME_RULES = """\
smtpd: .example.org
submission: .example.org [2001:db8::]/32 192.0.2.0/255.255.255.128
"""


def _attrs(rng) -> tuple[dict, Request]:
    """Generated attributes of one policy request, and the Request a client
    of the query door that knows the same sends (docs/protocol.md, "Text
    protocol": the client in its socket form; the name from client_name --
    ``unknown`` is none, and so is reverse_client_name then -- else from
    reverse_client_name; the service attribute, else policy_service)."""
    n = rng.randrange(256)
    raw, client = rng.choice([
        (f"192.0.2.{n}",) * 2, ("192.0.2.66",) * 2, ("10.9.7.1",) * 2,
        (f"127.0.0.{n % 4}",) * 2, (f"10.9.{n}.1",) * 2,
        (f"2001:db8::{n:x}",) * 2, ("::1",) * 2, (f"2001:DB8:0:0::{n:X}", f"2001:db8::{n:x}"),
        (f"::ffff:192.0.2.{n}",) * 2, (f"::FFFF:127.0.0.{n % 4}", f"::ffff:127.0.0.{n % 4}"),
        (f"[192.0.2.{n}]", f"192.0.2.{n}"), (f"[2001:db8::{n:x}]", f"2001:db8::{n:x}")])
    attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": raw}
    names = ["mail.example.org", "unknown", "x.example.net", "EXAMPLE.ORG.example.org"]
    verified = rng.choice([None, *names])
    reverse = rng.choice([None, *names])
    if verified is not None:
        attrs["client_name"] = verified
    if reverse is not None:
        attrs["reverse_client_name"] = reverse
    host = verified or reverse
    port = rng.choice([0, 0, rng.randrange(1, 65536)])
    if port:
        attrs["client_port"] = str(port)
    server, sport = rng.choice([(None, 0), ("127.0.0.1", 25), ("::1", 587)])
    if server is not None:
        attrs["server_address"], attrs["server_port"] = server, str(sport)
    service = rng.choice([None, "smtpd", "submission"])
    if service is not None:
        attrs["service"] = service
    keys = list(attrs)
    rng.shuffle(keys)
    return ({k: attrs[k] for k in keys},
            Request(service or "smtpd", client, port, server, sport,
                    None if host == "unknown" else host))


def test_the_policy_door_decides_as_the_query_door(tmp_path):
    """Generated policy requests (IPv4, IPv6, v4-mapped and bracketed
    addresses in any case, verified and unverified names and ``unknown``,
    ports, servers, the service attribute, in any order) on a live server's
    policy socket, and what they say asked on its query socket: the policy
    door's answer is the query door's DECISION in Postfix's words."""
    from acl.client import Client

    cfg = policy_toml(tmp_path, extra='[names]\nhosts_file = "hosts"\n')
    # a name the server finds itself when the request has none (or unknown)
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n10.9.7.1 relay.example.org\n")
    with open(tmp_path / "hosts.allow", "a") as f:
        f.write(NAME_RULES)
    rng = random.Random(2027)
    cases = [_attrs(rng) for _ in range(300)]
    live = start_server(tmp_path, cfg)
    try:
        with Client(live.query) as c:
            decisions = c.decide_many([r for _, r in cases])
        s = connect(live.policy)
        s.sendall(b"".join(b"".join(f"{k}={v}\n".encode() for k, v in a.items()) + b"\n"
                           for a, _ in cases))
        got = b""
        while got.count(b"\n\n") < len(cases):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        s.close()
    finally:
        stopped = live.stop()
    assert stopped == 0, live.text()          # a clean stop (man/acl.8), not a crash
    replies = [r + b"\n\n" for r in got.split(b"\n\n")[:-1]]
    want = [wp.encode(d) for d in decisions]
    for (a, r), reply, w in zip(cases, replies, want, strict=True):
        assert reply == w, (a, r)
    # the cases probe what they say: both answers, and names deciding
    assert b"action=DUNNO\n\n" in want and len(set(want)) > 2
    assert any(d.allowed and r.host and r.host.endswith(".example.org") and
               r.client.startswith("10.") for (_, r), d in zip(cases, decisions, strict=True))
    assert any(d.allowed and r.host is None and r.client == "10.9.7.1"
               for (_, r), d in zip(cases, decisions, strict=True))


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


def test_a_reload_that_lets_a_refused_address_in_applies_at_the_next_rcpt(tmp_path):
    """Only a limit's refusal is repeated for the session: an address rule's
    is asked again, so a reload that lets the client in applies at its next
    RCPT (docs/protocol.md, "Sessions"), and one that shuts it out again
    applies too; the session is still counted once for cps."""
    engine = engine_with_cps(tmp_path, 100)
    sessions = Sessions()
    now = 1_000_000.0
    for i, rules in enumerate(["192.0.2.66:deny\n:allow\n", ":allow\n", "192.0.2.66:deny\n"]):
        if i:
            (tmp_path / "tcp.smtpd").write_text(rules)
            engine.reload(tmp_path / "policy.toml")
        first = sessions.decide(engine, asked(40001, "192.0.2.66", instance="a.1.2.0"), now + i)
        again = sessions.decide(engine, asked(40001, "192.0.2.66", instance="a.1.2.0"), now + i)
        assert first.allowed is again.allowed is (i == 1), (i, first, again)
        assert first.reason is again.reason is (Reason.OK if i == 1 else Reason.TCPRULES)
    assert engine.policy.sources[0].layer.state.cps_state(layer_slot(engine))[0] == 1


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
    # the same client address and port to another server address or port:
    # another TCP connection, another session (the four-tuple is the key)
    for other in (Request("smtpd", "127.0.0.1", 40001, "127.0.0.1", 587),
                  Request("smtpd", "127.0.0.1", 40001, "127.0.0.2", 25),
                  Request("smtpd", "127.0.0.1", 40001, None, 25)):
        sessions.decide(cps_engine, wp.Asked(other, "RCPT"), now + 26)
        sessions.decide(cps_engine, wp.Asked(other, "RCPT"), now + 27)
    sessions.decide(cps_engine, asked(40001), now + 28)                      # still one
    assert count() == 8
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
        stopped = live.stop()
    assert stopped == 0, live.text()          # a clean stop (man/acl.8), not a crash


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
