"""Bad input: both cores raise the same exception class with the same message.

Each case runs on the compiled core and on the twin and the outcomes --
result, or exception type and text -- must be equal; the listed cases must
also be errors (ValueError or TypeError), never a crash or a silent answer.
"""

from __future__ import annotations

import copy
import ctypes
import ipaddress
import pickle
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SLOW, load_impl

EXAMPLES = 2000 if SLOW else 300


@pytest.fixture(scope="module")
def cores():
    return load_impl("compiled", "acl._core", "acl._core_py"), load_impl("pure", "acl._core", "acl._core_py")


def outcome(fn):
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 -- the outcome *is* the exception
        return ("raised", type(exc), str(exc))
    if isinstance(result, array):
        result = list(result)
    return ("ok", result)


def same(cores, call):
    """``call(core)`` on both cores; return the shared outcome."""
    compiled, pure = (outcome(lambda c=c: call(c)) for c in cores)
    assert compiled == pure
    return compiled


def table(core, family):
    return core.PrefixTable(family, [(0, 0, 5), ("10.0.0.0" if family == 4 else "2001:db8::", 8 if family == 4 else 32, 1)])


BAD_TABLES = [
    (4, [("10.0.0.1", 8, 1)]),          # host bits set
    (4, [("10.0.0.0", 33, 1)]),         # length too long
    (4, [("10.0.0.0", -1, 1)]),         # negative length
    (4, [("10.0.0.0", "8", 1)]),        # length not an int
    (4, [("10.0.0.0", 8.0, 1)]),
    (4, [("10.0.0.0", 8, -1)]),         # value out of range
    (4, [("10.0.0.0", 8, 2**31 - 1)]),
    (4, [("10.0.0.0", 8, None)]),
    (4, [("2001:db8::", 32, 1)]),       # wrong family
    (4, [(ipaddress.IPv6Address("::1"), 128, 1)]),
    (4, [(2**32, 32, 1)]),              # address out of range
    (4, [(b"\x0a\x00\x00", 24, 1)]),    # packed of the wrong size
    (4, [("10.0.0.0", 8)]),             # not a triple
    (4, [None]),
    (6, [("::1", 127, 1)]),
    (6, [("::", 129, 1)]),
    (6, [("1.2.3.4", 32, 1)]),
    (6, [(2**128, 0, 1)]),
    (6, [(-1, 0, 1)]),
    (6, [(True, 0, 1)]),
    (5, []),                            # bad family
    ("4", []),
    (4.0, []),
    (4, 17),                            # entries not iterable
]


@pytest.mark.parametrize("family,entries", BAD_TABLES)
def test_bad_tables_raise_the_same_error(cores, family, entries):
    result = same(cores, lambda c: c.PrefixTable(family, entries))
    assert result[0] == "raised" and issubclass(result[1], (ValueError, TypeError)), result


BAD_ARRAYS = [
    (4, b"\x0a\x00\x00\x01", b"\x08", array("i", [1])),          # host bits
    (4, b"\x0a\x00\x00\x00", b"\x21", array("i", [1])),          # /33
    (4, b"\x0a\x00\x00\x00", b"\x08", array("i", [-5])),         # bad value
    (4, b"\x0a\x00\x00\x00" * 2, b"\x08", array("i", [1])),      # columns disagree
    (4, b"\x0a\x00\x00\x00", b"\x08\x08", array("i", [1])),
    (4, b"\x0a\x00\x00\x00", b"\x08", array("i", [1, 2])),
    (4, b"\x0a\x00\x00\x00", b"\x08", b"\x01\x00\x00"),          # values not int32-sized
    (4, b"\x0a\x00\x00\x00\x0b\x00\x00\x01", b"\x08\x08", array("i", [1, 2])),  # 2nd bad
    (6, bytes(15), b"\x00", array("i", [1])),
    (6, bytes(16), b"\x81", array("i", [1])),
    (6, b"\x20\x01" + bytes(13) + b"\x01", b"\x40", array("i", [1])),
    (7, b"", b"", array("i")),
    (4, None, b"", array("i")),
]


@pytest.mark.parametrize("family,nets,lens,vals", BAD_ARRAYS)
def test_bad_arrays_raise_the_same_error(cores, family, nets, lens, vals):
    result = same(cores, lambda c: c.PrefixTable.from_arrays(family, nets, lens, vals))
    assert result[0] == "raised" and issubclass(result[1], (ValueError, TypeError)), result


