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
* :meth:`CdbReader.validate` walks every table once and raises
  :class:`CdbError` for any table or slot that points outside the file, and
  for slots whose records overlap (cdb_make never writes that), so a loader
  that validated first can never meet a bad offset later.  It is stricter than
  tcpserver, which only fails a connection whose probe meets the bad spot.
* :meth:`CdbReader.mapping` answers :meth:`find` for every key at once, in one
  walk per table: calling ``find`` per key is quadratic when many keys share
  a hash (2**n of them are easy to make, and tcprules accepts them).  Walking
  a table from just after an empty slot, the probe for a key starting at
  walk index ``a`` returns its first slot ``b >= a`` unless an empty slot lies
  between; in a table with no empty slot it wraps to the key's first slot.
  So the answer is the first duplicate in probe order, as ``cdb_find`` gives.
* Bounds, for the whole load (``validate`` then ``mapping``): each reads
  every slot of the 256 tables once and each distinct record header once.
  A table must fit in the file, so that is at most 2 x 257 x (file size / 8)
  reads, and about 2 x (file size / 8) when the tables do not overlap (any
  file cdb_make wrote) -- however many keys share a hash.  Each record's key
  is hashed once and records do not overlap, so hashing reads at most the
  file size.  ``find`` makes at most ``slots`` probes.  ``reads`` counts slot
  and record-header reads, so tests can check these bounds.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left

from acl.errors import AclError
from acl.rulefiles import read_bytes

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
        self.reads = 0      # slots and record headers read so far (tests bound it)

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> CdbReader:
        return cls(read_bytes(path))

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
            self.reads += 1
            sh, pos = self._u32pair(kpos)
            if not pos:
                return None
            kpos = (kpos + 8) & _U32
            if kpos == end:
                kpos = hpos
            if sh == h:
                self.reads += 1
                rk, rd = self._u32pair(pos)
                if rk == klen and self._read((pos + 8) & _U32, klen) == key:
                    return self._read((pos + 8 + klen) & _U32, rd)
        return None

    def validate(self) -> None:
        """Raise CdbError unless every table and every slot's record lies
        inside the file and no two of the records the slots point to overlap
        (cdb_make never writes overlapping records; refusing them keeps the
        key bytes :meth:`mapping` hashes within the file size)."""
        if self._size < HEADER_SIZE:
            raise CdbError(f"file has {self._size} bytes, shorter than the "
                           f"{HEADER_SIZE}-byte cdb header")
        ends: dict[int, int] = {}          # record position -> end of its data
        for i in range(256):
            hpos, hslots = self._u32pair(8 * i)
            if not hslots:
                continue
            if hpos < HEADER_SIZE or hpos + 8 * hslots > self._size:
                raise CdbError(f"hash table {i} ({hslots} slots at {hpos}) lies "
                               f"outside the {self._size}-byte file")
            self.reads += hslots
            for s, (_h, pos) in enumerate(_pair.iter_unpack(
                    memoryview(self._data)[hpos:hpos + 8 * hslots])):
                if not pos or pos in ends:
                    continue
                if pos < HEADER_SIZE or pos + 8 > self._size:
                    raise CdbError(f"slot {s} of table {i} points to {pos}, "
                                   "outside the records")
                self.reads += 1
                klen, dlen = _pair.unpack_from(self._data, pos)
                end = pos + 8 + klen + dlen
                if end > self._size:
                    raise CdbError(f"record at {pos} (key {klen} + data {dlen} "
                                   "bytes) runs past the end of the file")
                ends[pos] = end
        last = 0
        for pos in sorted(ends):
            if pos < last:
                raise CdbError(f"record at {pos} overlaps the record before it "
                               "(no cdb_make writes that)")
            last = ends[pos]

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
        """key -> data exactly as :meth:`find` answers, for every key some
        lookup can find, computed in one pass over each table (see the
        module rules; validates first, so it never meets a bad offset)."""
        self.validate()
        data = self._data
        keyed: dict[int, tuple[bytes, int, int]] = {}   # record pos -> key, hash, data length
        out: dict[bytes, bytes] = {}
        for i in range(256):
            hpos, hslots = _pair.unpack_from(data, 8 * i)
            if not hslots:
                continue
            slots = list(_pair.iter_unpack(memoryview(data)[hpos:hpos + 8 * hslots]))
            self.reads += hslots
            # Walk the table once, starting just after an empty slot if there
            # is one: then no probe crosses the end of the walk, and a probe
            # from walk index a finds the first slot b >= a of its key in the
            # same run (runs end at empty slots).  With no empty slot a probe
            # visits every slot once, wrapping.
            empty = next((s for s, (_h, pos) in enumerate(slots) if not pos), None)
            rot = 0 if empty is None else empty + 1
            run_of = [0] * hslots             # walk index -> run number, -1 if empty
            seen: dict[bytes, list[int]] = {}  # key -> walk indexes of its slots
            run = 0
            for w in range(hslots):
                h, pos = slots[(rot + w) % hslots]
                if not pos:
                    run += 1
                    run_of[w] = -1
                    continue
                run_of[w] = run
                if (h & 255) != i:
                    continue                  # no key hashing to h is looked up here
                kh = keyed.get(pos)
                if kh is None:
                    self.reads += 1
                    klen, dlen = _pair.unpack_from(data, pos)
                    key = data[pos + 8:pos + 8 + klen]
                    kh = keyed[pos] = (key, cdb_hash(key), dlen)
                if kh[1] == h:
                    seen.setdefault(kh[0], []).append(w)
            for key, walk in seen.items():
                h = slots[(rot + walk[0]) % hslots][0]       # == cdb_hash(key)
                start = ((h >> 8) % hslots - rot) % hslots   # walk index of the first probe
                j = bisect_left(walk, start)
                if empty is None:
                    w = walk[j] if j < len(walk) else walk[0]
                elif j < len(walk) and run_of[start] >= 0 and run_of[walk[j]] == run_of[start]:
                    w = walk[j]
                else:
                    continue                  # the probe meets an empty slot first
                pos = slots[(rot + w) % hslots][1]
                start = pos + 8 + len(key)
                out[key] = data[start:start + keyed[pos][2]]
        return out
