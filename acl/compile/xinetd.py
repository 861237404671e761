"""xinetd configuration -> the ``xinetd`` layer: address lists and limits.

Theory of operation (spec C.4-C.8; ARCHITECTURE.md "Decisions", "Leases"):

* :func:`load_xinetd` reads a configuration exactly as xinetd would keep or
  drop its services and returns ``(policy, diagnostics)``; it raises
  :class:`~acl.errors.RuleSyntaxError` where xinetd would refuse to start.
* :class:`XinetdLayer` answers for the services of one policy, in xinetd's
  order: **cps -> max_load -> access_times -> instances -> per_source**
  (the limits core), then the per-source token bucket (acl's addition),
  then **only_from / no_access**.  ``check`` counts cps as xinetd does
  (refused addresses count too) but takes no lease.
* Address lists are *presence* tests, never "most specific" (spec C.5)::

      na = no_access present and some entry matches
      of = only_from present and some entry matches
      deny if na; deny if only_from present and not of; else allow

  Numeric entries go to prefix tables (``acl.core.PrefixTable``, any hit
  counts); names and ``.domain`` entries are matched on the client's reverse
  name (the request's ``host`` when given, else the resolver), IPv6 /128
  entries never match, IPv4 entries also match v4-mapped clients, IPv6
  entries only match IPv6 (incl. mapped) clients.
* Limit state lives in an ``acl.core.limits.LimitState`` that the engine
  hands from one layer to the next on reload, so counters and leases survive.
  A layer built around a state it was handed (a reload being prepared, off
  the loop thread) only reserves slots and checks its configuration; its
  limits are put in force by :meth:`XinetdLayer.activate`, which the engine
  calls when it swaps the policy in -- so a reload that fails later, or is
  never committed, changes no limit.  A layer with a state of its own
  activates itself.  ``activate`` returns the names to keep; the engine then
  retires the other slots (``LimitState.retire``).
* Putting limits in force restarts each service's cps window, as xinetd's
  reload does (it keeps the count in the configuration it replaces) --
  unless the layer is told ``reread=False``: acl reloads when *any* of its
  files changes (a hosts.deny fail2ban writes to, a tcprules file), and a
  change xinetd would never have seen must not hand every service a fresh
  window.  acl.policy says ``reread`` when this source's own files changed.
* Services sharing an id (spec C.2: xinetd keeps a repeated id when bind
  address, port or protocol differ): each entry keeps its own lists and its
  own limit slot (named ``id`` for the first, ``"id bind port protocol"`` for
  the others).  A request goes to the entry whose ``bind`` is the request's
  server address (an entry without ``bind`` takes any; a bound one is
  preferred, as the kernel prefers it) and, when the request names a server
  port, whose port it is.  A request more than one entry could take (no
  server address, or one that tells them not apart), or none, is refused
  (``address``) at the first entry's line: acl cannot know which of
  xinetd's sockets it came through.  A warning at load says so.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from dataclasses import dataclass, field

from acl.core import PrefixTable
from acl.core import limits as _limits
from acl.errors import Diagnostic, PolicyError, Severity
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.parse.xinetd import XEntry, XinetdConfig, parse_xinetd, parse_xinetd_text
from acl.parse.xinetd_addr import parse_value
from acl.parse.xinetd_resolve import SystemResolver

__all__ = ["load_xinetd", "load_xinetd_text", "XinetdPolicy", "XinetdService", "AddressList",
           "XinetdLayer", "read_loadavg"]

_V4_MAPPED = 0xFFFF << 32
_MAX_SENSOR = 10240      # sensor.c MAX_GLOBAL_NO_ACCESS


def read_loadavg(path: str = "/proc/loadavg") -> float:
    """The 1-minute load average, as xinetd's ``xgetloadavg`` reads it."""
    with open(path, encoding="ascii") as f:
        return float(f.read().split()[0])


