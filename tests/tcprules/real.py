"""Driving the real ucspi-tcp-ipv6 tools (tcprules, tcprulescheck) safely.

* Every process is started with a Popen handle or posix_spawn pid and is
  killed and reaped by that id; tcprules gets a short timeout because the
  IPv6 build loops forever on some lines (spec B.1).
* tcprulescheck is one process per query; ``check_many`` runs them on two
  threads with posix_spawn, which is about 1 ms per query here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

TCPRULES = shutil.which("tcprules")
TCPRULESCHECK = shutil.which("tcprulescheck")
TCPSERVER = shutil.which("tcpserver")

need_tools = pytest.mark.skipif(
    TCPRULES is None or TCPRULESCHECK is None,
    reason="ucspi-tcp-ipv6 (tcprules, tcprulescheck) is not installed",
)


@dataclass
class TcprulesRun:
    status: str            # "ok", "error" (exit 100/111) or "hang" (killed)
    cdb: bytes | None
    stderr: bytes
    code: int | None


def run_tcprules(text: bytes, timeout: float = 5.0) -> TcprulesRun:
    """Compile ``text`` with the real tcprules in a private temp dir."""
    with tempfile.TemporaryDirectory(prefix="acl-tcprules-") as d:
        cdb, tmp = os.path.join(d, "r.cdb"), os.path.join(d, "r.tmp")
        p = subprocess.Popen([TCPRULES, cdb, tmp], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _out, err = p.communicate(text, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()                       # by its own handle
            p.communicate()
            return TcprulesRun("hang", None, b"", None)
        if p.returncode != 0:
            return TcprulesRun("error", None, err, p.returncode)
        with open(cdb, "rb") as f:
            return TcprulesRun("ok", f.read(), err, 0)


def _run_check(cdb_path: str, env: dict[bytes, bytes]) -> tuple[int, bytes]:
    """tcprulescheck's exit code and output (stdout and stderr together)."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(TCPRULESCHECK, [TCPRULESCHECK, cdb_path], env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, w, 1),
                                           (os.POSIX_SPAWN_DUP2, w, 2)])
    finally:
        os.close(w)
    chunks = []
    try:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def _check_one(cdb_path: str, ip: str, host: str | None, info: str | None) -> bytes:
    env = {b"TCPREMOTEIP": ip.encode("utf-8", "surrogateescape")}
    if host is not None:
        env[b"TCPREMOTEHOST"] = host.encode("utf-8", "surrogateescape")
    if info is not None:
        env[b"TCPREMOTEINFO"] = info.encode("utf-8", "surrogateescape")
    code, out = _run_check(cdb_path, env)
    if code != 0:
        raise RuntimeError(f"tcprulescheck failed ({code}): {out!r}")
    return out


def check_many(cdb_path: str, queries, workers: int = 3) -> list[bytes]:
    """tcprulescheck's output for each ``(ip, host, info)``."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda q: _check_one(cdb_path, *q), queries))


def check_many_raw(cdb_paths, ip: str, workers: int = 3) -> list[tuple[int, bytes]]:
    """``(exit code, output)`` of tcprulescheck for ``ip`` on each file,
    failures included."""
    env = {b"TCPREMOTEIP": ip.encode()}
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: _run_check(p, env), cdb_paths))


def parse_check(out: bytes) -> tuple[bytes | None, bool, list[bytes]]:
    """tcprulescheck output -> (key or None for default, deny, env items
    printed before the verdict)."""
    lines = out.split(b"\n")
    if lines[0] == b"default:":
        assert lines[1] == b"allow connection", out
        return None, False, []
    assert lines[0].startswith(b"rule ") and lines[0].endswith(b":"), out
    key = lines[0][5:-1]
    env = []
    for line in lines[1:]:
        if line.startswith(b"set environment variable "):
            env.append(line[len(b"set environment variable "):])
        elif line == b"deny connection":
            return key, True, env
        elif line == b"allow connection":
            return key, False, env
    raise AssertionError(f"unexpected tcprulescheck output {out!r}")
