"""hosts.allow + hosts.deny -> one layer: prefix tables plus a residual program.

Theory of operation (spec A.1, D.1.1):

* libwrap's answer is the *first* matching line of hosts.allow, then of
  hosts.deny, else grant.  Rules are numbered in that order (allow lines
  first), so the answer is the matching rule with the lowest number.
* A rule is *pure* when its daemon list is plain names or ``ALL`` and its
  client list is address-shaped patterns (exact dotted quads, ``a.b.c.``
  textual prefixes, contiguous ``net/mask``, ``[v6]``, ``[v6]/len``, ``ALL``,
  ``/files`` of those), neither with ``EXCEPT``.  For a client whose address
  is in the form a socket prints, a pure rule matches exactly when one of its
  prefixes covers the address; so pure rules go into per-daemon
  :class:`acl.core.PrefixTable` s (first-match: the lowest rule number).
  Each daemon's table also holds the ``ALL`` rules, so a decision is one
  lookup (two when that copy would be too big).
* Every other rule (host names, ``.domain``, globs, ``LOCAL``, ``KNOWN``,
  ``EXCEPT``, ``user@``, ``daemon@host``, ports, non-contiguous masks...) is
  *residual*: kept in rule order and interpreted, but only the residual rules
  numbered below the best pure candidate are tried, and the scan stops at the
  first that matches.  The cost of a decision therefore does not grow with
  the number of pure rules.  With no resolver and no name from the caller
  the client's name is "unknown", so residual rules that can only match a
  known name (``.domain``, host names, ``LOCAL``, ``KNOWN``...) are left out
  of that scan (:func:`acl.compile.tcpw_residual.needs_a_name`).
* Clients not in socket form (``unknown``, ``010.0.0.1`` typed into
  ``acl match``, scoped IPv6, 255.255.255.255) take the interpreter over all
  rules: textual patterns then mean what libwrap's string compares mean.
* libwrap keeps the daemon name, the client and server names and the remote
  user in ``STRING_LENGTH`` (128) byte buffers (``request_set``,
  ``sock_hostname``: ``STRN_CPY``), so each is cut to ``NAME_LIMIT`` (127)
  characters before any rule reads it: a rule naming the whole longer name
  never matches, one naming its first 127 characters does.
* The deciding rule's options decide the verdict (A.8): ``allow``/``deny``/
  ``twist`` last, or an option error (deny).  A hosts.deny that ends in an
  error (no final newline, line too long, unreadable) denies every client no
  earlier rule matched (A.1.5).
* Objects per rule (a fail2ban/DenyHosts file is 200,000 one-address
  lines): a *compact* line (acl.parse.hosts_access: one physical line, no
  options, prefixes only) is compiled from the table's columns, with no
  HostsRule made.  ``rules``, ``decisions`` and ``shapes`` are sequences that
  make an item when asked (:class:`BothFiles`, :class:`StaticDecisions`,
  :class:`ShapeColumn`); ``decisions[i]`` is then kept, so the same rule
  always answers with the same Decision object.  ``pure`` and ``dynamic``
  are lists of shared bools.  None of these refers back to the layer: a
  replaced layer must go with its reference count, since a reload now makes
  too few objects to bring the cyclic collector's full pass soon.
* The one client not in socket form that a server sends (any client of the
  query socket may) is the broadcast address, 255.255.255.255: libwrap
  takes it for no number, so only textual patterns match it -- written with
  ``255.`` in them.  Its scan tries the full rules and the compact lines
  holding ``255.`` (:meth:`HostsRules.compact_holding`), not every line:
  else one such request would make every rule of a 200,000-line file (10 s,
  and the memory all of this saves) and call each on every later one.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import sys
from array import array
from dataclasses import replace

from acl.compile.tcpw_residual import needs_a_name, rule_fn, uses_netgroups
from acl.core import PrefixTable, hosts_scan
from acl.errors import Diagnostic, RuleSyntaxError, Severity
from acl.model import GRANT_BY_DEFAULT, Decision, Location, Reason, Request, Verdict
from acl.parse.hosts_access import HostsRule, HostsTable, read_hosts
from acl.parse.hosts_options import NO_OPTIONS, setenv_name_ok
from acl.parse.hosts_patterns import (
    AllWord,
    Exact,
    ascii_lower,
    dot_quad_addr,
    hostname_known,
    subject_key,
    v6_numeric,
)
from acl.parse.hosts_prefixes import RulePrefixes
from acl.resolve import NAME_LIMIT

UNKNOWN = "unknown"
_OK_CHARS = frozenset("1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HostView:
    """One endpoint as libwrap's ``host_info``: address now, name on demand.

    The normalised forms the patterns compare with are computed once, on
    first use (see :mod:`acl.parse.hosts_patterns`).
    """

    __slots__ = ("addr", "_name", "_resolver", "_now", "looked_up", "_akey", "_nkey", "_v4",
                 "_v6", "_nums")

    def __init__(self, addr: str, name: str | None, resolver, now: float):
        self.addr = addr
        # a name given (caller, tcpdmatch argument) is cut as libwrap's
        # request_set cuts it; a looked-up one is cut by the resolver
        self._name = name if name is None or len(name) <= NAME_LIMIT else name[:NAME_LIMIT]
        self._resolver = resolver
        self._now = now
        self.looked_up = name is not None
        self._akey = self._nkey = None
        self._nums = False

    @property
    def name(self) -> str:
        if self._name is None:
            self.looked_up = True
            if self._resolver is None or self.addr == UNKNOWN:
                self._name = UNKNOWN
            else:
                self._name = self._resolver.hostname(self.addr, self._now)
        return self._name

    @property
    def akey(self) -> str:
        if self._akey is None:
            self._akey = subject_key(self.addr)
        return self._akey

    @property
    def nkey(self) -> str:
        if self._nkey is None:
            self._nkey = subject_key(self.name)
        return self._nkey

    def _numbers(self) -> None:
        addr = self.addr
        v4 = dot_quad_addr(addr)
        mapped = len(addr) > 7 and ascii_lower(addr[:7]) == "::ffff:" \
            and dot_quad_addr(addr[7:]) is not None
        if v4 is None and mapped:
            v4 = dot_quad_addr(addr[7:])
        packed = None if mapped else v6_numeric(addr)
        self._v4 = v4
        self._v6 = None if packed is None else int.from_bytes(packed, "big")
        self._nums = True

    @property
    def v4(self) -> int | None:
        """The address as ``masked_match4`` reads it (after ``::ffff:`` if need be)."""
        if not self._nums:
            self._numbers()
        return self._v4

    @property
    def v6(self) -> int | None:
        """The address as ``masked_match6`` reads it; None for a mapped dotted quad."""
        if not self._nums:
            self._numbers()
        return self._v6

    def innetgr(self, group: str, name: str) -> bool:
        if self._resolver is None:
            return False
        return self._resolver.innetgr(group, name)

    def info(self) -> str:
        """``eval_hostinfo``: the name if already looked up and known, else
        the address.  The empty name (an address alone on a hosts line,
        acl/resolve.py) shows the address too: libwrap reads an empty name
        buffer as "not looked up"."""
        if self.looked_up and self.name and hostname_known(self.name):
            return self.name
        return self.addr


class Query:
    """What a rule is matched against: daemon, client, server, user."""

    __slots__ = ("daemon", "client", "server", "server_sin", "server_port", "user",
                 "client_port", "pid", "dkey", "ukey")

    def __init__(self, daemon: str, client: HostView, server: HostView, *, server_sin: bool,
                 server_port: int = 0, user: str = UNKNOWN, client_port: int = 0, pid: int = 0,
                 dkey: str | None = None):
        if len(daemon) > NAME_LIMIT:         # libwrap's request_set (module rules)
            daemon, dkey = daemon[:NAME_LIMIT], None
        if len(user) > NAME_LIMIT:
            user = user[:NAME_LIMIT]
        self.daemon = daemon
        self.client = client
        self.server = server
        self.server_sin = server_sin
        self.server_port = server_port
        self.user = user
        self.client_port = client_port
        self.pid = pid
        self.dkey = subject_key(daemon) if dkey is None else dkey
        self.ukey = UNKNOWN if user is UNKNOWN else subject_key(user)

    @classmethod
    def from_request(cls, request: Request, resolver, now: float, dkey: str | None = None) -> Query:
        client = HostView(request.client or UNKNOWN, request.host, resolver, now)
        if request.server:
            return cls(request.service, client, HostView(request.server, None, resolver, now),
                       server_sin=True, server_port=request.server_port,
                       user=request.user or UNKNOWN, client_port=request.client_port, dkey=dkey)
        return cls(request.service, client, HostView(UNKNOWN, UNKNOWN, None, now),
                   server_sin=False, server_port=request.server_port,
                   user=request.user or UNKNOWN, client_port=request.client_port, dkey=dkey)


def percent_expand(text: str, q: Query) -> str:
    """``percent_x``: %a %A %c %d %h %H %n %N %p %r %R %s %u %% (A.9), lazily, left to right."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 1 < n:
            code = text[i + 1]
            i += 2
            if code == "a":
                val = q.client.addr
            elif code == "A":
                val = q.server.addr
            elif code == "c":
                info = q.client.info()
                val = f"{q.user}@{info}" if ascii_lower(q.user) != UNKNOWN else info
            elif code == "d":
                val = q.daemon
            elif code == "h":
                val = q.client.info()
            elif code == "H":
                val = q.server.info()
            elif code == "n":
                val = q.client.name
            elif code == "N":
                val = q.server.name
            elif code == "p":
                val = str(q.pid)
            elif code == "r":
                val = str(q.client_port)
            elif code == "R":
                val = str(q.server_port)
            elif code == "s":
                host = q.server.info()
                val = q.daemon if ascii_lower(host) == UNKNOWN else f"{q.daemon}@{host}"
            elif code == "u":
                val = q.user
            elif code == "%":
                val = "%"
            else:
                val = ""
            out.append("".join(c if c in _OK_CHARS else "_" for c in val))
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_INET_PTON = socket.inet_pton
_AFS = (socket.AF_INET, socket.AF_INET6)
_BROADCAST = "255.255.255.255"
_BROADCAST_FORMS = (_BROADCAST, "::ffff:" + _BROADCAST)
INVALID = -2


