"""acl-wrap's readers of untrusted bytes, on generated input.

* ``decode_decision`` (proto.c) reads the sidecar's reply.  The wrap's C
  files are compiled into a cffi module (as the program compiles them, plus
  the sanitizers under ACL_SANITIZE) and read generated frames: encoded
  decisions of every part (env items, options, the names section), then
  cut, lengthened, with bytes and counts changed, and random bytes.  Each
  frame ends where an unreadable page begins, so a read one byte past it
  crashes the test even without ASan.  A frame the C reader accepts must be
  one ``acl.wire.binary`` reads, with the same items (the C reader may
  refuse more: a NUL in a text, '=' in an env name, an unknown verdict).
* ``percent_expand`` (expand.c) expands generated option texts into an
  output buffer that ends where an unreadable page begins, for every
  buffer size up to past the result; its result is compared with a model
  of the rules at the top of expand.c.
* The program as a whole reads generated replies from a stand-in sidecar
  (harness.FakeSidecar): it runs the server or refuses, never dies of a
  signal (and, under ACL_SANITIZE, writes no sanitizer report: conftest).
  Generated decisions carry only options that run nothing.

ACL_SLOW=1 multiplies the counts.  To run these under AddressSanitizer and
UBSan, see tests/README.md (sanitizer runs).
"""

from __future__ import annotations

import importlib.util
import os
import random
import struct

import pytest

from acl.model import Decision, Location, Reason, Verdict
from acl.wire import binary
from tests.conftest import SANITIZE_FLAGS, SLOW
from tests.guard_pages import PAGE, GuardedPages
from tests.wrap import harness

cffi = pytest.importorskip("cffi")

SCALE = 10 if SLOW else 1

CDEF = """
struct item { int op; char *name; char *value; };
struct decision {
    int verdict;
    int reason;
    char *location;
    uint64_t lease;
    size_t env_count, option_count;
    struct item *env, *options;
    char *client_name;
    char *server_name;
};
int decode_decision(const unsigned char *frame, size_t len, uint32_t request_id,
                    struct decision *d, char *err, size_t errlen);
void free_decision(struct decision *d);
int expand_for_test(const char *in, char *out, size_t cap, const char *client_name,
                    const char *daemon);
"""

# A connection whose client 192.0.2.7 port 4242 was named (as the sidecar's
# names section does: no lookup happens here) and whose server is unknown.
SOURCE = """
#include <arpa/inet.h>
#include <string.h>
#include "wrap.h"
int wrap_log_facility;
int expand_for_test(const char *in, char *out, size_t cap, const char *client_name,
                    const char *daemon)
{
    struct conn c;
    memset(&c, 0, sizeof c);
    c.client.known = 1;
    c.client.family = AF_INET;
    inet_pton(AF_INET, "192.0.2.7", c.client.addr);
    c.client.port = 4242;
    strcpy(c.client.text, "192.0.2.7");
    if (client_name)
        endpoint_set_name(&c.client, client_name);
    strcpy(c.server.text, "unknown");
    c.daemon = daemon;
    return percent_expand(&c, in, out, cap);
}
"""


