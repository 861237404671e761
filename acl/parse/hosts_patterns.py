"""hosts_access(5) patterns: one token of a daemon or client list -> a pattern.

Rules of this file (spec ``semantics.md`` A.4, A.5; libwrap ``hosts_access.c``):

* Text is handled as bytes decoded latin-1 (one char per byte) and compared
  ASCII-case-insensitively, as ``strcasecmp`` in the C locale does.
* A *host pattern* is tried in libwrap's order: ``@netgroup``, ``/file``,
  ``KNOWN``, ``LOCAL``, ``net/mask``, then a string match against the address
  and -- only when the token holds a character other than digits, ``.`` and
  ``/`` -- against the name.
* A *string match* is tried in this order: glob (``*``/``?`` anywhere),
  ``.suffix``, ``ALL``, ``KNOWN``, ``prefix.``, ``[v6]`` (binary compare),
  exact (case-insensitive).  The subject loses a leading ``::ffff:`` first
  when a dotted quad follows it.
* Numbers are parsed the way the C code does: ``inet_aton`` for dotted quads
  (octal and hex octets; 255.255.255.255 is the error value), ``getaddrinfo``
  for IPv6, ``atoi`` for prefix lengths, ``sscanf("%u%c")`` for ports.

String patterns' ``match(key)`` take the subject already normalised by
:func:`subject_key`.  Host patterns' ``match(host)`` take a *host view*: an
object with ``addr``, lazy ``name``, their keys ``akey``/``nkey``, the
address as the mask code reads it (``v4``: ``dot_quad_addr``, retried after
``::ffff:``; ``v6``: an int, None for a mapped dotted quad) and
``innetgr(group, name)``.  They do no I/O themselves.  The
prefix compiler asks :meth:`prefixes` which address sets a pattern stands for
when the client is a canonical numeric address (``None``: not address-shaped).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

#: A pattern's address set for canonical clients: (family, network int, length).
Prefix = tuple[int, int, int]

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
INADDR_NONE = 0xFFFFFFFF
UNKNOWN = "unknown"
PARANOID = "paranoid"


def ascii_lower(s: str) -> str:
    """``strcasecmp`` folding: ASCII letters only."""
    return s.lower() if s.isascii() else s.translate(_LOWER)


def hostname_known(name: str) -> bool:
    """``HOSTNAME_KNOWN``: neither "unknown" nor "paranoid" (any case)."""
    n = ascii_lower(name)
    return n != UNKNOWN and n != PARANOID


def not_inaddr(tok: str) -> bool:
    """``NOT_INADDR``: the token holds a character other than digits, '.', '/'."""
    return any(c not in "0123456789./" for c in tok)


def dot_quad_addr(text: str) -> int | None:
    """``dot_quad_addr``: exactly four runs of non-dots, then ``inet_addr``.

    None stands for INADDR_NONE, which 255.255.255.255 also yields (spec A.5.5).
    """
    runs = [r for r in text.split(".") if r]
    if len(runs) != 4 or "\0" in text:
        return None
    try:
        packed = socket.inet_aton(text)
    except (OSError, ValueError, UnicodeError):
        return None
    value = int.from_bytes(packed, "big")
    return None if value == INADDR_NONE else value


def v6_numeric(text: str) -> bytes | None:
    """``getaddrinfo(AF_INET6, AI_NUMERICHOST)``: 16 bytes, or None."""
    if not text or "\0" in text:
        return None
    try:
        infos = socket.getaddrinfo(text.encode("latin-1"), None, socket.AF_INET6,
                                   socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except (OSError, ValueError, UnicodeError):
        return None
    host = infos[0][4][0].split("%", 1)[0]
    return socket.inet_pton(socket.AF_INET6, host)


def c_atoi(text: str) -> int:
    """C ``atoi``: blanks, a sign, digits; anything after is ignored."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)([0-9]*)", text)
    digits = m.group(2)
    if not digits:
        return 0
    v = int(digits)
    v = -v if m.group(1) == "-" else v
    # atoi is strtol truncated to int; out-of-range values do not occur in
    # sane files, clamp the way glibc's strtol does before the truncation.
    v = max(min(v, 2**63 - 1), -(2**63))
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def scan_number(text: str, base: int = 10, signed: bool = True) -> int | None:
    """``sscanf(text, "%d%c")`` (or %u / %o) returning exactly one conversion.

    Returns the converted value, or None when sscanf would not return 1.
    """
    digits = "01234567" if base == 8 else "0123456789"
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)([" + digits + "]+)", text)
    if m is None:
        return None
    v = int(m.group(2), base)
    neg = m.group(1) == "-"
    if signed:
        v = -v if neg else v
        v = max(min(v, 2**63 - 1), -(2**63))
        v &= 0xFFFFFFFF
        return v - 2**32 if v >= 2**31 else v
    v = min(v, 2**64 - 1)
    if neg:
        v = (-v) & (2**64 - 1)
    return v & 0xFFFFFFFF


