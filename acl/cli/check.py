"""``acl check``: our tcpdchk, plus shadowed rules and allow/deny overlaps.

    acl check [--hosts-allow A] [--hosts-deny D] [-d] [-v]
              [--no-names | --hosts-file FILE] [--names-timeout SECONDS]

Without file flags it reads /etc/hosts.allow and /etc/hosts.deny; ``-d``
reads ./hosts.allow and ./hosts.deny, like tcpdchk -d.  Each finding is one
line ``file:line:column: [warning: ]message``.  ``-v`` also lists every rule
with the verdict it implies, like tcpdchk -v.

Like tcpdchk, it asks the name service about the hosts the rules name
(acl/check_names.py): names that do not resolve, aliases, addresses
without a name or whose name fails libwrap's double check, a daemon@host
with several addresses, unknown netgroups -- in the rule files and in the
``/file`` patterns they name.  ``--no-names`` skips that (a machine without
DNS, or a check that must not touch the network); ``--names-timeout`` bounds
the time all those lookups may take together (default 10 s): what has no
answer by then is reported as not checked.  ``--hosts-file FILE`` answers
the host name and address questions from FILE (hosts(5)) alone, as ``acl
match --hosts-file`` does: what FILE does not name is "host not found" or
"has no name", and DNS is never asked -- tcpdchk's findings on a machine
whose /etc/hosts is FILE and whose nsswitch.conf says ``hosts: files``.
Netgroups are still asked of the system (NSS), which a hosts file does not
replace.  A FILE that cannot be read is fatal (exit 111).

Exit codes, for scripts:

* 0   nothing to say
* 1   warnings only: lint, name checks, shadowed rules, overlaps (the files
      work as written)
* 100 errors: lines libwrap skips or that stop a file, options that deny
* 111 a file exists but cannot be read
"""

from __future__ import annotations

import argparse
import sys

from acl.check_names import DEFAULT_TIMEOUT, NameLookups, name_findings
from acl.cli import FatalUsageParser
from acl.compile.tcpw import HostsAccessLayer
from acl.compile.tcpw_check import check, comment_continuations
from acl.errors import Severity
from acl.model import Verdict
from acl.parse.hosts_access import read_hosts
from acl.resolve import hosts_file_backend
from acl.rulefiles import read_bytes


def parser() -> argparse.ArgumentParser:
    p = FatalUsageParser(prog="acl check", description="lint hosts.allow / hosts.deny")
    p.add_argument("--hosts-allow", metavar="FILE")
    p.add_argument("--hosts-deny", metavar="FILE")
    p.add_argument("-d", action="store_true", help="use ./hosts.allow and ./hosts.deny")
    p.add_argument("-v", action="store_true", help="list every rule and its implied verdict")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--no-names", action="store_true",
                       help="look no host name, address or netgroup up (tcpdchk's name checks)")
    names.add_argument("--hosts-file", metavar="FILE",
                       help="answer host names and addresses from this hosts file alone, not "
                            "the system resolver (no DNS); netgroups still come from the system")
    p.add_argument("--names-timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_TIMEOUT,
                   help="time all name lookups may take together (default: %(default)g)")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds in (0, 3600]")
    return value


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        backend = hosts_file_backend(args.hosts_file) if args.hosts_file else None
    except OSError as exc:
        print(f"acl check: fatal: {exc}", file=sys.stderr)     # as acl match says it
        return 111
    if args.d:
        allow_path, deny_path = "hosts.allow", "hosts.deny"
    elif args.hosts_allow or args.hosts_deny:
        allow_path = args.hosts_allow or "/nonexistent/hosts.allow"
        deny_path = args.hosts_deny or "/nonexistent/hosts.deny"
    else:
        allow_path, deny_path = "/etc/hosts.allow", "/etc/hosts.deny"
    allow = read_hosts(allow_path)
    deny = read_hosts(deny_path)
    layer = HostsAccessLayer(allow, deny)
    findings = check(layer)
    if not args.no_names:
        findings.extend(name_findings(layer, NameLookups(backend, timeout=args.names_timeout)))
    for table in (allow, deny):
        try:
            findings.extend(comment_continuations(table, read_bytes(table.path)))
        except OSError:         # read_hosts has reported it (a FIFO, a device...)
            pass
    unreadable = any(t.stop is not None and t.stop.line == 0 for t in (allow, deny))
    if args.v:
        for i, rule in enumerate(layer.rules):
            d = layer.decisions[i]
            print(f">>> Rule {rule.path} line {rule.line}:")
            print("daemons:  " + " ".join(t.text for t in rule.daemon_tokens))
            print("clients:  " + " ".join(t.text for t in rule.client_tokens))
            for key, value in d.options:
                print(f"option:   {key} {value}".rstrip())
            # a twist's rule shows its table's verdict, as tcpdchk -v shows it:
            # denied in hosts.deny (the client gets the command, not the service)
            granted = i < layer.n_allow if d.verdict is Verdict.DELEGATE else d.allowed
            print(f"access:   {'granted' if granted else 'denied'}\n")
    findings.sort(key=lambda d: (d.path != allow_path, d.path, d.line, d.column))
    for d in findings:
        print(str(d))
    if unreadable:
        return 111
    if any(d.severity is Severity.ERROR for d in findings):
        return 100
    return 1 if findings else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
