# cython: language_level=3, boundscheck=False, wraparound=False
"""The fast lane of the hosts.allow reader: a client list of plain IPv4
patterns straight to packed prefix columns, without one Python object per
pattern.  Twin: ``acl/_hosts_scan_py.py`` (same answers; tests compare both
with the full parser).

Rules of this file:

* It answers for one client field (the text between the first and the second
  colon of a rule) and only for the shapes whose meaning is beyond doubt; for
  anything else it returns None and the caller runs the full parser
  (:mod:`acl.parse.hosts_patterns`), which knows every libwrap quirk.  A None
  is never wrong; a column is only ever what the full parser would give.
* Tokens are split on runs of space, tab, CR, LF and comma (libwrap's
  ``sep``).  "Canonical" octets are what a socket prints: ``0`` or 1-3
  digits without a leading zero, at most 255.  Accepted tokens:

  - ``a.b.c.d``: the address, /32 (a string compare with the client's
    printed address, which only that address passes);
  - ``a.``, ``a.b.``, ``a.b.c.``: a textual prefix, i.e. /8, /16, /24;
  - ``a.b.c.d/m.m.m.m`` with a contiguous mask: /length, and no prefix at
    all when the net has bits outside the mask (libwrap compares
    ``addr & mask == net``, which then never holds);
  - ``a.b.c.d/N``, N one to three digits: /N for 1 <= N <= 32, no prefix
    for any other N (libwrap's ``atoi`` length check fails: the pattern
    never matches).

  255.255.255.255 as a net or a mask, a non-contiguous mask, a leading zero,
  letters, ``@``, ``[``, ``/file``, ``EXCEPT``, an empty list: None.
"""

from cpython cimport array
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

import array as _array

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)

cdef array.array NETS = _array.array("I")
cdef array.array LENS = _array.array("B")
cdef uint32_t ALL_ONES = 0xFFFFFFFF    # 255.255.255.255, INADDR_NONE to libwrap


cdef bint SEP[256]     # space, tab, CR, LF, comma
for _c in (32, 9, 13, 10, 44):
    SEP[_c] = True


cdef inline bint is_sep(char c) noexcept nogil:
    return SEP[<unsigned char>c]


cdef inline Py_ssize_t octet(const char *s, Py_ssize_t j, Py_ssize_t end,
                             uint32_t *value) noexcept nogil:
    """One canonical octet at s[j:end]: the index after it, or -1."""
    cdef uint32_t v = 0
    cdef int digits = 0
    while j < end and 48 <= s[j] <= 57:
        if digits and v == 0:
            return -1                # leading zero
        v = v * 10 + <uint32_t>(s[j] - 48)
        digits += 1
        if v > 255:
            return -1
        j += 1
    if not digits:
        return -1
    value[0] = v
    return j


cdef inline Py_ssize_t dotted(const char *s, Py_ssize_t j, Py_ssize_t end, uint32_t *value,
                              int *count) noexcept nogil:
    """Canonical octets joined by dots, at most four, maybe one dot after
    the last: the index after them (``count`` octets in ``value``), or -1.
    A trailing dot shows as s[result - 1] == '.'."""
    cdef uint32_t v = 0, o
    cdef int n = 0
    while True:
        j = octet(s, j, end, &o)
        if j < 0:
            return -1
        v = (v << 8) | o
        n += 1
        if j < end and s[j] == 46:   # '.'
            j += 1
            if n == 4:
                return -1            # "a.b.c.d.": the full parser's case
            if j == end or not 48 <= s[j] <= 57:
                break
            continue
        break
    value[0] = v
    count[0] = n
    return j


cdef struct MaskMemo:
    # the text after the last '/' read and what it meant: a file repeats
    # the same few masks, so most tokens skip parsing theirs
    char text[16]
    Py_ssize_t size             # -1: nothing remembered
    int kind                    # 1: a mask, 0: never matches, -1: not ours
    uint32_t mask
    int bits