def cidr_mask_addr(text: str) -> int:
    """``cidr_mask_addr``: ``atoi`` length 1..32 -> mask; 0 means invalid."""
    bits = c_atoi(text)
    if bits < 1 or bits > 32:
        return 0
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF


def split_at(text: str, delim: str, start: int = 0) -> tuple[str, str] | None:
    """libwrap ``split_at`` (IPv6 build): the first ``delim`` outside ``[...]``.

    The bracket depth is a plain counter, so a ``]`` before any ``[`` makes it
    negative and hides every later delimiter, exactly as in C.  The search
    starts at ``start`` (``split_at(tok + 1, '@')``).
    """
    if "[" not in text and "]" not in text:
        i = text.find(delim, start)
        return None if i < 0 else (text[:i], text[i + 1:])
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif depth == 0 and c == delim:
            return text[:i], text[i + 1:]
    return None


_KEYS: dict[str, str] = {}


def subject_key(subject: str) -> str:
    """What string patterns compare with: mapped prefix dropped, ASCII lower-cased.

    Memoised for the few strings that repeat (daemon and user names).
    """
    key = _KEYS.get(subject)
    if key is None:
        key = ascii_lower(strip_mapped(subject))
        if len(_KEYS) >= 4096:
            _KEYS.clear()
        _KEYS[subject] = key
    return key


def strip_mapped(subject: str) -> str:
    """string_match step a): drop ``::ffff:`` before a dotted quad."""
    if subject[:1] == ":" and len(subject) > 7 and ascii_lower(subject[:7]) == "::ffff:" \
            and dot_quad_addr(subject[7:]) is not None:
        return subject[7:]
    return subject


_CANON_OCTET = re.compile(r"(?:0|[1-9][0-9]{0,2})\Z")


