"""acl-wrap against Debian's real tcpd: daemon naming.

Each case runs both programs in one private mount namespace
(harness.ns_command) with the same client setup: tcpd reads the rule's
options from hosts.allow; acl-wrap, in tcpd mode with the same argv[0], is
told the same options by the stand-in sidecar (what the real sidecar sends
for that rule).  What the client reads, whether the server ran, and the
syslog lines named by the case must be equal -- nothing tcpd does is
written down here, it is asked each time.

tcpd sleeps 5 s before exiting on a refusal (clean_exit) and on an
over-long % expansion (percent_x): a run ends as soon as its process has
logged such a line, and the test kills that process (its own child, by
handle).  So every case takes a fraction of a second.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.wrap import harness
from tests.wrap.conftest import needs_root

SRC = "127.0.0.21"
TCPD = "/usr/sbin/tcpd"
PATH_ENV = {"PATH": "/usr/bin:/bin"}
#: log lines after which tcpd only sleeps and exits
TERMINAL = ("refused connect from", "expansion too long")

@dataclass
class Run:
    data: bytes = b""           # what the client read
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (priority, ident, text)

    @property
    def ran(self) -> bool:
        return b"READY\n" in self.data

    def line(self, needle: str) -> tuple[int, str, str]:
        found = [m for m in self.log if needle in m[2]]
        assert found, f"no log line with {needle!r} in {self.log!r}"
        return found[0]


def logged(sink: harness.SyslogSink, pid: int) -> list[tuple[int, str, str]]:
    out = []
    for pri, text in list(sink.messages):
        m = re.search(r"(\S+)\[(\d+)\]: (.*)$", text, re.S)
        if m and int(m.group(2)) == pid:
            out.append((pri, m.group(1), m.group(3)))
    return out


def run(argv: list[str], port: int, sink: harness.SyslogSink, env: dict[str, str],
        send: bytes = b"", cwd: Path | None = None) -> Run:
    """Hand one connection from SRC to ``argv``; read until the server side
    closes, or until the process has logged a TERMINAL line."""
    h = harness.Handoff(argv, SRC, port, env=env, cwd=cwd)
    pid = h.proc.pid        # unshare and bash exec: this is tcpd / acl-wrap
    if send:
        h.client.sendall(send)
        h.client.shutdown(socket.SHUT_WR)   # the shell server gets EOF
    r = Run()
    h.client.settimeout(0.05)
    end = time.monotonic() + 10
    done = False
    while time.monotonic() < end:
        try:
            chunk = h.client.recv(65536)
        except TimeoutError:
            if done:
                break       # drained what came before the terminal line
            chunk = None
        except ConnectionResetError:      # it closed with our script unread
            chunk = b""
        if chunk == b"":
            break
        r.data += chunk or b""
        done = done or any(t in text for _, _, text in logged(sink, pid) for t in TERMINAL)
    if h.proc.poll() is None and done:
        h.proc.kill()
    h.finish()
    # the last lines may still be on their way through /dev/log
    time.sleep(0.05)
    r.log = logged(sink, pid)
    return r


def both(nsdir: Path, wrap_bin: Path, argv0: str, options: list[tuple[str, str]],
         port: int, sink: harness.SyslogSink, *, verdict: int = 1, send: bytes = b"",
         cwd: Path | None = None):
    """(tcpd's run, acl-wrap's run, the DECIDEs acl-wrap sent)."""
    rule = ": ".join(f"{k} {v}".rstrip() for k, v in options)
    tcpd = harness.ns_command(nsdir, argv0, TCPD, allow=f"ALL: ALL: {rule}\n",
                              log_sock=sink.path)
    got_tcpd = run(tcpd, port, sink, PATH_ENV, send, cwd)
    side = harness.FakeSidecar(nsdir / "side.sock", lambda ev: harness.decision(
        verdict, options=options))
    try:
        wrap = harness.ns_command(nsdir, argv0, str(wrap_bin), log_sock=sink.path)
        got_wrap = run(wrap, port, sink, dict(PATH_ENV, ACL_WRAP_SOCKET=side.path), send,
                       cwd)
        return got_tcpd, got_wrap, side.requests
    finally:
        side.close()
        os.unlink(side.path)


@pytest.fixture(scope="module")
def nsdir(tmp_path_factory):
    needs_root()
    if not os.access(TCPD, os.X_OK):
        pytest.skip("Debian's tcpd is not installed")
    d = Path(tmp_path_factory.mktemp("vs_tcpd"))
    d.chmod(0o755)
    os.symlink("/bin/sh", d / "sh")
    return d


@pytest.fixture
def sink(short_tmp):
    s = harness.SyslogSink(short_tmp / "log.sock")
    yield s
    s.close()


# -- D3: the daemon name and the program run -------------------------------------------
def test_relative_argv0_with_a_slash_is_named_and_run_as_tcpd_does(nsdir, wrap_bin, port,
                                                                    sink):
    """tcpd runs REAL_DAEMON_DIR/argv[0] for any argv[0] not starting with
    '/', and the whole argv[0] is the daemon name (the rule's, %d's, the log
    ident's); only an absolute argv[0] is cut to its basename.  The server
    here is /bin/sh reading its script from the client, so it reports the
    argv[0] it was given.  Both start in nsdir, where argv[0] names no file."""
    argv0 = os.path.relpath(nsdir / "sh", "/usr/sbin")        # ../../tmp/.../sh
    assert "/" in argv0 and not argv0.startswith("/")
    assert not (nsdir / argv0).exists()
    script = b'echo "ARGV0 $0"; echo "D $D"; echo READY\n'
    t, w, reqs = both(nsdir, wrap_bin, argv0, [("setenv", "D %d")], port, sink, send=script,
                      cwd=nsdir)
    assert t.data == f"ARGV0 {argv0}\nD {argv0}\nREADY\n".encode(), t     # tcpd as described
    assert w.data == t.data
    assert reqs[0].request.service == argv0           # the name the policy sees
    assert w.line("connect from")[:2] == t.line("connect from")[:2]       # priority, ident

