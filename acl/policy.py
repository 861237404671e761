"""The policy configuration (TOML, docs/configuration.md) -> a :class:`Policy`.

Rules of this file:

* Paths in the TOML file are relative to the TOML file.  No ``path`` means
  the example policy shipped in the package (``acl/examples/policy.toml``).
* Each ``[[source]]`` becomes one layer through its language's loader
  (``acl.compile.tcpw``/``tcprules``/``xinetd``); a rule file that cannot be
  used raises :class:`acl.errors.RuleSyntaxError` (``file:line:column``), a
  configuration that names something impossible raises
  :class:`acl.errors.PolicyError` naming the TOML file and the key.  Nothing
  here decides anything: :mod:`acl.engine` applies the layers.
* ``Policy.layers_for(service)`` returns the layers bound to a service in the
  engine's fixed order -- xinetd, tcprules, hosts_access -- whatever order the
  file lists them in.  A source binds to the services in its ``services``
  list (``"*"``: every service); an xinetd source binds to the service ids
  its configuration defines.
* hosts_access for an xinetd service id is asked under the daemon name
  :func:`libwrap_name` gives: xinetd's libwrap name (spec C.10), or, with
  ``flags = NOLIBWRAP``, the name acl-wrap asks with when acl-wrap is the
  service's server (its request is then the hosts_access check, as tcpd's
  is in the classic xinetd + tcpd + NOLIBWRAP stanza); NOLIBWRAP with any
  other server skips hosts_access.
* A reload passes the running policy as ``previous`` so each xinetd layer
  keeps its limit state (cps windows, instances, per_source counts) -- the
  state of the running source read from the same file, whatever its place
  in the list -- and the new limits apply only when the engine swaps the
  policy in (``XinetdLayer.activate``); the
  name cache (:mod:`acl.names`) is kept while ``[names]`` and its hosts file
  stay the same.
* ``[names]`` decides where client names come from when a rule needs one
  and the caller sent none: the system resolver (default), a private hosts
  file, or nowhere (``lookup = false``: every such client is "unknown", as
  before a lookup is made).  xinetd's host names in address lists are
  resolved at load time by the same choice (spec C.3).
* The Postfix door (``[sockets] policy``) takes no lease -- it cannot know
  when an SMTP session ends -- so per_source and instances of its
  ``policy_service`` count nothing it asks: the load warns
  (:func:`postfix_door_warnings`, among ``Policy.diagnostics``).
* ``[sockets]`` is read and checked in one place (:func:`_read_sockets`),
  its user and group names looked up there once, at start; the server
  binds, chowns and admits peers with what it gives.  A reload checks the
  table as a start does but takes only ``policy_service`` from it: the
  server keeps the sockets, their group and the admin peers it started
  with, and a chroot may hide /etc by then (so ``[run]``'s names, too, are
  looked up at start only).
* xinetd's other questions to the system (``protocol``, ``user``,
  ``group``, ``server``, /etc/services) go through one
  :class:`acl.parse.xinetd_system.SystemLookups` handed from policy to
  policy, so a reload inside ``[run] chroot`` keeps the answers the first
  load got outside it.
* Every file is stamped (size, mtime, inode) BEFORE it is read, never after
  (:func:`_stamps`): a file that changes while it is read then differs from
  its stamp, so ``acl serve``'s watcher (``Policy.stamps``) reloads again
  and a reload does not keep the layer read from the half-written file
  (:func:`_unchanged`, which also compares the signature taken before
  reading).  For the watcher, a stamp whose mtime is less than ``RACY_NS``
  before the load began is "racy" and matches nothing: a same-size rewrite
  within the file system's timestamp tick would not show in the stamp (git's
  racy-git rule), so the watcher reloads such a file once more.  The files a hosts.allow
  ``/path`` pattern names are only known once it is read; they are stamped
  just after.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from acl import nss
from acl.errors import (
    AclError,
    Diagnostic,
    OutOfResources,
    PolicyError,
    RuleSyntaxError,
    Severity,
)
from acl.nfqueue_config import NfqueueConfig
from acl.rulefiles import read_bytes
from acl.toml_positions import key_path, position, value_text

EXAMPLE = Path(__file__).resolve().parent / "examples" / "policy.toml"
#: A file modified less than this long before it was stamped may change again
#: without its stamp changing (timestamp ticks are a jiffy, up to 10 ms).
RACY_NS = 50_000_000
RACY = "racy"                        # a stamp that matches no stat
ORDER = {"xinetd": 0, "tcprules": 1, "hosts_access": 2}
KNOWN_SECTIONS = {"sockets", "metrics", "limits", "source", "nfqueue", "run", "names"}
#: The keys of each table (docs/configuration.md); any other key is an error,
#: so a misspelt one cannot silently leave a default in force.  ``[nfqueue]``
#: is checked by its own reader (acl.nfqueue_config).
TABLE_KEYS = {
    "sockets": ("query", "policy", "policy_service", "admin", "mode", "group", "admin_uids",
                "admin_gids"),
    "metrics": ("listen",),
    "limits": ("sources", "ipv6_prefix", "rate", "burst"),
    "run": ("user", "group", "chroot", "watch", "keep_leases"),
    "names": ("lookup", "hosts_file", "ttl", "negative_ttl", "cache", "threads", "per_network",
              "deadline"),
}
#: The most ``[run] keep_leases``: the journal is 2 x keep_leases records of
#: 320 bytes (acl/serve/lease_journal.py ``capacity_for``), about 40 MiB here.
MAX_KEEP_LEASES = 65536
#: The keys of a ``[[source]]`` table, by its type.
SOURCE_KEYS = {
    "hosts_access": ("type", "allow", "deny", "services"),
    "tcprules": ("type", "file", "services", "mapped_as_v4"),
    "xinetd": ("type", "file", "services"),
}


@dataclass(frozen=True)
class Sockets:
    query: str = ""                  # no socket unless the policy names one
    policy: str = ""
    policy_service: str = "smtpd"
    admin: str = ""
    mode: int = 0o660
    group: str = ""
    admin_uids: tuple[int, ...] = (0,)
    admin_gids: tuple[int, ...] = ()
    gid: int = -1                 # ``group``'s id, looked up at start (-1: no group)


@dataclass(frozen=True)
class Limits:
    sources: int = 1 << 20
    ipv6_prefix: int = 64
    rate: float = 0.0
    burst: float = 0.0


@dataclass(frozen=True)
class Run:
    user: str = ""
    group: str = ""
    chroot: str = ""
    watch: bool = True
    keep_leases: int = 0          # connections (and leases) kept across a restart; 0: off


@dataclass(frozen=True)
class Names:
    lookup: bool = True
    hosts_file: str = ""          # absolute; "" = the system resolver
    ttl: float = 300.0
    negative_ttl: float = 60.0
    cache: int = 10000
    # how lookups are run (acl/serve/lookups.py), not what they answer
    threads: int = 64             # worker threads at most
    per_network: int = 4          # lookups running at once per client /24 or /64
    deadline: float = 1.5         # seconds a request waits for names; 0: no limit


class _NoNames:
    """The xinetd layer's resolver when ``lookup = false``: no name, ever."""

    def reverse(self, addr: str) -> None:
        return None


