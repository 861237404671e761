"""One client connection per protocol: binary, Postfix text, admin.

Rules of this file (docs/protocol.md; ARCHITECTURE.md "Front doors"):

* Everything read at once is answered at once, in request order, in one
  write.  Binary frames go first through the compiled batch plan
  (``engine.plan.run``), which stops at any frame it cannot answer; that one
  frame is decoded and decided in Python and the plan resumes after it.
* Backpressure: when the transport's write buffer passes ``HIGH_WATER`` the
  connection stops reading (``pause_reading``) until the client drains it.
  What a client can make the server hold is therefore bounded by one
  read, one partial frame (< 64 KiB, enforced by the codec) and the write
  buffer -- a client that never reads stops being read.
* Leases belong to the connection that took them: RELEASE of a lease taken
  elsewhere answers "no such lease"; closing the connection releases every
  lease it still holds.
* A frame the codec calls fatal (bad length) gets an ERROR frame and the
  connection is closed; any other bad frame gets an ERROR reply and the
  connection goes on.  Other clients never notice.
* A decision too large to send (acl/wire/binary.py ``MAX_DECISION_FRAME``)
  is answered ERROR 6 with the request's id, any lease it took is given
  back, and the connection goes on; the batch plan leaves every decision
  over 64 KiB to this path (acl/fastpath.py), so both agree.
* Admin connections are accepted only from the uids/gids the policy names,
  checked with ``SO_PEERCRED``; a command is one line, the answer one JSON
  line.  A connection's commands run one after another, in the order they
  came, so answers come back in command order (a ``reload`` is slower than
  a ``stats`` sent after it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import struct
import time

from acl.wire import binary as wb
from acl.wire import postfix as wp

HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18
ADMIN_MAX_LINE = 1024


class _Base(asyncio.Protocol):
    protocol = ""

    def __init__(self, server) -> None:
        self.server = server
        self.engine = server.engine
        self.transport = None
        self._paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.server.connected(self)

    def connection_lost(self, exc) -> None:
        self.server.disconnected(self)

    # write side full: stop reading until it drains
    def pause_writing(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def error(self, code: int) -> None:
        self.server.protocol_error(self.protocol, code)


def answer_frames(engine, buf: bytearray, now: float, leases: set, compiled: bool,
                  on_error=None) -> tuple[list[bytes], bool]:
    """Answer every complete frame in ``buf`` (consumed from it): the reply
    chunks in request order, and whether the connection must close."""
    out: list[bytes] = []
    pos = 0
    plan = engine.plan
    while True:
        if plan is not None:
            pos, chunk, status = plan.run(buf, pos, now)
            if chunk:
                out.append(chunk)
            if status == 0:
                break
            if status == 2:
                continue
        event, pos = wb.next_event(buf, pos)
        if event is None:
            break
        kind = type(event)
        if kind is wb.Decide:
            d = engine.decide(event.request, now)
            try:
                reply = wb.encode_decision(event.request_id, d)
            except ValueError as exc:        # the decision cannot be sent
                if d.lease:
                    engine.release(d.lease)  # nobody would ever know its id
                if on_error is not None:
                    on_error(wb.E_DECISION_SIZE)
                out.append(wb.encode_error(event.request_id, wb.E_DECISION_SIZE,
                                           f"{wb.ERROR_TEXT[wb.E_DECISION_SIZE]}: {exc}"))
                continue
            if d.lease:
                leases.add(d.lease)
            out.append(reply)
        elif kind is wb.Release:
            ok = event.lease_id in leases and engine.release(event.lease_id)
            if ok:
                leases.discard(event.lease_id)
            out.append(wb.encode_released(event.request_id, ok))
        elif kind is wb.Ping:
            out.append(wb.encode_pong(event.request_id, compiled))
        else:
            if on_error is not None:
                on_error(event.code)
            out.append(wb.encode_error(event.request_id, event.code, event.text))
            if event.fatal:
                buf.clear()
                return out, True
    if pos:
        del buf[:pos]
    return out, False


class BinaryConnection(_Base):
    protocol = "binary"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.buf = bytearray()
        self.leases: set[int] = set()
        self.compiled = server.compiled

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.buf:
            # The common read: whole frames the plan answers all of -- no copy.
            plan = self.engine.plan
            if plan is not None:
                pos, chunk, status = plan.run(data, 0, now)
                if chunk:
                    self.transport.write(chunk)     # replies so far, in order
                if status == 0 and pos == len(data):
                    return
                data = data[pos:]
        self.buf += data
        out, fatal = answer_frames(self.engine, self.buf, now, self.leases,
                                   self.compiled, self.error)
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if fatal:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        for lease in self.leases:
            self.engine.release(lease)
        self.leases.clear()
        super().connection_lost(exc)


class PostfixConnection(_Base):
    protocol = "postfix"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.decoder = wp.PostfixDecoder(server.policy_service)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        out = []
        close = False
        for item in self.decoder.feed(data):
            if isinstance(item, wp.BadRequest):
                self.error(item.code)
                out.append(wp.encode_error(item))
                close = close or item.fatal
            else:
                out.append(wp.encode(self.engine.decide(item, now)))
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


def peer_credentials(sock) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class AdminConnection(_Base):
    protocol = "admin"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.buf = bytearray()
        self.allowed = False
        self._lines: collections.deque[str] = collections.deque()   # not yet answered
        self._worker: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        try:
            _pid, uid, gid = peer_credentials(sock)
        except OSError:
            uid = gid = -1
        self.allowed = self.server.admin_allowed(uid, gid)
        if not self.allowed:
            transport.write(json.dumps({"ok": False, "error": f"uid {uid} gid {gid} "
                                        "is not allowed on the admin socket"}).encode() + b"\n")
            transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.allowed:
            return
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > ADMIN_MAX_LINE:
                    self.transport.close()
                return
            line = bytes(self.buf[:nl]).decode("utf-8", "replace").strip()
            del self.buf[:nl + 1]
            self._lines.append(line)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.ensure_future(self._answer_in_order())

    async def _answer_in_order(self) -> None:
        while self._lines:
            line = self._lines.popleft()
            try:
                reply = await self.server.admin_command(line)
            except Exception as exc:          # the admin gets the message, the server goes on
                reply = {"ok": False, "error": str(exc)}
            if not self.transport.is_closing():
                self.transport.write(json.dumps(reply, sort_keys=True).encode() + b"\n")


class MetricsConnection(_Base):
    """GET /metrics, one request per connection (Prometheus text format)."""

    protocol = "metrics"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > 8192:
                self.transport.close()
            return
        first = bytes(self.buf.split(b"\n", 1)[0]).decode("latin-1").split()
        if len(first) >= 2 and first[0] in ("GET", "HEAD") and first[1].split("?")[0] == "/metrics":
            body, ctype = self.server.metrics_body()
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            self.transport.write(head + (body if first[0] == "GET" else b""))
        else:
            body = b"acl: only /metrics is served here\n"
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                                 + body)
        self.transport.close()
