"""``acl match``: explain a decision, the way tcpdmatch does.

The rule language is chosen by the flag that names its files; each language's
command lives in its own module so the three stay independent:

* ``--hosts-allow`` / ``--hosts-deny``  -> :mod:`acl.cli.match_tcpw`
* ``--tcprules``                        -> :mod:`acl.cli.match_tcprules`
* ``--xinetd``                          -> :mod:`acl.cli.match_xinetd`

Each language module has ``parser()``, the one place its options are
declared; the help printed here is those parsers' own help, so it names
every option there is and no other.  ``-h``/``--help`` anywhere on the line
prints help on stdout and exits 0: the chosen language's parser does that
itself, and with no language named this module prints all three.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_LANGUAGES = (
    (("--hosts-allow", "--hosts-deny"), "acl.cli.match_tcpw"),
    (("--tcprules",), "acl.cli.match_tcprules"),
    (("--xinetd",), "acl.cli.match_xinetd"),
)


def _names_flag(argv: list[str], flags: tuple[str, ...]) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


def _asks_help(argv: list[str]) -> bool:
    """argparse's reading: -h/--help anywhere before a ``--``."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "-h" in words or "--help" in words


def parsers() -> list[argparse.ArgumentParser]:
    """The three languages' parsers, in the order help shows them."""
    return [importlib.import_module(mod).parser() for _flags, mod in _LANGUAGES]


def usage() -> str:
    return "".join(p.format_usage() for p in parsers()).rstrip()


def help_text() -> str:
    head = ("acl match: explain one decision.  The flag naming the rule files picks the\n"
            "language; e.g. 'acl match --tcprules FILE --help' shows that one alone.\n")
    return head + "".join("\n" + p.format_help() for p in parsers()).rstrip()


def main(argv: list[str]) -> int:
    chosen = [mod for flags, mod in _LANGUAGES if _names_flag(argv, flags)]
    if not chosen and _asks_help(argv):
        print(help_text())            # asked for: stdout, success
        return 0
    if len(chosen) != 1:
        print(usage(), file=sys.stderr)
        return 100
    return importlib.import_module(chosen[0]).main(argv)
