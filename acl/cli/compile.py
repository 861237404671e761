"""``acl compile rules.cdb rules.tmp < rules.txt``: acl's tcprules.

Same arguments and manners as ucspi-tcp's ``tcprules`` (spec B.1, STYLE 10):

* the temporary file is created (truncated) first, so a path that cannot be
  written is a temporary failure even when the input is bad;
* the whole input is parsed; the first wrong line is fatal (exit 100) and the
  existing ``rules.cdb`` is left untouched;
* the cdb (byte-identical to Debian's tcprules for the same input) is written
  to the temporary name, fsynced, closed, and renamed over ``rules.cdb``;
* exit 0 silently; 100 for bad usage or input; 111 for I/O trouble.

Unlike the real IPv6 tcprules, a line with no ``:allow``/``:deny`` is an
error here, not an endless loop.  And unlike it, a third argument is a
usage error (exit 100), where tcprules ignores it: the rules file named
as a third path is a forgotten ``<``, which would otherwise wait for the
rules on the terminal.  ``-h``/``--help`` anywhere asks for help (to
tcprules ``-h`` is a file name).
"""

from __future__ import annotations

import os
import sys

from acl.cdb import CdbError, make_cdb
from acl.errors import RuleSyntaxError
from acl.parse.tcprules import parse_tcprules, rules_to_records

EXIT_BAD = 100
EXIT_TEMP = 111
PROG = "acl compile"


def _fatal(code: int, message: str) -> int:
    print(f"{PROG}: fatal: {message}", file=sys.stderr)
    return code


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:   # asked for, anywhere: stdout, success
        print("usage: acl compile rules.cdb rules.tmp < rules.txt")
        return 0
    if len(argv) != 2:
        print(f"{PROG}: usage: acl compile rules.cdb rules.tmp < rules.txt", file=sys.stderr)
        return EXIT_BAD
    fn, fntemp = argv
    try:
        fd = os.open(fntemp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        return _fatal(EXIT_TEMP, f"unable to create {fntemp}: {_reason(exc)}")
    closed = False
    try:
        try:
            text = sys.stdin.buffer.read()
        except OSError as exc:
            return _fatal(EXIT_TEMP, f"unable to read input: {_reason(exc)}")
        try:
            records = rules_to_records(parse_tcprules(text, "stdin"))
        except RuleSyntaxError as exc:
            return _fatal(EXIT_BAD, str(exc))
        try:
            blob = make_cdb((k, d) for k, d, _line in records)
        except CdbError as exc:
            return _fatal(EXIT_TEMP, f"unable to write to {fntemp}: {exc}")
        try:
            view = memoryview(blob)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            closed = True
            os.close(fd)      # a close error is a write error (NFS)
        except OSError as exc:
            return _fatal(EXIT_TEMP, f"unable to write to {fntemp}: {_reason(exc)}")
    finally:
        if not closed:
            os.close(fd)
    try:
        os.rename(fntemp, fn)
    except OSError as exc:
        return _fatal(EXIT_TEMP, f"unable to move {fntemp} to {fn}: {_reason(exc)}")
    return 0