def _socket_form(client: str) -> tuple[int, str] | None:
    """``(slot, text)``: slot 0 for IPv4 (a v4-mapped client as its dotted
    quad), 1 for IPv6, when ``client`` may be an address in the form a socket
    prints it; None when it certainly is not.  The prefix core parses the
    text (strictly, like ``inet_pton``) and rejects what is not."""
    if "%" in client:
        return None
    if ":" not in client:
        return None if client == _BROADCAST else (0, client)
    if "." in client and client[:7].lower() == "::ffff:":
        rest = client[7:]
        return None if rest == _BROADCAST else (0, rest)
    return 1, client


def daemon_keys(daemons) -> set | None:
    """The lower-cased daemon names a list without EXCEPT matches, ``{None}``
    for ALL; None when it holds anything else (``@host`` parts, ports,
    wildcards, KNOWN...), which only interpretation can answer."""
    keys: set = set()
    for tok in daemons.head:
        if tok.host is not None:
            return None
        if isinstance(tok.daemon, AllWord):
            return {None}
        if not isinstance(tok.daemon, Exact):
            return None
        keys.add(tok.daemon.text)
    return keys


def client_prefixes(clients, *, users: bool) -> list | None:
    """The address prefixes covering every client a list's head can match, or
    None when a pattern is not address-shaped.  ``users=False`` refuses
    ``user@host`` tokens (their ident part is not a prefix question)."""
    prefixes = []
    for tok in clients.head:
        if tok.user is not None and not users:
            return None
        p = tok.host.prefixes()
        if p is None:
            return None
        prefixes.extend(p)
    return prefixes