@dataclass
class Source:
    """One ``[[source]]``: its layer and the services it binds to."""

    kind: str                        # xinetd | tcprules | hosts_access
    layer: object
    services: frozenset[str] | None  # None: every service
    files: tuple[Path, ...]
    diagnostics: tuple = ()
    state: object = None             # xinetd limit state, handed to the next policy
    key: tuple = ()                  # what was asked for (type, paths, options)
    signature: bytes = b""           # hash of every file the layer was read from
    stamps: tuple = ()               # (size, mtime_ns, inode) of each file, taken before reading


@dataclass
class Policy:
    path: Path | None
    sources: list[Source]
    sockets: Sockets = field(default_factory=Sockets)
    metrics_listen: str = ""
    limits: Limits = field(default_factory=Limits)
    run: Run = field(default_factory=Run)
    nfqueue: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    names: Names = field(default_factory=Names)
    name_service: object = None      # acl.names.NameService, None when lookup = false
    names_key: tuple = ()            # (Names, hosts file signature): when to keep the cache
    xinetd_system: object = None     # acl.parse.xinetd_system.SystemLookups, kept on reload
    file_stamps: dict = field(default_factory=dict)  # str(file) -> stamp taken before reading
    stamped_ns: int = field(default_factory=time.time_ns)   # when the load began
    warnings: tuple = ()             # about the policy as a whole (postfix_door_warnings)

    def __post_init__(self) -> None:
        self.sources.sort(key=lambda s: ORDER.get(s.kind, 9))
        self._cache: dict[str, tuple] = {}
        self._named: frozenset[str] | None = None

    @property
    def files(self) -> list[Path]:
        out = [self.path] if self.path else []
        if self.names.hosts_file:
            out.append(Path(self.names.hosts_file))
        for s in self.sources:
            out.extend(s.files)
        return out

    @property
    def stamps(self) -> dict[str, object]:
        """Each of :attr:`files` -> its stamp taken before it was read (what
        a watcher compares against: any later change differs).  A policy not
        made by :func:`load_policy` has none: its files are stamped now.  A
        racy stamp (module rules) is ``RACY``, which matches no stat."""
        out = dict(self.file_stamps)
        for s in self.sources:
            out.update(zip(map(str, s.files), s.stamps, strict=False))  # () if unstamped
        # modified from just before the load to its end; a future mtime
        # (touch -d) is not racy, or every poll would reload
        since, until = self.stamped_ns - RACY_NS, int(self.loaded_at * 1e9) + RACY_NS
        return {str(f): RACY if st and since <= st[1] <= until else st
                for f in self.files
                for st in [out[str(f)] if str(f) in out else stamp(f)]}

    @property
    def diagnostics(self) -> list:
        return [d for s in self.sources for d in s.diagnostics] + list(self.warnings)

    def named_services(self) -> frozenset[str]:
        """Every service name the policy itself writes: a source's
        ``services`` list, a daemon name in hosts.allow/hosts.deny, an xinetd
        service id (1..255 bytes).  The batch plan is built for these, and
        they are the only ``service`` label values of the metrics."""
        if self._named is None:
            names: set[str] = set()
            for s in self.sources:
                if s.services is not None:
                    names.update(s.services)
                daemons = getattr(s.layer, "daemon_names", None)
                if daemons is not None:
                    names.update(daemons())
                defined = getattr(getattr(s.layer, "policy", None), "services", None)
                if isinstance(defined, dict):      # the xinetd layer: its service ids
                    names.update(defined)
            self._named = frozenset(n for n in names if 1 <= len(n.encode()) <= 255)
        return self._named

    def services(self) -> list[str]:
        """The service names the policy's sources bind ("*" when one binds any
        service), as ``layers_for`` binds them: an xinetd source without
        ``services`` binds its service ids, not every name."""
        names: set[str] = set()
        for s in self.sources:
            bound = bound_services(s)
            if bound is None:
                names.add("*")
            else:
                names.update(bound)
        return sorted(names)

    def layers_for(self, service: str) -> tuple:
        """``((layer, daemon name or None), ...)``: ``None`` asks the layer with
        the request as it is; a name asks hosts_access with that daemon name
        (an xinetd service's libwrap name, spec C.10)."""
        hit = self._cache.get(service)
        if hit is not None:
            return hit
        wrap = libwrap_name(self, service)
        layers = []
        for s in self.sources:
            if not _binds(s, service):
                continue
            if s.kind == "hosts_access" and wrap is not None:
                if wrap is False:
                    continue                 # NOLIBWRAP, and no acl-wrap asking
                layers.append((s.layer, wrap if wrap != service else None))
            else:
                layers.append((s.layer, None))
        layers = tuple(layers)
        if len(self._cache) < 4096:      # clients may invent names: stay bounded
            self._cache[service] = layers
        return layers


