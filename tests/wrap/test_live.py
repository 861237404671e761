"""acl-wrap under the real super-servers, deciding with the real sidecar.

xinetd, openbsd-inetd, tcpserver and ``systemd-socket-activate --inetd -a``
each serve the echo service from its deploy/ stanza (tests/wrap/live.py
says what is substituted) on 127.0.0.1, with clients bound to distinct
127.x.y.z sources, and ``acl serve --config`` deciding on the policy in
tests/wrap/live.py.  Shown for every super-server:

* allowed sources reach the server; sources denied by xinetd no_access,
  by tcprules and by hosts.deny get a closed connection and no data;
* tcprules env, hosts_options setenv (with %a) and the UCSPI variables
  reach the server, and so does the lease's descriptor;
* per_source = 2 holds while two connections stay open and frees a slot
  when one closes (the lease ends with the server process);
* with the sidecar stopped: closed by default, open with ACL_WRAP_FAIL=open.

Also here: a host name full of shell syntax in the real sidecar's spawn and
twist, a UDP (``wait = yes``) service under xinetd, and tcpserver's own
variables (``-6`` too) reaching the server as tcpserver set them.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_free_ports, stop_process
from tests.wrap import harness, live
from tests.wrap.conftest import needs_root

pytestmark = pytest.mark.live

BASE = 25200          # 25200-25599 in PORTS["wrap"]: 100 per super-server
EXTRA = 25600         # 25600-25606: the single-port tests below


def have(kind: str) -> bool:
    exe = {"xinetd": "xinetd", "inetd": live.INETD, "tcpserver": "tcpserver",
           "systemd": "systemd-socket-activate"}[kind]
    return shutil.which(exe) is not None or Path(exe).exists()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="awl."))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sidecar(workdir):
    needs_root()
    d = workdir / "sidecar"
    d.mkdir()
    s = live.Sidecar(d).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def echo_server(workdir):
    return harness.write_exe(workdir / "echo-env", harness.ECHO_SERVER)


_ports = {k: iter(range(BASE + 100 * i, BASE + 100 * i + 100)) for i, k in enumerate(live.KINDS)}


@pytest.fixture
def superserver(request, workdir, wrap_bin, echo_server, sidecar):
    made = []

    def start(kind, sock=None, **env):
        if not have(kind):
            pytest.skip(f"{kind} is not installed")
        port = next(_ports[kind])
        d = workdir / f"{kind}-{port}"
        d.mkdir()
        s = live.SuperServer(kind, d, port, wrap_bin, echo_server,
                             live.env_for(sock or sidecar.sock, **env))
        made.append(s)
        return s.start()

    yield start
    for s in made:
        s.stop()


def open_session(src: str, port: int, timeout: float = 10):
    """Connect from ``src``; return (socket, report) -- report is what came
    before READY, or everything until the server side closed."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    data = b""
    while b"READY\n" not in data:
        try:
            b = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not b:
            break
        data += b
    return s, data


def check_allowed(src: str, port: int, kind: str, ss=None) -> socket.socket:
    s, data = open_session(src, port)
    assert b"READY\n" in data, (f"{kind}: {src} should reach the server, got {data[-300:]!r}"
                                f"; syslog: {ss.syslog() if ss else ''}")
    env, fds = harness.parse_report(data)
    assert env["TCPREMOTEIP"] == src and env["PROTO"] == "TCP"
    assert env["TCPLOCALIP"] == "127.0.0.1" and env["TCPLOCALPORT"] == str(port)
    assert env["RULEVAR"] == "tcprules says hi"                  # tcprules env
    assert env["HAVAR"] == f"from hosts.allow for {src}"         # hosts_options setenv %a
    assert int(env["ACL_LEASE_ID"]) > 0
    assert fds[int(env["ACL_LEASE_FD"])].startswith("socket:")   # lease crossed exec
    s.sendall(b"ping\n")
    assert s.recv(100) == b"ping\n"
    return s


def check_refused(src: str, port: int, kind: str, why: str) -> None:
    s, data = open_session(src, port)
    s.close()
    assert data == b"", f"{kind}: {src} ({why}) should be refused, got {data[-300:]!r}"


