"""``acl_nfq_recv`` on generated netlink traffic, held to a Python model.

The kernel sends acl one queued packet per datagram, ids counting up from 1;
what it can also send -- an NLMSG_ERROR for a verdict it refused, ids that
skip (packets it could not hand over) or wrap at 2^32 after four billion
packets -- and what the reader promises for any datagram (several messages
in one, messages of other types, a message whose attributes acl_nfq_attrs
refuses, a payload past the copy range, a datagram past the receive slot)
is hard to make the kernel do.  Here a netlink peer in a namespace made by
the test sends generated datagrams to the queue's socket by its port id (as
the kernel does; root may), and every record (id, hw protocol, mark, wire
length, captured bytes) and counter (gaps, refused verdicts, the last
errno) must be what the model below says.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import pytest

from tests.conftest import SLOW

from . import netns
from .netlink_msgs import NFGENMSG_INET, attr, nlmsg

pytestmark = pytest.mark.root
WHY = netns.available()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

QUEUE = 50
BATCH, RANGE = 6, 64
SLOT = (RANGE + 512 + 7) & ~7          # ext/nfq_build.py: a datagram's receive slot
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
PACKET, VERDICT, CONFIG = 3 << 8, (3 << 8) | 1, (3 << 8) | 2
NFQA_PACKET_HDR, NFQA_MARK, NFQA_PAYLOAD, NFQA_CAP_LEN = 1, 3, 10, 13
#: ACL_SLOW=1 runs more generated runs.
SEEDS = range(16) if SLOW else range(3)


def packet(pid: int, hw: int, payload: bytes, mark=None, cap_len=None, bad=False) -> bytes:
    attrs = attr(NFQA_PACKET_HDR, struct.pack("!IHB", pid, hw, 1))
    if mark is not None:
        attrs += attr(NFQA_MARK, struct.pack("!I", mark) + (b"\0" * 4 if bad else b""))
    attrs += attr(NFQA_PAYLOAD, payload)
    if cap_len is not None:
        attrs += attr(NFQA_CAP_LEN, struct.pack("!I", cap_len))
    return nlmsg(PACKET, NFGENMSG_INET + attrs)


def error(errno_: int, whole=True) -> bytes:
    body = struct.pack("=i", -errno_) + (nlmsg(VERDICT, b"")[:16] if whole else b"")
    return nlmsg(NLMSG_ERROR, body)


class Model:
    """What acl_nfq_recv promises (ext/nfq_build.py), one message at a time."""

    def __init__(self):
        self.gaps = self.nlerrors = self.last_error = 0
        self.last_id = 0     # ids count from 1: a first id past it is a gap too
        self.seen = False

    def read(self, datagrams: list[tuple[bytes, list]]) -> list:
        records = []
        for raw, meaning in datagrams:
            raw = raw[:SLOT]                   # a longer datagram is cut to its slot
            at = 0
            for what in meaning:
                if at + 16 > len(raw):
                    break
                length = struct.unpack_from("=I", raw, at)[0]
                if length < 16 or at + length > len(raw):
                    break
                if what[0] == "error" and what[2]:
                    self.nlerrors += 1
                    self.last_error = what[1]
                elif what[0] == "packet" and len(records) < BATCH:
                    _, pid, hw, payload, mark, cap_len = what
                    caplen = min(len(payload), RANGE)
                    step = (pid - self.last_id) % 2**32
                    if 1 < step < 2**31:
                        self.gaps += step - 1
                    if 0 < step < 2**31:
                        self.last_id = pid
                    self.seen = True
                    records.append([pid, hw, mark or 0, caplen if cap_len is None else cap_len,
                                    payload[:caplen].hex()])
                at += (length + 3) & ~3
        return records


def generate(rng: random.Random, first_id: int, steps: int):
    """Steps of datagrams, each with what its messages mean to the model."""
    pid = first_id
    out = []
    for _ in range(steps):
        step = []
        for _ in range(rng.randrange(1, BATCH + 1)):
            msgs, meaning = [], []
            for _ in range(1 if rng.random() < 0.7 else rng.randrange(2, 4)):
                kind = rng.random()
                if kind < 0.7:
                    if rng.random() < 0.05:      # an id read before: it moves nothing
                        old = (pid - rng.randrange(0, 4)) % 2**32
                    else:
                        pid = (pid + (1 if rng.random() < 0.7 else rng.randrange(2, 6))) % 2**32
                        old = pid
                    size = rng.choice([0, 1, 20, 28, 40, 63, 64, 65, 120, RANGE + 200])
                    payload = rng.randbytes(size)
                    mark = rng.getrandbits(32) if rng.random() < 0.4 else None
                    cap_len = rng.randrange(size, size + 3000) if rng.random() < 0.3 else None
                    bad = mark is not None and rng.random() < 0.15
                    hw = rng.choice([0x0800, 0x86DD, rng.getrandbits(16)])
                    msgs.append(packet(old, hw, payload, mark, cap_len, bad))
                    meaning.append(("refused",) if bad else
                                   ("packet", old, hw, payload, mark, cap_len))
                elif kind < 0.85:
                    code = rng.choice([0, 2, 1, 105, 22])      # 0: an ack, not a refusal
                    whole = rng.random() < 0.8
                    msgs.append(error(code, whole))
                    meaning.append(("error", code, whole and code != 0))
                else:
                    msgs.append(nlmsg(rng.choice([NLMSG_NOOP, NLMSG_DONE, VERDICT, CONFIG]),
                                      NFGENMSG_INET + attr(NFQA_PACKET_HDR,
                                      struct.pack("!IHB", (pid + 7) % 2**32, 0x0800, 1))))
                    meaning.append(("other",))
            step.append((b"".join(msgs), meaning))
        out.append(step)
    return out


@pytest.fixture(scope="module")
def ns():
    name = f"acltest-nfq-{os.getpid()}-peer"
    netns.run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def run_peer(ns: str, steps) -> list:
    out = netns.run("ip", "netns", "exec", ns, sys.executable, "-m", "tests.nfq.netns_tools",
                    "peer", "--queue", str(QUEUE), "--batch", str(BATCH), "--range", str(RANGE),
                    input=json.dumps([[raw.hex() for raw, _ in step] for step in steps]),
                    cwd=netns.ROOT, timeout=60)
    return json.loads(out.stdout)


# ids from the first one, and ids across the wrap at 2^32 (after 2^32 - 1
# comes 0), reached in two jumps shorter than 2^31 (counted as gaps)
@pytest.mark.parametrize("first_id", [0, 2**32 - 40], ids=["from-1", "wrapping"])
@pytest.mark.parametrize("seed", SEEDS)
def test_records_and_counters_are_what_the_model_says(ns, seed, first_id):
    rng = random.Random(seed * 7919 + first_id)
    steps = generate(rng, first_id, 25)
    if first_id:
        steps[:0] = [[(packet(pid, 0x0800, b""), [("packet", pid, 0x0800, b"", None, None)])]
                     for pid in (2**31 - 1, first_id)]
    got = run_peer(ns, steps)
    model = Model()
    for i, step in enumerate(steps):
        want = {"records": model.read(step), "gaps": model.gaps, "nlerrors": model.nlerrors,
                "last_error": model.last_error}
        assert got[i] == want, (i, [m for _, m in step])
    # verdict_all names the latest id read; the kernel queued none: ENOENT
    assert got[-1]["nlerrors"] == model.nlerrors + model.seen
    ids = [r[0] for s in got for r in s["records"]]
    assert not first_id or min(ids) < 1000 < first_id <= max(ids), "the ids did not wrap"


def test_the_first_id_past_1_counts_the_ids_before_it_as_gaps(ns):
    # a freshly bound queue numbers its packets from 1
    got = run_peer(ns, [[(packet(pid, 0x0800, b""), [])] for pid in (4, 5, 9)])
    assert [s["gaps"] for s in got] == [3, 3, 6, 6]


def test_a_gap_after_the_wrap_is_counted(ns):
    # 2^32 - 1 is followed by 0; then 1..4 are lost
    ids = (1, 2**31, 2**32 - 1, 0, 5)
    got = run_peer(ns, [[(packet(pid, 0x0800, b""), [])] for pid in ids])
    assert [s["records"][0][0] for s in got[:-1]] == list(ids)
    assert [s["gaps"] for s in got[:-1]] == [0, 2**31 - 2, 2**32 - 4, 2**32 - 4, 2**32]


def test_verdict_all_answers_up_to_id_0_after_the_wrap(ns):
    # the latest id read is 0: a batch verdict is still owed, sent, and
    # refused here (the kernel queued no such packet)
    got = run_peer(ns, [[(packet(pid, 0x0800, b""), [])] for pid in (1, 2**31, 2**32 - 1, 0)])
    assert got[-1]["nlerrors"] == 1 and got[-1]["last_error"] == 2


def test_verdict_all_before_any_packet_sends_nothing(ns):
    got = run_peer(ns, [[(error(0), [])]])
    assert got[-1]["nlerrors"] == 0


def test_a_datagram_past_its_receive_slot_gives_the_messages_that_fit(ns):
    # two packets of RANGE + 200 payload bytes in one datagram: the first fits
    # the slot whole, the second is cut by it and is not read
    big = bytes(range(256))[:RANGE + 200]
    raw = packet(1, 0x0800, big) + packet(2, 0x0800, big)
    assert len(packet(1, 0x0800, big)) <= SLOT < len(raw)
    got = run_peer(ns, [[(raw, [])], [(packet(3, 0x0800, b""), [])]])
    assert [r[0] for r in got[0]["records"]] == [1], got[0]
    assert got[0]["records"][0][4] == big[:RANGE].hex()
    assert [r[0] for r in got[1]["records"]] == [3] and got[1]["gaps"] == 1, got[1]
