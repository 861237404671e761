"""acl.parse.xinetd_system: the system is asked first; a remembered "yes"
answers only once the root directory is another one (a chroot since).
The live side (a reload inside ``[run] chroot`` keeps every service) is
tests/serve/test_lifecycle.py::test_chroot_reload_keeps_xinetd_services."""

from __future__ import annotations

from acl.compile.xinetd import load_xinetd_text
from acl.parse.xinetd_system import SystemLookups
from tests.xinetd.helpers import svc


def test_a_no_stands_under_the_same_root(tmp_path):
    exe = tmp_path / "server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    lookups = SystemLookups()
    assert lookups.executable(str(exe)) and lookups.protocol("tcp") and lookups.user("root")
    assert lookups.port("smtp", "tcp") == 25
    exe.unlink()
    assert not lookups.executable(str(exe))           # gone: xinetd would disable it too
    assert not lookups.user("no-such-user-acl") and lookups.port("no-such-svc", "tcp") is None


def test_after_a_chroot_the_earlier_yes_answers(tmp_path):
    exe = tmp_path / "server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    lookups = SystemLookups()
    text = svc("s", server=str(exe), port=23901)
    assert "s" in load_xinetd_text(text, "x.conf", system=lookups)[0].services
    exe.unlink()
    lookups.root = (-1, -1)                           # as if "/" were another directory now
    policy, diags = load_xinetd_text(text, "x.conf", system=lookups)
    assert "s" in policy.services and not diags
    assert not lookups.executable(str(tmp_path / "never-asked"))   # nothing remembered: no
    fresh = SystemLookups()
    fresh.root = (-1, -1)
    assert "s" not in load_xinetd_text(text, "x.conf", system=fresh)[0].services
