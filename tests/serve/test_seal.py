"""A sealed connection (DECIDE flag SEAL, docs/protocol.md "Leases") over a
real ``acl serve``: after the sealing DECIDE is answered, the connection
releases its own lease and does nothing else -- no DECIDE (with LEASE or
without, batch plan or Python), no PING; garbage, even a frame no length can
skip, neither closes it nor ends its lease; a flood of frames is held back by
backpressure like any client's.  What acl-wrap hands a server
(ACL_LEASE_FD) is such a connection: tests/wrap/test_live_seal.py.

The test policy's echo-stream: per_source = 2, instances = 3.
"""

from __future__ import annotations

import socket
import struct
import time

from acl.client import Client
from acl.model import Reason, Request, Verdict
from acl.wire import binary as wb

from .conftest import connect, read_replies, wait_for
from .test_server import admin


def leases(srv) -> int:
    return admin(srv.admin, "stats")["leases"].get("echo-stream", 0)


def sealed(srv, client: str = "127.0.0.5") -> tuple[socket.socket, int]:
    """A connection sealed by its granted DECIDE+LEASE+SEAL, and its lease."""
    s = connect(srv.query)
    s.sendall(wb.encode_decide(1, Request("echo-stream", client, lease=True), seal=True))
    (rep,) = read_replies(s, 1)
    assert rep.type == wb.T_DECISION and rep.decision.verdict == Verdict.ALLOW, rep
    assert rep.decision.lease
    return s, rep.decision.lease


def still_open(s: socket.socket) -> bool:
    s.settimeout(0.3)
    try:
        return s.recv(1) != b""
    except TimeoutError:
        return True
    finally:
        s.settimeout(10)


def test_sealed_connection_answers_error_and_takes_no_slot(served):
    s, lease = sealed(served)
    forged = [wb.encode_decide(10 + i, Request("echo-stream", "127.0.0.9", lease=True))
              for i in range(3)]
    # one frame a read (the no-copy shortcut of data_received), then a batch
    for i, f in enumerate(forged):
        s.sendall(f)
        (rep,) = read_replies(s, 1)
        assert (rep.type, rep.request_id, rep.code) == (wb.T_ERROR, 10 + i, wb.E_SEALED), rep
    batch = [wb.encode_decide(20, Request("sshd", "127.0.0.1")),   # no flags: the plan's kind
             wb.encode_decide(21, Request("echo-stream", "127.0.0.9", lease=True), seal=True),
             wb.encode_ping(22), wb.frame(0x77, 23), wb.encode_release(24, lease + 1000)]
    s.sendall(b"".join(batch))
    reps = read_replies(s, 5)
    assert [(r.type, r.request_id, r.code) for r in reps] == [
        (wb.T_ERROR, 20, wb.E_SEALED), (wb.T_ERROR, 21, wb.E_SEALED),
        (wb.T_ERROR, 22, wb.E_SEALED), (wb.T_ERROR, 23, wb.E_SEALED),
        (wb.T_RELEASED, 24, None)]
    assert reps[-1].released is False
    # nothing was taken: the sealed lease alone; 127.0.0.9 gets its two
    assert leases(served) == 1
    with Client(served.query) as other:
        assert other.decide("echo-stream", "127.0.0.9", lease=True).allowed
        assert other.decide("echo-stream", "127.0.0.9", lease=True).allowed
        full = other.decide("echo-stream", "127.0.0.10", lease=True)
        assert (full.verdict, full.reason) == (Verdict.DENY, Reason.SERVICE_LIMIT)
        # its own lease it may still give back early, once
        s.sendall(wb.encode_release(30, lease) + wb.encode_release(31, lease))
        reps = read_replies(s, 2)
        assert [(r.type, r.released) for r in reps] == [(wb.T_RELEASED, True),
                                                         (wb.T_RELEASED, False)]
        assert other.decide("echo-stream", "127.0.0.10", lease=True).allowed
    s.close()


