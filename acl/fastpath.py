"""Build the compiled batch plan (``acl._engine.BatchPlan``) from a policy.

Rules of this file:

* A layer takes part in the batch path only through an **address view**: for
  one service, its answer as a function of the client address alone
  (:class:`AddressView`: prefixes with values, a match discipline, the
  Decision each value stands for, and the answer when nothing covers).  A
  layer gives one through ``layer.address_view(service)`` or through an
  adapter in :func:`view_of`; ``None`` means "my answer depends on more than
  the address here" (names, ident, time, limits...) and the whole service is
  left to Python.
* For each service every bound layer must give a view.  The views are turned
  into disjoint address ranges (leaf pushing: the answer of every address of
  a range is the same), the ranges of all layers are overlaid, and each
  overlaid range gets the Decision :func:`acl.engine.merge_grants` and the
  first-refusal rule give -- exactly what ``Engine.decide`` computes, so the
  plan cannot disagree with the Python path.  Each distinct (service,
  Decision) becomes one pre-encoded DECISION payload.
* An xinetd service joins with its address lists as ranges and its slot in
  the xinetd layer's LimitState (:func:`limits_of`): the plan runs the
  parent checks through the limits core's ``check_batch``.  Services with
  ``max_load``, names in their lists, SENSOR, or an IPv6 socket stay
  Python's.
* IPv4-mapped IPv6 clients, leases and any other DECIDE flag (UCSPI names:
  acl/engine.py) always go to Python (see _engine.pyx).
* So does a range whose Decision's DECISION frame would pass 64 KiB
  (``MAX_FRAME``; a long tcprules environment, say) or cannot be encoded at
  all: the Python path sends it (DECISION frames may be larger) or answers
  ERROR 6 (too large) or 7 (not encodable), and the plan's reply buffer
  stays sized for ordinary answers.
* Nothing per rule is kept beyond the plan's own tables: a hosts_access
  view hands out each rule's Decision once without the layer keeping it,
  and the engine's cache of a service's tables keeps its encoded answers as
  one blob (:class:`_Actions`), not a bytes object and a tuple each.
"""

from __future__ import annotations

import gc
from array import array
from dataclasses import dataclass, field
from itertools import accumulate

from acl.engine import UNKNOWN, merge_grants
from acl.model import Decision, Location, Reason, Verdict
from acl.resolve import NAME_LIMIT
from acl.wire.binary import MAX_FRAME, decision_payload

_BITS = {4: 32, 6: 128}


@dataclass
class AddressView:
    """A layer's answer for one service as a function of the client address."""

    v4: list = field(default_factory=list)      # (network int, length, value)
    v6: list = field(default_factory=list)
    first_match: bool = False                   # lowest value wins, else longest prefix
    decisions: list = field(default_factory=list)   # value -> Decision | None
    default: Decision | None = None             # when no prefix covers
    uses_host: bool = False                     # a request with a host name goes to Python
    uses_user: bool = False                     # ... one with a remote user too
    forced_v4: list = field(default_factory=list)   # (network, length): always Python
    v4_columns: tuple | None = None             # (nets 'I', lengths 'B', values 'i') instead of v4
    ranges4: list | None = None                 # ready-made (start, value) ranges, or None
    ranges6: list | None = None


#: A range whose answer only Python can give (e.g. a rule whose options
#: expand ``%`` at decision time).
RESIDUAL = Decision(Verdict.DENY, Reason.ERROR, Location("<residual>", 0))


def view_of(layer, service: str) -> AddressView | None:
    """The layer's address view for ``service``, or None (see the rules)."""
    fn = getattr(layer, "address_view", None)
    if fn is not None:
        return fn(service)
    adapter = _ADAPTERS.get(type(layer).__name__)
    if adapter is not None:
        return adapter(layer, service)
    return None