def daemon_gate(rule: HostsRule) -> frozenset | None:
    """The daemon keys a rule can match when its daemon list is plain names
    (a cheap filter before interpreting it); None when anything may match."""
    if rule.daemons.tail is not None:
        return None
    keys = daemon_keys(rule.daemons)
    return None if keys is None or None in keys else frozenset(keys)


def pure_shape(rule: HostsRule, keys_of: dict | None = None):
    """``(daemon keys, RulePrefixes)`` when ``rule`` is pure, else None.

    daemon keys: lower-cased names, or ``{None}`` for ALL.  A client list the
    parser's fast lane read is prefixes already (and never has EXCEPT).
    ``keys_of`` caches daemon keys by daemon list (the parser shares one
    list object among the lines that write the same daemon field).
    """
    d = rule.daemons
    if d.tail is not None or not d.head:
        return None
    if rule.scanned is not None:
        keys = daemon_keys(d) if keys_of is None else _keys_of(d, keys_of)
        return None if keys is None else (keys, rule.scanned)
    c = rule.clients
    if c.tail is not None or not c.head:
        return None
    keys = daemon_keys(d)
    prefixes = None if keys is None else client_prefixes(c, users=False)
    return None if prefixes is None else (keys, RulePrefixes.from_tuples(prefixes))