def wait_allowed(src: str, port: int, kind: str, timeout: float = 5.0) -> socket.socket:
    """Retry until a freed slot shows (the server exits a moment after the
    client hangs up); bounded by ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        s, data = open_session(src, port)
        if b"READY\n" in data or time.monotonic() > end:
            assert b"READY\n" in data, f"{kind}: slot for {src} never freed"
            return s
        s.close()
        time.sleep(0.1)


@pytest.mark.parametrize("kind", live.KINDS)
def test_allow_deny_env_and_per_source(kind, superserver):
    ss = superserver(kind)
    port = ss.port
    for src in live.ALLOWED:
        check_allowed(src, port, kind, ss).close()
    for src, why in live.DENIED.items():
        check_refused(src, port, kind, why)
    # logged as tcpd logs them (syslog reaches the test through /dev/log)
    for src in live.ALLOWED:
        ss.sink.wait_for(f"]: connect from {src} ({src})")
    for src in live.DENIED:
        ss.sink.wait_for(f"]: refused connect from {src} ({src})")
    # per_source = 2 (sources of their own per super-server: the sidecar is
    # shared, and a slot frees a moment after its server exits)
    src = f"127.0.{live.KINDS.index(kind) + 1}.7"
    other = f"127.0.{live.KINDS.index(kind) + 1}.8"
    # two held connections fill the source's slots ...
    held = [check_allowed(src, port, kind) for _ in range(2)]
    check_refused(src, port, kind, "per_source = 2 reached")
    # ... other sources are not affected ...
    check_allowed(other, port, kind).close()
    # ... and closing one frees one slot, not more
    held[0].close()
    held[0] = wait_allowed(src, port, kind)
    check_refused(src, port, kind, "per_source = 2 reached again")
    for s in held:
        s.close()
    wait_allowed(src, port, kind).close()


@pytest.mark.parametrize("kind", live.KINDS)
def test_sidecar_stopped_fails_closed_then_open(kind, superserver, workdir):
    d = workdir / f"own-sidecar-{kind}"
    d.mkdir()
    own = live.Sidecar(d).start()
    try:
        ss = superserver(kind, sock=own.sock)
        check_allowed("127.0.0.2", ss.port, kind).close()      # it was live
        own.stop()
        check_refused("127.0.0.2", ss.port, kind, "sidecar stopped, fail closed")
        ss_open = superserver(kind, sock=own.sock, ACL_WRAP_FAIL="open")
        s, data = open_session("127.0.0.2", ss_open.port)
        env, _ = harness.parse_report(data)
        s.close()
        assert b"READY\n" in data, f"{kind}: fail open should run the server: {data!r}"
        assert env["TCPREMOTEIP"] == "127.0.0.2"
        assert "ACL_LEASE_FD" not in env and "RULEVAR" not in env
    finally:
        own.stop()


HOSTILE = "evil;touch${IFS}/tmp/acl-wrap-live-PWNED`id`$(id)|&<>'\"*"


def test_hostile_host_name_in_spawn_and_twist(sidecar, wrap_bin, workdir):
    """The real sidecar DELEGATEs ``hostile`` with ``spawn echo spawned %n >
    FILE: twist /bin/echo twisted n=%n h=%h``; the client's name (private
    /etc/hosts) is full of shell syntax.  It must arrive sanitised, in both
    the spawned and the twisted command, and run nothing of its own."""
    mark = Path("/tmp/acl-wrap-live-PWNED")
    d = workdir / "hostile"
    d.mkdir()
    hosts = f"127.0.0.1 localhost\n127.0.0.77 {HOSTILE}\n"
    argv = harness.ns_command(d, str(wrap_bin), str(wrap_bin),
                              ["-s", str(sidecar.sock), "-n", "hostile", "/bin/false"],
                              hosts=hosts)
    h = harness.Handoff(argv, "127.0.0.77", EXTRA, env={"PATH": "/usr/bin:/bin"})
    out = h.read_all()
    h.finish()
    safe = "evil_touch__IFS_/tmp/acl-wrap-live-PWNED_id___id________"
    assert out == f"twisted n={safe} h={safe}\n".encode()
    assert (sidecar.dir / "spawned").read_text() == f"spawned {safe}\n"
    assert not mark.exists()


def test_udp_under_xinetd(sidecar, wrap_bin, workdir):
    """A ``wait = yes`` UDP service: xinetd hands acl-wrap the listening
    datagram socket; acl-wrap peeks at the sender, asks the real sidecar,
    and either execs the server (which reads the datagram) or consumes the
    datagram so xinetd can go on.  (An in-test stanza: deploy/ ships TCP
    echo only, and cat cannot answer datagrams.)"""
    if not have("xinetd"):
        pytest.skip("xinetd is not installed")
    d = workdir / "udp"
    d.mkdir()
    server = harness.write_exe(d / "udp-srv", harness.UDP_SERVER)
    port = EXTRA + 1
    require_free_ports([port], hosts=("127.0.0.1",), proto="udp")
    (d / "xinetd.conf").write_text(f"""service echo-udp
{{
	type		= UNLISTED
	port		= {port}
	socket_type	= dgram
	protocol	= udp
	wait		= yes
	user		= root
	bind		= 127.0.0.1
	flags		= NAMEINARGS NOLIBWRAP
	server		= {wrap_bin}
	server_args	= {server}
	env		= ACL_WRAP_SOCKET={sidecar.sock} ACL_WRAP_SERVICE=echo-udp
}}
""")
    sink = harness.SyslogSink(d / "log.sock")
    argv = harness.ns_command(d, "xinetd", "xinetd",
                              ["-dontfork", "-f", str(d / "xinetd.conf"), "-pidfile",
                               str(d / "pid"), "-filelog", str(d / "xinetd.log")],
                              log_sock=sink.path)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ask(src: str, payload: bytes) -> bytes | None:
            # xinetd 2.3.15.3 lost a datagram that arrived while the previous
            # wait=yes server was still exiting (also with no acl-wrap at
            # all), so give each one a moment
            time.sleep(0.5)
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((src, 0))
            c.settimeout(3)
            c.sendto(payload, ("127.0.0.1", port))
            try:
                return c.recv(4096)
            except TimeoutError:
                return None
            finally:
                c.close()

        time.sleep(0.5)                       # no listening state to poll for UDP
        got = ask("127.0.0.2", b"one")
        logs = [t for _, t in sink.messages]
        if (d / "xinetd.log").exists():
            logs.append((d / "xinetd.log").read_text())
        assert got is not None, logs
        assert got.startswith(b"GOT one PROTO=UDP UDPREMOTEIP=127.0.0.2 ")
        assert b"HAVAR=udp 127.0.0.2" in got and b"ACL_LEASE_ID=0" not in got
        assert ask("127.0.0.9", b"two") is None          # refused by hosts.deny
        sink.wait_for("refused connect from 127.0.0.9 (127.0.0.9)")
        got = ask("127.0.0.2", b"three")                 # the refused datagram was consumed
        assert got is not None and got.startswith(b"GOT three ")
    finally:
        proc.terminate()
        proc.wait(10)
        sink.close()


def test_refusal_sends_the_banner(sidecar, wrap_bin, workdir):
    """hosts.allow ``bannered: ALL: banners DIR: deny`` on the real sidecar:
    the refused client reads the banner (LF -> CRLF, %-expanded), then EOF."""
    h = harness.Handoff([str(wrap_bin), "-s", str(sidecar.sock), "-n", "bannered", "/bin/cat"],
                        "127.0.0.9", EXTRA + 2, env={"PATH": "/usr/bin:/bin"})
    out = h.read_all()
    assert h.finish() == 1
    assert out == b"Not for you, 127.0.0.9.\r\nSee bannered policy.\r\n"


UCSPI_NAME = re.compile(r"PROTO|TCP6?[A-Z]+")


@pytest.mark.parametrize("flags,listen,ports", [
    ((), "127.0.0.1", (EXTRA + 3, EXTRA + 4)),
    (("-6",), "::ffff:127.0.0.1", (EXTRA + 5, EXTRA + 6)),
], ids=["tcpserver", "tcpserver -6"])
def test_tcpserver_variables_reach_the_server_as_set(sidecar, wrap_bin, echo_server, workdir,
                                                     flags, listen, ports):
    """Behind tcpserver, the server sees tcpserver's PROTO, TCP* and TCP6*
    variables as tcpserver set them: the same connection (127.0.0.2 to
    127.0.0.1) to the server run by tcpserver directly and through
    acl-wrap.  (``-6`` sets PROTO=TCP6 and mapped TCPREMOTEIP/TCPLOCALIP,
    which acl-wrap must not rewrite to TCP and dotted quads.)"""
    if not have("tcpserver"):
        pytest.skip("tcpserver is not installed")
    seen = []
    for port, prog in zip(ports, ([str(echo_server)],
                                  [str(wrap_bin), "-n", "echo", str(echo_server)]),
                          strict=True):
        d = workdir / f"tcpserver-vars-{port}"
        d.mkdir()
        # another run's listener would pass the wait below at once
        require_free_ports([port])
        sink = harness.SyslogSink(d / "log.sock")
        argv = harness.ns_command(d, "tcpserver", "tcpserver",
                                  [*flags, "-H", "-R", "-l", "0", listen, str(port), *prog],
                                  log_sock=sink.path)
        proc = subprocess.Popen(argv, env=live.env_for(sidecar.sock),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end and not live.listening_any(port):
                assert proc.poll() is None, "tcpserver exited"
                time.sleep(0.05)
            s, data = open_session("127.0.0.2", port)
            cport = s.getsockname()[1]
            s.close()
        finally:
            stop_process(proc)
            sink.close()
        assert b"READY\n" in data, data
        env, _ = harness.parse_report(data)
        ucspi = {k: v for k, v in env.items() if UCSPI_NAME.fullmatch(k)}
        for k in ("TCPREMOTEPORT", "TCP6REMOTEPORT"):
            assert ucspi.pop(k) == str(cport)
        for k in ("TCPLOCALPORT", "TCP6LOCALPORT"):
            assert ucspi.pop(k) == str(port)
        seen.append(ucspi)
    direct, wrapped = seen
    assert direct["PROTO"] == ("TCP6" if flags else "TCP")      # tcpserver as described
    assert wrapped == direct