def _entry_matches(e, addr: int, fam: int) -> bool:
    """addr.c addrlist_match for one numeric entry."""
    if e.kind == "v4":
        if fam == 4:
            return addr & e.mask == e.addr & e.mask
        return addr >> 32 == 0xFFFF and (addr & 0xFFFFFFFF) & e.mask == e.addr & e.mask
    if fam != 6:
        return False
    if e.kind == "v6":
        return addr == e.addr
    if e.kind == "v6net":
        m = (((1 << e.mask) - 1) << (128 - e.mask)) if e.mask else 0
        return addr & m == e.addr & m
    return False


class AddressList:
    """One ``only_from`` or ``no_access`` list, compiled for presence tests."""

    def __init__(self, entries):
        self.entries = tuple(entries)
        v4, v6 = [], []
        self.names: list[tuple[str, str]] = []     # (kind, lowered name)
        self.name_index: list[int] = []
        for i, e in enumerate(self.entries):
            if e.kind == "v4":
                v4.append((e.addr & e.mask, 32 - (~e.mask & 0xFFFFFFFF).bit_length(), i))
            elif e.kind == "v6":
                v6.append((e.addr, 128, i))
            elif e.kind == "v6net":
                n = e.mask
                v6.append((e.addr & ((((1 << n) - 1) << (128 - n)) if n else 0), n, i))
            elif e.kind in ("host", "domain"):
                self.names.append((e.kind, e.name.lower()))
                self.name_index.append(i)
            # "never" entries (IPv6 /128 and wider) match nothing.
        self.v4 = PrefixTable(4, v4) if v4 else None
        self.v6 = PrefixTable(6, v6) if v6 else None

    def matches(self, client: int, family: int, name_of) -> bool:
        """``client`` as an int of ``family`` (4, or 6 for AF_INET6 clients,
        mapped ones included); ``name_of()`` gives the reverse name or None."""
        return self.match(client, family, name_of) is not None

    def match(self, client: int, family: int, name_of):
        """The first entry (in list order among those a table holds) that
        covers the client, or None.  Only presence decides (spec C.5); the
        entry is returned to say where it is written."""
        if family == 4:
            if self.v4 is not None:
                i = self.v4.first_match(client)
                if i >= 0:
                    return self.entries[i]
        else:
            if self.v6 is not None:
                i = self.v6.first_match(client)
                if i >= 0:
                    return self.entries[i]
            if self.v4 is not None and client >> 32 == 0xFFFF:
                i = self.v4.first_match(client & 0xFFFFFFFF)
                if i >= 0:
                    return self.entries[i]
        if self.names:
            name = name_of()
            if name:
                low = name.lower()
                for idx, (kind, pat) in zip(self.name_index, self.names, strict=True):
                    if kind == "host":
                        if low == pat:
                            return self.entries[idx]
                    else:
                        # addr.c: the *first* occurrence must end the name
                        at = low.find(pat)
                        if at >= 0 and at + len(pat) == len(low):
                            return self.entries[idx]
        return None


@dataclass
class XinetdService:
    """What the layer needs about one kept service."""

    id: str
    name: str
    location: Location
    family: int                      # 4 or 6: the listening socket's family
    only_from: AddressList | None
    no_access: AddressList | None
    cps: tuple[int, int]
    instances: int
    per_source: int
    max_load: float
    access_times: tuple[tuple[int, int], ...] | None
    wait: bool
    port: int | None
    protocol: str | None
    socket_type: str | None
    bind: str | None
    server: str | None
    libwrap: bool                    # the libwrap check runs (no NOLIBWRAP)
    libwrap_name: str | None         # daemon name libwrap sees (spec C.10)
    wrapper_name: str | None         # server is acl-wrap: the name it asks the sidecar with
    banner: str | None
    banner_success: str | None
    banner_fail: str | None
    sensor: bool = False             # flags = SENSOR (spec C.5)
    deny_time: int = 0               # minutes; -1 FOREVER, 0 only logs
    entry: XEntry = field(repr=False, default=None)
    key: str = ""                    # its limit slot's name (set by _compile)


@dataclass
class XinetdPolicy:
    path: str
    #: id -> the (first) service of that id
    services: dict[str, XinetdService]
    config: XinetdConfig = field(repr=False)
    #: id -> every service of that id, in file order, for ids xinetd keeps
    #: more than once (different bind address, port or protocol)
    shared: dict[str, tuple[XinetdService, ...]] = field(default_factory=dict)

    def entries(self) -> list[XinetdService]:
        """Every kept service, those sharing an id included."""
        out = []
        for sid, svc in self.services.items():
            out.extend(self.shared.get(sid, (svc,)))
        return out


