"""The bad clients of the mixed isolation test (test_isolation_mixed.py),
on every socket acl serve has, and the flood, each with what
docs/protocol.md (and docs/metrics.md) promises it.

Rules of this file:

* Everything runs on the test process's asyncio loop and never blocks it:
  raw non-blocking sockets through ``loop.sock_*``, every wait bounded
  (``BAD_WAIT`` for a whole bad client, ``WAIT`` for one answer).
* Each bad client builds its bytes from the storm's seeded RNG and knows by
  construction what the server must answer: the replies in order (binary:
  type, request id, and the error code or answer; Postfix: the reply
  lines), and how the connection ends -- closed by the server (a frame with
  a bad length, a fatal Postfix request), open until the client half-closes
  (and then closed by the server), or, sealed, open and deaf.  Anything
  else, more or less, is a failure, named with the seeds.  Random garbage,
  which no one constructed, is read by the reference decoder
  (acl/wire/binary.py, sans-IO) to know the frames in it.
* What the server counts (``acl_protocol_errors_total``) is added up in
  ``Storm.errors`` from the bytes sent -- counted whether or not the client
  read the reply.
* Bad clients never ask ``echo-stream`` or ``cpsd`` and take leases only of
  ``bad-leases``: their leases and cps counts must not change the answers
  the good clients (isolation_good.py) check.  On the admin socket they send
  every command but ``reload`` (the test's reloader owns the policy files).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from acl.model import Reason, Request, Verdict
from acl.wire import binary as wb

from .isolation_policy import BAD_SAFE_REQUESTS, POSTFIX_CLIENTS, Oracle, postfix_request

WAIT = 15.0                 # one answer (a flood can hold a new connection for seconds)
BAD_WAIT = 30.0             # one bad client, in all
NEVER_READ_CAP = 64 << 20   # a never-reading client gives up sending here: never stopped
PF_PREFIX = b"action=DEFER_IF_PERMIT acl: bad policy request: "


@dataclass
class Storm:
    """What the bad clients of one test share."""

    oracle: Oracle
    query: str
    policy: str
    admin: str
    metrics_port: int
    seed: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)
    #: (protocol, code) -> errors the bad clients' bytes make the server count
    errors: collections.Counter = field(default_factory=collections.Counter)
    #: bad client kind -> how many ran
    kinds: collections.Counter = field(default_factory=collections.Counter)
    #: (protocol, bytes) each never-reading client sent before the server stopped reading
    never_read_bytes: list[tuple[str, int]] = field(default_factory=list)

    def fail(self, who: str, what: str) -> None:
        self.failures.append(f"{who} (seed {self.seed}): {what}")


# -- raw sockets on the loop ------------------------------------------------------
async def open_raw(path: str | tuple) -> socket.socket:
    """A connection to a Unix socket, or to a loopback (host, port)."""
    s = socket.socket(socket.AF_INET if isinstance(path, tuple) else socket.AF_UNIX,
                      socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, path), WAIT)
    except BaseException:
        s.close()
        raise
    return s


class Receiver:
    """Reads one socket in a task until EOF (or reset): the bytes, and when
    the end came."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.ended_at: float | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.ended_at = time.monotonic()
                return
            self.data += chunk

    async def ended(self, within: float) -> bool:
        """Whether the connection ended within ``within`` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), within)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        self.task.cancel()


async def send(sock: socket.socket, blob: bytes, rng: random.Random, how: str) -> bool:
    """``blob`` whole, in random chunks, or byte by byte with pauses (the
    first 300 bytes; a slow client must not outlast the test); False when
    the server closed the connection before it was all sent."""
    loop = asyncio.get_running_loop()
    pos = 0
    try:
        while pos < len(blob):
            if how == "whole":
                n = len(blob)
            elif how == "slow" and pos < 300:
                n = 1
            else:
                n = rng.randrange(1, 4097)
            await asyncio.wait_for(loop.sock_sendall(sock, blob[pos:pos + n]), WAIT)
            pos += n
            if how == "slow" and pos < 300:
                await asyncio.sleep(rng.uniform(0.001, 0.008))
            elif how == "chunks" and rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0, 0.005))
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


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


async def finish(storm: Storm, who: str, sock: socket.socket, rx: Receiver, ending: str,
                 quiet: float = 0.3) -> None:
    """End a connection the way ``ending`` says the server treats it:
    "closed" -- it closes by itself; "open" -- it stays open until we
    half-close, then closes; "deaf" -- the same, and nothing more comes."""
    if ending == "closed":
        if not await rx.ended(WAIT):
            storm.fail(who, "the server did not close the connection")
        return
    if await rx.ended(quiet):
        storm.fail(who, f"the server closed a connection it must keep ({ending})")
        return
    sock.shutdown(socket.SHUT_WR)
    if not await rx.ended(WAIT):
        storm.fail(who, "no close after our half-close")


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


async def pump(storm: Storm, who: str, sock: socket.socket, batch) -> tuple[int, list]:
    """Send what ``batch()`` makes (a list of (bytes, what it asks)) and read
    nothing, until the server stops taking bytes (none for 0.5 s: it stopped
    reading).  The bytes sent and every item made; a failure when the
    server takes ``NEVER_READ_CAP`` bytes (it never stopped)."""
    made: list = []
    sent, pending, stuck_since = 0, b"", None
    while sent < NEVER_READ_CAP:
        if not pending:
            more = batch(len(made))
            made += more
            pending = b"".join(blob for blob, _ in more)
        try:
            m = sock.send(pending)
        except BlockingIOError:
            now = time.monotonic()
            stuck_since = stuck_since or now
            if now - stuck_since > 0.5:
                break
            await asyncio.sleep(0.01)
            continue
        stuck_since = None
        sent += m
        pending = pending[m:]
    else:
        storm.fail(who, f"the server read {sent} bytes of a client that never reads")
    return sent, made


async def drain(storm: Storm, who: str, sock: socket.socket, sent: int, made: list) -> tuple:
    """Now read: finish the item the last send cut, half-close, read to the
    end.  What the items sent whole (and the one finished) ask, and the
    replies' bytes."""
    rx = Receiver(sock)
    pos, asked = 0, []
    for blob, what in made:
        if pos + len(blob) > sent:
            if sent > pos:
                await send(sock, blob[sent - pos:], random.Random(0), "whole")
                asked.append(what)
            break
        pos += len(blob)
        asked.append(what)
    sock.shutdown(socket.SHUT_WR)
    if not await rx.ended(WAIT):
        storm.fail(who, "no close after our half-close")
    return asked, bytes(rx.data)


