"""The lease journal's format: what the lease store keeps of each kept
connection and lease, in a shared memory file (acl/serve/leasestore.py says
why and when).  Plain stores into a buffer: no descriptor, no system call.

Rules of this file:

* Layout (little endian): a ``HEADER``-byte header -- magic ``ACLLEASE``,
  version, record size, capacity (records), generation -- then ``capacity``
  records of ``RECORD`` bytes::

      0  u8   valid       0 free, VALID set; anything else: a bad record
      1  u8   kind        1 connection, 2 lease
      2  u8   state       STATE_BASE + 0 open, 1 sealed, 2 deaf (connections)
      4  u32  crc         CRC-32 of bytes 8.. (the body), seeded with kind
      8  u64  connection  its number: the id of its first lease
      16 u64  lease id    (leases)
      24 u8 client family (4, 6), u8 server family (0, 4, 6), u16 server
         port, u16 client port, u8 service length (1..255), one pad byte
      32 16 bytes client address, 16 bytes server address, 255 bytes service

* A record is written body first, then kind, state and CRC, then the valid
  byte; it is freed by clearing the valid byte first.  A crash between any
  two of those stores leaves the record free or whole, so a crash mid-write
  loses at most the record being written.  The state byte is rewritten in
  place (one store: sealing), so the CRC does not cover it; it is checked
  for a known value instead (a zeroed byte is none).
* Reading trusts nothing: a header that does not read makes the whole
  journal unusable (:class:`JournalError`); a record set but wrong (valid
  byte, CRC, kind, a field out of range, a repeated id) is counted as bad
  and dropped, the others are read.
* Bounds: :class:`Journal` keeps at most ``keep`` connections and ``keep``
  leases; past them an add says False.  Its records are
  :func:`capacity_for` ``keep`` (2 * ``keep``: one each), the one place
  that rule is written -- a journal made here, one written on and one
  leasestore.py maps all take it from there.
* Writing on (:meth:`Journal.reopen`): a start goes on writing in the
  journal it was passed when that one has room (acl/serve/leasestore.py
  says why).  The records it keeps stay where they are, untouched; every
  other record is cleared (valid byte first, as a drop is), so a crash
  while it clears leaves records the next start drops again.
"""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass, field

from acl.model import Request

MAGIC = b"ACLLEASE"
VERSION = 1
HEADER = 64
RECORD = 320
VALID = 0xA5                     # the byte a record is made valid with, last
KIND_CONN, KIND_LEASE = 1, 2
#: a connection's state (0 open, SEALED, DEAF: acl/serve/conn.py) is kept as
#: STATE_BASE + state: a zeroed byte reads as no state at all
STATE_BASE = 0x10
STATES = (0, 1, 2)
# header: magic, version, record size, capacity (records), generation
_HEAD = struct.Struct("<8sIIIQ")
# record: valid, kind, state, reserved, crc32 of the body (bytes 8 on)
_TOP = struct.Struct("<BBBxI")
# body: conn, lease id, client family, server family, server port,
# client port, service length, reserved, client, server, service
_BODY = struct.Struct("<QQBBHHBx16s16s255s")
assert _TOP.size + _BODY.size <= RECORD
_PAD = bytes(RECORD - _TOP.size - _BODY.size)


def _crc(kind: int, body: bytes) -> int:
    return zlib.crc32(body, kind)


class JournalError(ValueError):
    """The journal's header cannot be read: the whole journal is unusable."""


def capacity_for(keep: int) -> int:
    """The records a journal needs for ``keep`` connections and ``keep``
    leases (the file's rules)."""
    return 2 * keep


def journal_size(capacity: int) -> int:
    return HEADER + capacity * RECORD


def _pack_addr(text: str | None) -> tuple[int, bytes]:
    if not text:
        return 0, b""
    if ":" in text:
        return 6, socket.inet_pton(socket.AF_INET6, text)
    return 4, socket.inet_pton(socket.AF_INET, text)


