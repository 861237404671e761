"""Policy files that are not regular files (acl/rulefiles.py).

A FIFO named as a rule file used to block ``--check`` and every reload
forever (the reload thread waited for a writer); ``/dev/zero`` was read
until memory ran out.  Each kind of source, and the policy file itself,
is refused with exit 100 and a message naming the file and what it is,
and a reload that meets one keeps the running policy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from acl.engine import Engine
from acl.errors import PolicyError
from acl.policy import EXAMPLE, load_policy

ACL = [sys.executable, "-m", "acl"]


@pytest.fixture
def example(tmp_path):
    for f in EXAMPLE.parent.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


SOURCES = {
    "xinetd file": ('file = "xinetd.conf"', 'file = "{target}"'),
    "tcprules file": ('file = "tcp.smtpd"', 'file = "{target}"'),
    "hosts.allow": ('allow = "hosts.allow"', 'allow = "{target}"'),
    "hosts.deny": ('deny = "hosts.deny"', 'deny = "{target}"'),
}


@pytest.mark.parametrize("target, kind", [("fifo", "a FIFO"),
                                          ("/dev/zero", "a character device")])
@pytest.mark.parametrize("source", SOURCES)
def test_a_rule_file_that_is_not_a_regular_file_fails_check(example, source, target, kind):
    old, new = SOURCES[source]
    text = (example / "policy.toml").read_text()
    assert old in text
    p = example / "p.toml"
    p.write_text(text.replace(old, new.format(target=target)))
    # without the check a FIFO blocks here (the timeout ends the test)
    out = subprocess.run([*ACL, "serve", "--config", str(p), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100, out
    assert f"{kind}, not a regular file" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_policy_file_itself_as_a_fifo_fails_check(example):
    out = subprocess.run([*ACL, "serve", "--config", str(example / "fifo"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100, out
    assert "a FIFO, not a regular file" in out.stderr, out.stderr


def test_a_reload_that_meets_a_fifo_keeps_the_running_policy(example):
    p = example / "policy.toml"
    eng = Engine(load_policy(p))
    running = eng.policy
    os.replace(example / "fifo", example / "hosts.allow")
    with pytest.raises(PolicyError, match="a FIFO, not a regular file"):
        eng.reload(p)
    assert eng.policy is running


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_acl_check_reports_a_hosts_file_that_is_not_regular(example, target):
    """``acl check`` reads hosts.allow twice (rules, then comment
    continuations): neither read may block on a FIFO or read /dev/zero."""
    path = str(example / target) if target == "fifo" else target
    out = subprocess.run([*ACL, "check", "--no-names", "--hosts-allow", path, "--hosts-deny",
                          str(example / "hosts.deny")], capture_output=True, text=True,
                         timeout=60)
    assert "not a regular file" in out.stdout + out.stderr, out
    assert "Traceback" not in out.stderr