def _libwrap_name(e: XEntry) -> str | None:
    p = e.parsed
    if "libwrap" in p:
        return p["libwrap"]
    if "redirect" in p or "INTERNAL" in e.types:
        return e.name
    if "NAMEINARGS" in e.flags:
        args = p.get("server_args")
        return os.path.basename(args[0]) if args else None
    if p.get("server") is None:
        return e.id
    return os.path.basename(p["server"])


#: The tcpd-style wrapper that asks this sidecar (ext/wrap, docs/acl-wrap.md).
WRAPPER = "acl-wrap"


def _wrapper_name(e: XEntry) -> str | None:
    """The service name ``acl-wrap`` asks the sidecar with when it is this
    service's ``server`` (by basename), else None.  As ext/wrap/main.c picks
    it: ``ACL_WRAP_SERVICE`` (here: the service's ``env``) is read first; in
    explicit mode (argv[0]'s basename is acl-wrap) ``-n NAME`` replaces it;
    an empty result is then the basename of the server it runs, or (tcpd
    mode) argv[0] -- its basename when it is absolute.  xinetd's argv is
    ``server_args`` with NAMEINARGS, else the basename of ``server``
    followed by ``server_args``."""
    p = e.parsed
    server = p.get("server")
    if not server or os.path.basename(server) != WRAPPER or "redirect" in p \
            or "INTERNAL" in e.types:
        return None
    env_name = ""
    for item in reversed(p.get("env", ())):         # putenv in order: the last wins
        name, _, value = item.partition("=")
        if name == "ACL_WRAP_SERVICE":
            env_name = value
            break
    args = list(p.get("server_args", ()))
    argv = args if "NAMEINARGS" in e.flags else [os.path.basename(server), *args]
    if not argv or not argv[0]:
        return None                                  # acl-wrap refuses to run (exit 100)
    if os.path.basename(argv[0]) != WRAPPER:         # tcpd mode
        return env_name or (os.path.basename(argv[0]) if argv[0].startswith("/") else argv[0])
    name, i = None, 1                                # explicit mode: getopt "+s:n:t:och"
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        if argv[i] == "--":
            i += 1
            break
        word, i = argv[i], i + 1
        for j in range(1, len(word)):                # "-oc", "-nNAME", "-on NAME"
            if word[j] in "snt":
                value = word[j + 1:]
                if not value and i < len(argv):
                    value, i = argv[i], i + 1
                if word[j] == "n":
                    name = value
                break
    if name is None:
        name = env_name                              # no -n: the environment's
    if name:
        return name
    return os.path.basename(argv[i]) if i < len(argv) else None


def _compile(config: XinetdConfig) -> tuple[XinetdPolicy, list[Diagnostic]]:
    services: dict[str, XinetdService] = {}
    shared: dict[str, list[XinetdService]] = {}
    for e in config.services:
        p = e.parsed
        of = p.get("only_from")
        na = p.get("no_access")
        times = p.get("access_times")
        svc = XinetdService(
            id=e.id, name=e.name, location=Location(e.path, e.line),
            family=6 if "IPv6" in e.flags else 4,
            only_from=None if of is None else AddressList(of),
            no_access=None if na is None else AddressList(na),
            cps=tuple(p.get("cps", (50, 10))),
            instances=p.get("instances", -1), per_source=p.get("per_source", -1),
            max_load=p.get("max_load", 0.0),
            access_times=None if times is None else tuple(times),
            wait=bool(p.get("wait")), port=p.get("port"), protocol=p.get("protocol"),
            socket_type=p.get("socket_type"), bind=p.get("bind"), server=p.get("server"),
            libwrap="NOLIBWRAP" not in e.flags, libwrap_name=_libwrap_name(e),
            wrapper_name=_wrapper_name(e),
            banner=p.get("banner"), banner_success=p.get("banner_success"),
            banner_fail=p.get("banner_fail"), sensor="SENSOR" in e.flags,
            deny_time=p.get("deny_time", 0), entry=e)
        if e.id in services:
            svc.key = f"{e.id} {svc.bind or '*'} {svc.port} {(svc.protocol or '').lower()}"
            shared.setdefault(e.id, [services[e.id]]).append(svc)
        else:
            svc.key = e.id
            services[e.id] = svc
    diags = []
    for sid, group in shared.items():
        first = group[0]
        where = ", ".join(f"{s.location.path}:{s.location.line}" for s in group)
        diags.append(Diagnostic(
            first.location.path, first.location.line, 0,
            f"service id {sid} is kept {len(group)} times ({where}: bind address, port or "
            "protocol differ); acl decides a request by the one whose bind address (and "
            "port) is the request's server address, and refuses a request that names "
            "none of them or could go to more than one", Severity.WARNING))
    policy = XinetdPolicy(config.path, services, config,
                          {sid: tuple(g) for sid, g in shared.items()})
    return policy, diags


