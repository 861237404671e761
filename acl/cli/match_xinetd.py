"""``acl match --xinetd CONF``: what xinetd would decide for a client.

    acl match --xinetd CONF [--hosts FILE] [--limits [--now T]] [-q] SERVICE IP [SERVER]
    acl match --xinetd CONF [--hosts FILE] [--limits [--now T]] [-q] --batch

SERVICE is the xinetd service *id*; IP is the client as the service's socket
would see it (``::ffff:a.b.c.d`` for an IPv4 client of an IPv6 service; a
plain IPv4 address is mapped the same way).  SERVER, the local address the
client connected to, picks among services that share an id (xinetd keeps
them when their bind addresses differ); without it such an id is refused.
Batch lines are ``SERVICE IP [SERVER]``.  Each answer is ``allow`` or
``deny`` then the reason xinetd would log (``address``, ``time``, ...).

By default only only_from/no_access are consulted: a query consumes no cps
count, takes no lease.  ``--limits`` runs every request through the limits as
well (cps counted, max_load against /proc/loadavg, access_times against the
clock or ``--now``), as one xinetd would see that sequence of connections.
``--now`` is Unix seconds, a finite number the limits core can hold (within
2**32 s of the epoch); anything else (``nan``, ``inf``, ``1e19``) is a usage
error, exit 100.
``--hosts FILE`` answers name lookups from a hosts file instead of the system
resolver.  Exit codes: 0 allow (batch: done), 1 deny, 100 bad input, 111
unreadable file.

Why address-only by default: a one-shot explainer cannot see what makes a
limit trip in the running service (its connection counts, the moment of the
real connection), so a limit verdict from it would be a guess; the address
verdict is the policy's answer and the same every time it is asked.
"""

from __future__ import annotations

import argparse
import sys
import time

from acl.cli import UsageError, UsageParser
from acl.errors import RuleSyntaxError
from acl.model import Reason, Request, Verdict


def parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="acl match", description="what xinetd would decide for a client "
                "(by default only_from/no_access only; --limits adds the limits)",
                usage="%(prog)s [-h] --xinetd CONF [--hosts FILE] [--limits [--now T]] [-q]\n"
                      "                 (--batch | SERVICE IP [SERVER])")
    p.add_argument("--xinetd", required=True, metavar="CONF", help="xinetd.conf (includedir "
                   "is followed as xinetd does)")
    p.add_argument("--hosts", metavar="FILE",
                   help="answer name lookups from this hosts file, not the system resolver")
    p.add_argument("--limits", action="store_true",
                   help="also run each query through cps, max_load and access_times, as one "
                        "xinetd would see that sequence of connections")
    p.add_argument("--now", type=_now, metavar="T",
                   help="with --limits: the time (Unix seconds) access_times and cps see")
    p.add_argument("--batch", action="store_true",
                   help="read 'SERVICE IP [SERVER]' lines from stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print file warnings")
    p.add_argument("query", nargs="*", metavar="SERVICE IP [SERVER]")
    return p


def _now(text: str) -> float:
    """``--now T``: a time the limits core takes (acl._limits_py: MAX_NOW)."""
    from acl.core import limits

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not -limits.MAX_NOW <= value <= limits.MAX_NOW:      # NaN fails it too
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: Unix seconds, finite and within "
            f"{limits.MAX_NOW:.0f} s of the epoch")
    return value


class _NotAnAddress(Exception):
    """The layer answered ERROR for the client: it is not an address."""


def _fatal(msg: str, code: int) -> int:
    print(f"acl match: fatal: {msg}", file=sys.stderr)
    return code


def _parse_args(argv: list[str]):
    args = parser().parse_intermixed_args(argv)
    if args.batch and args.query:
        raise UsageError("--batch reads queries from stdin; give none on the command line")
    if not args.batch and len(args.query) not in (2, 3):
        raise UsageError("give SERVICE IP [SERVER], or --batch")
    if args.now is not None and not args.limits:
        # the address check reads no clock: a --now alone would be ignored
        raise UsageError("--now is for --limits (only the limits read the clock)")
    opts = {"conf": args.xinetd, "hosts": args.hosts, "batch": args.batch,
            "limits": args.limits, "now": args.now, "quiet": args.quiet}
    return opts, args.query


def _answer(layer, service: str, ip: str, limits: bool, now: float,
            server: str | None = None) -> tuple[str, int]:
    req = Request(service=service, client=ip, server=server)
    d = layer.check(req, now) if limits else layer.check_address(req)
    if d is None:
        return "deny unknown_service", 1
    if d.reason is Reason.ERROR:
        raise _NotAnAddress(ip)
    word = "allow" if d.verdict is not Verdict.DENY else "deny"
    return f"{word} {d.reason.log_text}", 0 if d.allowed else 1


def main(argv: list[str]) -> int:
    try:
        opts, rest = _parse_args(argv)
    except UsageError as exc:
        print(f"acl match: fatal: {exc}\n{parser().format_usage().rstrip()}", file=sys.stderr)
        return 100
    from acl.compile.xinetd import XinetdLayer, load_xinetd
    from acl.parse.xinetd_resolve import HostsResolver, SystemResolver
    from acl.rulefiles import read_bytes

    resolver = SystemResolver()
    if opts["hosts"]:
        try:
            resolver = HostsResolver(read_bytes(opts["hosts"]).decode("utf-8", "replace"))
        except OSError as exc:
            return _fatal(f"cannot read {opts['hosts']}: {exc.strerror}", 111)
    try:
        policy, diags = load_xinetd(opts["conf"], resolver)
    except RuleSyntaxError as exc:
        for d in exc.diagnostics:
            print(f"acl match: {d}", file=sys.stderr)
        return 111 if exc.line == 0 else 100
    if not opts["quiet"]:
        for d in diags:
            print(f"acl match: {d}", file=sys.stderr)
    layer = XinetdLayer(policy, resolver=resolver)
    fixed_now = opts["now"]
    if opts["batch"]:
        out = sys.stdout
        for lineno, line in enumerate(sys.stdin, 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) not in (2, 3):
                print(f"acl match: stdin:{lineno}: expected SERVICE IP [SERVER]",
                      file=sys.stderr)
                out.write("deny error\n")
                continue
            now = fixed_now if fixed_now is not None else time.time()
            try:
                text, _ = _answer(layer, words[0], words[1], opts["limits"], now,
                                  words[2] if len(words) == 3 else None)
            except _NotAnAddress:
                print(f"acl match: stdin:{lineno}: not an address: {words[1]}",
                      file=sys.stderr)
                text = "deny error"
            out.write(text + "\n")
        out.flush()
        return 0
    now = fixed_now if fixed_now is not None else time.time()
    try:
        text, code = _answer(layer, rest[0], rest[1], opts["limits"], now,
                             rest[2] if len(rest) == 3 else None)
    except _NotAnAddress:
        return _fatal(f"not an address: {rest[1]}", 100)
    print(text)
    return code
