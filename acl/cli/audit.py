"""``acl audit``: which listening ports does the policy cover, and how?

    acl audit [--config POLICY.toml | --no-policy] [--json]
              [--service PORT=NAME ...] [--port N ...] [--proto tcp|udp]

Lists the host's listening TCP sockets and bound UDP sockets (from
/proc/net, as netstat does) with the processes holding them, the policy
layers that cover each, and what sample clients -- loopback, private
ranges, the world -- would get.  Services the world may reach are flagged.

Without ``--config``, ``/etc/acl/policy.toml`` is used when it exists.

Exit codes (acl.cli): 0 nothing is open to everyone, 1 something is,
100 bad arguments or a policy that does not load, 111 /proc unreadable or
acl out of descriptors or memory (OutOfResources, reading the policy or
asking /etc/services: acl.cli exits 111 for every command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from acl import audit
from acl.cli import EXIT_BAD_INPUT, EXIT_NO, EXIT_OK, EXIT_TEMPORARY, FatalUsageParser
from acl.errors import AclError, OutOfResources

DEFAULT_CONFIG = "/etc/acl/policy.toml"


def _port_name(text: str) -> tuple[int, str]:
    port, sep, name = text.partition("=")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not name:
        raise argparse.ArgumentTypeError(f"expected PORT=NAME, got {text!r}")
    return int(port), name


def parser() -> argparse.ArgumentParser:
    p = FatalUsageParser(prog="acl audit",
                description="List listening TCP/UDP sockets, their processes, the policy "
                            "layers that cover them and what sample clients would get.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help=f"policy TOML (default {DEFAULT_CONFIG} if present)")
    g.add_argument("--no-policy", action="store_true", help="audit as if no policy existed")
    p.add_argument("--json", action="store_true", help="one JSON document for scripts")
    p.add_argument("--service", action="append", type=_port_name, default=[],
                   metavar="PORT=NAME", help="the service name a port is known by")
    p.add_argument("--port", action="append", type=int, default=[],
                   help="only this port (repeatable)")
    p.add_argument("--proto", choices=("tcp", "udp"), help="only this protocol")
    p.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    return p


def _summary(results: list[audit.SampleResult], klass: str) -> str:
    outcomes = [r.outcome for r in results if r.klass == klass and r.outcome != "unreachable"]
    if not outcomes:
        return "-"
    if len(set(outcomes)) == 1:
        return outcomes[0]
    allowed = sum(o in ("allow", "delegate") for o in outcomes)
    return f"{allowed}/{len(outcomes)} allow"


def _endpoint(f: audit.Finding) -> str:
    lis = f.listener
    host = f"[{lis.address}]" if lis.entry.family == 6 else lis.address
    return f"{host}:{lis.port}"


def _owner(f: audit.Finding) -> str:
    owners = f.listener.owners
    if not owners:
        return "?"
    first = f"{owners[0].name}[{owners[0].pid}]"
    return first if len(owners) == 1 else f"{first}+{len(owners) - 1}"


def render_table(findings: list[audit.Finding], policy_name: str) -> str:
    head = ("PROTO", "LISTEN", "PROCESS", "SERVICE", "LAYERS", "ENFORCED",
            "LOOPBACK", "PRIVATE", "WORLD", "")
    rows = [head]
    for f in findings:
        rows.append((
            f.listener.proto, _endpoint(f), _owner(f), f.service or "-",
            ",".join(f.layers) or "-", f.enforced_by,
            _summary(f.samples, "loopback"), _summary(f.samples, "private"),
            _summary(f.samples, "world"), "OPEN TO EVERYONE" if f.open_to_everyone else "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    flagged = sum(f.open_to_everyone for f in findings)
    lines.append("")
    lines.append(f"policy: {policy_name}; {len(findings)} listening sockets, "
                 f"{flagged} open to everyone")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    config = args.config
    if config is None and not args.no_policy and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    policy = None
    if config is not None:
        try:
            policy = audit.load_policy_view(config)
        except OutOfResources:
            raise               # the host, not the policy: acl.cli's 111
        except (AclError, OSError, ValueError) as exc:
            msg = str(exc)          # policy errors name the file already
            print(f"acl audit: fatal: {msg if msg.startswith(str(config)) else f'{config}: {msg}'}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        found = audit.read_listeners(args.proc)
    except (OSError, audit.ProcFormatError) as exc:
        print(f"acl audit: fatal: cannot read sockets: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
    if args.port:
        found = [lis for lis in found if lis.port in set(args.port)]
    if args.proto:
        found = [lis for lis in found if lis.proto == args.proto]
    findings = audit.audit(found, policy, dict(args.service),
                           bindv6only=audit.read_bindv6only(args.proc))
    if args.json:
        json.dump({"policy": config, "listeners": [f.as_dict() for f in findings]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(findings, config or "none"))
    return EXIT_NO if any(f.open_to_everyone for f in findings) else EXIT_OK
