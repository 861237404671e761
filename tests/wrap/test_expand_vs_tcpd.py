"""% expansions: acl-wrap against Debian's real tcpd, on generated hostile
host names.

Both programs are handed the same loopback connection setup inside one
private mount namespace whose /etc/hosts maps 127.0.0.66 to a generated
name full of shell metacharacters.  tcpd reads ``echo: ALL: twist T`` from
hosts.allow; acl-wrap is told by the stand-in sidecar to DELEGATE with the
same ``twist T`` (the real sidecar's twist path is in test_live.py).  Both
then run ``/bin/sh -c`` on the expanded T: their outputs must be equal byte
for byte (client port aside), and no metacharacter may have reached the
shell -- a marker file the name tries to create must never appear.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.wrap import harness
from tests.wrap.conftest import needs_root

TEMPLATE = ("/bin/echo a=%a A=%A c=%c d=%d h1=%h n=%n h2=%h c2=%c H=%H N=%N s=%s "
            "r=%r R=%R pct=%% bad=%x end%")
HOSTILE_SRC = "127.0.0.66"
# printable ASCII a hosts file can carry in a name: no blanks, no comment sign
NAME_CHARS = "".join(c for c in string.printable if c not in string.whitespace + "#")
PORT = 25150
MARK = Path("/tmp/acl-wrap-test-PWNED")


def run_once(argv, port, **env):
    h = harness.Handoff(argv, HOSTILE_SRC, port, env={"PATH": "/usr/bin:/bin", **env})
    cport = h.client.getsockname()[1]
    out = h.read_all(timeout=10)
    h.finish()
    return out.replace(f"r={cport} ".encode(), b"r=<port> ")


def both(tmp: Path, wrap_bin: Path, name: str) -> tuple[bytes, bytes]:
    hosts = f"127.0.0.1 localhost\n{HOSTILE_SRC} {name}\n"
    allow = f"echo: ALL: twist {TEMPLATE}\n"
    tcpd = harness.ns_command(tmp, "/bin/echo", "/usr/sbin/tcpd", hosts=hosts, allow=allow)
    side = harness.FakeSidecar(tmp / "side.sock", lambda ev: harness.decision(
        2, options=[("twist", TEMPLATE)]))
    try:
        # tcpd mode: argv[0] = /bin/echo names the daemon "echo" for both
        wrap = harness.ns_command(tmp, "/bin/echo", str(wrap_bin), hosts=hosts, allow=allow)
        return run_once(tcpd, PORT), run_once(wrap, PORT, ACL_WRAP_SOCKET=side.path)
    finally:
        side.close()
        os.unlink(side.path)


@pytest.fixture(scope="module")
def nsdir(tmp_path_factory):
    needs_root()
    if not os.access("/usr/sbin/tcpd", os.X_OK):
        pytest.skip("Debian's tcpd is not installed")
    return tmp_path_factory.mktemp("expand")


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=NAME_CHARS, min_size=1, max_size=40))
@example(name=f"x;touch${{IFS}}{MARK}")
@example(name=f"`touch${{IFS}}{MARK}`$(touch${{IFS}}{MARK})|&<>\"'\\*?[]~!{{}}")
@example(name="good.example.com")
@example(name="")       # 127.0.0.66 alone on its line: glibc names it "", libwrap keeps it
@example(name="127.0.274")              # inet_aton form: numeric to libwrap, so paranoid
@example(name="0x7f.1")
@example(name="a" * 60 + "." + "b" * 60 + ".lab.test")     # 130: cut to 127, paranoid
@example(name="c" * 60 + "." + "d" * 57 + ".lab.test")     # 127: kept
def test_expansions_match_tcpd(nsdir, wrap_bin, name):
    got_tcpd, got_wrap = both(nsdir, wrap_bin, name)
    assert got_tcpd.startswith(b"a=127.0.0.66 "), got_tcpd     # tcpd really ran the twist
    assert got_wrap == got_tcpd, (name, got_tcpd, got_wrap)
    assert not MARK.exists(), "a host name reached the shell as syntax"
    # whatever the name was, only the safe characters come out of %n
    n = got_wrap.split(b" n=")[1].split(b" ")[0].decode()
    assert set(n) <= set(string.ascii_letters + string.digits + "!@%-_=+:,./")
