"""A real Postfix (Debian's) asks ``acl serve`` through check_policy_service.

A private Postfix instance (its own config_directory, queue and data
directories in a temp dir, smtpd on 127.0.0.1:24250 only; see
tests/postfix_instance.py) is started with ``postfix -c DIR start`` after
``postfix -c DIR check`` and stopped with ``postfix -c DIR stop``.  An SMTP
client bound to 127.0.0.66 (denied by hosts.deny through the sidecar) is
refused; one bound to 127.0.0.1 is accepted.
"""

from __future__ import annotations

import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.postfix_instance import POSTFIX, PrivatePostfix, public_dir
from tests.postfix_instance import smtp_session as smtp_at

from .conftest import policy_toml, start_server

pytestmark = pytest.mark.live
SMTP_PORT = 24250
#: The client restriction asks the sidecar at connect time (smtpd_delay_reject
#: = no); no local or relay domain, so no recipient would be accepted.
MAIN_CF = """\
mydestination =
relay_domains =
smtpd_delay_reject = no
smtpd_client_restrictions = check_policy_service unix:{policy_sock}
smtpd_recipient_restrictions = reject_unauth_destination
"""


@pytest.fixture
def postfix_with_acl(tmp_path):
    if os.getuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    if not os.path.exists(POSTFIX):
        pytest.skip("postfix is not installed")
    pub = public_dir("acl-serve-postfix-")
    postfix = PrivatePostfix(pub, SMTP_PORT)
    srv = None
    try:
        cfg = policy_toml(tmp_path)
        cfg.write_text(cfg.read_text().replace('policy = "policy.sock"',
                                               f'policy = "{pub}/policy.sock"'))
        srv = start_server(tmp_path, cfg)
        postfix.configure(MAIN_CF.format(policy_sock=f"{pub}/policy.sock"))
        postfix.start()
        yield srv, pub
    finally:
        postfix.stop()
        if srv is not None:
            srv.stop()
        shutil.rmtree(pub, ignore_errors=True)


def smtp_session(source: str) -> list[str]:
    """Talk SMTP from ``source`` until MAIL FROM; the server's reply lines."""
    return smtp_at(SMTP_PORT, source,
                   ("HELO client.example.org", "MAIL FROM:<a@example.org>", "QUIT"))


def test_postfix_refuses_denied_client_and_accepts_allowed(postfix_with_acl):
    srv, pub = postfix_with_acl
    ok = smtp_session("127.0.0.1")
    assert ok[0].startswith("220 ")
    assert any(line.startswith("250 ") for line in ok[1:3]), ok
    assert not any(line.startswith("5") for line in ok), ok
    bad = smtp_session("127.0.0.66")
    refused = [line for line in bad if line.startswith("554")]
    assert refused, bad
    assert "Access denied: libwrap" in refused[0]
    from .test_server import admin

    st = admin(srv.admin, "stats")
    smtpd = {(v, r): n for s, v, r, n in st["decisions"] if s == "smtpd"}
    assert smtpd.get((0, 7), 0) >= 1 and smtpd.get((1, 0), 0) >= 1


# -- smtpd asking at RCPT TO, as docs/operator-guide.md sets it up -------------------
RCPT_PORT = 24251
#: As the operator guide says (check_policy_service first in the recipient
#: restrictions; relaying by mynetworks), and smtputf8_enable = no: Postfix
#: then passes an 8-bit envelope address through to the policy request.
RCPT_MAIN_CF = """\
mydestination =
relay_domains =
smtputf8_enable = no
smtpd_recipient_restrictions = check_policy_service unix:{policy_sock}
"""
#: An xinetd smtpd service with cps = 2 30: three connections within its
#: two-second window switch it off for 30 s.
XINETD_CPS = """\
service smtpd
{
	type		= UNLISTED
	port		= 25
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	server		= /usr/lib/postfix/sbin/smtpd
	libwrap		= smtpd
	only_from	= 127.0.0.0/8
	cps		= 2 30
}
"""


@pytest.fixture
def rcpt_postfix(tmp_path):
    """``start(xinetd=..., hosts_allow_first=..., rate=..., burst=...)``: a
    sidecar on the test policy (with that xinetd.conf, that line put first
    in hosts.allow, that ``[limits]`` bucket) and a private Postfix asking
    it at every RCPT TO."""
    if os.getuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    if not os.path.exists(POSTFIX):
        pytest.skip("postfix is not installed")
    pub = public_dir("acl-serve-postfix-rcpt-")
    postfix = PrivatePostfix(pub, RCPT_PORT)
    started = []

    def start(xinetd: str | None = None, hosts_allow_first: str = "", **limits):
        cfg = policy_toml(tmp_path, **limits)
        cfg.write_text(cfg.read_text().replace('policy = "policy.sock"',
                                               f'policy = "{pub}/policy.sock"'))
        if xinetd is not None:
            (tmp_path / "xinetd.conf").write_text(xinetd)
        allow = tmp_path / "hosts.allow"
        allow.write_text(hosts_allow_first + allow.read_text())
        started.append(start_server(tmp_path, cfg))
        postfix.configure(RCPT_MAIN_CF.format(policy_sock=f"{pub}/policy.sock"))
        postfix.start()
        return started[0]

    try:
        yield start
    finally:
        postfix.stop()
        for srv in started:
            srv.stop()
        shutil.rmtree(pub, ignore_errors=True)


