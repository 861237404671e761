"""Pure-Python twin of ``ext/acl/_hosts_scan.pyx``: the same answers, for
``ACL_NO_EXTENSIONS=1`` and as the second opinion in the tests.  The rules
(which client fields have a fast answer, and what it is) are written at the
top of the ``.pyx``."""

from __future__ import annotations

import re
from array import array

_OCTET = r"(?:0|[1-9][0-9]{0,2})"
_TOKEN = re.compile(
    rf"(?P<prefix>(?:{_OCTET}\.){{1,3}})\Z"
    rf"|(?P<quad>{_OCTET}(?:\.{_OCTET}){{3}})"
    rf"(?:/(?:(?P<bits>[0-9]{{1,3}})|(?P<mask>{_OCTET}(?:\.{_OCTET}){{3}})))?\Z")
_SEPARATORS = re.compile(r"[, \t\r\n]+")


def _value(quad: str) -> int | None:
    v = 0
    for part in quad.split("."):
        o = int(part)
        if o > 255:
            return None
        v = (v << 8) | o
    return v


def _token(tok: str) -> tuple[int, int] | None | bool:
    """(net, length); False for "no prefix"; None for "not mine"."""
    m = _TOKEN.match(tok)
    if m is None:
        return None
    if m["prefix"] is not None:
        parts = m["prefix"][:-1]
        v = _value(parts)
        if v is None:
            return None
        k = parts.count(".") + 1
        return v << (8 * (4 - k)), 8 * k
    net = _value(m["quad"])
    if net is None or net == 0xFFFFFFFF:
        return None
    if m["bits"] is not None:
        bits = int(m["bits"])
        if not 1 <= bits <= 32:
            return False
    elif m["mask"] is not None:
        mask = _value(m["mask"])
        if mask is None or mask == 0xFFFFFFFF:
            return None
        inv = ~mask & 0xFFFFFFFF
        if inv & (inv + 1):
            return None
        bits = 32 - inv.bit_length()
    else:
        return net, 32
    mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    if net & ~mask & 0xFFFFFFFF:
        return False
    return net, bits


def v4_client_prefixes(text: str):
    """``(nets array('I'), lengths array('B'))`` for a client field made only
    of the shapes the ``.pyx`` names, else None; TypeError for a non-str."""
    if not isinstance(text, str):
        raise TypeError(f"Argument 'text' has incorrect type (expected str, got "
                        f"{type(text).__name__})")
    if not text.isascii():
        return None
    tokens = [t for t in _SEPARATORS.split(text) if t]
    if not tokens:
        return None
    nets, lens = array("I"), array("B")
    for tok in tokens:
        got = _token(tok)
        if got is None:
            return None
        if got is not False:
            nets.append(got[0])
            lens.append(got[1])
    return nets, lens
