"""The operator guide's tcpserver recipe, run with the real tcpserver:
``envuidgid USER tcpserver ... -U -g GID ... acl-wrap -n smtpd SERVER``
(docs/operator-guide.md, "From daemontools + tcpserver + tcprules").

The guide says why ``-g`` is there: ``-U`` alone keeps only the user's own
group and drops every supplementary one, so acl-wrap cannot open the query
socket (mode 0660, group ``acl``) and fails closed (exit 111); a later
``-g`` wins over ``-U``'s ``$GID``, and the server runs with that single
group.  Here the guide's own command line is taken from the guide and run
twice -- as written, and with its ``-g`` taken away -- changing only what
must differ on this machine: the user (``nobody`` for ``qmaild``), the
socket's group (one ``nobody`` is not in, for ``acl``), the address and
port, the paths of acl-wrap and of the server (``id``, which prints the
identity it ran with), and ``-v`` so that tcpserver reports each child's
exit status.  The sidecar is this tree's real ``acl serve``.

Port 25620 (tests/wrap/conftest.py).  Needs root (envuidgid, tcpserver -U).
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import require_free_ports, stop_process
from tests.sidecar import start_server
from tests.wrap import harness, live

pytestmark = pytest.mark.live

PORT = 25620
GUIDE = harness.ROOT / "docs" / "operator-guide.md"


def guide_command() -> str:
    """The "After" tcpserver command of the guide's tcpserver migration."""
    text = GUIDE.read_text()
    section = text[text.index("### From daemontools + tcpserver + tcprules"):]
    after = section[section.index("After (the form of `deploy/tcpserver/run`):"):]
    block = re.search(r"```sh\n(.*?)```", after, re.S).group(1)
    return " ".join(block.replace("\\\n", " ").split())


def socket_group() -> grp.struct_group:
    """A group ``nobody`` is not in, for the query socket (the guide's ``acl``)."""
    nobody = {g.gr_gid for g in grp.getgrall() if "nobody" in g.gr_mem}
    for name in ("games", "daemon", "bin", "sys"):
        try:
            g = grp.getgrnam(name)
        except KeyError:
            continue
        if g.gr_gid not in nobody and g.gr_gid != 65534:
            return g
    pytest.skip("no group here that nobody is not in")


def runnable(command: str, group: grp.struct_group, wrap: Path, keep_g: bool) -> list[str]:
    """The guide's line, changed only where this machine must differ."""
    subs = [
        ("exec envuidgid qmaild tcpserver", "envuidgid nobody tcpserver -v"),
        ('"$(getent group acl | cut -d: -f3)"', str(group.gr_gid)),
        (" 0 25 ", f" 127.0.0.1 {PORT} "),
        ("/usr/local/bin/acl-wrap", str(wrap)),
        (" qmail-smtpd", " /usr/bin/id"),
    ]
    for old, new in subs:
        assert old in command, f"the guide's tcpserver line no longer has {old!r}: {command}"
        command = command.replace(old, new)
    argv = command.split()
    if not keep_g:
        i = argv.index("-g")
        del argv[i:i + 2]
    return argv


def ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return data


@pytest.fixture(scope="module")
def sidecar(wrap_bin):
    if os.geteuid() != 0:
        pytest.skip("needs root: envuidgid and tcpserver -U change the user")
    for tool in ("tcpserver", "envuidgid"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    group = socket_group()
    d = Path(tempfile.mkdtemp(prefix="awg."))
    d.chmod(0o755)                       # nobody reaches acl-wrap and the socket here
    wrap = d / "acl-wrap"
    shutil.copy(wrap_bin, wrap)
    (d / "hosts.allow").write_text("smtpd: ALL\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "policy.toml").write_text(f"""\
[sockets]
query = "{d}/query.sock"
mode = "0660"
group = "{group.gr_name}"
[metrics]
listen = ""
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]
[run]
watch = false
""")
    side = start_server(d, d / "policy.toml", env={"PYTHONPATH": str(harness.ROOT)},
                        args=("--allow-pure",))
    try:
        yield d, group, wrap, side
    finally:
        side.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("keep_g", [True, False], ids=["as-the-guide-writes-it", "U-alone"])
def test_the_guide_s_tcpserver_line(sidecar, keep_g):
    d, group, wrap, side = sidecar
    argv = runnable(guide_command(), group, wrap, keep_g)
    require_free_ports([PORT])
    log = open(d / "tcpserver.log", "wb")
    proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", "ACL_WRAP_SOCKET": side.query},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end and not live.listening(PORT):
            assert proc.poll() is None, (d / "tcpserver.log").read_text()
            time.sleep(0.05)
        answer = ask(PORT)
        end = time.monotonic() + 10          # tcpserver logs the child's end after it
        while time.monotonic() < end and " status " not in (d / "tcpserver.log").read_text():
            time.sleep(0.05)
    finally:
        stop_process(proc)
    status = re.search(r"tcpserver: end \d+ status (\d+)", (d / "tcpserver.log").read_text())
    assert status, (d / "tcpserver.log").read_text()
    if keep_g:
        # served as nobody, with the socket's group alone
        name = group.gr_name
        assert answer.decode().split() == [
            "uid=65534(nobody)", f"gid={group.gr_gid}({name})", f"groups={group.gr_gid}({name})"]
        assert status.group(1) == "0"
    else:
        # acl-wrap could not open the socket: nothing served, exit 111 (fail closed)
        assert answer == b""
        assert int(status.group(1)) == 111 << 8