def _hosts_access_view(layer, service: str) -> AddressView | None:
    """acl.compile.tcpw.HostsAccessLayer: its pure rules are per-daemon
    first-match prefix tables; any residual rule (names, EXCEPT, patterns a
    prefix cannot say) makes the service Python's.  255.255.255.255 is not
    "in socket form" for that layer (it runs its interpreter), so it is
    forced residual here."""
    from acl.parse.hosts_patterns import ascii_lower, strip_mapped

    if layer.residual or len(service) > NAME_LIMIT:
        return None             # (a longer daemon name is cut first: the layer's rules)
    view = AddressView(first_match=True, default=layer.error_decision)
    # the layer's pure rules per daemon key, its own and the ALL ones: what
    # its prefix tables were built from (value = rule number)
    nets, lens, vals, v6 = layer.prefix_columns(ascii_lower(strip_mapped(service)))
    view.v4_columns = (nets, lens, vals)
    view.v6 = v6
    view.decisions = _RuleDecisions(layer)
    view.forced_v4 = [(0xFFFFFFFF, 32)]
    return view


class _RuleDecisions:
    """A hosts_access view's ``decisions``: rule number -> the rule's
    Decision, RESIDUAL for one whose options expand at decision time.  Asked
    only for the rules that decide some range, once each: the layer makes a
    Decision it did not keep yet and does not keep it (the plan holds the
    encoded answer; a layer of 100,000 rules would keep 100,000 Decisions)."""

    __slots__ = ("_layer",)

    def __init__(self, layer) -> None:
        self._layer = layer

    def __getitem__(self, value: int) -> Decision:
        return RESIDUAL if self._layer.dynamic[value] else self._layer.decisions.passing(value)


def _tcprules_view(layer, service: str) -> AddressView | None:
    """acl.compile.tcprules.TcprulesLayer: without host or info, tcpserver's
    probe order for an IPv4 client is the exact address, then the /24, /16,
    /8 prefixes, then the empty key -- a most-specific lookup.  A host or
    info key makes requests carrying a host or user Python's; an IPv6 key
    (textual prefixes) makes IPv6 clients Python's."""
    import ipaddress

    keys = layer._decisions
    view = AddressView(first_match=False, default=keys.get("", None))
    if view.default is None:
        from acl.compile.tcprules import NO_MATCH

        view.default = NO_MATCH
    v6_keys = False
    for k, d in keys.items():
        if "@" in k:
            view.uses_user = True
            continue
        if k.startswith("="):
            view.uses_host = True
            continue
        if ":" in k:
            v6_keys = True
            continue
        if not k:
            continue
        parts = k[:-1].split(".") if k.endswith(".") else k.split(".")
        if not all(p.isdigit() and str(int(p)) == p and int(p) < 256 for p in parts):
            continue                      # never equal to what tcpserver prints
        if k.endswith("."):
            if not 1 <= len(parts) <= 3:
                continue
            octets = [int(p) for p in parts] + [0] * (4 - len(parts))
            length = 8 * len(parts)
        else:
            if len(parts) != 4:
                continue
            octets = [int(p) for p in parts]
            length = 32
        view.decisions.append(d)
        view.v4.append((int(ipaddress.IPv4Address(bytes(octets))), length,
                        len(view.decisions) - 1))
    if not layer.use_host:
        view.uses_host = False
    if v6_keys:
        view.decisions.append(RESIDUAL)
        view.v6.append((0, 0, len(view.decisions) - 1))
    return view