def bound_services(source: Source) -> frozenset[str] | None:
    """The service names ``source`` binds (see :func:`_binds`); None: any."""
    if source.services is not None:
        return source.services
    defined = getattr(getattr(source.layer, "policy", None), "services", None)
    if isinstance(defined, dict):            # the xinetd layer: its service ids
        return frozenset(defined)
    return None


def _binds(source: Source, service: str) -> bool:
    """:func:`bound_services` as a test of one name (without building a set)."""
    if source.services is not None:
        return service in source.services
    defined = getattr(getattr(source.layer, "policy", None), "services", None)
    if isinstance(defined, dict):            # the xinetd layer: its service ids
        return service in defined
    return True


def libwrap_name(policy: Policy, service: str) -> str | None | bool:
    """The daemon name hosts_access sees for ``service``, None when no xinetd
    source defines it (the request's service name is used as is).  For an
    xinetd service (spec C.10): its libwrap name while xinetd's own libwrap
    check runs; with ``flags = NOLIBWRAP``, the name acl-wrap asks with when
    acl-wrap is the service's ``server`` -- that request *is* the service's
    hosts_access check, as tcpd's is under xinetd with NOLIBWRAP -- and
    False for any other server (nobody asks hosts_access)."""
    for s in policy.sources:
        if s.kind != "xinetd":
            continue
        defined = getattr(getattr(s.layer, "policy", None), "services", None)
        svc = defined.get(service) if isinstance(defined, dict) else None
        if svc is not None:
            if not getattr(svc, "libwrap", True):
                return getattr(svc, "wrapper_name", None) or False
            return getattr(svc, "libwrap_name", None) or service
    return None


# -- loading ------------------------------------------------------------------
def _err(path, where: str, what: str, *, at_key: str | tuple | None = None) -> PolicyError:
    """``PATH:LINE:COLUMN: where: what`` when ``where`` (or ``at_key``, a
    name or a key path, whose key itself is then pointed at, not its value)
    names what the file spells out, in whatever TOML spelling, or a key
    left out of a table the file spells out (tomllib keeps no positions:
    the file is read again, on this error path only;
    :mod:`acl.toml_positions`), else ``PATH: where: what``."""
    return PolicyError(f"{position(path, at_key or where, at_key is not None)}: "
                       f"{where}: {what}")


def _table(conf: dict, name: str, path) -> dict:
    """``[name]`` (empty when absent), refusing a non-table and unknown keys."""
    table = conf.get(name, {})
    if not isinstance(table, dict):
        raise _err(path, f"[{name}]", "expected a table")
    _known_keys(table, TABLE_KEYS[name], path, f"[{name}]", name)
    return table


def _known_keys(table: dict, known, path, where: str, located: str) -> None:
    """Refuse a key not in ``known``; ``located`` is the table as
    :mod:`acl.toml_positions` names it (``sockets``, ``source[0]``)."""
    for key in table:
        if key not in known:
            # a key path, not ``located.key``: the key may hold dots itself
            raise _err(path, where, f"unknown key {key!r} (known: {', '.join(known)})",
                       at_key=(*key_path(located), key))


