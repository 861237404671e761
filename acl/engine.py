"""The engine: the running policy, its limit state, and ``decide()``.

Theory of operation (ARCHITECTURE.md "Decisions" and "Reload", spec C.6):

* An :class:`Engine` is long-lived.  It holds one :class:`acl.policy.Policy`
  (layers bound to services, compiled) in ``self._policy`` and replaces it on
  reload by **one reference assignment**: a decision running in the event
  loop sees either the old policy or the new one, never a mix.  Front doors
  hold the engine, never a policy.
* Order of layers for one service, fixed whatever order the TOML file lists
  them in::

      rate ([limits], engine-owned) -> xinetd (cps, max_load, access_times,
      instances, per_source, only_from/no_access) -> tcprules -> hosts_access

  The first layer that answers DENY decides.  ``None`` means "no opinion".
  When no layer is bound to the service at all the answer is DENY
  ``unknown_service``.  A grant carries the tcprules environment and the
  hosts_options of the rules that decided, and is DELEGATE when the
  hosts_access rule says ``twist``; its location is that of the last layer
  that gave one (hosts_access, else tcprules, else xinetd).
* Names from a UCSPI server (``Request.ucspi_names``, DECIDE flag UCSPI):
  the host and user are tcpserver's TCPREMOTEHOST / TCPREMOTEINFO, what its
  own ``-x`` lookup would use -- the tcprules layers get them.  They are not
  a double-checked name, so every other layer gets the request without them
  (:func:`names_for`) and the sidecar's own lookups serve it, exactly as for
  a request that carries no name.
* Leases: a granted request with ``lease=True`` takes slots through the
  xinetd layer's ``take_lease`` (when one is bound to the service) and gets an
  engine lease id, unique for the engine's life; ``release(id)`` gives the
  slots back.  Which connection may release which lease is the front door's
  business (it releases on disconnect).  Leases live in the engine, so they
  survive reloads; the xinetd layer keeps its limit state across reloads
  (``XinetdLayer(policy, state=old_state)``).  Across a restart they live
  only when the server kept them (acl/serve/leasestore.py): it gives each
  back with :meth:`Engine.adopt_lease` before serving -- the same id, the
  same slots, no limit consulted -- and new ids continue past every id it
  saw (:meth:`Engine.lease_ids_from`).
* A lease follows its service through reloads, as a running server follows
  its service id through xinetd's reconfiguration (which knows services,
  not the files they were read from).  At each commit
  (``_rebind_leases``) a lease is counted by the limit state of the xinetd
  layer the new policy binds to its service: when that is another file's
  state -- the service moved to another file, its file was renamed, or no
  xinetd layer counted it before (its service had none when it was taken,
  or was absent from the policy a restart adopted it under) -- its slots are
  taken there, no limit consulted, and given back where they were.  A lease
  of a service the new policy binds to no xinetd layer stays where it is
  (the limit state frees its slot only once the lease ends), so a later
  reload that brings the service back finds it counted.  So a lease held
  across a restart, across reloads, or across a move between files ends up
  counted alike.
* A prepared policy changes nothing until :meth:`Engine.commit`: there, on
  the serving thread and just before the swap, every xinetd layer of the new
  policy puts its limits in force (``activate``) and each limit state frees
  the slots of services the new policy no longer has (``retire``; a slot
  holding leases waits until a later commit).  A discarded prepared policy
  leaves the running limits as they were.
* A later request of a connection already decided (the Postfix door asks at
  every RCPT of one SMTP session; acl/serve/sessions.py) is decided by
  :meth:`Engine.decide_again`: no limit is consulted or counted -- neither
  ``[limits]`` rate nor the xinetd limits (the layer's ``check_address``
  alone) -- so cps and rate count connections.  The first request's
  refusal by a limit (:func:`limit_refusal`) is repeated instead; the
  address layers are asked again (a reload may have changed them).
* Counters are plain ints and dicts bumped per decision and read by
  :mod:`acl.metrics` at scrape time.  The compiled batch path
  (``acl._engine.BatchPlan``) keeps its own per-action counters; they are
  added in by :meth:`Engine.counters` and folded in when a plan is replaced.
* The per-source rate table (``[limits] rate/burst/sources/ipv6_prefix``)
  belongs to the engine, is shared by the Python path and the batch path,
  and survives reloads unless its capacity changes.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import threading
import time
from bisect import bisect_left
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

from acl.core import ENGINE_IMPLEMENTATION, engine_kernel
from acl.errors import PolicyError
from acl.model import Decision, Reason, Request, Verdict
from acl.names import NeedName, Wanted

# The compiled batch kernel or its twin, chosen by the one switch in acl.core.
_kernel = engine_kernel
KERNEL = ENGINE_IMPLEMENTATION

#: Which reason is which limit (metric ``acl_limit_trips_total{limit}``).
LIMIT_OF_REASON = {
    Reason.CPS: "cps",
    Reason.PER_SOURCE_LIMIT: "per_source",
    Reason.SERVICE_LIMIT: "instances",
    Reason.LOAD: "load",
    Reason.TIME: "time",
    Reason.RATE: "rate",
}
#: Histogram buckets of ``acl_decision_latency_seconds``.
LATENCY_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
                   2.5e-3, 1e-2, 0.1, 1.0)
#: Services not named by the policy are counted under this label, so a client
#: cannot grow the metrics without bound by inventing service names.
UNKNOWN_SERVICE_LABEL = "_unknown"

RATE_DENY = Decision(Verdict.DENY, Reason.RATE)
UNKNOWN = Decision(Verdict.DENY, Reason.UNKNOWN_SERVICE)


@contextmanager
def _no_gc():
    """Reading and compiling a big policy makes millions of small acyclic
    objects; collecting during that only rescans them (a 1 M-prefix
    hosts.allow compiles in about half the time without it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        # What was made is mostly acyclic and lives until the next reload:
        # out of the collector's reach before it runs again, or every pass
        # would walk it all (it is still freed by reference counting when
        # replaced).  Not after a failure: that garbage may hold cycles.
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def _same_layers(a, b) -> bool:
    """True when policy ``b`` has the very layer objects of ``a`` (kept by
    acl.policy because their files did not change), bound the same way, and
    the same limits -- then ``a``'s batch plan answers for ``b`` too.  xinetd
    layers are rebuilt on every reload, so a policy with one never matches."""
    if a.limits != b.limits or len(a.sources) != len(b.sources):
        return False
    return all(x.layer is y.layer and x.services == y.services and x.kind == y.kind
               and x.kind != "xinetd" for x, y in zip(a.sources, b.sources, strict=True))


def _activate(policy) -> None:
    """The new policy's xinetd limits in force, gone services' slots freed."""
    keep: dict[int, tuple[object, set]] = {}
    for s in policy.sources:
        activate = getattr(s.layer, "activate", None)
        if activate is not None:
            state, names = activate()
            keep.setdefault(id(state), (state, set()))[1].update(names)
    for state, names in keep.values():
        state.retire(names)


def limit_refusal(decision: Decision) -> bool:
    """Whether ``decision`` is a refusal by a limit (cps, rate, max_load,
    access_times, instances, per_source): a connection's, not its address's."""
    return not decision.allowed and decision.reason in LIMIT_OF_REASON


def client_packed(client: str) -> bytes:
    return ipaddress.ip_address(client).packed


def names_for(request: Request) -> Request:
    """What the layers other than tcprules see of ``request`` (module rules)."""
    if request.ucspi_names:
        return replace(request, host=None, user=None, ucspi_names=False)
    return request


def merge_grants(decisions: list[Decision]) -> Decision:
    """Every layer granted (or had no opinion): the combined grant."""
    if len(decisions) == 1:
        d = decisions[0]
        if (d.reason is Reason.OK and d.lease == 0 and type(d.env) is tuple
                and type(d.options) is tuple):
            return d                     # what the loop below would rebuild
    env: tuple = ()
    options: tuple = ()
    location = None
    verdict = Verdict.ALLOW
    client_name = server_name = None
    for d in decisions:
        if d.env:
            env = env + tuple(d.env)
        if d.options:
            options = options + tuple(d.options)
        if d.location is not None:
            location = d.location
        if d.verdict is Verdict.DELEGATE:
            verdict = Verdict.DELEGATE
        if d.client_name is not None:
            client_name = d.client_name
        if d.server_name is not None:
            server_name = d.server_name
    return Decision(verdict, Reason.OK, location, env, options, 0, client_name, server_name)


class _LeaseGroup:
    """The leases of one service counted by one xinetd limit state (or by
    none: ``layer`` None), and the layer of the running policy that reaches
    that state -- one object per group, so a commit rebinds a group in one
    step (``Engine._rebind_leases``)."""

    __slots__ = ("key", "layer", "ids")

    def __init__(self, key: tuple[str, int], layer) -> None:
        self.key = key
        self.layer = layer
        self.ids: dict[int, None] = {}       # the group's lease ids, in order


class Engine:
    """See the module's theory of operation."""

    def __init__(self, policy, *, batch: bool = True) -> None:
        from acl.policy import Policy

        if not isinstance(policy, Policy):
            raise PolicyError("Engine needs an acl.policy.Policy (use Engine.from_path)")
        self._lock = threading.Lock()      # serialises reloads, never decisions
        self.decisions: dict[tuple[str, int, int], int] = {}
        self.limit_trips: dict[tuple[str, str], int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_success = 1
        self.last_reload_error = ""
        self.last_prepare: dict[str, float] = {}
        # lease id -> (its _LeaseGroup, its id in the group's layer, metrics
        # label, the request that took it: what a commit needs to count it
        # again in another layer, ``_rebind_leases``)
        self._leases: dict[int, tuple[_LeaseGroup, int, str, Request]] = {}
        # (service, id of the limit state counting them or 0) -> the group
        self._groups: dict[tuple[str, int], _LeaseGroup] = {}
        self.leases_by_service: dict[str, int] = {}
        self._next_lease = 1
        self._sources = None
        self._plan_cache: dict = {}        # per service tables, kept across reloads
        self._current = None
        self.batch = batch and KERNEL == "compiled"   # False: Python path only
        self._install(policy)

    @classmethod
    def from_path(cls, path: str | os.PathLike | None) -> Engine:
        from acl.policy import load_policy

        return cls(load_policy(path))

    # -- policy --------------------------------------------------------
    @property
    def policy(self):
        return self._current[0]

    @property
    def _policy(self):
        return self._current[0]

    @property
    def plan(self):
        """The compiled batch plan of the running policy, or None."""
        return self._current[1]

    def _build(self, policy):
        lim = policy.limits
        sources = self._sources
        if sources is None or sources.capacity < lim.sources:
            sources = _kernel.SourceTable(lim.sources)
        plan = None
        if self.batch:
            from acl.fastpath import build_plan

            old = self._current
            if (old is not None and old[1] is not None and sources is self._sources
                    and _same_layers(old[0], policy)):
                plan = old[1]              # nothing it was built from changed
            else:
                plan = build_plan(policy, sources, self._plan_cache)
        return policy, plan, sources

    def _install(self, policy) -> None:
        with _no_gc():
            built = self._build(policy)
        self.commit(built, count=False)

    def prepare(self, policy_or_path=None):
        """Read and compile a policy (any thread; the running one is untouched).
        Raises, and counts a failed reload, when it cannot be used."""
        from acl.policy import Policy, load_policy

        with self._lock, _no_gc():
            try:
                t0 = time.perf_counter()
                if isinstance(policy_or_path, Policy):
                    new = policy_or_path
                else:
                    path = policy_or_path if policy_or_path is not None else self._policy.path
                    new = load_policy(path, previous=self._policy)
                t1 = time.perf_counter()
                built = self._build(new)
                self.last_prepare = {"load_s": t1 - t0, "plan_s": time.perf_counter() - t1}
                return built
            except Exception as exc:
                self.reloads["failure"] += 1
                self.last_reload_success = 0
                self.last_reload_error = str(exc)
                raise

    def commit(self, prepared, *, count: bool = True) -> None:
        """Swap in what :meth:`prepare` made (call from the serving thread)."""
        policy, plan, sources = prepared
        old = self._current[1] if self._current is not None else None
        _activate(policy)
        self._sources = sources
        self._labels = policy.named_services()
        self._current = (policy, plan)     # the swap: one reference assignment
        if old is not None and old is not plan:
            self._fold(old)
        if self._leases:
            self._rebind_leases(policy)
        if count:
            self.reloads["success"] += 1
            self.last_reload_success = 1
            self.last_reload_error = ""

    def _fold(self, plan) -> None:
        """Keep a replaced plan's counts (counters survive reloads)."""
        for (service, verdict, reason), n in plan.counts().items():
            self._count(service, verdict, reason, n)
            limit = LIMIT_OF_REASON.get(Reason(reason))
            if limit is not None and verdict == 0:
                k = (self.label(service), limit)
                self.limit_trips[k] = self.limit_trips.get(k, 0) + n
        counts, total = plan.latency()
        for i, n in enumerate(counts):
            self.latency_counts[i] += n
        self.latency_sum += total

    def reload(self, policy_or_path=None) -> None:
        """Load and swap; on any error keep the running policy and raise."""
        self.commit(self.prepare(policy_or_path))

    def describe(self) -> dict:
        """The running policy, for ``dump``."""
        from acl.metrics import rule_counts
        from acl.policy import bound_services

        def services(source) -> list[str]:
            bound = bound_services(source)      # an xinetd source: its ids, not "*"
            return ["*"] if bound is None else sorted(bound)

        pol, plan = self._current
        return {
            "path": str(pol.path) if pol.path else None,
            "loaded_at": pol.loaded_at,
            "sources": [{"type": s.kind, "files": [str(f) for f in s.files],
                         "services": services(s),
                         "rules": rule_counts(s.layer),
                         "diagnostics": [str(d) for d in s.diagnostics]}
                        for s in pol.sources],
            "limits": {"sources": pol.limits.sources, "ipv6_prefix": pol.limits.ipv6_prefix,
                       "rate": pol.limits.rate, "burst": pol.limits.burst},
            "batch_services": plan.services if plan is not None else [],
            "kernel": KERNEL,
        }

    # -- decisions -----------------------------------------------------
    def decide(self, request: Request, now: float) -> Decision:
        t0 = time.perf_counter()
        decision = self._decide(self._policy, request, now)
        self._observe(time.perf_counter() - t0, 1)
        return decision

    def decide_again(self, request: Request, now: float,
                     refused: Decision | None = None) -> Decision:
        """Decide a later request of a connection whose first request was
        decided (and counted) already: ``refused``, that first request's
        refusal by a limit, is repeated; else every layer but the limits
        decides (module rules).  Nothing is counted for cps or rate."""
        t0 = time.perf_counter()
        policy = self._policy
        if refused is not None and policy.layers_for(request.service):
            self._count(request.service, int(refused.verdict), int(refused.reason), 1)
            decision = refused
        else:
            decision = self._decide(policy, request, now, again=True)
        self._observe(time.perf_counter() - t0, 1)
        return decision

    def decide_many(self, requests, now: float) -> list[Decision]:
        policy = self._policy
        t0 = time.perf_counter()
        out = [self._decide(policy, r, now) for r in requests]
        if out:
            self._observe((time.perf_counter() - t0) / len(out), len(out))
        return out

    def with_fetched(self, fut):
        """A context to decide in with the answers ``fut`` (a done
        ``Server.look_up_names`` future, or None) fetched for the request:
        read before the names cache (``NameService.answers``).  Nothing to
        read when names are off, or the lookup was cancelled."""
        names = self._policy.name_service
        if names is None or fut is None or fut.cancelled():
            return nullcontext()
        return names.answers(fut.result())

    def name_lookups(self, request: Request, now: float) -> Wanted | list:
        """The uncached answers deciding ``request`` would read, as items for
        :class:`acl.names.NameService` (``(kind, address)``, ``(NETGROUP,
        group, host)``; see its rules), in a :class:`acl.names.Wanted` that
        carries ``request``.  A probe: the hosts_access layers' ``check`` and
        the xinetd layers' ``check_address`` change no state.  Empty when
        names are off (a plain ``[]``) or all that is needed is cached (or
        given, inside ``NameService.answers``).  A client name the caller
        sent is not looked up, but a netgroup asked of it is.  A UCSPI
        server's name is not one (module rules)."""
        policy = self._policy
        names = policy.name_service
        if names is None:       # the usual case: nothing more on the request path
            return []
        wanted = Wanted((), request, now)
        request = names_for(request)
        named = bool(request.host)
        names.probing = True
        try:
            for layer, daemon in policy.layers_for(request.service):
                try:
                    if getattr(layer, "name", "") == "xinetd":
                        if not named and layer.reads_names(request.service):
                            layer.check_address(request)
                    elif (getattr(layer, "resolver", None) is names and layer.residual
                          and (not named or layer.netgroups)):
                        # (only residual rules read names; with the caller's
                        # name, only netgroups are left to ask)
                        layer.check(request if daemon is None else
                                    replace(request, service=daemon), now)
                except NeedName as need:
                    if need.key not in wanted:
                        wanted.append(need.key)
        finally:
            names.probing = False
        return wanted

    def _decide(self, policy, request: Request, now: float, again: bool = False) -> Decision:
        layers = policy.layers_for(request.service)
        if not layers:
            self._count(UNKNOWN_SERVICE_LABEL, 0, int(Reason.UNKNOWN_SERVICE), 1)
            return UNKNOWN
        service = request.service
        lim = policy.limits
        if lim.rate > 0 and not again:
            try:
                key = _kernel.source_key(client_packed(request.client), lim.ipv6_prefix)
            except ValueError:
                key = None
            if key is not None and not self._sources.take(key, now, lim.rate, lim.burst):
                return self._refuse(service, RATE_DENY)
        grants = []
        xinetd = None
        plain = names_for(request)
        for layer, daemon in layers:
            kind = getattr(layer, "name", "")
            r = request if kind == "tcprules" else plain
            if kind == "xinetd":
                xinetd = layer
            if again and kind == "xinetd":      # its address lists alone: no limit counted
                d = layer.check_address(r)
            else:
                d = layer.check(r if daemon is None else replace(r, service=daemon), now)
            if d is None:
                continue
            if d.verdict is Verdict.DENY:
                return self._refuse(service, d)
            grants.append(d)
        decision = merge_grants(grants)
        if request.lease:
            decision = self._lease(decision, request, now, xinetd)
        self._count(service, int(decision.verdict), int(decision.reason), 1)
        return decision

    def _refuse(self, service: str, d: Decision) -> Decision:
        self._count(service, int(d.verdict), int(d.reason), 1)
        limit = LIMIT_OF_REASON.get(d.reason)
        if limit is not None:
            k = (self.label(service), limit)
            self.limit_trips[k] = self.limit_trips.get(k, 0) + 1
        return d

    def label(self, service: str) -> str:
        """The metrics label of ``service``: the name itself when the running
        policy names it (a source's ``services`` list, a hosts_access daemon
        name, an xinetd id), else ``UNKNOWN_SERVICE_LABEL`` -- so a client
        sending made-up names under ``services = ["*"]`` cannot grow the
        series without bound."""
        return service if service in self._labels else UNKNOWN_SERVICE_LABEL

    def _count(self, service: str, verdict: int, reason: int, n: int) -> None:
        k = (self.label(service), verdict, reason)
        self.decisions[k] = self.decisions.get(k, 0) + n

    def _observe(self, seconds: float, n: int) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += n
        self.latency_sum += seconds * n

    # -- leases --------------------------------------------------------
    def _lease(self, decision: Decision, request: Request, now: float, xinetd) -> Decision:
        lease_id = self._next_lease
        self._next_lease += 1
        self._hold(lease_id, request, now, xinetd)
        return replace(decision, lease=lease_id)

    def _hold(self, lease_id: int, request: Request, now: float, xinetd) -> None:
        """Lease ``lease_id``: its slots in ``xinetd`` (None: no limit
        counts it until a commit binds one: ``_rebind_leases``), and the
        count by service."""
        inner = 0
        if xinetd is not None and hasattr(xinetd, "take_lease"):
            inner = xinetd.take_lease(request, now)
        else:
            xinetd = None
        group = self._group(request.service, xinetd)
        group.ids[lease_id] = None
        label = self.label(request.service)
        self._leases[lease_id] = (group, inner, label, request)
        self.leases_by_service[label] = self.leases_by_service.get(label, 0) + 1

    def _group(self, service: str, xinetd) -> _LeaseGroup:
        """The group of ``service``'s leases counted by ``xinetd``'s limit
        state (by none: None), made on first use."""
        key = (service, 0 if xinetd is None else id(xinetd.state))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _LeaseGroup(key, xinetd)
        return group

    @staticmethod
    def _xinetd_of(policy, service: str):
        """The xinetd layer ``_decide`` takes ``service``'s leases through
        (the last one bound to it), or None."""
        xinetd = None
        for layer, _daemon in policy.layers_for(service):
            if getattr(layer, "name", "") == "xinetd" and hasattr(layer, "take_lease"):
                xinetd = layer
        return xinetd

    def _rebind_leases(self, policy) -> None:
        """At a commit: each lease to be counted by the limit state of the
        xinetd layer ``policy`` binds to its service (module rules).  A
        group already counted by that state only points at the new layer
        (no lease keeps an old policy's layer alive); the leases of any
        other group take their slots in the new state -- no limit consulted
        -- and then give back the old ones.  One the new layer cannot take
        (a client the service's family refuses; no slot left) stays where it
        is, as does a group whose service no xinetd layer of ``policy``
        binds.  The work is one step per group (service and state) unless
        leases move."""
        now = time.time()
        for group in list(self._groups.values()):
            service = group.key[0]
            target = self._xinetd_of(policy, service)
            if target is None or target is group.layer:
                continue
            if group.layer is not None and group.layer.state is target.state:
                group.layer = target
                continue
            into = None                     # made at the first lease that moves
            for lease_id in list(group.ids):
                _group, inner, label, request = self._leases[lease_id]
                try:
                    moved = target.take_lease(request, now)
                except (ValueError, OverflowError):
                    continue
                if group.layer is not None and inner:
                    group.layer.release(inner)
                del group.ids[lease_id]
                into = into or self._group(service, target)
                into.ids[lease_id] = None
                new_label = self.label(service)
                self._leases[lease_id] = (into, moved, new_label, request)
                if new_label != label:
                    self.leases_by_service[label] -= 1
                    self.leases_by_service[new_label] = self.leases_by_service.get(new_label, 0) + 1
            if not group.ids:
                del self._groups[group.key]

    def adopt_lease(self, lease_id: int, request: Request, now: float) -> None:
        """Count again lease ``lease_id`` that ``request`` took before a
        restart: its slots are taken *without* a limit check, through the
        xinetd layer ``_decide`` would use.  A service the running policy
        does not bind keeps its lease (to be released) counted toward no
        limit -- what a reload that drops a service leaves of its leases --
        until a reload brings the service back (``_rebind_leases``)."""
        if lease_id <= 0 or lease_id in self._leases:
            raise ValueError(f"lease {lease_id} cannot be adopted (taken or not an id)")
        self._hold(lease_id, request, now, self._xinetd_of(self._policy, request.service))
        self.lease_ids_from(lease_id + 1)

    def lease_ids_from(self, first: int) -> None:
        """New lease ids are ``first`` or more (ids seen before a restart
        are never handed out again)."""
        self._next_lease = max(self._next_lease, first)

    def release(self, lease_id: int) -> bool:
        entry = self._leases.pop(lease_id, None)
        if entry is None:
            return False
        group, inner, label, _request = entry
        if group.layer is not None and inner and hasattr(group.layer, "release"):
            group.layer.release(inner)
        del group.ids[lease_id]
        if not group.ids:
            del self._groups[group.key]
        self.leases_by_service[label] -= 1
        return True

    @property
    def leases_active(self) -> int:
        return len(self._leases)

    # -- for metrics / admin -------------------------------------------
    def _layer_tables(self):
        """Each xinetd limit table's counters, once (two sources reading the
        same file share one table: acl.policy hands state over by file)."""
        seen = set()
        for s in self._policy.sources:
            fn = getattr(s.layer, "table_counters", None)
            state = getattr(s.layer, "state", None)
            if fn is not None and s.kind == "xinetd" and id(state) not in seen:
                seen.add(id(state))
                yield fn()

    @property
    def sources_tracked(self) -> int:
        """Engine rate table plus the xinetd limit tables."""
        return self._sources.tracked + sum(int(c.get("tracked_sources", 0))
                                           for c in self._layer_tables())

    @property
    def sources_evictions(self) -> int:
        return self._sources.evictions + sum(int(c.get("evictions", 0))
                                             for c in self._layer_tables())

    def lease_overflow(self) -> dict[str, int]:
        """The xinetd tables' overflow areas: ``entries`` (sources there now),
        ``overflows`` (sources moved there: their group was pinned full) and
        ``full`` (per_source refusals or uncounted leases: it was full too)."""
        out = {"entries": 0, "overflows": 0, "full": 0}
        for c in self._layer_tables():
            out["entries"] += int(c.get("overflow_entries", 0))
            out["overflows"] += int(c.get("lease_overflows", 0))
            out["full"] += int(c.get("overflow_full", 0))
        return out

    def counters(self) -> dict:
        """A snapshot of every counter, the batch plan's included."""
        decisions = dict(self.decisions)
        trips = dict(self.limit_trips)
        plan = self._current[1]
        if plan is not None:
            for (service, verdict, reason), n in plan.counts().items():
                k = (service, verdict, reason)
                decisions[k] = decisions.get(k, 0) + n
                limit = LIMIT_OF_REASON.get(Reason(reason))
                if limit is not None and verdict == 0:
                    trips[(service, limit)] = trips.get((service, limit), 0) + n
        lat = list(self.latency_counts)
        lat_sum = self.latency_sum
        if plan is not None:
            pc, ps = plan.latency()
            lat = [a + b for a, b in zip(lat, pc, strict=True)]
            lat_sum += ps
        return {
            "decisions": decisions,
            "limit_trips": trips,
            "latency_buckets": LATENCY_BUCKETS,
            "latency_counts": lat,
            "latency_sum": lat_sum,
            "reloads": dict(self.reloads),
            "last_reload": self._policy.loaded_at,
            "last_reload_success": self.last_reload_success,
            "leases": dict(self.leases_by_service),
            "sources_tracked": self.sources_tracked,
            "sources_evictions": self.sources_evictions,
            "lease_overflow": self.lease_overflow(),
        }

    def watched_files(self) -> list[Path]:
        return list(self._policy.files)

    def watched_stamps(self) -> dict:
        """Each watched file's stamp taken before the running policy read it
        (acl.policy: ``Policy.stamps``)."""
        return self._policy.stamps

    @staticmethod
    def file_stamp(path):
        """A file's stamp as it is now, comparable with :meth:`watched_stamps`."""
        from acl.policy import stamp

        return stamp(path)
