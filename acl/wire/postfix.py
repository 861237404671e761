"""Sans-IO codec of the Postfix policy delegation protocol (docs/protocol.md).

Rules of this file:

* A request is ``name=value`` lines, each ended by LF (a CR before it is
  dropped), and the request is ended by an empty line.  ``feed`` returns the
  complete requests seen so far, in order, however the bytes are split.
* Attributes acl reads (:data:`READ`): ``request``, ``client_address``,
  ``client_name`` (``unknown`` means not known), ``reverse_client_name``,
  ``server_address``, ``server_port``, ``client_port``, ``service``, and
  for the session memory (acl/serve/sessions.py) ``protocol_state`` and
  ``instance``, handed over beside the request (:class:`Asked`).  Only
  their values are decoded (UTF-8; one that is not makes the request a
  non-fatal :class:`BadRequest`).  Everything else Postfix sends is skipped
  undecoded, whatever its bytes: with ``smtputf8_enable = no`` Postfix
  passes an 8-bit ``sender`` or ``recipient`` through as it came, and that
  client must be answered as any other.
* ``request`` (SMTPD_POLICY_README: "request=smtpd_access_policy") may be
  absent; present with any other value it makes the request a non-fatal
  :class:`BadRequest` -- acl cannot answer a question it does not know, and
  a grant must never come from one.
* The service is the ``service`` attribute, else ``default_service`` as it
  is when the request's empty line is read (the connection sets it from the
  running policy before each read, so a reload that changes it applies to
  every request read after it).
* Bounded input: a line longer than ``MAX_LINE`` bytes or a request of more
  than ``MAX_ATTRS`` lines is a *fatal* :class:`BadRequest` (the connection is
  answered once and closed), so a client cannot make the server buffer
  without bound.  A request without a usable ``client_address`` or with a
  line lacking ``=`` (or a name before it) is a non-fatal
  :class:`BadRequest`: it gets an answer and the connection goes on.
* Replies (:func:`encode`): ``action=DUNNO`` on a grant (Postfix's other
  restrictions then decide); ``action=DEFER_IF_PERMIT text`` on a refusal by
  a limit that passes (cps, rate, max_load, instances, per_source: try again
  later); ``action=REJECT text`` on any other refusal -- and on a grant that
  is a ``twist`` (DELEGATE): twist replaces the server, so the client never
  reaches it, and Postfix cannot run the command (acl never runs one).  Every
  other hosts_options item of a grant (``spawn``, ``banners``, ``setenv``...)
  is for a server acl-wrap starts: the answer stays DUNNO and none is acted
  on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from acl.model import Decision, Reason, Request, Verdict

MAX_LINE = 4096
MAX_ATTRS = 256
#: The attributes acl reads (their names are ASCII); every other is skipped undecoded.
READ = frozenset({b"request", b"client_address", b"client_name", b"reverse_client_name",
                  b"server_address", b"server_port", b"client_port", b"service",
                  b"protocol_state", b"instance"})

_TEMPORARY = frozenset({Reason.CPS, Reason.SERVICE_LIMIT, Reason.PER_SOURCE_LIMIT,
                        Reason.LOAD, Reason.RATE})
E_MALFORMED, E_TOO_LONG = 3, 4


@dataclass(frozen=True, slots=True)
class BadRequest:
    code: int
    text: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Asked:
    """One decodable policy request: what to decide, and what tells its SMTP
    session apart (``protocol_state``, ``instance``: "" when not sent)."""

    request: Request
    state: str = ""
    instance: str = ""


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
    """Bytes in, :class:`Asked` or :class:`BadRequest` out."""

    def __init__(self, default_service: str = "smtpd") -> None:
        self.default_service = default_service
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._lines = 0
        self._bad: str | None = None
        self.dead = False

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Asked | BadRequest]:
        if self.dead:
            return []
        self._buf += data
        out: list[Asked | BadRequest] = []
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
                why = "without '='" if not eq else "without a name"
                self._bad = self._bad or f"attribute line {why}: {line[:40]!r}"
                continue
            if name not in READ:
                continue                # sender, recipient, ...: never read, never decoded
            try:
                self._attrs[name.decode("ascii")] = value.decode("utf-8")
            except UnicodeDecodeError:
                self._bad = self._bad or f"{name.decode('ascii')} is not UTF-8"
        del buf[:start]
        if len(buf) > MAX_LINE:
            return self._fatal(out, "line too long")
        return out

    def _fatal(self, out: list, text: str) -> list:
        self.dead = True
        self._buf = bytearray()
        out.append(BadRequest(E_TOO_LONG, text, fatal=True))
        return out

    def _finish(self) -> Asked | BadRequest:
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
        return Asked(Request(
            service=attrs.get("service") or self.default_service,
            client=client,
            client_port=_port(attrs.get("client_port")),
            server=_address(attrs.get("server_address")),
            server_port=_port(attrs.get("server_port")),
            host=name,
        ), attrs.get("protocol_state", ""), attrs.get("instance", ""))


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def encode(decision: Decision) -> bytes:
    """The reply to one request (one action line and the empty line)."""
    twist = decision.verdict is Verdict.DELEGATE
    if decision.allowed and not twist:
        return b"action=DUNNO\n\n"
    # Postfix hands this text to the SMTP client: the rule's file name and
    # line help whoever reads the logs, its directory is nobody else's business
    loc = decision.location
    where = f" ({loc.path.rpartition('/')[2]}:{loc.line})" if loc else ""
    why = "twist (the rule replaces the server)" if twist else decision.reason.log_text
    text = _clean(f"Access denied: {why}{where}")
    verb = "DEFER_IF_PERMIT" if decision.reason in _TEMPORARY else "REJECT"   # twist: OK
    return f"action={verb} {text}\n\n".encode()


def encode_error(bad: BadRequest) -> bytes:
    """An unusable request cannot be granted: ask Postfix to try later."""
    return f"action=DEFER_IF_PERMIT acl: bad policy request: {_clean(bad.text)}\n\n".encode()
