"""``ext/acl/textaddr.h``, both of its code paths, against ``ipaddress``.

The extension is built with one path of the header (SSSE3 on x86-64), so the
parser tests in test_parsers.py only ever run that one.  Here the header is
compiled twice with cffi -- as the extension compiles it, and with
``ACL_TEXTADDR_PORTABLE`` (the scalar arithmetic and mask loops other CPUs
run) -- and each build reads the same texts: valid addresses of every shape,
then one- and two-character mutations of them.  The header's rule is that an
accepted text is what ``ipaddress`` accepts, with the same value.  Its
dotted-quad reader accepts every dotted quad, and its IPv6 reader every text
of hex groups and colons, so acceptance must match ``ipaddress`` there too.
Eight-group IPv6 texts are read every way their group widths can combine,
since the SSSE3 reader looks each half's shape up in a table.
Valid texts are also read at the end of a page whose next page is
unreadable, placed so that a reader loading its fixed width in place where
it should copy crashes the test -- and so are texts of any bytes and every
length up to 80, at every distance from that page's end up to both
readers' widths.  Under ACL_SANITIZE (ext/sanitizer.py's flags) both builds
are also instrumented (tests/README.md, sanitizer runs).
"""

from __future__ import annotations

import ipaddress
import itertools
import platform
import random
from pathlib import Path

import pytest

from tests.conftest import SANITIZE_FLAGS
from tests.core.test_parsers import mutate, v6_spellings
from tests.guard_pages import GuardedPages

cffi = pytest.importorskip("cffi")

HEADER_DIR = Path(__file__).resolve().parents[2] / "ext" / "acl"
CDEF = """
void acl_textaddr_init(void);
int acl_dotted_quad(const char *s, size_t n, uint32_t *out);
int read_hex_groups(const char *s, size_t n, uint8_t *out);
int read_without_search(const char *s, size_t n, uint8_t *out);
"""
# cffi has no 128-bit integers: the test hands the address back as 16 bytes.
SOURCE = """
#include "textaddr.h"
static int read_hex_groups(const char *s, size_t n, uint8_t *out) {
    unsigned __int128 v;
    if (!acl_hex_groups(s, n, &v))
        return 0;
    for (int i = 15; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
    return 1;
}
/* The SSSE3 reader's ways to an eight-group text that do not search for its
 * groups: 1 if the full-form reader took it, 2 if the tables did, 0 if
 * neither (-1: a build without them). */
static int read_without_search(const char *s, size_t n, uint8_t *out) {
#if defined(ACL_TEXTADDR_SSSE3)
    unsigned char copy[48];
    const unsigned char *text = acl_text_in_page(s, n, copy, sizeof(copy));
    uint64_t colons, hexes, full = (1ull << n) - 1;     /* n is 15..39 here */
    __m128i nib[3];
    unsigned __int128 v;
    int way = 0;
    acl_hex_masks(text, &colons, &hexes);
    acl_hex_nibbles(text, nib);
    if (n == 39 && acl_hex_full(nib, colons & full, hexes & full, &v))
        way = 1;
    else if (acl_hex_eight(nib, n, colons & full, &v))
        way = 2;
    if (!way)
        return 0;
    for (int i = 15; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
    return way;
#else
    (void)s; (void)n; (void)out;
    return -1;
#endif
}
"""