BAD_ADDRESSES = {
    4: ["::ffff:1.2.3.4", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", " 1.2.3.4", "1.2.3.4\x00",
        "1.2.3.4/32", "", "١.2.3.4", "\ud800", 2**32, -1, True, None, 1.5, b"\x01\x02\x03",
        b"\x00" * 16, ipaddress.IPv6Address("::1"), ipaddress.IPv4Network("1.0.0.0/8"), [1, 2, 3, 4]],
    6: ["1.2.3.4", "::g", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "::ffff:01.2.3.4", "fe80::1%",
        ":1::", "", 2**128, -1, False, None, b"\x00" * 4, ipaddress.IPv4Address("1.2.3.4"), 3.0],
}


@pytest.mark.parametrize("family", [4, 6])
def test_bad_addresses_raise_the_same_error(cores, family):
    for addr in BAD_ADDRESSES[family]:
        for method in ("first_match", "most_specific", "covering"):
            result = same(cores, lambda c, m=method, a=addr: getattr(table(c, family), m)(a))
            assert result[0] == "raised" and issubclass(result[1], (ValueError, TypeError)), (addr, result)
        result = same(cores, lambda c, a=addr: c.parse_address(a, family))
        assert result[0] == "raised", (addr, result)


@pytest.mark.parametrize("family", [4, 6])
def test_bad_query_prefixes_raise_the_same_error(cores, family):
    bits = 32 if family == 4 else 128
    bad = [("10.0.0.1" if family == 4 else "2001:db8::1", 8), (0, bits + 1), (0, -1), (0, "8"),
           (0, None), ("junk", 8)]
    for network, length in bad:
        for method in ("exact", "covered_by"):
            result = same(cores, lambda c, m=method, a=network, ln=length: getattr(table(c, family), m)(a, ln))
            assert result[0] == "raised" and issubclass(result[1], (ValueError, TypeError)), (network, length, result)


@pytest.mark.parametrize("family", [4, 6])
def test_bad_batch_buffers_raise_the_same_error(cores, family):
    width = 4 if family == 4 else 16
    good = bytes(width * 3)
    cases = [
        (good[:-1], None),                       # not a multiple of the width
        (bytes(width + 1), None),
        (good, array("i", [0, 0])),              # output too small
        (good, bytearray(11)),                   # output not a multiple of 4 bytes
        (good, bytearray(12)),                   # output of bytes, not int32s
        (good, bytes(12)),                       # read-only output
        (good, memoryview(bytearray(12)).toreadonly()),
        # read-only int32s: past the item check, the read-only one must say so
        (good, memoryview(array("i", [0] * 3)).toreadonly()),
        (good, "not a buffer"),
        (17, None),                              # input not a buffer
        ("1.2.3.4", None),
    ]
    for packed, out in cases:
        for method in ("first_match_batch", "most_specific_batch"):
            result = same(cores, lambda c, m=method, p=packed, o=out: getattr(table(c, family), m)(p, o))
            assert result[0] == "raised" and issubclass(result[1], (ValueError, TypeError)), (packed, out, result)


