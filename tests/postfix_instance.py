"""A private instance of the real (Debian) Postfix for the tests that make
``acl serve`` its check_policy_service: its main.cf and master.cf, starting
and stopping it, its maillog, and an SMTP client to talk to its smtpd.  The
decision-service test (tests/serve/test_postfix_live.py) and the operator
guide's test (tests/deploy/test_postfix_policy.py) both start theirs here;
each test keeps its own restrictions, sidecar and assertions.

Rules:

* Private directories only: config_directory, queue_directory,
  data_directory and the maillog are under the test's own directory
  (``pub``, world-searchable so that Postfix's unprivileged processes reach
  the sidecar's socket there); the system's /etc/postfix is only read (as
  meta_directory).  Needs root and the ``postfix`` user.
* smtpd listens on 127.0.0.1 only, at a port of the test's area, either in
  the host's loopback or in a network namespace the test made: ``prefix``
  (e.g. ``Netns.cmd()``) runs ``postfix check``/``start``, the readiness
  probe and the SMTP client inside it.
* Stopped by PID: ``postfix -c DIR stop`` signals the master whose PID is in
  this instance's own queue directory, and ``stop`` waits until that PID is
  gone.  Nothing is looked up or stopped by name.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

from tests.sidecar import wait_for

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def public_dir(prefix: str) -> Path:
    """A fresh world-searchable directory under /tmp (pytest's tmp_path is
    not: smtpd, running as ``postfix``, must reach the policy socket)."""
    pub = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(pub, 0o755)
    return pub


def main_cf(d: Path, extra: str) -> str:
    """An instance's main.cf: every directory under ``d``, smtpd on
    127.0.0.1; ``extra`` adds the test's lines (mydestination, the
    restrictions, the policy service...)."""
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
        mynetworks = 127.0.0.0/8
        smtpd_client_connection_count_limit = 0
        smtpd_policy_service_timeout = 10s
        smtpd_banner = $myhostname ESMTP acl-test
        """) + extra


def master_cf(port: int, chroot: str) -> str:
    """The few services smtpd needs; ``chroot`` ("y" as Debian's master.cf
    ships, or "n") for those that can run chrooted."""
    return textwrap.dedent(f"""\
        127.0.0.1:{port} inet n - {chroot} - - smtpd
        postlog   unix-dgram n - n - 1 postlogd
        anvil     unix - - {chroot} - 1 anvil
        rewrite   unix - - {chroot} - - trivial-rewrite
        proxymap  unix - - n - - proxymap
        cleanup   unix n - {chroot} - 0 cleanup
        """)


#: The SMTP client: argv is port, source address, then the commands; prints
#: the server's reply lines (the greeting's first) as JSON.
_SESSION = textwrap.dedent("""\
    import json, socket, sys
    s = socket.socket(); s.settimeout(20); s.bind((sys.argv[2], 0))
    s.connect(("127.0.0.1", int(sys.argv[1]))); f = s.makefile("rwb"); out = []
    def reply():
        while True:
            line = f.readline().decode().rstrip(); out.append(line)
            if len(line) < 4 or line[3] != "-":
                return
    reply()
    for cmd in sys.argv[3:]:
        f.write(cmd.encode() + b"\\r\\n"); f.flush(); reply()
    s.close()
    print(json.dumps(out))
    """)

#: Ready: smtpd accepts on the port and sends its greeting.
_PROBE = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1); "
          "s.settimeout(1); s.recv(512)")


def smtp_session(port: int, source: str, commands: Sequence[str],
                 prefix: Sequence[str] = ()) -> list[str]:
    """Talk SMTP to 127.0.0.1:``port`` from ``source`` (run under ``prefix``,
    e.g. in a namespace): the server's reply lines, greeting first."""
    out = subprocess.run([*prefix, sys.executable, "-c", _SESSION, str(port), source, *commands],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


class PrivatePostfix:
    """One Postfix instance under ``pub``, smtpd on 127.0.0.1:``port``."""

    def __init__(self, pub: Path, port: int, prefix: Sequence[str] = ()):
        self.pub = pub
        self.port = port
        self.prefix = list(prefix)
        self.etc = pub / "etc"
        self.started = False

    def configure(self, extra: str, chroot: str = "n") -> None:
        """Its directories (data owned by ``postfix``), main.cf with
        ``extra`` and master.cf."""
        for d in (self.etc, self.pub / "spool", self.pub / "data"):
            d.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(self.pub / "data", pw.pw_uid, pw.pw_gid)
        (self.etc / "main.cf").write_text(main_cf(self.pub, extra))
        (self.etc / "master.cf").write_text(master_cf(self.port, chroot))

    def start(self) -> None:
        """``postfix check``, ``postfix start``, then wait for smtpd's greeting."""
        env = dict(os.environ, MAIL_CONFIG=str(self.etc))
        for verb in ("check", "start"):
            done = subprocess.run([*self.prefix, POSTFIX, "-c", str(self.etc), verb],
                                  capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr + self.maillog()
        self.started = True
        wait_for(lambda: subprocess.run([*self.prefix, sys.executable, "-c", _PROBE,
                                         str(self.port)], capture_output=True,
                                        timeout=30).returncode == 0,
                 20, "postfix smtpd listening")

    def session(self, source: str, commands: Sequence[str]) -> list[str]:
        return smtp_session(self.port, source, commands, self.prefix)

    def maillog(self) -> str:
        """The end of its log, for assertion messages."""
        try:
            return (self.pub / "maillog").read_text()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """``postfix stop`` if it was started, then wait for its master's PID to go."""
        if not self.started:
            return
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True,
                       env=dict(os.environ, MAIL_CONFIG=str(self.etc)), timeout=60)
        wait_for(lambda: not _alive(self._master_pid()), 20, "postfix stopped")
        self.started = False

    def _master_pid(self) -> int | None:
        try:
            return int((self.pub / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
