"""tcpdchk's name checks for ``acl check``: what the name service says about
the hosts a hosts.allow/hosts.deny pair names.

Rules of this file (Debian tcpd 7.6.q: tcpdchk.c ``check_host``,
scaffold.c ``find_inet_addr``/``check_dns``, libwrap socket.c
``sock_hostname``; proven against the real tcpdchk by
tests/tcpw/test_names_vs_tcpdchk.py):

* Which tokens are asked about: the host part of every client token (after
  ``user@``) and of every ``daemon@host``, in tcpdchk's order: ``@group``
  -> the netgroup database; ``/file`` -> every pattern in the file,
  recursively, each reported at its own line of that file; ``net/mask``,
  FAIL, the reserved words (any case), a valid ``[v6]``, ``.suffix``,
  ``prefix.``, 0.0.0.0 and 255.255.255.255 -> nothing; any other token ->
  :func:`find_addresses`, numbers included.
* Not asked, unlike tcpdchk: a token holding ``*`` or ``?`` (a wildcard of
  Debian's patch, which tcpdchk predates: it says "host not found" of
  every one, yet libwrap never looks one up), an empty host and an empty
  ``@`` (the lint already says they never match).
* :func:`find_addresses` makes tcpdchk's two calls: ``getaddrinfo(token,
  NULL, {AF_UNSPEC, SOCK_STREAM, AI_PASSIVE | AI_NUMERICHOST})`` -- a
  number (any ``inet_aton`` form: ``192.168.1`` is 192.168.0.1) is its own
  address -- else the same with ``AI_CANONNAME``, which the backend makes
  (``addrinfo``: :class:`acl.resolve.SystemBackend`'s is that C call
  without ``AI_PASSIVE``, which getaddrinfo(3) ignores when a host is
  given): failure is "host not found"; an official name other than the
  token (ASCII case ignored) is a "hostname alias", which never matches
  (libwrap compares the name the double check verified, the official
  one).  Both families are asked, so an IPv6-only name is found.  Python's
  ``socket.getaddrinfo`` is the C call, so both programs get the same
  answers.
* The backend is the system resolver, or with a hosts file (``acl check
  --hosts-file``) the one ``acl match --hosts-file`` reads it with
  (:func:`acl.resolve.hosts_file_backend`).  That file alone then answers
  every name and address question, as glibc's ``files`` module would with
  the file as /etc/hosts and no other host source (``hosts: files``): one
  address per line naming the host, the same one twice when two lines
  give it (getaddrinfo keeps both, so tcpdchk counts two for a
  daemon@host); the numeric step is unchanged (it asks nobody).  Netgroups
  are still asked of the system (NSS): a hosts file names hosts, not
  netgroups.
* Every address found then gets libwrap's double check
  (:func:`acl.resolve.double_check`): no PTR name is "no name"; a failed
  step is reported in libwrap's terms (non-FQDN, can't verify, name/name
  or name/address mismatch).  An address alone on a hosts line has the
  name ``""``, which passes: nothing is said of it, as tcpdchk says
  nothing.
* ``daemon@NAME`` whose name has more than one address (getaddrinfo
  entries: an IPv4 and an IPv6 address count two) is reported.
* ``@group`` with no first member (``setnetgrent``/``getnetgrent``) is
  "unknown or empty"; it matches no host.
* Each distinct token (ASCII case ignored), address and netgroup is asked
  once per run; the answer is reported at every token that names it.
* Time is bounded: at most WORKERS host questions at once, all under one
  deadline (``timeout``).  A question still unanswered then is reported as
  not checked, and the rest are not asked.  Why: a dead DNS server holds
  tcpdchk for the resolver's whole timeout per name, one name after the
  other -- minutes for a long file.  The C library cannot cancel a lookup,
  so the threads left waiting are daemons that end with the command.
* Netgroups are asked on one thread of their own, under the same deadline,
  never queued behind host questions: they come from NSS's netgroup
  database (files, NIS, LDAP), not from DNS, so a dead DNS server holding
  every host worker must not leave them unchecked.  One thread is enough:
  the C library walks one netgroup at a time per process
  (acl.resolve ``_NETGRENT_LOCK``).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from acl.compile.tcpw import HostsAccessLayer
from acl.errors import Diagnostic, Severity
from acl.parse.hosts_access import HostsRule, read_pattern_file
from acl.parse.hosts_patterns import MAX_FILE_DEPTH, ascii_lower, not_inaddr, split_at, v6_numeric
from acl.resolve import UNKNOWN, DoubleCheck, SystemBackend, double_check
from acl.ucspi_addr import V4_MAPPED_PREFIX
from acl.workers import DaemonPool

W = Severity.WARNING
WORKERS = 8
DEFAULT_TIMEOUT = 10.0
#: tcpdchk prints an official name with ``%.*s``, STRING_LENGTH (128)
STRING_LENGTH = 128
_RESERVED = ("fail", "unknown", "known", "paranoid", "all", "local")
_FILE_WORD = re.compile(r"[^ \t\n\v\f\r]+")    # fscanf("%s"), as hosts_patterns reads it
_TIMEOUT = object()


@dataclass(frozen=True, slots=True)
class Mention:
    """A host token the name service is asked about, and where it is."""

    path: str
    line: int
    column: int
    text: str               # the host part as written
    kind: str               # "name" or "netgroup"
    server: bool = False    # the host of a daemon@host
    via: str = ""           # "hosts.allow:3" for a pattern inside a /file


@dataclass(frozen=True, slots=True)
class Found:
    """What :func:`find_addresses` learnt of one token."""

    numeric: bool
    canonical: str | None           # official name (None for a number)
    addresses: tuple                # (family, packed) per getaddrinfo entry
    checks: tuple = ()              # a Future of DoubleCheck per address


def find_addresses(text: str, backend) -> Found | None:
    """tcpdchk's ``find_inet_addr``: what ``backend`` (acl/resolve.py) knows
    of ``text`` (no checks yet), or None when the name is not found."""
    numbers = _numbers(text)
    if numbers:
        return Found(True, None, numbers)
    hit = backend.addrinfo(text)        # every entry, as getaddrinfo gives them
    return Found(False, hit[0], tuple(hit[1])) if hit and hit[1] else None


def _numbers(text: str) -> tuple:
    """The addresses of ``text`` read as a number (AI_NUMERICHOST: nobody
    is asked), or () when it is none."""
    try:
        infos = socket.getaddrinfo(text.encode("latin-1", "replace"), None, socket.AF_UNSPEC,
                                   socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return ()
    return tuple((fam, socket.inet_pton(fam, sa[0].split("%", 1)[0]))
                 for fam, _, _, _, sa in infos if fam in (socket.AF_INET, socket.AF_INET6))


def lookup_kind(text: str) -> str | None:
    """What tcpdchk's ``check_host`` does with a host token, as far as the
    name service goes: "netgroup", "file", "name" or None (see the rules)."""
    if text.startswith("@"):
        return "netgroup" if len(text) > 1 else None
    if text.startswith("/"):
        return "file"
    if not text or split_at(text, "/") is not None or ascii_lower(text) in _RESERVED:
        return None
    if text.startswith("[") and text.endswith("]") and v6_numeric(text[1:-1]) is not None:
        return None
    if "*" in text or "?" in text or text.startswith(".") or text.endswith("."):
        return None
    if text in ("0.0.0.0", "255.255.255.255"):
        return None
    return "name"


def _words(tokens):
    return [t for t in tokens if ascii_lower(t.text) != "except"]


def mentions(layer: HostsAccessLayer, read_file=read_pattern_file) -> list[Mention]:
    """Every token of the pair that tcpdchk looks up, in file order."""
    out: list[Mention] = []

    def visit(text, path, line, col, server, via, depth):
        kind = lookup_kind(text)
        if kind == "file":
            body = read_file(text) if depth < MAX_FILE_DEPTH else None
            for m in _FILE_WORD.finditer(body or ""):
                start = m.start()
                visit(m.group().split("\0", 1)[0], text, body.count("\n", 0, start) + 1,
                      start - body.rfind("\n", 0, start), server, via, depth + 1)
        elif kind is not None:
            out.append(Mention(path, line, col, text, kind, server, via))

    for rule in layer.rules:
        for tok in _words(rule.daemon_tokens):
            parts = split_at(tok.text, "@", 1)
            if parts is not None:
                _visit_token(rule, tok, parts, True, visit)
        for tok in _words(rule.client_tokens):
            _visit_token(rule, tok, split_at(tok.text, "@", 1), False, visit)
    return out


def _visit_token(rule: HostsRule, tok, parts, server: bool, visit) -> None:
    host, skip = (tok.text, 0) if parts is None else (parts[1], len(parts[0]) + 1)
    line, col = rule.where(tok.offset + skip)
    via = f"{rule.path}:{rule.line}" if host.startswith("/") else ""
    visit(host, rule.path, line, col, server, via, 0)


class NameLookups:
    """Each distinct question asked once, on a few threads, under one deadline
    that starts when this object is made.  ``backend`` answers them
    (acl/resolve.py; default: the system's)."""

    def __init__(self, backend=None, *, timeout: float = DEFAULT_TIMEOUT,
                 workers: int = WORKERS):
        self.backend = backend if backend is not None else SystemBackend()
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._pool = DaemonPool(workers, "acl-check-names")
        self._group_pool = DaemonPool(1, "acl-check-netgroups")   # see the module rules
        self._lock = threading.Lock()
        self._names: dict[str, Future] = {}
        self._addresses: dict[tuple, Future] = {}
        self._groups: dict[str, Future] = {}

    def _once(self, table: dict, key, fn, *args, pool: DaemonPool | None = None) -> Future:
        with self._lock:
            f = table.get(key)
            if f is None:
                f = table[key] = (pool or self._pool).submit(fn, *args)
            return f

    def name(self, text: str) -> Future:
        return self._once(self._names, ascii_lower(text), self._find, text)

    def netgroup(self, group: str) -> Future:
        return self._once(self._groups, group, self.backend.netgroup_has_members, group,
                          pool=self._group_pool)

    def _find(self, text: str) -> Found | None:
        found = find_addresses(text, self.backend)
        if found is None:
            return None
        # the double checks queue behind the lookups already submitted
        checks = tuple(self._once(self._addresses, a, double_check, self.backend, *a)
                       for a in found.addresses)
        return Found(found.numeric, found.canonical, found.addresses, checks)

    def result(self, f: Future):
        """The answer, ``_TIMEOUT`` once the deadline has passed, None when
        the lookup itself failed."""
        try:
            return f.result(timeout=max(self._deadline - time.monotonic(), 0.0))
        except TimeoutError:
            return _TIMEOUT
        except Exception:       # noqa: BLE001 -- a failed lookup found nothing
            return None

    def close(self) -> None:
        """Ask nothing more: questions still queued are dropped (the threads
        still waiting for the resolver are daemons: acl/workers.py)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._group_pool.shutdown(wait=False, cancel_futures=True)


def _unmapped(fam: int, packed: bytes) -> tuple[int, bytes]:
    if fam == socket.AF_INET6 and packed[:12] == V4_MAPPED_PREFIX:
        return socket.AF_INET, packed[12:]
    return fam, packed


def _check_message(who: str, fam: int, packed: bytes, c: DoubleCheck) -> str | None:
    """The finding for one address's double check, or None when it passed."""
    if c.name == UNKNOWN:
        # tcpdchk prints the address as found (a mapped one stays mapped)
        return (f"{who}: host address {socket.inet_ntop(fam, packed)} has no name "
                "(address->name lookup failed)")
    fam, packed = _unmapped(fam, packed)        # libwrap checks a mapped address as IPv4
    addr = socket.inet_ntop(fam, packed)
    canon = (c.canonical or "")[:STRING_LENGTH]
    paranoid = "libwrap calls such a client paranoid"
    if c.failure == "numeric":
        return f"{who}: host address {addr} has the numeric name {c.ptr} (non-FQDN: {paranoid})"
    if c.failure == "forward":
        family = "AF_INET" if fam == socket.AF_INET else "AF_INET6"
        return (f"{who}: host address {addr} has the name {c.ptr}, which does not resolve "
                f"({family}: can't verify, {paranoid})")
    if c.failure == "canonical":
        return (f"{who}: host address {addr} has the name {c.ptr}, whose official name is "
                f"{canon} (name/name mismatch: {paranoid})")
    if c.failure == "address":
        return (f"{who}: host address {addr} has the name {c.ptr}, which does not resolve to it "
                f"(official name {canon}; name/address mismatch: {paranoid})")
    return None


def name_findings(layer: HostsAccessLayer, lookups: NameLookups | None = None,
                  read_file=read_pattern_file) -> list[Diagnostic]:
    """Every name finding for the pair (see the module rules)."""
    lookups = lookups if lookups is not None else NameLookups()
    found = mentions(layer, read_file)
    futures = [lookups.netgroup(m.text[1:]) if m.kind == "netgroup" else lookups.name(m.text)
               for m in found]
    out: list[Diagnostic] = []
    late = f"the resolver did not answer within {lookups.timeout:g} s"
    try:
        for m, f in zip(found, futures, strict=True):
            tail = f" [in a pattern file named at {m.via}]" if m.via else ""

            def say(msg, m=m, tail=tail):
                out.append(Diagnostic(m.path, m.line, m.column, msg + tail, W))

            answer = lookups.result(f)
            if answer is _TIMEOUT:
                say(f"{m.text}: not checked: {late}")
            elif m.kind == "netgroup":
                if not answer:
                    say(f"{m.text}: unknown or empty netgroup (it matches no host)")
            elif answer is None:
                say(f"{m.text}: host not found (no address: the pattern matches no host)")
            else:
                _report_found(m, answer, lookups, say, late)
    finally:
        lookups.close()
    return out


def _report_found(m: Mention, answer: Found, lookups: NameLookups, say, late: str) -> None:
    if not answer.numeric:
        canon = answer.canonical
        if not canon:
            say(f"{m.text}: hostname alias with no official name from the resolver")
        elif ascii_lower(canon) != ascii_lower(m.text):
            canon = canon[:STRING_LENGTH]
            say(f"{m.text}: hostname alias of {canon} (libwrap matches official names: "
                f"write {canon})")
    for (fam, packed), cf in zip(answer.addresses, answer.checks, strict=True):
        c = lookups.result(cf)
        if c is _TIMEOUT:
            say(f"{m.text}: host address {socket.inet_ntop(fam, packed)} not checked: {late}")
        elif c is not None:
            msg = _check_message(m.text, fam, packed, c)
            if msg:
                say(msg)
    if m.server and not_inaddr(m.text) and len(answer.addresses) > 1:
        say(f"{m.text}: server host has {len(answer.addresses)} addresses "
            "(consider naming one address instead)")
