"""The operator guide's xinetd recipe, end to end: the real xinetd runs
deploy/xinetd.d/acl-echo (``flags = NAMEINARGS NOLIBWRAP``, ``server =
acl-wrap``, ``env = ACL_WRAP_SERVICE=echo``) and the real ``acl serve``
reads that very file plus hosts.allow/hosts.deny (docs/operator-guide.md
"From xinetd").

NOLIBWRAP turns off xinetd's own libwrap check; acl-wrap's request is then
the service's hosts_access check (as tcpd's is in the classic xinetd + tcpd
+ NOLIBWRAP stanza), so ``hosts.deny: ALL: 127.0.0.5`` must refuse
127.0.0.5 -- it was let in when the sidecar skipped hosts_access for every
NOLIBWRAP service.

xinetd runs in a private network namespace (harness.ns_command ``net``):
its port is the shipped 7, which cannot meet any other test's, and the
clients connect from inside that namespace through ``nsenter``.  The
sidecar needs no network: acl-wrap reaches it on a Unix socket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import stop_process
from tests.sidecar import start_server
from tests.wrap import harness, live
from tests.wrap.conftest import needs_root

pytestmark = pytest.mark.live

CLIENT = r"""
import json, socket, sys, time
out = {}
for src in sys.argv[1:]:
    end = time.monotonic() + 10
    while True:                       # xinetd may still be binding its port
        c = socket.socket()
        c.settimeout(5)
        c.bind((src, 0))
        try:
            c.connect(("127.0.0.1", 7))
            break
        except ConnectionRefusedError:
            c.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
    try:
        c.sendall(b"hello\n")
        out[src] = c.recv(100).decode() or "closed"
    except ConnectionResetError:      # closed with our line unread
        out[src] = "closed"
    except TimeoutError:
        out[src] = "timeout"
    c.close()
print(json.dumps(out))
"""


def test_nolibwrap_acl_wrap_service_gets_hosts_access(wrap_bin, short_tmp):
    needs_root()
    if shutil.which("xinetd") is None or shutil.which("nsenter") is None:
        pytest.skip("xinetd and nsenter are needed")
    d = short_tmp
    conf = d / "xinetd.conf"
    # the shipped stanza, acl-wrap's path the only change (port 7 and
    # /bin/cat stay: the namespace is private, cat is the echo server)
    conf.write_text(live.deploy_text("xinetd.d/acl-echo", port=7, wrap=wrap_bin,
                                     server=Path("/bin/cat")))
    (d / "hosts.allow").write_text("")
    (d / "hosts.deny").write_text("ALL: 127.0.0.5\n")
    (d / "policy.toml").write_text("""\
[sockets]
query = "query.sock"
mode = "0666"

[[source]]
type = "xinetd"
file = "xinetd.conf"

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"

[run]
watch = false
""")
    side = start_server(d, d / "policy.toml", args=("--allow-pure", "--metrics", ""))
    sink = harness.SyslogSink(d / "log.sock")
    argv = harness.ns_command(d, "xinetd", "xinetd",
                              ["-dontfork", "-f", str(conf), "-pidfile", str(d / "xinetd.pid"),
                               "-filelog", str(d / "xinetd.log")],
                              log_sock=sink.path, net=True)
    xinetd = subprocess.Popen(argv, env=live.env_for(d / "query.sock"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the same answer from the sidecar alone ...
        q = subprocess.run([sys.executable, "-m", "acl", "query", "-s", str(d / "query.sock"),
                            "echo", "127.0.0.5"], capture_output=True, text=True, timeout=30)
        assert q.returncode == 1 and "libwrap" in q.stdout and "hosts.deny:1" in q.stdout, q
        # ... and through the real xinetd and acl-wrap (xinetd's pid is the
        # namespace's: unshare and bash exec it)
        got = subprocess.run(["nsenter", f"--net=/proc/{xinetd.pid}/ns/net", sys.executable,
                              "-c", CLIENT, "127.0.0.5", "127.0.0.6"],
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        seen = json.loads(got.stdout)
        assert seen == {"127.0.0.5": "closed", "127.0.0.6": "hello\n"}, (seen, side.text())
        sink.wait_for("refused connect from 127.0.0.5 (127.0.0.5)")
    finally:
        stop_process(xinetd)
        sink.close()
        side.stop()
