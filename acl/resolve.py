"""Client host names for hosts_access rules: pluggable lookups, libwrap's double check, a TTL cache.

Rules of this file (spec A.6; libwrap ``socket.c`` ``sock_hostname``):

* A v4-mapped address (``::ffff:a.b.c.d``) is looked up as IPv4.
* No PTR name                                   -> ``"unknown"``.
* The empty PTR name is a name like any other: glibc's ``files`` module
  reads an address alone on a hosts line as that address named ``""``
  (getnameinfo answers ``""``, and getaddrinfo("") finds those lines back),
  and libwrap keeps what it verified, so such a client is KNOWN (and
  LOCAL: no dot) with the name ``""``.  Only :func:`HostView.info
  <acl.compile.tcpw.HostView.info>` reads ``""`` otherwise: libwrap's
  ``eval_hostinfo`` takes an empty name for "not looked up" and shows the
  address.
* The PTR name is cut to ``NAME_LIMIT`` (127) characters: libwrap copies it
  into its ``host_info`` name, a ``STRING_LENGTH`` (128) byte buffer
  (``STRN_CPY``), and every check below reads the cut name.  A longer PTR
  name therefore fails its forward lookup (``"paranoid"``) unless the cut
  name itself resolves back to the address.
* The (cut) PTR name parses as a numeric address of the client's family
  (``getaddrinfo(AI_NUMERICHOST)``)             -> ``"paranoid"``.
* The forward lookup of that name fails         -> ``"paranoid"``.
* The forward canonical name differs from the PTR name (ignoring ASCII case)
  and the PTR name is not ``localhost``        -> ``"paranoid"``.
* The client address is not among the forward addresses -> ``"paranoid"``.
* Otherwise the PTR name, as the PTR gave it.

A *backend* answers three questions: ``reverse(family, packed) -> name | None``,
``forward(name, family) -> (canonical name, [packed, ...]) | None`` (each
address once; ``family`` 0 means both, then items are ``(family, packed)``)
and ``addrinfo(name, family)`` (the same, one item per getaddrinfo entry:
an address two lines give is there twice); for ``@group`` also
``innetgr(group, host)`` and ``netgroup_has_members(group)``.
:class:`SystemBackend` asks the C library (so ``/etc/nsswitch.conf`` rules);
:class:`HostsFileBackend` reads a private hosts file the way glibc's ``files``
module does, so tests never touch DNS.  A hosts file names hosts, not
netgroups: :func:`hosts_file_backend` (``acl match --hosts-file``, ``acl
check --hosts-file`` and ``[names] hosts_file`` use it) asks ``@group`` of
NSS, as libwrap does whatever answers its host names; a dict is a fixed
table (tests).

:func:`double_check` runs the check once and says which step failed, in
the terms of libwrap's warnings (``acl check`` repeats them, as tcpdchk
does); :meth:`Resolver.verify` keeps only its answer.

:class:`Resolver` caches verified names per address for ``ttl`` seconds
(``negative_ttl`` for "unknown"), at most ``max_entries`` of them, evicting
the least recently used.  Time is an argument (``now``), never read here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import threading
from collections import OrderedDict
from typing import NamedTuple

from acl.rulefiles import read_bytes
from acl.ucspi_addr import V4_MAPPED_PREFIX

UNKNOWN = "unknown"
_V6_LOOPBACK = b"\0" * 15 + b"\1"
_V4_LOOPBACK = b"\x7f\0\0\1"
PARANOID = "paranoid"
#: The longest name libwrap keeps: ``char name[STRING_LENGTH]`` (tcpd.h, 128)
#: holds 127 characters and the NUL (socket.c ``sock_hostname``, STRN_CPY).
NAME_LIMIT = 127

_NETGRENT_LOCK = threading.Lock()

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(s: str) -> str:
    return s.translate(_LOWER)


def numeric_address(text: str) -> tuple[int, bytes] | None:
    """``(family, packed)`` of a numeric address as a socket prints it."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return fam, socket.inet_pton(fam, text.split("%", 1)[0] if fam == socket.AF_INET6 else text)
        except (OSError, ValueError, UnicodeError):
            continue
    return None