@pytest.fixture(scope="module")
def wrap_c(tmp_path_factory):
    """The wrap's proto.c, expand.c and peer.c as a cffi module."""
    tmp = tmp_path_factory.mktemp("wrapc")
    src_dir = harness.ROOT / "ext" / "wrap"
    flags = ["-O1", "-g", *SANITIZE_FLAGS]
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("wrap_fuzz", SOURCE, include_dirs=[str(src_dir)],
                   sources=[str(src_dir / n) for n in ("proto.c", "expand.c", "peer.c")],
                   extra_compile_args=flags, extra_link_args=SANITIZE_FLAGS)
    ffi.compile(tmpdir=str(tmp))
    spec = importlib.util.spec_from_file_location("wrap_fuzz", next(tmp.glob("wrap_fuzz*.so")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- generated replies ----------------------------------------------------------
TEXT_BYTES = b"abcXYZ019 _-./:%\x01\xff\xe9"
HARMLESS_OPTIONS = ["setenv", "severity", "keepalive", "linger", "nice", "umask", "rfc931",
                    "allow", "deny", "user", "group"]


def some_text(rng: random.Random, longest: int = 24) -> str:
    """Mostly bytes every reader takes; now and then a NUL or a '=' (the C
    reader refuses a NUL in any text and '=' in an env name)."""
    alphabet = TEXT_BYTES + (b"\x00=" if rng.random() < 0.1 else b"")
    raw = bytes(rng.choice(alphabet) for _ in range(rng.randrange(longest)))
    return raw.decode("utf-8", "surrogateescape")


def some_decision(rng: random.Random) -> Decision:
    env = tuple((some_text(rng, 12), some_text(rng) if rng.random() < 0.8 else None)
                for _ in range(rng.choice([0, 0, 1, 2, 5])))
    options = tuple((rng.choice(HARMLESS_OPTIONS), some_text(rng))
                    for _ in range(rng.choice([0, 0, 1, 3])))
    location = rng.choice([None, Location("/etc/hosts.allow", rng.randrange(1, 999)),
                           Location(some_text(rng), 0)])
    names = [rng.choice([None, some_text(rng, 40) or "unknown"]) for _ in range(2)]
    return Decision(rng.choice(list(Verdict)), rng.choice(list(Reason)), location, env, options,
                    rng.getrandbits(64) if rng.random() < 0.5 else 0, *names)


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One to three changes: a byte, a u16 count or length, the frame's
    length field, a cut, an insertion -- the length field fixed up or not."""
    b = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(6)
        if k == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif k == 1 and len(b) > 14:
            at = rng.randrange(12, len(b) - 1)
            b[at:at + 2] = struct.pack("<H", rng.choice([0, 1, 2, 255, 4096, 4097, 65535,
                                                         (struct.unpack_from("<H", b, at)[0] + 1) & 0xFFFF]))
        elif k == 2:
            b[:4] = struct.pack("<I", rng.choice([0, 7, 8, len(b) - 5, len(b) - 3, len(b), 65532,
                                                  65533, (1 << 20) - 4, 0xFFFFFFFF]) & 0xFFFFFFFF)
        elif k == 3 and b:
            del b[rng.randrange(len(b)):]
        elif k == 4:
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        elif len(b) > 5:
            b[5] = rng.choice([binary.T_DECISION, binary.T_ERROR, binary.T_PONG, 0])
    if rng.random() < 0.5 and len(b) >= 4:
        b[:4] = struct.pack("<I", len(b) - 4)
    return bytes(b)


def replies(rng: random.Random, count: int, request_id: int = 1):
    """Generated reply frames to a DECIDE of ``request_id``."""
    for i in range(count):
        k = i % 8
        if k == 7:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            continue
        if k == 6:
            text = some_text(rng, 300).encode("utf-8", "surrogateescape")
            frame = binary.frame(binary.T_ERROR, rng.choice([request_id, 0, 9]),
                                 struct.pack("<HH", rng.randrange(9), len(text)) + text)
        else:
            frame = binary.encode_decision(request_id, some_decision(rng), names=rng.random() < 0.7)
        yield frame if k == 0 else mutate(frame, rng)


# -- decode_decision ------------------------------------------------------------
def c_decode(wrap_c, guard: GuardedPages, frame: bytes, request_id: int = 1):
    ffi, lib = wrap_c.ffi, wrap_c.lib
    d = ffi.new("struct decision *")
    err = ffi.new("char[512]")
    at = ffi.cast("const unsigned char *", guard.address_at_end(frame))
    if lib.decode_decision(at, len(frame), request_id, d, err, 512) != 0:
        assert d.env == ffi.NULL and d.location == ffi.NULL      # nothing kept on failure
        return None, ffi.string(err)

    def text(p):
        return None if p == ffi.NULL else ffi.string(p)

    got = (d.verdict, d.reason, text(d.location), d.lease,
           # an unset's value is read and never used (Python drops it)
           [(d.env[i].op, text(d.env[i].name), text(d.env[i].value) if d.env[i].op == 0 else None)
            for i in range(d.env_count)],
           [(text(d.options[i].name), text(d.options[i].value)) for i in range(d.option_count)],
           text(d.client_name), text(d.server_name))
    lib.free_decision(d)
    return got, None


def raw(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def py_view(frame: bytes):
    """What acl.wire.binary reads in ``frame``, in c_decode's form (None:
    it refuses the frame).  The reason byte is any number to the C reader
    (it only names it in a log line) and an enum to Python: read as 0,
    given back as it is."""
    reason = frame[13] if len(frame) > 13 else 0
    if len(frame) > 13:
        frame = frame[:13] + b"\x00" + frame[14:]
    try:
        replies_ = binary.ReplyDecoder().feed(frame)
    except Exception:       # noqa: BLE001 -- ProtocolError, by its rules
        return None
    if len(replies_) != 1 or replies_[0].decision is None:
        return None
    d = replies_[0].decision
    # the location's text as it travels (Decision keeps it parsed)
    (loc_len,) = struct.unpack_from("<H", frame, 14)
    loc = frame[28:28 + loc_len]
    return (int(d.verdict), reason, loc, d.lease,
            [(0 if v is not None else 1, raw(n), raw(v)) for n, v in d.env],
            [(raw(n), raw(v)) for n, v in d.options], raw(d.client_name), raw(d.server_name))


def test_decode_decision_reads_generated_replies_within_their_bytes(wrap_c):
    rng = random.Random(11)
    guard = GuardedPages(pages=(1 << 20) // PAGE + 1)
    accepted = refused = 0
    try:
        for frame in replies(rng, 20000 * SCALE):
            got, _err = c_decode(wrap_c, guard, frame)
            if got is None:
                refused += 1
                continue
            accepted += 1
            assert py_view(frame) == got, frame
        # and frames of every length near the limits, each ending at the page
        for n in (0, 1, 3, 4, 11, 12, 13, 27, 28, 29, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20):
            frame = bytearray(rng.randbytes(n))
            if n >= 12:
                frame[:12] = struct.pack("<IBBHI", n - 4, 1, binary.T_DECISION, 0, 1)
            assert c_decode(wrap_c, guard, bytes(frame))[0] is None
    finally:
        guard.close()
    assert accepted > 1500 * SCALE and refused > 5000 * SCALE, (accepted, refused)


def test_decode_decision_takes_what_the_python_codec_encodes(wrap_c):
    """Decisions without the bytes the C reader refuses (a NUL, '=' in an
    env name) round-trip: encoded by acl.wire.binary, read back equal."""
    rng = random.Random(12)
    guard = GuardedPages(pages=4)
    try:
        for _ in range(3000 * SCALE):
            d = some_decision(rng)
            d = Decision(d.verdict, d.reason, d.location,
                         tuple((n.replace("\x00", "").replace("=", "") or "N", v and v.replace("\x00", ""))
                               for n, v in d.env),
                         tuple((n, v.replace("\x00", "")) for n, v in d.options), d.lease,
                         *(n and n.replace("\x00", "x") for n in (d.client_name, d.server_name)))
            if isinstance(d.location, Location) and "\x00" in d.location.path:
                d = Decision(d.verdict, d.reason, None, d.env, d.options, d.lease,
                             d.client_name, d.server_name)
            frame = binary.encode_decision(1, d, names=True)
            got, err = c_decode(wrap_c, guard, frame)
            assert got is not None, (d, err)
            assert got == py_view(frame)
    finally:
        guard.close()


# -- percent_expand -------------------------------------------------------------
OK_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@%-_=+:,./")


def expand_model(text: bytes, cap: int, client_name: bytes | None, daemon: bytes, pid: int):
    """expand.c's rules for the connection expand_for_test builds."""
    # the empty name (an address alone on a hosts line) shows the address, as libwrap's
    known = client_name not in (None, b"", b"unknown", b"paranoid")
    values = {
        "a": b"192.0.2.7", "A": b"unknown", "h": client_name if known else b"192.0.2.7",
        "H": b"unknown", "n": client_name if client_name is not None else b"unknown",
        "N": b"unknown", "c": client_name if known else b"192.0.2.7", "s": daemon, "d": daemon,
        "u": b"unknown", "p": str(pid).encode(), "r": b"4242", "R": b"unknown", "%": b"%",
    }
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i:i + 1] == b"%" and i + 1 < len(text):
            value = values.get(chr(text[i + 1]), b"")
            value = bytes(c if c in OK_CHARS else ord("_") for c in value)
            i += 2
        else:
            value = text[i:i + 1]
            i += 1
        if len(out) + len(value) > cap - 2:
            return None
        out += value
    return bytes(out)


