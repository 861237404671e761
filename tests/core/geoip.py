"""Debian's tor-geoipdb range files as CIDR prefixes (shared by tests and bench).

``/usr/share/tor/geoip`` holds ``first,last,CC`` lines with IPv4 addresses as
decimal integers; ``/usr/share/tor/geoip6`` the same with IPv6 text.  Each
range becomes the CIDRs ``ipaddress.summarize_address_range`` gives; the
ranges do not overlap, so neither do the prefixes.  The data is CC BY-SA
(IPFire Location database) and is read from the installed package, never
copied into the repository.
"""

from __future__ import annotations

import functools
import ipaddress
import os

PATHS = {4: "/usr/share/tor/geoip", 6: "/usr/share/tor/geoip6"}


def missing() -> list[str]:
    return [p for p in PATHS.values() if not os.path.exists(p)]


@functools.cache
def prefixes(family: int) -> tuple[tuple[int, int], ...]:
    """Every CIDR of the family's file as ``(network int, length)``, file order."""
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out = []
    with open(PATHS[family], encoding="ascii") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            first, last, _cc = line.strip().split(",")
            if family == 4:
                first, last = int(first), int(last)
            for net in ipaddress.summarize_address_range(make(first), make(last)):
                out.append((int(net.network_address), net.prefixlen))
    return tuple(out)


def packed(family: int, prefixes) -> tuple[bytes, bytes]:
    """(networks, lengths) columns for ``PrefixTable.from_arrays``."""
    width = 4 if family == 4 else 16
    nets = b"".join(n.to_bytes(width, "big") for n, _ in prefixes)
    lens = bytes(ln for _, ln in prefixes)
    return nets, lens
