"""xinetd ``only_from`` / ``no_access`` values: text -> address entries.

Spec C.3 (parse order per value) and C.4 (what each entry matches); the
facts come from xinetd 2.3.15.3 ``addr.c`` and were checked live (C.11).
A value is offered to five readers in order; the first that accepts it wins:

1. numeric   -- no ``/`` or ``{``; IPv6 when it holds ``:`` (exact match,
   ``::`` only matches ``::``; ``%scope``: a number, or an interface name on
   a link-local address only), else IPv4 in ``inet_aton`` syntax (``127.1``,
   octal, hex) whose *trailing zero octets are wildcards* (``10.0.0.0`` =
   /8, ``0.0.0.0`` = every IPv4 client);
2. host name -- ``.dom.ain`` (not only digits and dots) is a domain suffix;
   anything else must resolve now (any family) and is kept *as a name*;
3. ``addr/N`` -- unaligned is fine (both sides are masked); IPv4 N >= 32 is
   one host; IPv6 N >= 128 gives an entry that never matches, but N > 128
   also makes xinetd write the mask past its buffer (see
   :func:`v6_mask_overrun`: it may abort or hang at start);
4. factorized ``p.q.{a,b}`` -- the width of each element is set by the
   number of dots in the prefix (3: host, 2: /24, 1: /16, 0: /8); syntax
   errors here are *errors* (the service is disabled).  Four or more dots
   make xinetd shift by a negative count, undefined in C: Debian's amd64
   build shifts by the count modulo 32, as the CPU does, and keeps the
   service (``127.0.0.2.{0}`` is 127.0.0.0/8); acl computes the same
   (:func:`_shl32`; checked live in tests/xinetd/test_live_address.py);
5. network name (``getnetbyname``) with a classful mask.

A value no reader accepts is dropped with "failed to parse" (the list still
counts as present).  An empty value is ignored.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from acl.parse.hosts_patterns import v6_numeric

__all__ = ["AddrEntry", "AddrError", "parse_value", "inet_aton_exact", "c_strtoul",
           "v6_mask_overrun"]

_ALL32 = 0xFFFFFFFF
_DIGITS = frozenset("0123456789")


class AddrError(ValueError):
    """A value that makes xinetd fail the attribute (so disable the service)."""


@dataclass(frozen=True, slots=True)
class AddrEntry:
    """One parsed address entry.

    ``kind``: ``"v4"`` (addr/mask, 32-bit ints), ``"v6"`` (exact 128-bit
    addr), ``"v6net"`` (addr with ``length`` prefix bits), ``"host"`` /
    ``"domain"`` (``name``), ``"never"`` (IPv6 /128 and wider: matches nothing).
    """

    kind: str
    addr: int = 0
    mask: int = 0          # v4: the 32-bit mask; v6net: the prefix length; never: N
    name: str = ""
    text: str = ""
    path: str = ""         # where the value is written (set by the reader)
    line: int = 0

    def same_as(self, other: AddrEntry) -> bool:
        """xinetd's ``-=`` identity (addr.c ``xremove``): same name text
        (case-insensitive), or same family, address *and* mask."""
        if self.kind in ("host", "domain") or other.kind in ("host", "domain"):
            return (self.kind in ("host", "domain") and other.kind in ("host", "domain")
                    and self.name.lower() == other.name.lower())
        if self.kind == "never" or other.kind == "never":
            # xinetd compares an uninitialised name here; we treat the same
            # text as the same entry (documented difference, unverifiable).
            return self.kind == other.kind and self.text == other.text
        fam = {"v4": 4, "v6": 6, "v6net": 6}
        if fam[self.kind] != fam[other.kind]:
            return False
        if self.kind == "v4":
            return self.addr == other.addr and self.mask == other.mask
        return self.addr == other.addr and self._mask6() == other._mask6()

    def _mask6(self) -> int:
        if self.kind == "v6":
            return 0 if self.addr == 0 else (1 << 128) - 1
        return ((1 << self.mask) - 1) << (128 - self.mask) if self.mask else 0


def c_strtoul(text: str) -> tuple[int, int] | None:
    """C ``strtoul(s, &end, 10)`` as sscanf ``%u`` uses it: leading blanks, a
    sign, digits.  Returns (value mod 2**64, characters used) or None."""
    i = 0
    n = len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and text[i] in "+-":
        neg = text[i] == "-"
        i += 1
    start = i
    while i < n and "0" <= text[i] <= "9":
        i += 1
    if i == start:
        return None
    v = int(text[start:i])
    if v > (1 << 64) - 1:
        v = (1 << 64) - 1
    elif neg:
        v = (-v) % (1 << 64)
    return v, i


def inet_aton_exact(text: str) -> int | None:
    """glibc ``inet_aton`` with nothing allowed after the address (what
    getaddrinfo(AI_NUMERICHOST) uses): 1 to 4 parts, octal/hex, the last part
    filling the remaining bytes."""
    if not text or any(c.isspace() for c in text) or "\0" in text:
        return None
    try:
        packed = socket.inet_aton(text)
    except OSError:
        return None
    return int.from_bytes(packed, "big")


def _v4_trailing_mask(addr: int) -> int:
    # numeric_addr: the low all-zero octets are a wildcard; 0 itself is "any".
    if addr == 0:
        return 0
    mask = 0xFF
    while not addr & mask:
        mask = (mask << 8) | 0xFF
    return ~(mask >> 8) & _ALL32


def _inet_pton6(text: str) -> int | None:
    # numeric_addr / explicit_mask: getaddrinfo(AF_INET6, AI_NUMERICHOST).
    # glibc takes a "%scope" that is a number (< 2**32) on any address, but
    # an interface name only on link-local (and link/node-local multicast)
    # addresses: ``::1%lo`` fails to parse, ``fe80::1%lo`` and ``::1%1``
    # parse (live xinetd agreed).  The scope is then ignored.
    packed = v6_numeric(text)
    return None if packed is None else int.from_bytes(packed, "big")


def _numeric(value: str) -> AddrEntry | None:
    if "/" in value or "{" in value:
        return None
    if ":" in value:
        a = _inet_pton6(value)
        return None if a is None else AddrEntry("v6", a, 0, text=value)
    a = inet_aton_exact(value)
    if a is None:
        return None
    m = _v4_trailing_mask(a)
    return AddrEntry("v4", a, m, text=value)


def _only_digits_dots(value: str) -> bool:
    return all(c in "0123456789." for c in value)


def _host(value: str, resolver) -> AddrEntry | None:
    if "/" in value or "{" in value:
        return None
    if value.startswith("."):
        if not _only_digits_dots(value):
            return AddrEntry("domain", name=value[:255], text=value)
        return None
    if resolver is not None and resolver.resolves(value):
        return AddrEntry("host", name=value[:255], text=value)
    return None


def _explicit_mask(value: str) -> AddrEntry | None:
    if "{" in value:
        return None
    # sscanf("%45[^/]/%u"): 1..45 chars that are not '/', a '/', an unsigned.
    slash = value.find("/")
    if slash <= 0 or slash > 45:
        return None
    conv = c_strtoul(value[slash + 1:])
    if conv is None:
        return None
    bits = conv[0] & _ALL32
    addr_text = value[:slash]
    a = inet_aton_exact(addr_text) if ":" not in addr_text else None
    if a is not None:
        mask = _ALL32 if bits >= 32 else (~((1 << (32 - bits)) - 1)) & _ALL32
        return AddrEntry("v4", a, mask, text=value)
    a6 = _inet_pton6(addr_text)
    if a6 is None:
        return None
    if bits >= 128:
        return AddrEntry("never", a6, bits, text=value)
    return AddrEntry("v6net", a6, bits, text=value)


#: IPv6 ``addr/N``, N > 128: xinetd sets N mask bits in a 16-byte buffer on
#: its stack.  Debian's 2.3.15.3, measured (the bounds depend on its stack
#: layout): up to /640 it starts; from /641 glibc aborts it ("stack smashing
#: detected"); from about /81441 -- and /-1, which %u reads as 4294967295 --
#: it hangs at start, asleep, and never logs "Started working".
_OVERRUN_ABORT = 641
_OVERRUN_HANG = 81441


def v6_mask_overrun(entry: AddrEntry) -> str | None:
    """What the real xinetd does with an IPv6 ``addr/N`` whose N is over 128
    (a warning's text), or None for any other entry."""
    if entry.kind != "never" or entry.mask <= 128:
        return None
    n = entry.mask
    head = (f"IPv6 mask /{n} is over 128: xinetd 2.3.15.3 writes it past its 16-byte "
            "buffer and ")
    if n >= _OVERRUN_HANG:
        return head + "hangs at start (never \"Started working\"): no service runs"
    if n >= _OVERRUN_ABORT:
        return head + "aborts at start (\"stack smashing detected\"): no service runs"
    return head + "starts; the entry matches nothing"


def _shl32(value: int, count: int) -> int:
    """``value << count`` in xinetd's 32-bit arithmetic.  A negative count
    (four or more dots before '{') is undefined in C; the amd64 shift
    instruction Debian's build runs takes the count modulo 32."""
    return (value << (count & 31)) & _ALL32


def _factorized(value: str) -> list[AddrEntry] | None:
    """``p.q.{a,b}``; None = cannot parse; raises AddrError on a syntax error."""
    last = "."
    num = 0
    shift = 24
    addr = 0
    i = 0
    n = len(value)
    while True:
        if i >= n:
            return None                       # reached the end without '{'
        c = value[i]
        if c == "{":
            break
        if c in _DIGITS:
            num = (num * 10 + ord(c) - 48) & _ALL32
        elif c == ".":
            if last == ".":
                raise AddrError(f"Bad address: {value}. Consecutive dots")
            addr = (addr * 256 + num) & _ALL32
            num = 0
            shift -= 8
        else:
            return None
        last = c
        i += 1
    # four or more dots make shift (and shift + 8) negative: see _shl32
    if addr:
        addr = _shl32(addr, shift + 8)
    out = []
    num = 0
    last = ","
    j = i + 1
    while True:
        c = value[j] if j < n else "\0"
        if c in _DIGITS:
            num = (num * 10 + ord(c) - 48) & _ALL32
        elif c in ",}":
            if last == ",":
                raise AddrError(f"Bad address: {value}. Consecutive commas")
            mask = ~(_shl32(1, shift) - 1) & _ALL32
            out.append(AddrEntry("v4", (addr + _shl32(num, shift)) & _ALL32, mask, text=value))
            num = 0
            if c == "}":
                if j + 1 != n:
                    raise AddrError(f"Bad address: {value}")
                return out
        else:
            raise AddrError(f"Bad address: {value}")
        last = c
        j += 1


_CLASSFUL = ((0, 0xFF000000, 24), (0xFF, 0xFFFF0000, 16), (0xFFFF, 0xFFFFFF00, 8),
             (0xFFFFFF, 0xFFFFFFFF, 0))
_LIMITS = (0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF)


def _net(value: str, resolver) -> AddrEntry | None:
    if resolver is None:
        return None
    net = resolver.network(value)
    if not net:
        return None
    for k, (_lim, mask, sh) in enumerate(_CLASSFUL):
        if _LIMITS[k] < net <= _LIMITS[k + 1]:
            return AddrEntry("v4", (net << sh) & _ALL32, mask, text=value)
    return None


def parse_value(value: str, resolver) -> list[AddrEntry] | None:
    """Entries for one value; None when no reader accepts it ("failed to
    parse": dropped); raises :class:`AddrError` when xinetd fails the
    attribute.  The comma check is the caller's (it precedes this)."""
    if value == "":
        return []
    e = _numeric(value)
    if e is not None:
        return [e]
    e = _host(value, resolver)
    if e is not None:
        return [e]
    e = _explicit_mask(value)
    if e is not None:
        return [e]
    f = _factorized(value)
    if f is not None:
        return f
    e = _net(value, resolver)
    if e is not None:
        return [e]
    return None
