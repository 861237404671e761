"""``acl match``: explain a decision, the way tcpdmatch does.

The rule language is chosen by the flag that names its files; each language's
command lives in its own module so the three stay independent:

* ``--hosts-allow`` / ``--hosts-deny``  -> :mod:`acl.cli.match_tcpw`
* ``--tcprules``                        -> :mod:`acl.cli.match_tcprules`
* ``--xinetd``                          -> :mod:`acl.cli.match_xinetd`
"""

from __future__ import annotations

import importlib
import sys

_LANGUAGES = (
    (("--hosts-allow", "--hosts-deny"), "acl.cli.match_tcpw"),
    (("--tcprules",), "acl.cli.match_tcprules"),
    (("--xinetd",), "acl.cli.match_xinetd"),
)


def _names_flag(argv: list[str], flags: tuple[str, ...]) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


USAGE = ("usage: acl match --hosts-allow A --hosts-deny D [--batch] DAEMON[@HOST] CLIENT\n"
         "       acl match --tcprules FILE [--batch] [IP [host=NAME] [info=USER]]\n"
         "       acl match --xinetd CONF [--batch] [SERVICE IP]")


def main(argv: list[str]) -> int:
    chosen = [mod for flags, mod in _LANGUAGES if _names_flag(argv, flags)]
    if not chosen and argv in (["-h"], ["--help"]):
        print(USAGE)                  # asked for: stdout, success
        return 0
    if len(chosen) != 1:
        print(USAGE, file=sys.stderr)
        return 100
    return importlib.import_module(chosen[0]).main(argv)
