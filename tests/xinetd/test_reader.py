"""xinetd's reader, unit level: error columns, the block reader's cuts, C
blanks, NUL.  (tests/xinetd/test_live_reader.py checks the same against the
real xinetd.)"""

from __future__ import annotations

import pytest

from acl.parse.xinetd import sio_lines
from tests.xinetd.helpers import load, svc


def _diags(text: str) -> list[str]:
    _, diags = load(text)
    return [str(d) for d in diags]


@pytest.mark.parametrize("line,col,msg", [                # svc() indents by 2 blanks
    ("cps x 1", 7, "Bad operator for attribute: cps"),
    ("cps + 1", 7, "Bad operator for attribute: cps"),
    ("only_from= 127.0.0.2", 12, "Attribute only_from needs a space before operator"),
    ("only_from\u00a0= 127.0.0.2", 13, "needs a space before operator"),
    ("cps", 6, "Nothing after attribute: cps"),
    ("\tcps   ", 10, "Nothing after attribute: cps"),
])
def test_malformed_attribute_lines_point_at_where_reading_stopped(line, col, msg):
    text = svc("s", line)
    lineno = text.splitlines().index("  " + line) + 1
    got = [d for d in _diags(text) if msg in d]
    assert got and got[0].startswith(f"test.conf:{lineno}:{col}: "), _diags(text)


def test_only_c_blanks_are_blanks():
    policy, _ = load(svc("a", "only_from\x1c= 127.0.0.2") + svc("b", "x", port=23901)
                     + svc("c", "only_from\v=\f127.0.0.2", port=23902))
    assert set(policy.services) == {"c"}
    # U+00A0 before "}" makes it an attribute line, not the end of the entry
    policy, _ = load(svc("d", "\u00a0}"))
    assert not policy.services


def test_a_line_ends_at_its_first_nul():
    policy, _ = load(svc("a", "only_from = 127.0.0.2\0 127.0.0.3")
                     + svc("b", "}\0 junk", port=23901).replace("\n}\n", "\n", 1))
    assert [e.text for e in policy.services["a"].only_from.entries] == ["127.0.0.2"]
    assert "b" in policy.services


def test_block_reader_cuts_like_srdline():
    u = 16
    # whole lines: found in the rest of the block or in the next one
    assert list(sio_lines(b"ab\ncd\n", u)) == [(0, b"ab"), (3, b"cd")]
    assert list(sio_lines(b"x" * 15 + b"\n", u)) == [(0, b"x" * 15)]
    assert list(sio_lines(b"x" * 12, u)) == [(0, b"x" * 12)]        # EOF ends it
    assert list(sio_lines(b"x" * 20, u)) == [(0, b"x" * 15), (16, b"x" * 4)]
    # a line starting at offset 10 may run to 31 bytes (the rest of its block
    # and all of the next), one byte more is cut: the block's last byte lost
    data = b"123456789\n" + b"y" * 21 + b"\n"
    assert list(sio_lines(data, u)) == [(0, b"123456789"), (10, b"y" * 21)]
    data = b"123456789\n" + b"y" * 22 + b"z\n"
    assert list(sio_lines(data, u)) == [(0, b"123456789"), (10, b"y" * 21), (32, b"z")]
    # a line starting on a block boundary is cut after unit - 1 bytes
    data = b"x" * 15 + b"\n" + b"y" * 16 + b"z\n"
    assert list(sio_lines(data, u)) == [(0, b"x" * 15), (16, b"y" * 15), (32, b"z")]


def test_long_line_warning_says_where_xinetd_cuts():
    filler = " 127.0.0.9" * 1700                         # ~17000 bytes
    text = svc("s", "only_from =" + filler)
    warns = [d for d in _diags(text) if "longer than xinetd's reader takes" in d]
    assert warns and warns[0].startswith("test.conf:12:")
    col = int(warns[0].split(":")[2])
    assert 8192 <= col <= 16384


@pytest.mark.parametrize("value,ok", [("022", True), (" 022 ", True), ("-0", True),
                                      ("0o22", False), ("0_22", False), ("0x12", False),
                                      ("\u0662", False), ("022\u00a0", False), ("1000", False),
                                      (format(2**32 + 0o22, "o"), True)])    # strtol, stored in an int
def test_umask_is_c_strtol_base8(value, ok):
    policy, _ = load(svc("s", f"umask = {value}" if value.strip() else "umask = 0"))
    assert ("s" in policy.services) is ok
