"""The tcprules layer: tcpserver's rules lookup (spec B.3, B.4) over records
read from a rules text or from a cdb.

Theory of operation -- the probe order of ucspi-tcp's ``rules.c``; the first
key present decides, whatever line it came from (spec D.2.1):

1. with info: ``info@ip``, then with host too: ``info@=host``
2. ``ip``
3. with host: ``=host``
4. every prefix of ``ip`` that ends in ``.`` or ``:``, longest first
5. with host: ``=`` + every suffix of host starting at a ``.``, longest
   first, then ``=``
6. the empty key

``host`` and ``info`` are the request's ``host`` and ``user``: under a UCSPI
server, acl-wrap sends its TCPREMOTEHOST and TCPREMOTEINFO (DECIDE flag
UCSPI), which are what ``tcpserver -x`` looks up with; ``info == ""`` (an
ident ERROR reply) tries ``@ip``, ``info is None`` no ``@`` key at all.

No key found: allowed, no environment, no location.  A client that is not
a numeric address is denied with ``Reason.ERROR``.  ``ip`` is the client in ucspi text
(:mod:`acl.ucspi_addr`): v4-mapped clients become dotted IPv4 unless the
layer is built with ``mapped_as_v4=False`` (tcpserver ``-6``).  A layer built
with ``use_host=False`` (tcpserver ``-H``) never has a host, so tries no
``=`` key at all, not even ``=``.

Duplicate keys: the first record written wins, for a text source as for a
cdb (whose probe order finds the first-inserted duplicate, spec B.5).

Step 4 on the prefix core: for an IPv4 text the prefixes tried are exactly
the octet-aligned ``a.``, ``a.b.``, ``a.b.c.``, so the keys that can match
are the canonical dotted prefixes and they are /8, /16, /24 networks; the
longest one present is the core's ``most_specific`` answer.  Keys ending in
``.`` that are not canonical (``01.``, ``256.``, ``1.2.3.4.``) can never
equal such a prefix and are left out.  IPv6 keys are *textual* prefixes of
ucspi's formatting (D.2.4), which no CIDR table reproduces, so for a 16-byte
client the layer probes its key dict at each ``:``/``.`` of the text exactly
as ``rules.c`` does.

The data of the deciding record is read as tcpserver's ``found`` reads it:
NUL-terminated items, ``D`` anywhere means deny, ``+NAME=VALUE`` sets NAME
(split at the first ``=``; an item without ``=`` is ignored), anything else
is ignored, bytes after the last NUL are ignored.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import struct

from acl.cdb import HEADER_SIZE, CdbError, CdbReader
from acl.core import PrefixTable
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.parse.tcprules import parse_tcprules, rules_to_records
from acl.rulefiles import read_bytes
from acl.ucspi_addr import client_text

__all__ = ["TcprulesLayer", "load_tcprules", "decode_data", "NO_MATCH"]

NO_MATCH = Decision(Verdict.ALLOW, Reason.OK)
_BAD_CLIENT = Decision(Verdict.DENY, Reason.ERROR)
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_pair = struct.Struct("<II")
_V4_PREFIX = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){1,3}\Z")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def decode_data(data: bytes) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """tcpserver's reading of a record: ``(deny, env items in order)``."""
    deny = False
    env = []
    pos = 0
    n = len(data)
    while pos < n:
        nul = data.find(b"\0", pos)
        if nul < 0:
            break                      # trailing bytes without NUL: ignored
        head = data[pos:pos + 1]
        if head == b"D":
            deny = True
        elif head == b"+":
            eq = data.find(b"=", pos + 1, nul)
            if eq >= 0:
                env.append((_text(data[pos + 1:eq]), _text(data[eq + 1:nul])))
        pos = nul + 1
    return deny, tuple(env)


