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
* Sealing (DECIDE flag SEAL; acl-wrap sets it with LEASE, because the
  connection then crosses exec into the server and everything it forks):
  once that DECIDE is answered the connection is *sealed* for good.  It
  acts on RELEASE frames only (the leases it holds, as before); every other
  frame -- DECIDE, PING, a bad frame -- is answered ERROR 8 and not acted
  on, and the connection stays open: closing it would end the lease, and
  whoever inherited the descriptor must not be able to end it with garbage.
  A frame with a bad length (fatal elsewhere) gets one ERROR 8; after it
  the stream cannot be framed, so the connection reads and drops everything
  until it is closed ("deaf"), still holding its leases.  A sealed
  connection never reaches the batch plan.  Its replies are bounded like
  any connection's: by backpressure (below), never by dropping replies --
  every frame still gets exactly one, in order.
* Leases kept across a restart (``[run] keep_leases``,
  acl/serve/leasestore.py): a connection's first lease puts it in
  systemd's fd store (``kept``: its number there) and every lease it takes
  or gives back, and its sealing, is written in the journal -- before the
  reply is written, so no client hears of a lease a crash could lose.  It
  leaves the store when it ends.  A connection adopted at start begins in
  the state it had, holding its leases.  Without the store none of this
  runs (``on_lease``/``on_release`` are None).
* Client names (acl/names.py): before a request is decided in Python, the
  engine says which uncached names its decision would read.  The
  connection then stops where it is -- replies so far are written, reading
  pauses, the request and everything after it wait -- until the server has
  looked them up in a worker thread, and goes on in order, deciding with the
  answers fetched (``NameService.answers``: read before the cache, so a ttl
  of 0, an eviction or a reload cannot lose them; never a lookup on the
  loop).  Other connections are answered meanwhile.  After ``CONN_NAME_ROUNDS``
  rounds for one request it is decided anyway.
* A decision too large to send (acl/wire/binary.py ``MAX_DECISION_FRAME``)
  is answered ERROR 6 with the request's id, any lease it took is given
  back, and the connection goes on; the batch plan leaves every decision
  over 64 KiB to this path (acl/fastpath.py), so both agree.
* Postfix requests (acl/wire/postfix.py) are decided through the server's
  session memory (acl/serve/sessions.py): the first request of an SMTP
  session is counted for cps and rate, its later ones are not.  The service
  of a request without ``service`` is the running policy's
  ``policy_service``, read before each read (a reload may change it).
