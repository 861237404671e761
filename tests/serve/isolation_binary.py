"""Bad clients of the query socket (the binary protocol) for the mixed
isolation test (test_isolation_mixed.py), each with what docs/protocol.md
promises it.

Rules of this file:

* Each client builds its bytes from its own seeded RNG and knows by
  construction what the server must answer: the replies in order (type,
  request id, and the error code or answer) and how the connection ends --
  closed by the server (a frame with a bad length), open until the client
  half-closes (and then closed by the server), or, sealed, open and deaf.
  Anything else, more or less, is a failure.  Random garbage, which no one
  constructed, is read by the reference decoder (acl/wire/binary.py,
  sans-IO) to know the frames in it.
* They never ask ``echo-stream`` or ``cpsd`` and take leases only of
  ``bad-leases``: their leases and cps counts must not change the answers
  the good clients (isolation_good.py) check.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass

from acl.model import Reason, Request, Verdict
from acl.wire import binary as wb

from .isolation_policy import BAD_SAFE_REQUESTS
from .isolation_sockets import (
    NEVER_READ_CAP,
    WAIT,
    Receiver,
    Storm,
    drain,
    finish,
    open_raw,
    pump,
    read_replies,
    send,
)


# -- binary frames, built by hand -------------------------------------------------
def raw_frame(rid: int, ftype: int = wb.T_PING, payload: bytes = b"", flags: int = 0,
              version: int = 1, length: int | None = None) -> bytes:
    """Any frame, including those the codec's encoders refuse to make."""
    n = 8 + len(payload) if length is None else length
    return struct.pack("<IBBHI", n, version, ftype, flags, rid) + payload


def decide_payload(service: bytes, client: bytes = bytes([127, 0, 0, 1]), family: int = 4,
                   reserved: int = 0, service_len: int | None = None) -> bytes:
    slen = len(service) if service_len is None else service_len
    return struct.pack("<BBHHBBBB", family, 0, 0, 0, slen, 0, 0, reserved) + client + service


#: (constructor, the ERROR code it is answered with): one bad frame each,
#: none of which ends the connection
BAD_FRAMES = {
    "version": (lambda rid, rng: raw_frame(rid, version=rng.choice([0, 2, 255])), wb.E_VERSION),
    "type": (lambda rid, rng: raw_frame(rid, rng.choice([0, 4, 0x42, 0x81, 0xFF])), wb.E_TYPE),
    "flags": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE, decide_payload(b"sshd"),
                                         flags=1 << rng.randrange(5, 16)), wb.E_PAYLOAD),
    "short": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE, b"\x04\x00\x00"), wb.E_PAYLOAD),
    "family": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE, decide_payload(b"sshd", family=5)),
               wb.E_PAYLOAD),
    "reserved": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE,
                                            decide_payload(b"sshd", reserved=1)), wb.E_PAYLOAD),
    "lengths": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE,
                                           decide_payload(b"sshd", service_len=9)), wb.E_PAYLOAD),
    "utf8": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE, decide_payload(b"\xff\xfe")),
             wb.E_PAYLOAD),
    "ping_payload": (lambda rid, rng: raw_frame(rid, wb.T_PING, b"x"), wb.E_PAYLOAD),
    "release_flags": (lambda rid, rng: raw_frame(rid, wb.T_RELEASE, bytes(8), flags=1),
                      wb.E_PAYLOAD),
    # the largest frame there is (65536 bytes in all), still only malformed
    "largest": (lambda rid, rng: raw_frame(rid, wb.T_DECIDE, bytes([4]) + bytes(65523)),
                wb.E_PAYLOAD),
}


@dataclass(frozen=True)
class Want:
    """One reply a binary client must get: its type and request id, and
    what it must say (ERROR: the code; RELEASED: the status or None for
    either; DECISION: the request, checked by the oracle, or None)."""

    type: int
    rid: int
    what: object = None


def good_piece(rid: int, rng: random.Random, lease_addr: str) -> tuple[bytes, Want]:
    k = rng.randrange(4)
    if k == 0:
        return wb.encode_ping(rid), Want(wb.T_PONG, rid)
    if k == 1:
        r = rng.choice(BAD_SAFE_REQUESTS)
        return wb.encode_decide(rid, r), Want(wb.T_DECISION, rid, r)
    if k == 2:                  # no lease has this id: RELEASED 1
        return wb.encode_release(rid, rng.getrandbits(63) + 1), Want(wb.T_RELEASED, rid, False)
    r = Request("bad-leases", lease_addr, lease=True)
    return wb.encode_decide(rid, r), Want(wb.T_DECISION, rid, r)


