"""Client host names for the rule layers: one cache, and lookups kept off the event loop.

Rules of this file:

* Two kinds of name, as the two rule languages ask for them:

  - ``VERIFIED``: libwrap's double-checked name (:meth:`acl.resolve.Resolver.verify`,
    spec A.6): the name, ``"unknown"`` or ``"paranoid"``.  hosts_access
    layers read it through :meth:`NameService.hostname`.
  - ``PTR``: xinetd's reverse lookup, with no forward confirmation (spec C.4):
    the name, or None.  xinetd layers read it through :meth:`NameService.reverse`.

* Answers are cached per ``(kind, address text)`` for ``ttl`` seconds
  (``negative_ttl`` when there is no name), at most ``max_entries`` of them,
  the least recently used evicted first.  ``ttl = 0`` caches nothing across
  requests, as libwrap (which looks up per connection): the answer fetched
  for a request is still the one its decision reads (below).
* A lookup is a blocking C library call (it may ask DNS).  ``acl serve``
  never makes one on its event loop: before a request is decided in Python,
  the connection asks :meth:`acl.engine.Engine.name_lookups` which uncached
  names the decision would read.  That runs the layers' side-effect-free
  address checks with the service in *probe* mode, where a cache miss raises
  :class:`NeedName` instead of looking up.  The connection then runs
  :meth:`lookup` in a worker thread, hands the answer to :meth:`store` on
  the loop thread, and decides under :meth:`answers` with the answers it
  fetched: they are read first, whatever the cache holds by then (expired
  at once with ttl 0, evicted, or a new cache after a reload), and a name
  still missing there (no round looked it up) is "no name" (``unknown``,
  as libwrap when the resolver fails), never a lookup on the loop.
  Outside ``acl serve`` (tests, scripts) nothing probes, and a miss looks up
  at once.
* Netgroups (``@group``, libwrap's ``innetgr(group, host name)`` at match
  time) are a third kind, ``NETGROUP``, keyed ``(NETGROUP, group, host)``:
  the same probe (:class:`NeedName`), worker thread, :meth:`answers` and
  cache (``ttl`` for a member, ``negative_ttl`` for a non-member; ttl 0 asks
  the backend once per request, as libwrap does), since ``innetgr`` is a
  blocking NIS/LDAP call too.  A netgroup is asked of the client's *name*,
  so one request may need its name first and a netgroup after:
  :class:`Wanted` carries the request, and the server asks the engine
  again once a round of answers is in (acl/serve/server.py
  ``look_up_names``).
* Time comes from the ``clock`` given (``time.time`` in ``acl serve``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager

from acl.resolve import UNKNOWN, Resolver

VERIFIED = "verified"
PTR = "ptr"
NETGROUP = "netgroup"


class NeedName(Exception):
    """Raised in probe mode: deciding needs an answer that is not cached.
    ``key`` is the item to look up: ``(kind, address)``, or ``(NETGROUP,
    group, host)``."""

    def __init__(self, kind: str, addr: str, *more: str):
        super().__init__(f"{kind} answer for {' '.join((addr, *more))} not cached")
        self.kind = kind
        self.addr = addr
        self.key = (kind, addr, *more)


class Wanted(list):
    """The items one request needs looked up (:meth:`acl.engine.Engine.name_lookups`),
    with the request and its time, so that whoever looks them up can ask the
    engine again with the answers in (a netgroup needs the name first)."""

    def __init__(self, items=(), request=None, now: float = 0.0):
        super().__init__(items)
        self.request = request
        self.now = now


class NameService:
    """Cached client names for hosts_access (verified) and xinetd (PTR) layers."""

    def __init__(self, resolver: Resolver, reverse_backend, *, ttl: float = 300.0,
                 negative_ttl: float = 60.0, max_entries: int = 10000, clock=time.time):
        self.resolver = resolver              # libwrap's double check (uncached use)
        self.reverse_backend = reverse_backend  # xinetd's: .reverse(text) -> name | None
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self.probing = False
        self._given: dict | None = None       # inside answers(): fetched for this request
        self._cache: OrderedDict[tuple, tuple[float, str | bool | None]] = OrderedDict()
        self.lookups: dict[str, int] = {VERIFIED: 0, PTR: 0, NETGROUP: 0}
        self.evictions = 0

    # -- what the layers call ------------------------------------------------
    def hostname(self, addr: str, now: float | None = None) -> str:
        """The verified name of ``addr`` (hosts_access's ``HostView``)."""
        return self._get(VERIFIED, addr)

    def reverse(self, addr: str) -> str | None:
        """The PTR name of ``addr``, None when there is none (the xinetd layer)."""
        return self._get(PTR, addr)

    def innetgr(self, group: str, host: str) -> bool:
        """libwrap's ``innetgr(group, host)`` (hosts_access ``@group``)."""
        return bool(self._get(NETGROUP, group, host))

    def _get(self, kind: str, *key: str):
        if self._given is not None:
            item = (kind, *key)
            if item in self._given:
                return self._given[item]
        hit, name = self.cached(kind, *key)
        if hit:
            return name
        if self.probing:
            raise NeedName(kind, *key)
        if self._given is not None:
            return self.no_name(kind)         # fetched and failed: never in line
        name = self.lookup(kind, *key)
        self.store(kind, *key, name)
        return name

    # -- what acl serve calls --------------------------------------------------
    @contextmanager
    def answers(self, given: dict):
        """Decide with ``given`` (``(kind, addr) -> answer``, fetched for the
        request) read before the cache, and no lookup in line (module rules)."""
        outer = self._given
        self._given = given
        try:
            yield
        finally:
            self._given = outer

    @staticmethod
    def no_name(kind: str) -> str | None:
        """The answer when there is none: libwrap's ``unknown``, xinetd's None,
        not in the netgroup (libwrap's ``innetgr`` when NIS fails)."""
        if kind == NETGROUP:
            return False
        return UNKNOWN if kind == VERIFIED else None

    def cached(self, kind: str, *key: str) -> tuple[bool, str | bool | None]:
        """``(True, answer)`` when a fresh answer is cached, else ``(False, None)``."""
        key = (kind, *key)
        hit = self._cache.get(key)
        if hit is None or hit[0] <= self.clock():
            return False, None
        self._cache.move_to_end(key)
        return True, hit[1]

    def lookup(self, kind: str, *key: str) -> str | bool | None:
        """The backend's answer for ``(kind, *key)``, uncached: safe to call
        from a worker thread."""
        if kind == VERIFIED:
            return self.resolver.verify(*key)
        if kind == NETGROUP:
            return self.resolver.innetgr(*key)
        return self.reverse_backend.reverse(*key)

    def store(self, kind: str, *key_answer) -> None:
        """Cache the answer :meth:`lookup` gave for ``(kind, *key)``: called as
        ``store(kind, *key, answer)``, on the loop thread."""
        *rest, name = key_answer
        self.lookups[kind] += 1
        none = name is None or name is False or (kind == VERIFIED and name == UNKNOWN)
        key = (kind, *rest)
        self._cache[key] = (self.clock() + (self.negative_ttl if none else self.ttl), name)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.evictions += 1

    @property
    def entries(self) -> int:
        return len(self._cache)
