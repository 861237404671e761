"""Sans-IO codec of the binary protocol, version 1 (docs/protocol.md).

Rules of this file:

* ``BinaryDecoder.feed(data)`` takes any bytes (a whole read, or one byte at a
  time) and returns the complete frames in them as events, in order; the
  result is the same however the input is split.  It owns no socket and no
  clock.
* A frame whose ``length`` is < 8 or whose total size (4 + length) exceeds
  65536 cannot be skipped safely: the decoder returns a *fatal*
  :class:`BadFrame` (code 4, request id 0) and ignores everything after it.
  Any other bad frame (version, type, flags, payload) is one non-fatal
  :class:`BadFrame` with that frame's request id; decoding goes on.
* The decoder never holds more than one incomplete frame (< 65536 bytes), so
  what a client can make the server buffer is bounded by this codec.
* DECIDE flags: LEASE, UCSPI (host and user are a UCSPI server's
  TCPREMOTEHOST / TCPREMOTEINFO, ``Request.ucspi_names``), INFO (that
  TCPREMOTEINFO is set, maybe empty) and SEAL (``Decide.seal``: once this
  request is answered the connection only releases its own leases -- what
  that means is acl/serve/conn.py's business, not the codec's) and NAMES
  (``Decide.names``: the DECISION carries the client's and server's names
  deciding looked up, ``names_section``, and says so by its own flag
  NAMES); any other bit is a bad frame, as UCSPI, INFO, SEAL and NAMES are
  for a sidecar older than them.
* Encoders return whole frames (length prefix included).  Every frame is at
  most ``MAX_FRAME`` bytes except DECISION (server to client), which may be
  up to ``MAX_DECISION_FRAME``: a tcprules environment or a rule's options
  can be far longer than a request, and what bounds them in the end is
  execve's limit, not ours.  A Decision that does not fit even that (or has
  a name or value over 65535 bytes, the u16 fields) makes
  ``encode_decision`` raise :class:`TooLarge`; the server answers
  ERROR ``E_DECISION_SIZE`` for that request instead (acl/serve/conn.py).
* A decision's text travels as the bytes it was read from.  Rule files need
  not be UTF-8 (tcprules and tcpserver pass an env value's bytes through):
  the compilers decode them with ``surrogateescape`` and
  ``decision_payload`` encodes the same way, so a Latin-1 ``caf\xe9`` leaves
  as the four bytes it was; ``decode_decision`` reverses it.  Only a str that
  no bytes decode to (a lone surrogate outside U+DC80..U+DCFF, which no rule
  file yields) cannot be encoded: UnicodeEncodeError, answered ERROR
  ``E_DECISION_ENCODING`` -- never reported as "too large".

Frame: ``u32 length | u8 version | u8 type | u16 flags | u32 request_id |
payload`` -- all little-endian.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from acl.errors import ProtocolError
from acl.model import Decision, Location, Reason, Request, Verdict

VERSION = 1
MAX_FRAME = 65536            # 4-byte length field included; every frame but DECISION
MAX_DECISION_FRAME = 1 << 20   # DECISION frames (server -> client), same count
MIN_LENGTH = 8

T_DECIDE, T_RELEASE, T_PING = 0x01, 0x02, 0x03
T_DECISION, T_RELEASED, T_PONG, T_ERROR = 0x81, 0x82, 0x83, 0xFF
F_LEASE = 0x0001
#: DECIDE: host and user are the UCSPI server's TCPREMOTEHOST/TCPREMOTEINFO
#: (Request.ucspi_names); INFO: TCPREMOTEINFO is set, even when user_len = 0
F_UCSPI, F_INFO = 0x0002, 0x0004
#: DECIDE: after answering it, the connection acts on nothing but RELEASE of
#: its own leases (acl-wrap sets it: the connection then crosses exec)
F_SEAL = 0x0008
#: DECIDE: the reply carries the names deciding looked up (acl-wrap sets it);
#: DECISION: it does (a names section follows the option items)
F_NAMES = 0x0010
DECIDE_FLAGS = F_LEASE | F_UCSPI | F_INFO | F_SEAL | F_NAMES
R_NAMES = 0x0001

E_VERSION, E_TYPE, E_PAYLOAD, E_SIZE, E_OVERLOAD, E_DECISION_SIZE = 1, 2, 3, 4, 5, 6
E_DECISION_ENCODING, E_SEALED = 7, 8
ERROR_TEXT = {
    E_VERSION: "unsupported version",
    E_TYPE: "unknown type",
    E_PAYLOAD: "malformed payload",
    E_SIZE: "frame too large or too short",
    E_OVERLOAD: "server overloaded",          # reserved, never sent: backpressure instead
    E_DECISION_SIZE: "decision too large to send",
    E_DECISION_ENCODING: "decision cannot be encoded",
    E_SEALED: "connection sealed: only RELEASE of its own leases is taken",
}

_HEAD = struct.Struct("<IBBHI")           # length, version, type, flags, request_id
_DECIDE_FIXED = struct.Struct("<BBHHBBBB")
_DECISION_FIXED = struct.Struct("<BBHQHH")
_ERROR_FIXED = struct.Struct("<HH")
_ADDR_LEN = {4: 4, 6: 16}


# -- events ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decide:
    request_id: int
    request: Request
    seal: bool = False          # flag SEAL
    names: bool = False         # flag NAMES: answer with the names section


@dataclass(frozen=True, slots=True)
class Release:
    request_id: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: int


@dataclass(frozen=True, slots=True)
class BadFrame:
    request_id: int
    code: int
    text: str
    fatal: bool = False


Event = Decide | Release | Ping | BadFrame


def _addr_text(family: int, raw: bytes) -> str:
    # inet_ntop, as the socket would print it: a v4-mapped client reads
    # ``::ffff:a.b.c.d``, the form the rule languages match (``ipaddress``
    # before Python 3.13 writes ``::ffff:7f00:2``, which no IPv4 rule matches)
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


def decode_decide(payload: bytes | memoryview, flags: int) -> Request:
    """The DECIDE payload -> Request, or ValueError saying what is wrong.

    With ``F_UCSPI`` host and user are TCPREMOTEHOST and TCPREMOTEINFO as a
    UCSPI server set them: host_len = 0 is no host, the user is set exactly
    when ``F_INFO`` is (an empty TCPREMOTEINFO is user ""), and both are
    read as the tcprules layer reads its keys (UTF-8, other bytes kept by
    surrogateescape: a remote identd's bytes must not turn the request into
    an error).  ``F_INFO`` without ``F_UCSPI``, or a user without ``F_INFO``,
    is malformed."""
    if len(payload) < _DECIDE_FIXED.size:
        raise ValueError("short DECIDE payload")
    cf, sf, cport, sport, slen, hlen, ulen, reserved = _DECIDE_FIXED.unpack_from(payload, 0)
    if cf not in (4, 6):
        raise ValueError(f"client_family {cf} is not 4 or 6")
    if sf not in (0, 4, 6):
        raise ValueError(f"server_family {sf} is not 0, 4 or 6")
    if slen == 0:
        raise ValueError("empty service name")
    if reserved:
        raise ValueError("reserved byte is not 0")
    ucspi = bool(flags & F_UCSPI)
    if flags & F_INFO and not ucspi:
        raise ValueError("flag INFO without flag UCSPI")
    if ucspi and ulen and not flags & F_INFO:
        raise ValueError("flag UCSPI with a user but without flag INFO")
    ca, sa = _ADDR_LEN[cf], _ADDR_LEN.get(sf, 0)
    need = _DECIDE_FIXED.size + ca + sa + slen + hlen + ulen
    if len(payload) != need:
        raise ValueError(f"DECIDE payload is {len(payload)} bytes, fields say {need}")
    pos = _DECIDE_FIXED.size
    client = _addr_text(cf, bytes(payload[pos:pos + ca]))
    pos += ca
    server = _addr_text(sf, bytes(payload[pos:pos + sa])) if sa else None
    pos += sa
    names = "surrogateescape" if ucspi else "strict"
    try:
        service = bytes(payload[pos:pos + slen]).decode()
        pos += slen
        host = bytes(payload[pos:pos + hlen]).decode("utf-8", names) if hlen else None
        pos += hlen
        user = (bytes(payload[pos:pos + ulen]).decode("utf-8", names)
                if ulen or flags & F_INFO else None)
    except UnicodeDecodeError as exc:
        raise ValueError("service, host or user is not UTF-8") from exc
    return Request(service, client, cport, server, sport, host, user, bool(flags & F_LEASE),
                   ucspi)


def next_event(buf, pos: int) -> tuple[Event | None, int]:
    """Decode the frame at ``buf[pos:]``: ``(event, next_pos)``, or
    ``(None, pos)`` when the frame is not complete yet.  A fatal
    :class:`BadFrame` means nothing after it can be read."""
    if len(buf) - pos < 4:
        return None, pos
    (length,) = struct.unpack_from("<I", buf, pos)
    if length < MIN_LENGTH or length + 4 > MAX_FRAME:
        return BadFrame(0, E_SIZE, ERROR_TEXT[E_SIZE], fatal=True), len(buf)
    if len(buf) - pos < 4 + length:
        return None, pos
    _, version, ftype, flags, rid = _HEAD.unpack_from(buf, pos)
    with memoryview(buf) as view:
        payload = bytes(view[pos + 12:pos + 4 + length])
    return _event(version, ftype, flags, rid, payload), pos + 4 + length


def _event(version: int, ftype: int, flags: int, rid: int, payload: bytes) -> Event:
    if version != VERSION:
        return BadFrame(rid, E_VERSION, f"unsupported version {version}")
    if ftype == T_DECIDE:
        if flags & ~DECIDE_FLAGS:
            return BadFrame(rid, E_PAYLOAD, "unknown DECIDE flags")
        try:
            return Decide(rid, decode_decide(payload, flags), bool(flags & F_SEAL),
                          bool(flags & F_NAMES))
        except ValueError as exc:
            return BadFrame(rid, E_PAYLOAD, str(exc))
    if ftype == T_RELEASE:
        if flags or len(payload) != 8:
            return BadFrame(rid, E_PAYLOAD, "RELEASE takes no flags and a u64 lease id")
        return Release(rid, struct.unpack("<Q", payload)[0])
    if ftype == T_PING:
        if flags or len(payload):
            return BadFrame(rid, E_PAYLOAD, "PING takes no flags and no payload")
        return Ping(rid)
    return BadFrame(rid, E_TYPE, f"unknown type 0x{ftype:02x}")


class BinaryDecoder:
    """Bytes in, events out (see the module rules)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dead = False        # a fatal frame was seen: ignore the rest

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        if self.dead:
            return []
        self._buf += data
        events: list[Event] = []
        pos = 0
        while True:
            event, pos = next_event(self._buf, pos)
            if event is None:
                break
            events.append(event)
            if isinstance(event, BadFrame) and event.fatal:
                self.dead = True
                self._buf = bytearray()
                return events
        del self._buf[:pos]
        return events