def _get(table: dict, key: str, kind, default, path, where: str):
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _err(path, f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    # TOML spells nan and inf; no float of a policy means either, and a NaN
    # passes every "< 0" test (burst = nan refused every client)
    if kind is float and not math.isfinite(value):
        raise _err(path, f"{where}.{key}", f"expected a finite number, got {value!r}")
    return value


def _services(src: dict, path, where: str) -> frozenset[str] | None:
    names = src.get("services", ["*"])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _err(path, f"{where}.services", "expected a list of service names")
    return None if "*" in names else frozenset(names)


def _file(base: Path, src: dict, key: str, path, where: str) -> Path:
    name = src.get(key)
    if not isinstance(name, str) or not name:
        raise _err(path, f"{where}.{key}", "a file name is required")
    return Path(_resolved(base, name, path, f"{where}.{key}"))


def _resolved(base: Path, name: str, path, where: str) -> str:
    """``name`` made absolute against ``base`` ("" stays ""); a name the
    system cannot take (a NUL in it) is an error at its key."""
    if not name:
        return ""
    try:
        return str((base / name).resolve())
    except (ValueError, OSError) as exc:
        raise _err(path, where, f"not a file name the system takes: {exc}") from None


def _previous_source(previous: Policy | None, kind: str, file: Path) -> Source | None:
    """The running policy's ``kind`` source with limit state read from the
    same file (resolved path), so reordering or inserting sources hands each
    one its own counters and leases; None (fresh state) for a new file.  A
    path the first load saw outside ``[run] chroot`` matches the same file
    seen from inside it."""
    if previous is None:
        return None
    root = os.path.abspath(previous.run.chroot).rstrip("/") if previous.run.chroot else ""
    for want in (str(file), root + str(file) if root else None):
        for s in previous.sources:
            if s.kind == kind and s.state is not None and s.files and str(s.files[0]) == want:
                return s
    return None


def _one_xinetd_source_per_file(sources: list[Source], path) -> None:
    """An xinetd file's limit state (counters, leases) is handed to the next
    policy by the file (:func:`_previous_source`): two sources reading one
    file would share it.  One source per file; its ``services`` says which
    of the file's services it binds."""
    first: dict[str, int] = {}
    for i, s in enumerate(sources):
        if s.kind == "xinetd" and s.files:
            j = first.setdefault(str(s.files[0]), i)
            if j != i:
                raise _err(path, f"source[{i}]", f"{s.files[0]} is read by source[{j}] "
                           "already: one xinetd source per file (list its services there)")


def _name_service(names: Names, previous: Policy | None, path) -> tuple[object, tuple]:
    """The policy's :class:`acl.names.NameService` (the running one while its
    configuration and hosts file are unchanged) and the key saying so."""
    # (how lookups are run -- threads, per_network, deadline -- changes no answer)
    names_what = replace(names, threads=0, per_network=0, deadline=0.0)
    if not names.lookup:
        return None, (names_what,)
    sig = b""
    if names.hosts_file:
        try:
            sig = _signature((names.hosts_file,))
        except OSError as exc:
            raise _err(path, "names.hosts_file", f"cannot read: {exc.strerror}") from exc
    key = (names_what, sig)
    if previous is not None and previous.names_key == key and previous.name_service is not None:
        return previous.name_service, key
    from acl.names import NameService
    from acl.parse.xinetd_resolve import HostsResolver, SystemResolver
    from acl.resolve import Resolver, SystemBackend, hosts_file_backend

    if names.hosts_file:
        text = read_bytes(names.hosts_file).decode("latin-1")
        backend = hosts_file_backend(text=text)     # @group: NSS's (acl/resolve.py)
        reverse = HostsResolver(text)
    else:
        backend, reverse = SystemBackend(), SystemResolver()
    service = NameService(Resolver(backend), reverse, ttl=names.ttl,
                          negative_ttl=names.negative_ttl, max_entries=names.cache)
    return service, key


def _load_source(src: dict, base: Path, path, where: str, previous,
                 names=None, names_key: tuple = (), system=None,
                 limits: Limits | None = None) -> Source:
    kind = src.get("type")
    if not isinstance(kind, str | None):
        raise _err(path, f"{where}.type", "expected a string (hosts_access, tcprules or "
                   "xinetd)")
    if kind in SOURCE_KEYS:
        _known_keys(src, SOURCE_KEYS[kind], path, f"{where} ({kind})", where)
    if kind == "hosts_access":
        from acl.compile.tcpw import load_hosts_access

        allow = _file(base, src, "allow", path, where)
        deny = _file(base, src, "deny", path, where)
        key = (kind, str(allow), str(deny), names_key)
        services = _services(src, path, where)
        same = _unchanged(previous, key)
        if same is not None:
            return Source(kind, same.layer, services, same.files, same.diagnostics,
                          key=key, signature=same.signature, stamps=same.stamps)
        h, stamps = hashlib.sha256(), _stamps((allow, deny))   # before reading
        _hash_files(h, (allow, deny))
        layer, diags = load_hosts_access(str(allow), str(deny), names)
        files = tuple(Path(f) for f in getattr(layer, "files", (allow, deny)))
        extra = files[2:]                 # /path pattern files: known only now
        stamps += _stamps(extra)
        _hash_files(h, extra)
        return Source(kind, layer, services, files, tuple(diags), key=key,
                      stamps=stamps, signature=h.digest())
    if kind == "tcprules":
        from acl.compile.tcprules import load_tcprules

        f = _file(base, src, "file", path, where)
        kwargs = {}
        if "mapped_as_v4" in src:
            kwargs["mapped_as_v4"] = _get(src, "mapped_as_v4", bool, True, path, where)
        key = (kind, str(f), tuple(sorted(kwargs.items())))
        services = _services(src, path, where)
        same = _unchanged(previous, key)
        if same is not None:
            return Source(kind, same.layer, services, same.files, key=key,
                          signature=same.signature, stamps=same.stamps)
        stamps, signature = _stamps((f,)), _signature((f,))    # before reading
        layer = load_tcprules(str(f), **kwargs)
        return Source(kind, layer, services, (f,), key=key, stamps=stamps,
                      signature=signature)
    if kind == "xinetd":
        from acl.compile.xinetd import XinetdLayer, load_xinetd

        f = _file(base, src, "file", path, where)
        # each file (include, includedir: the directory too, so a file added
        # there reloads) stamped just before xinetd's reader reads it; the
        # watcher's, never reused
        xpolicy, diags = load_xinetd(str(f), None if names is None else names.reverse_backend,
                                     system, stamp)
        read = xpolicy.config.files
        files = (f, *(Path(p) for p, _ in read[1:]))
        stamps = tuple(st for _, st in read)
        before = _previous_source(previous, "xinetd", f)
        state = None if before is None else before.state
        # the same files, unchanged since the running policy read them (every
        # include too; their contents as well, since `cp -p` or `rsync -t
        # --inplace` keep size, inode and mtime): xinetd would not have
        # reloaded, so cps windows go on
        signature = _signature(files, unreadable_by_name=True)
        reread = (before is None or not stamps or before.stamps != stamps
                  or before.signature != signature)
        lim = limits or Limits()
        # a new source's table has [limits] sources entries, rounded up to a
        # power of two (at least WAYS, 2; the engine's own table is at least
        # 16); a handed-over one keeps its size (and its leases) until acl
        # serve restarts
        layer = XinetdLayer(xpolicy, state=state, loadavg=_loadavg,
                            resolver=_NoNames() if names is None else names,
                            max_sources=max(lim.sources, 2), v6_prefix=lim.ipv6_prefix,
                            reread=reread)
        services = _services(src, path, where) if "services" in src else None
        return Source(kind, layer, services, files, tuple(diags),
                      state=getattr(layer, "state", None), stamps=stamps,
                      signature=signature)
    if kind is None:
        raise _err(path, where, "no type: say type = \"hosts_access\", \"tcprules\" "
                   "or \"xinetd\"")
    raise _err(path, f"{where}.type", f"unknown source type {kind!r} "
               "(hosts_access, tcprules or xinetd)")


def _hash_files(h, files, *, unreadable_by_name: bool = False) -> None:
    """``unreadable_by_name``: a directory (an includedir) or a file gone
    counts by its name alone -- its stamp says when it changes."""
    for f in files:
        h.update(str(f).encode() + b"\0")
        try:
            h.update(hashlib.sha256(read_bytes(f)).digest())
        except OSError:
            if not unreadable_by_name:
                raise
            h.update(b"-")


def _signature(files, *, unreadable_by_name: bool = False) -> bytes:
    """SHA-256 over the names and contents of a layer's files."""
    h = hashlib.sha256()
    _hash_files(h, files, unreadable_by_name=unreadable_by_name)
    return h.digest()


def stamp(path):
    """What ``stat`` says of a file: ``(size, mtime_ns, inode)``, None when
    there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _stamps(files) -> tuple:
    """Each file's :func:`stamp`: when it differs, the file changed (the
    signature is only read to confirm that an equal stamp means equal
    contents, so a hundred-megabyte rule file that changed is not hashed)."""
    return tuple(stamp(f) for f in files)


def _unchanged(previous: Policy | None, key: tuple) -> Source | None:
    """The running policy's source for ``key`` when none of its files changed:
    a reload then keeps its compiled layer instead of reading it again (a
    hosts_access or tcprules layer holds no state, so this is safe; xinetd
    layers are always rebuilt around their surviving limit state)."""
    if previous is None or not key:
        return None
    for s in previous.sources:
        if s.key == key and s.signature:
            # (an equal stamp is confirmed by the signature, so a racy one
            # -- module rules -- is no danger here)
            if s.stamps and _stamps(s.files) != s.stamps:
                return None
            try:
                if _signature(s.files) == s.signature:
                    return s
            except OSError:
                return None
    return None


def _loadavg() -> float:
    return os.getloadavg()[0]


def listen_problem(listen: str) -> str | None:
    """What is wrong with a metrics ``ADDRESS:PORT`` ("" = off), or None."""
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(fam, host)
        ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536
    except (OSError, ValueError):
        ok = False
    return None if ok else f"expected ADDRESS:PORT (127.0.0.1:9464, [::1]:9464), got {listen!r}"


def _mode(value, path) -> int:
    """``[sockets] mode``: permission bits, 0..0o777 -- a string of octal
    digits ("0660") or a TOML octal integer (0o660).  A TOML integer written
    in decimal is refused: ``mode = 600`` reads as six hundred (0o1130), not
    what it looks like; setuid, setgid and sticky bits mean nothing on a
    socket, so a value above 0o777 is a mistake too."""
    where = "sockets.mode"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _err(path, where, f"not an octal mode: {value!r}")
    if isinstance(value, int):
        text = value_text(path, where)
        if text is not None and re.match(r"[+]?[0-9_]+(?![0-9a-zA-Z_])", text) and value > 7:
            digits = text.lstrip("+").replace("_", "")
            raise _err(path, where, f"{digits} is a decimal integer (mode {value:04o}), "
                       f"not an octal mode: write \"0{digits}\" or 0o{digits}"
                       if set(digits) <= set("01234567") else
                       f"{digits} is a decimal integer: write the mode in octal, "
                       "as \"0660\" or 0o660")
        mode = value
    else:
        try:
            mode = int(value, 8)
        except ValueError:
            raise _err(path, where, f"not an octal mode: {value!r}") from None
    if not 0 <= mode <= 0o777:
        shown = f"{value!r}" if isinstance(value, str) else f"{mode:#o}"
        raise _err(path, where, f"{shown} is outside 0000..0777 (setuid, setgid and "
                   "sticky bits mean nothing on a socket)")
    return mode


def _ids(values, lookup, path, where: str) -> tuple[int, ...]:
    """The ids of a list of ids and names; ``lookup`` None checks the names'
    type only and leaves them out (a reload: :func:`_read_sockets`)."""
    if not isinstance(values, list):
        raise _err(path, where, "expected a list of ids or names")
    out = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            # uid_t and gid_t are 32 bits, and (uid_t) -1 means "no change"
            if not 0 <= v < 0xFFFFFFFF:
                raise _err(path, where, f"not an id: {v} (0 to {0xFFFFFFFF - 1})")
            out.append(v)
        elif isinstance(v, str):
            if lookup is None:
                continue
            try:
                out.append(lookup(v))
            except KeyError:
                raise _err(path, where, f"no such user or group {v!r}") from None
        else:
            raise _err(path, where, f"not an id: {v!r}")
    return tuple(out)


def _read_toml(toml_path: Path) -> dict:
    """The TOML file's tables; PolicyError (``PATH:LINE:COLUMN: ...`` for
    its syntax) when it cannot be read or is no TOML, or names an unknown
    section."""
    try:
        data = read_bytes(toml_path)
        conf = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise PolicyError(f"{toml_path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        # TOML is UTF-8; the column counts characters, as tomllib's do
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start:exc.start].decode("utf-8", "replace")) + 1
        raise PolicyError(f"{toml_path}:{line}:{column}: not UTF-8 (byte "
                          f"0x{data[exc.start]:02x}): TOML files are UTF-8") from None
    except RecursionError:
        # tomllib reads nested arrays and inline tables by recursion
        raise PolicyError(f"{toml_path}: arrays or inline tables nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "MESSAGE (at line L, column C)": give it as every
        # other error in a file is given, PATH:L:C: MESSAGE
        m = re.fullmatch(r"(.+) \(at line (\d+), column (\d+)\)", str(exc), re.DOTALL)
        where = f"{toml_path}:{m[2]}:{m[3]}: {m[1]}" if m else f"{toml_path}: {exc}"
        raise PolicyError(where) from exc
    except ValueError as exc:
        # (an integer of more than 4,300 digits: Python's int() refuses it)
        raise PolicyError(f"{toml_path}: a number too long to read ({exc})") from None
    _refuse_huge_integers(conf, toml_path)
    unknown = set(conf) - KNOWN_SECTIONS
    if unknown:
        first = sorted(unknown)[0]
        raise _err(toml_path, first, "unknown section", at_key=(first,))
    return conf


#: No value of a policy comes near it; past it a number is a mistake, and
#: one Python cannot even print (4,300 digits) or make a float of.
INTEGER_LIMIT = 2 ** 63


def _refuse_huge_integers(conf: dict, toml_path: Path) -> None:
    """Every integer of the file within +-INTEGER_LIMIT, before any code
    reads one (a loop, not recursion: the nesting may be deep)."""
    stack: list[tuple[tuple, object]] = [((), conf)]
    while stack:
        keys, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*keys, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*keys, i), v) for i, v in enumerate(value))
        elif isinstance(value, int) and not -INTEGER_LIMIT < value < INTEGER_LIMIT:
            name = ".".join(str(k) if isinstance(k, str) else f"[{k}]" for k in keys)
            raise _err(toml_path, name.replace(".[", "["), "an integer out of range "
                       f"(at most {INTEGER_LIMIT - 1:,} either way)", at_key=keys)


def _socket_paths(s: dict, toml_path: Path) -> dict[str, str]:
    """The ``[sockets]`` table's query, policy and admin, made absolute (""
    when unset)."""
    paths = {k: _get(s, k, str, "", toml_path, "sockets") for k in ("query", "policy", "admin")}
    return {k: str(toml_path.parent / v) if v else "" for k, v in paths.items()}


def _read_sockets(conf: dict, toml_path: Path, running: Sockets | None) -> Sockets:
    """``[sockets]``, checked whole; its names are looked up only at start
    (``running`` None), and a reload keeps ``running`` but for its
    ``policy_service`` (the module rules)."""
    s = _table(conf, "sockets", toml_path)
    paths = _socket_paths(s, toml_path)
    policy_service = _get(s, "policy_service", str, "smtpd", toml_path, "sockets")
    mode = _mode(s.get("mode", "0660"), toml_path)
    group = _get(s, "group", str, "", toml_path, "sockets")
    start = running is None
    uid_of = (lambda n: nss.getpwnam(n).pw_uid) if start else None
    gid_of = (lambda n: nss.getgrnam(n).gr_gid) if start else None
    admin_uids = _ids(s.get("admin_uids", [0]), uid_of, toml_path, "sockets.admin_uids")
    admin_gids = _ids(s.get("admin_gids", []), gid_of, toml_path, "sockets.admin_gids")
    if not start:
        return replace(running, policy_service=policy_service)
    gid = _ids([group], gid_of, toml_path, "sockets.group")[0] if group else -1
    return Sockets(query=paths["query"], policy=paths["policy"], policy_service=policy_service,
                   admin=paths["admin"], mode=mode, group=group, admin_uids=admin_uids,
                   admin_gids=admin_gids, gid=gid)


def admin_socket_of(path: str | os.PathLike) -> str:
    """The ``[sockets] admin`` path the TOML file names ("" for none), read
    from that file alone -- its rule files are neither read nor checked
    (``acl reload`` asks the running server to do that)."""
    toml_path = Path(path).resolve()
    return _socket_paths(_table(_read_toml(toml_path), "sockets", toml_path), toml_path)["admin"]


def load_policy(path: str | os.PathLike | None = None, *, previous: Policy | None = None) -> Policy:
    """Read the TOML file (or the shipped example) and load every source."""
    toml_path = Path(path).resolve() if path else EXAMPLE
    stamped_ns = time.time_ns()
    file_stamps = {str(toml_path): stamp(toml_path)}       # before reading (module rules)
    conf = _read_toml(toml_path)
    base = toml_path.parent

    sockets = _read_sockets(conf, toml_path, previous.sockets if previous is not None else None)
    m = _table(conf, "metrics", toml_path)
    metrics_listen = _get(m, "listen", str, "", toml_path, "metrics")
    problem = listen_problem(metrics_listen)
    if problem:
        raise _err(toml_path, "metrics.listen", problem)
    lt = _table(conf, "limits", toml_path)
    limits = Limits(
        sources=_get(lt, "sources", int, 1 << 20, toml_path, "limits"),
        ipv6_prefix=_get(lt, "ipv6_prefix", int, 64, toml_path, "limits"),
        rate=_get(lt, "rate", float, 0.0, toml_path, "limits"),
        burst=_get(lt, "burst", float, 0.0, toml_path, "limits"),
    )
    if not 1 <= limits.sources <= 1 << 26:
        raise _err(toml_path, "limits.sources", "must be 1 .. 67108864")
    if not 0 <= limits.ipv6_prefix <= 128:
        raise _err(toml_path, "limits.ipv6_prefix", "must be 0 .. 128")
    for key in ("rate", "burst"):
        if getattr(limits, key) < 0:
            raise _err(toml_path, f"limits.{key}", "must be >= 0")
    r = _table(conf, "run", toml_path)
    run = Run(
        user=_get(r, "user", str, "", toml_path, "run"),
        group=_get(r, "group", str, "", toml_path, "run"),
        chroot=_get(r, "chroot", str, "", toml_path, "run"),
        watch=_get(r, "watch", bool, True, toml_path, "run"),
        keep_leases=_get(r, "keep_leases", int, 0, toml_path, "run"),
    )
    if not 0 <= run.keep_leases <= MAX_KEEP_LEASES:
        raise _err(toml_path, "run.keep_leases", f"must be 0 .. {MAX_KEEP_LEASES}")
    # user and group names: checked at start, not on reload (a chroot may
    # hide /etc then, and privileges are not changed by a reload)
    if run.user and previous is None:
        _ids([run.user], lambda n: nss.getpwnam(n).pw_uid, toml_path, "run.user")
    if run.group and previous is None:
        _ids([run.group], lambda n: nss.getgrnam(n).gr_gid, toml_path, "run.group")
    nfq = conf.get("nfqueue", {})
    if not isinstance(nfq, dict):
        raise _err(toml_path, "[nfqueue]", "expected a table")
    if nfq:
        # checked here, so that --check, a start and a reload refuse a bad
        # table alike (the door reads it again when it starts) -- and a
        # table this build cannot serve: a start would bind, then exit 111
        # (ENOSYS), which systemd's Restart=on-failure repeats forever
        NfqueueConfig.from_table(nfq, toml_path, lambda keys, at_key: position(
            toml_path, ("nfqueue", *keys), at_key))
        from acl import nfq as nfq_binding

        if not nfq_binding.AVAILABLE:
            raise _err(toml_path, "[nfqueue]", "this acl was built without the NFQUEUE "
                       "binding (acl._nfq: libnetfilter_queue and its headers were not "
                       "found, or a pure install); remove [nfqueue] or rebuild acl")
    nm = _table(conf, "names", toml_path)
    hosts_file = _get(nm, "hosts_file", str, "", toml_path, "names")
    names = Names(
        lookup=_get(nm, "lookup", bool, True, toml_path, "names"),
        hosts_file=_resolved(base, hosts_file, toml_path, "names.hosts_file"),
        ttl=_get(nm, "ttl", float, 300.0, toml_path, "names"),
        negative_ttl=_get(nm, "negative_ttl", float, 60.0, toml_path, "names"),
        cache=_get(nm, "cache", int, 10000, toml_path, "names"),
        threads=_get(nm, "threads", int, 64, toml_path, "names"),
        per_network=_get(nm, "per_network", int, 4, toml_path, "names"),
        deadline=_get(nm, "deadline", float, 1.5, toml_path, "names"),
    )
    # each bound at the value that passes it (docs: "a bad value at the value")
    for key, low, high in (("ttl", 0, None), ("negative_ttl", 0, None), ("cache", 1, 1 << 24),
                           ("threads", 1, 1024), ("per_network", 1, 1024),
                           ("deadline", 0, 600)):
        value = getattr(names, key)
        if value < low or (high is not None and value > high):
            raise _err(toml_path, f"names.{key}",
                       f"must be >= {low}" if high is None else f"must be {low} .. {high}")
    if names.hosts_file:
        file_stamps[names.hosts_file] = stamp(names.hosts_file)
    name_service, names_key = _name_service(names, previous, toml_path)

    # xinetd's questions to the system (protocols, users, groups, servers,
    # /etc/services): answered after a chroot as they were before it
    from acl.parse.xinetd_system import SystemLookups

    system = getattr(previous, "xinetd_system", None) or SystemLookups()

    raw_sources = conf.get("source", [])
    if not isinstance(raw_sources, list):
        raise _err(toml_path, "source", "expected [[source]] tables")
    sources = []
    for i, src in enumerate(raw_sources):
        where = f"source[{i}]"
        if not isinstance(src, dict):
            raise _err(toml_path, where, "expected a table")
        try:
            sources.append(_load_source(src, base, toml_path, where, previous,
                                        name_service, names_key, system, limits=limits))
        except (RuleSyntaxError, PolicyError, OutOfResources):
            raise
        except OSError as exc:
            raise _err(toml_path, where, f"cannot read {exc.filename}: {exc.strerror}") from exc
        except (AclError, ValueError) as exc:     # e.g. a broken cdb: say which source
            raise _err(toml_path, where, f"{type(exc).__name__}: {exc}") from exc
    _one_xinetd_source_per_file(sources, toml_path)
    policy = Policy(toml_path, sources, sockets, metrics_listen, limits, run, dict(nfq),
                    names=names, name_service=name_service, names_key=names_key,
                    xinetd_system=system, file_stamps=file_stamps,
                    stamped_ns=stamped_ns)
    if sockets.policy:
        policy.warnings = postfix_door_warnings(policy)
    return policy


def postfix_door_warnings(policy: Policy) -> tuple:
    """A warning for each xinetd service bound to ``policy_service`` with
    per_source or instances: Postfix policy requests take no lease, so those
    limits never count them (docs/protocol.md, "Text protocol")."""
    service = policy.sockets.policy_service
    out = []
    for layer, _daemon in policy.layers_for(service):
        if getattr(layer, "name", "") != "xinetd":
            continue
        first = layer.policy.services.get(service)
        if first is None:
            continue
        # every entry xinetd keeps under the id (shared ids: acl/compile/xinetd.py)
        for svc in layer.policy.shared.get(service, (first,)):
            limits = [f"{k} = {v}" for k, v in (("per_source", svc.per_source),
                                                ("instances", svc.instances)) if v >= 0]
            if limits:
                out.append(Diagnostic(svc.location.path, svc.location.line, 0,
                                      f"service {service}: {' and '.join(limits)}: no limit on "
                                      "Postfix policy requests ([sockets] policy_service): it "
                                      "counts leases, which that door never takes (cps, rate, "
                                      "max_load, access_times and the address rules apply)",
                                      Severity.WARNING))
    return tuple(out)