# Output buffers whose items are not int32: each used to be accepted, cast
# to bytes, and filled with int32s that read as other numbers there.
OTHER_ORDER_INT32 = ctypes.c_int32.__ctype_be__ if sys.byteorder == "little" else ctypes.c_int32.__ctype_le__
NOT_INT32 = {
    "l": lambda: array("l", [0] * 3),       # 8-byte longs (LP64)
    "q": lambda: array("q", [0] * 3),
    "h": lambda: array("h", [0] * 6),       # as many bytes as 3 int32s
    "H": lambda: array("H", [0] * 6),
    "f": lambda: array("f", [0.0] * 3),     # 4 bytes, but floats
    "I": lambda: array("I", [0] * 3),       # 4 bytes, but unsigned
    "b": lambda: array("b", [0] * 12),
    "B": lambda: memoryview(bytearray(12)),
    "other byte order": lambda: (OTHER_ORDER_INT32 * 3)(),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("make", NOT_INT32.values(), ids=NOT_INT32.keys())
def test_batch_output_items_must_be_int32(cores, family, make):
    width = 4 if family == 4 else 16
    out = make()
    fmt = memoryview(out).format
    for method in ("first_match_batch", "most_specific_batch"):
        result = same(cores, lambda c, m=method: getattr(table(c, family), m)(bytes(3 * width), out))
        assert result[:2] == ("raised", TypeError) and repr(fmt) in result[2], result


# Output buffers of int32 items, in the spellings other libraries give them.
INT32 = [
    lambda: array("i", [7] * 3),
    lambda: memoryview(array("i", [7] * 3)),
    lambda: memoryview(bytearray(12)).cast("i"),
    lambda: (ctypes.c_int32 * 3)(),                        # format "<i" on little-endian hosts
    lambda: memoryview(bytearray(12)).cast("B").cast("l") if array("l").itemsize == 4 else array("i", [0] * 3),
]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("make", INT32)
def test_batch_output_of_int32_items_is_filled(cores, family, make):
    width = 4 if family == 4 else 16
    for core in cores:
        out = make()
        assert core.PrefixTable(family, [(0, 1, 3)]).first_match_batch(bytes(width) + b"\xff" * width, out) is out
        assert list(memoryview(out).cast("B").cast("i"))[:2] == [3, -1]


# -- the table object itself ---------------------------------------------------


@pytest.mark.parametrize("how", [pickle.dumps, copy.copy, copy.deepcopy], ids=["pickle", "copy", "deepcopy"])
def test_tables_are_not_pickled_or_copied(cores, how):
    result = same(cores, lambda c: how(table(c, 4)))
    assert result[:2] == ("raised", TypeError), result


@pytest.mark.parametrize("name", ["family", "first_match", "nbytes", "other"])
def test_table_attributes_cannot_be_set(cores, name):
    """``family`` is read-only in both cores, as are the methods, and a table
    takes no new attributes (the messages name each core's own class)."""
    results = []
    for core in cores:
        t = table(core, 4)
        results.append(outcome(lambda t=t: setattr(t, name, 6))[:2])
        assert t.family == 4 and t.first_match("10.1.2.3") == 1
    assert results == [("raised", AttributeError)] * 2, results


def test_ipv4_mapped_addresses_are_ipv6(cores):
    """The documented rule: ``::ffff:a.b.c.d`` is never looked up as IPv4."""
    for core in cores:
        v4 = core.PrefixTable(4, [("0.0.0.0", 0, 1), ("1.2.3.0", 24, 0)])
        with pytest.raises(ValueError):
            v4.first_match("::ffff:1.2.3.4")
        v6 = core.PrefixTable(6, [("::ffff:0:0", 96, 7), ("::ffff:1.2.3.0", 120, 3), ("2001:db8::", 32, 2)])
        assert v6.most_specific("::ffff:1.2.3.4") == 3
        assert v6.first_match("::ffff:1.2.4.4") == 7
        assert v6.first_match("1.2.3.4".join(["::", ""])) == -1   # ::1.2.3.4 is not mapped
        assert v4.most_specific(core.unmap_v4("::ffff:1.2.3.4")) == 0
        assert core.unmap_v4("2001:db8::1") is None


# Addresses in and around the IPv6 ranges that carry an IPv4 address: only
# the mapped one (::ffff:0:0/96) unmaps.  IPv4-compatible (::a.b.c.d, ::/96),
# NAT64 (64:ff9b::/96), 6to4 (2002::/16), and ::fffe:0:0/96 and
# ::1:ffff:0:0/96 beside the mapped range, do not.  The answer is worked out
# here from the value's bits, not by ipaddress's ipv4_mapped.
EMBEDDING = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda low: (0xFFFF << 32) | low),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1).map(lambda low: (0x64FF9B << 96) | low),
    st.integers(0, 2**112 - 1).map(lambda low: (0x2002 << 112) | low),
    st.integers(0, 2**32 - 1).map(lambda low: (0xFFFE << 32) | low),
    st.integers(0, 2**32 - 1).map(lambda low: (0x1FFFF << 32) | low),
    st.integers(0, 2**128 - 1),
)


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(value=EMBEDDING)
def test_only_mapped_addresses_unmap(cores, value):
    ip = ipaddress.IPv6Address(value)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    want = str(low) if value >> 32 == 0xFFFF else None
    for core in cores:
        for form in (str(ip), ip.exploded, ip.exploded.upper(), ip, ip.packed):
            assert core.unmap_v4(form) == want, (core.__name__, form)
        # An IPv4 address, or no address at all, is not a mapped one.
        for other in (str(low), low, "", None):
            assert core.unmap_v4(other) is None, (core.__name__, other)


ADDRESS_TEXT = st.text(alphabet="0123456789abcdefABCDEF:.%/x -", max_size=45)
# Near-misses of a dotted quad: octet counts, lengths, leading zeros, 256+.
DOTTED = st.lists(st.text("0123456789", max_size=4), min_size=1, max_size=6).map(".".join)


@settings(max_examples=EXAMPLES, deadline=None)
@given(text=ADDRESS_TEXT | DOTTED | st.ip_addresses().map(str) | st.ip_addresses().map(lambda ip: ip.exploded))
def test_parse_address_agrees_on_any_text(cores, text):
    """Whatever the text, both cores accept it with the same value or reject it alike."""
    for family in (4, 6):
        same(cores, lambda c, f=family: c.parse_address(text, f))
