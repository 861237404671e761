"""A real Postfix (Debian's) asks ``acl serve`` through check_policy_service.

A private Postfix instance (its own config_directory, queue and data
directories in a temp dir, smtpd on 127.0.0.1:24250 only) is started with
``postfix -c DIR start`` after ``postfix -c DIR check`` and stopped with
``postfix -c DIR stop``.  An SMTP client bound to 127.0.0.66 (denied by
hosts.deny through the sidecar) is refused; one bound to 127.0.0.1 is
accepted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import policy_toml, start_server, wait_for

pytestmark = pytest.mark.live
SMTP_PORT = 24250
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def _main_cf(d: Path, policy_sock: str) -> str:
    return f"""
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = acl-test-postfix
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = acl-test.example.org
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_delay_reject = no
smtpd_client_connection_count_limit = 0
smtpd_client_restrictions = check_policy_service unix:{policy_sock}
smtpd_recipient_restrictions = reject_unauth_destination
smtpd_policy_service_timeout = 10s
smtpd_banner = $myhostname ESMTP acl-test
"""


MASTER_CF = f"""
127.0.0.1:{SMTP_PORT} inet n - n - - smtpd
postlog   unix-dgram n - n - 1 postlogd
anvil     unix - - n - 1 anvil
rewrite   unix - - n - - trivial-rewrite
proxymap  unix - - n - - proxymap
"""


@pytest.fixture
def postfix_with_acl(tmp_path):
    if os.getuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    if not os.path.exists(POSTFIX):
        pytest.skip("postfix is not installed")
    # Postfix's smtpd runs as "postfix": the sidecar's policy socket must be
    # reachable by it, so it lives in a world-searchable temp dir.
    pub = Path(tempfile.mkdtemp(prefix="acl-serve-postfix-", dir="/tmp"))
    os.chmod(pub, 0o755)
    srv = None
    started = False
    try:
        cfg = policy_toml(tmp_path)
        cfg.write_text(cfg.read_text().replace('policy = "policy.sock"',
                                               f'policy = "{pub}/policy.sock"'))
        srv = start_server(tmp_path, cfg)
        etc = pub / "etc"
        etc.mkdir()
        (pub / "spool").mkdir()
        (pub / "data").mkdir()
        import pwd

        pw = pwd.getpwnam("postfix")
        os.chown(pub / "data", pw.pw_uid, pw.pw_gid)
        (etc / "main.cf").write_text(_main_cf(pub, f"{pub}/policy.sock"))
        (etc / "master.cf").write_text(MASTER_CF)
        env = dict(os.environ, MAIL_CONFIG=str(etc))
        chk = subprocess.run([POSTFIX, "-c", str(etc), "check"], capture_output=True,
                             text=True, env=env, timeout=60)
        assert chk.returncode == 0, chk.stderr + _maillog(pub)
        st = subprocess.run([POSTFIX, "-c", str(etc), "start"], capture_output=True, text=True,
                            env=env, timeout=60)
        assert st.returncode == 0, st.stderr + _maillog(pub)
        started = True
        wait_for(lambda: _listening(), 20, "postfix smtpd listening")
        yield srv, pub
    finally:
        if started:
            subprocess.run([POSTFIX, "-c", str(pub / "etc"), "stop"], capture_output=True,
                           env=dict(os.environ, MAIL_CONFIG=str(pub / "etc")), timeout=60)
            pidf = pub / "spool" / "pid" / "master.pid"
            wait_for(lambda: not pidf.exists() or not pidf.read_text().strip()
                     or not _alive(int(pidf.read_text().split()[0])), 20, "postfix stopped")
        if srv is not None:
            srv.stop()
        shutil.rmtree(pub, ignore_errors=True)


def _maillog(pub: Path) -> str:
    try:
        return (pub / "maillog").read_text()[-3000:]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", SMTP_PORT), timeout=1) as s:
            s.recv(512)
        return True
    except OSError:
        return False


def smtp_session(source: str) -> list[str]:
    """Talk SMTP from ``source`` until MAIL FROM; the server's reply lines."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(20)
    s.bind((source, 0))
    s.connect(("127.0.0.1", SMTP_PORT))
    f = s.makefile("rwb")
    lines = []

    def reply() -> str:
        while True:
            line = f.readline().decode().rstrip()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return line

    reply()
    for cmd in (b"HELO client.example.org", b"MAIL FROM:<a@example.org>", b"QUIT"):
        f.write(cmd + b"\r\n")
        f.flush()
        reply()
    s.close()
    return lines


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