async def read_replies(sock: socket.socket, n: int) -> list:
    """The next ``n`` reply frames (no more bytes than they take are expected)."""
    loop = asyncio.get_running_loop()
    dec, got = wb.ReplyDecoder(), []
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT)
        if not chunk:
            raise ConnectionError("closed")
        got += dec.feed(chunk)
    return got


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


# -- the Postfix door ----------------------------------------------------------------
#: A request with one defect each (constructor, the reply's reason): answered
#: DEFER_IF_PERMIT, and the connection goes on.
PF_BAD = {
    "noeq": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"no equals sign here",)),
             b"attribute line without '='"),
    "noname": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"=value",)),
               b"attribute line without '='"),
    "utf8": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"client_name=caf\xe9",)),
             b"client_name is not UTF-8\n\n"),
    "request": (lambda rng: postfix_request(rng, b"192.0.2.5", drop=b"request",
                                       add=(b"request=junk_policy",)),
                b"request='junk_policy' is not smtpd_access_policy\n\n"),
    "noaddr": (lambda rng: postfix_request(rng, b"", drop=b"client_address"),
               b"no usable client_address\n\n"),
    "badaddr": (lambda rng: postfix_request(rng, b"300.1.2.3"), b"no usable client_address\n\n"),
}


def pf_stream(rng: random.Random) -> tuple[bytes, list[tuple[str, object]], str]:
    """Good and bad requests, then an ending: nothing more, a line past 4096
    bytes or a 257th attribute line (answered, then closed), or a request
    with no empty line (never answered).  Its bytes, what each reply must
    be -- ("good", client) or ("bad", the reply's start after the prefix)
    -- and how the connection ends."""
    parts, wants = [], []
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.5:
            client = rng.choice(POSTFIX_CLIENTS)
            parts.append(postfix_request(rng, client.encode(), crlf=rng.random() < 0.2))
            wants.append(("good", client))
        else:
            make, why = PF_BAD[rng.choice(sorted(PF_BAD))]
            parts.append(make(rng))
            wants.append(("bad", why))
    end = rng.choice(["none", "long", "many", "partial"])
    if end == "long":
        line = b"sender=" + b"x" * rng.randrange(4090, 40000)
        parts.append(line + (b"\n" if rng.random() < 0.5 else b""))
        if len(line) > 4096:
            wants.append(("fatal", b"line too long\n\n"))
        else:
            end = "partial"
    elif end == "many":
        parts.append(b"".join(b"x_%d=1\n" % i for i in range(rng.randrange(257, 400))))
        wants.append(("fatal", b"too many attributes\n\n"))
    elif end == "partial":
        parts.append(postfix_request(rng, b"192.0.2.5")[:-1])
    return b"".join(parts), wants, "closed" if end in ("long", "many") else "open"