def load_xinetd(path: str, resolver=None, system=None,
                stamp=None) -> tuple[XinetdPolicy, list[Diagnostic]]:
    """Read an xinetd configuration; services kept/dropped as xinetd does
    (``system``: acl.parse.xinetd_system.SystemLookups, kept across reloads;
    ``stamp``: see parse_xinetd -- the files read are ``policy.config.files``)."""
    config = parse_xinetd(path, resolver, system, stamp)
    policy, diags = _compile(config)
    return policy, list(config.diagnostics) + diags


def load_xinetd_text(text: str, path: str = "<xinetd.conf>", resolver=None,
                     system=None) -> tuple[XinetdPolicy, list[Diagnostic]]:
    config = parse_xinetd_text(text, path, resolver, system)
    policy, diags = _compile(config)
    return policy, list(config.diagnostics) + diags


def _where(entry, svc: XinetdService) -> Location:
    """The line of the list value that decided, else the service."""
    if entry is not None and entry.line:
        return Location(entry.path, entry.line)
    return svc.location


def _client(text: str, family: int) -> tuple[int, int]:
    """(address int, family) of a client as the service's socket sees it."""
    try:
        if ":" in text:
            n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
            if family == 4 and n >> 32 == 0xFFFF:
                return n & 0xFFFFFFFF, 4
            return n, 6
        n = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, TypeError) as exc:
        raise ValueError(f"not a numeric address: {text!r}") from exc
    return (n, 4) if family == 4 else (_V4_MAPPED | n, 6)


def _server_key(text: str | None) -> bytes | None:
    """A server (or bind) address as 16 bytes, IPv4 as v4-mapped; None when
    absent or not numeric."""
    if not text:
        return None
    try:
        return _limits.pack_source(text.split("%", 1)[0] if ":" in text else text)
    except ValueError:
        return None


def _packed(addr: int, family: int) -> bytes:
    return (addr | _V4_MAPPED).to_bytes(16, "big") if family == 4 else addr.to_bytes(16, "big")


_REASONS = {_limits.CPS: Reason.CPS, _limits.LOAD: Reason.LOAD, _limits.TIME: Reason.TIME,
            _limits.SERVICE_LIMIT: Reason.SERVICE_LIMIT,
            _limits.PER_SOURCE_LIMIT: Reason.PER_SOURCE_LIMIT, _limits.RATE: Reason.RATE}


