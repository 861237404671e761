"""The operator guide's Postfix section, against Debian's real Postfix.

* ``postconf -c DIR`` reads the guide's main.cf lines from a private main.cf
  and prints back the ``check_policy_service`` the guide names.
* Live, in a network namespace the test makes (``unshare --net`` held open
  by a ``sleep``; smtpd listens on its loopback only): a private Postfix
  whose queue directory stands for /var/spool/postfix, the sidecar's policy
  socket laid out where ``acl-policy.socket`` puts it (its ListenStream=
  under that queue directory, its SocketGroup= and SocketMode=), the guide's
  main.cf lines, and smtpd run chrooted (Debian's master.cf, chroot "y") and
  unchrooted.  A client the rules deny gets 554 at RCPT TO, an allowed one
  250.  An absolute socket path fails with a chrooted smtpd, which is why
  the guide's path is relative to the queue directory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import stop_process

from .conftest import DEPLOY, ROOT, acl_entry_point
from .netns import Netns
from .sidecar import wait_for

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
GUIDE = ROOT / "docs" / "operator-guide.md"
UNIT = DEPLOY / "systemd" / "acl-policy.socket"
#: Inside the test's own network namespace, where nothing else listens.
SMTP_PORT = 27502
DEBIAN_QUEUE = "/var/spool/postfix/"

pytestmark = pytest.mark.skipif(not os.path.exists(POSTCONF), reason="postfix not installed")


def guide_main_cf() -> str:
    """The main.cf lines of the guide's Postfix section (its unlabelled block)."""
    text = GUIDE.read_text()
    section = text[text.index("### Postfix (`check_policy_service`)"):]
    section = section[:section.index("\n## ")]
    blocks, lang, body = [], None, []
    for line in section.splitlines():
        fence = re.match(r"^ *```(\S*)$", line)
        if fence and lang is None:
            lang, body = fence.group(1), []
        elif fence:
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    (block,) = [text for lang, text in blocks if lang == ""]
    return textwrap.dedent(block)


def unit(key: str) -> str:
    return re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.M).group(1).strip()


def main_cf(d: Path, restrictions: str) -> str:
    return textwrap.dedent(f"""\
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
        mydestination = acl-test.example.org
        mynetworks = 127.0.0.0/8
        local_recipient_maps =
        smtpd_client_connection_count_limit = 0
        smtpd_policy_service_timeout = 10s
        smtpd_banner = $myhostname ESMTP acl-test
        """) + restrictions


def master_cf(chroot: str) -> str:
    return textwrap.dedent(f"""\
        127.0.0.1:{SMTP_PORT} inet n - {chroot} - - smtpd
        postlog   unix-dgram n - n - 1 postlogd
        anvil     unix - - {chroot} - 1 anvil
        rewrite   unix - - {chroot} - - trivial-rewrite
        proxymap  unix - - n - - proxymap
        cleanup   unix n - {chroot} - 0 cleanup
        """)


