"""``acl match --hosts-allow A --hosts-deny D DAEMON[@HOST] [USER@]CLIENT``: our tcpdmatch.

How the arguments are read (spec A.10; tcpdmatch's ``main``):

* ``DAEMON@HOST`` sets the server end: HOST is resolved and must have exactly
  one address; the server port is then 0 (so the port pattern ``0`` matches).
  Without ``@HOST`` the server is unknown and port patterns never match.
  A daemon given as ``/path/name`` is reduced to ``name``.
* ``USER@`` sets the ident user name; otherwise it is "unknown".  An empty
  USER (``@CLIENT``) is "unknown" too: libwrap's ``eval_user`` takes an empty
  name for "not looked up yet", as the engine takes ``Request.user == ""``.
  (For a resolved CLIENT and a ``DAEMON@HOST``, tcpdmatch would then try an
  ident lookup at the client; acl asks nobody and keeps "unknown".)
* A numeric CLIENT (a dotted quad as ``inet_addr`` reads it, or an IPv6
  literal) sets only the address, as typed: the name is "unknown", as if the
  lookup failed.  ``unknown``/``paranoid`` set only the name.  Anything else
  is resolved; every address it has is decided on its own, with the name
  found by libwrap's double check.
* Options are judged as tcpdmatch judges them (dry run): ``twist`` gives
  ``delegated``, and ``user``/``group`` behave as Debian's inverted check
  makes them behave for root.  ``--tcpd`` judges them as the real tcpd does.
  They are printed as libwrap logs them: the values of ``setenv``,
  ``spawn``, ``twist`` and ``aclexec`` %-expanded and trimmed (``%p`` is
  acl match's own process id, as tcpdmatch's is its own).
* A name with several addresses is answered once per getaddrinfo entry:
  an address two hosts lines give is answered twice, as tcpdmatch does.
  With ``--hosts-file`` the entries come in file order; glibc sorts them
  (RFC 3484, by the machine's routes), so tcpdmatch may print the answers
  of a name with IPv4 and IPv6 addresses in another order.

``--batch`` reads ``DAEMON CLIENT`` per line from stdin and prints one line
per query: ``granted|denied|delegated LOCATION`` (``-`` when no rule
decided), several ``;``-separated when a name has several addresses, or
``error MESSAGE``.

Exit codes: 0 granted/delegated (batch: all answered), 1 denied, 100 bad
usage or a host that cannot be resolved, 111 a rule file that cannot be read.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass

from acl.cli import FatalUsageParser, write_out
from acl.compile.tcpw import HostsAccessLayer, HostView, Query, load_hosts_access, percent_expand
from acl.model import Decision, Verdict
from acl.parse.hosts_options import KEYWORDS, chop
from acl.parse.hosts_patterns import (
    UNKNOWN,
    dot_quad_addr,
    hostname_known,
    not_inaddr,
    split_at,
    v6_numeric,
)
from acl.resolve import Resolver, hosts_file_backend

VERDICT_WORD = {Verdict.ALLOW: "granted", Verdict.DENY: "denied", Verdict.DELEGATE: "delegated"}


class HostNotFound(Exception):
    """A host named on the command line cannot be resolved."""


@dataclass(frozen=True, slots=True)
class Outcome:
    query: Query
    index: int | None
    decision: Decision

    @property
    def word(self) -> str:
        return VERDICT_WORD[self.decision.verdict]

    @property
    def where(self) -> str:
        return "-" if self.decision.location is None else str(self.decision.location)


def _numeric_any(text: str) -> list[str] | None:
    """``getaddrinfo(PF_UNSPEC, AI_NUMERICHOST)``: the address printed numerically."""
    try:
        infos = socket.getaddrinfo(text.encode("latin-1", "replace"), None, 0, socket.SOCK_STREAM,
                                   0, socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except (OSError, ValueError, UnicodeError):
        return None
    return [socket.getnameinfo(i[4], socket.NI_NUMERICHOST)[0] for i in infos]


def _find_addresses(host: str, resolver: Resolver) -> list[str]:
    """tcpdmatch's ``find_inet_addr``: numeric first, then a name lookup."""
    numeric = _numeric_any(host)
    if numeric is not None:
        return numeric
    return resolver.addresses(host)


def explain(layer: HostsAccessLayer, resolver: Resolver, daemon_arg: str, client_arg: str,
            now: float = 0.0) -> list[Outcome]:
    """Decide a tcpdmatch-style query; one outcome per client address."""
    parts = split_at(daemon_arg, "@")
    daemon, server = (daemon_arg, UNKNOWN) if parts is None else parts
    if daemon.startswith("/"):
        daemon = daemon.rsplit("/", 1)[1]
    cparts = split_at(client_arg, "@")
    user, client = (UNKNOWN, client_arg) if cparts is None else cparts
    if not user:
        user = UNKNOWN

    if not not_inaddr(server) or hostname_known(server):
        addrs = _find_addresses(server, resolver)
        if not addrs:
            raise HostNotFound(f"{server}: host not found")
        if len(addrs) > 1:
            raise HostNotFound(f"{server} has more than one address")
        sview = HostView(addrs[0], resolver.hostname(addrs[0], now), resolver, now)
        sin = True
    else:
        sview = HostView(UNKNOWN, server, None, now)
        sin = False

    if dot_quad_addr(client) is not None or v6_numeric(client) is not None:
        views = [HostView(client, UNKNOWN, resolver, now)]
    elif not_inaddr(client) and not hostname_known(client):
        views = [HostView(UNKNOWN, client, resolver, now)]
    else:
        addrs = _find_addresses(client, resolver)
        if not addrs:
            raise HostNotFound(f"{client}: host not found")
        views = []
        for a in addrs:
            v = HostView(a, None, resolver, now)
            _ = v.name      # tcpdmatch forces the name lookup
            views.append(v)
    out = []
    for v in views:
        q = Query(daemon, v, sview, server_sin=sin, server_port=0, user=user, pid=os.getpid())
        index, decision = layer.decide(q)
        out.append(Outcome(q, index, decision))
    return out


