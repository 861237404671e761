"""``acl COMMAND ...``: one module per command under ``acl.cli``.

Each command module has ``main(argv: list[str]) -> int``.  Exit codes follow
djb's manners: 0 success, 1 "denied"/findings where a command answers a
question, 100 bad input (a rule file or argument that is wrong), 111
temporary failure (cannot read, cannot reach the sidecar).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": "run the sidecar (decision service)",
    "match": "explain one decision, like tcpdmatch (or --batch)",
    "check": "lint rule files, like tcpdchk, plus shadowed rules",
    "compile": "compile a tcprules file to cdb, like tcprules",
    "query": "ask a running sidecar",
    "audit": "list listening sockets and the policy that covers them",
}

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 100
EXIT_BAD_INPUT = 100
EXIT_TEMPORARY = 111


def version_text() -> str:
    from acl import __version__
    from acl.core import IMPLEMENTATION

    return f"acl {__version__} ({IMPLEMENTATION} core)"


def usage() -> str:
    lines = ["usage: acl [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return module.main(argv[1:])
