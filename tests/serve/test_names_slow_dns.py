"""A DNS server that never answers some clients must not hold everyone's names.

``acl serve`` runs with the system resolver in namespaces of its own: a
private network namespace (``unshare -n``: only ``lo``, brought up here) and
a private /etc (resolv.conf -> 127.0.0.1, ``hosts: files dns``), where
tests/serve/fake_dns.py answers on 127.0.0.1:53 -- or, for the attackers'
addresses, never answers (glibc then waits ``timeout:5``).  Nothing can
leave the namespace.  The test talks to the sidecar over its Unix socket.

* ``test_a_hanging_network_does_not_hold_the_others``: 16 clients of one
  /24 whose PTR queries hang, each on its own connection, then a client of
  another network whose DNS answers at once.  It is answered by name (a
  ``.lab.test`` rule) at once -- at most ``[names] per_network`` lookups of
  the hanging /24 run, and the pool grows past them -- and the hanging
  clients are answered at the ``[names] deadline`` as "unknown" (refused),
  not after the resolver's 5 s.
* ``test_the_deadline_bounds_a_full_pool``: with a pool of 2 threads that
  two hanging networks fill, a third network's client waits only until the
  deadline, and is then decided as "unknown" too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from acl.model import Request, Verdict
from acl.wire import binary as wb

from .conftest import start_server

HERE = Path(__file__).resolve().parent
NS = """set -e
ip link set lo up
for f in resolv.conf nsswitch.conf hosts; do mount --bind "$1/$f" /etc/$f; done
"$2" "$3" "$1/dns.json" &
shift 3
exec "$@"
"""


def needs_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare -n -m)")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def sidecar(d: Path, names: str, drop: list[str]):
    ns = d / "ns"
    ns.mkdir(parents=True)
    (ns / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:1\n")
    (ns / "nsswitch.conf").write_text("hosts: files dns\nnetworks: files\n")
    (ns / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (ns / "dns.json").write_text(json.dumps({
        "ptr": {"10.77.0.7": "victim.lab.test"}, "a": {"victim.lab.test": "10.77.0.7"},
        "drop": drop}))
    (d / "hosts.allow").write_text("sshd: .lab.test\n")
    (d / "hosts.deny").write_text("sshd: ALL\n")
    (d / "policy.toml").write_text(f"""
[sockets]
query = "query.sock"
mode = "0600"

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["sshd"]

[names]
{names}

[run]
watch = false
""")
    prefix = ["unshare", "--net", "--mount", "--propagation", "private", "bash", "--norc",
              "--noprofile", "-c", NS, "acl-dns-ns", str(ns), sys.executable,
              str(HERE / "fake_dns.py")]
    return start_server(d, d / "policy.toml", args=("--allow-pure",), prefix=prefix)


def ask(path: str, client: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(wb.encode_decide(1, Request("sshd", client)))
    return s


def answer(s: socket.socket) -> tuple[Verdict, float]:
    dec = wb.ReplyDecoder()
    while True:
        data = s.recv(65536)
        assert data, "closed without an answer"
        got = dec.feed(data)
        if got:
            s.close()
            return got[0].decision.verdict, time.monotonic()


def test_a_hanging_network_does_not_hold_the_others(tmp_path):
    needs_ns()
    live = sidecar(tmp_path, "deadline = 1.0\nper_network = 4", ["10.66.0."])
    try:
        t0 = time.monotonic()
        attackers = [ask(live.query, f"10.66.0.{i}") for i in range(1, 17)]
        time.sleep(0.3)                 # their lookups hang in the sidecar now
        t1 = time.monotonic()
        verdict, t2 = answer(ask(live.query, "10.77.0.7"))
        assert verdict is Verdict.ALLOW          # by name: it was looked up
        assert t2 - t1 < 0.8, f"the victim waited {t2 - t1:.2f} s"
        for s in attackers:
            v, t = answer(s)
            assert v is Verdict.DENY             # "unknown": not .lab.test
            assert t - t0 < 3.0, f"an attacker waited {t - t0:.2f} s (resolver: 5 s)"
    finally:
        live.stop()
    assert "Traceback" not in live.text(), live.text()


def test_the_deadline_bounds_a_full_pool(tmp_path):
    needs_ns()
    live = sidecar(tmp_path, "deadline = 1.0\nthreads = 2\nper_network = 1",
                   ["10.66.0.", "10.66.1."])
    try:
        attackers = [ask(live.query, a) for a in ("10.66.0.1", "10.66.1.1")]
        time.sleep(0.3)
        t1 = time.monotonic()
        verdict, t2 = answer(ask(live.query, "10.77.0.7"))
        # no thread was free before the deadline: decided as "unknown"
        assert verdict is Verdict.DENY
        assert 0.5 < t2 - t1 < 2.0, f"the victim waited {t2 - t1:.2f} s"
        for s in attackers:
            assert answer(s)[0] is Verdict.DENY
    finally:
        live.stop()
    assert "Traceback" not in live.text(), live.text()
