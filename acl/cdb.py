"""djb's constant database (cdb): a writer byte-identical to ``cdb_make`` and a
reader that treats every malformed file as an error.

Format (spec B.5; all integers 32-bit little-endian):

* 2048-byte header: 256 x (table position, slot count).
* records from offset 2048 in insertion order: key length, data length, key,
  data.
* 256 hash tables in order 0..255.  Table ``i`` has ``2 * n_i`` slots where
  ``n_i`` counts the keys with ``hash & 255 == i``; a slot is (hash, record
  position), ``(0, 0)`` when empty.  An empty table's header entry holds the
  file position at the time it was written and 0 slots.
* hash: ``h = 5381; h = ((h * 33) mod 2**32) ^ byte`` for each key byte.
* building: a table's keys are placed in insertion order, each at slot
  ``(h >> 8) % slots`` or the next free one after it (wrapping).  So a lookup,
  probing from the same slot, meets duplicates in insertion order: the first
  record written wins (what tcpserver relies on, spec B.2).

Reader rules (the file may be truncated, hostile or simply not a cdb):

* :func:`CdbReader.find` is djb's ``cdb_find``: the same probe order, at most
  ``slots`` probes, every offset checked against the file size before use; a
  read outside the file is :class:`CdbError`, as ``cdb_read`` fails there.
  A table that does not fit in the file is refused before probing it (djb's
  reader might find a key in its first slots; ours calls the file broken),
  which also bounds the probes by the file size.
* :meth:`CdbReader.validate` walks the whole file once and raises
  :class:`CdbError` for any table or slot that points outside it, so a loader
  that validated first can never meet a bad offset later.  It is stricter than
  tcpserver, which only fails a connection whose probe meets the bad spot.
* Nothing loops more than (file size / 8) + 256 times per call.
"""

from __future__ import annotations

import os
import struct

from acl.errors import AclError

__all__ = ["CdbError", "CdbWriter", "CdbReader", "cdb_hash", "make_cdb", "HEADER_SIZE"]

HEADER_SIZE = 2048
_U32 = 0xFFFFFFFF
_pair = struct.Struct("<II")


class CdbError(AclError):
    """A file that is not a readable cdb (truncated, hostile, too large)."""


def cdb_hash(key: bytes) -> int:
    h = 5381
    for b in key:
        h = ((h * 33) & _U32) ^ b
    return h


class CdbWriter:
    """Collects records in memory and lays them out exactly as ``cdb_make``."""

    def __init__(self) -> None:
        self._records: list[tuple[bytes, bytes]] = []
        self._size = HEADER_SIZE

    def add(self, key: bytes, data: bytes) -> None:
        size = self._size + 8 + len(key) + len(data) + 8   # record + its slot pair
        if len(key) > _U32 or len(data) > _U32 or size > _U32:
            raise CdbError("cdb would exceed 4 GiB")
        self._records.append((bytes(key), bytes(data)))
        self._size = size

    def __len__(self) -> int:
        return len(self._records)

    def tobytes(self) -> bytes:
        out = bytearray(HEADER_SIZE)
        tables: list[list[tuple[int, int]]] = [[] for _ in range(256)]
        pos = HEADER_SIZE
        for key, data in self._records:
            h = cdb_hash(key)
            tables[h & 255].append((h, pos))
            out += _pair.pack(len(key), len(data))
            out += key
            out += data
            pos += 8 + len(key) + len(data)
        header = bytearray()
        for entries in tables:
            slots = 2 * len(entries)
            header += _pair.pack(pos, slots)
            if not slots:
                continue
            table = [(0, 0)] * slots
            for h, p in entries:
                where = (h >> 8) % slots
                while table[where][1]:
                    where += 1
                    if where == slots:
                        where = 0
                table[where] = (h, p)
            for h, p in table:
                out += _pair.pack(h, p)
            pos += 8 * slots
        if pos > _U32:
            raise CdbError("cdb would exceed 4 GiB")
        out[:HEADER_SIZE] = header
        return bytes(out)


def make_cdb(records) -> bytes:
    """``[(key, data), ...]`` -> the bytes of a cdb holding them in that order."""
    w = CdbWriter()
    for key, data in records:
        w.add(key, data)
    return w.tobytes()