def smtp_bytes(source: str, commands: list[bytes]) -> list[str]:
    """One SMTP connection from ``source`` sending ``commands`` as bytes (an
    8-bit address must reach smtpd as it is); each command's final reply
    line, the greeting's first."""
    with socket.socket() as s:
        s.settimeout(30)
        s.bind((source, 0))
        s.connect(("127.0.0.1", RCPT_PORT))
        f = s.makefile("rwb")

        def reply() -> str:
            while True:
                line = f.readline().decode("utf-8", "replace").rstrip()
                if len(line) < 4 or line[3] != "-":
                    return line

        out = [reply()]
        for cmd in commands:
            f.write(cmd + b"\r\n")
            f.flush()
            out.append(reply())
        return out


def envelope(rcpts: int, sender: bytes = b"a@example.org") -> list[bytes]:
    return ([b"EHLO client.example.org", b"MAIL FROM:<" + sender + b">"]
            + [b"RCPT TO:<b%d@example.net>" % i for i in range(rcpts)] + [b"QUIT"])


def test_eight_bit_sender_is_decided_like_any_other(rcpt_postfix):
    """smtputf8_enable = no: the 8-bit sender reaches acl, which reads no
    sender: the allowed client gets 250, the denied one 554 -- not 450 for
    an attribute acl never reads."""
    rcpt_postfix()
    ok = smtp_bytes("127.0.0.1", envelope(1, b"caf\xe9@example.org"))
    assert ok[2].startswith("250 ") and ok[3].startswith("250 "), ok
    bad = smtp_bytes("127.0.0.66", envelope(1, b"caf\xe9@example.org"))
    assert bad[3].startswith("554 ") and "Access denied: libwrap" in bad[3], bad


def test_many_rcpts_of_one_connection_count_once_for_cps(rcpt_postfix):
    """cps = 2 30: one SMTP connection with twenty RCPTs is one connection
    (all 250); six more at once trip cps, which then refuses every client
    with 450 "connections per second".  (A connection to this smtpd takes
    about a second, so they are made in parallel.)"""
    rcpt_postfix(xinetd=XINETD_CPS)
    one = smtp_bytes("127.0.0.1", envelope(20))
    assert all(line.startswith("250 ") for line in one[3:23]), one
    with ThreadPoolExecutor(6) as pool:
        replies = [r[3] for r in pool.map(lambda _: smtp_bytes("127.0.0.1", envelope(1)),
                                          range(6))]
    assert any(r.startswith("450 ") and "connections per second" in r for r in replies), replies
    other = smtp_bytes("127.0.0.2", envelope(1))
    assert other[3].startswith("450 ") and "connections per second" in other[3], other


def test_many_rcpts_of_one_connection_spend_one_rate_token(rcpt_postfix):
    """[limits] rate 0.01/s, burst 2: each SMTP connection spends one token
    however many RCPTs it sends (all 250), so two connections pass, the
    third is refused at its RCPT with a temporary 450 (rate), and another
    client has a bucket of its own."""
    rcpt_postfix(rate=0.01, burst=2.0)
    for _ in range(2):
        one = smtp_bytes("127.0.0.1", envelope(10))
        assert all(line.startswith("250 ") for line in one[3:13]), one
    third = smtp_bytes("127.0.0.1", envelope(1))
    assert third[3].startswith("450 ") and "rate" in third[3], third
    other = smtp_bytes("127.0.0.2", envelope(3))
    assert all(line.startswith("250 ") for line in other[3:6]), other


def test_twist_is_rejected(rcpt_postfix):
    """hosts.allow ``twist`` replaces the server: the client must not reach
    smtpd's mail.  ``spawn`` runs beside the server: that client is served."""
    rcpt_postfix(hosts_allow_first='smtpd: 127.0.0.5 : twist /bin/echo "421 go away"\n'
                                   "smtpd: 127.0.0.6 : spawn /bin/true\n")
    twisted = smtp_bytes("127.0.0.5", envelope(1))
    assert twisted[3].startswith("554 ") and "twist" in twisted[3], twisted
    spawned = smtp_bytes("127.0.0.6", envelope(1))
    assert spawned[3].startswith("250 "), spawned