def _report(o: Outcome) -> str:
    q = o.query
    lines = []
    for label, value in (("client:   hostname", q.client.name if q.client.looked_up else UNKNOWN),
                         ("client:   address ", q.client.addr),
                         ("client:   username", q.user),
                         ("server:   hostname", q.server.name if q.server.looked_up else UNKNOWN),
                         ("server:   address ", q.server.addr),
                         ("server:   process ", q.daemon)):
        if value.lower() != UNKNOWN:
            lines.append(f"{label} {value}")
    loc = o.decision.location
    if o.index is not None:
        lines.append(f"matched:  {loc.path} line {loc.line}")
    elif loc is not None:
        lines.append(f"matched:  (none; {loc} ends in an error, so everyone else is denied)")
    else:
        lines.append("matched:  (none; default grant)")
    for key, value in o.decision.options:
        if KEYWORDS.get(key, (False, False, False, False))[3]:
            # what the option would run with, as libwrap logs it: expanded, trimmed
            value = chop(percent_expand(value, q))
        lines.append(f"option:   {key} {value}".rstrip())
    lines.append(f"access:   {o.word}")
    return "\n".join(lines)


def build(args) -> tuple[HostsAccessLayer, Resolver, list]:
    # a hosts file names hosts: @group is still asked of NSS, as tcpdmatch asks it
    backend = hosts_file_backend(args.hosts_file) if args.hosts_file else None
    resolver = Resolver(backend)
    layer, diags = load_hosts_access(args.hosts_allow or "/nonexistent/hosts.allow",
                                     args.hosts_deny or "/nonexistent/hosts.deny",
                                     resolver, dry_run=not args.tcpd)
    return layer, resolver, diags


def parser() -> argparse.ArgumentParser:
    p = FatalUsageParser(prog="acl match", description="explain a hosts.allow/hosts.deny decision")
    p.add_argument("--hosts-allow", metavar="FILE", help="hosts.allow (absent: empty)")
    p.add_argument("--hosts-deny", metavar="FILE", help="hosts.deny (absent: empty)")
    p.add_argument("--hosts-file", metavar="FILE",
                   help="resolve names from this hosts file instead of the system resolver "
                        "(netgroups still come from the system)")
    p.add_argument("--tcpd", action="store_true",
                   help="judge options as tcpd does, not as tcpdmatch's dry run")
    p.add_argument("--batch", action="store_true", help="read 'DAEMON CLIENT' lines from stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print file warnings")
    p.add_argument("daemon", nargs="?", metavar="DAEMON[@HOST]")
    p.add_argument("client", nargs="?", metavar="[USER@]CLIENT")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.batch == (args.daemon is not None):
        print("acl match: fatal: give DAEMON CLIENT, or --batch", file=sys.stderr)
        return 100
    if not args.batch and args.client is None:
        print("acl match: fatal: missing CLIENT", file=sys.stderr)
        return 100
    try:
        layer, resolver, diags = build(args)
    except OSError as exc:
        print(f"acl match: fatal: {exc}", file=sys.stderr)
        return 111
    if not args.quiet:
        for d in diags:
            print(f"warning: {d}", file=sys.stderr)
    if any(t.stop is not None and t.stop.line == 0 for t in (layer.allow, layer.deny)):
        print("acl match: fatal: a rule file cannot be read", file=sys.stderr)
        return 111
    if args.batch:
        return _batch(layer, resolver)
    try:
        outcomes = explain(layer, resolver, args.daemon, args.client)
    except HostNotFound as exc:
        print(f"acl match: fatal: {exc}", file=sys.stderr)
        return 100
    write_out("\n\n".join(_report(o) for o in outcomes) + "\n")   # options as tcpdmatch
    return 1 if any(o.decision.verdict is Verdict.DENY for o in outcomes) else 0


def _batch(layer: HostsAccessLayer, resolver: Resolver) -> int:
    out = sys.stdout
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        if len(words) != 2:
            out.write("error expected 'DAEMON CLIENT'\n")
            continue
        try:
            outcomes = explain(layer, resolver, words[0], words[1])
        except HostNotFound as exc:
            out.write(f"error {exc}\n")
            continue
        out.write(" ; ".join(f"{o.word} {o.where}" for o in outcomes) + "\n")
    out.flush()
    return 0