def _xinetd_view(layer, service: str) -> AddressView | None:
    """acl.compile.xinetd.XinetdLayer for an IPv4 service (``flags = IPv4``)
    without ``max_load``, without names in its lists and with no SENSOR
    anywhere: only_from/no_access are presence tests (spec C.5: deny on a
    no_access hit, deny when only_from is present and misses, else grant),
    the deciding location is the first covering entry of the list (list
    order), else the service; the parent checks (cps, access_times,
    instances, per_source, the layer's bucket) run in the limits core for the
    frames that reach them (:func:`limits_of`).  A service the layer does not
    define has no opinion."""
    services = layer.policy.services
    svc = services.get(service)
    if svc is None:
        return AddressView(default=None)
    if service in getattr(layer.policy, "shared", {}):
        return None                        # picked by the server address: the layer's path
    if svc.family != 4 or svc.max_load:
        return None
    if any(getattr(s, "sensor", False) for s in services.values()):
        return None
    extra = getattr(getattr(layer, "state", None), "extra", None)
    if isinstance(extra, dict) and extra.get("xinetd_sensor"):
        return None
    lists = [svc.no_access, svc.only_from]
    if any(lst is not None and lst.names for lst in lists):
        return None

    def where(entry) -> Location:
        line = getattr(entry, "line", 0)
        return Location(entry.path, line) if line else svc.location

    decisions: list[Decision] = []
    index: dict[Decision, int] = {}

    def value(d: Decision) -> int:
        if d not in index:
            index[d] = len(decisions)
            decisions.append(d)
        return index[d]

    view = AddressView(decisions=decisions)
    for fam, bits in ((4, 32), (6, 128)):
        hits = []                          # per list: (starts, first covering entry index)
        for lst in lists:
            table = None if lst is None else (lst.v4 if fam == 4 else lst.v6)
            r = ranges([] if table is None else table.entries(), bits, True)
            hits.append(([x for x, _ in r], [v for _, v in r]))
        starts = sorted({x for h in hits for x in h[0]})
        out = []
        idx = [0, 0]
        for x in starts:
            got = []
            for k, (st, hv) in enumerate(hits):
                while idx[k] + 1 < len(st) and st[idx[k] + 1] <= x:
                    idx[k] += 1
                got.append(hv[idx[k]])
            na, of = got
            if na >= 0:
                d = Decision(Verdict.DENY, Reason.ADDRESS, where(svc.no_access.entries[na]))
            elif svc.only_from is not None and of < 0:
                d = Decision(Verdict.DENY, Reason.ADDRESS, svc.location)
            else:
                d = Decision(Verdict.ALLOW, Reason.OK,
                             where(svc.only_from.entries[of]) if of >= 0 else svc.location)
            out.append((x, value(d)))
        if fam == 4:
            view.ranges4 = out
        else:
            view.ranges6 = out
    return view


def limits_of(layer, service: str):
    """``(LimitState, slot, {reason code: Decision})`` of an xinetd service
    whose parent checks the batch path runs, else None."""
    svc = layer.policy.services.get(service)
    state = getattr(layer, "state", None)
    if svc is None or state is None or not hasattr(state, "check_batch") \
            or service in getattr(layer.policy, "shared", {}):
        return None
    refusals = {int(r): Decision(Verdict.DENY, r, svc.location)
                for r in (Reason.TIME, Reason.SERVICE_LIMIT, Reason.PER_SOURCE_LIMIT,
                          Reason.LOAD, Reason.CPS, Reason.RATE)}
    return state, state.slot(svc.id), refusals


_ADAPTERS = {
    "HostsAccessLayer": _hosts_access_view,
    "TcprulesLayer": _tcprules_view,
    "XinetdLayer": _xinetd_view,
}


def ranges(entries, bits: int, first_match: bool) -> list[tuple[int, int]]:
    """Prefixes -> disjoint ranges ``(start, value)``, sorted, starting at 0;
    value -1 where nothing covers."""
    items = sorted(((net, net | ((1 << (bits - ln)) - 1), ln, v) for net, ln, v in entries),
                   key=lambda t: (t[0], t[2]))
    out: list[tuple[int, int]] = [(0, -1)]

    def emit(pos: int, val: int) -> None:
        while out and out[-1][0] == pos:
            out.pop()
        if not out or out[-1][1] != val:
            out.append((pos, val))

    stack: list[tuple[int, int, int]] = []        # (start, end, effective value)
    top = 1 << bits
    for start, end, _ln, val in items:
        while stack and stack[-1][1] < start:
            e = stack.pop()
            if e[1] + 1 < top:
                emit(e[1] + 1, stack[-1][2] if stack else -1)
        if stack:
            parent = stack[-1]
            if first_match or (parent[0] == start and parent[1] == end):
                val = min(parent[2], val)
        stack.append((start, end, val))
        emit(start, val)
    while stack:
        e = stack.pop()
        if e[1] + 1 < top:
            emit(e[1] + 1, stack[-1][2] if stack else -1)
    return out


def combine(decisions) -> Decision | None:
    """The engine's rule over one request's layer answers (engine.py)."""
    if not decisions:
        return UNKNOWN
    grants = []
    for d in decisions:
        if d is None:
            continue
        if d is RESIDUAL:
            return RESIDUAL
        if d.verdict is Verdict.DENY:
            return d
        grants.append(d)
    return merge_grants(grants)