# -- encoders ---------------------------------------------------------------
class TooLarge(ValueError):
    """A frame, or a u16 length field, too small for what it must carry."""


def frame(ftype: int, request_id: int, payload: bytes = b"", flags: int = 0,
          limit: int = MAX_FRAME) -> bytes:
    if len(payload) + 12 > limit:
        raise TooLarge(f"frame of {len(payload) + 12} bytes, more than {limit}")
    return _HEAD.pack(8 + len(payload), VERSION, ftype, flags, request_id) + payload


def _u16_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")     # the rule file's bytes
    if len(raw) > 0xFFFF:
        raise TooLarge(f"{what} longer than 65535 bytes")
    return raw


def names_section(decision: Decision) -> bytes:
    """The DECISION's names section (flag NAMES): ``u8 which`` (bit 0 the
    client's name was looked up, bit 1 the server's), then ``u16 len`` and
    the bytes of each, client first (a name not looked up has length 0)."""
    parts = []
    which = 0
    for bit, name in ((1, decision.client_name), (2, decision.server_name)):
        raw = b""
        if name is not None:
            which |= bit
            raw = _u16_text(name, "host name")
        parts.append(struct.pack("<H", len(raw)) + raw)
    return bytes([which]) + b"".join(parts)


def decision_payload(decision: Decision) -> bytes:
    if len(decision.env) > 0xFFFF or len(decision.options) > 0xFFFF:
        raise TooLarge("more than 65535 env or option items")
    loc = _u16_text(str(decision.location) if decision.location else "", "location")
    parts = [_DECISION_FIXED.pack(int(decision.verdict), int(decision.reason), len(loc),
                                  decision.lease, len(decision.env), len(decision.options)), loc]
    for name, value in decision.env:
        n = _u16_text(name, "env name")
        v = _u16_text(value or "", "env value")
        parts.append(struct.pack("<BHH", 0 if value is not None else 1, len(n), len(v)) + n + v)
    for name, value in decision.options:
        n = _u16_text(name, "option name")
        v = _u16_text(value, "option value")
        parts.append(struct.pack("<HH", len(n), len(v)) + n + v)
    return b"".join(parts)


