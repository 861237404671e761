"""The environment a tcprules rule gives the server: the real
``tcpserver -H -R -x rules.cdb`` against ``tcpserver -H -R ... acl-wrap``
asking this tree's ``acl serve`` on the same cdb, for rules whose
environment tcpserver treats specially:

* ``PATH="/nonexistent"``: tcpserver's pathexec searches the server's name
  (``env``, no ``/``) on its own PATH and passes the rule's PATH on to it.
* ``="x"`` (an empty name, which tcprules accepts): tcpserver puts ``=x``
  in the server's environment.

* ``PROTO``, ``TCPLOCALHOST``, ``TCPREMOTEHOST``, ``TCPREMOTEINFO``: the
  names tcpserver sets itself; the rule's values win.

The same connection (client 127.0.0.x) to each; the server is ``env``.  The
environments must be equal, apart from what differs by design (ports, the
lease acl-wrap carries).  A third listener runs acl-wrap as inetd would,
with no UCSPI description (``env -u PROTO``): it sets the UCSPI variables
itself, then the rule's environment -- the rule's items must still reach
the server as tcpserver gives them (docs/acl-wrap.md, "What it does, in
order").  Ports 25617-25619 (tests/wrap/conftest.py).
"""

from __future__ import annotations

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

PORTS = {"real": 25617, "acl-wrap": 25618, "inetd-style": 25619}
RULES = b"""\
127.0.0.4:allow,PATH="/nonexistent",P="x"
127.0.0.5:allow,PROTO="RULE",TCPLOCALHOST="rule.local",TCPREMOTEHOST="rule.remote",TCPREMOTEINFO="i"
127.0.0.8:allow,="emptyname",Z="z"
:allow,DEF="d"
"""
#: differ by design: the ports (two listeners), the lease acl-wrap carries
IGNORED = (b"TCPREMOTEPORT=", b"TCP6REMOTEPORT=", b"TCPLOCALPORT=", b"TCP6LOCALPORT=",
           b"ACL_LEASE_ID=", b"ACL_LEASE_FD=")


def environment(src: str, port: int) -> set[bytes]:
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return {x for x in data.split(b"\n") if x and not x.startswith(IGNORED)}


@pytest.fixture(scope="module")
def servers(wrap_bin):
    for tool in ("tcpserver", "tcprules"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    d = Path(tempfile.mkdtemp(prefix="awe."))
    d.chmod(0o755)
    subprocess.run(["tcprules", str(d / "rules.cdb"), str(d / "rules.tmp")], input=RULES,
                   check=True)
    (d / "policy.toml").write_text(f"""\
[sockets]
query = "{d}/query.sock"
mode = "0666"
[metrics]
listen = ""
[[source]]
type = "tcprules"
file = "rules.cdb"
services = ["echo"]
[run]
user = ""
group = ""
watch = false
""")
    side = start_server(d, d / "policy.toml", env={"PYTHONPATH": str(harness.ROOT)},
                        args=("--allow-pure",))
    # the PATH both tcpservers run with (and search the server's name on)
    env = {"PATH": "/usr/bin:/bin"}
    procs = []
    require_free_ports(PORTS.values())
    try:
        for prog, port in PORTS.items():
            rules = ["-x", str(d / "rules.cdb")] if prog == "real" else []
            server = ["env"] if prog == "real" else [str(wrap_bin), "-s", side.query, "-n", "echo",
                                                     "env"]
            if prog == "inetd-style":           # no UCSPI server described the connection
                server = ["env", "-u", "PROTO", *server]
            procs.append(subprocess.Popen(
                ["tcpserver", "-H", "-R", "-l", "0", *rules, "127.0.0.1", str(port), *server],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        for p, port in zip(procs, PORTS.values(), strict=True):
            end = time.monotonic() + 10
            while time.monotonic() < end and not live.listening(port):
                assert p.poll() is None, "tcpserver exited"
                time.sleep(0.05)
        yield PORTS
    finally:
        for p in procs:
            stop_process(p)
        side.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("src, items", [
    ("127.0.0.4", {b"PATH=/nonexistent", b"P=x"}),
    ("127.0.0.5", {b"PROTO=RULE", b"TCPLOCALHOST=rule.local", b"TCPREMOTEHOST=rule.remote",
                   b"TCPREMOTEINFO=i"}),
    ("127.0.0.8", {b"=emptyname", b"Z=z"}),
    ("127.0.0.9", {b"DEF=d"}),
], ids=["rule-sets-PATH", "rule-sets-UCSPI-names", "empty-name", "default"])
def test_rule_environment_as_tcpserver_gives_it(servers, src, items):
    real = environment(src, servers["real"])
    assert items <= real                        # the case probes what it says
    assert environment(src, servers["acl-wrap"]) == real
    assert items <= environment(src, servers["inetd-style"])