def _keys_of(daemons, keys_of: dict) -> set | None:
    """``daemon_keys`` of a daemon list without EXCEPT, cached by list (the
    parser shares one list object among the lines of one daemon field)."""
    if daemons.tail is not None:
        return None
    got = keys_of.get(id(daemons))
    if got is None:
        got = keys_of[id(daemons)] = (daemons, daemon_keys(daemons))   # holding it keeps its id
    return got[1]


class BothFiles:
    """``layer.rules``: hosts.allow's rules then hosts.deny's, as one
    sequence (a rule is made when asked for: acl.parse.hosts_access)."""

    __slots__ = ("_allow", "_deny", "_n_allow")

    def __init__(self, allow, deny) -> None:
        self._allow, self._deny, self._n_allow = allow, deny, len(allow)

    def __len__(self) -> int:
        return self._n_allow + len(self._deny)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("rule index out of range")
        rules, j = self.file_of(i)
        return rules[j]

    def __iter__(self):
        yield from self._allow
        yield from self._deny

    def file_of(self, i: int) -> tuple:
        """``(that file's HostsRules, the rule's number there)`` for rule ``i``."""
        return (self._allow, i) if i < self._n_allow else (self._deny, i - self._n_allow)

    def prefixes(self, i: int) -> RulePrefixes:
        """A compact rule's prefixes, without making its HostsRule."""
        rules, j = self.file_of(i)
        return rules.prefixes(j)

    def n_prefixes(self, i: int) -> int:
        """How many prefixes compact rule ``i`` has."""
        rules, j = self.file_of(i)
        return rules.n_prefixes(j)


class StaticDecisions:
    """``layer.decisions[i]``: rule ``i``'s Decision when its options expand
    nothing at decision time, made on first need and kept (most rules of a
    large file never decide anything).  It holds the two files' rules, not
    the layer: no reference cycle, so a replaced policy is freed by its
    reference count at once, not at the cyclic collector's next full pass
    (which a reload that makes few objects may not bring for a long time)."""

    __slots__ = ("_allow", "_deny", "_n_allow", "_made")

    def __init__(self, allow, deny) -> None:
        self._allow, self._deny, self._n_allow = allow, deny, len(allow)
        self._made: list = [None] * (len(allow) + len(deny))

    def __len__(self) -> int:
        return len(self._made)

    def __getitem__(self, i: int) -> Decision:
        got = self._made[i]
        if got is None:
            if i < 0:
                i += len(self._made)
            got = self._made[i] = self._make(i)
        return got

    def __iter__(self):
        for i in range(len(self._made)):
            yield self[i]

    def passing(self, i: int) -> Decision:
        """Rule ``i``'s Decision, kept only if it was already: for a caller
        that reads each once (the batch plan encodes it and lets it go)."""
        got = self._made[i]
        return self._make(i if i >= 0 else i + len(self._made)) if got is None else got

    def _make(self, index: int) -> Decision:
        in_allow = index < self._n_allow
        rules, j = (self._allow, index) if in_allow else (self._deny, index - self._n_allow)
        compact = rules.compact(j)
        if compact is not None:         # no options: the file decides
            path, line, opts = rules.path, compact[1], NO_OPTIONS
        else:
            rule = rules[j]
            path, line, opts = rule.path, rule.line, rule.options
        verdict = Verdict.ALLOW if in_allow else Verdict.DENY
        if opts.error is not None:
            verdict = Verdict.DENY
        elif opts.final == "allow":
            verdict = Verdict.ALLOW
        elif opts.final == "deny":
            verdict = Verdict.DENY
        elif opts.final == "twist":
            verdict = Verdict.DELEGATE
        reason = Reason.LIBWRAP if verdict is Verdict.DENY else Reason.OK
        return Decision(verdict, reason, Location(path, line), options=opts.items)