class CdbReader:
    """Read-only view of cdb bytes; every access bounds-checked."""

    def __init__(self, data: bytes) -> None:
        if len(data) > _U32:
            raise CdbError("file larger than 4 GiB is not a cdb")
        self._data = bytes(data)
        self._size = len(self._data)

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> CdbReader:
        with open(path, "rb") as f:
            return cls(f.read())

    # -- djb's cdb_read: a read that does not fit is a format error --------
    def _read(self, pos: int, length: int) -> bytes:
        if pos > self._size or self._size - pos < length:
            raise CdbError(f"read of {length} bytes at offset {pos} is outside the "
                           f"{self._size}-byte file (truncated or not a cdb)")
        return self._data[pos:pos + length]

    def _u32pair(self, pos: int) -> tuple[int, int]:
        return _pair.unpack(self._read(pos, 8))

    def find(self, key: bytes) -> bytes | None:
        """The data of the first record for ``key`` (None if absent), by
        ``cdb_find``'s exact probe sequence."""
        h = cdb_hash(key)
        hpos, hslots = self._u32pair((h << 3) & 2047)
        if not hslots:
            return None
        if hpos + 8 * hslots > self._size:
            # cdb_read would fail somewhere in this table; refusing up front
            # also bounds the probe loop by the file size.
            raise CdbError(f"hash table at {hpos} with {hslots} slots does not fit "
                           f"the {self._size}-byte file")
        kpos = (hpos + (((h >> 8) % hslots) << 3)) & _U32
        end = (hpos + (hslots << 3)) & _U32
        klen = len(key)
        for _ in range(hslots):          # cdb_findnext: loop < hslots
            sh, pos = self._u32pair(kpos)
            if not pos:
                return None
            kpos = (kpos + 8) & _U32
            if kpos == end:
                kpos = hpos
            if sh == h:
                rk, rd = self._u32pair(pos)
                if rk == klen and self._read((pos + 8) & _U32, klen) == key:
                    return self._read((pos + 8 + klen) & _U32, rd)
        return None

    def validate(self) -> None:
        """Raise CdbError unless every table and every slot's record lies
        inside the file."""
        if self._size < HEADER_SIZE:
            raise CdbError(f"file has {self._size} bytes, shorter than the "
                           f"{HEADER_SIZE}-byte cdb header")
        for i in range(256):
            hpos, hslots = self._u32pair(8 * i)
            if not hslots:
                continue
            if hpos < HEADER_SIZE or hpos + 8 * hslots > self._size:
                raise CdbError(f"hash table {i} ({hslots} slots at {hpos}) lies "
                               f"outside the {self._size}-byte file")
            for s in range(hslots):
                _h, pos = _pair.unpack_from(self._data, hpos + 8 * s)
                if not pos:
                    continue
                if pos < HEADER_SIZE or pos + 8 > self._size:
                    raise CdbError(f"slot {s} of table {i} points to {pos}, "
                                   "outside the records")
                klen, dlen = _pair.unpack_from(self._data, pos)
                if pos + 8 + klen + dlen > self._size:
                    raise CdbError(f"record at {pos} (key {klen} + data {dlen} "
                                   "bytes) runs past the end of the file")

    def keys(self) -> list[bytes]:
        """Every key some lookup can reach, each once, in hash-table order.

        A slot is reachable only if it sits in table ``hash & 255`` and its
        stored hash is the hash of the key it points to.  Call
        :meth:`validate` first: this trusts the offsets.
        """
        seen: dict[bytes, None] = {}
        for i in range(256):
            hpos, hslots = _pair.unpack_from(self._data, 8 * i)
            for s in range(hslots):
                h, pos = _pair.unpack_from(self._data, hpos + 8 * s)
                if not pos or (h & 255) != i:
                    continue
                klen, _dlen = _pair.unpack_from(self._data, pos)
                key = self._data[pos + 8:pos + 8 + klen]
                if cdb_hash(key) == h:
                    seen.setdefault(key, None)
        return list(seen)

    def records(self) -> list[tuple[bytes, bytes]]:
        """The records in file order, walking from offset 2048 to the lowest
        table position (how ``cdbdump`` reads a well-formed file)."""
        self.validate()
        end = min(_pair.unpack_from(self._data, 8 * i)[0] for i in range(256))
        out = []
        pos = HEADER_SIZE
        while pos < end:
            klen, dlen = self._u32pair(pos)
            if pos + 8 + klen + dlen > end:
                raise CdbError(f"record at {pos} runs into the hash tables")
            out.append((self._data[pos + 8:pos + 8 + klen],
                        self._data[pos + 8 + klen:pos + 8 + klen + dlen]))
            pos += 8 + klen + dlen
        return out

    def mapping(self) -> dict[bytes, bytes]:
        """key -> data exactly as :meth:`find` answers for every reachable
        key (validates first, so it never meets a bad offset)."""
        self.validate()
        out = {}
        for key in self.keys():
            data = self.find(key)
            if data is not None:
                out[key] = data
        return out