def stream(rng: random.Random, lease_addr: str, first_rid: int = 1) -> tuple[bytes, list[Want], str]:
    """A frame stream: good and bad frames mixed, then one ending --
    nothing more, a frame with a bad length (the server answers ERROR 4,
    request id 0, and closes), or part of a frame.  Its bytes, the replies
    it must get, and "closed" or "open" (what the server does with it)."""
    parts, wants = [], []
    for i in range(rng.randrange(0, 25)):
        rid = first_rid + i
        if rng.random() < 0.5:
            blob, want = good_piece(rid, rng, lease_addr)
        else:
            name = rng.choice(sorted(k for k in BAD_FRAMES if k != "largest" or rng.random() < 0.1))
            make, code = BAD_FRAMES[name]
            blob, want = make(rid, rng), Want(wb.T_ERROR, rid, code)
        parts.append(blob)
        wants.append(want)
    end = rng.choice(["none", "short", "long", "cut"])
    if end == "short":
        parts.append(struct.pack("<I", rng.randrange(0, 8)) + rng.randbytes(rng.randrange(0, 64)))
    elif end == "long":
        n = rng.choice([65533, 65534, 1 << 20, 0xFFFFFFFF, rng.randrange(65533, 1 << 32)])
        parts.append(struct.pack("<I", n) + rng.randbytes(rng.choice([0, 8, 100, 70000])))
    elif end == "cut":
        whole = wb.encode_decide(9999, rng.choice(BAD_SAFE_REQUESTS))
        parts.append(whole[:rng.randrange(1, len(whole))])
    if end in ("short", "long"):
        wants.append(Want(wb.T_ERROR, 0, wb.E_SIZE))
    return b"".join(parts), wants, "closed" if end in ("short", "long") else "open"


def sealed_wants(wants: list[Want], blob_ending: str, lease: int,
                 releases: dict[int, int]) -> tuple[list[Want], str]:
    """What a sealed connection answers the same frames (docs/protocol.md
    "Leases"): RELEASE of its own lease ``RELEASED 0`` once (``releases``:
    request id -> lease id of each RELEASE sent), every other frame ERROR 8
    with its id -- a frame with a bad length too, once, and then the
    connection is deaf: open, answering nothing more."""
    out = []
    held = {lease} if lease else set()
    for w in wants:
        if w.type == wb.T_RELEASED:
            lid = releases.get(w.rid)
            out.append(Want(wb.T_RELEASED, w.rid, lid in held))
            held.discard(lid)
        else:
            out.append(Want(wb.T_ERROR, w.rid, wb.E_SEALED))
    return out, "deaf" if blob_ending == "closed" else "open"


def reference_wants(blob: bytes) -> tuple[list[Want], str]:
    """Replies to bytes nobody constructed: the frames the reference codec
    reads in them, each answered as docs/protocol.md says (a sealing DECIDE
    seals the rest), and how the connection ends."""
    wants: list[Want] = []
    sealed = False
    for ev in wb.BinaryDecoder().feed(blob):
        if sealed:
            if isinstance(ev, wb.Release):
                wants.append(Want(wb.T_RELEASED, ev.request_id, None))
                continue
            wants.append(Want(wb.T_ERROR, ev.request_id, wb.E_SEALED))
            if isinstance(ev, wb.BadFrame) and ev.fatal:
                return wants, "deaf"
            continue
        if isinstance(ev, wb.Decide):
            wants.append(Want(wb.T_DECISION, ev.request_id, None))
            sealed = ev.seal
        elif isinstance(ev, wb.Release):
            wants.append(Want(wb.T_RELEASED, ev.request_id, None))
        elif isinstance(ev, wb.Ping):
            wants.append(Want(wb.T_PONG, ev.request_id))
        else:
            wants.append(Want(wb.T_ERROR, ev.request_id, ev.code))
            if ev.fatal:
                return wants, "closed"
    return wants, "open"


def garbage(rng: random.Random) -> bytes:
    """Bytes no encoder made: random, random payloads behind plausible
    headers, good frames with bytes changed, spliced together."""
    out = []
    for _ in range(rng.randrange(1, 5)):
        k = rng.randrange(3)
        if k == 0:
            out.append(rng.randbytes(rng.randrange(1, 200)))
        elif k == 1:
            n = rng.randrange(0, 300)
            out.append(raw_frame(rng.getrandbits(32), rng.choice([1, 2, 3, rng.randrange(256)]),
                                 rng.randbytes(n), rng.choice([0, 0, rng.getrandbits(16)]),
                                 rng.choice([1, 1, 1, rng.randrange(256)])))
        else:
            f = bytearray(wb.encode_decide(rng.getrandbits(32), rng.choice(BAD_SAFE_REQUESTS)))
            for _ in range(rng.randrange(1, 4)):
                f[rng.randrange(4, len(f))] = rng.randrange(256)
            out.append(bytes(f))
    return b"".join(out)


