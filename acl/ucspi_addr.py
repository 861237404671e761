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
"""

from __future__ import annotations

import socket

__all__ = ["ip6_fmt", "ip4_fmt", "client_text", "V4_MAPPED_PREFIX"]

V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def ip4_fmt(packed: bytes) -> str:
    """Four bytes -> ``a.b.c.d``."""
    return "%d.%d.%d.%d" % (packed[0], packed[1], packed[2], packed[3])


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
        out.append("%x" % groups[i])
        if i < 7:
            out.append(":")
        i += 1
    return "".join(out)


def client_text(addr: str, mapped_as_v4: bool = True) -> tuple[str, bytes]:
    """The lookup text tcpserver would use for a numeric client address, and
    the address packed (4 bytes for the IPv4 text, else 16).

    ``addr`` is what a socket reports (``1.2.3.4``, ``::ffff:1.2.3.4``,
    ``fe80::1%eth0``).  Raises ValueError for anything that is not an address.
    """
    try:
        # glibc accepts exactly canonical dotted quads here (no leading
        # zeros, four parts), so the text is already ucspi's.
        return addr, _inet_pton(_AF_INET, addr)
    except OSError:
        pass
    except TypeError as exc:
        raise ValueError(f"not an address: {addr!r}") from exc
    text = addr.split("%", 1)[0]   # a scope id is not part of the key
    try:
        packed = _inet_pton(_AF_INET6, text)
    except (OSError, TypeError):
        raise ValueError(f"not an address: {addr!r}") from None
    if mapped_as_v4 and packed[:12] == V4_MAPPED_PREFIX:
        v4 = packed[12:]
        return ip4_fmt(v4), v4
    return ip6_fmt(packed), packed
