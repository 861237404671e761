"""The vocabulary every layer shares: requests, verdicts, reasons, decisions.

Numbers given to :class:`Verdict` and :class:`Reason` are part of the binary
wire protocol (docs/protocol.md): never renumber, only append.

A policy is a set of *layers* bound to services.  Each rule language compiles
to layers; the engine applies a service's layers in xinetd's order
(ARCHITECTURE.md "Decisions", spec C.6)::

    cps -> max_load -> access_times -> instances -> per_source
        -> only_from/no_access -> tcprules -> hosts.allow/hosts.deny

The first layer that refuses decides.  When every layer grants, the grant
carries the environment of the tcprules rule and the hosts_options of the
hosts.allow/deny rule that decided, for the caller (acl-wrap) to act on: the
sidecar itself never executes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class Verdict(IntEnum):
    DENY = 0
    ALLOW = 1
    #: Granted, but the caller must run a hosts_options ``twist`` command in
    #: place of the server (tcpdmatch prints "delegated").
    DELEGATE = 2


class Reason(IntEnum):
    """Why a decision came out as it did.  The names xinetd logs are kept."""

    OK = 0                  # granted (location says by which rule, if any)
    ADDRESS = 1             # only_from / no_access ("address")
    TIME = 2                # access_times ("time")
    SERVICE_LIMIT = 3       # instances ("service_limit")
    PER_SOURCE_LIMIT = 4    # per_source ("per_source_limit")
    LOAD = 5                # max_load ("load")
    CPS = 6                 # cps ("connections per second")
    LIBWRAP = 7             # hosts.allow / hosts.deny ("libwrap")
    TCPRULES = 8            # a tcprules deny
    RATE = 9                # per-source token bucket (not in xinetd)
    UNKNOWN_SERVICE = 10    # no policy names this service
    ERROR = 11              # the request could not be decided (bad input)

    @property
    def log_text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    Reason.OK: "ok",
    Reason.ADDRESS: "address",
    Reason.TIME: "time",
    Reason.SERVICE_LIMIT: "service_limit",
    Reason.PER_SOURCE_LIMIT: "per_source_limit",
    Reason.LOAD: "load",
    Reason.CPS: "connections per second",
    Reason.LIBWRAP: "libwrap",
    Reason.TCPRULES: "tcprules",
    Reason.RATE: "rate",
    Reason.UNKNOWN_SERVICE: "unknown_service",
    Reason.ERROR: "error",
}


@dataclass(frozen=True, slots=True)
class Location:
    """Where a deciding rule is written."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Request:
    """One question: may this client connect to this service now?"""

    service: str                 # daemon name (tcpd) or xinetd service id
    client: str                  # numeric client address as the socket gave it
    client_port: int = 0
    server: str | None = None    # numeric local address, when known
    server_port: int = 0
    host: str | None = None      # client host name, when the caller knows it
    user: str | None = None      # remote user (RFC 931 ident), when known
    lease: bool = False          # take per_source/instances slots on grant
    #: host and user are a UCSPI server's TCPREMOTEHOST / TCPREMOTEINFO
    #: (DECIDE flag UCSPI): what tcpserver's own rules lookup would use, so
    #: the tcprules layers use them; they are not a verified name, so the
    #: hosts_access and xinetd layers decide as if neither were sent.
    #: ``user == ""`` is an empty TCPREMOTEINFO (an ident ERROR reply).
    ucspi_names: bool = False


#: An environment change: (name, value), or (name, None) to unset.
EnvItem = tuple[str, "str | None"]
#: One hosts_options option, in rule order: (keyword, raw value text or "").
OptionItem = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason = Reason.OK
    location: Location | None = None
    env: tuple[EnvItem, ...] = ()
    options: tuple[OptionItem, ...] = ()
    lease: int = 0               # 0: no lease taken
    #: the client's and the server's verified names (libwrap's: the name,
    #: "unknown" or "paranoid") when deciding looked them up, as a hosts_access
    #: rule reading them does; None when the decision never asked.  The
    #: caller's %h/%c/%H/%s and log lines show a name libwrap looked up
    #: while matching (DECIDE flag NAMES, docs/protocol.md).
    client_name: str | None = None
    server_name: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY


GRANT_BY_DEFAULT = Decision(Verdict.ALLOW, Reason.OK)


class Layer(Protocol):
    """What each rule language compiles to.

    ``check`` answers for one request at time ``now`` (seconds, the caller's
    clock).  It returns ``None`` when the layer has no opinion (e.g. no
    tcprules file is bound to the service), else a :class:`Decision`.
    """

    name: str

    def check(self, request: Request, now: float) -> Decision | None: ...
