"""``acl audit``'s core: the host's listening sockets and the policy that covers them.

Rules of this file
------------------

*Where sockets come from.*  Linux prints its socket tables as text in
``/proc/net/{tcp,tcp6,udp,udp6}`` (the files ``netstat`` reads; ``ss`` asks
netlink for the same data).  One line per socket, after a header line::

    sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 12345 ...

- An address is the kernel's in-memory bytes printed as 32-bit words with
  ``%08X``: IPv4 is one word, IPv6 four, each word in the *host's* byte order
  (so ``0100007F`` is 127.0.0.1 on a little-endian machine).  The port is
  printed after ``ntohs`` and is therefore plain big-number hex.
- ``st`` is the TCP state number.  A listening TCP socket is ``0A``
  (TCP_LISTEN).  UDP has no listen state; a bound, unconnected UDP socket is
  ``07`` (TCP_CLOSE) with a zero remote address -- what ``ss -lu`` lists as
  UNCONN.
- The inode column names the socket; ``/proc/<pid>/fd/<n>`` links read
  ``socket:[<inode>]`` for every process holding it (forked workers and
  super-server children share one listening socket, so an inode can have
  many owners).  A process we may not read is skipped, never an error.

Parsing is sans-IO (text in, records out) so tests can feed it any table; the
two ``read_*`` functions are the only code that touches ``/proc``, and take
its root as an argument.

*What "covered" means.*  A listener is matched to service names, the names
the policy could know it by, in this order: an explicit mapping given by
the operator (``--service PORT=NAME``), the ``[nfqueue] ports`` map (the
kernel asks the sidecar before the daemon ever sees the packet), the port
an xinetd source gives a service id, the owning processes' command names (tcpd's daemon name is the server's
basename), and the ``/etc/services`` name of the port (xinetd service ids
are usually that name).  The first of these names the policy binds is the
service audited.  Only the NFQUEUE front door is *enforced* without the
daemon's help; every other layer applies only if the daemon (or acl-wrap
in front of it) asks the sidecar, and the audit says so.

*Samples.*  Each covered listener is decided for a fixed set of client
addresses -- loopback, the RFC 1918 / RFC 4193 private ranges and
"the world" (documentation addresses from RFC 5737 / RFC 3849, which no
rule file should name specially) -- with the engine's own ``decide()``.
A sample that cannot reach the socket at all (a world client and a socket
bound to 127.0.0.1) is reported as unreachable, not decided.

*Open to everyone* is flagged when the socket is reachable from the world
and either no policy layer covers it, or the world samples are granted.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from acl import nss
from acl.errors import AclError

#: (file name under /proc/net, protocol, address family)
TABLES = (
    ("tcp", "tcp", 4),
    ("tcp6", "tcp", 6),
    ("udp", "udp", 4),
    ("udp6", "udp", 6),
)

TCP_LISTEN = 0x0A
TCP_CLOSE = 0x07  # how an unconnected UDP socket shows

#: Sample clients by class.  Order is the order the report shows them.
SAMPLES: tuple[tuple[str, str], ...] = (
    ("loopback", "127.0.0.1"),
    ("loopback", "::1"),
    ("private", "10.11.12.13"),
    ("private", "172.16.5.4"),
    ("private", "192.168.1.10"),
    ("private", "fd00::10"),
    ("world", "198.51.100.23"),
    ("world", "203.0.113.77"),
    ("world", "2001:db8::23"),
)


@dataclass(frozen=True, slots=True)
class SocketEntry:
    """One line of a /proc/net table."""

    proto: str           # "tcp" or "udp"
    family: int          # 4 or 6
    local: str           # numeric address
    port: int
    remote: str
    remote_port: int
    state: int
    uid: int
    inode: int

    @property
    def listening(self) -> bool:
        if self.proto == "tcp":
            return self.state == TCP_LISTEN
        return self.state == TCP_CLOSE and self.remote_port == 0 and _is_unspecified(self.remote)


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    name: str            # /proc/<pid>/comm
    cmdline: str = ""


@dataclass(slots=True)
class Listener:
    """A listening socket and the processes holding it."""

    entry: SocketEntry
    owners: list[Process] = field(default_factory=list)

    @property
    def proto(self) -> str:
        return self.entry.proto

    @property
    def address(self) -> str:
        return self.entry.local

    @property
    def port(self) -> int:
        return self.entry.port


class ProcFormatError(ValueError):
    """A /proc/net table line that does not have the kernel's shape."""


