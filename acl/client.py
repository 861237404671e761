"""Clients of ``acl serve``'s binary protocol: blocking and asyncio.

    with Client("/run/acl/query.sock") as c:
        d = c.decide("sshd", "192.0.2.7")
        if not d.allowed: ...

Rules of this file (docs/protocol.md "Clients" says the same to users):

* One connection per client.  The client numbers its requests itself (u32,
  wrapping; a call's requests take consecutive ids); the server answers each
  request exactly once, in the order the requests arrived.  So every reply
  must answer the oldest request still unanswered (``_due``, one entry per
  call).  Any other reply -- an id nobody asked, a reply when nothing is
  asked, a reply of the wrong type -- is a ProtocolError, and the client is
  then *broken*: the connection is closed and every later call raises
  ConnectionError at once, saying why.  So is a connection the server
  closed, bytes that are not a reply frame, and ``close()``, which fails
  every call still waiting.
* Pipelining: a call's requests are written while its replies are read.  The
  server stops reading a connection whose unread replies pass 1 MiB, so a
  client that wrote a large batch before reading would wait for the server
  while the server waits for it.  The blocking client polls its
  non-blocking socket for both directions; the asyncio one reads in a task
  of its own.
* A batch is read to its end.  A request answered ERROR (say ERROR 6, a
  decision too large to send) does not lose the others: ``decide_many``
  releases the leases the others took, then raises BatchError, whose
  ``results`` are every request's Decision (its lease 0: released) or
  ServerError, in request order.  ``decide`` raises the ServerError.
* ``timeout`` (seconds, default 30; None waits for ever) is how long a call
  waits for the server to answer (the blocking client: or to take more of
  the batch).  A call that times out gives its requests up, but they stay
  asked: their replies are dropped when they come (an ERROR too, never
  blamed on a later call), and a lease one of them took is released (the
  asyncio client at once, the blocking one once a later call has read that
  reply and written whole frames -- or by closing).  The connection stays usable -- and keeps the client's leases --
  except when the blocking client timed out while *writing*: the server has
  stopped reading and half a request may be on the wire, so that
  connection is closed.  More than MAX_GIVEN_UP calls given up and still
  unanswered: the server is not answering at all, and the client breaks.
* Threads: a Client takes a lock around each call, so threads may share one
  (their calls take turns; for parallel asking, one client per thread).  An
  AsyncClient belongs to one event loop, and its tasks may overlap freely.
* A lease taken with ``lease=True`` lives as long as the client's connection
  (or until :meth:`release`): keep the client open as long as the connection
  you asked about.  Closing it -- or a broken client -- ends them all.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import select
import socket
import threading

from acl.errors import ProtocolError
from acl.model import Decision, Request
from acl.wire import binary as wb

_MASK = 0xFFFFFFFF
_RECV = 1 << 18
#: calls given up on (timed out, cancelled) whose replies are still due
MAX_GIVEN_UP = 4096


def make_request(service: str | Request, client: str | None = None, **kw) -> Request:
    if isinstance(service, Request):
        return service
    if client is None:
        raise TypeError("a client address is required")
    return Request(service, client, **kw)


class ServerError(ProtocolError):
    """acl serve answered one request with ERROR (docs/protocol.md, ERROR
    codes); the connection goes on."""

    def __init__(self, code: int, text: str, request_id: int) -> None:
        super().__init__(f"acl serve: error {code}: {text}")
        self.code = code
        self.text = text
        self.request_id = request_id


class BatchError(ProtocolError):
    """Requests of a ``decide_many`` batch were answered ERROR.

    ``results``: per request, in order, its Decision or its ServerError;
    ``errors``: the ServerErrors.  The leases the decisions took have been
    released (``released`` of them): their ``lease`` reads 0."""

    def __init__(self, results: list, released: int) -> None:
        self.results = results
        self.errors = [r for r in results if isinstance(r, ServerError)]
        self.released = released
        first = self.errors[0]
        super().__init__(f"{first} (request {results.index(first) + 1} of {len(results)}; "
                         f"{len(self.errors)} answered ERROR, {released} lease"
                         f"{'' if released == 1 else 's'} of the batch released)")


class _Batch:
    """The requests of one call, ids ``next_id`` on: which reply is due."""

    __slots__ = ("next_id", "left", "replies", "future")

    def __init__(self, first_id: int, n: int, future=None) -> None:
        self.next_id = first_id
        self.left = n                        # replies still to come
        self.replies: list | None = []      # None: given up, drop them
        self.future = future                 # AsyncClient: done when complete


class _Common:
    def _init_common(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._dec = wb.ReplyDecoder()
        self._next_id = 1
        self._due: collections.deque[_Batch] = collections.deque()
        self._given_up = 0                   # batches in _due whose replies are dropped
        self._late_leases: list[int] = []    # taken by requests given up: to release
        self._broken: str | None = None      # why this client cannot be used any more

    def _check(self) -> None:
        if self._broken is not None:
            raise ConnectionError(f"acl.client: connection closed: {self._broken}")

    def _take_ids(self, n: int) -> int:
        first = self._next_id
        self._next_id = (first + n) & _MASK
        return first

    def _route(self, rep: wb.Reply) -> None:
        """File one reply under the oldest unanswered request (the rules)."""
        if not self._due:
            raise ProtocolError(f"{_what(rep)} answers no request: none is waiting")
        b = self._due[0]
        if rep.request_id != b.next_id:
            raise ProtocolError(f"{_what(rep)} does not answer request {b.next_id}")
        b.next_id = (b.next_id + 1) & _MASK
        b.left -= 1
        if not b.left:
            self._due.popleft()
        if b.replies is None:
            self._drop(rep)
            if not b.left:
                self._given_up -= 1
            return
        b.replies.append(rep)
        if not b.left and b.future is not None and not b.future.done():
            b.future.set_result(None)

    def _drop(self, rep: wb.Reply) -> None:
        if rep.type == wb.T_DECISION and rep.decision.lease:
            self._late_leases.append(rep.decision.lease)

    def _give_up(self, b: _Batch) -> bool:
        """The caller stopped waiting for ``b``; False when too many have."""
        if b.replies is None or self._broken is not None:
            return True
        for rep in b.replies:
            self._drop(rep)
        b.replies = None
        b.future = None
        if b.left:
            self._given_up += 1
        return self._given_up <= MAX_GIVEN_UP

    def _releases(self) -> tuple[bytes, _Batch | None]:
        """RELEASE frames for the late leases, as a batch already given up."""
        if not self._late_leases:
            return b"", None
        leases, self._late_leases = self._late_leases, []
        first = self._take_ids(len(leases))
        b = _Batch(first, len(leases))
        b.replies = None
        self._given_up += 1
        return _release_frames(leases)(first), b

    @staticmethod
    def _answers(replies: list[wb.Reply], ftype: int) -> list:
        """Each reply of a call, or a ServerError for an ERROR reply."""
        out: list = []
        for rep in replies:
            if rep.type == ftype:
                out.append(rep)
            elif rep.type == wb.T_ERROR:
                out.append(ServerError(rep.code, rep.text, rep.request_id))
            else:
                raise ProtocolError(f"{_what(rep)} answers a request of type "
                                    f"{ftype & 0x7F:#x}")
        return out

    @staticmethod
    def _decisions(answers: list) -> tuple[list, list[int] | None]:
        """(decisions and errors, None -- or the leases to release when some
        request was answered ERROR)."""
        results = [a.decision if isinstance(a, wb.Reply) else a for a in answers]
        if not any(isinstance(r, ServerError) for r in results):
            return results, None
        return results, [r.lease for r in results if isinstance(r, Decision) and r.lease]

    @staticmethod
    def _batch_error(results: list, released: int) -> BatchError:
        return BatchError([dataclasses.replace(r, lease=0) if isinstance(r, Decision) and r.lease
                           else r for r in results], released)

    @staticmethod
    def _one(answers: list):
        (a,) = answers
        if isinstance(a, ServerError):
            raise a
        return a


def _what(rep: wb.Reply) -> str:
    if rep.type == wb.T_ERROR:
        return f"acl serve: error {rep.code}: {rep.text} (request {rep.request_id}), which"
    return f"reply {rep.type:#x}/{rep.request_id}"


def _decide_frames(requests: list[Request]):
    return lambda first: b"".join(wb.encode_decide((first + i) & _MASK, r)
                                  for i, r in enumerate(requests))


def _release_frames(leases: list[int]):
    return lambda first: b"".join(wb.encode_release((first + i) & _MASK, lease)
                                  for i, lease in enumerate(leases))


class Client(_Common):
    """Blocking client over a Unix socket; threads may share it (the rules)."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self._init_common(timeout)
        self._lock = threading.Lock()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._poll = select.poll()
        self._mask = select.POLLIN
        self._poll.register(sock, self._mask)

    def close(self) -> None:
        if self._broken is None:
            self._broken = "the client was closed"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)    # wakes a call waiting in another thread
        except OSError:
            pass
        with self._lock:
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _break(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
        self._sock.close()

    def _call(self, frames_of, n: int, ftype: int) -> list:
        """Send ``n`` requests (``frames_of(first_id)``), read their replies."""
        with self._lock:
            self._check()
            if not n:
                return []
            first = self._take_ids(n)
            data = frames_of(first)            # a request it cannot encode: nothing sent
            b = _Batch(first, n)
            self._due.append(b)
            self._exchange(data, b)
            try:
                return self._answers(b.replies, ftype)
            except ProtocolError as exc:
                self._break(str(exc))
                raise

    def _exchange(self, data: bytes, b: _Batch) -> None:
        sock, view, off, total = self._sock, memoryview(data), 0, len(data)
        try:
            while True:
                if off == total and self._late_leases:     # after a whole frame: release
                    view.release()
                    data, late = self._releases()
                    self._due.append(late)
                    view, off, total = memoryview(data), 0, len(data)
                if not b.left and off == total:
                    break
                if off < total:
                    try:
                        off += sock.send(view[off:])
                        moved = True
                    except BlockingIOError:
                        moved = False
                    if self._recv() or moved:
                        continue
                    self._wait(select.POLLIN | select.POLLOUT, off < total)
                else:
                    self._wait(select.POLLIN, False)
                    self._recv()
        except TimeoutError:
            if off < total:
                self._break(f"a call timed out after {self.timeout} s with its requests "
                            f"not all written")
            elif not self._give_up(b):
                self._break(f"more than {MAX_GIVEN_UP} calls timed out unanswered")
            raise
        except BaseException as exc:
            self._break(str(exc) or type(exc).__name__)
            raise
        finally:
            view.release()

    def _wait(self, mask: int, writing: bool) -> None:
        if mask != self._mask:
            self._poll.modify(self._sock, mask)
            self._mask = mask
        if not self._poll.poll(None if self.timeout is None else self.timeout * 1000):
            raise TimeoutError(f"acl serve did not {'read or ' if writing else ''}answer "
                               f"within {self.timeout} s")

    def _recv(self) -> bool:
        try:
            data = self._sock.recv(_RECV)
        except BlockingIOError:
            return False
        if not data:
            if self._broken is not None:
                raise ConnectionError(f"acl.client: {self._broken}")
            raise ConnectionError("acl serve closed the connection")
        for rep in self._dec.feed(data):
            self._route(rep)
        return True

    def decide(self, service: str | Request, client: str | None = None, **kw) -> Decision:
        try:
            return self.decide_many([make_request(service, client, **kw)])[0]
        except BatchError as exc:
            raise exc.errors[0] from None

    def decide_many(self, requests) -> list[Decision]:
        requests = list(requests)
        results, leases = self._decisions(self._call(_decide_frames(requests), len(requests),
                                                     wb.T_DECISION))
        if leases is not None:
            released = sum(a.released for a in self._call(_release_frames(leases), len(leases),
                                                           wb.T_RELEASED)
                           if isinstance(a, wb.Reply))
            raise self._batch_error(results, released)
        return results

    def release(self, lease_id: int) -> bool:
        return self._one(self._call(_release_frames([lease_id]), 1, wb.T_RELEASED)).released

    def ping(self) -> str:
        rep = self._one(self._call(lambda rid: wb.encode_ping(rid), 1, wb.T_PONG))
        return "compiled" if rep.core == 1 else "pure"


class AsyncClient(_Common):
    """asyncio client; requests from several tasks may overlap (pipelining)."""

    def __init__(self, reader, writer, timeout: float | None = 30.0) -> None:
        self._init_common(timeout)
        self._reader = reader
        self._writer = writer
        self._pump = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: str, timeout: float | None = 30.0) -> AsyncClient:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        return cls(reader, writer, timeout)

    async def close(self) -> None:
        self._break("the client was closed")
        self._pump.cancel()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _break(self, why: str, exc: BaseException | None = None) -> None:
        """Fail every call waiting (ProtocolError or ConnectionError, with
        ``why``), close the connection, refuse every later call."""
        if self._broken is None:
            self._broken = why
        kind = ProtocolError if isinstance(exc, ProtocolError) else ConnectionError
        for b in self._due:
            if b.future is not None and not b.future.done():
                b.future.set_exception(kind(f"acl.client: {why}"))
        self._due.clear()
        self._writer.close()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(_RECV)
                if not data:
                    raise ConnectionError("acl serve closed the connection")
                for rep in self._dec.feed(data):
                    self._route(rep)
                self._send_releases()
        except asyncio.CancelledError:
            self._break("the client was closed")
            raise
        except Exception as exc:               # the server is not usable: say why to all
            self._break(str(exc) or type(exc).__name__, exc)

    def _send_releases(self) -> None:
        more, late = self._releases()
        if late is not None and self._broken is None:
            self._due.append(late)
            self._writer.write(more)

    async def _call(self, frames_of, n: int, ftype: int) -> list:
        self._check()
        if not n:
            return []
        first = self._take_ids(n)
        data = frames_of(first)                # a request it cannot encode: nothing sent
        b = _Batch(first, n, asyncio.get_running_loop().create_future())
        self._due.append(b)
        self._writer.write(data)
        fut = b.future
        try:
            seen = -1
            while not fut.done():
                if len(b.replies) == seen:
                    raise TimeoutError(f"acl serve did not answer within {self.timeout} s")
                seen = len(b.replies)
                await asyncio.wait((fut,), timeout=self.timeout)
            fut.result()
        except BaseException:                  # a timeout, the caller cancelled, a break
            if not self._give_up(b):
                self._break(f"more than {MAX_GIVEN_UP} calls given up unanswered")
            self._send_releases()
            raise
        try:
            return self._answers(b.replies, ftype)
        except ProtocolError as exc:
            self._break(str(exc), exc)
            raise

    async def decide(self, service: str | Request, client: str | None = None, **kw) -> Decision:
        try:
            return (await self.decide_many([make_request(service, client, **kw)]))[0]
        except BatchError as exc:
            raise exc.errors[0] from None

    async def decide_many(self, requests) -> list[Decision]:
        requests = list(requests)
        results, leases = self._decisions(await self._call(_decide_frames(requests),
                                                           len(requests), wb.T_DECISION))
        if leases is not None:
            answers = await self._call(_release_frames(leases), len(leases), wb.T_RELEASED)
            released = sum(a.released for a in answers if isinstance(a, wb.Reply))
            raise self._batch_error(results, released)
        return results

    async def release(self, lease_id: int) -> bool:
        return self._one(await self._call(_release_frames([lease_id]), 1,
                                          wb.T_RELEASED)).released

    async def ping(self) -> str:
        rep = self._one(await self._call(lambda rid: wb.encode_ping(rid), 1, wb.T_PONG))
        return "compiled" if rep.core == 1 else "pure"
