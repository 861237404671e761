"""``acl match --tcprules FILE``: what tcpserver would do with a client.

FILE is a tcprules text or a cdb (a ``.cdb`` name or a cdb header).

* ``acl match --tcprules FILE IP [host=NAME] [info=USER]`` prints the way
  ``tcprulescheck`` does -- ``rule KEY:`` (with the rule's place), then one
  ``set environment variable N=V`` per item and ``allow connection`` or
  ``deny connection``; or ``default:`` and ``allow connection`` when no key
  is found.  Exit 0 when allowed, 1 when denied.
* ``--batch`` reads one query per stdin line, ``IP [host=NAME] [info=USER]``,
  and prints one line per query: ``allow`` or ``deny``, then, after
  ``allow``, the deciding rule's ``VAR=value`` items space-separated in rule
  order.  Blank lines are skipped.  A query that cannot be read prints
  ``error`` (so lines stay aligned), is reported on stderr, and makes the
  exit status 100.
* ``-6``: do not turn v4-mapped clients into dotted IPv4 (tcpserver ``-6``;
  also what ``tcprulescheck`` does).  ``-H``: never use the host name
  (tcpserver ``-H``: no ``=`` key is tried at all).

A FILE the real tcprules rejects, or would loop on, is exit 100 with
``FILE:line:column: what is wrong``; a broken cdb is exit 100 too; a file
that cannot be read is exit 111.
"""

from __future__ import annotations

import argparse
import sys

from acl.cdb import CdbError
from acl.cli import UsageError, UsageParser, write_out
from acl.compile.tcprules import load_tcprules
from acl.errors import RuleSyntaxError
from acl.model import Request, Verdict

PROG = "acl match"


def parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="acl match", description="what tcpserver would do with a client, "
                "like tcprulescheck",
                usage="%(prog)s [-h] --tcprules FILE [-6] [-H]\n"
                      "                 (--batch | IP [host=NAME] [info=USER])")
    p.add_argument("--tcprules", required=True, metavar="FILE",
                   help="tcprules text, or the cdb built from it")
    p.add_argument("--batch", action="store_true",
                   help="read 'IP [host=NAME] [info=USER]' lines from stdin")
    p.add_argument("-6", dest="no_unmap", action="store_true",
                   help="keep v4-mapped clients as IPv6 (tcpserver -6)")
    p.add_argument("-H", dest="no_host", action="store_true",
                   help="never use the host name: no '=' key is tried (tcpserver -H)")
    p.add_argument("query", nargs="*", metavar="IP [host=NAME] [info=USER]")
    return p


def parse_query(fields: list[str]) -> Request:
    """``IP [host=NAME] [info=USER]`` -> Request; ValueError if malformed."""
    if not fields:
        raise ValueError("empty query")
    ip, host, info = fields[0], None, None
    for f in fields[1:]:
        name, eq, value = f.partition("=")
        if not eq or name not in ("host", "info"):
            raise ValueError(f"expected host=NAME or info=USER, got {f!r}")
        if name == "host":
            host = value
        else:
            info = value
    return Request("tcprules", ip, host=host, user=info)


def _out(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _explain(layer, request: Request) -> tuple[int, str]:
    key, decision = layer.explain(request)
    if key is None:
        if decision.verdict is Verdict.DENY:
            return 100, ""
        return 0, "default:\nallow connection\n"
    lines = [f"rule {key}:" + (f"  ({decision.location})" if decision.location else "")]
    if decision.verdict is Verdict.DENY:
        lines.append("deny connection")
        return 1, "\n".join(lines) + "\n"
    lines += [f"set environment variable {n}={v}" for n, v in decision.env]
    lines.append("allow connection")
    return 0, "\n".join(lines) + "\n"


def _batch(layer) -> int:
    status = 0
    out = sys.stdout.buffer
    check = layer.check
    for number, raw in enumerate(sys.stdin.buffer, 1):
        fields = raw.decode("utf-8", "surrogateescape").split()
        if not fields:
            continue
        try:
            request = parse_query(fields)
        except ValueError as exc:
            print(f"{PROG}: stdin:{number}: {exc}", file=sys.stderr)
            out.write(b"error\n")
            status = 100
            continue
        d = check(request, 0.0)
        if d.verdict is Verdict.DENY:
            if d.reason.name == "ERROR":
                print(f"{PROG}: stdin:{number}: not an IP address: {fields[0]!r}",
                      file=sys.stderr)
                out.write(b"error\n")
                status = 100
                continue
            out.write(b"deny\n")
        elif d.env:
            out.write(_out("allow " + " ".join(f"{n}={v}" for n, v in d.env) + "\n"))
        else:
            out.write(b"allow\n")
    out.flush()
    return status


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        if args.batch and args.query:
            raise UsageError("--batch reads queries from stdin; give none on the command line")
        if not args.batch and not args.query:
            raise UsageError("give IP [host=NAME] [info=USER], or --batch")
        request = None if args.batch else parse_query(args.query)
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: fatal: {exc}\n{parser().format_usage().rstrip()}", file=sys.stderr)
        return 100
    try:
        layer = load_tcprules(args.tcprules, mapped_as_v4=not args.no_unmap,
                              use_host=not args.no_host)
    except RuleSyntaxError as exc:
        print(f"{PROG}: fatal: {exc}", file=sys.stderr)
        return 100
    except CdbError as exc:
        print(f"{PROG}: fatal: {args.tcprules}: {exc}", file=sys.stderr)
        return 100
    except OSError as exc:
        print(f"{PROG}: fatal: unable to read {args.tcprules}: {exc.strerror or exc}",
              file=sys.stderr)
        return 111
    if args.batch:
        return _batch(layer)
    code, text = _explain(layer, request)
    if code == 100:
        print(f"{PROG}: fatal: not an IP address: {request.client!r}", file=sys.stderr)
        return 100
    write_out(text)
    return code
