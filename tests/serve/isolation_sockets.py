"""What every bad client of the mixed isolation test (test_isolation_mixed.py)
stands on: the storm they share, raw sockets on the loop, and the ways a
connection must end.

Rules of this file:

* Everything runs on the test process's asyncio loop and never blocks it:
  raw non-blocking sockets through ``loop.sock_*``, every wait bounded
  (``BAD_WAIT`` for a whole bad client, ``WAIT`` for one answer).
* A failure is a line in ``Storm.failures`` naming the storm's seed (and,
  by the caller, the client's own): the test reports them all at the end.
* What the server counts (``acl_protocol_errors_total``) is added up in
  ``Storm.errors`` from the bytes sent -- counted whether or not the client
  read the reply.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import time
from dataclasses import dataclass, field

from acl.wire import binary as wb

from .isolation_policy import Oracle

WAIT = 15.0                 # one answer (a flood can hold a new connection for seconds)
BAD_WAIT = 30.0             # one bad client, in all
NEVER_READ_CAP = 64 << 20   # a never-reading client gives up sending here: never stopped


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