def test_postconf_reads_the_guides_lines(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(main_cf(tmp_path, guide_main_cf()))
    (etc / "master.cf").write_text(master_cf("y"))
    out = subprocess.run([POSTCONF, "-c", str(etc), "-n", "smtpd_recipient_restrictions"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout == ("smtpd_recipient_restrictions = "
                          "check_policy_service unix:acl/policy.sock\n")
    # The unit's socket is that path under Debian's queue directory.
    assert unit("ListenStream") == DEBIAN_QUEUE + "acl/policy.sock"
    assert (unit("SocketGroup"), unit("SocketMode")) == ("postfix", "0660")


def smtp(ns: Netns, source: str) -> list[str]:
    code = textwrap.dedent("""\
        import json, socket, sys
        s = socket.socket(); s.settimeout(20); s.bind((sys.argv[2], 0))
        s.connect(("127.0.0.1", int(sys.argv[1]))); f = s.makefile("rwb"); out = []
        def reply():
            while True:
                line = f.readline().decode().rstrip(); out.append(line)
                if len(line) < 4 or line[3] != "-":
                    return
        reply()
        for cmd in (b"HELO c.example.org", b"MAIL FROM:<a@example.org>",
                    b"RCPT TO:<postmaster@acl-test.example.org>", b"QUIT"):
            f.write(cmd + b"\\r\\n"); f.flush(); reply()
        print(json.dumps(out))
        """)
    import json

    out = ns.run(sys.executable, "-c", code, str(SMTP_PORT), source, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture
def private_postfix(tmp_path):
    """(start, maillog, pub): start(chroot, restrictions) starts a sidecar and one
    private Postfix under ``pub`` and returns the namespace smtpd listens in;
    everything is stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance and a network namespace need root")
    if not os.path.exists(POSTFIX):
        pytest.skip("postfix is not installed")
    # Postfix's unprivileged processes must reach the socket: a world-searchable dir.
    pub = Path(tempfile.mkdtemp(prefix="acl-deploy-postfix-", dir="/tmp"))
    os.chmod(pub, 0o755)
    state = {"ns": None, "sidecar": None, "started": False}

    def start(chroot: str, restrictions: str):
        spool = pub / "spool"
        sock = Path(unit("ListenStream").replace(DEBIAN_QUEUE, f"{spool}/"))
        for d in (pub / "etc", spool, sock.parent, pub / "data"):
            d.mkdir(parents=True)
        os.chmod(sock.parent, int(unit("DirectoryMode"), 8))
        pw = pwd.getpwnam("postfix")
        os.chown(pub / "data", pw.pw_uid, pw.pw_gid)
        (pub / "hosts.allow").write_text("smtpd: 127.0.0.1\n")
        (pub / "hosts.deny").write_text("smtpd: ALL\n")
        (pub / "policy.toml").write_text(textwrap.dedent(f"""\
            [sockets]
            policy = "{sock}"
            policy_service = "smtpd"
            group = "{unit('SocketGroup')}"
            mode = "{unit('SocketMode')}"
            [[source]]
            type = "hosts_access"
            allow = "hosts.allow"
            deny = "hosts.deny"
            [run]
            watch = false
            """))
        log = open(pub / "acl.log", "wb")
        state["sidecar"] = subprocess.Popen(
            [acl_entry_point(), "serve", "--config", str(pub / "policy.toml")],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: "acl serve: ready" in (pub / "acl.log").read_text(), 20,
                 proc=state["sidecar"])
        etc = pub / "etc"
        (etc / "main.cf").write_text(main_cf(pub, restrictions))
        (etc / "master.cf").write_text(master_cf(chroot))
        ns = state["ns"] = Netns()
        env = dict(os.environ, MAIL_CONFIG=str(etc))
        chk = subprocess.run(ns.cmd(POSTFIX, "-c", str(etc), "check"), capture_output=True,
                             text=True, env=env, timeout=60)
        assert chk.returncode == 0, chk.stderr + maillog()
        st = subprocess.run(ns.cmd(POSTFIX, "-c", str(etc), "start"), capture_output=True,
                            text=True, env=env, timeout=60)
        assert st.returncode == 0, st.stderr + maillog()
        state["started"] = True
        probe = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"
        wait_for(lambda: ns.run(sys.executable, "-c", probe, str(SMTP_PORT),
                                check=False).returncode == 0, 20)
        return ns

    def maillog() -> str:
        try:
            return (pub / "maillog").read_text()[-3000:]
        except OSError:
            return ""

    try:
        yield start, maillog, pub
    finally:
        if state["started"]:
            etc = pub / "etc"
            subprocess.run([POSTFIX, "-c", str(etc), "stop"], capture_output=True,
                           env=dict(os.environ, MAIL_CONFIG=str(etc)), timeout=60)
            pidf = pub / "spool" / "pid" / "master.pid"
            wait_for(lambda: not pidf.exists() or not pidf.read_text().strip()
                     or not _alive(int(pidf.read_text().split()[0])), 20)
        if state["ns"] is not None:
            state["ns"].close()
        if state["sidecar"] is not None:
            stop_process(state["sidecar"])
        shutil.rmtree(pub, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@pytest.mark.live
@pytest.mark.root
@pytest.mark.parametrize("chroot", ["y", "n"], ids=["smtpd-chrooted", "smtpd-unchrooted"])
def test_the_guides_socket_path_serves_postfix(private_postfix, chroot):
    start, maillog, _pub = private_postfix
    ns = start(chroot, guide_main_cf())
    ok = smtp(ns, "127.0.0.1")
    assert ok[0].startswith("220 ") and ok[3].startswith("250 "), ok + [maillog()]
    bad = smtp(ns, "127.0.0.66")
    assert bad[3].startswith("554 ") and "Access denied" in bad[3], bad + [maillog()]


@pytest.mark.live
@pytest.mark.root
def test_an_absolute_socket_path_fails_a_chrooted_smtpd(private_postfix):
    """Why the guide's path is relative: a chrooted smtpd looks an absolute
    path up inside its chroot, so even the allowed client is put off (451)."""
    start, maillog, pub = private_postfix
    absolute = guide_main_cf().replace("unix:acl/policy.sock",
                                       f"unix:{pub}/spool/acl/policy.sock")
    assert absolute != guide_main_cf()
    ns = start("y", absolute)
    ok = smtp(ns, "127.0.0.1")
    assert ok[3].startswith("451 4.3.5 "), ok + [maillog()]
