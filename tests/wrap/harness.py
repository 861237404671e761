"""Test harness for acl-wrap: where the binary is, a private mount namespace,
a syslog sink, a scripted stand-in sidecar, and an inetd-style hand-off.

Rules of this file:

* Everything binds loopback only; TCP ports come from the wrap area's range
  25000-25999 (tests/conftest.py PORTS["wrap"]), sub-ranges per module.
* Processes are started with Popen and stopped through their handles.
* ``ns_command`` runs a program inside ``unshare -m`` with a private
  /etc/hosts (``hosts: files``), hosts.allow/deny and a tmpfs /dev whose
  ``/dev/log`` is a bind mount of a socket the test listens on, so real
  ``syslog(3)`` calls land in the test and no real file is touched.  With
  ``host_conf`` it binds a private /etc/host.conf too (glibc's ``multi``
  decides how many lines of /etc/hosts a forward lookup returns).  With
  ``net`` it also runs in ``unshare -n`` (its own loopback, up): its ports
  cannot meet anyone else's, and clients reach it through ``nsenter``.
* With ``ACL_SANITIZE`` set (ext/sanitizer.py's flags; tests/README.md,
  sanitizer runs) the acl-wrap under test is always a fresh build with those
  sanitizers and leak checks on.  Its reports go to files named by
  ``ACL_SANITIZE_LOG`` (a path prefix: ASan/UBSan's ``log_path``; default
  the build directory), compiled in as the sanitizers' default options:
  xinetd and systemd start it with an environment of their own, and under a
  super-server its stderr is the client's socket.  ``sanitizer_reports``
  reads them.
* The stand-in sidecar (``FakeSidecar``) is only for the cases the real
  ``acl serve`` cannot produce on demand: garbage, errors, silence, and a
  decision chosen by the test.  It decodes requests with the project's own
  codec (acl.wire.binary), so the C encoder is checked against it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

from acl.wire import binary
from tests.conftest import SANITIZE, SANITIZE_FLAGS, require_free_ports

ROOT = Path(__file__).resolve().parents[2]
WRAP_SOURCES = sorted((ROOT / "ext" / "wrap").glob("*.[ch]"))
CFLAGS = ["-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2"]
# The sanitizers' defaults for a sanitized acl-wrap (ASAN_OPTIONS and
# UBSAN_OPTIONS, where they reach it, still win): see the module rules.
SANITIZER_DEFAULTS = """
const char *__asan_default_options(void) { return "detect_leaks=1:log_path=@LOG@.asan"; }
const char *__ubsan_default_options(void)
{ return "print_stacktrace=1:halt_on_error=1:log_path=@LOG@.ubsan"; }
"""

# The echo server used behind every super-server: it reports its
# environment, its open descriptors and their file status flags (octal, as
# /proc/PID/fdinfo says them), says READY, then echoes.
ECHO_SERVER = """#!/bin/sh
# acl-wrap test server: report, then echo (cat)
env | sort | sed 's/^/ENV /'
for fd in /proc/self/fd/*; do echo "FD ${fd##*/} $(readlink "$fd")"; done
for fd in /proc/$$/fd/*; do
    echo "FDFLAGS ${fd##*/} $(sed -n 's/^flags:[[:space:]]*//p' /proc/$$/fdinfo/${fd##*/} 2>/dev/null)"
done
echo READY
exec cat
"""

# A UDP "wait" server: reads the datagram on fd 0 and answers with the
# client address it saw and a few variables.
UDP_SERVER = """#!/usr/bin/python3
import os, socket
s = socket.socket(fileno=0)
data, peer = s.recvfrom(4096)
env = " ".join("%s=%s" % (k, os.environ.get(k, "")) for k in
               ("PROTO", "UDPREMOTEIP", "UDPREMOTEPORT", "UDPLOCALPORT", "ACL_LEASE_ID",
                "HAVAR"))
s.sendto(b"GOT " + data + b" " + env.encode(), peer)
"""


def installed_wrap() -> Path | None:
    """acl-wrap where pip put it: the environment's scripts dir, else PATH."""
    cand = Path(sysconfig.get_path("scripts")) / "acl-wrap"
    if cand.is_file() and os.access(cand, os.X_OK):
        return cand
    found = shutil.which("acl-wrap")
    return Path(found) if found else None


def sanitizer_log() -> str:
    """The path prefix of a sanitized acl-wrap's reports (module rules)."""
    return os.environ.get("ACL_SANITIZE_LOG") or str(Path(tempfile.gettempdir()) / "acl-wrap-sanitizer")


def sanitizer_reports() -> list[Path]:
    """The report files a sanitized acl-wrap has written so far.  Files
    with no report in them are left out: a process the test kills while its
    leak check runs (tcpd-style refusals are killed once logged) leaves an
    empty file, or only LeakSanitizer's "Unable to get registers" line."""
    prefix = Path(sanitizer_log())
    return sorted(p for p in prefix.parent.glob(prefix.name + ".*")
                  if any(m in p.read_text(errors="replace")
                         for m in ("ERROR: ", "runtime error:")))


def build_wrap(outdir: Path) -> Path:
    """Compile the current sources (tests must test the code as it is now);
    under ACL_SANITIZE, instrumented (module rules)."""
    out = outdir / "acl-wrap"
    srcs = [str(p) for p in WRAP_SOURCES if p.suffix == ".c"]
    extra = []
    if SANITIZE:
        defaults = outdir / "sanitizer_defaults.c"
        defaults.write_text(SANITIZER_DEFAULTS.replace("@LOG@", sanitizer_log()))
        extra = [*SANITIZE_FLAGS, str(defaults)]
    res = subprocess.run(["cc", *CFLAGS, "-Werror", "-o", str(out), *srcs, *extra],
                         capture_output=True, text=True, timeout=120)
    if res.returncode:
        raise RuntimeError("acl-wrap does not build cleanly:\n" + res.stderr)
    return out


def wrap_binary(outdir: Path) -> Path:
    """The installed acl-wrap if it is at least as new as every source, else
    a fresh build of the sources in ``outdir`` (always, under ACL_SANITIZE)."""
    inst = installed_wrap()
    newest = max(p.stat().st_mtime for p in WRAP_SOURCES)
    if inst is not None and inst.stat().st_mtime >= newest and not SANITIZE:
        return inst
    return build_wrap(outdir)


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# -- private mount namespace ------------------------------------------------
HOSTS = "127.0.0.1 localhost\n::1 ip6-localhost\n"


def ns_command(tmp: Path, argv0: str, exe: str, args=(), *, hosts: str = HOSTS,
               allow: str = "", deny: str = "", log_sock: Path | None = None,
               host_conf: str | None = None, net: bool = False) -> list[str]:
    """argv that runs ``exe`` (with ``argv[0] = argv0``) in a private mount
    namespace -- and, with ``net``, a private network namespace whose only
    interface is its own loopback -- see the module rules."""
    ns = tmp / "ns"
    ns.mkdir(exist_ok=True)
    (ns / "hosts").write_text(hosts)
    (ns / "nsswitch.conf").write_text("hosts: files\nnetworks: files\n")
    (ns / "hosts.allow").write_text(allow)
    (ns / "hosts.deny").write_text(deny)
    names = ["hosts", "nsswitch.conf", "hosts.allow", "hosts.deny"]
    if host_conf is not None:
        (ns / "host.conf").write_text(host_conf)
        names.append("host.conf")
    steps = ["set -e"] + (["ip link set lo up"] if net else [])
    for name in names:
        steps.append(f"mount --bind {ns}/{name} /etc/{name}")
    if log_sock is not None:
        steps += [
            "mount -t tmpfs -o mode=0755 acl-wrap-test /dev",
            "mknod -m 666 /dev/null c 1 3", "mknod -m 666 /dev/zero c 1 5",
            "mknod -m 666 /dev/urandom c 1 9", "mknod -m 666 /dev/random c 1 8",
            "ln -s /proc/self/fd /dev/fd",
            "touch /dev/log", f"mount --bind {log_sock} /dev/log",
        ]
    steps.append('exec -a "$0" "$@"')
    return ["unshare", "-m", *(["-n"] if net else []), "bash", "--norc", "--noprofile", "-c", "\n".join(steps), argv0, exe, *args]


class SyslogSink:
    """A datagram socket that receives what syslog(3) sends to /dev/log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(8192)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            pri = 0
            if text.startswith("<") and ">" in text:
                pri = int(text[1:text.index(">")])
                text = text[text.index(">") + 1:]
            self.messages.append((pri, text))

    def wait_for(self, needle: str, timeout: float = 5.0) -> tuple[int, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for pri, text in list(self.messages):
                if needle in text:
                    return pri, text
            time.sleep(0.02)
        raise AssertionError(f"no syslog line with {needle!r}; got {self.messages!r}")

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


# -- the stand-in sidecar ------------------------------------------------------
class FakeSidecar:
    """Answers each DECIDE with ``respond(request_event) -> bytes | tuple | float | None``.

    bytes: sent as the reply; (bytes,): sent, then the connection closed;
    float: sleep that long, then send nothing; None: close the connection
    at once.  Connections stay open until the
    client closes them, and their closing is recorded (that is the lease's
    lifetime)."""

    def __init__(self, path: Path, respond) -> None:
        self.path = str(path)
        self.respond = respond
        self.requests: list[binary.Decide] = []
        self.raw: list[bytes] = []
        self.open = 0
        self.closed = 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self._stop = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.open += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        dec = binary.BinaryDecoder()
        conn.settimeout(0.05)
        try:
            while not self._stop:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.raw.append(data)
                for ev in dec.feed(data):
                    if isinstance(ev, binary.Decide):
                        self.requests.append(ev)
                    out = self.respond(ev)
                    if out is None:
                        return
                    if isinstance(out, float):
                        time.sleep(out)
                        continue
                    if isinstance(out, tuple):
                        conn.sendall(out[0])
                        return
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open -= 1
                self.closed += 1

    def wait_open(self, n: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.open != n:
            time.sleep(0.01)
        assert self.open == n, f"sidecar holds {self.open} connections, expected {n}"

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for t in self._threads:
            t.join(2)


# -- inetd-style hand-off -------------------------------------------------------
class Handoff:
    """Accept one loopback connection from ``src`` and start ``argv`` with it
    on fds 0, 1 and 2 (exactly what inetd does), client side kept here."""

    def __init__(self, argv, src: str, port: int, *, env=None, family=socket.AF_INET,
                 listen: str = "127.0.0.1", dgram: bool = False, payload: bytes = b"hi\n",
                 executable=None, cwd=None):
        kind = socket.SOCK_DGRAM if dgram else socket.SOCK_STREAM
        if dgram:
            # two UDP sockets with SO_REUSEADDR share a port (the last bound
            # gets the datagrams): another run's must be a clear failure
            require_free_ports([port], hosts=(listen,), proto="udp")
        ls = socket.socket(family, kind)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and listen == "::":
            ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ls.bind((listen, port))
        cfam = socket.AF_INET6 if ":" in src else socket.AF_INET
        self.client = socket.socket(cfam, kind)
        self.client.settimeout(10)
        self.client.bind((src, 0))
        dst = listen if listen not in ("::", "0.0.0.0") else ("::1" if ":" in src else "127.0.0.1")
        if dgram:
            self.client.sendto(payload, (dst, port))
            conn = ls
        else:
            ls.listen(1)
            self.client.connect((dst, port))
            conn, _ = ls.accept()
        self.proc = subprocess.Popen(argv, stdin=conn.fileno(), stdout=conn.fileno(),
                                     stderr=conn.fileno(), close_fds=True, env=env,
                                     executable=executable, cwd=cwd)
        #: the UDP socket stays here too, to see whether a datagram was left
        self.listener = ls if dgram else None
        if not dgram:
            conn.close()
            ls.close()

    def read_all(self, timeout: float = 10) -> bytes:
        self.client.settimeout(timeout)
        data = b""
        try:
            while True:
                b = self.client.recv(65536)
                if not b:
                    break
                data += b
        except TimeoutError:
            data += b"<timeout>"
        return data

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        self.client.settimeout(timeout)
        data = b""
        while marker not in data:
            b = self.client.recv(65536)
            if not b:
                break
            data += b
        return data

    def finish(self, timeout: float = 10) -> int:
        self.client.close()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.listener is not None:
                self.listener.close()


def parse_report(data: bytes) -> tuple[dict[str, str], dict[int, str]]:
    """ENV and FD lines of the echo server's report."""
    env, fds = {}, {}
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("ENV ") and "=" in line:
            k, _, v = line[4:].partition("=")
            env[k] = v
        elif line.startswith("FD "):
            _, num, target = (line.split(" ", 2) + [""])[:3]
            fds[int(num)] = target
    return env, fds


def parse_fd_flags(data: bytes) -> dict[int, int]:
    """The FDFLAGS lines of the echo server's report: fd -> its flags."""
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "FDFLAGS":
            out[int(parts[1])] = int(parts[2], 8)
    return out


def decision(verdict=1, reason=0, location=None, env=(), options=(), lease=0,
             names=None) -> bytes:
    """A DECISION frame body for request id 1, encoded by the project's codec;
    ``names`` = (client name, server name) adds the names section (flag
    NAMES; None for a name not looked up)."""
    from acl.model import Decision, Location, Reason, Verdict

    loc = Location(*location) if location else None
    looked_up = names if names is not None else (None, None)
    return binary.encode_decision(1, Decision(Verdict(verdict), Reason(reason), loc,
                                              tuple(env), tuple(options), lease, *looked_up),
                                  names=names is not None)


def python() -> str:
    return sys.executable