def test_percent_expand_stays_in_its_buffer_and_follows_its_rules(wrap_c):
    ffi, lib = wrap_c.ffi, wrap_c.lib
    rng = random.Random(13)
    guard = GuardedPages(pages=3)
    pid = os.getpid()
    alphabet = b"%%%%aAhHnNcsdupRr%xz \t;$`'\"|&<>()*?[~#\n\xff-./"
    try:
        for _ in range(4000 * SCALE):
            text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(40)))
            name = rng.choice([None, b"", b"unknown", b"paranoid", b"host.example", b"x;rm${IFS}-rf",
                               bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200)))])
            daemon = rng.choice([b"in.echod", b"sub/$(x)", b"a" * 255])
            want_full = expand_model(text, 1 << 20, name, daemon, pid)
            for cap in sorted({0, 1, 2, 3, rng.randrange(2, 64), len(want_full) + 1,
                               len(want_full) + 2, len(want_full) + 3}):
                out = guard.room(max(cap, 1))
                rc = lib.expand_for_test(text, ffi.cast("char *", out), cap,
                                         ffi.NULL if name is None else name, daemon)
                want = expand_model(text, cap, name, daemon, pid) if cap >= 2 else None
                if want is None:
                    assert rc == -1, (text, cap)
                else:
                    assert rc == 0 and ffi.string(ffi.cast("char *", out)) == want, (text, cap, name)
        # the largest buffer acl-wrap uses, filled to its limit
        text = b"%h" * 8000
        out = guard.room(8192)
        assert lib.expand_for_test(text, ffi.cast("char *", out), 8192, b"n", b"d") == 0
        assert ffi.string(ffi.cast("char *", out)) == b"n" * 8000
    finally:
        guard.close()


