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
