"""The real tcpserver reading a cdb that *acl* wrote, on loopback.

tcpserver (ucspi-tcp-ipv6) listens on 127.0.0.1 on a port in 22000-22999
with ``-H -R -l 0`` (no DNS, no ident: nothing leaves the machine) and runs
``env``, which prints its environment.  Clients bind
to many 127.x.y.z sources.  For every client, tcpserver's behaviour -- closed
without output (deny) or the program's environment (allow, with the rule's
variables set) -- must be what acl's layer decides for that client, with
tcpserver's default v4-mapped conversion and with ``-6``.

Every tcpserver is started and stopped through its Popen handle.
"""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import time

import pytest

from acl.compile.tcprules import load_tcprules
from acl.model import Request, Verdict

from .real import TCPSERVER

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(TCPSERVER is None, reason="tcpserver not installed")]

PORTS = range(22000, 23000)
MARK = b"TCPLOCALPORT="
# env itself, not a shell: a shell would drop variables like "F,G" whose
# names are not identifiers before printing.
PROGRAM = ["env"]
OCT = [0, 1, 2, 3, 5, 9, 10, 77, 200, 255]
NAMES = ["X", "WHO", "F,G", "TCPREMOTEIP", "PROTO", "A_1"]


def _rules(r: random.Random, sources: list[str]) -> bytes:
    lines = []
    for _ in range(r.randrange(4, 16)):
        a = r.choice(sources)
        p = a.split(".")
        key = r.choice([
            a, a, ".".join(p[:2]) + ".", ".".join(p[:3]) + ".", "127.",
            f"{'.'.join(p[:3])}.{int(p[3]) - 2 if int(p[3]) >= 2 else 0}-{int(p[3]) + r.choice([0, 3])}",
            "::ffff:" + a, "::ffff:" + ".".join(p[:3]) + ".", a.rsplit(".", 1)[0],
        ])
        env = "".join(f",{r.choice(NAMES)}={q}{r.choice(['v', 'a b', '', '=x', str(r.randrange(99))])}{q}"
                      for q in [r.choice(['"', "'", "/"]) for _ in range(r.choice([0, 1, 2, 3]))])
        lines.append(f"{key}:{r.choice(['allow', 'deny'])}{env}")
    if r.random() < 0.6:
        lines.append(r.choice([":deny", ':allow,X="default"']))
    return ("\n".join(lines) + "\n").encode()


def _free_port(start: int) -> int:
    for port in list(range(start, PORTS.stop)) + list(range(PORTS.start, start)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 22000-22999")


def _start(cdb: str, minus6: bool, port_hint: int):
    """tcpserver on 127.0.0.1; returns (Popen, port) once it listens."""
    for attempt in range(5):
        port = _free_port(port_hint + attempt)
        args = [TCPSERVER, "-v", "-H", "-R", "-l", "0", "-c", "20"]
        if minus6:
            args.append("-6")
        args += ["-x", cdb, "127.0.0.1", str(port), *PROGRAM]
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        buf = b""
        while time.monotonic() < deadline and b"status:" not in buf:
            ready, _, _ = select.select([p.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(p.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        if b"status:" in buf:
            return p, port
        p.kill()
        p.wait()
    raise RuntimeError(f"tcpserver did not start: {buf!r}")


def _connect(src: str, port: int) -> bytes:
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        data = b""
        for _ in range(1000):               # bounded: the program's output is small
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _env(output: bytes) -> dict[str, str]:
    env = {}
    for line in output.decode().splitlines():
        name, eq, value = line.partition("=")
        if eq:
            env[name] = value
    return env


@pytest.fixture
def servers():
    procs = []
    yield procs
    for p in procs:
        p.kill()                             # by PID, through the handle
        p.wait()
        p.stderr.close()


@pytest.mark.parametrize("seed", range(4))
def test_tcpserver_obeys_acl_written_cdb(seed, tmp_path, servers):
    r = random.Random(seed)
    sources = sorted({f"127.{r.choice(OCT)}.{r.choice(OCT)}.{r.choice(OCT[1:])}"
                      for _ in range(40)})
    text = _rules(r, sources)
    (tmp_path / "rules.txt").write_bytes(text)
    cdb, tmp = tmp_path / "rules.cdb", tmp_path / "rules.tmp"
    out = subprocess.run(["acl", "compile", str(cdb), str(tmp)], input=text,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    checked = {"allow": 0, "deny": 0}
    for minus6 in (False, True):
        layer = load_tcprules(cdb, mapped_as_v4=not minus6, use_host=False)
        p, port = _start(str(cdb), minus6, 22000 + 97 * seed + (500 if minus6 else 0))
        servers.append(p)
        for src in sources + ["127.0.0.1", "127.254.254.254"]:
            # tcpserver's socket is IPv6: the client arrives v4-mapped
            d = layer.check(Request("live", "::ffff:" + src), 0.0)
            got = _connect(src, port)
            where = f"seed {seed} -6={minus6} client {src}\n{text.decode()}"
            if d.verdict is Verdict.DENY:
                assert got == b"", where
                checked["deny"] += 1
                continue
            assert MARK in got, where
            env = _env(got)
            for name, value in dict(d.env).items():
                assert env.get(name) == value, (name, where)
            if "TCPREMOTEIP" not in dict(d.env):
                # the text tcpserver looked the client up by
                assert env["TCPREMOTEIP"] == ("::ffff:" + src if minus6 else src), where
            checked["allow"] += 1
    assert checked["allow"] and checked["deny"], checked
