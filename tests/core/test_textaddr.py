"""``ext/acl/textaddr.h``, both of its code paths, against ``ipaddress``.

The extension is built with one path of the header (SSSE3 on x86-64), so the
parser tests in test_parsers.py only ever run that one.  Here the header is
compiled twice with cffi -- as the extension compiles it, and with
``ACL_TEXTADDR_PORTABLE`` (the SWAR arithmetic and the mask loop other CPUs
run) -- and each build reads the same texts: every valid dotted quad shape,
then one- and two-character mutations of them.  The header's rule is that an
accepted text is exactly what ``ipaddress`` accepts, with the same value;
for dotted quads it accepts all of them, so acceptance must match too.
"""

from __future__ import annotations

import ipaddress
import platform
import random
from pathlib import Path

import pytest

cffi = pytest.importorskip("cffi")

HEADER_DIR = Path(__file__).resolve().parents[2] / "ext" / "acl"
CDEF = "int acl_dotted_quad(const char *s, size_t n, uint32_t *out);"


def build(tmp: Path, name: str, flags: list[str]):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, '#include "textaddr.h"', include_dirs=[str(HEADER_DIR)],
                   extra_compile_args=["-O2", *flags])
    ffi.compile(tmpdir=str(tmp))
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, next(tmp.glob(f"{name}*.so")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLAVOURS = {"portable": ["-DACL_TEXTADDR_PORTABLE"]}
if platform.machine() in ("x86_64", "AMD64"):
    FLAVOURS["ssse3"] = ["-mssse3"]


@pytest.fixture(scope="module", params=list(FLAVOURS))
def reader(request, tmp_path_factory):
    module = build(tmp_path_factory.mktemp(request.param), f"textaddr_{request.param}", FLAVOURS[request.param])
    ffi, lib = module.ffi, module.lib
    out = ffi.new("uint32_t *")

    def read(text: str):
        raw = text.encode("latin-1")
        buf = ffi.new("char[]", raw)          # the text, then a NUL, as in a str
        return out[0] if lib.acl_dotted_quad(buf, len(raw), out) else None
    return read


def oracle(text: str):
    try:
        return int(ipaddress.IPv4Address(text))
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


def mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.choice([1, 1, 2])):
        pos = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4:
            chars.insert(pos, rng.choice("0123456789..x \x00:/"))
        elif op < 0.7 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice("0123456789..x \x00:/")
    return "".join(chars)


def test_valid_quads_of_every_width(reader):
    rng = random.Random(1)
    texts = list(quads(rng, 20000)) + ["0.0.0.0", "255.255.255.255", "1.2.3.4", "100.200.250.255"]
    wrong = [t for t in texts if reader(t) != oracle(t)]
    assert not wrong, wrong[:10]


def test_near_misses(reader):
    """Mutations of valid quads, plus the classic traps: leading zeros,
    octets over 255, four digits, empty octets, a dot first or last."""
    rng = random.Random(2)
    texts = [mutate(t, rng) for t in quads(rng, 40000)]
    texts += ["01.2.3.4", "1.2.3.04", "1.2.3.00", "256.1.1.1", "1.1.1.256", "999.1.1.1", "1000.1.1.1",
              "1.2.3", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4.", "1.2.3.4.5", "1.2.3.4 ", " 1.2.3.4",
              "0.0.0.0.0", "1.2.3.4\x00", "a.b.c.d", "1.2.3.-4", "1.2.3.+4", "", "1.2.3.4/8"]
    accepted = sum(oracle(t) is not None for t in texts)
    assert 5000 < accepted < len(texts) - 5000, accepted     # both outcomes are well represented
    wrong = [t for t in texts if reader(t) != oracle(t)]
    assert not wrong, wrong[:10]
