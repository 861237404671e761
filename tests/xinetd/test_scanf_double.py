"""max_load is read with glibc's ``sscanf("%lf")``: acl's reading must give the
same number (or none) for every text, hex floats included; glibc itself is
the oracle, through ctypes."""

from __future__ import annotations

import ctypes
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl.parse.xinetd_attrs import c_scanf_double

_libc = ctypes.CDLL(None)


def glibc(text: str) -> float | None:
    out = ctypes.c_double()
    n = _libc.sscanf(text.encode(), b"%lf", ctypes.byref(out))
    return out.value if n == 1 else None


def same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("text", [
    "0x10", "0x0.0001p0", "0X1.8P1", "-0x10", "+0x1", "0x.8", "0x1.", "0x.", "0x.p1",
    "0x1p", "0x1p+", "0x1P-2x", "0x1e", "0xfp", " 0x10", "0x", "0xg", "0xp1", "-0x",
    "0.0001", "1000", "1abc", "inf", "nan", "1e3", "1e-9", "-1", "0", "00.00001",
    ".5e-4", "+0.0001", "1e", "1e+", ".", ".e1",
    # out of a double's range: glibc gives HUGE_VAL (or 0), never an error
    "0x1p99999", "-0x1p99999", "0x1p-99999", "0x" + "f" * 300, "1e99999", "-1e99999",
])
def test_known_texts_read_as_glibc_reads_them(text):
    assert same(c_scanf_double(text), glibc(text)), (text, c_scanf_double(text), glibc(text))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdefxXpP.+-eE nN", max_size=10))
def test_generated_texts_read_as_glibc_reads_them(text):
    assert same(c_scanf_double(text), glibc(text)), text
