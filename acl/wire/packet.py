"""Sans-IO packet codec: the first bytes of an IP packet -> a flow key.

The NFQUEUE front door hands us what the kernel copied of a new connection's
first packet (a TCP SYN, or the first UDP datagram of a conntrack flow).  We
need five things from it: source and destination address, source and
destination port, protocol.  No socket, no clock, no I/O: bytes in, a key or
a :class:`PacketError` out, so a fuzzer can drive it.

Invariant (fuzzed in tests/nfq/test_packet.py): for ANY bytes, ``decode``
returns a :class:`FlowKey` or raises :class:`PacketError` -- never anything
else.  The front door counts the error and gives its default verdict.

What is read, and why (RFC 791, RFC 8200, RFC 793/9293, RFC 768):

* IPv4 (RFC 791 3.1): version 4; IHL >= 5 words; total length >= IHL*4 and
  not past what the wire carried; a packet whose fragment offset is not 0
  has no transport header ("fragment").  The kernel has already checked the
  header checksum before the INPUT hook, so we do not.
* IPv6 (RFC 8200 3, 4): version 6; the 40-byte fixed header, then extension
  headers are walked -- Hop-by-Hop (0), Routing (43), Destination Options
  (60): length in 8-octet units, not counting the first 8; Fragment (44):
  8 octets, a non-zero offset has no transport header; AH (51, RFC 4302 2.2):
  length in 4-octet units minus 2.  At most MAX_EXTENSIONS are walked, so a
  crafted chain cannot make us loop.  ESP (50), No Next Header (59) and
  anything else that is not TCP or UDP is "protocol".
* TCP (RFC 9293 3.1): source and destination port, then the flags at octet
  13; data offset >= 5 words.  UDP (RFC 768): ports, length >= 8.
* "truncated": the bytes end before a header we need does (the capture
  range was too small, or the packet is short).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

TCP = 6
UDP = 17

#: IPv6 extension headers walked (RFC 8200 4.1 order), by next-header value.
HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
AH = 51
DEST_OPTS = 60
MAX_EXTENSIONS = 8

TCP_SYN = 0x02
TCP_ACK = 0x10

#: Error codes (a closed set: they may become metric labels).
ERROR_CODES = ("truncated", "version", "header", "length", "fragment", "protocol")


class PacketError(ValueError):
    """A packet the codec cannot turn into a flow key; ``code`` is in ERROR_CODES."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES
        self.code = code
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class FlowKey:
    """What a new connection's first packet says about the connection."""

    family: int          # 4 or 6
    src: str             # numeric, as inet_ntop writes it
    dst: str
    sport: int
    dport: int
    proto: int           # TCP or UDP
    tcp_flags: int = 0   # 0 for UDP

    @property
    def syn(self) -> bool:
        """A TCP SYN without ACK: the opening of a connection."""
        return self.proto == TCP and self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN


def _need(length: int, end: int, what: str) -> None:
    if end > length:
        raise PacketError("truncated", f"{what} needs {end} bytes, have {length}")


