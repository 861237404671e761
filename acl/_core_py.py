"""Pure-Python twin of the prefix core (``ext/acl/_core.pyx``).

It is the oracle in tests and the fallback when nothing native is built, so it
favours obvious correctness over speed.  Its API *is* the core's API; the
compiled module must accept and return exactly the same things.

Rules (shared with the compiled core):

* A :class:`PrefixTable` holds prefixes of **one** family (4 or 6).  An entry
  is ``(network, length, value)``; ``value`` is a rule index, an int in
  ``0 .. 2**31 - 2``.  The network must have no bits set past ``length``
  (``ValueError`` otherwise): masking is a rule-language decision, made by the
  compiler, never silently by the core.
* The same prefix given twice keeps the **lowest** value (the first rule wins
  under both disciplines).
* *first match*: the lowest value among all prefixes covering an address
  (TCP Wrappers' file order).  *most specific*: the value of the longest
  covering prefix (xinetd, tcprules).  Both answer ``-1`` when nothing covers.
* Addresses may be ``str``, ``int``, packed ``bytes`` (4 or 16 bytes) or
  ``ipaddress`` objects.  The table is family-strict: an IPv4-mapped IPv6
  address (``::ffff:a.b.c.d``) is an IPv6 address here and matches only IPv6
  prefixes such as ``::ffff:0:0/96``.  Whether a mapped client should be
  looked up as IPv4 is the rule language's call (use :func:`unmap_v4`).
* :meth:`PrefixTable.first_match` and :meth:`PrefixTable.most_specific` take
  the address positionally only (the compiled ones are one-argument C calls).
* Batch lookups take a buffer of packed addresses (4 or 16 bytes each,
  network order) and fill a writable buffer of int32 results: items of 4
  bytes in native order, formats ``i``, ``=i``, ``<i`` on little-endian
  hosts (ctypes' ``c_int32``), ``l`` where a long is 4 bytes...
  (:data:`INT32_FORMATS`).  Any other item type (``array('l')`` of 8-byte
  longs, ``'h'``, ``'f'``, a ``bytearray``) is a ``TypeError`` naming its
  format, never filled with int32s that mean something else there.
* A table is built once, by ``__init__`` or :meth:`PrefixTable.from_arrays`:
  ``__init__`` on a built table is a ``RuntimeError`` ("already built"), as
  it is on one that another thread is building ("being built"); a table
  whose build failed (``MemoryError``, "out of memory") is back to never
  built and may be built again.  Lookups and queries on a table that is not
  built -- never, not yet, or not since a failed build -- raise
  ``ValueError`` ("PrefixTable is not built").  ``family`` is read-only, as
  are the methods; a table takes no other attributes.
* Tables are not pickled or copied (``TypeError``): build another from
  :meth:`PrefixTable.entries`.
* Bad input raises the same exception class with the same message in both
  cores: ``family`` not 4/6, a length or value that is not an int
  (``TypeError``) or out of range, host bits set -- also in the prefix given
  to :meth:`PrefixTable.exact` and :meth:`PrefixTable.covered_by` --, a
  packed buffer whose size is not a multiple of the address width, an output
  buffer that is too small (``ValueError``) or read-only (``TypeError``).
"""

from __future__ import annotations

import ipaddress
import operator
import sys
import threading
from array import array

__all__ = ["PrefixTable", "parse_address", "unmap_v4", "MAX_VALUE"]

MAX_VALUE = 2**31 - 2
_BITS = {4: 32, 6: 128}
_V4_MAPPED = 0xFFFF << 32

#: Item formats (struct syntax) of an int32 output buffer, given itemsize 4:
#: native ``i`` / ``l``, standard-size ``=``, and the host's own byte order
#: spelled out (``<`` here on little-endian hosts; ``>``, ``!`` on big-endian
#: ones).  ``l`` and ``@l`` are 8 bytes on LP64 hosts, where the itemsize
#: check turns them away.
INT32_FORMATS = frozenset(
    order + code
    for order in ("", "@", "=", *(("<",) if sys.byteorder == "little" else (">", "!")))
    for code in "il"
)

# Messages both cores raise (the compiled one imports them).
NOT_BUILT = "PrefixTable is not built"
NO_PICKLE = "cannot pickle 'PrefixTable' object: build another from its entries()"

# Makes a build's check-and-claim of a table one step (the compiled core's
# GIL-held C code does it in one step anyway).
_CLAIM = threading.Lock()


