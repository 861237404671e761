"""The descriptor acl-wrap hands the server (ACL_LEASE_FD) is sealed
(docs/acl-wrap.md "The lease", docs/protocol.md "Leases"): with the real
``acl serve`` (tests/wrap/live.py's policy: echo, per_source = 2), a served
program that sends DECIDE with LEASE on it for other addresses is answered
ERROR 8 and takes no slot -- another client still gets those addresses'
full per_source -- while its own lease holds, and its RELEASE (the
documented early release) still works.

Port 25630 (PORTS["wrap"]; tests/wrap/conftest.py lists the fixed users).
"""

from __future__ import annotations

import sys

import pytest

from acl.client import Client
from acl.model import Reason, Verdict
from acl.wire import binary as wb
from tests.wrap import harness, live

PORT = 25630

#: the real server acl-wrap execs: forges leases on the descriptor it got,
#: then, when the client says so, releases its own
FORGER = f"""#!{sys.executable}
import os, socket, sys
sys.path.insert(0, {str(harness.ROOT)!r})
from acl.model import Request
from acl.wire import binary as wb
s = socket.socket(fileno=int(os.environ["ACL_LEASE_FD"]))
s.settimeout(10)
dec = wb.ReplyDecoder()
def ask(frame):
    s.sendall(frame)
    while True:
        got = dec.feed(s.recv(65536))
        if got:
            return got[0]
for i, a in enumerate(["127.0.0.9", "127.0.0.9", "127.0.0.10"]):
    r = ask(wb.encode_decide(100 + i, Request("echo", a, lease=True)))
    print("FORGED", a, r.type, r.code, r.decision.lease if r.decision else 0, flush=True)
print("READY", flush=True)
sys.stdin.readline()
r = ask(wb.encode_release(200, int(os.environ["ACL_LEASE_ID"])))
print("RELEASED", r.released, flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def sidecar(short_tmp):
    d = short_tmp / "sidecar"
    d.mkdir()
    s = live.Sidecar(d).start()
    yield s
    s.stop()


def test_the_served_program_cannot_take_slots_on_its_lease_descriptor(
        wrap_bin, sidecar, short_tmp):
    srv = harness.write_exe(short_tmp / "forger", FORGER)
    h = harness.Handoff([str(wrap_bin), "-s", str(sidecar.sock), "-n", "echo", str(srv)],
                        "127.0.0.8", PORT, env={"PATH": "/usr/bin:/bin"})
    try:
        out = h.read_until(b"READY\n").decode()
        forged = [ln.split() for ln in out.splitlines() if ln.startswith("FORGED")]
        assert [f[2:] for f in forged] == [[str(wb.T_ERROR), str(wb.E_SEALED), "0"]] * 3, out
        with Client(str(sidecar.sock)) as other:
            # 127.0.0.9 and 127.0.0.10: per_source = 2 each, nothing taken
            for addr in ("127.0.0.9", "127.0.0.10"):
                assert other.decide("echo", addr, lease=True).allowed
                assert other.decide("echo", addr, lease=True).allowed
                third = other.decide("echo", addr, lease=True)
                assert (third.verdict, third.reason) == (Verdict.DENY, Reason.PER_SOURCE_LIMIT)
            # the server's own lease holds: one slot of 127.0.0.8 left
            assert other.decide("echo", "127.0.0.8", lease=True).allowed
            held = other.decide("echo", "127.0.0.8", lease=True)
            assert held.reason == Reason.PER_SOURCE_LIMIT
            # ... until it releases it itself (the documented early release)
            h.client.sendall(b"go\n")
            assert b"RELEASED True" in h.read_until(b"RELEASED")
            assert other.decide("echo", "127.0.0.8", lease=True).allowed
        h.client.sendall(b"go\n")
    finally:
        h.finish()