def _unpack_addr(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


@dataclass
class Contents:
    """What a journal holds: connections (number -> state), leases
    (id -> (connection, request)), records dropped as bad, its generation."""

    conns: dict[int, int] = field(default_factory=dict)
    leases: dict[int, tuple[int, Request]] = field(default_factory=dict)
    bad: int = 0
    generation: int = 0
    capacity: int = 0                # records


def _header(buf) -> tuple[int, int]:
    """(capacity, generation) of the journal in ``buf``; JournalError when
    its header does not read (then nothing in it can be trusted)."""
    if len(buf) < HEADER:
        raise JournalError(f"{len(buf)} bytes, shorter than its header")
    magic, version, size, capacity, generation = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise JournalError("no journal header (magic)")
    if version != VERSION or size != RECORD:
        raise JournalError(f"version {version}, record size {size}: not this acl's journal")
    if len(buf) < journal_size(capacity):
        raise JournalError(f"{len(buf)} bytes, shorter than {capacity} records")
    return capacity, generation


#: what _record() makes of a record set but wrong
BAD = "bad"


def _record(buf, i: int):
    """Record ``i``: None when free, BAD when set but wrong, else
    (kind, state, connection, lease id, request or None)."""
    off = HEADER + i * RECORD
    valid, kind, state, crc = _TOP.unpack_from(buf, off)
    if valid == 0:
        return None
    body = bytes(buf[off + _TOP.size:off + RECORD])
    if valid != VALID or _crc(kind, body) != crc:
        return BAD
    state -= STATE_BASE
    conn, lease, cfam, sfam, sport, cport, slen, caddr, saddr, svc = _BODY.unpack_from(body, 0)
    if conn == 0:
        return BAD
    if kind == KIND_CONN and state in STATES:
        return kind, state, conn, 0, None
    if kind == KIND_LEASE and lease > 0 and cfam in (4, 6) and sfam in (0, 4, 6) and 1 <= slen:
        try:
            service = svc[:slen].decode("utf-8", "surrogateescape")
            request = Request(service, _unpack_addr(cfam, caddr), cport,
                              _unpack_addr(sfam, saddr) if sfam else None, sport, lease=True)
        except (UnicodeDecodeError, ValueError):
            return BAD
        return kind, 0, conn, lease, request
    return BAD


def read_journal(buf) -> Contents:
    """Every valid record of the journal in ``buf`` (of a repeated id, the
    first); JournalError when its header does not read."""
    capacity, generation = _header(buf)
    out = Contents(generation=generation, capacity=capacity)
    for i in range(capacity):
        rec = _record(buf, i)
        if rec is None:
            continue
        if rec is BAD:
            out.bad += 1
            continue
        kind, state, conn, lease, request = rec
        if kind == KIND_CONN and conn not in out.conns:
            out.conns[conn] = state
        elif kind == KIND_LEASE and lease not in out.leases:
            out.leases[lease] = (conn, request)
        else:
            out.bad += 1
    return out


class Journal:
    """Writes the records of one journal (the file's rules): ``buf`` is a
    writable buffer of :func:`journal_size` bytes -- the mapped memfd, or a
    bytearray in tests.  Connections and leases are bounded by ``keep``
    each; the add methods say False when there is no room."""

    def __init__(self, buf, keep: int, generation: int, *, capacity: int = 0) -> None:
        """A new, empty journal (its header written); with ``capacity``,
        the records already in ``buf`` are left for :meth:`reopen`."""
        self.buf = buf
        self.keep = keep
        self.capacity = capacity or capacity_for(keep)
        self.generation = generation
        self._free = list(range(self.capacity - 1, -1, -1))    # pop(): lowest first
        self.conns: dict[int, int] = {}        # connection number -> record index
        self.leases: dict[int, tuple[int, int]] = {}   # lease id -> (record index, connection)
        self.by_conn: dict[int, set[int]] = {}  # connection number -> its lease ids
        if not capacity:
            buf[:journal_size(self.capacity)] = bytes(journal_size(self.capacity))
            buf[:_HEAD.size] = _HEAD.pack(MAGIC, VERSION, RECORD, self.capacity, generation)

    @classmethod
    def reopen(cls, buf, keep: int, conns, leases: dict[int, int]) -> Journal:
        """Write on in the journal ``buf`` holds (the file's rules): the
        first record of each connection in ``conns`` and of each lease in
        ``leases`` (id -> its connection, one of ``conns``) stay as they
        are; every other record is cleared.  ``keep`` bounds what is added
        from now on (the capacity is the header's: at least
        :func:`capacity_for` ``keep``)."""
        capacity, generation = _header(buf)
        if capacity < capacity_for(keep):
            raise JournalError(f"{capacity} records, fewer than 2 x {keep}")
        j = cls(buf, keep, generation, capacity=capacity)
        conns = set(conns)
        free = []
        for i in range(capacity):
            rec = _record(buf, i)
            if rec is None:
                free.append(i)
                continue
            kept = False
            if rec is not BAD:
                kind, _state, conn, lease, _request = rec
                if kind == KIND_CONN and conn in conns and conn not in j.conns:
                    j.conns[conn] = i
                    j.by_conn[conn] = set()
                    kept = True
                elif (kind == KIND_LEASE and leases.get(lease) == conn and conn in conns
                      and lease not in j.leases):
                    j.leases[lease] = (i, conn)
                    kept = True
            if not kept:
                buf[HEADER + i * RECORD] = 0       # cleared: invalid first
                free.append(i)
        for lease, (i, conn) in list(j.leases.items()):
            if conn in j.by_conn:
                j.by_conn[conn].add(lease)
            else:                                  # its connection has no record
                del j.leases[lease]
                buf[HEADER + i * RECORD] = 0
                free.append(i)
        j._free = sorted(free, reverse=True)
        return j

    def _write(self, kind: int, state: int, conn: int, lease: int = 0,
               request: Request | None = None) -> int:
        """Fill a free record and make it valid, last.  Slice assignments
        only, in this order: body, then kind/state/CRC, then the valid byte
        (what a crash between any two of them leaves is read as before)."""
        i = self._free.pop()
        off = HEADER + i * RECORD
        if request is None:
            body = _BODY.pack(conn, 0, 0, 0, 0, 0, 0, b"", b"", b"")
        else:
            cfam, caddr = _pack_addr(request.client)
            sfam, saddr = _pack_addr(request.server)
            svc = request.service.encode("utf-8", "surrogateescape")
            body = _BODY.pack(conn, lease, cfam, sfam, request.server_port,
                              request.client_port, len(svc), caddr, saddr, svc)
        body += _PAD
        buf = self.buf
        buf[off + _TOP.size:off + RECORD] = body
        buf[off + 1:off + _TOP.size] = _TOP.pack(0, kind, STATE_BASE + state,
                                                 _crc(kind, body))[1:]
        buf[off] = VALID                       # valid last
        return i

    def _clear(self, i: int) -> None:
        self.buf[HEADER + i * RECORD] = 0      # invalid first
        self._free.append(i)

    def add_connection(self, conn: int, state: int) -> bool:
        if len(self.conns) >= self.keep or conn in self.conns:
            return False
        self.conns[conn] = self._write(KIND_CONN, state, conn)
        self.by_conn[conn] = set()
        return True

    def set_state(self, conn: int, state: int) -> None:
        """One byte, outside the CRC: sealing a connection is one store."""
        i = self.conns.get(conn)
        if i is not None:
            self.buf[HEADER + i * RECORD + 2] = STATE_BASE + state

    @staticmethod
    def storable(request: Request) -> bool:
        """Whether ``request``'s lease fits a record (a numeric client, a
        numeric or absent server, a service of 1..255 bytes)."""
        try:
            _pack_addr(request.client)
            _pack_addr(request.server)
        except (OSError, ValueError, TypeError):
            return False
        return 1 <= len(request.service.encode("utf-8", "surrogateescape")) <= 255

    def add_lease(self, conn: int, lease: int, request: Request) -> bool:
        if (conn not in self.conns or len(self.leases) >= self.keep
                or lease in self.leases or not self.storable(request)):
            return False
        self.leases[lease] = (self._write(KIND_LEASE, 0, conn, lease, request), conn)
        self.by_conn[conn].add(lease)
        return True

    def drop_lease(self, lease: int) -> None:
        entry = self.leases.pop(lease, None)
        if entry is not None:
            self._clear(entry[0])
            self.by_conn[entry[1]].discard(lease)

    def drop_connection(self, conn: int) -> None:
        """The connection's record and its leases' (leases first)."""
        for lease in sorted(self.by_conn.pop(conn, ())):
            entry = self.leases.pop(lease, None)
            if entry is not None:
                self._clear(entry[0])
        i = self.conns.pop(conn, None)
        if i is not None:
            self._clear(i)