# -- the program, against a stand-in sidecar ------------------------------------------
def test_acl_wrap_survives_generated_replies(wrap_bin, short_tmp, port):
    """Every reply is one generated frame (sometimes with bytes after it),
    then the connection closes; the program serves (exit 0 after READY),
    refuses (1), or fails closed (111).  Every third run fails open to a
    server that does not exist: it then ends (111, "cannot execute") after
    reading a reply it could not use -- under ACL_SANITIZE the leak check
    sees what that reading left behind."""
    rng = random.Random(14)
    frames = list(replies(rng, 120 * SCALE))
    sent: list[bytes] = []

    def respond(ev):
        if not isinstance(ev, binary.Decide):
            return None
        frame = frames[len(sent)]
        sent.append(frame)
        return (frame if rng.random() < 0.5 else frame + b"\x00" * rng.randrange(1, 3),)

    server = harness.write_exe(short_tmp / "server", "#!/bin/sh\necho READY\n")
    side = harness.FakeSidecar(short_tmp / "side.sock", respond)
    seen = set()
    try:
        for i in range(len(frames)):
            mode = ["-o", str(short_tmp / "no-such-server")] if i % 3 == 2 else ["-c", str(server)]
            argv = [str(wrap_bin), "-s", side.path, "-n", "fuzz", "-t", "2000", *mode]
            h = harness.Handoff(argv, "127.0.0.5", port, env={"PATH": "/usr/bin:/bin"})
            data = h.read_all()
            rc = h.finish()
            seen.add(rc)
            assert rc in ((1, 111) if mode[0] == "-o" else (0, 1, 111)), (i, rc, sent[-1:])
            assert (rc == 0) == (data == b"READY\n"), (i, rc, data)
    finally:
        side.close()
    assert {0, 1, 111} <= seen, seen
