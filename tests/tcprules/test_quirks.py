"""Corners of the real tcprules found while building acl, each run against
the real tool so the recorded behaviour stays true.

* The IPv6 build's colon search compares 4-5 bytes after each ``:`` without
  checking the line length.  On a *last line without a newline* those bytes
  can be leftovers of an earlier, longer line in tcprules' buffer: then the
  keyword "matches", the length check that follows fails, and tcprules exits
  100 instead of looping.  The same line with a newline loops.  acl rejects
  all of them at the same line.
* Range bounds are read like ``scan_ulong``: they wrap modulo 2**64.
"""

from __future__ import annotations

import pytest

from acl.cdb import make_cdb
from acl.errors import RuleSyntaxError
from acl.parse.tcprules import parse_tcprules, rules_to_records

from .real import need_tools, run_tcprules

pytestmark = need_tools

OVERREAD = [
    (b"1.2.3.4:deny\n9.9.9.9:de", "error"),      # leftover "ny" completes "deny"
    (b"1.2.3.4:allow\n9.9.9.9:", "error"),       # leftover "allow"
    (b"1.2.3.4:deny\n9.9.9.9:de\n", "hang"),     # with the newline: no leftover used
    (b"9.9.9.9:de", "hang"),                     # nothing left over
]


@pytest.mark.parametrize(("text", "what"), OVERREAD)
def test_missing_keyword_on_last_line(text, what):
    assert run_tcprules(text, timeout=0.5).status == what
    with pytest.raises(RuleSyntaxError) as err:
        parse_tcprules(text, "r")
    assert err.value.line == text.count(b"\n", 0, text.rindex(b"9.9.9.9")) + 1


WRAP = [
    (b"1.2.3.18446744073709551616-2:deny\n", [b"1.2.3.0", b"1.2.3.1", b"1.2.3.2"]),
    (b"1.2.3.18446744073709551617-2:deny\n", [b"1.2.3.1", b"1.2.3.2"]),
    (b"1.2.3.4-18446744073709551617:deny\n", []),     # top wraps to 1 < 4
    (b"1.2.3.4-99999:deny\n", [b"1.2.3.%d" % n for n in range(4, 256)]),
]


@pytest.mark.parametrize(("text", "keys"), WRAP)
def test_range_bounds_wrap_like_scan_ulong(text, keys):
    records = rules_to_records(parse_tcprules(text))
    assert [k for k, _d, _l in records] == keys
    real = run_tcprules(text)
    assert real.status == "ok"
    assert make_cdb((k, d) for k, d, _ in records) == real.cdb