def canonical_v4(text: str) -> int | None:
    """The value of a dotted quad written the way a socket prints it, else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for p in parts:
        if not _CANON_OCTET.match(p) or int(p) > 255:
            return None
        value = (value << 8) | int(p)
    return value


# --------------------------------------------------------------------------
# String matches (hosts_access.c string_match)


@dataclass(frozen=True, slots=True)
class Glob:
    """``*`` any run, ``?`` one character (``:`` and ``.`` too); checked first."""

    text: str
    regex: re.Pattern

    @classmethod
    def make(cls, text: str) -> Glob:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
        return cls(text, re.compile(body, re.ASCII | re.IGNORECASE | re.DOTALL))

    def match(self, key: str) -> bool:
        return self.regex.fullmatch(key) is not None


@dataclass(frozen=True, slots=True)
class Suffix:
    """``.domain``: the subject is strictly longer and ends with the token."""

    text: str   # lower-cased, leading dot kept

    def match(self, key: str) -> bool:
        return len(key) > len(self.text) and key.endswith(self.text)


@dataclass(frozen=True, slots=True)
class AllWord:
    text: str = "ALL"

    def match(self, key: str) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class KnownWord:
    """``KNOWN`` as a string pattern (users, daemons): not "unknown"."""

    text: str = "KNOWN"

    def match(self, key: str) -> bool:
        return key != UNKNOWN


@dataclass(frozen=True, slots=True)
class StrPrefix:
    """``prefix.``: case-insensitive prefix, dot included."""

    text: str   # lower-cased

    def match(self, key: str) -> bool:
        return key.startswith(self.text)


@dataclass(frozen=True, slots=True)
class V6Exact:
    """``[v6addr]``: both sides parsed as IPv6, compared in binary."""

    text: str
    packed: bytes | None
    value: int | None = None

    def match(self, key: str) -> bool:
        return self.packed is not None and v6_numeric(key) == self.packed


@dataclass(frozen=True, slots=True)
class Exact:
    text: str   # lower-cased

    def match(self, key: str) -> bool:
        return key == self.text


StringMatch = Glob | Suffix | AllWord | KnownWord | StrPrefix | V6Exact | Exact


def string_pattern(tok: str) -> StringMatch:
    """Classify a token for ``string_match`` (A.5 step 6, b..h)."""
    if "*" in tok or "?" in tok:
        return Glob.make(tok)
    if tok.startswith("."):
        return Suffix(ascii_lower(tok))
    low = ascii_lower(tok)
    if low == "all":
        return AllWord(tok)
    if low == "known":
        return KnownWord(tok)
    if tok.endswith("."):
        return StrPrefix(low)
    if len(tok) >= 2 and tok[0] == "[" and tok[-1] == "]":
        packed = v6_numeric(tok[1:-1])
        return V6Exact(tok, packed, None if packed is None else int.from_bytes(packed, "big"))
    return Exact(low)


# --------------------------------------------------------------------------
# Host patterns (hosts_access.c host_match)


@dataclass(frozen=True, slots=True)
class Netgroup:
    """``@group``: ``innetgr(group, host name)`` (NSS: files, NIS, LDAP): the
    group as written; glibc compares the host name ignoring case."""

    group: str

    def match(self, host) -> bool:
        return host.innetgr(self.group, host.name)

    def prefixes(self):
        return None


@dataclass(frozen=True, slots=True)
class HostFile:
    """``/path``: whitespace-separated host patterns read from a file.

    ``patterns`` is the snapshot taken when the rules were loaded; None when
    the file was missing or unreadable (then it matches nothing).
    """

    path: str
    patterns: tuple | None

    def match(self, host) -> bool:
        return any(p.match(host) for p in self.patterns or ())

    def prefixes(self):
        out: list[Prefix] = []
        for p in self.patterns or ():
            sub = p.prefixes()
            if sub is None:
                return None
            out.extend(sub)
        return out


@dataclass(frozen=True, slots=True)
class HostKnown:
    """``KNOWN`` host: address and name both known (forces the lookup)."""

    def match(self, host) -> bool:
        name = host.name
        return ascii_lower(host.addr) != UNKNOWN and hostname_known(name)

    def prefixes(self):
        return None


@dataclass(frozen=True, slots=True)
class HostLocal:
    """``LOCAL``: a known name without a dot."""

    def match(self, host) -> bool:
        name = host.name
        return "." not in name and hostname_known(name)

    def prefixes(self):
        return None


@dataclass(frozen=True, slots=True)
class Mask4:
    """``n.n.n.n/mask``: (addr & mask) == net, the net itself not masked."""

    text: str
    net: int
    mask: int

    def match(self, host) -> bool:
        a = host.v4
        return a is not None and (a & self.mask) == self.net

    def contiguous_length(self) -> int | None:
        inv = ~self.mask & 0xFFFFFFFF
        if inv & (inv + 1):
            return None
        return 32 - inv.bit_length()

    def prefixes(self):
        length = self.contiguous_length()
        if length is None:
            return None             # non-contiguous: bitwise, residual
        if self.net & ~self.mask & 0xFFFFFFFF:
            return []               # host bits in net: never matches (A.5.5)
        return [(4, self.net, length)]


@dataclass(frozen=True, slots=True)
class Mask6:
    """``[v6net]/len``: the first ``len`` bits compared (len 0..128)."""

    text: str
    net: int        # 128-bit int, already masked to ``length``
    length: int

    def match(self, host) -> bool:
        a = host.v6        # None for a v4-mapped client: re-tested as IPv4, no
        if a is None:
            return False
        shift = 128 - self.length
        return (a >> shift) == (self.net >> shift)

    def prefixes(self):
        return [(6, self.net, self.length)]


@dataclass(frozen=True, slots=True)
class NeverMask:
    """A ``net/mask`` token libwrap cannot parse: it never matches."""

    text: str
    reason: str

    def match(self, host) -> bool:
        return False

    def prefixes(self):
        return []


@dataclass(frozen=True, slots=True)
class HostString:
    """Anything else: string match on the address, then (maybe) on the name."""

    text: str
    sm: StringMatch
    names: bool     # NOT_INADDR(token): also compared with the host name

    def match(self, host) -> bool:
        sm = self.sm
        if sm.__class__ is V6Exact:
            a = host.v6
            if a is not None and a == sm.value:
                return True
        elif sm.match(host.akey):
            return True
        return self.names and sm.match(host.nkey)

    def prefixes(self):
        sm = self.sm
        if isinstance(sm, AllWord):
            return [(4, 0, 0), (6, 0, 0)]
        if isinstance(sm, V6Exact):
            if sm.packed is None:
                return []
            # A name never parses as IPv6 (resolver names are verified
            # non-numeric), so only the address can match.
            return [(6, int.from_bytes(sm.packed, "big"), 128)]
        if self.names:
            return None
        # Digits and dots only: compared with the address text alone.
        if isinstance(sm, Exact):
            v = canonical_v4(sm.text)
            return [] if v is None else [(4, v, 32)]
        if isinstance(sm, StrPrefix):
            parts = sm.text[:-1].split(".")
            if 1 <= len(parts) <= 3 and all(_CANON_OCTET.match(p) and int(p) <= 255 for p in parts):
                v = 0
                for p in parts:
                    v = (v << 8) | int(p)
                return [(4, v << (8 * (4 - len(parts))), 8 * len(parts))]
            return []   # e.g. "010." or "1.2.3.4.": no canonical text starts so
        return None     # suffixes, globs: textual, residual


HostPattern = Netgroup | HostFile | HostKnown | HostLocal | Mask4 | Mask6 | NeverMask | HostString

#: How deep ``/file`` patterns may nest before we call it a loop (libwrap
#: would recurse until its stack overflows).
MAX_FILE_DEPTH = 8


def host_pattern(tok: str, read_file=None, depth: int = 0) -> HostPattern:
    """Classify a host token (A.5 steps 1-6).

    ``read_file(path) -> str | None`` supplies ``/file`` contents (None when
    missing); without it a file pattern matches nothing.
    """
    if tok.startswith("@"):
        return Netgroup(tok[1:])
    if tok.startswith("/"):
        text = read_file(tok) if (read_file is not None and depth < MAX_FILE_DEPTH) else None
        if text is None:
            return HostFile(tok, None)
        # hostfile_match: fscanf("%s") reads runs of non-isspace characters
        # (no comments), NUL included, but each is then a C string: it ends
        # at its first NUL ("10.0.0.1\0junk" is 10.0.0.1).  A run that
        # starts with NUL is the empty pattern, which matched nothing in
        # tcpdmatch; it is left out.
        subs = tuple(host_pattern(t, read_file, depth + 1)
                     for t in (w.split("\0", 1)[0]
                               for w in re.split(r"[ \t\n\v\f\r]+", text)) if t)
        return HostFile(tok, subs)
    low = ascii_lower(tok)
    if low == "known":
        return HostKnown()
    if low == "local":
        return HostLocal()
    parts = split_at(tok, "/")
    if parts is not None:
        return mask_pattern(tok, parts[0], parts[1])
    return HostString(tok, string_pattern(tok), not_inaddr(tok))


def mask_pattern(tok: str, net_tok: str, mask_tok: str) -> HostPattern:
    """``masked_match4`` || ``masked_match6`` decided once, at load time."""
    net = dot_quad_addr(net_tok)
    if net is not None:
        mask = dot_quad_addr(mask_tok)
        if mask is None:
            mask = cidr_mask_addr(mask_tok)
            if mask == 0:
                return NeverMask(tok, "bad net/mask pattern")
        return Mask4(tok, net, mask)
    if len(net_tok) >= 2 and net_tok[0] == "[" and net_tok[-1] == "]":
        packed = v6_numeric(net_tok[1:-1])
        length = c_atoi(mask_tok)
        if packed is None or length < 0 or length > 128:
            return NeverMask(tok, "bad net/mask pattern")
        value = int.from_bytes(packed, "big")
        shift = 128 - length
        return Mask6(tok, (value >> shift) << shift if shift < 128 else 0, length)
    return NeverMask(tok, "bad net/mask pattern")


# --------------------------------------------------------------------------
# Daemon and client tokens (server_match, client_match)


@dataclass(frozen=True, slots=True)
class Port:
    """Debian ``match_port``: a decimal token <= 65535 is the local port."""

    text: str
    port: int


@dataclass(frozen=True, slots=True)
class DaemonToken:
    text: str
    daemon: StringMatch | Port
    host: HostPattern | None     # ``daemon@host``: matched on the server end

    def match(self, q) -> bool:
        d = self.daemon
        if isinstance(d, Port):
            ok = q.server_sin and q.server_port == d.port
        else:
            ok = d.match(q.dkey)
        return ok and (self.host is None or self.host.match(q.server))


@dataclass(frozen=True, slots=True)
class ClientToken:
    text: str
    host: HostPattern
    user: StringMatch | None     # ``user@host``: host first, then ident

    def match(self, q) -> bool:
        if not self.host.match(q.client):
            return False
        return self.user is None or self.user.match(q.ukey)


def daemon_token(tok: str, read_file=None) -> DaemonToken:
    parts = split_at(tok, "@", 1)
    name = tok if parts is None else parts[0]
    port = scan_number(name, 10, signed=False)
    d: StringMatch | Port
    d = Port(name, port) if port is not None and port <= 65535 else string_pattern(name)
    host = None if parts is None else host_pattern(parts[1], read_file)
    return DaemonToken(tok, d, host)


def client_token(tok: str, read_file=None) -> ClientToken:
    parts = split_at(tok, "@", 1)
    if parts is None:
        return ClientToken(tok, host_pattern(tok, read_file), None)
    return ClientToken(tok, host_pattern(parts[1], read_file), string_pattern(parts[0]))