def compare(storm: Storm, who: str, wants: list[Want], data: bytes) -> None:
    """The replies in ``data`` are exactly ``wants``, in order."""
    try:
        got = wb.ReplyDecoder().feed(data)
    except Exception as exc:        # noqa: BLE001  (bytes that are no reply: the finding)
        storm.fail(who, f"undecodable reply bytes: {exc!r}")
        return
    for i, (w, g) in enumerate(zip(wants, got, strict=False)):
        if (g.type, g.request_id) != (w.type, w.rid):
            storm.fail(who, f"reply {i}: got type 0x{g.type:02x} id {g.request_id} "
                            f"(code {g.code} {g.text!r}), want 0x{w.type:02x} id {w.rid}")
            return
        if w.type == wb.T_ERROR and g.code != w.what:
            storm.fail(who, f"reply {i}: ERROR {g.code} {g.text!r}, want ERROR {w.what}")
            return
        if w.type == wb.T_RELEASED and w.what is not None and g.released is not w.what:
            storm.fail(who, f"reply {i}: RELEASED {g.released}, want {w.what}")
            return
        if w.type == wb.T_DECISION and isinstance(w.what, Request):
            why = check_decision(storm, w.what, g.decision)
            if why:
                storm.fail(who, f"reply {i}: {why}")
                return
    if len(got) != len(wants):
        storm.fail(who, f"{len(got)} replies, want {len(wants)}: "
                        f"{[(hex(g.type), g.request_id, g.code) for g in got[len(wants):]]}")


def check_decision(storm: Storm, r: Request, d) -> str | None:
    if r.service == "bad-leases":       # a per_source of 4 shared by bad clients
        if (d.verdict, d.reason) == (Verdict.ALLOW, Reason.OK) and d.lease:
            return None
        if (d.verdict, d.reason) == (Verdict.DENY, Reason.PER_SOURCE_LIMIT) and not d.lease:
            return None
        return f"{r}: {d}"
    return storm.oracle.check(r, d)


def count_errors(storm: Storm, wants: list[Want]) -> None:
    for w in wants:
        if w.type == wb.T_ERROR:
            storm.errors["binary", w.what] += 1


# -- bad binary clients --------------------------------------------------------------
async def bad_frames(storm: Storm, rng: random.Random, who: str) -> None:
    """Good and bad frames mixed, an ending, sent whole, in chunks or slowly."""
    blob, wants, ending = stream(rng, f"127.0.2.{rng.randrange(1, 250)}")
    how = rng.choice(["whole", "chunks", "slow"])
    who = f"{who} {how} {ending}"
    sock = await open_raw(storm.query)
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, how)
        count_errors(storm, wants)
        await finish(storm, who, sock, rx, ending)
        compare(storm, who, wants, bytes(rx.data))


async def bad_garbage(storm: Storm, rng: random.Random, who: str) -> None:
    blob = garbage(rng)
    wants, ending = reference_wants(blob)
    how = rng.choice(["whole", "chunks", "slow"])
    sock = await open_raw(storm.query)
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, how)
        count_errors(storm, wants)
        await finish(storm, f"{who} {how} {ending} {blob.hex()}", sock, rx, ending)
        compare(storm, f"{who} {blob.hex()}", wants, bytes(rx.data))


