"""Lines the real tcprules rejects or loops on: acl must refuse the same file
at the same line, as a RuleSyntaxError, from ``acl compile`` (exit 100, old
cdb untouched) and from ``acl match`` (exit 100).

What the real IPv6 tcprules does is recorded per case and asserted:
``error`` is exit 100 with "unable to parse this line: LINE"; ``hang`` is a
process still spinning after the timeout (then killed by its handle).  For a
hang the real tool names no line, so the test shows that the lines before
ours compile with the real tool and that our line alone makes it hang.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from acl.errors import RuleSyntaxError
from acl.parse.tcprules import parse_tcprules
from tests.conftest import SLOW

from .gen import Pools, random_rules
from .real import need_tools, run_tcprules

pytestmark = need_tools

HANG_TIMEOUT = 0.5

#: (bad line, what Debian's ucspi-tcp-ipv6 tcprules does with it)
BAD_LINES = [
    (b"1.2.3.4:allow\r", "error"),                    # CR is not stripped
    (b"1.2.3.4:allow,X=", "error"),                   # no delimiter
    (b'1.2.3.4:allow,X="abc', "error"),               # unterminated
    (b"1.2.3.4:allow,X", "error"),                    # no '='
    (b"1.2.3.4:allowed", "error"),                    # junk after the keyword
    (b"1.2.3.4:deny;X=1", "error"),
    (b"1.2.3.4:allow ,X=/a/", "error"),               # blank before ','
    (b"1.2.3.a-5:deny", "error"),                     # range bound not a number
    (b"1.2.3.1-x:deny", "error"),
    (b"2001:db8::1-5:deny", "error"),                 # no IPv6 ranges
    (b"1-2-3:deny", "error"),
    (b"1.2.3.4", "hang"),                             # no colon at all
    (b"   ", "hang"),                                 # blanks only
    (b"1.2.3.4: allow", "hang"),                      # blank after ':'
    (b"1.2.3.4:ALLOW", "hang"),                       # keyword is lowercase
    (b"1.2.3.4:foo", "hang"),
    (b"=host.example.com", "hang"),
]


def _file_with(seed: int, bad: bytes) -> tuple[bytes, int]:
    r = random.Random(1000 + seed)
    good, _ = random_rules(r, Pools(r), lines=r.randrange(0, 12))
    lines = good.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    at = r.randrange(0, len(lines) + 1)
    lines.insert(at, bad)
    tail = r.choice([b"\n", b""]) if bad.strip() else b"\n"
    return b"\n".join(lines) + tail, at + 1


def _cases():
    reps = 4 if SLOW else 1
    return [(i * len(BAD_LINES) + j, bad, what)
            for i in range(reps) for j, (bad, what) in enumerate(BAD_LINES)]


@pytest.mark.parametrize(("seed", "bad", "what"), _cases())
def test_rejected_like_the_real_tool(seed, bad, what, tmp_path):
    text, line = _file_with(seed, bad)
    real = run_tcprules(text, timeout=HANG_TIMEOUT)
    assert real.status == what, (text, real)
    with pytest.raises(RuleSyntaxError) as err:
        parse_tcprules(text, "rules.txt")
    assert err.value.line == line
    assert str(err.value).startswith(f"rules.txt:{line}:")
    if what == "error":
        # tcprules names the line it stopped at (after stripping blanks).
        shown = real.stderr.split(b"unable to parse this line: ", 1)[1].rstrip(b"\n")
        assert shown == bad.rstrip(b" \t"), real.stderr
    else:
        before = b"".join(text.split(b"\n")[i] + b"\n" for i in range(line - 1))
        assert run_tcprules(before, timeout=HANG_TIMEOUT).status == "ok"
        assert run_tcprules(bad + b"\n", timeout=HANG_TIMEOUT).status == "hang"
    _check_cli(text, line, tmp_path)


def _check_cli(text: bytes, line: int, tmp_path) -> None:
    cdb, tmp = tmp_path / "r.cdb", tmp_path / "r.tmp"
    cdb.write_bytes(b"old")
    out = subprocess.run([sys.executable, "-m", "acl", "compile", str(cdb), str(tmp)],
                         input=text, capture_output=True, timeout=60)
    assert out.returncode == 100
    assert out.stderr.startswith(f"acl compile: fatal: stdin:{line}:".encode()), out.stderr
    assert cdb.read_bytes() == b"old"
    src = tmp_path / "r.txt"
    src.write_bytes(text)
    out = subprocess.run([sys.executable, "-m", "acl", "match", "--tcprules", str(src),
                          "1.2.3.4"], capture_output=True, timeout=60)
    assert out.returncode == 100
    assert f"{src}:{line}:".encode() in out.stderr, out.stderr
