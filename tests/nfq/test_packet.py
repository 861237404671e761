"""The packet codec (acl/wire/packet.py), against dpkt as the oracle, and fuzzed.

Invariant: for any bytes, ``decode`` returns a FlowKey or raises PacketError,
never anything else; for well-formed packets it says what dpkt says.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from acl.wire import packet
from acl.wire.packet import TCP, UDP, PacketError, build, decode, decode_raw
from tests.conftest import SLOW

#: ACL_SLOW=1 runs five times the examples.
SCALE = 5 if SLOW else 1

try:
    import dpkt
except ImportError:     # only the oracle tests need it; the fuzzers run without
    dpkt = None
needs_dpkt = pytest.mark.skipif(dpkt is None, reason="dpkt is the codec's oracle (pip install dpkt)")

v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)
protos = st.sampled_from([TCP, UDP])
payloads = st.binary(max_size=40)

# IPv6 extension headers: (next-header value, size) pairs in RFC 8200 4.1's
# order (Hop-by-Hop first, at most once each, Destination Options twice).
_EXT_ORDER = [
    (packet.HOP_BY_HOP, st.integers(0, 2)),
    (packet.DEST_OPTS, st.integers(0, 2)),
    (packet.ROUTING, st.integers(0, 2)),
    (packet.FRAGMENT, st.just(0)),
    (packet.AH, st.integers(1, 3)),
    (packet.DEST_OPTS, st.integers(0, 2)),
]
ext_headers = st.tuples(*[st.one_of(st.none(), size.map(lambda n, k=kind: (k, n)))
                          for kind, size in _EXT_ORDER]).map(
    lambda picked: [e for e in picked if e is not None])


def with_extensions(pkt: bytes, exts) -> bytes:
    """Insert IPv6 extension headers between the fixed header and the transport."""
    proto = pkt[6]
    body = pkt[40:]
    chain = b""
    for kind, size in reversed(exts):
        if kind == packet.FRAGMENT:
            head = bytes([proto, 0, 0, 0]) + b"\x00\x00\x00\x01"   # offset 0, M=0
        elif kind == packet.AH:
            n = (size + 2) * 4
            head = bytes([proto, size]) + bytes(n - 2)
        else:
            n = (size + 1) * 8
            head = bytes([proto, size]) + b"\x01" + bytes([n - 4]) + bytes(n - 4)
        chain = head + chain
        proto = kind
    plen = len(chain) + len(body)
    return pkt[:4] + plen.to_bytes(2, "big") + bytes([proto]) + pkt[7:40] + chain + body


def oracle(pkt: bytes):
    """What dpkt reads: (src, dst, sport, dport, proto)."""
    if pkt[0] >> 4 == 4:
        ip = dpkt.ip.IP(pkt)
        fam = socket.AF_INET
    else:
        ip = dpkt.ip6.IP6(pkt)
        fam = socket.AF_INET6
    l4 = ip.data
    proto = TCP if isinstance(l4, dpkt.tcp.TCP) else UDP
    return (socket.inet_ntop(fam, ip.src), socket.inet_ntop(fam, ip.dst), l4.sport, l4.dport,
            proto)


@needs_dpkt
@settings(max_examples=150 * SCALE, deadline=None)
@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports, protos, payloads)
def test_well_formed_packets_decode_as_dpkt_reads_them(addrs, sport, dport, proto, payload):
    pkt = build(addrs[0], addrs[1], sport, dport, proto, payload)
    key = decode(pkt)
    assert (key.src, key.dst, key.sport, key.dport, key.proto) == oracle(pkt)
    assert key.family == (6 if ":" in addrs[0] else 4)
    assert key.syn == (proto == TCP)


@needs_dpkt
@settings(max_examples=150 * SCALE, deadline=None)
@given(v6, v6, ports, ports, protos, ext_headers)
def test_ipv6_extension_chains_decode_as_dpkt_reads_them(src, dst, sport, dport, proto, exts):
    # dpkt 1.9.8 misreads a Fragment header that comes first and is followed by
    # more extension headers (it reads frag_off of the last one): no oracle there.
    assume(not (exts and exts[0][0] == packet.FRAGMENT and len(exts) > 1))
    pkt = with_extensions(build(src, dst, sport, dport, proto, b"x"), exts)
    key = decode(pkt)
    assert (key.src, key.dst, key.sport, key.dport, key.proto) == oracle(pkt)


def test_too_many_extension_headers_is_an_error_not_a_loop():
    exts = [(packet.DEST_OPTS, 0)] * (packet.MAX_EXTENSIONS + 1)
    pkt = with_extensions(build("fd00::1", "fd00::2", 1, 2, TCP), exts)
    with pytest.raises(PacketError) as e:
        decode(pkt)
    assert e.value.code == "header"


@pytest.mark.parametrize(("pkt", "code"), [
    (b"", "truncated"),
    (b"\x45" + bytes(10), "truncated"),
    (b"\x75" + bytes(39), "version"),
    (b"\x44" + bytes(39), "header"),
    # IPv4 fragment, offset 8 bytes: no transport header in it
    (build("10.0.0.1", "10.0.0.2", 1, 2, UDP)[:6] + b"\x00\x01"
     + build("10.0.0.1", "10.0.0.2", 1, 2, UDP)[8:], "fragment"),
    # ICMP
    (build("10.0.0.1", "10.0.0.2", 1, 2, UDP)[:9] + b"\x01"
     + build("10.0.0.1", "10.0.0.2", 1, 2, UDP)[10:], "protocol"),
])
def test_known_bad_packets_name_their_fault(pkt, code):
    with pytest.raises(PacketError) as e:
        decode(pkt)
    assert e.value.code == code


def test_ipv6_fragment_with_offset_is_a_fragment():
    pkt = with_extensions(build("fd00::1", "fd00::2", 1, 2, UDP, b"abc"), [(packet.FRAGMENT, 0)])
    pkt = pkt[:42] + b"\x00\x08" + pkt[44:]          # offset 1 (8 bytes)
    with pytest.raises(PacketError) as e:
        decode(pkt)
    assert e.value.code == "fragment"


def test_a_capture_cut_short_is_read_with_its_wire_length():
    pkt = build("10.1.2.3", "10.1.2.4", 1000, 22, TCP, b"y" * 500)
    key = decode(pkt[:64], wire_length=len(pkt))
    assert (key.src, key.dport) == ("10.1.2.3", 22)
    with pytest.raises(PacketError):
        decode(pkt[:64])          # without it the IP length says "past the packet"


def test_offset_and_length_read_inside_a_bigger_buffer():
    pkt = build("fd00::7", "fd00::8", 5, 6, UDP)
    buf = b"junk" + pkt + b"tail"
    assert decode_raw(buf, 4, len(pkt))[3:5] == (5, 6)


def _only_codec_errors(data: bytes, **kw):
    try:
        key = decode(data, **kw)
    except PacketError as exc:
        assert exc.code in packet.ERROR_CODES
        return None
    assert key.proto in (TCP, UDP) and key.family in (4, 6)
    assert 0 <= key.sport <= 65535 and 0 <= key.dport <= 65535
    return key


@settings(max_examples=800 * SCALE, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_any_bytes_decode_or_raise_packet_error(data):
    _only_codec_errors(data)


@settings(max_examples=250 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports, protos, ext_headers,
       st.data())
def test_fuzz_truncated_and_mutated_packets_never_crash(addrs, sport, dport, proto, exts, data):
    pkt = build(addrs[0], addrs[1], sport, dport, proto, b"payload")
    if ":" in addrs[0]:
        pkt = with_extensions(pkt, exts)
    cut = data.draw(st.integers(0, len(pkt)))
    key = _only_codec_errors(pkt[:cut])
    if key is not None:
        # A prefix only decodes when it holds the whole packet or the
        # headers we need with a wire length that fits: never a wrong key.
        assert (key.sport, key.dport) == (sport, dport)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(pkt) - 1), st.integers(0, 255)),
                               max_size=6))
    mutated = bytearray(pkt)
    for at, value in flips:
        mutated[at] = value
    _only_codec_errors(bytes(mutated))
    _only_codec_errors(bytes(mutated), wire_length=data.draw(st.integers(0, 70000)))


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.binary(max_size=120), st.integers(-5, 130), st.integers(-5, 130))
def test_fuzz_offsets_and_lengths_out_of_range_are_packet_errors(data, offset, length):
    """Any (offset, length) window: a key or PacketError, nothing else."""
    try:
        decode_raw(data, offset, length)
    except PacketError:
        pass
