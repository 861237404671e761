"""``acl serve``: run the decision service (issue 6; docs/configuration.md).

    acl serve [--config policy.toml] [--query PATH] [--policy-socket PATH]
              [--admin PATH] [--metrics HOST:PORT] [--allow-pure] [--check]

With no ``--config`` the example policy shipped in the package runs, with its
sockets in a private runtime directory, and the command prints where it
listens and one command that queries it.  The pure-Python twin is refused
unless ``--allow-pure`` says a slow sidecar is what you want -- and so is a
partial build, where some core modules run their twin (acl.core: BUILD).  The event loop
is uvloop's when installed (``ACL_NO_UVLOOP=1``: asyncio's).  ``--check``
loads the policy, prints what it found, and exits (0 good, 100 bad).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import stat
import sys

from acl.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_TEMPORARY, FatalUsageParser
from acl.errors import AclError, PolicyError, RuleSyntaxError, SandboxError

PROG = "acl serve"


def runtime_dir() -> str:
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "acl") if base else f"/tmp/acl-{os.getuid()}"


def own_runtime_dir(path: str) -> None:
    """Make the example's socket directory, or accept it only if it is ours.

    The XDG Base Directory Specification on $XDG_RUNTIME_DIR: "The directory
    MUST be owned by the user, and he MUST be the only one having read and
    write access to it."  Ours is made 0755, not 0700: the query socket is
    for other local users to reach.  What counts is that nobody else can
    create, rename or replace an entry in it -- /tmp/acl-$UID may have been
    made by another user first, who could then swap a socket file for a
    symlink between our bind and anything done to the path.  So an existing
    one must be a real directory (lstat: not a symlink), owned by our
    effective uid, not writable by group or others; else AclError."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(path)
    why = ""
    if not stat.S_ISDIR(st.st_mode):
        why = "not a directory (a symlink?)"
    elif st.st_uid != os.geteuid():
        why = f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise AclError(f"{path}: {why}: a runtime directory must be ours alone "
                       "(XDG Base Directory Specification); remove it, or set "
                       "XDG_RUNTIME_DIR, or pass --config with socket paths")


def event_loop_runner() -> tuple[asyncio.Runner, str]:
    """uvloop when it is installed (a round trip costs about half of what
    asyncio's own loop costs), else asyncio's; ``ACL_NO_UVLOOP=1`` forces
    asyncio's."""
    if os.environ.get("ACL_NO_UVLOOP", "") in ("", "0"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"
    return asyncio.Runner(), "asyncio"


def parser() -> argparse.ArgumentParser:
    # a wrong option is exit 100, bad input, as for every command (man/acl.8),
    # not argparse's 2: the units' RestartPreventExitStatus=100 then keeps
    # systemd from restarting a command line that can never work
    p = FatalUsageParser(prog=PROG, description="run the acl decision service")
    p.add_argument("--config", "-c", help="policy TOML file (default: the shipped example)")
    p.add_argument("--query", help="binary protocol socket path (overrides the file)")
    p.add_argument("--policy-socket", help="Postfix policy socket path (overrides the file)")
    p.add_argument("--admin", help="admin socket path (overrides the file)")
    p.add_argument("--metrics", help="metrics HOST:PORT ('' disables; overrides the file)")
    p.add_argument("--allow-pure", action="store_true",
                   help="run even when only the slow pure-Python core is available")
    p.add_argument("--check", action="store_true", help="load the policy, report, exit")
    return p



def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from acl import core
    from acl.engine import KERNEL, Engine
    from acl.policy import load_policy

    # "compiled" means every core module (acl.core): a partial build runs
    # the missing parts on their slow twins, and is refused as a pure one is
    compiled = core.COMPILED and KERNEL == "compiled"
    if not compiled and not args.allow_pure and not args.check:
        print(f"{PROG}: fatal: the compiled core is not available ({core.CORE_TEXT}); "
              "build it, or pass --allow-pure to run the slow pure-Python twin",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    # SIGHUP's default action kills: until Server.serve takes the signal over,
    # one is remembered and answered by a reload once serving (acl reload
    # for a policy without an admin socket, an older unit's ExecReload= or a
    # logrotate hook may send it at any time)
    hup: list[int] = []
    if not args.check:
        signal.signal(signal.SIGHUP, lambda signum, frame: hup.append(signum))
    try:
        policy = load_policy(args.config)
    except (RuleSyntaxError, PolicyError) as exc:
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for d in policy.diagnostics:
        print(f"{PROG}: {d}", file=sys.stderr)
    sockets = policy.sockets
    if args.config is None:              # the example: private paths, loopback metrics
        rd = runtime_dir()
        sockets = dataclasses.replace(sockets, query=os.path.join(rd, "query.sock"),
                                      policy=os.path.join(rd, "policy.sock"),
                                      admin=os.path.join(rd, "admin.sock"),
                                      admin_uids=tuple({*sockets.admin_uids, os.getuid()}))
    for name, value in (("query", args.query), ("policy", args.policy_socket),
                        ("admin", args.admin)):
        if value is not None:
            sockets = dataclasses.replace(sockets, **{name: os.path.abspath(value) if value else ""})
    policy.sockets = sockets
    if args.metrics is not None:
        from acl.policy import listen_problem

        problem = listen_problem(args.metrics)
        if problem:
            print(f"{PROG}: fatal: --metrics: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
        policy.metrics_listen = args.metrics
    if args.check:
        print(f"{PROG}: {policy.path}: {len(policy.sources)} sources, services "
              f"{', '.join(policy.services()) or '(none)'}")
        return EXIT_OK
    if args.config is None:
        # the host, not the input, is wrong: exit 111 as for every other
        # reason the sockets cannot be made (the same command works once
        # the directory is removed)
        try:
            own_runtime_dir(rd)
        except (OSError, AclError) as exc:
            print(f"{PROG}: fatal: cannot listen: {exc}", file=sys.stderr)
            return EXIT_TEMPORARY
    engine = Engine(policy)
    from acl.serve.server import Server
    from acl.serve.systemd import PassedSocketError

    server = Server(engine, compiled=compiled, build=core.BUILD,
                    pure_parts=core.PURE_PARTS)
    try:
        addrs = server.bind()
    except PassedSocketError as exc:                 # a unit to fix: retrying cannot help
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, AclError) as exc:
        print(f"{PROG}: fatal: cannot listen: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
    for name, where in addrs.items():
        print(f"{PROG}: {name} on {where}", file=sys.stderr)
    if "query" in addrs and not addrs["query"].startswith("fd:"):
        example = "sshd 192.0.2.10" if args.config is None else "SERVICE CLIENT-ADDRESS"
        print(f"{PROG}: try: acl query --socket {addrs['query']} {example}", file=sys.stderr)

    runner, loop_name = event_loop_runner()

    def ready() -> None:
        print(f"{PROG}: ready ({core.CORE_TEXT}, {loop_name} loop)",
              file=sys.stderr, flush=True)

    try:
        with runner:
            runner.run(server.serve(ready=ready, pending_reload=lambda: bool(hup)))
    except (RuleSyntaxError, PolicyError) as exc:    # the policy: load_policy checks it first
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SandboxError as exc:                      # the unit: retrying cannot help
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, KeyError, AclError) as exc:     # the host: a queue, a user, a chroot
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
    print(f"{PROG}: stopped", file=sys.stderr)
    return EXIT_OK