def parse_address(addr, family: int) -> int:
    """Return ``addr`` as an int of the given family, or raise ValueError."""
    bits = _BITS.get(family) if type(family) is int else None
    if bits is None:
        raise ValueError("family must be 4 or 6")
    if isinstance(addr, int) and not isinstance(addr, bool):
        if not 0 <= addr < (1 << bits):
            raise ValueError(f"address {addr} out of range for IPv{family}")
        return addr
    if isinstance(addr, (bytes, bytearray, memoryview)):
        raw = bytes(addr)
        if len(raw) != bits // 8:
            raise ValueError(f"packed IPv{family} address must be {bits // 8} bytes, got {len(raw)}")
        return int.from_bytes(raw, "big")
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        if addr.version != family:
            raise ValueError(f"{addr} is not an IPv{family} address")
        return int(addr)
    if isinstance(addr, str):
        try:
            ip = ipaddress.IPv4Address(addr) if family == 4 else ipaddress.IPv6Address(addr)
        except ipaddress.AddressValueError as exc:
            raise ValueError(f"not an IPv{family} address: {addr!r}") from exc
        return int(ip)
    raise TypeError(f"cannot use {type(addr).__name__} as an address")


def _check_family(family) -> int:
    if not isinstance(family, int) or isinstance(family, bool) or family not in _BITS:
        raise ValueError("family must be 4 or 6")
    return family


def _check_length(length, family: int) -> int:
    length = operator.index(length)
    if not 0 <= length <= _BITS[family]:
        raise ValueError(f"prefix length {length} out of range for IPv{family}")
    return length


def _check_value(value) -> int:
    value = operator.index(value)
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"value {value} out of range 0..{MAX_VALUE}")
    return value


def _triples(entries):
    """``entries`` as (network, length, value) triples, unpacked by Python, so
    a malformed entry fails with Python's own message in both cores."""
    for net, length, value in entries:  # noqa: UP028 -- the unpacking is the point
        yield net, length, value


def _host_bits_error(family: int, net: int, length: int) -> ValueError:
    text = ipaddress.IPv4Address(net) if family == 4 else ipaddress.IPv6Address(net)
    return ValueError(f"host bits set in {text}/{length}")


def _host_bits(net: int, length: int, bits: int) -> int:
    return net & ((1 << (bits - length)) - 1)


def _entry(family: int, net, length, value) -> tuple[int, int, int]:
    """One entry, checked: (network int, length, value), or the error."""
    net = parse_address(net, family)
    length = _check_length(length, family)
    value = _check_value(value)
    if _host_bits(net, length, _BITS[family]):
        raise _host_bits_error(family, net, length)
    return net, length, value


def _check_int32(out) -> None:
    """A batch's output buffer must hold int32 items: any other item type
    would be filled with numbers that mean something else there.  Both
    cores check it first, before the table's state and ``packed``."""
    view = memoryview(out)
    if view.itemsize != 4 or view.format not in INT32_FORMATS:
        raise TypeError(f"output buffer must hold int32 items (format 'i'), "
                        f"not format {view.format!r} of {view.itemsize} bytes")