def _is_unspecified(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_unspecified


def decode_address(text: str, family: int, byteorder: str = sys.byteorder) -> str:
    """``0100007F`` -> ``127.0.0.1`` (words in host byte order, see top of file)."""
    width = 8 if family == 4 else 32
    if len(text) != width:
        raise ProcFormatError(f"address {text!r}: expected {width} hex digits")
    fmt = "<I" if byteorder == "little" else ">I"
    raw = b"".join(struct.pack(fmt, int(text[i:i + 8], 16)) for i in range(0, width, 8))
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


def _endpoint(text: str, family: int, byteorder: str) -> tuple[str, int]:
    addr, sep, port = text.partition(":")
    if not sep or len(port) != 4:
        raise ProcFormatError(f"endpoint {text!r}: expected ADDRESS:PORT in hex")
    try:
        return decode_address(addr, family, byteorder), int(port, 16)
    except ValueError as exc:
        raise ProcFormatError(f"endpoint {text!r}: {exc}") from None


def parse_proc_net(text: str, proto: str, family: int,
                   byteorder: str = sys.byteorder) -> list[SocketEntry]:
    """Parse the text of one /proc/net/{tcp,tcp6,udp,udp6} file.

    The first line is the column header; blank lines are ignored.  A line
    without the kernel's shape raises :class:`ProcFormatError` naming its
    line number, never anything else.
    """
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if lineno == 1 or not line.strip():
            continue
        fields = line.split()
        # sl, local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
        if len(fields) < 10 or not fields[0].endswith(":"):
            raise ProcFormatError(f"line {lineno}: expected at least 10 columns: {line.strip()!r}")
        try:
            local, port = _endpoint(fields[1], family, byteorder)
            remote, rport = _endpoint(fields[2], family, byteorder)
            state = int(fields[3], 16)
            uid = int(fields[7])
            inode = int(fields[9])
        except (ValueError, ProcFormatError) as exc:
            raise ProcFormatError(f"line {lineno}: {exc}") from None
        entries.append(SocketEntry(proto, family, local, port, remote, rport, state, uid, inode))
    return entries


def read_sockets(proc: str = "/proc") -> list[SocketEntry]:
    """Every socket in the four tables of this network namespace.

    An IPv6 table that does not exist (a kernel without IPv6) is simply
    empty.  A missing IPv4 table means there is no /proc/net to read (no
    /proc mounted, a container without it): FileNotFoundError, never "no
    socket listens", which would report a host as having nothing open.
    """
    out: list[SocketEntry] = []
    for name, proto, family in TABLES:
        try:
            with open(os.path.join(proc, "net", name), encoding="ascii") as f:
                text = f.read()
        except FileNotFoundError:
            if family == 4:
                raise
            continue
        out.extend(parse_proc_net(text, proto, family))
    return out


def read_socket_owners(proc: str = "/proc") -> dict[int, list[Process]]:
    """Map socket inode -> processes holding it, from /proc/<pid>/fd links.

    Processes that exit while we look, or that we may not read, are skipped.
    """
    owners: dict[int, list[Process]] = {}
    try:
        pids = sorted(int(d) for d in os.listdir(proc) if d.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        inodes = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                inodes.add(int(target[8:-1]))
        if not inodes:
            continue
        process = _process(proc, pid)
        for inode in inodes:
            owners.setdefault(inode, []).append(process)
    return owners


def _process(proc: str, pid: int) -> Process:
    def read(name: str) -> str:
        try:
            with open(os.path.join(proc, str(pid), name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    return Process(pid, read("comm").strip(), read("cmdline").replace("\0", " ").strip())


def listeners(entries: Iterable[SocketEntry],
              owners: Mapping[int, list[Process]]) -> list[Listener]:
    """The listening sockets, each with its owners, sorted by (proto, port, address)."""
    found = [Listener(e, list(owners.get(e.inode, ()))) for e in entries if e.listening]
    found.sort(key=lambda x: (x.proto, x.port, x.entry.family, x.address))
    return found


def read_listeners(proc: str = "/proc") -> list[Listener]:
    return listeners(read_sockets(proc), read_socket_owners(proc))


# --------------------------------------------------------------------------
# Coverage


@dataclass(frozen=True, slots=True)
class SampleResult:
    klass: str           # "loopback", "private", "world"
    client: str
    outcome: str         # "allow", "deny", "delegate", "unreachable", "no policy"
    reason: str = ""
    location: str = ""


@dataclass(slots=True)
class Finding:
    """What the audit says about one listener."""

    listener: Listener
    service: str | None                   # the service name audited, if any
    names: list[str]                      # candidate names, in the order tried
    layers: list[str]                     # policy layers bound to the service
    enforced_by: str                      # "nfqueue", "daemon must ask", "none"
    samples: list[SampleResult]
    open_to_everyone: bool

    def as_dict(self) -> dict:
        lis = self.listener
        return {
            "proto": lis.proto,
            "family": lis.entry.family,
            "address": lis.address,
            "port": lis.port,
            "inode": lis.entry.inode,
            "uid": lis.entry.uid,
            "processes": [{"pid": p.pid, "name": p.name, "cmdline": p.cmdline}
                          for p in lis.owners],
            "service": self.service,
            "candidate_names": self.names,
            "layers": self.layers,
            "enforced_by": self.enforced_by,
            "samples": [{"class": s.klass, "client": s.client, "outcome": s.outcome,
                         "reason": s.reason, "location": s.location} for s in self.samples],
            "open_to_everyone": self.open_to_everyone,
        }


@dataclass(frozen=True, slots=True)
class SampleVerdict:
    """A decision reduced to what the report shows."""

    outcome: str         # "allow", "deny", "delegate"
    reason: str = ""
    location: str = ""


@dataclass(slots=True)
class PolicyView:
    """What the audit needs to know of a policy.

    ``layers(service)`` lists the layers the policy binds to a service (empty:
    the policy does not know it); ``decide(service, client, server, port)``
    asks the engine; ``nfqueue_ports`` is the ``[nfqueue] ports`` map keyed
    by ``(address or None, port)``: a key ``"PORT"`` is ``(None, port)``, a
    key ``"ADDR:PORT"`` / ``"[ADDR]:PORT"`` names one local address.
    """

    layers: Callable[[str], list[str]]
    decide: Callable[[str, str, str, int], SampleVerdict]
    nfqueue_ports: Mapping[tuple[str | None, int], str] = field(default_factory=dict)
    nfqueue_protocols: tuple[str, ...] = ("tcp", "udp")
    #: (proto, port) -> service id, for services whose port the policy itself
    #: states (an xinetd source's ``port`` / service name).
    service_ports: Mapping[tuple[str, int], str] = field(default_factory=dict)


def reachable(bound: str, client: str, bindv6only: bool = False) -> bool:
    """May a client at ``client`` reach a socket bound to ``bound`` at all?

    A loopback-bound socket is reachable only from loopback; an IPv4 client
    reaches an IPv6 wildcard socket only when it is dual-stack (the Linux
    default, net.ipv6.bindv6only=0); otherwise families must agree.
    """
    b = ipaddress.ip_address(bound)
    c = ipaddress.ip_address(client)
    if b.version != c.version:
        if not (b.version == 6 and b.is_unspecified and not bindv6only):
            return False
    if b.is_loopback:
        return c.is_loopback
    return True


def nfqueue_service(listener: Listener,
                    nfqueue_ports: Mapping[tuple[str | None, int], str]) -> str | None:
    """The service NFQUEUE decides this listener's packets under, if all are queued.

    An ``ADDR:PORT`` key covers a socket bound to exactly that address; a
    wildcard socket is covered only by a plain ``PORT`` key (traffic to the
    host's other addresses would not be queued).
    """
    named = nfqueue_ports.get((listener.address, listener.port))
    return named if named is not None else nfqueue_ports.get((None, listener.port))


def candidate_names(listener: Listener, explicit: Mapping[int, str],
                    nfqueue_ports: Mapping[tuple[str | None, int], str],
                    service_ports: Mapping[tuple[str, int], str] | None = None) -> list[str]:
    """The names a policy could know this listener by, most trusted first."""
    names: list[str] = []

    def add(n: str | None) -> None:
        if n and n not in names:
            names.append(n)

    add(explicit.get(listener.port))
    add(nfqueue_service(listener, nfqueue_ports))
    add((service_ports or {}).get((listener.proto, listener.port)))
    for p in listener.owners:
        add(p.name)
    try:
        # acl.nss: a lookup that could not be done (out of descriptors) is
        # OutOfResources, never "no name" -- a missed name would report a
        # covered service as open to everyone
        add(nss.getservbyport(listener.port, listener.proto))
    except OSError:
        pass
    return names


def audit(found: Iterable[Listener], policy: PolicyView | None,
          explicit: Mapping[int, str] | None = None,
          samples: Iterable[tuple[str, str]] = SAMPLES,
          bindv6only: bool = False) -> list[Finding]:
    """Judge each listener against the policy (None: no policy at all)."""
    explicit = dict(explicit or {})
    samples = tuple(samples)
    nfq = dict(policy.nfqueue_ports) if policy else {}
    out = []
    for lis in found:
        names = candidate_names(lis, explicit, nfq, policy.service_ports if policy else None)
        service, layers = None, []
        nfq_name = nfqueue_service(lis, nfq)
        nfq_covers = (policy is not None and nfq_name is not None
                      and lis.proto in policy.nfqueue_protocols)
        if nfq_covers:
            # The kernel asks under the [nfqueue] name whatever else the
            # daemon is called, so that name is the one decided.
            service = nfq_name
            layers = ["nfqueue", *policy.layers(service)]
        elif policy is not None:
            for name in names:
                bound = list(policy.layers(name))
                if bound:
                    service, layers = name, bound
                    break
        if nfq_covers:
            enforced = "nfqueue"
        elif service is not None:
            enforced = "daemon must ask"
        else:
            enforced = "none"
        results = []
        for klass, client in samples:
            if not reachable(lis.address, client, bindv6only):
                results.append(SampleResult(klass, client, "unreachable"))
            elif service is None or policy is None:
                results.append(SampleResult(klass, client, "no policy"))
            else:
                v = policy.decide(service, client, lis.address, lis.port)
                results.append(SampleResult(klass, client, v.outcome, v.reason, v.location))
        world = [r for r in results if r.klass == "world" and r.outcome != "unreachable"]
        open_all = bool(world) and (service is None
                                    or any(r.outcome in ("allow", "delegate") for r in world))
        out.append(Finding(lis, service, names, layers, enforced, results, open_all))
    return out


def read_bindv6only(proc: str = "/proc") -> bool:
    try:
        with open(os.path.join(proc, "sys/net/ipv6/bindv6only"), encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


# --------------------------------------------------------------------------
# The policy, through the serve engineer's loader and the engine


def load_policy_view(path: str) -> PolicyView:
    """Load a policy TOML with :mod:`acl.policy` and wrap it for :func:`audit`.

    Layers are named by their ``[[source]] type`` (``xinetd``, ``tcprules``,
    ``hosts_access``), plus ``rate`` when ``[limits] rate`` is on (the engine
    applies it to every service the policy binds).  Samples are decided by a
    private :class:`acl.engine.Engine`, so the audit never touches a running
    sidecar's counters.  A sample carries no host name: the rule languages
    then treat the client as tcpd does an address whose name is unknown.
    """
    import time

    from acl.engine import Engine
    from acl.model import Request
    from acl.policy import load_policy

    policy = load_policy(path)
    engine = Engine(policy)
    kinds = {id(s.layer): s.kind for s in policy.sources}

    def layers(service: str) -> list[str]:
        names = []
        for item in policy.layers_for(service):
            # An item is a layer, or (layer, daemon name) when hosts_access is
            # asked under an xinetd service's libwrap name.
            layer = item[0] if isinstance(item, tuple) else item
            names.append(kinds.get(id(layer), getattr(layer, "name", "?")))
        if names and policy.limits.rate > 0:
            names.insert(0, "rate")
        return names

    def decide(service: str, client: str, server: str, port: int) -> SampleVerdict:
        bound = None if _is_unspecified(server) else server
        d = engine.decide(Request(service, client, 0, bound, port), time.time())
        return SampleVerdict(d.verdict.name.lower(), d.reason.log_text,
                       str(d.location) if d.location else "")

    raw = policy.nfqueue.get("ports", {}) if isinstance(policy.nfqueue, dict) else {}
    if not isinstance(raw, dict):
        raise AclError(f"{path}: nfqueue.ports: expected a table of PORT = \"service\"")
    ports = {_nfqueue_key(str(k), path): str(v) for k, v in raw.items()}
    return PolicyView(layers, decide, ports, service_ports=_xinetd_ports(policy))


#: xinetd service types that open no socket on the service's port
_NO_SOCKET_OF_ITS_OWN = frozenset({"TCPMUX", "TCPMUXPLUS", "RPC"})


def _xinetd_ports(policy) -> dict[tuple[str, int], str]:
    """(proto, port) -> service id of each xinetd service the policy read.

    xinetd takes a service's port from ``port``, else from /etc/services by
    the service name (the reader has done that: ``svc.port``); its protocol
    from ``protocol``, else from the socket type (spec C: xinetd
    attributes).  A TCPMUX or RPC service has no socket of its own, whatever
    its ``port`` says: a TCPMUX one is reached through the tcpmux service's
    port 1, an RPC one on the port the portmapper hands out (measured with
    xinetd 2.3.15.3: a ``TCPMUX UNLISTED`` smtp listens on nothing, with a
    ``port`` line or without) -- so neither names the listener of the port
    written or the one /etc/services gives its name.
    """
    out: dict[tuple[str, int], str] = {}
    for source in policy.sources:
        if source.kind != "xinetd":
            continue
        for svc in source.layer.policy.entries():
            if svc.port is None or svc.entry.types & _NO_SOCKET_OF_ITS_OWN:
                continue
            proto = svc.protocol or ("udp" if svc.socket_type == "dgram" else "tcp")
            out.setdefault((proto, int(svc.port)), svc.id)
    return out


def _nfqueue_key(key: str, path: str) -> tuple[str | None, int]:
    """``"22"`` -> (None, 22); ``"10.0.0.1:22"``, ``"[fd00::1]:22"`` -> (address, 22)."""
    addr: str | None = None
    port = key.strip()
    if port.startswith("["):
        addr, sep, port = port[1:].partition("]:")
        if not sep:
            raise AclError(f"{path}: nfqueue.ports: {key!r}: write IPv6 as [ADDR]:PORT")
    elif ":" in port:
        addr, _, port = port.rpartition(":")
    try:
        number = int(port)
        if addr is not None:
            addr = str(ipaddress.ip_address(addr))
    except ValueError:
        raise AclError(f"{path}: nfqueue.ports: {key!r}: expected PORT or ADDR:PORT") from None
    if not 0 < number < 65536:
        raise AclError(f"{path}: nfqueue.ports: {key!r}: port out of range")
    return addr, number