async def bad_sealed(storm: Storm, rng: random.Random, who: str) -> None:
    """DECIDE+LEASE+SEAL of bad-leases, then a frame stream: only RELEASE of
    its own lease is acted on, a bad length leaves it deaf, never closed."""
    addr = f"127.0.3.{rng.randrange(1, 250)}"
    sock = await open_raw(storm.query)
    with sock:
        rx = Receiver(sock)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, wb.encode_decide(1, Request("bad-leases", addr, lease=True),
                                                       seal=True))
        first = None
        deadline = time.monotonic() + WAIT
        while first is None and time.monotonic() < deadline and rx.ended_at is None:
            await asyncio.sleep(0.005)
            got = wb.ReplyDecoder().feed(bytes(rx.data))
            first = got[0] if got else None
        if first is None or first.type != wb.T_DECISION:
            storm.fail(who, f"the sealing DECIDE got {first}")
            return
        lease = first.decision.lease
        blob, wants, ending = stream(rng, addr, first_rid=2)
        releases = {}
        if lease:               # its own lease, twice: RELEASED 0, then 1
            extra = [wb.encode_release(1000, lease), wb.encode_release(1001, lease)]
            releases = {1000: lease, 1001: lease}
            wants = [Want(wb.T_RELEASED, 1000), Want(wb.T_RELEASED, 1001)] + wants
            blob = b"".join(extra) + blob
        for w in wants:
            if w.type == wb.T_RELEASED:
                releases.setdefault(w.rid, -1)
        if ending == "closed":     # after the bad length: dropped, unanswered
            blob += wb.encode_ping(5000) + wb.encode_release(5001, lease or 1)
        wants, ending = sealed_wants(wants, ending, lease, releases)
        how = rng.choice(["whole", "chunks", "slow"])
        who = f"{who} {how} {ending}"
        await send(sock, blob, rng, how)
        count_errors(storm, wants)
        await finish(storm, who, sock, rx, ending)
        compare(storm, who, [Want(wb.T_DECISION, 1)] + wants, bytes(rx.data))


async def bad_vanish(storm: Storm, rng: random.Random, who: str) -> None:
    """Whole frames (leases of bad-leases among them), part of one more,
    then gone -- sometimes before reading a thing."""
    addr = f"127.0.4.{rng.randrange(1, 250)}"
    frames = [good_piece(i + 1, rng, addr)[0] for i in range(rng.randrange(0, 12))]
    cut = wb.encode_decide(77, Request("bad-leases", addr, lease=True))
    blob = b"".join(frames) + cut[:rng.randrange(1, len(cut))]
    sock = await open_raw(storm.query)
    with sock:
        await send(sock, blob, rng, rng.choice(["whole", "chunks"]))
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0, 0.05))


async def bad_never_reads(storm: Storm, rng: random.Random, who: str) -> None:
    """Pipelines without reading until the server stops taking its bytes
    (backpressure), holds a while, then reads: every frame it sent whole
    is answered, in order, and the one cut in the middle once finished --
    or, holding leases, goes away without reading (the server must let
    them go), or, sealed first, is answered ERROR 8 for each frame."""
    then = rng.choice(["drain", "drain", "vanish", "sealed"])
    who = f"{who} {then}"
    kinds = [None, *BAD_SAFE_REQUESTS]           # PING, or DECIDE of one of them
    templates = [wb.encode_ping(0) if r is None else wb.encode_decide(0, r) for r in kinds]

    def batch(n: int) -> list:
        out = []
        for rid in range(n + 1, n + 513):
            k = rng.randrange(len(kinds))
            t = templates[k]
            out.append((t[:8] + rid.to_bytes(4, "little") + t[12:], kinds[k]))
        return out

    sock = await open_raw(storm.query)
    with sock:
        if then != "drain":     # leases of bad-leases first (sealed: the sealing one)
            r = Request("bad-leases", f"127.0.5.{rng.randrange(1, 250)}", lease=True)
            n = 1 if then == "sealed" else rng.randrange(1, 4)
            await asyncio.get_running_loop().sock_sendall(sock, b"".join(
                wb.encode_decide(0x7FFF0000 + i, r, seal=then == "sealed") for i in range(n)))
            for g in await read_replies(sock, n):
                why = g.type != wb.T_DECISION or check_decision(storm, r, g.decision)
                if why:
                    storm.fail(who, f"lease: {g} {why}")
        sent, made = await pump(storm, who, sock, batch)
        storm.never_read_bytes.append(("binary", sent))
        if sent >= NEVER_READ_CAP:
            return
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        if then == "vanish":
            return
        asked, data = await drain(storm, who, sock, sent, made)
    got = wb.ReplyDecoder().feed(data)
    if then == "sealed":
        storm.errors["binary", wb.E_SEALED] += len(asked)
    if len(got) != len(asked):
        storm.fail(who, f"{len(got)} replies to {len(asked)} frames")
        return
    for i, (g, r) in enumerate(zip(got, asked, strict=True)):
        want = wb.T_ERROR if then == "sealed" else wb.T_PONG if r is None else wb.T_DECISION
        if g.request_id != i + 1 or g.type != want or (then == "sealed" and g.code != wb.E_SEALED):
            storm.fail(who, f"reply {i}: type 0x{g.type:02x} id {g.request_id} code {g.code}")
            return
        why = want == wb.T_DECISION and storm.oracle.check(r, g.decision)
        if why:
            storm.fail(who, why)
            return
