"""``acl reload``: have a running ``acl serve`` read its policy again, and
wait for the outcome.

    acl reload [--admin PATH | --config FILE [--pid PID]] [--timeout S]

It is what ``systemctl reload`` runs (``ExecReload=`` of
deploy/systemd/acl.service and acl-nfqueue.service), so that the reload
fails visibly, as a web server's does, when the new policy does not load.

Rules of this command:

* It returns when the reload is over.  The server swaps the new policy in
  before it answers the admin ``reload`` (acl/serve/server.py), so after
  exit 0 every query, on any connection, is decided by the new policy.  A
  reload already running is let finish first; this one then reads the files
  as they are now.
* The admin socket: ``--admin PATH``; else the ``[sockets] admin`` that
  ``--config FILE`` names -- that file alone is read here, never its rule
  files: the server reads them, and logs and counts a failure as for any
  other reload (a FILE that is no TOML is exit 100 here, with its
  ``file:line:column``, and nothing is asked); else ``DEFAULT_ADMIN``.  The server serves only the peers of
  ``admin_uids`` (default root), so systemd runs this as root (``!``).
* A policy that names no admin socket (``--config``, no ``[sockets]
  admin``) cannot be asked and answered.  With ``--pid PID`` (systemd's
  ``$MAINPID``) the policy is loaded here first, as ``acl serve --check``
  loads it: one that does not load is reported, ``file:line:column:
  message``, and nothing is sent (exit 100; the running policy stays).  One
  that loads is announced to the sidecar by SIGHUP, and a warning says that
  the outcome is in the sidecar's log alone: the only exit 0 that does not
  prove the new policy answers.  Without ``--pid``: exit 100.

Exit status: 0 reloaded (or signalled, above); 100 bad input -- arguments,
a policy that does not load (the running one stays), a policy file that
names no admin socket and no ``--pid``; 111 the sidecar cannot be reached,
does not answer within ``--timeout`` (60 s), or refuses for another reason
(a uid not in ``admin_uids``, or it is out of descriptors: its answer says
so).
"""

from __future__ import annotations

import os
import signal
import sys

from acl.cli import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_TEMPORARY,
    FatalUsageParser,
    adminsock,
)
from acl.cli.sockpath import socket_path_error

PROG = "acl reload"
#: acl-admin.socket's path, and the one the shipped policies name
DEFAULT_ADMIN = "/run/acl/admin.sock"
#: a large policy takes seconds to compile (docs/operator-guide.md); systemd
#: gives ExecReload= TimeoutStartSec= (90 s by default) before it kills it
DEFAULT_TIMEOUT = 60.0


def parser() -> FatalUsageParser:
    p = FatalUsageParser(prog=PROG, description="reload a running acl serve and wait for "
                         "the outcome (exit 0 reloaded, 100 the policy does not load, "
                         "111 no answer)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--admin", metavar="PATH",
                       help=f"the sidecar's admin socket (default: the [sockets] admin of "
                            f"--config, else {DEFAULT_ADMIN})")
    where.add_argument("--config", "-c", metavar="FILE",
                       help="the policy TOML the sidecar runs: its [sockets] admin is asked")
    p.add_argument("--pid", type=int, metavar="PID",
                   help="with --config: when the policy names no admin socket, check the "
                        "policy here and send PID SIGHUP (the outcome is then in its log only)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the reload (default {DEFAULT_TIMEOUT:g})")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
        if not args.timeout > 0:
            p.error(f"--timeout {args.timeout:g}: seconds, more than 0")
        if args.pid is not None and args.config is None:
            p.error("--pid is for a policy without an admin socket: give it with --config")
        if args.pid is not None and args.pid <= 1:
            p.error(f"--pid {args.pid}: not a process acl could be")
    except SystemExit as exc:          # --help (0), or a usage error (100)
        return int(exc.code or 0)
    path = args.admin
    if path is None and args.config is not None:
        from acl.errors import PolicyError
        from acl.policy import admin_socket_of

        try:
            path = admin_socket_of(args.config)
        except PolicyError as exc:
            print(f"{PROG}: fatal: {exc}; the running policy stays", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not path:
            return signal_instead(args.config, args.pid)
    path = path or DEFAULT_ADMIN
    why = socket_path_error(path)
    if why:
        print(f"{PROG}: fatal: {path}: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        reply = adminsock.exchange(path, "reload", args.timeout)
    except adminsock.NoAnswer as exc:
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
    status = adminsock.exit_status(reply)
    if status != EXIT_OK:
        error = reply.get("error", "refused, without a reason")
        print(f"{PROG}: fatal: {error}; the running policy stays", file=sys.stderr)
        return status
    for d in reply.get("diagnostics", ()):
        print(f"{PROG}: {d}", file=sys.stderr)
    seconds = reply.get("seconds")
    took = f" in {seconds * 1000:.1f} ms" if isinstance(seconds, (int, float)) else ""
    print(f"{PROG}: reloaded{took}", flush=True)
    return EXIT_OK


def signal_instead(config: str, pid: int | None) -> int:
    """The policy names no admin socket: check it here, then SIGHUP (rules at
    the top of this file)."""
    if pid is None:
        print(f"{PROG}: fatal: {config} names no admin socket ([sockets] admin): set one, "
              "or give --pid to signal the sidecar without an answer", file=sys.stderr)
        return EXIT_BAD_INPUT
    from acl.errors import PolicyError, RuleSyntaxError
    from acl.policy import load_policy

    try:
        load_policy(config)
    except (PolicyError, RuleSyntaxError) as exc:
        print(f"{PROG}: fatal: {exc}; nothing sent, the running policy stays",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"{PROG}: fatal: cannot signal pid {pid}: {exc.strerror}", file=sys.stderr)
        return EXIT_TEMPORARY
    print(f"{PROG}: warning: {config} names no admin socket: sent SIGHUP to pid {pid} "
          "without waiting; whether the sidecar loaded the policy is in its log "
          "(acl_last_reload_success)", file=sys.stderr)
    return EXIT_OK