class ShapeColumn:
    """``layer.shapes[i]``: ``(daemon keys, RulePrefixes)`` of pure rule
    ``i``, else None.  A compact rule keeps only its (shared) keys; its
    prefixes are a new object on each request.  (It holds the rules, not the
    layer: see StaticDecisions.)"""

    __slots__ = ("_rules", "_stored")

    def __init__(self, rules: BothFiles, stored: list) -> None:
        self._rules = rules
        self._stored = stored       # None | a full rule's shape | a compact rule's keys

    def __len__(self) -> int:
        return len(self._stored)

    def __getitem__(self, i: int):
        got = self._stored[i]
        if got is None or isinstance(got, tuple):
            return got
        if i < 0:
            i += len(self._stored)
        return got, self._rules.prefixes(i)

    def __iter__(self):
        for i in range(len(self._stored)):
            yield self[i]

    def families(self):
        """Per rule, the address families a pure rule's prefixes hold (a set,
        maybe empty), None for any other rule; a compact rule's without
        making its prefixes (acl.metrics counts them on every scrape)."""
        rules = self._rules
        for i, got in enumerate(self._stored):
            if got is None:
                yield None
            elif isinstance(got, tuple):
                yield got[1].families()
            else:
                yield _IPV4 if rules.n_prefixes(i) else _NO_FAMILY


_IPV4, _NO_FAMILY = frozenset({4}), frozenset()


_NO_ENTRIES = (array("I"), array("B"), array("i"), [])


def _joined(first, then) -> tuple:
    """Two keys' entries as one.  ALL rules go first: they are few and often
    0.0.0.0/0, so a file written in address order stays in order and the
    table builders can skip their sort."""
    return tuple(a + b for a, b in zip(first, then, strict=True))


def _tables_of(cols) -> tuple:
    """(v4, v6) first-match tables from one key's entries (None where empty)."""
    nets, lens, vals, e6 = cols
    t4 = None
    if nets:
        packed = array("I", nets)
        if sys.byteorder == "little":
            packed.byteswap()            # from_arrays reads network order
        t4 = PrefixTable.from_arrays(4, packed, lens, vals)
    return t4, (PrefixTable(6, e6) if e6 else None)


def never_matches(rule: HostsRule) -> bool:
    if not rule.daemons.head:
        return True
    return rule.scanned is None and not rule.clients.head