cdef inline bint same_text(const char *a, const char *b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        if a[k] != b[k]:
            return False
    return True


cdef int mask_of(const char *s, Py_ssize_t j, Py_ssize_t end, uint32_t *mask_out,
                 int *bits_out) noexcept nogil:
    """The text after '/': 1 and the mask, 0 (never matches) or -1."""
    cdef uint32_t mask = 0, inv
    cdef int m = 0, bits = 0, digits = 0
    while j + digits < end and digits < 4 and 48 <= s[j + digits] <= 57:
        bits = bits * 10 + (s[j + digits] - 48)
        digits += 1
    if digits and j + digits == end:
        # /N: libwrap's atoi length, 1..32, else a pattern that never matches
        if digits > 3:
            return -1
        if bits < 1 or bits > 32:
            return 0
        mask = ALL_ONES << (32 - bits)
    else:
        # /m.m.m.m: a canonical dotted quad with a contiguous mask
        j = dotted(s, j, end, &mask, &m)
        if j != end or m != 4 or s[j - 1] == 46 or mask == ALL_ONES:
            return -1
        inv = ~mask
        if inv & (inv + 1):
            return -1                # not contiguous: the full parser's case
        bits = 0
        while bits < 32 and (mask >> (31 - bits)) & 1:
            bits += 1
    mask_out[0] = mask
    bits_out[0] = bits
    return 1


cdef int token(const char *s, Py_ssize_t i, Py_ssize_t end, uint32_t *net,
               uint8_t *length, MaskMemo *memo) noexcept nogil:
    """One token s[i:end]: 1 = a prefix in net/length, 0 = no prefix (never
    matches), -1 = not a shape this file answers for."""
    cdef uint32_t v = 0, mask
    cdef int n = 0, bits, kind
    cdef Py_ssize_t j = dotted(s, i, end, &v, &n)
    if j < 0:
        return -1
    if s[j - 1] == 46:
        # "a." .. "a.b.c.": a textual prefix, nothing may follow
        if j != end:
            return -1
        net[0] = v << (8 * (4 - n))
        length[0] = <uint8_t>(8 * n)
        return 1
    if n != 4 or v == ALL_ONES:
        return -1
    if j == end:
        net[0] = v
        length[0] = 32
        return 1
    if s[j] != 47:                   # '/'
        return -1
    j += 1
    if memo.size == end - j and same_text(memo.text, s + j, end - j):
        kind, mask, bits = memo.kind, memo.mask, memo.bits
    else:
        kind = mask_of(s, j, end, &mask, &bits)
        if end - j <= 16:
            memcpy(memo.text, s + j, end - j)
            memo.size = end - j
            memo.kind, memo.mask, memo.bits = kind, mask, bits
    if kind <= 0:
        return kind
    if v & ~mask:
        return 0
    net[0] = v
    length[0] = <uint8_t>bits
    return 1


def v4_client_prefixes(str text not None):
    """``(nets array('I'), lengths array('B'))`` for a client field made only
    of the shapes in this file's rules, else None; TypeError for a non-str
    (None included), as the twin."""
    cdef Py_ssize_t size, i = 0, start, count = 0, cap
    cdef const char *s
    cdef array.array nets, lens
    cdef uint32_t net
    cdef uint8_t length
    cdef int got
    cdef int tokens = 0
    cdef MaskMemo memo
    memo.size = -1
    if not PyUnicode_IS_ASCII(text):
        return None
    s = PyUnicode_AsUTF8AndSize(text, &size)
    cap = size // 2 + 1              # a token and its separator: 2+ chars
    nets = array.clone(NETS, cap, zero=False)
    lens = array.clone(LENS, cap, zero=False)
    with nogil:
        while True:
            while i < size and is_sep(s[i]):
                i += 1
            if i >= size:
                break
            start = i
            while i < size and not is_sep(s[i]):
                i += 1
            tokens += 1
            got = token(s, start, i, &net, &length, &memo)
            if got < 0:
                tokens = -1
                break
            if got:
                nets.data.as_uints[count] = net
                lens.data.as_uchars[count] = length
                count += 1
    if tokens <= 0:
        return None
    array.resize(nets, count)
    array.resize(lens, count)
    return nets, lens
