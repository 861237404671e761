"""``acl COMMAND ...``: one module per command under ``acl.cli``.

Each command module has ``main(argv: list[str]) -> int``.  Exit codes follow
djb's manners: 0 success, 1 "denied"/findings where a command answers a
question, 100 bad input (a rule file or argument that is wrong), 111
temporary failure (cannot read, cannot reach the sidecar) -- also for every
command that ran out of descriptors or memory reading a policy file
(``OutOfResources``, caught here once for all).

A reader that stops early (``acl check -v | head``) is not an error of
ours: every command then exits 141 in silence, the status a shell shows
for the C tools acl stands in for (tcpdchk, tcprulescheck: killed by
SIGPIPE, 128 + 13).  Python ignores SIGPIPE, so the write raises
BrokenPipeError instead; ``main`` catches it once, for every command, and
points stdout at /dev/null so the interpreter's last flush is quiet too.
Commands catch their own socket errors, so one that reaches ``main`` is
stdout's.  (Help printed by argparse itself is the exception: argparse
drops the write error and exits 0, equally silent.)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from acl.errors import OutOfResources

COMMANDS = {
    "serve": "run the sidecar (decision service)",
    "match": "explain one decision, like tcpdmatch (or --batch)",
    "check": "lint rule files, like tcpdchk, plus shadowed rules",
    "compile": "compile a tcprules file to cdb, like tcprules",
    "query": "ask a running sidecar",
    "reload": "reload a running sidecar and wait for the outcome",
    "audit": "list listening sockets and the policy that covers them",
}

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 100
EXIT_BAD_INPUT = 100
EXIT_TEMPORARY = 111
EXIT_PIPE = 128 + 13      # 141: stdout's reader went away (SIGPIPE's shell status)


class UsageError(Exception):
    """A command line the command cannot use: its ``main`` says so with the
    usage and returns EXIT_USAGE (acl's "bad input", not argparse's 2)."""


class UsageParser(argparse.ArgumentParser):
    """argparse whose usage errors raise :class:`UsageError` for ``main``."""

    def error(self, message):
        raise UsageError(message)


class FatalUsageParser(argparse.ArgumentParser):
    """argparse for commands whose usage errors end the program at once: the
    usage, then ``PROG: fatal: MESSAGE``, exit EXIT_BAD_INPUT (not argparse's 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: fatal: {message}\n")


def write_out(text: str) -> None:
    """Write ``text`` to stdout as the bytes it was read from: rule files need
    not be UTF-8 (a tcprules env value, a hosts_options value are held decoded
    with surrogateescape), and the tools acl stands in for print such bytes as
    they are, whatever the locale.  What ``print`` holds is flushed first."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


def version_text() -> str:
    from acl import __version__
    from acl.core import CORE_TEXT

    return f"acl {__version__} ({CORE_TEXT})"


def usage() -> str:
    lines = ["usage: acl [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(list(sys.argv[1:] if argv is None else argv))
        finally:                  # also after argparse's SystemExit (--help)
            sys.stdout.flush()    # here, where a closed pipe can still be caught
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V", "version"):
        print(version_text())
        return EXIT_OK
    name = argv[0]
    if name not in COMMANDS:
        print(f"acl: fatal: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(f"acl.cli.{name}")
    try:
        return module.main(argv[1:])
    except OutOfResources as exc:       # the host, not the input (acl/rulefiles.py)
        print(f"acl {name}: fatal: {exc}", file=sys.stderr)
        return EXIT_TEMPORARY