def unmap_v4(addr) -> str | None:
    """``'::ffff:1.2.3.4'`` -> ``'1.2.3.4'``; anything else -> None."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return None


class PrefixTable:
    """Prefixes of one family, each with a rule index; see the module rules."""

    # The compiled core's fields, and no others (a cdef class takes no new
    # attributes).  ``_bits`` is 0 until a build has succeeded: the built
    # mark every lookup tests, as the compiled core's ``bits``.
    __slots__ = ("_family", "_width", "_bits", "_by_len", "_lengths_desc")

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._clear()
        return self

    def __init__(self, family: int, entries=()):
        family = _check_family(family)
        rows = [_entry(family, net, length, value) for net, length, value in _triples(entries)]
        self._setup(family)
        try:
            for net, length, value in rows:
                self._insert(net, length, value)
            self._freeze()
        except BaseException:
            self._clear()       # never built: __init__ may be tried again
            raise

    @classmethod
    def from_arrays(cls, family: int, networks, lengths, values) -> PrefixTable:
        """Build from packed arrays: ``networks`` 4/16 bytes per entry (network
        order), ``lengths`` one byte per entry, ``values`` int32 per entry."""
        table = cls.__new__(cls)
        family = _check_family(family)
        width = _BITS[family] // 8
        nets = memoryview(networks).cast("B")
        lens = memoryview(lengths).cast("B")
        vals = memoryview(values).cast("B").cast("i")
        count = len(lens)
        if len(nets) != count * width or len(vals) != count:
            raise ValueError("networks, lengths and values disagree in length")
        table._setup(family)
        for i in range(count):
            net = int.from_bytes(nets[i * width:(i + 1) * width], "big")
            table._insert(*_entry(family, net, lens[i], vals[i]))
        table._freeze()
        return table

    @property
    def family(self) -> int:
        """4 or 6 (0 before a build starts)."""
        return self._family

    def _clear(self) -> None:
        """The never-built state."""
        self._family = 0
        self._width = 0
        self._bits = 0
        # length -> {network int: value}
        self._by_len: dict[int, dict[int, int]] = {}
        self._lengths_desc: list[int] = []

    def _setup(self, family: int) -> None:
        """Claim the table for a build; ``_bits`` stays 0 until ``_freeze``."""
        with _CLAIM:
            if self._bits:
                raise RuntimeError("PrefixTable is already built")
            if self._family:
                raise RuntimeError("PrefixTable is being built")
            self._family = family
        self._width = _BITS[family]

    def _insert(self, net: int, length: int, value: int) -> None:
        bucket = self._by_len.setdefault(length, {})
        old = bucket.get(net)
        if old is None or value < old:
            bucket[net] = value

    def __reduce_ex__(self, protocol):
        raise TypeError(NO_PICKLE)

    def __repr__(self) -> str:
        return f"<acl._core_py.PrefixTable IPv{self._family} {len(self)} prefixes>"

    def _prefix(self, network, length) -> tuple[int, int]:
        """A query prefix, checked like an entry."""
        if not self._bits:
            raise ValueError(NOT_BUILT)
        net = parse_address(network, self._family)
        length = _check_length(length, self._family)
        if _host_bits(net, length, self._bits):
            raise _host_bits_error(self._family, net, length)
        return net, length

    def _freeze(self) -> None:
        self._lengths_desc = sorted(self._by_len, reverse=True)
        self._bits = self._width        # built: lookups may run

    def _mask(self, length: int) -> int:
        return ((1 << length) - 1) << (self._bits - length)

    @property
    def nbytes(self) -> int:
        """Memory held by the table: here the dicts and the ints they hold."""
        if not self._bits:
            return 0
        total = sys.getsizeof(self._by_len)
        for bucket in self._by_len.values():
            total += sys.getsizeof(bucket)
            total += sum(sys.getsizeof(n) + sys.getsizeof(v) for n, v in bucket.items())
        return total

    def __len__(self) -> int:
        if not self._bits:
            return 0
        return sum(len(b) for b in self._by_len.values())

    # -- single lookups -------------------------------------------------
    def first_match(self, addr, /) -> int:
        if not self._bits:
            raise ValueError(NOT_BUILT)
        a = parse_address(addr, self._family)
        best = -1
        for length in self._lengths_desc:
            v = self._by_len[length].get(a & self._mask(length))
            if v is not None and (best < 0 or v < best):
                best = v
        return best

    def most_specific(self, addr, /) -> int:
        if not self._bits:
            raise ValueError(NOT_BUILT)
        a = parse_address(addr, self._family)
        for length in self._lengths_desc:
            v = self._by_len[length].get(a & self._mask(length))
            if v is not None:
                return v
        return -1

    def exact(self, network, length: int) -> int:
        """The value of exactly ``network/length``, or -1."""
        net, length = self._prefix(network, length)
        return self._by_len.get(length, {}).get(net, -1)

    def covering(self, addr) -> list[tuple[int, int, int]]:
        """Every prefix covering ``addr``: ``(network, length, value)``, shortest first."""
        if not self._bits:
            raise ValueError(NOT_BUILT)
        a = parse_address(addr, self._family)
        out = []
        for length in reversed(self._lengths_desc):
            net = a & self._mask(length)
            v = self._by_len[length].get(net)
            if v is not None:
                out.append((net, length, v))
        return out

    def covered_by(self, network, length: int) -> list[tuple[int, int, int]]:
        """Every prefix inside ``network/length`` (itself included), sorted by
        (network, length)."""
        net, length = self._prefix(network, length)
        mask = self._mask(length)
        out = [
            (n, ln, v)
            for ln, bucket in self._by_len.items() if ln >= length
            for n, v in bucket.items() if n & mask == net
        ]
        out.sort()
        return out

    def entries(self) -> list[tuple[int, int, int]]:
        """All entries, sorted by (network, length)."""
        return self.covered_by(0, 0)

    # -- batch lookups --------------------------------------------------
    def first_match_batch(self, packed, out=None):
        return self._batch(packed, out, self.first_match)

    def most_specific_batch(self, packed, out=None):
        return self._batch(packed, out, self.most_specific)

    def _batch(self, packed, out, fn):
        if out is not None:
            _check_int32(out)
        if not self._bits:
            raise ValueError(NOT_BUILT)
        width = self._bits // 8
        raw = memoryview(packed).cast("B")
        if len(raw) % width:
            raise ValueError(f"packed buffer length is not a multiple of {width}")
        n = len(raw) // width
        if out is None:
            out = array("i", bytes(4 * n))
        res = memoryview(out).cast("B").cast("i")
        if len(res) < n:
            raise ValueError("output buffer too small")
        if res.readonly:
            raise TypeError("output buffer is read-only")
        for i in range(n):
            res[i] = fn(int.from_bytes(raw[i * width:(i + 1) * width], "big"))
        return out