def test_frames_after_the_sealing_decide_in_the_same_write_are_sealed(served):
    s = connect(served.query)
    s.sendall(wb.encode_decide(1, Request("echo-stream", "127.0.0.5", lease=True), seal=True)
              + wb.encode_decide(2, Request("echo-stream", "127.0.0.9", lease=True))
              + wb.encode_decide(3, Request("sshd", "127.0.0.1")))
    reps = read_replies(s, 3)
    assert reps[0].type == wb.T_DECISION and reps[0].decision.lease
    assert [(r.type, r.code) for r in reps[1:]] == [(wb.T_ERROR, wb.E_SEALED)] * 2
    assert leases(served) == 1
    s.close()


def test_a_sealing_decide_that_takes_no_lease_seals_all_the_same(served):
    """SEAL seals the connection once its DECIDE is answered, "whatever the
    answer" (docs/protocol.md, DECIDE flags): a refusal, or a grant without
    a lease, leaves nothing to release -- every frame after it is ERROR 8."""
    for request, granted in [
            (Request("echo-stream", "10.0.0.1", lease=True), False),     # only_from
            (Request("echo-stream", "127.0.0.5"), True),                  # no LEASE asked
            (Request("sshd", "127.0.0.1"), True),                          # the plan's service
            (Request("nosuch", "127.0.0.1", lease=True), False)]:          # unknown_service
        s = connect(served.query)
        s.sendall(wb.encode_decide(1, request, seal=True))
        (rep,) = read_replies(s, 1)
        assert rep.type == wb.T_DECISION and rep.decision.allowed is granted, (request, rep)
        assert rep.decision.lease == 0
        s.sendall(wb.encode_ping(2) + wb.encode_decide(3, Request("sshd", "127.0.0.1"))
                  + wb.encode_release(4, 1))
        reps = read_replies(s, 3)
        assert [(r.type, r.request_id, r.code) for r in reps] == [
            (wb.T_ERROR, 2, wb.E_SEALED), (wb.T_ERROR, 3, wb.E_SEALED),
            (wb.T_RELEASED, 4, None)], request
        assert reps[2].released is False
        s.close()


def test_garbage_neither_closes_a_sealed_connection_nor_ends_its_lease(served):
    s, lease = sealed(served)
    s.sendall(struct.pack("<I", 3) + b"\x01\x01" + b"\x00" * 64)    # no length can skip it
    (rep,) = read_replies(s, 1)
    assert (rep.type, rep.request_id, rep.code) == (wb.T_ERROR, 0, wb.E_SEALED)
    s.sendall(wb.encode_release(5, lease) + b"\xff" * 5000)        # after it: dropped
    assert still_open(s)
    assert leases(served) == 1
    with Client(served.query) as other:     # per_source 2: the sealed lease still counts
        assert other.decide("echo-stream", "127.0.0.5", lease=True).allowed
        full = other.decide("echo-stream", "127.0.0.5", lease=True)
        assert (full.verdict, full.reason) == (Verdict.DENY, Reason.PER_SOURCE_LIMIT)
    s.close()                              # the lease ends with the connection
    wait_for(lambda: leases(served) == 0, 15, "lease released on close")


def test_a_sealed_connection_flooding_without_reading_is_held_back(served):
    s, _ = sealed(served)
    s.settimeout(0.5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    batch = wb.encode_ping(9) * 20000            # 240 KB: every frame answered ERROR 8
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 20 and sent < 400 * len(batch):
            sent += s.send(batch)
    except (TimeoutError, BlockingIOError):
        pass
    # the server stopped reading long before the ~260 MB of errors were owed
    assert sent < 400 * len(batch)
    with open(f"/proc/{served.proc.pid}/status") as f:
        rss_kb = int(next(ln for ln in f if ln.startswith("VmRSS")).split()[1])
    assert rss_kb * 1024 < 400 * 2**20
    with Client(served.query) as other:
        assert other.decide("sshd", "192.0.2.1").allowed
    assert leases(served) == 1                     # held back, not hung up on
    s.close()
    wait_for(lambda: leases(served) == 0, 15, "lease released on close")
