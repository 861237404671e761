"""Client addresses as ucspi-tcp (IPv6 build) writes them, for tcprules keys.

tcpserver never looks a client up by the address the socket gave; it looks
it up by the *text* its own formatter makes of it (spec B.4).  That text is
the key vocabulary of every tcprules file, so it must be reproduced byte for
byte:

* IPv4: dotted decimal, no leading zeros (``ip4_fmt``).
* IPv6 (``ip6_fmt``, **not** RFC 5952):
  - groups in lowercase hex without leading zeros;
  - the longest run of all-zero groups becomes ``::`` *even when the run is a
    single group* (``2001:db8:0:1:1:1:1:1`` -> ``2001:db8::1:1:1:1:1``);
  - of equally long runs the first one is compressed;
  - a v4-mapped address (``::ffff:0:0/96``) ends in dotted IPv4.
* v4-mapped clients are looked up as plain dotted IPv4 unless tcpserver runs
  with ``-6`` (spec B.4, D.2.6); ``mapped_as_v4=False`` is that ``-6``.

The run-finding below follows the order of ucspi's own scan: a run is
measured when a non-zero group (or the end) closes it, and replaces the best
so far only when strictly longer, which is what makes the first of equal runs
win.

Speed: :func:`client_text` formats with the C library's ``inet_ntop`` and
fixes up the two places where it and ucspi differ -- a lone zero group
(ucspi compresses the first one; RFC 5952 compresses none) and IPv4-compatible
addresses (glibc prints ``::1.2.3.4``; ucspi prints hex).  Where a run of two
or more zero groups exists both pick the same, first, longest run.
:func:`ip6_fmt` is the direct transcription and the oracle for the fast path.
"""

from __future__ import annotations

import socket

__all__ = ["ip6_fmt", "ip4_fmt", "client_text", "V4_MAPPED_PREFIX"]

V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def ip4_fmt(packed: bytes) -> str:
    """Four bytes -> ``a.b.c.d``."""
    return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"


def ip6_fmt(packed: bytes) -> str:
    """Sixteen bytes -> ucspi's IPv6 text (see the module rules)."""
    if len(packed) != 16:
        raise ValueError("an IPv6 address is 16 bytes")
    groups = [(packed[k] << 8) | packed[k + 1] for k in range(0, 16, 2)]
    # Longest zero run, first wins on ties; a run of one group counts.
    best_pos, best_len = 0, 0
    run_pos, in_run = 0, False
    for i in range(8):
        if groups[i] == 0:
            if not in_run:
                in_run, run_pos = True, i
        elif in_run:
            if i - run_pos > best_len:
                best_pos, best_len = run_pos, i - run_pos
            in_run = False
    if in_run and 8 - run_pos > best_len:
        best_pos, best_len = run_pos, 8 - run_pos
    mapped = packed[:12] == V4_MAPPED_PREFIX
    out = []
    i = 0
    while i < 8:
        if i == 6 and mapped:
            out.append(ip4_fmt(packed[12:]))
            break
        if best_len and i == best_pos:
            out.append("::" if i == 0 else ":")
            i += best_len
            continue
        out.append(f"{groups[i]:x}")
        if i < 7:
            out.append(":")
        i += 1
    return "".join(out)


def _ip6_text(packed: bytes) -> str:
    """ip6_fmt via the C library where the two agree (see the module rules)."""
    text = _inet_ntop(_AF_INET6, packed)
    if "." in text:
        # glibc prints IPv4-compatible forms (::1.2.3.4) that ucspi does not;
        # only the v4-mapped one is common to both.
        return text if packed[:12] == V4_MAPPED_PREFIX else ip6_fmt(packed)
    if "::" in text:
        return text          # a run of >= 2 zero groups: same run, same text
    groups = text.split(":")
    try:
        i = groups.index("0")
    except ValueError:
        return text          # no zero group at all
    # ucspi compresses even a single zero group (the first of them).
    return ":".join(groups[:i]) + "::" + ":".join(groups[i + 1:])


def client_text(addr: str, mapped_as_v4: bool = True) -> tuple[str, bytes]:
    """The lookup text tcpserver would use for a numeric client address, and
    the address packed (4 bytes for the IPv4 text, else 16).

    ``addr`` is what a socket reports (``1.2.3.4``, ``::ffff:1.2.3.4``,
    ``fe80::1%eth0``).  Raises ValueError for anything that is not an address.
    """
    if type(addr) is not str:
        raise ValueError(f"not an address: {addr!r}")
    if ":" not in addr:
        try:
            # glibc accepts exactly canonical dotted quads here (no leading
            # zeros, four parts), so the text is already ucspi's.
            return addr, _inet_pton(_AF_INET, addr)
        except OSError:
            raise ValueError(f"not an address: {addr!r}") from None
    text = addr.split("%", 1)[0] if "%" in addr else addr   # scope id: not in the key
    try:
        packed = _inet_pton(_AF_INET6, text)
    except OSError:
        raise ValueError(f"not an address: {addr!r}") from None
    if packed[:12] == V4_MAPPED_PREFIX and mapped_as_v4:
        v4 = packed[12:]
        return ip4_fmt(v4), v4
    return _ip6_text(packed), packed