def pf_compare(storm: Storm, who: str, wants: list, data: bytes) -> None:
    replies = [r + b"\n\n" for r in data.split(b"\n\n")]
    if replies[-1] != b"\n\n":
        storm.fail(who, f"a reply not ended by an empty line: {replies[-1]!r}")
        return
    replies.pop()
    for i, ((kind, what), got) in enumerate(zip(wants, replies, strict=False)):
        if kind == "good":
            ok = got in storm.oracle.postfix_replies(what)
        else:
            ok = got.startswith(PF_PREFIX + what)
        if not ok:
            storm.fail(who, f"reply {i}: {got!r}, want {kind} {what!r}")
            return
    if len(replies) != len(wants):
        storm.fail(who, f"{len(replies)} replies, want {len(wants)}: {replies[len(wants):]!r}")


async def pf_bad(storm: Storm, rng: random.Random, who: str) -> None:
    blob, wants, ending = pf_stream(rng)
    how = rng.choice(["whole", "chunks", "slow"])
    who = f"{who} {how} {ending}"
    sock = await open_raw(storm.policy)
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, how)
        for kind, _what in wants:
            if kind != "good":
                storm.errors["postfix", 4 if kind == "fatal" else 3] += 1
        await finish(storm, who, sock, rx, ending)
        pf_compare(storm, who, wants, bytes(rx.data))


async def pf_vanish(storm: Storm, rng: random.Random, who: str) -> None:
    """Whole requests and part of one, then gone."""
    blob = b"".join(postfix_request(rng, rng.choice(POSTFIX_CLIENTS).encode())
                    for _ in range(rng.randrange(0, 5)))
    last = postfix_request(rng, b"192.0.2.5")
    sock = await open_raw(storm.policy)
    with sock:
        await send(sock, blob + last[:rng.randrange(1, len(last))], rng, "chunks")


async def pf_never_reads(storm: Storm, rng: random.Random, who: str) -> None:
    """The Postfix door's backpressure: requests until the server stops
    reading, then every whole one is answered, in order."""
    pool = [(postfix_request(rng, c.encode()), c) for c in POSTFIX_CLIENTS * 12]

    def batch(_n: int) -> list:
        return [rng.choice(pool) for _ in range(256)]

    sock = await open_raw(storm.policy)
    with sock:
        sent, made = await pump(storm, who, sock, batch)
        storm.never_read_bytes.append(("postfix", sent))
        if sent >= NEVER_READ_CAP:
            return
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        asked, data = await drain(storm, who, sock, sent, made)
    pf_compare(storm, who, [("good", c) for c in asked], data)

# -- the admin socket and the metrics address ----------------------------------------------
#: admin commands a bad client pipelines, and whether each is one (True) or
#: answered ``"cause": "command"`` (never ``reload``: the reloader's own)
ADMIN_WORDS = {b"stats": True, b"STATS": True, b"dump": True, b"Dump": True,
               b"bogus": False, b"stats extra": False, b"": False, b"reload now": False}


async def admin_pipeline(storm: Storm, rng: random.Random, who: str) -> None:
    """Thousands of commands in one write, nothing read for a while: every
    one answered, in order; or a line past 1024 bytes: closed, unanswered."""
    sock = await open_raw(storm.admin)
    with sock:
        if rng.random() < 0.2:
            await send(sock, b"stats" * rng.randrange(205, 1000), rng, "chunks")
            rx = Receiver(sock)
            if not await rx.ended(WAIT) or rx.data:
                storm.fail(who, f"a long line: {bytes(rx.data[:200])!r}, "
                                f"{'closed' if rx.ended_at else 'not closed'}")
            return
        words = sorted(ADMIN_WORDS)
        asked = [rng.choice(words) for _ in range(rng.randrange(100, 4000))]
        await send(sock, b"".join(w + b"\n" for w in asked), rng, "whole")
        await asyncio.sleep(rng.uniform(0, 1))
        rx = Receiver(sock)
        give_up = time.monotonic() + WAIT
        while rx.data.count(b"\n") < len(asked) and rx.ended_at is None:
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.02)
        rx.stop()
    lines = bytes(rx.data).split(b"\n")
    if len(lines) != len(asked) + 1 or lines[-1]:
        storm.fail(who, f"{len(lines) - 1} answers to {len(asked)} commands")
        return
    for i, (w, line) in enumerate(zip(asked, lines, strict=False)):
        got = json.loads(line)
        if got["ok"] is not ADMIN_WORDS[w] or (not got["ok"] and got.get("cause") != "command"):
            storm.fail(who, f"answer {i} to {w!r}: {line[:200]!r}")
            return