def encode_decision(request_id: int, decision: Decision, names: bool = False) -> bytes:
    """The DECISION frame -- with the names section when ``names`` (the
    DECIDE asked, flag NAMES); TooLarge when it does not fit, and
    UnicodeEncodeError for text no bytes decode to (see the module rules)."""
    if names:
        return frame(T_DECISION, request_id, decision_payload(decision) + names_section(decision),
                     R_NAMES, limit=MAX_DECISION_FRAME)
    return frame(T_DECISION, request_id, decision_payload(decision), limit=MAX_DECISION_FRAME)


def encode_released(request_id: int, released: bool) -> bytes:
    return frame(T_RELEASED, request_id, b"\x00" if released else b"\x01")


def encode_pong(request_id: int, compiled: bool) -> bytes:
    return frame(T_PONG, request_id, b"\x01" if compiled else b"\x00")


def encode_error(request_id: int, code: int, text: str = "") -> bytes:
    raw = (text or ERROR_TEXT.get(code, "error")).encode("utf-8", "backslashreplace")[:1024]
    return frame(T_ERROR, request_id, _ERROR_FIXED.pack(code, len(raw)) + raw)


# -- the client side ----------------------------------------------------------
def _pack_addr(text: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(text)
    return ip.version, ip.packed


def decide_payload(request: Request) -> bytes:
    cf, ca = _pack_addr(request.client)
    sf, sa = _pack_addr(request.server) if request.server else (0, b"")
    service = request.service.encode()
    names = "surrogateescape" if request.ucspi_names else "strict"
    host = (request.host or "").encode("utf-8", names)
    user = (request.user or "").encode("utf-8", names)
    if not 1 <= len(service) <= 255 or len(host) > 255 or len(user) > 255:
        raise ValueError("service must be 1..255 bytes, host and user at most 255")
    if not (0 <= request.client_port <= 0xFFFF and 0 <= request.server_port <= 0xFFFF):
        raise ValueError(f"client_port {request.client_port}, server_port "
                         f"{request.server_port}: a port is 0 .. 65535")
    return (_DECIDE_FIXED.pack(cf, sf, request.client_port, request.server_port,
                               len(service), len(host), len(user), 0)
            + ca + sa + service + host + user)


def decide_flags(request: Request) -> int:
    flags = F_LEASE if request.lease else 0
    if request.ucspi_names:
        flags |= F_UCSPI | (F_INFO if request.user is not None else 0)
    return flags


def encode_decide(request_id: int, request: Request, seal: bool = False,
                  names: bool = False) -> bytes:
    flags = decide_flags(request) | (F_SEAL if seal else 0) | (F_NAMES if names else 0)
    return frame(T_DECIDE, request_id, decide_payload(request), flags)


def encode_release(request_id: int, lease_id: int) -> bytes:
    if not 0 <= lease_id <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"lease id {lease_id}: a lease id is 0 .. 2**64-1")
    return frame(T_RELEASE, request_id, struct.pack("<Q", lease_id))