def build(tmp: Path, name: str, flags: list[str]):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, SOURCE, include_dirs=[str(HEADER_DIR)],
                   extra_compile_args=["-O2", *flags, *SANITIZE_FLAGS],
                   extra_link_args=SANITIZE_FLAGS)
    ffi.compile(tmpdir=str(tmp))
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, next(tmp.glob(f"{name}*.so")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.lib.acl_textaddr_init()
    return module


FLAVOURS = {"portable": ["-DACL_TEXTADDR_PORTABLE"]}
if platform.machine() in ("x86_64", "AMD64"):
    FLAVOURS["ssse3"] = ["-mssse3"]


@pytest.fixture(scope="module", params=list(FLAVOURS))
def reader(request, tmp_path_factory):
    module = build(tmp_path_factory.mktemp(request.param), f"textaddr_{request.param}", FLAVOURS[request.param])
    return Reader(module.ffi, module.lib)


class Reader:
    """Calls into one build; the text lies where cffi puts it, then a NUL."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.out4 = ffi.new("uint32_t *")
        self.out6 = ffi.new("uint8_t[16]")
        # A page, then an unreadable one: a reader that loads past the
        # text's page crashes the test instead of reading what lies there.
        self.pages = GuardedPages(1)
        self.page_end = self.pages.start + self.pages.size

    def text(self, raw: bytes, before: int | None):
        """``raw`` and a NUL, placed so that the text starts ``before`` bytes
        before an unreadable page (None: where cffi puts it).  A reader that
        loads W bytes in place must copy a text that starts fewer than W
        bytes before the page's end: with ``before`` = W - 1, loading in
        place crashes the test by one byte.  (The buffer is kept with the
        reader.)"""
        if before is None:
            self.keep = self.ffi.new("char[]", raw)
            return self.keep
        assert before >= len(raw) + 1
        buf = self.ffi.cast("char *", self.page_end - before)
        self.ffi.memmove(buf, raw + b"\0", len(raw) + 1)
        return buf

    def quad(self, text: str, *, before: int | None = None):
        raw = text.encode("latin-1")
        ok = self.lib.acl_dotted_quad(self.text(raw, before), len(raw), self.out4)
        return self.out4[0] if ok else None

    def v6(self, text: str, *, before: int | None = None):
        raw = text.encode("latin-1")
        if not self.lib.read_hex_groups(self.text(raw, before), len(raw), self.out6):
            return None
        return int.from_bytes(bytes(self.ffi.buffer(self.out6)), "big")


def oracle(text: str, family: int = 4):
    try:
        return int((ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address)(text))
    except ValueError:
        return None


def quads(rng: random.Random, count: int):
    """Valid dotted quads whose octets take every width, evenly."""
    for _ in range(count):
        octets = []
        for _ in range(4):
            width = rng.choice([1, 2, 3])
            octets.append(rng.randrange(0, 10) if width == 1 else
                          rng.randrange(10, 100) if width == 2 else rng.randrange(100, 256))
        yield ".".join(map(str, octets))


def test_valid_quads_of_every_width(reader):
    rng = random.Random(1)
    texts = list(quads(rng, 20000)) + ["0.0.0.0", "255.255.255.255", "1.2.3.4", "100.200.250.255"]
    wrong = [t for t in texts if reader.quad(t) != oracle(t)]
    assert not wrong, wrong[:10]
    # At a page's end: the text's NUL last, and (the SSSE3 reader loads 16
    # bytes) the text 15 bytes before the end.
    wrong = [t for t in texts[:3000] if reader.quad(t, before=len(t) + 1) != oracle(t)]
    wrong += [t for t in texts[:3000] if len(t) < 15 and reader.quad(t, before=15) != oracle(t)]
    assert not wrong, wrong[:10]


def test_quad_near_misses(reader):
    """Mutations of valid quads, plus the classic traps: leading zeros,
    octets over 255, four digits, empty octets, a dot first or last."""
    rng = random.Random(2)
    texts = [mutate(t, rng, "0123456789..x \x00:/") for t in quads(rng, 40000)]
    texts += ["01.2.3.4", "1.2.3.04", "1.2.3.00", "256.1.1.1", "1.1.1.256", "999.1.1.1", "1000.1.1.1",
              "1.2.3", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4.", "1.2.3.4.5", "1.2.3.4 ", " 1.2.3.4",
              "0.0.0.0.0", "1.2.3.4\x00", "a.b.c.d", "1.2.3.-4", "1.2.3.+4", "", "1.2.3.4/8"]
    accepted = sum(oracle(t) is not None for t in texts)
    assert 5000 < accepted < len(texts) - 5000, accepted     # both outcomes are well represented
    wrong = [t for t in texts if reader.quad(t) != oracle(t)]
    assert not wrong, wrong[:10]


def v6_texts(rng: random.Random, count: int):
    """``count`` IPv6 texts of hex groups: values with zero runs of random
    places and lengths, each in test_parsers' spellings ("::" at any zero
    run or none, groups with and without leading zeros, either case)."""
    texts = []
    while len(texts) < count:
        value = rng.getrandbits(128)
        for _ in range(rng.choice([0, 1, 2, 3])):
            at, length = rng.randrange(8), rng.randrange(1, 9)
            for g in range(at, min(8, at + length)):
                value &= ~(0xFFFF << (16 * (7 - g)))
        texts += v6_spellings(value, rng)
    return texts[:count]


def test_v6_hex_groups_of_every_shape(reader):
    rng = random.Random(3)
    texts = v6_texts(rng, 15000) + ["::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                                          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "0:0:0:0:0:0:0:0"]
    wrong = [t for t in texts if reader.v6(t) != oracle(t, 6)]
    assert not wrong, wrong[:10]
    # At a page's end: the NUL last, and the text 47 bytes before the end
    # (the reader loads 48).
    wrong = [t for t in texts[:3000] if reader.v6(t, before=len(t) + 1) != oracle(t, 6)]
    wrong += [t for t in texts[:3000] if reader.v6(t, before=47) != oracle(t, 6)]
    assert not wrong, wrong[:10]


def check_v6_near_misses(reader, texts):
    """Both outcomes well represented, and the reader agreeing with
    ``ipaddress`` on every text of hex digits and colons (a text with '.',
    '%' or a space goes elsewhere in the core, so for those the reader must
    only not accept wrongly)."""
    accepted = sum(oracle(t, 6) is not None for t in texts)
    assert 3000 < accepted < len(texts) - 3000, accepted
    for t in texts:
        got, want = reader.v6(t), oracle(t, 6)
        if got is not None or set(t) <= set("0123456789abcdefABCDEF:"):
            assert got == want, t


def test_v6_near_misses(reader):
    """Mutations of those (a text with '.', '%' or a space goes elsewhere
    in the core, so for those the reader must only not accept wrongly)."""
    rng = random.Random(4)
    texts = [mutate(t, rng, "0aF::g. %\x00") for t in v6_texts(rng, 30000)]
    texts += [":", ":::", "1:::2", "1::2::3", ":1::", "::1:", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8",
              "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "12345::", "g::", "1:2:3:4:5:6:1.2.3.4", "::%eth0"]
    check_v6_near_misses(reader, texts)


def eight_groups(rng: random.Random):
    """A text of eight hex groups for every one of the 4**8 combinations of
    group widths (1-4 digits; leading zeros allowed, either case): every
    shape of both halves the SSSE3 reader looks up, in every pairing."""
    for widths in itertools.product(range(1, 5), repeat=8):
        groups = ["".join(rng.choice("0123456789abcdefABCDEF") for _ in range(w)) for w in widths]
        yield ":".join(groups)


def test_v6_eight_groups_of_every_width(reader):
    rng = random.Random(5)
    texts = list(eight_groups(rng))
    wrong = [t for t in texts if reader.v6(t) != oracle(t, 6)]
    assert not wrong, wrong[:10]
    full = [t for t in texts if len(t) == 39]
    wrong = [t for t in full[:2000] + texts[::50] if reader.v6(t, before=len(t) + 1) != oracle(t, 6)]
    wrong += [t for t in full[:2000] + texts[::50] if reader.v6(t, before=47) != oracle(t, 6)]
    assert not wrong, wrong[:10]


def test_v6_eight_groups_take_no_search(reader):
    """Every eight-group text is read by the full-form reader (39
    characters) or the tables, not by the search for groups behind them,
    which would give the same answers ~20 ns later: a table that missed
    shapes would pass every test above."""
    if reader.lib.read_without_search(b"1:2:3:4:5:6:7:8", 15, reader.out6) == -1:
        pytest.skip("this build has no tables (portable)")
    rng = random.Random(7)
    wrong = []
    for t in eight_groups(rng):
        raw = t.encode()
        way = reader.lib.read_without_search(raw, len(raw), reader.out6)
        got = int.from_bytes(bytes(reader.ffi.buffer(reader.out6)), "big")
        if way != (1 if len(t) == 39 else 2) or got != oracle(t, 6):
            wrong.append((t, way))
    assert not wrong, wrong[:10]


def test_v6_eight_group_near_misses(reader):
    """Texts one step from eight groups: a group of 0 or 5 digits, a colon
    moved, a non-hex character, one group more or less -- and the full
    form's 39 characters with one of them wrong."""
    rng = random.Random(6)
    texts = [mutate(t, rng, "0aF:g. ") for t in itertools.islice(eight_groups(rng), 0, None, 3)]
    full = "2001:0db8:85a3:08d3:1319:8a2e:0370:7344"
    for i in range(len(full)):
        for c in "0:g ":
            texts.append(full[:i] + c + full[i + 1:])
    texts += ["12345:1:2:3:4:5:6:7", "1:2:3:4:5:6:7:12345", "1:2:3:4::5:6:7", ":1:2:3:4:5:6:7",
              "1:2:3:4:5:6:7:", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "1:2:3:4:5:6:78901:2"]
    check_v6_near_misses(reader, texts)


