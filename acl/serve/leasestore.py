"""Leases that outlive a restart or a crash of ``acl serve``: systemd's fd store.

Rules of this file (docs/protocol.md "Leases", docs/configuration.md
``[run] keep_leases``; sd_notify(3) ``FDSTORE=1``, systemd.service(5)
``FileDescriptorStoreMax=``):

* Off unless asked: only with ``[run] keep_leases = N`` (N > 0) and
  ``$NOTIFY_SOCKET`` set.  Otherwise nothing here runs, and descriptors a
  store passed back anyway are closed and removed from it.
* A binary connection is *kept* when it takes its first lease: a
  duplicate of it goes to systemd's store under ``acl-lease-conn-<n>``, n
  being that lease's id (ids never repeat, across restarts too, so neither
  do names).  systemd holds it while acl is down -- the kernel keeps the
  connection open, and the server process acl-wrap handed it to never
  notices.  It leaves the store (``FDSTOREREMOVE``) when the connection
  ends; systemd also drops a stored descriptor by itself on POLLHUP (the
  peer closed), and drops the whole store when the unit is stopped with no
  job queued (stop, then start: nothing is kept; restart and
  ``Restart=on-failure`` keep it).
* What each kept connection holds is written in the **journal**
  (acl/serve/lease_journal.py: the format, and why a crash mid-write loses
  at most one record): a memfd, in the store too
  (``acl-lease-journal-<generation>``), mapped shared.  A record is a
  connection (its number, whether it is sealed or deaf) or a lease (its
  id, its connection's number, and what taking it again needs: service,
  client address, server address and port), written with plain stores
  into the mapping: no system call per lease.  The memfd is sealed at its
  size, so no holder can shrink it under a mapping.
* Bounds: at most N connections and N leases are kept (the journal holds
  2 N records).  A lease past that is granted as before but *not kept*: a
  restart forgets it (``unkept``, logged at most once a minute), and so is
  every lease of a connection that could not be kept (N connections kept,
  or systemd's socket busy: a send never waits on the event loop).
  systemd itself keeps at most ``FileDescriptorStoreMax=`` descriptors and
  cannot tell us that number: set it to N + 2 (the journal, and the new
  journal a start with a changed setting stores beside it).
* Start (:func:`open_store`, before anything is accepted).  systemd
  answers nothing to ``FDSTORE=1``: a descriptor its store has no room
  for (``FileDescriptorStoreMax=``) is closed and logged, and acl never
  knows.  What shows that systemd holds a journal is that it passes it
  back at a start.  So a start lets go of no journal whose successor
  systemd has not passed back:

  - The newest journal that reads is used (by the number in its name,
    then its header's generation); the others are closed and removed from
    the store.  When it has room for ``keep_leases`` of each, is at most
    twice that, is sealed and its name was passed once, acl *writes on in
    it* (:meth:`acl.serve.lease_journal.Journal.reopen`): no journal is
    stored or removed -- a restart with an unchanged setting never needs
    room for a second one.
  - Otherwise (none was passed, or the setting changed) a new journal, one
    generation up, is filled with what was adopted and stored, and the one
    used stays in the store beside it: the next start is passed both,
    writes on in the new one and removes the old.  Had systemd closed the
    new one, that start falls back on the old one: the connections kept
    since are closed ("no record of it") and leases released since on
    connections still open are counted until they end -- not every lease
    lost.
  - Each stored connection that is still open and has a connection
    record is *adopted* -- a live binary connection again, sealed or deaf
    as it was, holding its leases under their ids -- and its leases are
    counted again with :meth:`acl.engine.Engine.adopt_lease` (no limit
    check).  A stored connection already closed, or without a record, is
    closed and removed; a lease record without its connection is dropped.
  - A name passed more than once (acl never stores one twice; systemd
    passes whatever it was given under it): of the journals, the newest
    that reads is used and written on as above -- but as ``FDSTOREREMOVE``
    takes every descriptor of a name, it is not written on in place: a new
    journal is made, and the name leaves the store at a later start; of
    the connections, the first that is still open is kept and the others
    closed, and the name is removed and the kept one stored again under it
    (acl cannot tell which one its record meant).  Each is logged.
  - A crash at any point of the start leaves a journal the next start
    reads: one written on in place has its dropped records cleared one by
    one (each a drop, valid byte first), a replaced one is not removed.
* Stop (SIGTERM): the journal is frozen (connections closing while acl
  exits do not leave the store), every kept connection stops reading, what
  it had read is answered and flushed -- within ``HANDOVER_S`` -- and its
  descriptor is closed, left to systemd.  One that holds part of a frame,
  or waits for a name lookup or for its client to read past the bound, or
  that acl is closing already (a bad frame), cannot be handed over whole:
  it is removed from the store and closed (its client sees the end of the
  connection; its leases end).
* Crash: nothing runs.  Frames read but not yet answered are lost -- their
  client never gets a reply -- and part of a frame read is lost with them,
  so the next ``acl serve`` reads that connection from the middle of a
  frame: a bad frame (ERROR, closed; a sealed connection: ERROR 8, deaf,
  lease held).  A lease is written before its DECIDE is answered: a crash
  in between keeps a lease its client never heard of, until it closes.
* A notification acl sent just before it died still counts.  systemd
  (v252 src/core/manager.c) reads its notify socket at a higher sd-event
  priority (NORMAL-8) than it handles SIGCHLD (NORMAL-7), "so that we can
  still identify to which service an exit message belongs": every datagram
  queued before the death is read while the sender is still the unit's
  main PID (``NotifyAccess=main``), and the descriptors it carries are
  held by the socket meanwhile.  So an ``FDSTORE=1`` sent, then a crash:
  the connection is stored, and the order above holds -- the connection
  is sent to the store and the lease written in the journal (a shared
  mapping: in the memfd the moment it is stored) before the DECIDE is
  answered, so no client hears of a lease a crash could lose
  (test_lease_store_live: systemd stopped, a lease taken, acl killed,
  then systemd goes on and the next acl adopts it).  Were such a message
  dropped, a crash just after a connection's first lease was answered
  would end the connection and the lease its client had been granted.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import stat
import time
from dataclasses import dataclass

from acl.model import Request
from acl.serve.conn import peer_gone
from acl.serve.lease_journal import (
    HEADER,
    Contents,
    Journal,
    JournalError,
    capacity_for,
    journal_size,
    read_journal,
)

#: seconds a stop gives kept connections to answer and flush what they read
HANDOVER_S = 2.0
#: seconds a start waits, in all, for room in systemd's notify socket
START_SEND_S = 2.0
UNKEPT_LOG_EVERY = 60.0

CONN_PREFIX = "acl-lease-conn-"
JOURNAL_PREFIX = "acl-lease-journal-"


def _is_stream_unix(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return s.family == socket.AF_UNIX and s.type == socket.SOCK_STREAM
    finally:
        s.close()


def _number(name: str, prefix: str) -> int:
    return int(name[len(prefix):]) if name.startswith(prefix) else 0


@dataclass
class Adopted:
    """A stored connection adopted at start."""

    sock: socket.socket
    number: int
    state: int
    leases: set[int]


class LeaseStore:
    """The running server's side of the store (the file's rules)."""

    def __init__(self, link, journal: Journal, log) -> None:
        self.link = link               # acl.serve.systemd.FdStoreLink
        self.journal = journal
        self.log = log
        self.frozen = False            # stopping: closing connections stay stored
        # counts (admin stats "lease_store")
        self.adopted_connections = 0
        self.adopted_leases = 0
        self.dropped_records = 0
        self.closed_at_start = 0
        self.unkept = 0
        self._unkept_logged: float | None = None
        self._unkept_since = 0

    # -- a connection's life -------------------------------------------
    def keep(self, number: int, fd: int, state: int) -> bool:
        """Store connection ``fd`` as ``number`` (its first lease's id)."""
        j = self.journal
        if self.frozen or not j.add_connection(number, state):    # frozen, or full
            return False
        if not self.link.store(CONN_PREFIX + str(number), fd):
            j.drop_connection(number)
            return False
        return True

    def add_lease(self, number: int, lease: int, request: Request) -> bool:
        if number and self.journal.add_lease(number, lease, request):
            return True
        self.not_kept(lease)
        return False

    def not_kept(self, lease: int) -> None:
        self.unkept += 1
        now = time.monotonic()
        if self._unkept_logged is not None and now - self._unkept_logged < UNKEPT_LOG_EVERY:
            self._unkept_since += 1
            return
        j = self.journal
        more = f" ({self._unkept_since} more since the last line)" if self._unkept_since else ""
        self.log(f"lease {lease} is not kept across a restart: {len(j.conns)} of "
                 f"{j.keep} connections and {len(j.leases)} of {j.keep} leases kept "
                 f"([run] keep_leases){more}")
        self._unkept_logged = now
        self._unkept_since = 0

    def released(self, lease: int) -> None:
        self.journal.drop_lease(lease)

    def set_state(self, number: int, state: int) -> None:
        self.journal.set_state(number, state)

    def forget(self, number: int) -> None:
        """The connection ended (or cannot be handed over): out of the
        journal and out of the store."""
        self.journal.drop_connection(number)
        if not self.link.remove(CONN_PREFIX + str(number)):
            self.log(f"lease store: cannot remove {CONN_PREFIX}{number} from systemd's "
                     "store (the connection stays open until acl restarts)")

    def stats(self) -> dict:
        j = self.journal
        return {"keep": j.keep, "connections": len(j.conns), "leases": len(j.leases),
                "unkept": self.unkept, "adopted_connections": self.adopted_connections,
                "adopted_leases": self.adopted_leases,
                "dropped_records": self.dropped_records,
                "closed_at_start": self.closed_at_start, "generation": j.generation}


def _read_passed_journal(fd: int) -> Contents:
    size = os.fstat(fd).st_size
    if size < HEADER:
        raise JournalError(f"{size} bytes, shorter than its header")
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        return read_journal(m)


def _writable_mapping(fd: int, contents: Contents, keep: int):
    """The passed journal ``fd`` mapped to write on in (the file's rules:
    room for ``keep`` of each, at most twice that, sealed at its size), or
    None: a new journal is made instead."""
    need = capacity_for(keep)
    if not need <= contents.capacity <= 2 * need:
        return None
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if seals & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) != \
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW:
            return None
        return mmap.mmap(fd, journal_size(contents.capacity), mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:                   # not a memfd of ours, or opened read-only
        return None


def _new_journal(keep: int, generation: int):
    """A sealed memfd of the journal's size, mapped: (fd, mapping)."""
    size = journal_size(capacity_for(keep))
    fd = os.memfd_create("acl-leases", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        # nobody holding it (systemd, us) can shrink it under a mapping
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        os.close(fd)
        raise
    return fd, m


@dataclass
class _PassedJournal:
    """A journal systemd passed, that reads."""

    name: str
    fd: int
    contents: Contents


def _pick_journal(journals: list[tuple[str, int]], log) -> _PassedJournal | None:
    """The newest passed journal that reads (the file's rules)."""
    best, best_key = None, None
    for i, (name, fd) in enumerate(journals):
        try:
            contents = _read_passed_journal(fd)
        except (JournalError, OSError, ValueError) as exc:
            log(f"lease store: journal {name} is unusable: {exc}")
            continue
        key = (_number(name, JOURNAL_PREFIX), contents.generation, -i)
        if best_key is None or key > best_key:
            best, best_key = _PassedJournal(name, fd, contents), key
    return best


def _one_connection_each(conns: list[tuple[str, int]], log
                         ) -> tuple[dict[int, tuple[str, int]], set[str]]:
    """number -> (name, fd) of the stored connections, one a name (the
    file's rules), and the names that were passed more than once; the
    others of such a name are closed here."""
    by_name: dict[str, list[int]] = {}
    for name, fd in conns:
        by_name.setdefault(name, []).append(fd)
    out, repeated = {}, set()
    for name, fds in by_name.items():
        keep = fds[0]
        if len(fds) > 1:
            repeated.add(name)
            keep = next((fd for fd in fds if _is_stream_unix(fd) and not peer_gone(fd)),
                        fds[0])
            for fd in fds:
                if fd != keep:
                    os.close(fd)
            log(f"lease store: {name} was passed {len(fds)} times: one is kept, "
                f"{len(fds) - 1} closed")
        out[_number(name, CONN_PREFIX)] = (name, keep)
    return out, repeated


def discard(stored: list[tuple[str, int]], log, why: str, env=None) -> None:
    """The store is off: close what it passed and empty it."""
    if not stored:
        return
    link = None
    try:
        from acl.serve.systemd import FdStoreLink

        link = FdStoreLink(env)
    except OSError:
        pass
    for _name, fd in stored:
        os.close(fd)
    if link is not None:
        deadline = time.monotonic() + START_SEND_S
        for name in sorted({n for n, _ in stored}):     # a remove takes a name's every fd
            link.remove(name, max(0.0, deadline - time.monotonic()))
        link.close()
    log(f"lease store: {len(stored)} descriptors systemd kept were closed ({why}); "
        "their leases are forgotten")


def open_store(keep: int, stored: list[tuple[str, int]], engine, log,
               env=None) -> tuple[LeaseStore | None, list[Adopted]]:
    """Start the store (the file's rules): the store, and the connections
    to serve again.  ``stored`` is what systemd passed, (name, fd) in its
    order, a name possibly more than once (its descriptors are closed or
    adopted here)."""
    from acl.serve.systemd import FdStoreLink

    env = os.environ if env is None else env
    if keep <= 0:
        discard(stored, log, "[run] keep_leases is 0", env)
        return None, []
    if not env.get("NOTIFY_SOCKET"):
        log("[run] keep_leases: not run by systemd (no NOTIFY_SOCKET): leases are "
            "not kept across a restart")
        discard(stored, log, "no NOTIFY_SOCKET", env)
        return None, []
    link = FdStoreLink(env)
    journals = [(n, fd) for n, fd in stored if n.startswith(JOURNAL_PREFIX)]
    used = _pick_journal(journals, log)
    contents = used.contents if used is not None else Contents()
    highest = max([_number(n, JOURNAL_PREFIX) for n, _ in journals]
                  + [contents.generation, 0])
    # write on in the journal used, or a new one with room for all that
    # could be adopted -- decided, and made, first: past this point nothing
    # may fail, since what systemd passed is being used (closed, adopted,
    # counted); before it, a failure leaves all of it to the caller's
    # discard()
    mapping = journal_fd = None
    if used is not None and sum(n == used.name for n, _ in journals) == 1:
        mapping = _writable_mapping(used.fd, contents, keep)
    if mapping is None:
        need = max(keep, sum(n.startswith(CONN_PREFIX) for n, _ in stored),
                   len(contents.leases))
        try:
            journal_fd, mapping = _new_journal(need, highest + 1)
        except OSError:
            link.close()
            raise
    conns, repeated = _one_connection_each(
        [(n, fd) for n, fd in stored if n.startswith(CONN_PREFIX)], log)
    deadline = time.monotonic() + START_SEND_S

    def wait_s() -> float:
        return max(0.0, deadline - time.monotonic())

    adopted: list[Adopted] = []
    closed = 0
    for number, (name, fd) in sorted(conns.items()):
        why = ""
        if not _is_stream_unix(fd):
            why = "not a stream socket"
        elif peer_gone(fd):
            why = "its client had closed it"
        elif number not in contents.conns:
            why = "no record of it in the journal"
        if why:
            log(f"lease store: kept connection {number} closed: {why}")
            os.close(fd)
            link.remove(name, wait_s())
            closed += 1
            continue
        adopted.append(Adopted(socket.socket(fileno=fd), number, contents.conns[number], set()))
    live = {a.number: a for a in adopted}
    dropped = contents.bad
    now = time.time()
    for lease, (number, request) in sorted(contents.leases.items()):
        a = live.get(number)
        if a is None:
            dropped += 1
            continue
        try:
            engine.adopt_lease(lease, request, now)
        except (ValueError, KeyError, OverflowError) as exc:
            log(f"lease store: lease {lease} ({request.service} {request.client}) "
                f"not counted again: {exc}")
            dropped += 1
            continue
        a.leases.add(lease)
    seen = [*contents.conns, *contents.leases, *conns]
    engine.lease_ids_from(max(seen, default=0) + 1)
    # every journal but the one used out of the store, before a new one goes in
    for _name, fd in journals:
        os.close(fd)
    for name in sorted({n for n, _ in journals} - {used.name if used else ""}):
        link.remove(name, wait_s())
    if journal_fd is None:          # written on where it is (the file's rules)
        journal = Journal.reopen(mapping, keep, live,
                                 {lease: a.number for a in adopted for lease in a.leases})
        where = f"journal {used.name}, written on"
    else:                           # a new one: what was adopted, one generation up
        journal = Journal(mapping, need, highest + 1)
        for a in adopted:
            journal.add_connection(a.number, a.state)
            for lease in sorted(a.leases):
                journal.add_lease(a.number, lease, contents.leases[lease][1])
        journal.keep = keep          # room made for what was adopted; new ones: keep
        name = JOURNAL_PREFIX + str(highest + 1)
        ok = link.store(name, journal_fd, wait_s())
        os.close(journal_fd)
        if not ok:
            log(f"lease store: systemd's notify socket did not take the journal {name}: "
                + (f"a restart falls back on {used.name} (what changes from now on is "
                   "not kept)" if used else "leases are not kept across a restart"))
        where = (f"journal {used.name}; the new {name} was sent to the store, "
                 f"{used.name} stays there until a start is passed {name}" if used
                 else f"no journal; the new {name} was sent to the store")
    for a in adopted:               # its name's others were closed: it alone again
        name = CONN_PREFIX + str(a.number)
        if name in repeated:
            link.remove(name, wait_s())
            if not link.store(name, a.sock.fileno(), wait_s()):
                log(f"lease store: kept connection {a.number} could not be stored again: "
                    "a restart would close it")
    store = LeaseStore(link, journal, log)
    store.adopted_connections = len(adopted)
    store.adopted_leases = sum(len(a.leases) for a in adopted)
    store.dropped_records = dropped
    store.closed_at_start = closed
    if stored or dropped:
        log(f"lease store: adopted {len(adopted)} connections holding "
            f"{store.adopted_leases} leases ({where}); dropped "
            f"{dropped} records ({contents.bad} bad), closed {closed} connections")
    return store, adopted