def _view_ranges(entries, bits: int, first_match: bool):
    """(starts, values) of one view; IPv4 goes through the compiled builder."""
    if bits == 32 and entries:
        from acl import _engine

        nets = array("I", [e[0] for e in entries])
        lens = array("B", [e[1] for e in entries])
        vals = array("i", [e[2] for e in entries])
        return _engine.ranges4(nets, lens, vals, first_match)
    r = ranges(entries, bits, first_match)
    return [s for s, _ in r], [v for _, v in r]


def _family_table(views, fam: int, action_for):
    """Overlay the views of one family; (starts, actions) with -1 = residual."""
    from acl import _engine  # the batch plan exists only with the compiled kernel

    bits = _BITS[fam]
    per_view = []                  # (starts, values, value -> Decision)
    top_only = fam == 4 and all(v.forced_v4 in ([], [(0xFFFFFFFF, 32)]) for v in views)
    force_top = top_only and any(v.forced_v4 for v in views)
    for v in views:
        if fam == 4 and v.forced_v4 and not top_only:
            fs, fv = _view_ranges([(n, ln, 0) for n, ln in v.forced_v4], bits, False)
            per_view.append((fs, fv, lambda val: RESIDUAL if val >= 0 else None))
        ready = v.ranges4 if fam == 4 else v.ranges6
        if ready is not None:
            starts, vals = [x for x, _ in ready], [y for _, y in ready]
        elif fam == 4 and v.v4_columns is not None:
            starts, vals = _engine.ranges4(*v.v4_columns, v.first_match)
        else:
            starts, vals = _view_ranges(v.v4 if fam == 4 else v.v6, bits, v.first_match)
        per_view.append((starts, vals, (lambda view: lambda val: view.default if val < 0
                                        else view.decisions[val])(v)))
    if len(per_view) == 1:
        starts, codes = per_view[0][0], per_view[0][1]
        combos = {c: (c,) for c in set(codes)}
    else:
        starts = sorted({s for pv in per_view for s in pv[0]})
        idx = [0] * len(per_view)
        code_of: dict[tuple, int] = {}
        codes = []
        for s in starts:
            key = []
            for k, pv in enumerate(per_view):
                st = pv[0]
                while idx[k] + 1 < len(st) and st[idx[k] + 1] <= s:
                    idx[k] += 1
                key.append(pv[1][idx[k]])
            codes.append(code_of.setdefault(tuple(key), len(code_of)))
        combos = {c: k for k, c in code_of.items()}
    # codes (a view's values, -1 = uncovered, or overlay combinations) to
    # actions through a table, in C: a million ranges are one pass
    table = array("i", [-1]) * (max(codes) + 2)
    for code, key in combos.items():
        d = combine([pv[2](val) for pv, val in zip(per_view, key, strict=True)])
        table[code + 1] = -1 if d is RESIDUAL else action_for(d)
    acts = _engine.remap_values(codes if isinstance(codes, array) else array("i", codes), table)
    if fam == 4:
        return _v4_tail(array("I", starts), acts, force_top)
    return (array("Q", [s >> 64 for s in starts]),
            array("Q", [s & ((1 << 64) - 1) for s in starts])), acts


def _v4_tail(starts: array, acts: array, force_top: bool):
    """The IPv4 table as BatchPlan takes it; with ``force_top``,
    255.255.255.255 alone goes to Python."""
    if force_top:
        if starts[-1] == 0xFFFFFFFF:
            acts[-1] = -1
        else:
            starts.append(0xFFFFFFFF)
            acts.append(-1)
    return starts, acts


def build_plan(policy, sources, cache: dict | None = None):
    """The BatchPlan for ``policy`` (None when no service can use one).

    ``cache`` (the engine's, kept across reloads) maps a service to the
    tables built for it last time and the layer objects they came from; a
    service whose layers are the very same objects (acl.policy keeps a layer
    whose files did not change) reuses its tables instead of building them
    again.  xinetd services are always rebuilt (their lists may change while
    their limit state is handed over)."""
    # Millions of small tuples and no cycles: the cyclic collector would only
    # rescan the (large) policy again and again while they are made.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_plan(policy, sources, cache if cache is not None else {})
    finally:
        if enabled:
            gc.enable()