class HostsAccessLayer:
    """The compiled pair of files: implements :class:`acl.model.Layer`."""

    name = "hosts_access"

    def __init__(self, allow: HostsTable, deny: HostsTable, resolver=None):
        self.allow = allow
        self.deny = deny
        self.resolver = resolver
        self.rules = BothFiles(allow.rules, deny.rules)
        self.n_allow = len(allow.rules)
        n = len(self.rules)
        self.decisions = StaticDecisions(allow.rules, deny.rules)
        self.dynamic: list[bool] = [False] * n
        self.pure: list[bool] = [False] * n
        # a full rule's shape, or a compact rule's daemon keys (ShapeColumn)
        shapes: list = [None] * n
        residual = []
        # per daemon key (None = ALL): IPv4 columns (nets, lengths, rule
        # numbers) and IPv6 (network, length, rule number) triples
        entries: dict = {}
        keys_of: dict = {}

        def columns_of(key) -> tuple:
            cols = entries.get(key)
            if cols is None:
                cols = entries[key] = (array("I"), array("B"), array("i"), [])
            return cols

        for base, rules in ((0, allow.rules), (self.n_allow, deny.rules)):
            nets4, lens4 = rules.nets4, rules.lens4
            # a compact rule (no options, no EXCEPT, clients all prefixes) is
            # pure unless its daemon list is not plain names (or is empty)
            keys_by_list = [None if not daemons.head else _keys_of(daemons, keys_of)
                            for _, daemons in rules.daemon_lists]
            for j, d, start, stop in rules.spans():
                i = base + j
                if d:
                    keys = keys_by_list[d - 1]
                    if keys is None:
                        if rules.daemon_lists[d - 1][1].head:
                            residual.append(i)
                        continue
                    shapes[i] = keys
                    self.pure[i] = True
                    for key in keys:
                        nets, lens, vals, _ = columns_of(key)
                        if stop - start == 1:
                            nets.append(nets4[start])
                            lens.append(lens4[start])
                            vals.append(i)
                        elif stop > start:
                            nets.extend(nets4[start:stop])
                            lens.extend(lens4[start:stop])
                            vals.extend(array("i", [i]) * (stop - start))
                    continue
                rule = rules[j]
                self.dynamic[i] = bool(rule.options.check_setenv)
                if never_matches(rule):
                    continue
                shape = pure_shape(rule, keys_of)
                shapes[i] = shape
                if shape is None:
                    residual.append(i)
                    continue
                self.pure[i] = True
                keys, prefixes = shape
                for key in keys:
                    nets, lens, vals, e6 = columns_of(key)
                    if prefixes.nets4:
                        nets.extend(prefixes.nets4)
                        lens.extend(prefixes.lens4)
                        vals.extend(array("i", [i]) * len(prefixes.nets4))
                    if prefixes.v6:
                        e6.extend((net, length, i) for net, length in prefixes.v6)
        self.shapes = ShapeColumn(self.rules, shapes)
        self.residual = residual
        # whether a decision may ask innetgr (the engine probes for it even
        # when the caller sent the client's name: acl/names.py)
        self.netgroups = any(uses_netgroups(self.rules[i]) for i in residual)
        self._residual = [(i, daemon_gate(self.rules[i]), rule_fn(self.rules[i]),
                           resolver is None and needs_a_name(self.rules[i]))
                          for i in residual]
        self._fns = None            # every rule as a closure, built on first need
        self._broadcast_fns = None  # those the broadcast address may match (module rules)
        self._entries = entries
        self._tables: dict = {}     # per key, built on first need (see _table)
        self._all = self._table(None)
        # One lookup per decision: each daemon's table also holds the ALL
        # rules, unless that would copy too much (then two lookups).
        all_cols = entries.get(None, _NO_ENTRIES)
        named = [(k, e) for k, e in entries.items() if k is not None]
        self._merged: dict = {}
        self._joined: dict = {}     # the merged tables' columns (the engine reads them too)
        if sum(len(e[2]) + len(e[3]) + len(all_cols[2]) + len(all_cols[3])
               for _, e in named) <= 4_000_000:
            for key, cols in named:
                self._joined[key] = joined = _joined(all_cols, cols)
                self._merged[key] = _tables_of(joined)
        else:
            for key, _cols in named:     # two lookups: build them now, not on a request
                self._table(key)
        self._residual_nameless = [r for r in self._residual if not r[3]]
        if deny.stop is not None:
            d = deny.stop
            self.error_decision = Decision(Verdict.DENY, Reason.LIBWRAP, Location(d.path, d.line))
        else:
            self.error_decision = GRANT_BY_DEFAULT

    def _table(self, key) -> tuple:
        """(v4, v6) prefix tables of the rules for daemon key ``key`` alone
        (None: the ALL rules); (None, None) when there are none."""
        got = self._tables.get(key)
        if got is None:
            got = self._tables[key] = _tables_of(self._entries.get(key, _NO_ENTRIES))
        return got

    def prefix_columns(self, key: str) -> tuple:
        """``(nets, lengths, rule numbers, v6 triples)`` of the pure rules a
        daemon key sees: its own and the ALL ones (see ``__init__``)."""
        got = self._joined.get(key)
        if got is None:
            got = _joined(self._entries.get(None, _NO_ENTRIES),
                          self._entries.get(key, _NO_ENTRIES))
        return got

    def daemon_names(self) -> list[str]:
        """The daemon names some rule names (lower-cased): the pure rules'
        keys and the plain names of residual rules' daemon lists."""
        names = {k for k in self._entries if k is not None}
        for _, gate, _, _ in self._residual:
            if gate is not None:
                names.update(gate)
        return sorted(names)

    @property
    def files(self) -> list[str]:
        """Every file the decisions depend on (reload when one changes)."""
        return [self.allow.path, self.deny.path] + sorted(
            set(self.allow.pattern_files) | set(self.deny.pattern_files))

    # -- deciding -----------------------------------------------------------
    def check(self, request: Request, now: float) -> Decision:
        """The :class:`acl.model.Layer` entry point (see the module rules)."""
        if len(request.service) > NAME_LIMIT:   # libwrap's request_set (module rules)
            request = replace(request, service=request.service[:NAME_LIMIT])
        form = _socket_form(request.client or UNKNOWN)
        dkey = subject_key(request.service)
        best = INVALID if form is None else self._pure_best(form, dkey)
        if best == INVALID:
            q = Query.from_request(request, self.resolver, now)
            return self._named(self._decision(self._scan_all(q), lambda: q), q)
        q = None
        # without a name from the caller and no resolver, rules that need a
        # known name cannot match: they are left out of the scan
        for i, gate, fn, _ in (self._residual_nameless if request.host is None
                               else self._residual):
            if best >= 0 and i >= best:
                break
            if gate is not None and dkey not in gate:
                continue
            if q is None:
                q = Query.from_request(request, self.resolver, now, dkey)
            if fn(q):
                best = i
                break
        if best < 0:
            return self._named(self.error_decision, q)
        if not self.dynamic[best]:
            return self._named(self.decisions[best], q)
        if q is None:
            q = Query.from_request(request, self.resolver, now)
        return self._named(self._decision(best, lambda: q), q)

    def _named(self, d: Decision, q: Query | None) -> Decision:
        """``d`` carrying the names deciding looked up (``Decision.client_name``
        / ``server_name``): libwrap's %h, %c, %H, %s and its "connect from"
        line show a name a rule made it look up.  None when no rule asked, or
        there is no resolver (then no name was really looked up)."""
        if q is None or self.resolver is None:
            return d
        client = q.client.name if q.client.looked_up else None
        server = q.server.name if q.server_sin and q.server.looked_up else None
        if client is None and server is None:
            return d
        return replace(d, client_name=client, server_name=server)

    def _pure_best(self, form: tuple[int, str], dkey: str) -> int:
        """The lowest pure rule covering the address for this daemon; -1 for
        none; INVALID when the text is not an address in socket form."""
        slot, text = form
        merged = self._merged.get(dkey)
        if merged is not None:
            t = merged[slot]
            try:
                if t is None:
                    _INET_PTON(_AFS[slot], text)
                    return -1
                return t.first_match(text)
            except (ValueError, OSError, UnicodeError):
                return INVALID
        t_all = self._all[slot]
        named = self._table(dkey) if dkey in self._entries else None
        t_named = None if named is None else named[slot]
        try:
            if t_all is None and t_named is None:
                _INET_PTON(_AFS[slot], text)        # only to know the form
                return -1
            best = -1 if t_all is None else t_all.first_match(text)
            if t_named is not None:
                v = t_named.first_match(text)
                if v >= 0 and (best < 0 or v < best):
                    best = v
            return best
        except (ValueError, OSError, UnicodeError):
            return INVALID

    def _scan_all(self, q: Query) -> int | None:
        """Every rule in order: for clients not in socket form."""
        if ascii_lower(q.client.addr) in _BROADCAST_FORMS:
            fns = self._broadcast_candidates()
            if fns is not None:
                for i, fn in fns:
                    if fn(q):
                        return i
                return None
        if self._fns is None:
            self._fns = [rule_fn(r) for r in self.rules]
        for i, fn in enumerate(self._fns):
            if fn(q):
                return i
        return None

    def _broadcast_candidates(self) -> list | None:
        """``(rule number, closure)`` of every rule that may match the
        broadcast address, in order: the full rules, and the compact lines
        written with ``255.`` (module rules); None when a table cannot say."""
        if self._broadcast_fns is None:
            picked = []
            for base, rules in ((0, self.allow.rules), (self.n_allow, self.deny.rules)):
                holding = rules.compact_holding(b"255.")
                if holding is None:
                    return None
                picked += [base + j for j in sorted(rules.full_rules() + holding)]
            self._broadcast_fns = [(i, rule_fn(self.rules[i])) for i in picked]
        return self._broadcast_fns

    def decide(self, q: Query) -> tuple[int | None, Decision]:
        """Decide for a ready-made :class:`Query` (acl match uses this)."""
        index = self.first_match(q.client.addr, q.daemon, lambda: q)
        return index, self._decision(index, lambda: q)

    def first_match(self, client: str, daemon: str, make_query) -> int | None:
        """The lowest-numbered matching rule, or None."""
        form = _socket_form(client)
        dkey = subject_key(daemon)
        best = INVALID if form is None else self._pure_best(form, dkey)
        if best == INVALID:
            return self._scan_all(make_query())
        q = None
        for i, gate, fn, _ in self._residual:
            if best >= 0 and i >= best:
                break
            if gate is not None and dkey not in gate:
                continue
            if q is None:
                q = make_query()
            if fn(q):
                return i
        return best if best >= 0 else None

    def _decision(self, index: int | None, make_query) -> Decision:
        if index is None:
            return self.error_decision
        if not self.dynamic[index]:
            return self.decisions[index]
        # setenv with %: its expanded name decides whether it fails (deny).
        rule = self.rules[index]
        q = make_query()
        ran = rule.options.ran
        for pos in rule.options.check_setenv:
            if not setenv_name_ok(percent_expand(ran[pos].value, q)):
                return Decision(Verdict.DENY, Reason.LIBWRAP, Location(rule.path, rule.line),
                                options=tuple(o.item for o in ran[:pos]))
        return self.decisions[index]


