"""Packets held for a client name: a slow lookup delays only its own packets.

The front door runs on a real ``acl serve`` Server and event loop, over a
real hosts_access policy whose names come from a private hosts file.  What
stands in for the kernel is :class:`BatchQueue`: it hands the door batches
laid out exactly as ``acl._nfq`` lays them out and keeps the verdicts it is
given (the netlink side is test_live.py's).  The hosts-file lookup waits on
an Event, so the test says when a name arrives: while it has not, the door
must have held the packet, answered the rest, and the Unix socket must still
answer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from acl import nfq
from acl.client import AsyncClient
from acl.engine import KERNEL, Engine
from acl.model import Verdict
from acl.policy import load_policy
from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor
from acl.serve.server import Server
from acl.wire.packet import build

from .test_frontdoor import STRIDE, records

NAMED_GOOD, NAMED_BAD, BY_ADDRESS = "10.2.2.2", "10.3.3.3", "10.1.1.1"
SERVER = "10.9.9.9"
WAIT = 10.0          # seconds any one step may take before the test fails


class BatchQueue:
    """One queue's kernel side: batches in, verdicts kept (see the module doc)."""

    def __init__(self, num: int):
        self.num = num
        self.stride = STRIDE
        self._wake, self._peer = socket.socketpair()
        self._batches: list[bytes] = []
        self._n: list[int] = []
        self._next_id = 1
        self.batch_verdicts: list[tuple[list[int], int]] = []   # (codes, held_from)
        self.single_verdicts: list[tuple[int, int]] = []        # (packet id, code)
        self.gaps = self.overruns = 0          # what the metrics read
        self.netlink_errors = self.last_netlink_error = 0

    def feed(self, packets) -> list[int]:
        """Queue a batch; the ids the packets get."""
        ids = list(range(self._next_id, self._next_id + len(packets)))
        raw = bytearray(records(packets))
        for i, pid in enumerate(ids):          # records() numbers from 1: renumber
            nfq.RECORD.pack_into(raw, i * STRIDE, pid, *nfq.RECORD.unpack_from(raw, i * STRIDE)[1:])
        self._next_id += len(packets)
        self._batches.append(bytes(raw))
        self._n.append(len(packets))
        self._peer.send(b"x")
        return ids

    # -- what the door calls --
    def fileno(self) -> int:
        return self._wake.fileno()

    def recv(self) -> int:
        if not self._batches:
            try:
                self._wake.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            return 0
        self._current = self._batches.pop(0)
        return self._n.pop(0)

    def record_pointer(self):
        return self._current

    def records(self, n: int) -> bytes:
        return self._current

    def verdict(self, verdicts, mark: int = 0, held_from: int = -1) -> None:
        self.batch_verdicts.append((list(verdicts), held_from))

    def verdict_one(self, packet_id: int, code: int, mark: int = 0) -> None:
        self.single_verdicts.append((packet_id, code))

    def close(self) -> None:
        self._wake.close()
        self._peer.close()


def write_policy(d: Path) -> Path:
    # echo's name rule is Python's (the packets that can be held); sshd, from
    # tcprules by address alone, is what the compiled plan answers, so that
    # echo's packets reach Python through the plan's residual frames.
    (d / "hosts.allow").write_text(f"echo: {BY_ADDRESS}\necho: .good.example\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "rules").write_text(f"{BY_ADDRESS}:allow\n:deny\n")
    (d / "hosts").write_text(f"{NAMED_GOOD}\tc2.good.example\n{NAMED_BAD}\tc3.bad.example\n")
    toml = d / "policy.toml"
    toml.write_text('[sockets]\nquery = "query.sock"\n\n[names]\nhosts_file = "hosts"\n\n'
                    '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\n'
                    'deny = "hosts.deny"\nservices = ["echo"]\n\n'
                    '[[source]]\ntype = "tcprules"\nfile = "rules"\nservices = ["sshd"]\n')
    return toml


async def until(check, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_packet_waiting_for_its_name_holds_no_one_else(tmp_path, path):
    engine = Engine(load_policy(write_policy(tmp_path)))
    if path == "compiled" and engine.plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    names = engine.policy.name_service
    gate = threading.Event()
    lookup = names.lookup

    def gated_lookup(kind, addr):          # runs in the server's name threads
        assert gate.wait(WAIT), "the test never opened the gate"
        return lookup(kind, addr)

    names.lookup = gated_lookup
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()
    queue = BatchQueue(7)
    door = NfqueueFrontDoor(engine, NfqueueConfig.from_table(
                                {"queues": [7], "ports": {"7": "echo", "22": "sshd"}}),
                            queue_factory=lambda num: queue)
    if path == "python":
        door._batch = None               # no C batch state: every packet takes the Python path
    door.look_up = server.look_up_names
    server.add_front_door(door)

    def pkt(src, sport=40000):
        return build(src, SERVER, sport, 7)

    async def scenario():
        loop = asyncio.get_running_loop()
        door.start(loop)
        ready = asyncio.Event()
        serving = asyncio.ensure_future(server.serve(ready=ready.set))
        try:
            await asyncio.wait_for(ready.wait(), WAIT)
            # 1. A batch with one packet that needs a name and one that does not.
            good, by_addr = queue.feed([pkt(NAMED_GOOD), pkt(BY_ADDRESS)])
            await until(lambda: queue.batch_verdicts, "the first batch's verdicts")
            assert queue.batch_verdicts[0] == ([nfq.HOLD, nfq.ACCEPT], good)
            assert door.held == 1
            # 2. The name has not arrived: the Unix socket still answers ...
            client = await asyncio.wait_for(
                AsyncClient.connect(server.addresses["query"]), WAIT)
            try:
                d = await asyncio.wait_for(client.decide("echo", BY_ADDRESS), WAIT)
            finally:
                await client.close()
            assert d.verdict is Verdict.ALLOW
            # ... and so does the door, below the held id only.
            later, bad = queue.feed([pkt(BY_ADDRESS, 40001), pkt(NAMED_BAD)])
            await until(lambda: len(queue.batch_verdicts) == 2, "the second batch's verdicts")
            assert queue.batch_verdicts[1] == ([nfq.ACCEPT, nfq.HOLD], good)
            assert door.held == 2 and queue.single_verdicts == []
            metrics = server.metrics_body()[0].decode()
            assert "acl_nfqueue_held_packets 2.0" in metrics
            # 3. The names arrive: each held packet is decided and answered alone.
            gate.set()
            await until(lambda: len(queue.single_verdicts) == 2, "the held packets' verdicts")
            assert sorted(queue.single_verdicts) == [(good, nfq.ACCEPT), (bad, nfq.DROP)]
            assert door.held == 0 and door.held_total == 2
            if path == "compiled":       # echo reached Python as the plan's residual frames
                assert door.fast_batches == 2 and door.residual == 4
            # 4. Cached now: the same clients are answered with their batch.
            queue.feed([pkt(NAMED_GOOD, 40002), pkt(NAMED_BAD, 40003)])
            await until(lambda: len(queue.batch_verdicts) == 3, "the third batch's verdicts")
            assert queue.batch_verdicts[2] == ([nfq.ACCEPT, nfq.DROP], -1)
            verdicts = door.verdicts
            assert verdicts[("echo", "allow", "ok")] == 4
            assert sum(n for (s, v, _r), n in verdicts.items() if v == "deny") == 2
        finally:
            server.stop()
            await asyncio.wait_for(serving, WAIT)
            door.close()

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        queue.close()
