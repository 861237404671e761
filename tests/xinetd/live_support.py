"""Run the real xinetd (Debian 2.3.15.3) on loopback for differential tests.

Isolation, as in the spec's verify/xinetd_live.py: xinetd runs in the
foreground (``-dontfork``) inside ``unshare -m`` with a private /etc/hosts,
/etc/nsswitch.conf (``hosts: files``) and empty hosts.allow/hosts.deny bound
over the real ones, so nothing leaves the machine and no system file
changes.  Services bind 127.0.0.1 / ::1 / ::ffff:127.0.0.1 on ports
23000-23999 only (tests.conftest.PORTS["xinetd"]); clients bind 127.x.y.z.
Those ports are fixed per test: before xinetd starts, every port its
configuration names must be free (tests.conftest.require_free_ports), since
xinetd runs on without a service it cannot bind, and a second test run at
once would show as false disagreements.
The daemon is stopped by its PID (the Popen handle) and the directory removed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import require_free_ports

HOSTS = """127.0.0.1 localhost
127.0.0.2 two.example.com two
127.0.0.3 three.example.com
127.0.0.4 four.other.org
127.0.0.5 Five.EXAMPLE.com
127.1.2.3 x.example.com.example.com
127.0.0.6 myexample.com
::1 ip6-localhost
"""
NETWORKS = "loopnet 127.0.0.0\nlooptwo 127.2\n"


def require_live():
    if os.geteuid() != 0:
        pytest.skip("live xinetd tests need root (unshare -m, bind mounts)")
    for tool in ("xinetd", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


class Xinetd:
    """One real xinetd on a generated configuration."""

    def __init__(self, conf_text: str, services: int, tmp: str | None = None,
                 loadavg: str | None = None):
        """``loadavg``: the text xinetd reads as /proc/loadavg (bind-mounted
        over it in xinetd's mount namespace), for max_load at a known load."""
        self.dir = tmp or tempfile.mkdtemp(prefix="acl-xinetd.")
        self.loadavg = loadavg
        self.conf = os.path.join(self.dir, "xinetd.conf")
        self.log = os.path.join(self.dir, "daemon.log")
        self.hosts = os.path.join(self.dir, "hosts")
        self.services = services
        with open(self.conf, "w") as f:
            f.write(conf_text)
        for name, text in (("hosts", HOSTS), ("networks", NETWORKS),
                           ("nss", "hosts: files\nnetworks: files\n"),
                           ("hosts.allow", ""), ("hosts.deny", "")):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        if loadavg is not None:
            with open(os.path.join(self.dir, "loadavg"), "w") as f:
                f.write(loadavg)
        self.proc: subprocess.Popen | None = None

    def ports(self) -> set[int]:
        """The ports the configuration names, in its ``include`` and
        ``includedir`` files too (one level: the tests nest no deeper)."""
        with open(self.conf, "rb") as f:
            texts = [f.read()]
        for m in re.finditer(rb"^[ \t]*include(dir)?[ \t]+(\S+)", texts[0], re.M):
            path = os.fsdecode(m[2])
            names = ([os.path.join(path, n) for n in sorted(os.listdir(path))]
                     if m[1] and os.path.isdir(path) else [path])
            for name in names:
                try:
                    with open(name, "rb") as f:
                        texts.append(f.read())
                except OSError:
                    pass
        return {int(n) for text in texts
                for n in re.findall(rb"^[ \t]*port[ \t]*=[ \t]*(\d{1,5})(?!\d)", text, re.M)
                if 0 < int(n) < 65536}

    def start(self, timeout: float = 10.0) -> None:
        # both protocols: a configuration's port names no protocol here, and
        # any socket on a port of this area is another run's
        require_free_ports(sorted(self.ports()))
        require_free_ports(sorted(self.ports()), proto="udp")
        d = self.dir
        script = (f"mount --bind {d}/hosts /etc/hosts && "
                  f"mount --bind {d}/networks /etc/networks && "
                  f"mount --bind {d}/nss /etc/nsswitch.conf && "
                  f"mount --bind {d}/hosts.allow /etc/hosts.allow && "
                  f"mount --bind {d}/hosts.deny /etc/hosts.deny && "
                  + (f"mount --bind {d}/loadavg /proc/loadavg && " if self.loadavg is not None
                     else "") +
                  f"exec xinetd -dontfork -filelog {d}/daemon.log -f {d}/xinetd.conf "
                  f"-pidfile {d}/pid")
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xinetd exited: {self.proc.stdout.read()!r}\n{self.log_text()}")
            if "Started working" in self.log_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"xinetd did not start:\n{self.log_text()}")

    def children(self) -> int:
        """Servers xinetd has running (its child processes, not yet reaped)."""
        pid = self.proc.pid if self.proc is not None else 0
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return len(f.read().split())
        except OSError:
            return 0

    def wait_children(self, at_most: int, timeout: float = 5.0) -> None:
        """Wait (bounded) until xinetd has reaped down to ``at_most`` servers."""
        deadline = time.monotonic() + timeout
        while self.children() > at_most and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)      # the reap and xinetd's own count happen together

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def probe(port: int, src: str, dst: str = "127.0.0.1", timeout: float = 3.0) -> str:
    """Connect from ``src``; "ok" (server ran), "closed" (accepted, closed
    without data: a refusal) or "refused" (no listening socket)."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        try:
            s.connect((dst, port))
        except ConnectionRefusedError:
            return "refused"
        data = b""
        while True:
            try:
                b = s.recv(256)
            except ConnectionResetError:
                break
            if not b:
                break
            data += b
        return "ok" if data.strip() == b"ok" else "closed" if not data else "data:" + repr(data)
    finally:
        s.close()


class Held:
    """A connection to a /bin/cat service, kept open to hold a server."""

    def __init__(self, port: int, src: str, timeout: float = 3.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((src, 0))
        self.result = "refused"
        try:
            self.sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            self.sock.close()
            return
        try:
            self.sock.sendall(b"ping\n")
            got = self.sock.recv(64)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            got = b""
        self.result = "ok" if got == b"ping\n" else "closed"
        if self.result != "ok":
            self.sock.close()

    def close(self) -> None:
        self.sock.close()


def expected_outcome(answer: str) -> str:
    if answer == "allow ok":
        return "ok"
    if answer in ("deny address", "deny service_limit", "deny per_source_limit"):
        return "closed"
    if answer == "deny unknown_service":
        return "refused"
    return "?" + answer


def acl_match_batch(tmp_path, conf: str | bytes, lines: list[str],
                    limits: bool = False) -> list[str]:
    """``acl match --xinetd CONF --batch`` (the test's hosts file) on
    ``lines`` ("SERVICE CLIENT [SERVER]"): one live-probe outcome per line.
    ``limits``: with ``--limits`` (instances, per_source... consulted)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    path = tmp_path / "x.conf"
    if isinstance(conf, bytes):
        path.write_bytes(conf)
    else:
        path.write_text(conf)
    out = subprocess.run(
        [sys.executable, "-m", "acl", "match", "--xinetd", str(path), "--hosts", str(hosts),
         "--batch", "-q", *(["--limits"] if limits else [])],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answers = out.stdout.splitlines()
    assert len(answers) == len(lines), out.stdout
    return [expected_outcome(a) for a in answers]


def acl_outcomes(tmp_path, text: str | bytes, rows) -> list:
    """What ``acl match --xinetd --batch`` predicts for each (service, source)
    of ``rows``, in the shape of a live probe row."""
    got = acl_match_batch(tmp_path, text, [f"{s} {c}" for s, c, _ in rows])
    return [(s, c, a) for (s, c, _), a in zip(rows, got, strict=True)]