def is_numeric_name(name: str, family: int) -> bool:
    """Whether ``getaddrinfo(name, AI_NUMERICHOST)`` accepts it for ``family``."""
    if not name or "\0" in name:
        return False
    try:
        socket.getaddrinfo(name.encode("latin-1", "replace"), None, family,
                           socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        return True
    except (OSError, ValueError, UnicodeError):
        return False


def _number(name: str, family: int):
    """What getaddrinfo makes of ``name`` before any lookup: None when it is
    no number, ``()`` when it is a number of the other family (EAI_ADDRFAMILY),
    else ``(name, items)`` -- items as :meth:`HostsFileBackend.addrinfo` gives
    them.  It is the C library's own parse (AI_NUMERICHOST asks nobody)."""
    try:
        infos = socket.getaddrinfo(name.encode("latin-1", "replace"), None, family,
                                   socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_CANONNAME)
    except socket.gaierror as exc:
        return () if exc.errno == socket.EAI_ADDRFAMILY else None
    except (OSError, ValueError, UnicodeError):
        return None
    items = []
    for fam, _, _, _, sa in infos:
        packed = socket.inet_pton(fam, sa[0].split("%", 1)[0])
        items.append(packed if family else (fam, packed))
    return (infos[0][3] or name, items)


def _each_once(hit):
    """An ``addrinfo`` answer as ``forward`` gives it: each address once."""
    if hit is None:
        return None
    found = []
    for item in hit[1]:
        if item not in found:
            found.append(item)
    return hit[0], found


class DoubleCheck(NamedTuple):
    """One run of libwrap's double check (``sock_hostname``) for one address.

    ``failure`` names the step that made the name "paranoid", or is None:

    * ``"numeric"``   -- the PTR name parses as an address ("host name/name
      mismatch: reverse lookup results in non-FQDN")
    * ``"forward"``   -- the PTR name does not resolve ("can't verify hostname")
    * ``"canonical"`` -- its official name is another ("host name/name mismatch")
    * ``"address"``   -- its addresses do not hold this one ("host name/address
      mismatch")
    """

    name: str               # the verified name, or UNKNOWN / PARANOID
    ptr: str | None = None  # the PTR name (cut to NAME_LIMIT), when there was one
    failure: str | None = None
    canonical: str | None = None    # the forward lookup's official name


def double_check(backend, family: int, packed: bytes) -> DoubleCheck:
    """libwrap's double check of one address (see the module rules)."""
    if family == socket.AF_INET6 and packed[:12] == V4_MAPPED_PREFIX:
        family, packed = socket.AF_INET, packed[12:]
    name = backend.reverse(family, packed)
    if name is None:
        return DoubleCheck(UNKNOWN)     # ("" is a name: module rules)
    name = name[:NAME_LIMIT]        # libwrap's buffer (module rules)
    if is_numeric_name(name, family):
        return DoubleCheck(PARANOID, name, "numeric")
    fwd = backend.forward(name, family)
    if fwd is None:
        return DoubleCheck(PARANOID, name, "forward")
    canon, addrs = fwd
    if _lower(canon or "") != _lower(name) and _lower(name) != "localhost":
        return DoubleCheck(PARANOID, name, "canonical", canon or "")
    if packed not in addrs:
        return DoubleCheck(PARANOID, name, "address", canon or "")
    return DoubleCheck(name, name)


class NetgroupTable:
    """Netgroups from a fixed table (``group -> host names``), for tests;
    host names compared ignoring ASCII case, as glibc's ``innetgr`` does."""

    def __init__(self, table: dict[str, set[str]]):
        self.table = table

    def innetgr(self, group: str, host: str) -> bool:
        return any(_lower(h) == _lower(host) for h in self.table.get(group, ()))

    def netgroup_has_members(self, group: str) -> bool:
        return bool(self.table.get(group))


class HostsFileBackend:
    """glibc ``files`` semantics over a private hosts file.

    * reverse: the first line holding the address; its first name.  A line
      holding an address alone names it ``""`` (glibc reads the missing
      official name as the empty string; module rules).
    * forward: every line naming the host (canonical name or alias, ASCII
      case ignored) in file order; the canonical name is that of the first.
    * An IPv4 question (``family`` AF_INET) also reads IPv6 lines as glibc's
      files module does for AF_INET: ``::ffff:a.b.c.d`` as a.b.c.d and
      ``::1`` as 127.0.0.1 (other IPv6 lines are skipped).  A question for
      both families (0) or for IPv6 reads every line as written.
    * A name getaddrinfo reads as a number (``10.0.0.1`` as the PTR name
      of an IPv6 address, ``10.1``) is never looked up in the file, as
      getaddrinfo never asks NSS about one: it is its own address, or no
      address at all when its family is not the one asked.
    * Entries come in file order.  glibc sorts a getaddrinfo answer for both
      families by RFC 3484 destination address selection, which depends on
      the machine's routes, so for a name with IPv4 and IPv6 lines it may
      give the same entries in another order.
    """

    def __init__(self, path: str | None = None, text: str | None = None,
                 netgroups=None):
        """``netgroups``: who answers ``@group`` -- an object with
        ``innetgr`` and ``netgroup_has_members`` (:class:`SystemBackend`:
        NSS), a dict (a :class:`NetgroupTable`), or None (no netgroups)."""
        if text is None:
            # a regular file only: a FIFO named here must not block (acl/rulefiles.py)
            text = read_bytes(path).decode("latin-1")
        self.entries: list[tuple[int, bytes, list[str]]] = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].split()
            if not line:
                continue
            addr = numeric_address(line[0])
            if addr is None or "%" in line[0]:
                continue
            # an address alone: the official name "" (class rules)
            self.entries.append((addr[0], addr[1], line[1:] or [""]))
        if netgroups is None or isinstance(netgroups, dict):
            netgroups = NetgroupTable(netgroups or {})
        self.netgroups = netgroups

    def _as(self, family: int):
        """``(fam, addr, names)`` of each line as a question for ``family`` reads it."""
        for fam, addr, names in self.entries:
            if family == socket.AF_INET and fam == socket.AF_INET6:
                if addr[:12] == V4_MAPPED_PREFIX:
                    fam, addr = socket.AF_INET, addr[12:]
                elif addr == _V6_LOOPBACK:
                    fam, addr = socket.AF_INET, _V4_LOOPBACK
            yield fam, addr, names

    def reverse(self, family: int, packed: bytes) -> str | None:
        for fam, addr, names in self._as(family):
            if fam == family and addr == packed:
                return names[0]
        return None

    def forward(self, name: str, family: int):
        return _each_once(self.addrinfo(name, family))

    def addrinfo(self, name: str, family: int = 0):
        """``getaddrinfo(name, family)`` over the file: the official name and
        one item per line naming ``name`` (the same address twice when two
        lines give it: glibc does not merge them), or None.  A ``name``
        getaddrinfo reads as a number is never looked up: it is its own
        address, or none when it is a number of the other family."""
        number = _number(name, family)
        if number is not None:
            return number or None
        low = _lower(name)
        canon = None
        found = []
        for fam, addr, names in self._as(family):
            if family and fam != family:
                continue
            if any(_lower(n) == low for n in names):
                if canon is None:
                    canon = names[0]
                found.append(addr if family else (fam, addr))
        return None if canon is None else (canon, found)

    def innetgr(self, group: str, host: str) -> bool:
        return self.netgroups.innetgr(group, host)

    def netgroup_has_members(self, group: str) -> bool:
        return self.netgroups.netgroup_has_members(group)