class TcprulesLayer:
    """Answers like tcpserver with ``-x rules.cdb`` (see the module rules)."""

    name = "tcprules"

    def __init__(self, records, *, mapped_as_v4: bool = True, use_host: bool = True,
                 source: str = "", prefix_table=None):
        """``records``: ``(key bytes, data bytes, Location)`` in cdb order.
        ``prefix_table``: the PrefixTable class to use (tests pass the
        compiled core's and its pure twin's); default ``acl.core``'s."""
        self.mapped_as_v4 = mapped_as_v4
        self.use_host = use_host
        self.source = source
        decisions: dict[str, Decision] = {}
        raw: dict[str, bytes] = {}
        for key, data, location in records:
            k = _text(key)
            if k in decisions:
                continue                               # first record wins
            deny, env = decode_data(data)
            raw[k] = data
            if deny:
                decisions[k] = Decision(Verdict.DENY, Reason.TCPRULES, location)
            else:
                decisions[k] = Decision(Verdict.ALLOW, Reason.OK, location, env)
        self._decisions = decisions
        self._data = raw
        self._has_info = any("@" in k for k in decisions)
        self._has_host = any(k.startswith("=") for k in decisions)
        self._has_prefix = any(k.endswith((".", ":")) for k in decisions)
        v4 = [k for k in decisions if _V4_PREFIX.match(k)]
        self._v4_keys = v4
        self._v4 = None
        if v4:
            entries = []
            for i, k in enumerate(v4):
                octets = [int(x) for x in k[:-1].split(".")]
                length = 8 * len(octets)
                net = int.from_bytes(bytes(octets + [0] * (4 - len(octets))), "big")
                entries.append((net, length, i))
            self._v4 = (prefix_table or PrefixTable)(4, entries)

    def __len__(self) -> int:
        return len(self._decisions)

    # -- the probe order of rules.c -----------------------------------------
    def lookup(self, ip: str, packed: bytes, host: str | None, info: str | None) -> str | None:
        """The key that decides for ucspi text ``ip`` (None: no key found)."""
        t = self._decisions
        if not self.use_host:
            host = None
        # 1. info@ip, info@=host
        if info is not None and self._has_info:
            k = info + "@" + ip
            if k in t:
                return k
            if host is not None:
                k = info + "@=" + host
                if k in t:
                    return k
        # 2. the exact ip
        if ip in t:
            return ip
        # 3. =host
        if host is not None and self._has_host:
            k = "=" + host
            if k in t:
                return k
        # 4. prefixes ending in '.' or ':', longest first
        if len(packed) == 4:
            if self._v4 is not None:
                v = self._v4.most_specific(packed)
                if v >= 0:
                    return self._v4_keys[v]
        elif self._has_prefix:
            # each ':' or '.' from the right ends a prefix (the whole text
            # too, when it ends in ':' as "::" does)
            i = len(ip)
            while True:
                j = max(ip.rfind(":", 0, i), ip.rfind(".", 0, i))
                if j < 0:
                    break
                k = ip[:j + 1]
                if k in t:
                    return k
                i = j
        # 5. =.domain suffixes longest first, then =
        if host is not None and self._has_host:
            i = host.find(".")
            while i >= 0:
                k = "=" + host[i:]
                if k in t:
                    return k
                i = host.find(".", i + 1)
            if "=" in t:
                return "="
        # 6. the empty key
        if "" in t:
            return ""
        return None

    def explain(self, request: Request) -> tuple[str | None, Decision]:
        """``(deciding key or None, decision)``."""
        try:
            ip, packed = client_text(request.client, self.mapped_as_v4)
        except ValueError:
            return None, _BAD_CLIENT
        key = self.lookup(ip, packed, request.host, request.user)
        if key is None:
            return None, NO_MATCH
        return key, self._decisions[key]

    def check(self, request: Request, now: float) -> Decision:
        client = request.client
        if type(client) is str and ":" not in client:
            # the common case inline: a plain dotted quad is its own key text
            try:
                packed = _inet_pton(_AF_INET, client)
            except OSError:
                return _BAD_CLIENT
            ip = client
        else:
            try:
                ip, packed = client_text(client, self.mapped_as_v4)
            except ValueError:
                return _BAD_CLIENT
        key = self.lookup(ip, packed, request.host, request.user)
        if key is None:
            return NO_MATCH
        return self._decisions[key]

    def data_for(self, key: str) -> bytes | None:
        """The raw cdb data stored under ``key`` (first record)."""
        return self._data.get(key)


# -- loading ---------------------------------------------------------------

def looks_like_cdb(path: str, blob: bytes) -> bool:
    """Whether to read the file as a cdb (then its damage is reported as a
    cdb's, as tcprulescheck says "protocol error"), not as rules text.

    Rule -- any one of these, in order:

    1. the name ends in ``.cdb``;
    2. the header pairs the file holds (at least two, up to the full 256) are
       chained as ``cdb_make`` writes them: table ``i + 1`` starts where table
       ``i`` ends (``pos[i+1] == pos[i] + 8 * slots[i]``) and the first lies
       past the 2048-byte header.  Every cdb tcprules or ``acl compile``
       writes has this shape, so a truncated or damaged one is still known;
       for rules text each link is a 32-bit equation its bytes would have to
       meet by chance;
    3. a complete header with NUL bytes (rules text has none in practice)
       whose tables and records all lie inside the file: a cdb some other
       writer laid out differently.

    Everything else is rules text.
    """
    if str(path).endswith(".cdb"):
        return True
    pairs = [_pair.unpack_from(blob, 8 * i) for i in range(min(len(blob), HEADER_SIZE) // 8)]
    if (len(pairs) >= 2 and pairs[0][0] >= HEADER_SIZE
            and all(b[0] == a[0] + 8 * a[1] for a, b in itertools.pairwise(pairs))):
        return True
    if len(blob) < HEADER_SIZE or b"\0" not in blob[:HEADER_SIZE]:
        return False
    try:
        CdbReader(blob).validate()
    except CdbError:
        return False
    return True


def layer_from_text(text: bytes, path: str = "<rules>", **options) -> TcprulesLayer:
    rules = parse_tcprules(text, path)
    records = [(k, d, Location(path, line)) for k, d, line in rules_to_records(rules)]
    return TcprulesLayer(records, source=path, **options)


def layer_from_cdb(blob: bytes, path: str = "<cdb>", **options) -> TcprulesLayer:
    """A cdb has no line numbers: a decision's location is ``PATH[KEY]``
    with line 0, naming the key that decided."""
    reader = CdbReader(blob)
    mapping = reader.mapping()          # validates: CdbError if broken
    records = [(k, d, Location(f"{path}[{_text(k)}]", 0)) for k, d in mapping.items()]
    return TcprulesLayer(records, source=path, **options)


def load_tcprules(path: str | os.PathLike, *, mapped_as_v4: bool = True, use_host: bool = True,
                  fmt: str | None = None) -> TcprulesLayer:
    """A layer from a tcprules text file or a cdb (``fmt`` = "text"/"cdb"
    forces one; otherwise a ``.cdb`` name or a cdb header decides).

    Raises RuleSyntaxError for a text the real tcprules rejects or loops on,
    CdbError for a broken cdb, OSError when the file cannot be read.
    """
    path = os.fspath(path)
    blob = read_bytes(path)
    options = {"mapped_as_v4": mapped_as_v4, "use_host": use_host}
    if fmt is None:
        fmt = "cdb" if looks_like_cdb(path, blob) else "text"
    if fmt == "cdb":
        return layer_from_cdb(blob, path, **options)
    if fmt == "text":
        return layer_from_text(blob, path, **options)
    raise ValueError(f"unknown tcprules format {fmt!r}")