def decode_raw(buf, offset: int = 0, length: int | None = None,
               wire_length: int | None = None) -> tuple[int, bytes, bytes, int, int, int, int]:
    """``(family, src, dst, sport, dport, proto, tcp_flags)``, addresses packed.

    ``buf[offset:offset+length]`` holds the captured bytes; ``wire_length`` is
    the packet's length on the wire when the capture was cut short (NFQUEUE's
    cap_len), else the captured length is the packet's length.
    """
    if length is None:
        length = len(buf) - offset
    if length < 0 or offset < 0 or offset + length > len(buf):
        raise PacketError("truncated", "capture extends past the buffer")
    if wire_length is None or wire_length < length:
        wire_length = length
    _need(length, 1, "IP version")
    version = buf[offset] >> 4
    if version == 4:
        _need(length, 20, "IPv4 header")
        ihl = (buf[offset] & 0x0F) * 4
        if ihl < 20:
            raise PacketError("header", f"IPv4 header length {ihl} < 20")
        total = (buf[offset + 2] << 8) | buf[offset + 3]
        if total < ihl:
            raise PacketError("length", f"IPv4 total length {total} < header length {ihl}")
        if total > wire_length:
            raise PacketError("length", f"IPv4 total length {total} > packet length {wire_length}")
        frag = ((buf[offset + 6] << 8) | buf[offset + 7]) & 0x1FFF
        if frag:
            raise PacketError("fragment", f"IPv4 fragment at offset {frag * 8}")
        proto = buf[offset + 9]
        src = bytes(buf[offset + 12: offset + 16])
        dst = bytes(buf[offset + 16: offset + 20])
        at, end, family = ihl, total, 4
    elif version == 6:
        _need(length, 40, "IPv6 header")
        payload = (buf[offset + 4] << 8) | buf[offset + 5]
        end = 40 + payload
        if end > wire_length:
            raise PacketError("length", f"IPv6 payload length {payload} past packet length {wire_length}")
        proto = buf[offset + 6]
        src = bytes(buf[offset + 8: offset + 24])
        dst = bytes(buf[offset + 24: offset + 40])
        at, family = 40, 6
        for _ in range(MAX_EXTENSIONS):
            if proto in (HOP_BY_HOP, ROUTING, DEST_OPTS):
                _need(length, at + 2, "IPv6 extension header")
                nxt, size = buf[offset + at], (buf[offset + at + 1] + 1) * 8
            elif proto == FRAGMENT:
                _need(length, at + 8, "IPv6 fragment header")
                nxt, size = buf[offset + at], 8
                frag = ((buf[offset + at + 2] << 8) | buf[offset + at + 3]) >> 3
                if frag:
                    raise PacketError("fragment", f"IPv6 fragment at offset {frag * 8}")
            elif proto == AH:
                _need(length, at + 2, "IPv6 AH header")
                nxt, size = buf[offset + at], (buf[offset + at + 1] + 2) * 4
            else:
                break
            if at + size > end:
                raise PacketError("length", "IPv6 extension header past the payload")
            proto, at = nxt, at + size
        else:
            raise PacketError("header", f"more than {MAX_EXTENSIONS} IPv6 extension headers")
    else:
        raise PacketError("version", f"IP version {version}")

    if proto == TCP:
        _need(length, at + 14, "TCP header")
        if end < at + 20:
            raise PacketError("length", "TCP header past the IP payload")
        if buf[offset + at + 12] >> 4 < 5:
            raise PacketError("header", "TCP data offset < 5")
        flags = buf[offset + at + 13]
    elif proto == UDP:
        _need(length, at + 8, "UDP header")
        if end < at + 8:
            raise PacketError("length", "UDP header past the IP payload")
        if ((buf[offset + at + 4] << 8) | buf[offset + at + 5]) < 8:
            raise PacketError("header", "UDP length < 8")
        flags = 0
    else:
        raise PacketError("protocol", f"IP protocol {proto} is neither TCP nor UDP")
    o = offset + at
    sport = (buf[o] << 8) | buf[o + 1]
    dport = (buf[o + 2] << 8) | buf[o + 3]
    return family, src, dst, sport, dport, proto, flags


def address_text(packed: bytes) -> str:
    """Numeric text of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def decode(buf, offset: int = 0, length: int | None = None,
           wire_length: int | None = None) -> FlowKey:
    """A :class:`FlowKey`, or :class:`PacketError`; see :func:`decode_raw`."""
    family, src, dst, sport, dport, proto, flags = decode_raw(buf, offset, length, wire_length)
    return FlowKey(family, address_text(src), address_text(dst), sport, dport, proto, flags)


# -- building packets (tests and benchmarks) ---------------------------------

def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum(data: bytes) -> int:
    return ~_sum16(data) & 0xFFFF


def build(src: str, dst: str, sport: int, dport: int, proto: int = TCP,
          payload: bytes = b"", tcp_flags: int = TCP_SYN, seq: int = 1) -> bytes:
    """A well-formed IPv4 or IPv6 TCP or UDP packet with correct checksums."""
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    if proto == TCP:
        l4 = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + seq.to_bytes(4, "big")
              + bytes(4) + bytes([5 << 4, tcp_flags]) + (65535).to_bytes(2, "big")
              + bytes(4)) + payload
        csum_at = 16
    elif proto == UDP:
        l4 = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
              + (8 + len(payload)).to_bytes(2, "big") + bytes(2) + payload)
        csum_at = 6
    else:
        raise ValueError(f"cannot build protocol {proto}")
    pseudo = s + d + (len(l4).to_bytes(4, "big") + bytes(3) + bytes([proto]) if v6
                      else bytes([0, proto]) + len(l4).to_bytes(2, "big"))
    c = _checksum(pseudo + l4) or (0xFFFF if proto == UDP else 0)
    l4 = l4[:csum_at] + c.to_bytes(2, "big") + l4[csum_at + 2:]
    if v6:
        return (bytes([0x60, 0, 0, 0]) + len(l4).to_bytes(2, "big") + bytes([proto, 64])
                + s + d + l4)
    head = (bytes([0x45, 0]) + (20 + len(l4)).to_bytes(2, "big") + bytes([0, 1, 0x40, 0, 64, proto])
            + bytes(2) + s + d)
    head = head[:10] + _checksum(head).to_bytes(2, "big") + head[12:]
    return head + l4
