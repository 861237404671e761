"""acl-wrap against Debian's real tcpd: daemon naming, option limits, the
twist log line.

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

# The server for the option cases: what the options changed, then READY and
# exit.  (Its environment, minus what only acl-wrap sets, is compared.)
REPORT = """#!/bin/sh
# report for tests/wrap/test_vs_tcpd.py
echo "NICE $(nice)"
echo "UMASK $(umask)"
python3 -c 'import os, socket, struct
s = socket.socket(fileno=os.dup(0))
print("LINGER %d %d" % struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)))'
env | sort | sed 's/^/ENV /'
echo READY
"""
ONLY_WRAP_SETS = re.compile(r"(PROTO|(TCP|UDP)6?[A-Z]+|ACL_LEASE_(FD|ID))")


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


def comparable(r: Run) -> bytes:
    """The client's bytes without the variables only acl-wrap sets."""
    return b"\n".join(line for line in r.data.split(b"\n")
                      if not (line.startswith(b"ENV ") and ONLY_WRAP_SETS.fullmatch(
                          line[4:].split(b"=")[0].decode())))


@pytest.fixture(scope="module")
def nsdir(tmp_path_factory):
    needs_root()
    if not os.access(TCPD, os.X_OK):
        pytest.skip("Debian's tcpd is not installed")
    d = Path(tmp_path_factory.mktemp("vs_tcpd"))
    d.chmod(0o755)
    harness.write_exe(d / "report", REPORT)
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


# -- D4: option values and buffer sizes -------------------------------------------------
def fill(n: int) -> str:
    """Text that %-expands to ``n`` bytes for a client at SRC."""
    k, r = divmod(n, len(SRC))
    return "%a" * k + "y" * r


# case: (options, banner file text or None, whether tcpd runs the server --
# checked, so that each case is known to probe what its name says)
LIMITS = {
    "nice 50 (nice(2) clamps)": ([("nice", "50")], None, True),
    "nice -50": ([("nice", "-50")], None, True),
    "nice without a value": ([("nice", "")], None, True),
    "nice 5x": ([("nice", "5x")], None, False),
    "linger 2000000": ([("linger", "2000000")], None, True),
    "linger -1": ([("linger", "-1")], None, False),
    "umask 027": ([("umask", "027")], None, True),
    "umask 1000": ([("umask", "1000")], None, False),
    # setenv expands "NAME VALUE" as a whole: 8190 bytes fit, 8191 do not
    "setenv expanding to 8190": ([("setenv", "LONG " + fill(8190 - 5))], None, True),
    "setenv expanding to 8191": ([("setenv", "LONG " + fill(8191 - 5))], None, False),
    "setenv expanding to 4500": ([("setenv", "LONG " + fill(4500 - 5))], None, True),
    "setenv with a 300-byte name": ([("setenv", "N" * 300 + " v")], None, True),
    "setenv with = in the name": ([("setenv", "A=B v")], None, False),
    # a banner line with its CRLF expands to at most 16382 bytes
    "banner line expanding to 16382": (None, fill(16382 - 2) + "\n", True),
    "banner line expanding to 16383": (None, fill(16383 - 2) + "\n", False),
    "banner line of 5000 bytes": (None, "%a" + "x" * 5000 + "\n", True),
    # lines are read in pieces of 8190 bytes: a %a cut in two stays text
    "banner %a across the 8190-byte piece": (None, "x" * 8189 + "%a\nend %a\n", True),
    "banner line of 20000 bytes": (None, "%a " + "x" * 20000 + "\nend %a\n", True),
}


@pytest.mark.parametrize("case", LIMITS)
def test_option_limits_match_tcpd(nsdir, wrap_bin, port, sink, case):
    options, text, tcpd_runs = LIMITS[case]
    if text is not None:
        d = nsdir / f"banners{list(LIMITS).index(case)}"
        d.mkdir(exist_ok=True)
        (d / "report").write_text(text)
        options = [("banners", str(d))]
    t, w, _ = both(nsdir, wrap_bin, str(nsdir / "report"), options, port, sink)
    assert t.ran == tcpd_runs, t.log
    assert (w.ran, comparable(w)) == (t.ran, comparable(t)), (t.log, w.log)


def test_banner_of_a_daemon_name_with_a_slash_is_sent_as_tcpd_sends_it(nsdir, wrap_bin,
                                                                      port, sink):
    """A relative argv[0] such as ``sub/echo`` is the daemon name as a whole,
    and tcpd's banners option opens DIR/sub/echo.  The rule refuses, so no
    server runs (argv[0] names no program)."""
    d = nsdir / "banners-slash"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "sub" / "echo").write_text("Banner for %d: go away %a\n")
    argv0 = "sub/echo"
    tcpd = harness.ns_command(nsdir, argv0, TCPD, allow=f"ALL: ALL: banners {d}: deny\n",
                              log_sock=sink.path)
    t = run(tcpd, port, sink, PATH_ENV)
    side = harness.FakeSidecar(nsdir / "side.sock", lambda ev: harness.decision(
        0, options=[("banners", str(d))]))
    try:
        wrap = harness.ns_command(nsdir, argv0, str(wrap_bin), log_sock=sink.path)
        w = run(wrap, port, sink, dict(PATH_ENV, ACL_WRAP_SOCKET=side.path))
    finally:
        side.close()
        os.unlink(side.path)
    assert t.data == f"Banner for sub/echo: go away {SRC}\r\n".encode(), t.log
    assert w.data == t.data, w.log
    assert w.line("refused connect from")[:2] == t.line("refused connect from")[:2]


# -- D5: the twist log line ----------------------------------------------------------
TWIST = ("twist", "/bin/echo twisted %a %d")


@pytest.mark.parametrize("options", [
    [TWIST],
    [("severity", "local3.crit"), TWIST],
    [("severity", "notice"), TWIST],
], ids=["plain", "after severity local3.crit", "after severity notice"])
def test_twist_is_logged_as_tcpd_logs_it(nsdir, wrap_bin, port, sink, options):
    """tcpd logs "twist HOST to CMD" at its refusal priority (daemon.warning
    unless a severity option came first).  The stand-in DELEGATEs, as the
    real sidecar does for a rule ending in twist."""
    argv0 = str(nsdir / "report")
    t, w, _ = both(nsdir, wrap_bin, argv0, options, port, sink, verdict=2)
    assert t.data == f"twisted {SRC} report\n".encode(), t
    assert w.data == t.data
    assert w.line("twist ") == t.line("twist ")     # priority, ident, text