class SystemBackend:
    """The C library's resolver (``getnameinfo``/``getaddrinfo``, nsswitch)."""

    def __init__(self):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._innetgr = getattr(libc, "innetgr", None)
        if self._innetgr is not None:
            self._innetgr.argtypes = [ctypes.c_char_p] * 4
            self._innetgr.restype = ctypes.c_int
        self._netgrent = [getattr(libc, f, None) for f in
                          ("setnetgrent", "getnetgrent", "endnetgrent")]
        if None not in self._netgrent:
            self._netgrent[0].argtypes = [ctypes.c_char_p]
            self._netgrent[1].argtypes = [ctypes.POINTER(ctypes.c_char_p)] * 3
            self._netgrent[1].restype = ctypes.c_int

    def reverse(self, family: int, packed: bytes) -> str | None:
        text = socket.inet_ntop(family, packed)
        try:
            name, _ = socket.getnameinfo((text, 0), socket.NI_NAMEREQD)
        except (OSError, UnicodeError):
            return None
        return name

    def forward(self, name: str, family: int):
        return _each_once(self.addrinfo(name, family))

    def addrinfo(self, name: str, family: int = 0):
        """``getaddrinfo(name, family, SOCK_STREAM, AI_CANONNAME)``: the
        official name ("" when none) and one item per entry, in the C
        library's order, or None."""
        try:
            infos = socket.getaddrinfo(name.encode("latin-1", "replace"), None, family,
                                       socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
        except (OSError, ValueError, UnicodeError):
            return None
        if not infos:
            return None
        found = []
        for fam, _, _, _, sa in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            packed = socket.inet_pton(fam, sa[0].split("%", 1)[0])
            found.append(packed if family else (fam, packed))
        return (infos[0][3] or "", found)

    def innetgr(self, group: str, host: str) -> bool:
        if self._innetgr is None:
            return False
        return bool(self._innetgr(group.encode("latin-1", "replace"),
                                  host.encode("latin-1", "replace"), None, None))

    def netgroup_has_members(self, group: str) -> bool:
        """Whether ``getnetgrent`` yields a first member of ``group`` (tcpdchk's
        test for "unknown or empty netgroup")."""
        if None in self._netgrent:
            return False
        start, get, end = self._netgrent
        host, user, domain = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_char_p()
        # the C library keeps one netgroup walk per process
        with _NETGRENT_LOCK:
            start(group.encode("latin-1", "replace"))
            try:
                return get(ctypes.byref(host), ctypes.byref(user), ctypes.byref(domain)) != 0
            finally:
                end()


def hosts_file_backend(path: str | None = None, text: str | None = None) -> HostsFileBackend:
    """A private hosts file as acl's commands and ``[names] hosts_file``
    read it: the file for host names and addresses, NSS for ``@group``."""
    return HostsFileBackend(path, text, netgroups=SystemBackend())


class Resolver:
    """Verified host names per address, cached with a bounded TTL cache."""

    def __init__(self, backend=None, *, ttl: float = 300.0, negative_ttl: float = 60.0,
                 max_entries: int = 10000):
        self.backend = backend if backend is not None else SystemBackend()
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.lookups = 0        # backend double checks done (cache misses)
        self.evictions = 0

    def hostname(self, addr: str, now: float = 0.0) -> str:
        """The verified name of ``addr``, or "unknown" / "paranoid"."""
        hit = self._cache.get(addr)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(addr)
            return hit[1]
        name = self.verify(addr)
        ttl = self.negative_ttl if name == UNKNOWN else self.ttl
        self._cache[addr] = (now + ttl, name)
        self._cache.move_to_end(addr)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.evictions += 1
        return name

    def verify(self, addr: str) -> str:
        """libwrap's double check, uncached (see the module rules)."""
        self.lookups += 1
        parsed = numeric_address(addr)
        if parsed is None:
            return UNKNOWN
        return double_check(self.backend, *parsed).name

    def addresses(self, name: str) -> list[str]:
        """Forward lookup of a host name given on a command line (both
        families): one address per getaddrinfo entry, as tcpdmatch's
        ``find_inet_addr`` walks them -- an address two hosts lines give is
        there twice, and tcpdmatch answers for it twice."""
        hit = self.backend.addrinfo(name, 0)
        if hit is None:
            return []
        return [socket.inet_ntop(fam, packed) for fam, packed in hit[1]]

    def innetgr(self, group: str, host: str) -> bool:
        return self.backend.innetgr(group, host)