async def metrics_bad(storm: Storm, rng: random.Random, who: str) -> None:
    """Not a GET of /metrics: 404 and closed; a head past 8 KiB: closed."""
    kind = rng.choice(["path", "garbage", "huge"])
    blob = {"path": b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n",
            "garbage": rng.randbytes(rng.randrange(1, 200)).replace(b"\n", b"") + b"\n\n",
            "huge": b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * rng.randrange(8200, 20000)}[kind]
    sock = await open_raw(("127.0.0.1", storm.metrics_port))
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, rng.choice(["whole", "chunks"]))
        if not await rx.ended(WAIT):
            storm.fail(who, f"{kind}: not closed")
        want = b"" if kind == "huge" else b"HTTP/1.1 404 Not Found\r\n"
        if not bytes(rx.data).startswith(want) or (not want and rx.data):
            storm.fail(who, f"{kind}: {bytes(rx.data[:200])!r}")


#: bad client kind -> (coroutine, weight)
BAD = {
    "frames": (bad_frames, 6),
    "garbage": (bad_garbage, 6),
    "sealed": (bad_sealed, 2),
    "vanish": (bad_vanish, 3),
    "never_reads": (bad_never_reads, 2),
    "pf_bad": (pf_bad, 5),
    "pf_vanish": (pf_vanish, 2),
    "pf_never_reads": (pf_never_reads, 1),
    "admin_pipeline": (admin_pipeline, 1),
    "metrics_bad": (metrics_bad, 1),
}


async def bad_clients(storm: Storm, rng: random.Random, at_once: int, at_most: int) -> None:
    """Bad clients, ``at_once`` running, until the storm ends (at most
    ``at_most`` in all): each kind once, then drawn by weight; each within
    ``BAD_WAIT`` seconds."""
    names = sorted(BAD)
    weights = [BAD[k][1] for k in names]
    running: set[asyncio.Task] = set()
    started = 0

    async def one(kind: str, seed: int, i: int) -> None:
        who = f"bad {kind} #{i} (client seed {seed})"
        try:
            await asyncio.wait_for(BAD[kind][0](storm, random.Random(seed), who), BAD_WAIT)
        except Exception as exc:        # noqa: BLE001  (whatever broke is the finding)
            storm.fail(who, f"{type(exc).__name__}: {exc}")

    first = rng.sample(names, len(names))      # every kind once, then by weight
    while not storm.ended.is_set() and started < at_most:
        while len(running) < at_once and started < at_most:
            kind = first[-1] if first else rng.choices(names, weights)[0]
            if kind.endswith("never_reads") and any(
                    t.get_name().endswith("never_reads") for t in running):
                break               # one at a time: each makes the server hold 1 MiB
            if first:
                first.pop()
            storm.kinds[kind] += 1
            t = asyncio.ensure_future(one(kind, rng.getrandbits(32), started))
            t.set_name(kind)
            running.add(t)
            started += 1
        done, running = await asyncio.wait(running, timeout=0.05,
                                           return_when=asyncio.FIRST_COMPLETED)
        running = set(running)
    if running:
        await asyncio.wait(running, timeout=BAD_WAIT + 5)


# -- the flood ---------------------------------------------------------------------
async def flood(storm: Storm, n: int, emfile_seen, hold: float = 0.5) -> int:
    """``n`` connections at once (a quarter to the Postfix door), more than
    the server has descriptors for; once it says it ran out (``emfile_seen``),
    each asks one question and must be answered -- the ones waiting in the
    backlog as soon as answered ones close.  How many connected."""
    socks = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            postfix = i % 4 == 3
            s.connect(storm.policy if postfix else storm.query)
            socks.append((s, postfix))
        give_up = time.monotonic() + WAIT
        while not await emfile_seen():
            if time.monotonic() > give_up:
                storm.fail("flood", f"{n} connections: the server never ran out of descriptors")
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(hold)
        waiting = {}
        for i, (s, postfix) in enumerate(socks):
            msg = (postfix_request(random.Random(i), b"127.0.0.1") if postfix
                   else wb.encode_ping(i + 1))
            await loop.sock_sendall(s, msg)
            waiting[s] = (postfix, i + 1, bytearray())
        give_up = time.monotonic() + 3 * WAIT
        while waiting and time.monotonic() < give_up:
            for s in list(waiting):
                postfix, rid, got = waiting[s]
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                got += chunk
                done = got.endswith(b"\n\n") if postfix else len(got) >= 13
                if done or not chunk:
                    if postfix:
                        ok = bytes(got) in storm.oracle.postfix_replies("127.0.0.1")
                    else:
                        reps = wb.ReplyDecoder().feed(bytes(got))
                        ok = [(r.type, r.request_id) for r in reps] == [(wb.T_PONG, rid)]
                    if not ok:
                        storm.fail("flood", f"connection {rid}: {bytes(got)!r}")
                    del waiting[s]
                    s.close()
            await asyncio.sleep(0.02)
        if waiting:
            storm.fail("flood", f"{len(waiting)} of {n} connections never answered")
        return len(socks)
    finally:
        for s, _ in socks:
            s.close()