class XinetdLayer:
    """The ``xinetd`` layer of one policy over limit state that outlives it."""

    name = "xinetd"

    def __init__(self, policy: XinetdPolicy, state=None, loadavg=None, resolver=None,
                 rate: dict | None = None, max_sources: int = 65536, v6_prefix: int = 64,
                 reread: bool = True):
        """``rate`` maps a service id (or ``"*"``) to ``(rate per second,
        burst)`` for the per-source token bucket; ``loadavg()`` returns the
        1-minute load (default: /proc/loadavg), read only for services with
        ``max_load``; ``reread`` false: the configuration is the one in
        force already, so cps windows go on (module rules)."""
        self.policy = policy
        self._reread = reread
        own = state is None
        self.state = _limits.LimitState(max_sources=max_sources,
                                        v6_prefix=v6_prefix) if own else state
        self._loadavg = loadavg if loadavg is not None else read_loadavg
        self._resolver = resolver if resolver is not None else SystemResolver()
        self._slots: dict[str, int] = {}
        self._config: dict[int, dict] = {}
        rate = rate or {}
        for svc in policy.entries():
            r, b = rate.get(svc.id, rate.get("*", (0.0, 0.0)))
            cfg = {"cps_max": svc.cps[0], "cps_wait": svc.cps[1], "instances": svc.instances,
                   "per_source": svc.per_source, "max_load": svc.max_load,
                   "times": svc.access_times, "rate": r, "burst": b}
            self.state.validate(**cfg)
            try:
                slot = self.state.slot(svc.key)
            except ValueError as exc:
                raise PolicyError(f"{policy.path}: too many xinetd services: acl keeps the "
                                  f"limits of {self.state.max_services} at most, the running "
                                  f"policy's included ({exc})") from None
            self._slots[svc.key] = slot
            self._config[slot] = cfg
        if own:
            self.activate()

    def activate(self):
        """Put this layer's limits in force (the engine calls it at the swap,
        on the loop thread); ``(state, names of its services)``."""
        for slot, cfg in self._config.items():
            self.state.configure(slot, **cfg, restart_window=self._reread)
        return self.state, set(self._slots)

    # -- which service a request goes to ----------------------------------
    def _service(self, request: Request) -> XinetdService | Decision | None:
        """The service of the request's id; for an id kept more than once,
        the one the request's server address (and port) picks, or a refusal
        when that does not pick exactly one (module docstring)."""
        svc = self.policy.services.get(request.service)
        group = self.policy.shared.get(request.service) if svc is not None else None
        if not group:
            return svc
        server = _server_key(request.server)
        picked = [s for s in group if not request.server_port or s.port is None
                  or s.port == request.server_port]
        if server is not None:
            bound = [s for s in picked if s.bind is not None and _server_key(s.bind) == server]
            picked = bound or [s for s in picked if s.bind is None]
        if len(picked) == 1:
            return picked[0]
        return Decision(Verdict.DENY, Reason.ADDRESS, svc.location)

    # -- the Layer protocol ----------------------------------------------
    def check(self, request: Request, now: float) -> Decision | None:
        svc = self._service(request)
        if svc is None or isinstance(svc, Decision):
            return svc
        try:
            addr, fam = _client(request.client, svc.family)
        except ValueError:
            return Decision(Verdict.DENY, Reason.ERROR, svc.location)
        load = self._loadavg() if svc.max_load else 0.0
        r = self.state.check(self._slots[svc.key], _packed(addr, fam), now, load)
        if r != _limits.OK:
            return Decision(Verdict.DENY, _REASONS[r], svc.location)
        # child side (spec C.6 4a): the SENSOR list, then only_from/no_access
        if svc.sensor:
            self._sensor_add(svc, addr, fam, now)
            return Decision(Verdict.DENY, Reason.ADDRESS, svc.location)
        if self._sensor_hit(addr, fam, now):
            return Decision(Verdict.DENY, Reason.ADDRESS, svc.location)
        return self._address(svc, addr, fam, request)

    # -- SENSOR (sensor.c) -------------------------------------------------
    def _sensor_list(self) -> list:
        """[(AddrEntry, expires or None)], kept in the state across reloads."""
        return self.state.extra.setdefault("xinetd_sensor", [])

    def _sensor_add(self, svc: XinetdService, addr: int, fam: int, now: float) -> None:
        # deny_time 0 only logs; the address is added as xinetd adds it: its
        # text through the numeric parser (so trailing zero octets widen it).
        if svc.deny_time == 0:
            return
        lst = self._sensor_list()
        expires = None if svc.deny_time == -1 else math.floor(now) + 60 * svc.deny_time
        for i, (entry, old) in enumerate(lst):
            if _entry_matches(entry, addr, fam):
                if old is not None and (expires is None or expires > old):
                    lst[i] = (entry, expires)
                return
        if len(lst) >= _MAX_SENSOR:
            return
        text = str(ipaddress.IPv6Address(addr) if fam == 6 else ipaddress.IPv4Address(addr))
        got = parse_value(text, None)
        if got:
            lst.append((got[0], expires))

    def _sensor_hit(self, addr: int, fam: int, now: float) -> bool:
        lst = self.state.extra.get("xinetd_sensor")
        if not lst:
            return False
        if now is not None:
            lst[:] = [(e, t) for e, t in lst if t is None or t > now]
        return any(_entry_matches(e, addr, fam) for e, _ in lst)

    def reads_names(self, service: str) -> bool:
        """Whether deciding ``service`` can read the client's name (a host or
        ``.domain`` entry in its only_from/no_access)."""
        svc = self.policy.services.get(service)
        return svc is not None and any(lst is not None and lst.names
                                       for s in self.policy.shared.get(service, (svc,))
                                       for lst in (s.only_from, s.no_access))

    def check_address(self, request: Request) -> Decision | None:
        """only_from/no_access alone: no limit is consulted or counted."""
        svc = self._service(request)
        if svc is None or isinstance(svc, Decision):
            return svc
        try:
            addr, fam = _client(request.client, svc.family)
        except ValueError:
            return Decision(Verdict.DENY, Reason.ERROR, svc.location)
        if svc.sensor or self._sensor_hit(addr, fam, None):
            return Decision(Verdict.DENY, Reason.ADDRESS, svc.location)
        return self._address(svc, addr, fam, request)

    def _address(self, svc: XinetdService, addr: int, fam: int, request: Request) -> Decision:
        cache = []

        def name_of():
            if not cache:
                if request.host:
                    cache.append(request.host)
                else:
                    # a v4-mapped client is looked up as the IPv6 address it
                    # is (live xinetd: /etc/hosts IPv4 lines give it no name)
                    text = str(ipaddress.IPv6Address(addr) if fam == 6
                               else ipaddress.IPv4Address(addr))
                    cache.append(self._resolver.reverse(text))
            return cache[0]

        na = svc.no_access.match(addr, fam, name_of) if svc.no_access is not None else None
        of = svc.only_from.match(addr, fam, name_of) if svc.only_from is not None else None
        if na is not None:
            return Decision(Verdict.DENY, Reason.ADDRESS, _where(na, svc))
        if svc.only_from is not None and of is None:
            return Decision(Verdict.DENY, Reason.ADDRESS, svc.location)
        return Decision(Verdict.ALLOW, Reason.OK, _where(of, svc) if of else svc.location)

    # -- leases ------------------------------------------------------------
    def take_lease(self, request: Request, now: float) -> int:
        """Count a granted connection toward instances and per_source."""
        svc = self._service(request)
        if isinstance(svc, Decision):
            svc = None
        slot = self._slots[svc.key] if svc is not None \
            else self.state.slot(request.service)
        family = svc.family if svc is not None else 6
        addr, fam = _client(request.client, family)
        return self.state.take_lease(slot, _packed(addr, fam))

    def release(self, lease_id: int) -> bool:
        return self.state.release(lease_id)

    # -- for the metrics collector ----------------------------------------
    def table_counters(self) -> dict:
        """Plain ints of the per-source table alone (cheap: read at every scrape)."""
        st = self.state
        return {"evictions": int(st.evictions), "tracked_sources": int(st.tracked_sources),
                "table_capacity": int(st.capacity), "table_bytes": int(st.memory_bytes),
                "lease_overflows": int(st.lease_overflows),
                "overflow_entries": int(st.overflow_entries),
                "overflow_full": int(st.overflow_full)}

    def counters(self) -> dict:
        """Plain ints: :meth:`table_counters`, and per service trips/leases."""
        st = self.state
        out = {**self.table_counters(), "services": {}}
        for sid, slot in self._slots.items():
            out["services"][sid] = {
                "active_leases": int(st.active_leases(slot)),
                "cps_trips": int(st.cps_trips(slot)),
                **{reason.log_text: int(st.refusals(slot, code))
                   for code, reason in _REASONS.items()},
            }
        return out

    def cps_active(self, service: str, now: float) -> bool:
        """False while cps keeps ``service`` switched off (socket closed)."""
        return self.state.cps_active(self._slots[service], now)