def any_texts(rng: random.Random, length: int, count: int) -> list[bytes]:
    """``count`` texts of ``length`` bytes: any bytes, digits and
    separators, and near-valid addresses (a valid one of about that length,
    cut or padded, then mutated)."""
    out = []
    for i in range(count):
        k = i % 4
        if k == 0:
            raw = bytes(rng.randrange(256) for _ in range(length))
        elif k == 1:
            raw = bytes(rng.choice(b"0123456789.:abcdefABCDEF") for _ in range(length))
        else:
            text = next(quads(rng, 1)) if k == 2 else v6_texts(rng, 1)[0]
            text = mutate(text, rng, "0123456789.:aF\x00\xff ") if rng.random() < 0.7 else text
            raw = (text.encode("latin-1") * (length // max(len(text), 1) + 1))[:length]
        out.append(raw)
    return out


def test_any_text_at_every_distance_from_an_unreadable_page(reader):
    """Texts of every length 0..80 (the readers take 7..15 and 2..39
    characters; the rest must be refused without a read), each placed at
    every distance from the unreadable page that its NUL allows, up to 64:
    the answers are those read where cffi puts the text, and the oracle's
    where the readers' rules say so; nothing is read past the page."""
    rng = random.Random(8)
    for length in range(81):
        for raw in any_texts(rng, length, 12):
            text = raw.decode("latin-1")
            quad, v6 = reader.quad(text), reader.v6(text)
            if quad is not None:
                assert quad == oracle(text), text
            if v6 is not None:
                assert v6 == oracle(text, 6), text
            for before in range(length + 1, max(length + 1, 64) + 1):
                assert (reader.quad(text, before=before), reader.v6(text, before=before)) == (
                    quad, v6), (text, before)
