"""Accepting connections: one loop of ours, whatever event loop runs.

Rules of this file:

* The listening sockets are ours (listened on with the server's big kernel
  backlog); the event loop is only asked to wake us when one is readable.
  Neither loop's own accept is used, because neither handles running out of
  descriptors acceptably: CPython 3.11's ``_accept_connection`` goes on
  calling ``accept()`` ``backlog`` times per wake-up after EMFILE, logging a
  traceback and arming a retry timer each time (with a 4096 backlog: 100%
  CPU and hundreds of MB of log); libuv (uvloop) silently accepts and closes
  every waiting client.
* Per wake-up at most ``ACCEPT_BATCH`` connections are accepted; each is
  handed to ``loop.connect_accepted_socket`` with the socket's protocol
  factory.
* Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM): stop reading that
  socket, count it (``errors``: one per failed wake-up, keyed by errno
  name), log one line -- then at most one per ``LOG_EVERY`` seconds, with
  how many failed meanwhile -- and try again ``RETRY`` seconds later.  The
  clients wait in the kernel's backlog meanwhile; nobody is dropped by us.
* Except on a socket given a ``refusal`` (the admin socket): there a client
  that cannot be served is told why, at once.  Such an acceptor holds one
  spare descriptor (a dup of its listening socket, taken at start); out of
  descriptors it closes the spare, accepts a waiting client into its slot,
  sends it ``refusal(exc)`` -- one short line, which a new socket's buffer
  always takes -- closes it and takes the spare again, for each waiting
  client (at most ``ACCEPT_BATCH`` a wake-up).  Why: ``acl reload`` and
  ``acl query --admin`` otherwise wait out their timeout and can only
  guess why nothing answered.  Best effort: when another thread takes the
  freed slot first, that client waits as the others do, and the spare is
  taken again at the next wake-up.
"""

from __future__ import annotations

import errno
import os
import socket

ACCEPT_BATCH = 64
RETRY = 1.0            # seconds before accepting again after running out
LOG_EVERY = 60.0       # seconds between two "out of descriptors" lines
EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor:
    """Accepts on ``sock`` and hands each connection a protocol from ``factory``."""

    def __init__(self, loop, name: str, sock: socket.socket, factory, stats, log,
                 refusal=None) -> None:
        self.loop = loop
        self.name = name                # query, policy, admin, metrics
        self.sock = sock
        self.factory = factory
        self.stats = stats              # AcceptStats shared by every socket
        self.log = log
        # out of descriptors: OSError -> the line a waiting client is sent
        # (None: clients wait in the backlog; the file's rules)
        self.refusal = refusal
        self._spare = self._take_spare() if refusal is not None else None
        self._timer = None
        self._closed = False
        self._tasks: set = set()
        stats.errors.setdefault((name, "EMFILE"), 0)   # scraped from the start, as 0
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    self.log(f"{self.name} socket: accept: {exc.strerror or exc}")
                    return
                if self.refusal is not None:
                    self._refuse_waiting(exc)
                self._exhausted(exc)
                return
            conn.setblocking(False)
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(self.factory, sock=conn))
            self._tasks.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log(f"{self.name} socket: a connection could not be set up: "
                     f"{task.exception()}")

    def _take_spare(self) -> int | None:
        try:
            return os.dup(self.sock.fileno())
        except OSError:
            return None

    def _refuse_waiting(self, exc: OSError) -> None:
        """Out of descriptors: each waiting client is sent ``refusal`` and
        closed, through the spare descriptor's slot (the file's rules)."""
        line = self.refusal(exc)
        for _ in range(ACCEPT_BATCH):
            if self._spare is None:
                self._spare = self._take_spare()
                if self._spare is None:
                    return
            os.close(self._spare)
            self._spare = None
            try:
                conn, _addr = self.sock.accept()
            except OSError:             # none waits, or the slot was taken meanwhile
                self._spare = self._take_spare()
                return
            try:
                conn.setblocking(False)
                conn.send(line)
            except OSError:
                pass
            finally:
                conn.close()
            self._spare = self._take_spare()

    def _exhausted(self, exc: OSError) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.stats.failed(self.name, exc, self.log, self.loop.time(),
                          refused=self.refusal is not None)
        self._timer = self.loop.call_later(RETRY, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting (the socket itself is closed by its owner)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):    # already closed
            pass


class AcceptStats:
    """Failed accepts for the metrics, and the rate limit of their log line."""

    def __init__(self) -> None:
        self.errors: dict[tuple[str, str], int] = {}   # (socket, errno name) -> wake-ups
        self._last_log: float | None = None
        self._unlogged = 0

    def failed(self, name: str, exc: OSError, log, now: float, refused: bool = False) -> None:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        k = (name, code)
        self.errors[k] = self.errors.get(k, 0) + 1
        if self._last_log is not None and now - self._last_log < LOG_EVERY:
            self._unlogged += 1
            return
        more = (f" ({self._unlogged} more since the last line)" if self._unlogged else "")
        clients = "are told so and closed" if refused else "wait in the backlog"
        log(f"{name} socket: accept: {code} ({exc.strerror}): out of descriptors, "
            f"new clients {clients}; retrying every {RETRY:g} s, "
            f"logging at most every {LOG_EVERY:g} s{more}")
        self._last_log = now
        self._unlogged = 0
