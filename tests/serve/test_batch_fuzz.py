"""The compiled batch path (``BatchPlan.run``) on damaged frame streams.

test_fastpath.py holds the plan to the Python path on well-formed request
streams.  Here the same generated streams are damaged -- bytes changed in
the headers and payloads, length fields and the payload's own lengths
(service, host, user) changed, frames cut and spliced -- and read the way
the server reads a connection (``answer_frames``, in chunks): the plan with
its Python fallback must send exactly the bytes the Python path alone
sends, and close the connection at the same frame.  Then ``run`` reads
streams that end where an unreadable page begins, from every position, so
a read one byte past its buffer crashes the test even without ASan.

ACL_SLOW=1 multiplies the counts.  Under AddressSanitizer and UBSan: see
tests/README.md (sanitizer runs).
"""

from __future__ import annotations

import random
import struct

import pytest

from acl.engine import KERNEL, Engine
from acl.serve.conn import answer_frames
from tests.conftest import SLOW
from tests.guard_pages import GuardedPages
from tests.serve.test_fastpath import make_policy, stream

pytestmark = pytest.mark.skipif(KERNEL != "compiled", reason="the compiled engine is not built")

SCALE = 10 if SLOW else 1


def frame_starts(blob: bytes) -> list[int]:
    starts, pos = [], 0
    while pos + 4 <= len(blob):
        starts.append(pos)
        pos += 4 + struct.unpack_from("<I", blob, pos)[0]
    return starts


def damage(blob: bytes, rng: random.Random) -> bytes:
    """A few changes where a decoder looks: a header byte, the length
    field, one of the DECIDE payload's lengths or families, any byte; a
    frame cut short or spliced with another."""
    b = bytearray(blob)
    starts = frame_starts(blob)
    for _ in range(rng.randrange(1, 6)):
        at = rng.choice(starts)
        if at + 12 > len(b):        # an earlier change cut the stream here
            continue
        k = rng.randrange(7)
        if k == 0:
            b[at + 4 + rng.randrange(8)] = rng.randrange(256)       # version, type, flags, id
        elif k == 1:
            b[at:at + 4] = struct.pack("<I", rng.choice(
                [0, 7, 8, 9, 17, 18, 65532, 65533, 1 << 20, 0xFFFFFFFF,
                 (struct.unpack_from("<I", b, at)[0] + rng.choice([-2, -1, 1, 2])) & 0xFFFFFFFF]))
        elif k == 2 and at + 22 <= len(b):
            b[at + 12 + rng.choice([0, 1, 6, 7, 8, 9])] = rng.choice([0, 1, 4, 6, 16, 255,
                                                                        rng.randrange(256)])
        elif k == 3 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif k == 4:
            del b[at + rng.randrange(1, 30):at + rng.randrange(30, 60)]
        elif k == 5:
            other = rng.choice(starts)
            b[at:at] = blob[other:other + rng.randrange(4, 40)]
        else:
            b[at + 12:at + 12] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
    return bytes(b)


def answer(engine, blob: bytes, now: float, chunk: int) -> tuple[bytes, bool]:
    """The replies a connection sends for ``blob`` read ``chunk`` bytes at a
    time, and whether it was closed (a fatal frame).  A damaged flags field
    may ask for SEAL: the connection's state is kept from read to read, as
    acl/serve/conn.py keeps it."""
    buf = bytearray()
    leases: set = set()
    out = []
    state = [0]
    for i in range(0, len(blob), chunk):
        buf += blob[i:i + chunk]
        got, fatal, _ = answer_frames(engine, buf, now, leases, True, sealed=state[0],
                                      on_seal=lambda s: state.__setitem__(0, s))
        out.extend(got)
        if fatal:
            return b"".join(out), True
    return b"".join(out), False


@pytest.mark.parametrize("seed", range(4))
def test_plan_answers_damaged_streams_as_the_python_path(tmp_path_factory, seed):
    rng = random.Random(seed)
    policy = make_policy(tmp_path_factory.mktemp("bf"), rng, *rng.choice([(0.0, 0.0), (5.0, 3.0)]))
    fast, slow = Engine(policy), Engine(policy, batch=False)
    if fast.plan is None:
        pytest.skip("this generated policy has no batch plan")
    fatal = 0
    for i in range(150 * SCALE):
        blob = damage(stream(rng, 40), rng)
        chunk = rng.choice([1, 7, 64, 1 << 20])
        got = answer(fast, blob, 1000.0 + i, chunk)
        assert got == answer(slow, blob, 1000.0 + i, 1 << 20), (seed, i, chunk, blob)
        fatal += got[1]
    assert 0 < fatal < 150 * SCALE, fatal     # both endings are well represented


def run_all(plan, buf, pos: int, now: float) -> list:
    """run() from ``pos`` until it stops for Python or at an incomplete
    frame: each call's (pos, replies, status)."""
    calls = []
    for _ in range(1000):
        pos, replies, status = plan.run(buf, pos, now)
        calls.append((pos, replies, status))
        if status != 2:
            return calls
    raise AssertionError("run() made no progress")


def test_run_reads_nothing_past_its_buffer(tmp_path_factory):
    """Whole, damaged and cut streams, each ending at an unreadable page,
    read by run() from every frame start and from positions in between:
    the same answers as from a bytes copy, and no read past the end."""
    rng = random.Random(7)
    policy = make_policy(tmp_path_factory.mktemp("bg"), rng)
    plan = Engine(policy).plan
    if plan is None:
        pytest.skip("this generated policy has no batch plan")
    with GuardedPages(8) as guard:
        for i in range(150 * SCALE):
            blob = stream(rng, rng.randrange(1, 30))
            blob = damage(blob, rng) if i % 3 else blob
            blob = blob[:rng.randrange(len(blob) + 1)] if i % 5 == 0 else blob
            if len(blob) > guard.size:
                continue
            view = guard.at_end(blob)
            positions = set(frame_starts(blob)) | {rng.randrange(len(blob) + 1) for _ in range(4)}
            for pos in sorted(positions):
                assert run_all(plan, view, pos, 5.0) == run_all(plan, blob, pos, 5.0), (i, pos)
            del view