* Admin connections are accepted only from the uids/gids the policy names,
  checked with ``SO_PEERCRED``; a command is one line, the answer one JSON
  line.  A connection's commands run one after another, in the order they
  came, so answers come back in command order (a ``reload`` is slower than
  a ``stats`` sent after it) -- one command a turn of the loop, so that
  other clients are answered between them, and none while the answers wait
  past ``HIGH_WATER`` (reading stops too), and reading stops while more
  than ``ADMIN_MAX_BACKLOG`` bytes of commands wait to run: what an admin
  client that sends commands and reads nothing makes the server hold is
  bounded like any client's.  Commands still waiting when the connection closes are dropped
  (the one running finishes: a ``reload`` is not undone) -- and so is a
  command whose client has closed its end (``peer_gone``) before it runs,
  though its bytes were read: a client that gave up while its connection
  waited in the listen backlog (``acl reload`` timed out: exit 111, "no
  answer") must not have its reload run later, unseen.  A client that only
  shut down its writing half (``echo stats | socat - UNIX:...``) is still
  there: the connection stays open for writing (``eof_received``), every
  command it sent runs and is answered -- a last line without its newline
  too -- and then the server closes it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import select
import socket
import struct
import time

from acl.wire import binary as wb
from acl.wire import postfix as wp

HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18
ADMIN_MAX_LINE = 1024
ADMIN_MAX_BACKLOG = 64 * ADMIN_MAX_LINE   # admin bytes read and not yet run
CONN_NAME_ROUNDS = 3    # rounds one request waits here (server.NAME_ROUNDS: per lookup)
METRICS_IDLE = 10.0          # seconds a metrics connection may take to ask


def peer_gone(fd: int) -> bool:
    """Whether the client of the Unix stream socket ``fd`` has closed its end
    (POLLHUP: both directions shut; a half-close is only POLLRDHUP), or the
    socket failed."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
               for _, ev in p.poll(0))


class _Base(asyncio.Protocol):
    protocol = ""

    def __init__(self, server) -> None:
        self.server = server
        self.engine = server.engine
        self.transport = None
        self._paused = False
        self._waiting = False           # for names: reading paused, input held
        self._stopped = False           # stopping: never read again
        self._rounds = 0
        # answers fetched so far for the request being decided: the next
        # round's lookups are given them (a hung name is waited for once)
        self._fetched: dict = {}

    def names_wanted(self, request, now: float):
        """The names to look up before ``request`` is decided, or None."""
        wanted = None
        if self._rounds < CONN_NAME_ROUNDS:
            wanted = self.engine.name_lookups(request, now) or None
        if wanted is None:              # decided now: the next request starts afresh
            self._rounds = 0
            self._fetched = {}
        else:
            self._rounds += 1
        return wanted

    @property
    def waiting_for_names(self) -> bool:
        """A request held until its name lookups answer (reading paused)."""
        return self._waiting

    def wait_for_names(self, wanted) -> None:
        self._waiting = True
        self.transport.pause_reading()
        self.server.look_up_names(wanted, self._fetched).add_done_callback(self._names_ready)

    def _names_ready(self, fut) -> None:
        self._waiting = False
        if not fut.cancelled() and fut.exception() is None:
            self._fetched = fut.result()
        if self.transport.is_closing():
            return
        if not self._paused and not self._stopped:
            self.transport.resume_reading()
        with self.engine.with_fetched(fut):     # what was fetched for this request
            self.go_on(time.time())

    def go_on(self, now: float) -> None:
        """Answer what is held (subclasses)."""

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
        if not self.transport.is_closing() and not self._waiting and not self._stopped:
            self.transport.resume_reading()

    def stop_reading(self) -> None:
        """For good (a stop hands the connection over: leasestore.py)."""
        self._stopped = True
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def error(self, code: int) -> None:
        self.server.protocol_error(self.protocol, code)


SEALED, DEAF = 1, 2           # BinaryConnection.sealed, after 0 (open)


def _release(engine, leases: set, event, on_release=None) -> bytes:
    """RELEASED for ``event``: only a lease this connection holds is given back."""
    ok = event.lease_id in leases and engine.release(event.lease_id)
    if ok:
        leases.discard(event.lease_id)
        if on_release is not None:
            on_release(event.lease_id)
    return wb.encode_released(event.request_id, ok)


def answer_frames(engine, buf: bytearray, now: float, leases: set, compiled: bool,
                  on_error=None, names_wanted=None, sealed: int = 0,
                  on_seal=None, on_lease=None,
                  on_release=None) -> tuple[list[bytes], bool, list | None]:
    """Answer every complete frame in ``buf`` (consumed from it): the reply
    chunks in request order, whether the connection must close, and the
    names to look up before the first frame left in ``buf`` (``names_wanted(request,
    now)`` says; None when all were answered).  ``sealed`` is the
    connection's state (0, SEALED, DEAF: the module rules); ``on_seal(state)``
    hears when it changes -- the frames after the change, in the same
    ``buf``, are already answered the sealed way.  ``on_lease(id, request,
    state)`` hears of each lease taken (``state``: the connection's, as of
    its reply) and ``on_release(id)`` of each given back by RELEASE, both
    before any reply is written."""
    out: list[bytes] = []
    pos = 0
    plan = engine.plan
    while True:
        if sealed:
            if sealed == DEAF:
                pos = len(buf)
                break
            event, pos = wb.next_event(buf, pos)
            if event is None:
                break
            if type(event) is wb.Release:
                out.append(_release(engine, leases, event, on_release))
                continue
            if on_error is not None:
                on_error(wb.E_SEALED)
            out.append(wb.encode_error(event.request_id, wb.E_SEALED, "connection sealed"))
            if isinstance(event, wb.BadFrame) and event.fatal:
                sealed = DEAF
                if on_seal is not None:
                    on_seal(DEAF)
            continue
        if plan is not None:
            pos, chunk, status = plan.run(buf, pos, now)
            if chunk:
                out.append(chunk)
            if status == 0:
                break
            if status == 2:
                continue
        start = pos
        event, pos = wb.next_event(buf, pos)
        if event is None:
            break
        kind = type(event)
        if kind is wb.Decide:
            wanted = names_wanted(event.request, now) if names_wanted is not None else None
            if wanted:
                del buf[:start]
                return out, False, wanted
            d = engine.decide(event.request, now)
            try:
                reply = wb.encode_decision(event.request_id, d, event.names)
            except (wb.TooLarge, UnicodeEncodeError) as exc:   # cannot be sent
                if d.lease:
                    engine.release(d.lease)  # nobody would ever know its id
                code = (wb.E_DECISION_SIZE if isinstance(exc, wb.TooLarge)
                        else wb.E_DECISION_ENCODING)
                if on_error is not None:
                    on_error(code)
                out.append(wb.encode_error(event.request_id, code,
                                           f"{wb.ERROR_TEXT[code]}: {exc}"))
            else:
                if d.lease:
                    leases.add(d.lease)
                    if on_lease is not None:
                        on_lease(d.lease, event.request, SEALED if event.seal else 0)
                out.append(reply)
            if event.seal:          # answered, either way: sealed from the next frame on
                sealed = SEALED
                if on_seal is not None:
                    on_seal(SEALED)
        elif kind is wb.Release:
            out.append(_release(engine, leases, event, on_release))
        elif kind is wb.Ping:
            out.append(wb.encode_pong(event.request_id, compiled))
        else:
            if on_error is not None:
                on_error(event.code)
            out.append(wb.encode_error(event.request_id, event.code, event.text))
            if event.fatal:
                buf.clear()
                return out, True, None
    if pos:
        del buf[:pos]
    return out, False, None


class BinaryConnection(_Base):
    protocol = "binary"

    def __init__(self, server, adopted=None) -> None:
        super().__init__(server)
        self.buf = bytearray()
        self.leases: set[int] = set()
        self.compiled = server.compiled
        self.sealed = 0                 # SEALED, DEAF: the module rules
        self.kept = 0                   # its number in the lease store; 0: not kept
        self.store = server.lease_store     # None: off
        self._on_lease = self._on_release = None
        if self.store is not None:
            self._on_lease, self._on_release = self._leased, self.store.released
        if adopted is not None:         # leasestore.Adopted, counted again already
            self.kept, self.sealed = adopted.number, adopted.state
            self.leases = set(adopted.leases)

    def _seal(self, state: int) -> None:
        self.sealed = state
        if self.kept:
            self.store.set_state(self.kept, state)

    def _leased(self, lease: int, request, state: int) -> None:
        """A lease taken: into the store's journal (the connection into the
        store at its first)."""
        if not self.kept:
            sock = self.transport.get_extra_info("socket")
            if sock is not None and self.store.keep(lease, sock.fileno(), state or self.sealed):
                self.kept = lease
        self.store.add_lease(self.kept, lease, request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self._waiting:               # read before the pause took hold: hold it
            self.buf += data
            return
        if self.sealed == DEAF:         # unframeable: drop, keep the leases
            return
        if not self.buf and not self.sealed:   # a sealed connection never reaches the plan
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
        self.go_on(now)

    def go_on(self, now: float) -> None:
        out, fatal, wanted = answer_frames(self.engine, self.buf, now, self.leases,
                                           self.compiled, self.error, self.names_wanted,
                                           self.sealed, self._seal, self._on_lease,
                                           self._on_release)
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if fatal:
            self.transport.close()
        elif wanted:
            self.wait_for_names(wanted)

    def connection_lost(self, exc) -> None:
        if self.kept and not self.store.frozen:
            self.store.forget(self.kept)
        for lease in self.leases:
            self.engine.release(lease)
        self.leases.clear()
        super().connection_lost(exc)

    def not_handed_over(self) -> str:
        """Stopping, reading stopped: why the connection cannot be left to
        the store as it is, or "" -- everything read is answered (no part
        of a frame held, no name awaited) and it is not closing.  One that
        acl is closing (after a frame with a bad length) is not: systemd's
        copy would keep it open past that close."""
        if self._waiting:
            return "waiting for a name lookup"
        if self.buf and self.sealed != DEAF:
            return "holding part of a frame"
        if self.transport.is_closing():
            return "being closed already"
        return ""


class PostfixConnection(_Base):
    protocol = "postfix"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.decoder = wp.PostfixDecoder(server.policy_service)
        self.held: collections.deque = collections.deque()   # decoded, not yet answered

    def data_received(self, data: bytes) -> None:
        self.decoder.default_service = self.server.policy_service   # a reload may change it
        self.held.extend(self.decoder.feed(data))
        if not self._waiting:
            self.go_on(time.time())

    def go_on(self, now: float) -> None:
        out = []
        close = False
        wanted = None
        held = self.held
        while held and not close:
            item = held[0]
            if isinstance(item, wp.BadRequest):
                self.error(item.code)
                out.append(wp.encode_error(item))
                close = item.fatal
            else:
                wanted = self.names_wanted(item.request, now)
                if wanted:
                    break
                # one SMTP session counts once for cps and rate (acl/serve/sessions.py)
                out.append(wp.encode(self.server.postfix_sessions.decide(self.engine, item, now)))
            held.popleft()
        if out:
            self.transport.write(b"".join(out))
        if close:
            held.clear()
            self.transport.close()
        elif wanted:
            self.wait_for_names(wanted)


def peer_credentials(sock) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class AdminConnection(_Base):
    protocol = "admin"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.buf = bytearray()
        self.allowed = False
        self._fd = -1
        self._backlog = False           # reading paused: too many commands not yet run
        self._eof = False               # the client shut its writing half: close when answered
        self._worker: asyncio.Future | None = None
        # cleared while the write buffer is past HIGH_WATER: the next command waits
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno()
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
        # the line being read (after the last newline) is bounded ...
        if len(self.buf) - self.buf.rfind(b"\n") - 1 > ADMIN_MAX_LINE:
            self.transport.close()
            return
        # ... and so are the commands not yet run: kept as the bytes they came
        # in (a line a command, split when it runs), reading paused past
        # ADMIN_MAX_BACKLOG -- short commands answered one a turn would
        # otherwise pile up faster than any write buffer fills
        if len(self.buf) > ADMIN_MAX_BACKLOG and not self._backlog:
            self._backlog = True
            self.transport.pause_reading()
        if b"\n" in self.buf and (self._worker is None or self._worker.done()):
            self._worker = asyncio.ensure_future(self._answer_in_order())

    def eof_received(self) -> bool:
        """The client sent all it will: answer what it sent, then close
        (True keeps the transport open for the answers)."""
        if not self.allowed:
            return False
        self._eof = True
        if self.buf and not self.buf.endswith(b"\n"):
            self.buf += b"\n"              # a last command without its newline
        if self._worker is not None and not self._worker.done():
            return True                    # the running worker closes when done
        if b"\n" not in self.buf:
            return False                   # nothing to answer: closed now
        self._worker = asyncio.ensure_future(self._answer_in_order())
        return True

    def _client_gone(self) -> bool:
        """Whether nobody can read an answer any more: the connection is
        closing, or its client closed both directions (``peer_gone``; while
        the transport is open its descriptor is still this connection's)."""
        return self.transport.is_closing() or peer_gone(self._fd)

    def _next_line(self) -> str | None:
        nl = self.buf.find(b"\n")
        if nl < 0:
            return None
        line = bytes(self.buf[:nl]).decode("utf-8", "replace").strip()
        del self.buf[:nl + 1]
        if self._backlog and len(self.buf) <= ADMIN_MAX_BACKLOG // 2:
            self._backlog = False
            if not (self._paused or self._waiting or self._stopped):
                self.transport.resume_reading()
        return line

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writable.clear()

    def resume_writing(self) -> None:
        self._paused = False
        if not (self.transport.is_closing() or self._backlog or self._waiting
                or self._stopped):
            self.transport.resume_reading()
        self._writable.set()

    def connection_lost(self, exc) -> None:
        self.buf.clear()                    # nobody reads their answers
        self._writable.set()                # a worker waiting to write: let it end
        super().connection_lost(exc)

    async def _answer_in_order(self) -> None:
        try:
            await self._answer_lines()
        finally:
            if self._eof and not self.transport.is_closing():
                self.transport.close()     # its client sent its last command

    async def _answer_lines(self) -> None:
        while b"\n" in self.buf:
            # answers nobody reads are not made: reading stopped with the
            # write buffer full (pause_writing), and so do the commands
            await self._writable.wait()
            line = self._next_line()
            if line is None:
                return
            if self._client_gone():           # the rules at the top of this file
                self.server.log(f"admin: {line[:40]!r} not run: its client had closed the "
                                "connection (gave up waiting?)")
                self.buf.clear()
                return
            try:
                reply = await self.server.admin_command(line)
            except Exception as exc:          # the admin gets the message, the server goes on
                reply = {"ok": False, "error": str(exc)}
            if not self.transport.is_closing():
                self.transport.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
            # one command a turn of the loop: ``stats`` and ``dump`` never
            # wait, and thousands of them sent in one write would hold up
            # every other client until the last was answered
            await asyncio.sleep(0)


def admin_refusal(exc: OSError) -> bytes:
    """The answer of an admin client acl cannot take for lack of descriptors
    (acl/serve/accept.py's rules): no ``cause``, so ``acl reload`` and ``acl
    query --admin`` exit 111, a temporary failure."""
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    error = (f"acl serve is out of descriptors ({code}: {exc.strerror}): it cannot take this "
             "admin connection now; try again when acl_accept_errors_total stops growing")
    return json.dumps({"ok": False, "error": error}).encode() + b"\n"


class MetricsConnection(_Base):
    """GET /metrics, one request per connection (Prometheus text format)."""

    protocol = "metrics"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.buf = bytearray()
        self._timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # any local user can reach this TCP port: one that connects and waits
        # must not hold a descriptor for long (Prometheus asks at once)
        self._timer = asyncio.get_running_loop().call_later(METRICS_IDLE, transport.abort)

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

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