def load_hosts_access(allow_path: str, deny_path: str, resolver=None, *,
                      strict: bool = False, dry_run: bool = False
                      ) -> tuple[HostsAccessLayer, list[Diagnostic]]:
    """Read both files and compile them.

    Returns the layer and every diagnostic (``file:line:column: message``).
    Evaluation reproduces what libwrap does with a bad file; with
    ``strict=True`` any error-severity diagnostic raises
    :class:`~acl.errors.RuleSyntaxError` instead (for reloads that must not
    take a broken file).  ``dry_run=True`` reproduces tcpdmatch's option
    handling (the inverted ``user``/``group`` check of Debian's patch).
    """
    with no_gc():
        scan = hosts_scan.v4_client_prefixes
        allow = read_hosts(allow_path, dry_run=dry_run, scan_clients=scan)
        deny = read_hosts(deny_path, dry_run=dry_run, scan_clients=scan)
        diags = allow.diagnostics + deny.diagnostics
        errors = [d for d in diags if d.severity is Severity.ERROR]
        if strict and errors:
            raise RuleSyntaxError.from_diagnostic(errors[0], tuple(errors[1:]))
        return HostsAccessLayer(allow, deny, resolver), diags


@contextlib.contextmanager
def no_gc():
    """Building 100,000 rules makes millions of objects that all survive; the
    cyclic collector would rescan them again and again for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def after_aclexec_failure(layer: HostsAccessLayer, index: int, request: Request,
                          now: float) -> Decision:
    """The verdict when the ``aclexec`` command of rule ``index`` exited non-zero.

    libwrap (spec A.8, D.1.21): the rule counts as not matched and the scan of
    its file stops.  The failure flag is global and never reset, so a hosts.deny
    rule matched afterwards is *also* unmatched once its options have run.
    Hence: failure in hosts.deny -> grant; failure in hosts.allow -> the first
    matching hosts.deny rule may still deny through its options (``deny``, an
    option error) or delegate (``twist``), else grant; a hosts.deny that ends
    in an error still denies.
    """
    if index >= layer.n_allow:
        return GRANT_BY_DEFAULT
    q = Query.from_request(request, layer.resolver, now)
    for i in range(layer.n_allow, len(layer.rules)):
        rule = layer.rules[i]
        if rule.matches(q):
            d = layer._decision(i, lambda: q)
            opts = rule.options
            if opts.error is not None or opts.final in ("allow", "deny", "twist"):
                return d
            return Decision(Verdict.ALLOW, Reason.OK, d.location, options=d.options)
    return layer.error_decision