def encode_ping(request_id: int) -> bytes:
    return frame(T_PING, request_id)


@dataclass(frozen=True, slots=True)
class Reply:
    """One server frame as the client sees it."""

    type: int
    request_id: int
    decision: Decision | None = None
    released: bool | None = None
    core: int | None = None
    code: int | None = None
    text: str = ""


def decode_decision(payload, names: bool = False) -> Decision:
    """A DECISION payload -> Decision (with its names section when ``names``:
    the frame's flag NAMES); ValueError (or struct.error) when a length runs
    past the payload or bytes are left over."""
    verdict, reason, loc_len, lease, n_env, n_opt = _DECISION_FIXED.unpack_from(payload, 0)
    pos = _DECISION_FIXED.size

    def text(n: int) -> str:
        nonlocal pos
        if pos + n > len(payload):
            raise ValueError("a length runs past the DECISION payload")
        pos += n
        return bytes(payload[pos - n:pos]).decode("utf-8", "surrogateescape")

    loc_text = text(loc_len)
    location = None
    if loc_text:
        path, _, line = loc_text.rpartition(":")
        location = Location(path, int(line)) if line.isdigit() else Location(loc_text, 0)
    env = []
    for _ in range(n_env):
        op, nl, vl = struct.unpack_from("<BHH", payload, pos)
        pos += 5
        name, value = text(nl), text(vl)
        env.append((name, value if op == 0 else None))
    options = []
    for _ in range(n_opt):
        nl, vl = struct.unpack_from("<HH", payload, pos)
        pos += 4
        options.append((text(nl), text(vl)))
    looked_up: list = [None, None]
    if names:
        which = payload[pos]
        pos += 1
        for i in (0, 1):
            (nl,) = struct.unpack_from("<H", payload, pos)
            pos += 2
            name = text(nl)
            if which & (1 << i):
                looked_up[i] = name
            elif nl:
                raise ValueError("a name that was not looked up has a length")
    if pos != len(payload):
        raise ValueError(f"{len(payload) - pos} bytes after the DECISION payload's items")
    return Decision(Verdict(verdict), Reason(reason), location, tuple(env), tuple(options), lease,
                    *looked_up)