def _build_plan(policy, sources, cache: dict):
    from acl import _engine
    from acl.engine import RATE_DENY

    services = []
    actions: list[tuple[bytes, tuple]] = []
    lim = policy.limits
    limits_state = None
    fresh: dict = {}
    for name in sorted(policy.named_services()):
        layers = policy.layers_for(name)
        if not layers:
            continue
        key = (tuple((layer, daemon) for layer, daemon in layers), lim)
        hit = cache.get(name)
        if hit is not None and len(hit[0][0]) == len(key[0]) and hit[0][1] == lim and all(
                a[0] is b[0] and a[1] == b[1] for a, b in zip(hit[0][0], key[0], strict=True)):
            entry = hit[1]
        else:
            entry = _service_tables(name, layers, lim, RATE_DENY)
            if entry is None:
                continue
        (s4, a4, h6, l6, a6, local, rate_local, flags, slot, limit_local, state) = entry
        if slot >= 0:
            if limits_state is None:
                limits_state = state
            if state is not limits_state:
                continue                     # one LimitState per plan
        elif not any(type(layer).__name__ == "XinetdLayer" for layer, _d in layers):
            fresh[name] = (key, entry)
        base = len(actions)
        actions.extend(local)
        services.append((name.encode(), s4, a4, h6, l6, a6, lim.rate, lim.burst,
                         rate_local + base if rate_local >= 0 else -1, flags, slot,
                         {code: a + base for code, a in limit_local.items()}, base))
    cache.clear()
    cache.update(fresh)
    if not services:
        return None
    return _engine.BatchPlan(services, actions, sources, lim.ipv6_prefix, limits_state)


def _service_tables(name: str, layers, lim, rate_deny):
    """One service's range tables and its actions (indices local to it), or
    None when a layer cannot give a view."""
    views = [view_of(layer, daemon or name) for layer, daemon in layers]
    if any(v is None for v in views):
        return None
    local: list[tuple[bytes, tuple]] = []
    ids: dict[Decision, int] = {}
    labels: dict[tuple, tuple] = {}     # one label object for the many actions that share it

    def action(d: Decision) -> int:
        """The action of ``d``, or -1 (Python's) when its frame is too big."""
        a = ids.get(d)
        if a is None:
            try:
                payload = decision_payload(d)
            except ValueError:               # too large or not encodable: ERROR 6 or 7
                payload = None
            if payload is None or 12 + len(payload) > MAX_FRAME:
                a = ids[d] = -1
            else:
                a = ids[d] = len(local)
                label = (name, int(d.verdict), int(d.reason))
                local.append((payload, labels.setdefault(label, label)))
        return a

    flags = (1 if any(v.uses_host for v in views) else 0) | (
        2 if any(v.uses_user for v in views) else 0)
    slot, limit_local, state = -1, {}, None
    xinetd = [layer for layer, _d in layers if type(layer).__name__ == "XinetdLayer"]
    if xinetd:
        info = limits_of(xinetd[0], name)
        if info is not None:
            state, slot, refusals = info
            limit_local = {code: action(d) for code, d in refusals.items()}
            if -1 in limit_local.values():   # (refusals carry no env: never)
                return None
        elif xinetd[0].policy.services.get(name) is not None:
            return None
    s4, a4 = _family_table(views, 4, action)
    (h6, l6), a6 = _family_table(views, 6, action)
    rate_local = action(rate_deny) if lim.rate > 0 else -1
    if lim.rate > 0 and rate_local < 0:
        return None
    return (s4, a4, h6, l6, a6, _Actions(local), rate_local, flags, slot, limit_local, state)


class _Actions:
    """One service's actions as the engine's plan cache keeps them across
    reloads: every payload in one bytes object, where each ends, and each
    one's label (the few distinct label tuples, shared) -- not a bytes object
    and a tuple per action, which a 100,000-line hosts.allow has one of per
    rule.  Iterating gives ``(payload, label)`` as BatchPlan takes them."""

    __slots__ = ("blob", "ends", "labels")

    def __init__(self, local: list) -> None:
        self.blob = b"".join([payload for payload, _ in local])
        self.ends = array("Q", accumulate(len(payload) for payload, _ in local))
        self.labels = [label for _, label in local]

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        blob, start = self.blob, 0
        for end, label in zip(self.ends, self.labels, strict=True):
            yield blob[start:end], label
            start = end
