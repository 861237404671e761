"""``acl query``: ask a running ``acl serve``.

    acl query [--socket PATH] [--timeout S] [--lease] [--host NAME] [--user NAME]
              [--port N] [--server ADDR] [--server-port N] SERVICE CLIENT
    acl query --admin PATH reload|stats|dump

Prints ``allow``/``deny``/``delegate`` with the reason, the deciding rule,
the environment and options.  The default socket is ``$ACL_SOCKET`` (unset
or empty: ``/run/acl/query.sock``).

Exit status: 0 granted (``--admin``: the command worked), 1 denied, 100 bad
input -- arguments, a socket path too long to be one, an admin command the
server does not take, a reload refused because the policy does not load --
and 111 when the sidecar cannot be reached, does not answer within the
timeout (10 s), or answers with an error of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from acl.cli import EXIT_BAD_INPUT, EXIT_NO, EXIT_OK, EXIT_TEMPORARY, adminsock, write_out
from acl.cli.sockpath import socket_path_error
from acl.wire.admin import ADMIN_COMMANDS

PROG = "acl query"
DEFAULT_TIMEOUT = 10.0


def format_decision(service: str, client: str, d) -> str:
    parts = [f"{d.verdict.name.lower()} {service} {client}: {d.reason.log_text}"]
    if d.location:
        parts.append(f"rule {d.location}")
    for name, value in d.env:
        parts.append(f"env {name}={value}" if value is not None else f"env -{name}")
    for name, value in d.options:
        parts.append(f"option {name}{' ' + value if value else ''}")
    if d.lease:
        parts.append(f"lease {d.lease}")
    return "\n  ".join(parts)


def admin(path: str, command: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Send one command, print the JSON answer; the exit status it means
    (acl/cli/adminsock.py)."""
    try:
        reply = adminsock.exchange(path, command, timeout)
    except adminsock.NoAnswer as exc:
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
    print(json.dumps(reply, indent=2, sort_keys=True))
    return adminsock.exit_status(reply)


DEFAULT_SOCKET = "/run/acl/query.sock"

# One decision per run: the words are SERVICE CLIENT, or one admin COMMAND.
# (argparse would write the words as repeatable, which they are not.)
USAGE = ("%(prog)s [-h] [-s PATH] [--timeout S] [--lease] [--host NAME] [--user NAME]\n"
         "                 [--port N] [--server ADDR] [--server-port N] SERVICE CLIENT\n"
         "       %(prog)s [--timeout S] --admin PATH reload|stats|dump")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, usage=USAGE, description="ask a running acl serve")
    p.add_argument("--socket", "-s", metavar="PATH",
                   default=os.environ.get("ACL_SOCKET") or DEFAULT_SOCKET,
                   help=f"the sidecar's query socket (default: $ACL_SOCKET, else "
                        f"{DEFAULT_SOCKET})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--admin", metavar="PATH",
                   help="admin socket: run COMMAND (reload, stats, dump)")
    p.add_argument("--lease", action="store_true", help="take a lease (held until exit)")
    p.add_argument("--host", metavar="NAME", help="client host name, when known")
    p.add_argument("--user", metavar="NAME", help="remote user (ident), when known")
    p.add_argument("--port", type=int, default=0, metavar="N", help="client port")
    p.add_argument("--server", metavar="ADDR", help="server (local) address")
    p.add_argument("--server-port", type=int, default=0, metavar="N", help="server port")
    p.add_argument("words", nargs="+", metavar="SERVICE CLIENT | COMMAND",
                   help="what to ask: a service and a client address, or, with --admin, "
                        "one command")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_BAD_INPUT
    for flag, value in (("--port", args.port), ("--server-port", args.server_port)):
        if not 0 <= value <= 65535:
            print(f"{PROG}: {flag} {value}: a port is 0 .. 65535", file=sys.stderr)
            return EXIT_BAD_INPUT
    if not args.timeout > 0:
        print(f"{PROG}: --timeout {args.timeout}: seconds, more than 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = args.admin or args.socket
    why = socket_path_error(path)
    if why:
        print(f"{PROG}: fatal: {path}: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.admin:
        if len(args.words) != 1 or args.words[0].lower() not in ADMIN_COMMANDS:
            print(f"{PROG}: fatal: --admin takes one command: {' | '.join(ADMIN_COMMANDS)}, "
                  f"not {' '.join(args.words)!r}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return admin(args.admin, args.words[0], args.timeout)
    if len(args.words) != 2:
        print(f"{PROG}: fatal: give one SERVICE CLIENT pair\n{p.format_usage().rstrip()}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from acl.client import Client, ServerError
    from acl.errors import ProtocolError
    from acl.model import Request

    service, client = args.words
    try:
        req = Request(service, client, args.port, args.server, args.server_port,
                      args.host, args.user, args.lease)
        from acl.wire.binary import decide_payload

        decide_payload(req)                # validate before connecting
    except ValueError as exc:
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with Client(args.socket, timeout=args.timeout) as c:
            d = c.decide(req)
    except TimeoutError:
        # the policy (Postfix) and admin sockets wait for a line that never comes
        print(f"{PROG}: fatal: {args.socket}: no answer in the binary protocol within "
              f"{args.timeout:g} s: is it the query socket?", file=sys.stderr)
        return EXIT_TEMPORARY
    except (OSError, ProtocolError) as exc:
        hint = ("" if isinstance(exc, (OSError, ServerError))
                else ": is it the query socket?")      # bytes that are no reply at all
        print(f"{PROG}: fatal: {args.socket}: {exc}{hint}", file=sys.stderr)
        return EXIT_TEMPORARY
    write_out(format_decision(service, client, d) + "\n")    # env values: the file's bytes
    return EXIT_OK if d.allowed else EXIT_NO
