"""Sans-IO codec of the Postfix policy delegation protocol (docs/protocol.md).

Rules of this file:

* A request is ``name=value`` lines, each ended by LF (a CR before it is
  dropped), and the request is ended by an empty line.  ``feed`` returns the
  complete requests seen so far, in order, however the bytes are split.
* Attributes acl reads: ``request``, ``client_address``, ``client_name``
  (``unknown`` means not known), ``reverse_client_name``, ``server_address``,
  ``server_port``, ``client_port``, ``service``.  Everything else Postfix
  sends is ignored.  ``request`` (SMTPD_POLICY_README: "request=
  smtpd_access_policy") may be absent; present with any other value it makes
  the request a non-fatal :class:`BadRequest` -- acl cannot answer a
  question it does not know, and a grant must never come from one.
* Bounded input: a line longer than ``MAX_LINE`` bytes or a request of more
  than ``MAX_ATTRS`` lines is a *fatal* :class:`BadRequest` (the connection is
  answered once and closed), so a client cannot make the server buffer
  without bound.  A request without a usable ``client_address`` or with a
  line lacking ``=`` is a non-fatal :class:`BadRequest`: it gets an answer
  and the connection goes on.
* Replies: ``action=DUNNO`` on a grant (Postfix's other restrictions then
  decide), ``action=REJECT text`` on a refusal, ``action=DEFER_IF_PERMIT text``
  on a refusal by a rate or concurrency limit (try again later).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from acl.model import Decision, Reason, Request

MAX_LINE = 4096
MAX_ATTRS = 256

_TEMPORARY = frozenset({Reason.CPS, Reason.SERVICE_LIMIT, Reason.PER_SOURCE_LIMIT,
                        Reason.LOAD, Reason.RATE})
E_MALFORMED, E_TOO_LONG = 3, 4


@dataclass(frozen=True, slots=True)
class BadRequest:
    code: int
    text: str
    fatal: bool = False


def _port(text: str | None) -> int:
    if text and text.isdigit() and int(text) < 65536:
        return int(text)
    return 0


def _address(text: str | None) -> str | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        # the socket form (``::ffff:a.b.c.d``) that the rule languages match;
        # ``str`` before Python 3.13 writes ``::ffff:7f00:2``
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


class PostfixDecoder:
    """Bytes in, :class:`Request` or :class:`BadRequest` out."""

    def __init__(self, default_service: str = "smtpd") -> None:
        self.default_service = default_service
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._lines = 0
        self._bad: str | None = None
        self.dead = False

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Request | BadRequest]:
        if self.dead:
            return []
        self._buf += data
        out: list[Request | BadRequest] = []
        buf = self._buf
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE:
                return self._fatal(out, "line too long")
            if not line:
                out.append(self._finish())
                continue
            self._lines += 1
            if self._lines > MAX_ATTRS:
                return self._fatal(out, "too many attributes")
            name, eq, value = line.partition(b"=")
            if not eq or not name:
                self._bad = self._bad or f"attribute line without '=': {line[:40]!r}"
                continue
            try:
                self._attrs[name.decode("ascii")] = value.decode("utf-8")
            except UnicodeDecodeError:
                self._bad = self._bad or "attribute is not UTF-8"
        del buf[:start]
        if len(buf) > MAX_LINE:
            return self._fatal(out, "line too long")
        return out

    def _fatal(self, out: list, text: str) -> list:
        self.dead = True
        self._buf = bytearray()
        out.append(BadRequest(E_TOO_LONG, text, fatal=True))
        return out

    def _finish(self) -> Request | BadRequest:
        attrs, bad = self._attrs, self._bad
        self._attrs, self._bad, self._lines = {}, None, 0
        if bad:
            return BadRequest(E_MALFORMED, bad)
        kind = attrs.get("request")
        if kind is not None and kind != "smtpd_access_policy":
            return BadRequest(E_MALFORMED, f"request={kind[:40]!r} is not smtpd_access_policy")
        client = _address(attrs.get("client_address"))
        if client is None:
            return BadRequest(E_MALFORMED, "no usable client_address")
        name = attrs.get("client_name") or attrs.get("reverse_client_name")
        if name == "unknown" or not name:
            name = None
        return Request(
            service=attrs.get("service") or self.default_service,
            client=client,
            client_port=_port(attrs.get("client_port")),
            server=_address(attrs.get("server_address")),
            server_port=_port(attrs.get("server_port")),
            host=name,
        )


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def encode(decision: Decision) -> bytes:
    """The reply to one request (one action line and the empty line)."""
    if decision.allowed:
        return b"action=DUNNO\n\n"
    # Postfix hands this text to the SMTP client: the rule's file name and
    # line help whoever reads the logs, its directory is nobody else's business
    loc = decision.location
    where = f" ({loc.path.rpartition('/')[2]}:{loc.line})" if loc else ""
    text = _clean(f"Access denied: {decision.reason.log_text}{where}")
    verb = "DEFER_IF_PERMIT" if decision.reason in _TEMPORARY else "REJECT"
    return f"action={verb} {text}\n\n".encode()


def encode_error(bad: BadRequest) -> bytes:
    """An unusable request cannot be granted: ask Postfix to try later."""
    return f"action=DEFER_IF_PERMIT acl: bad policy request: {_clean(bad.text)}\n\n".encode()
