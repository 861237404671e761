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
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import stop_process
from tests.postfix_instance import (
    POSTCONF,
    POSTFIX,
    PrivatePostfix,
    main_cf,
    master_cf,
    public_dir,
    smtp_session,
)

from .conftest import DEPLOY, ROOT, acl_entry_point
from .netns import Netns
from .sidecar import wait_for

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


def guide_extra(restrictions: str) -> str:
    """The main.cf lines this test adds to the instance's: a local domain
    whose postmaster the client writes to, and ``restrictions``."""
    return "mydestination = acl-test.example.org\nlocal_recipient_maps =\n" + restrictions


def test_postconf_reads_the_guides_lines(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(main_cf(tmp_path, guide_extra(guide_main_cf())))
    (etc / "master.cf").write_text(master_cf(SMTP_PORT, "y"))
    out = subprocess.run([POSTCONF, "-c", str(etc), "-n", "smtpd_recipient_restrictions"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout == ("smtpd_recipient_restrictions = "
                          "check_policy_service unix:acl/policy.sock\n")
    # The unit's socket is that path under Debian's queue directory.
    assert unit("ListenStream") == DEBIAN_QUEUE + "acl/policy.sock"
    assert (unit("SocketGroup"), unit("SocketMode")) == ("postfix", "0660")


#: HELO, MAIL FROM, then the RCPT TO a recipient restriction judges.
COMMANDS = ("HELO c.example.org", "MAIL FROM:<a@example.org>",
            "RCPT TO:<postmaster@acl-test.example.org>", "QUIT")


def smtp(ns: Netns, source: str) -> list[str]:
    return smtp_session(SMTP_PORT, source, COMMANDS, ns.cmd())


@pytest.fixture
def private_postfix(tmp_path):
    """(start, maillog, pub): start(chroot, restrictions) starts a sidecar and one
    private Postfix under ``pub`` and returns the namespace smtpd listens in;
    everything is stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance and a network namespace need root")
    if not os.path.exists(POSTFIX):
        pytest.skip("postfix is not installed")
    pub = public_dir("acl-deploy-postfix-")
    state = {"ns": None, "postfix": None, "sidecar": None}

    def start(chroot: str, restrictions: str):
        spool = pub / "spool"
        sock = Path(unit("ListenStream").replace(DEBIAN_QUEUE, f"{spool}/"))
        sock.parent.mkdir(parents=True)
        os.chmod(sock.parent, int(unit("DirectoryMode"), 8))
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
        ns = state["ns"] = Netns()
        postfix = state["postfix"] = PrivatePostfix(pub, SMTP_PORT, ns.cmd())
        postfix.configure(guide_extra(restrictions), chroot)
        postfix.start()
        return ns

    def maillog() -> str:
        return state["postfix"].maillog() if state["postfix"] else ""

    try:
        yield start, maillog, pub
    finally:
        if state["postfix"] is not None:
            state["postfix"].stop()
        if state["ns"] is not None:
            state["ns"].close()
        if state["sidecar"] is not None:
            stop_process(state["sidecar"])
        shutil.rmtree(pub, ignore_errors=True)


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
