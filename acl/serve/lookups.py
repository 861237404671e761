"""Client name lookups in worker threads, shared fairly among client networks.

Rules of this file (docs/configuration.md ``[names]``):

* A lookup (:meth:`acl.names.NameService.lookup`: a blocking C library call,
  which may wait for a DNS server that never answers) runs in a thread of a
  :class:`acl.workers.DaemonPool` that starts a thread only when none
  is idle, up to ``[names] threads``.  A stuck lookup holds its thread; the
  pool is what leaves threads for everyone else.
* At most ``[names] per_network`` lookups *per client network* run at once:
  the /24 of an IPv4 client (a v4-mapped one too), the /64 of an IPv6 one.
  More wait in that network's queue, in order, and start as its lookups
  end.  So addresses of one network whose PTR queries go unanswered hold at
  most ``per_network`` threads, and clients of other networks still find
  one free.  (Many networks that all hang can still fill the pool: then the
  deadline below is what bounds the wait.)
* Queues are bounded -- ``QUEUE_PER_NETWORK`` per network, ``QUEUED_MAX`` in
  all -- so a flood of distinct addresses cannot grow memory: a lookup
  beyond either fails at once with :class:`LookupShed`, which a decision
  reads as "no name" (``unknown``), as any failed lookup.
* A lookup that started is never stopped (a C resolver call cannot be): it
  ends in its thread, and its answer is cached then.  How long a *request*
  waits is :meth:`acl.serve.server.Server.look_up_names`' business (its
  ``[names] deadline``).
* Everything here runs on the event loop's thread; only ``fn`` runs in the
  pool.
"""

from __future__ import annotations

import asyncio
from collections import deque

from acl.resolve import numeric_address
from acl.ucspi_addr import V4_MAPPED_PREFIX

#: lookups one network may have waiting for a thread
QUEUE_PER_NETWORK = 256
#: lookups all networks together may have waiting
QUEUED_MAX = 4096


class LookupShed(Exception):
    """The lookup was not run: its network's queue (or all queues) is full."""


def network_of(addr: str) -> bytes | str:
    """The client network a lookup is counted against (see the rules);
    anything that is not an address counts as its own network."""
    parsed = numeric_address(addr)
    if parsed is None:
        return addr
    packed = parsed[1]
    if packed[:12] == V4_MAPPED_PREFIX:
        packed = packed[12:]
    return packed[:3] if len(packed) == 4 else packed[:8]


class LookupScheduler:
    """Runs lookups in ``pool``, at most ``per_network`` per network at once."""

    def __init__(self, pool, per_network: int) -> None:
        self.pool = pool
        self.per_network = per_network
        self._running: dict = {}          # network -> lookups running
        self._queued: dict = {}           # network -> deque of (future, fn, args)
        self.waiting = 0                  # lookups queued in all

    @property
    def running(self) -> int:
        """Lookups started (acl_name_lookups_running): running in the pool, or
        queued in it for a free thread when every one is busy."""
        return sum(self._running.values())

    def run(self, loop, net, fn, *args) -> asyncio.Future:
        """A future for ``fn(*args)`` run in the pool when ``net`` has room."""
        out = loop.create_future()
        if self._running.get(net, 0) < self.per_network:
            self._start(loop, net, out, fn, args)
            return out
        q = self._queued.get(net)
        if (q is not None and len(q) >= QUEUE_PER_NETWORK) or self.waiting >= QUEUED_MAX:
            out.set_exception(LookupShed("too many lookups waiting"))
            return out
        if q is None:
            q = self._queued[net] = deque()
        q.append((out, fn, args))
        self.waiting += 1
        return out

    def _start(self, loop, net, out, fn, args) -> None:
        self._running[net] = self._running.get(net, 0) + 1
        fut = loop.run_in_executor(self.pool, fn, *args)
        fut.add_done_callback(lambda f: self._done(loop, net, out, f))

    def _done(self, loop, net, out, f) -> None:
        left = self._running[net] - 1
        if left:
            self._running[net] = left
        else:
            del self._running[net]
        q = self._queued.get(net)
        while q and self._running.get(net, 0) < self.per_network:
            nxt, fn, args = q.popleft()
            self.waiting -= 1
            if not nxt.cancelled():
                self._start(loop, net, nxt, fn, args)
        if q is not None and not q:
            del self._queued[net]
        if out.cancelled():
            return
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())
        else:
            out.set_result(f.result())