class ReplyDecoder:
    """Client side: bytes in, :class:`Reply` objects out.  Bytes that are not
    a valid reply raise :class:`~acl.errors.ProtocolError` (and nothing
    else): the server is not usable."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = struct.unpack_from("<I", buf, pos)
            if length < MIN_LENGTH or length + 4 > MAX_DECISION_FRAME or (
                    length + 4 > MAX_FRAME and len(buf) - pos >= 6
                    and buf[pos + 5] != T_DECISION):
                raise ProtocolError(f"server sent a frame of length {length}")
            if len(buf) - pos < 4 + length:
                break
            _, version, ftype, flags, rid = _HEAD.unpack_from(buf, pos)
            payload = bytes(buf[pos + 12:pos + 4 + length])
            pos += 4 + length
            if version != VERSION:
                raise ProtocolError(f"server sent a frame of version {version}")
            try:
                out.append(_reply(ftype, rid, payload, flags))
            except (ValueError, struct.error, IndexError) as exc:
                raise ProtocolError(f"server sent a malformed frame of type 0x{ftype:02x}: "
                                    f"{exc}") from None
        if pos:
            del buf[:pos]
        return out


def _reply(ftype: int, rid: int, payload: bytes, flags: int = 0) -> Reply:
    """One server frame -> Reply; ValueError, struct.error or IndexError when
    its payload does not say what its type needs."""
    if ftype == T_DECISION:
        if flags & ~R_NAMES:
            raise ValueError("unknown DECISION flags")
        return Reply(ftype, rid, decision=decode_decision(payload, bool(flags & R_NAMES)))
    if ftype == T_RELEASED:
        return Reply(ftype, rid, released=payload[:1] == b"\x00")
    if ftype == T_PONG:
        return Reply(ftype, rid, core=payload[0] if payload else None)
    if ftype == T_ERROR:
        code, tl = _ERROR_FIXED.unpack_from(payload, 0)
        return Reply(ftype, rid, code=code, text=payload[4:4 + tl].decode("utf-8", "replace"))
    raise ValueError(f"unknown frame type 0x{ftype:02x}")
