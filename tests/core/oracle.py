"""Brute-force answers built on ``ipaddress``: the oracle for both cores.

Deliberately naive: every question walks every entry with
``ipaddress.ip_network`` semantics, sharing no code with either core.
"""

from __future__ import annotations

import ipaddress


class Oracle:
    def __init__(self, family: int, entries):
        self.family = family
        self.bits = 32 if family == 4 else 128
        # The same prefix given twice keeps its lowest value.
        best: dict[ipaddress._BaseNetwork, int] = {}
        for net, length, value in entries:
            key = ipaddress.ip_network((self._addr(net), length))
            if key not in best or value < best[key]:
                best[key] = value
        self.best = best

    def _addr(self, a: int):
        return ipaddress.IPv4Address(a) if self.family == 4 else ipaddress.IPv6Address(a)

    def covering(self, a: int):
        ip = self._addr(a)
        found = [(int(n.network_address), n.prefixlen, v) for n, v in self.best.items() if ip in n]
        return sorted(found, key=lambda t: t[1])

    def first_match(self, a: int) -> int:
        return min((v for _, _, v in self.covering(a)), default=-1)

    def most_specific(self, a: int) -> int:
        cov = self.covering(a)
        return cov[-1][2] if cov else -1

    def exact(self, net: int, length: int) -> int:
        return self.best.get(ipaddress.ip_network((self._addr(net), length)), -1)

    def covered_by(self, net: int, length: int):
        outer = ipaddress.ip_network((self._addr(net), length))
        return sorted(
            (int(n.network_address), n.prefixlen, v)
            for n, v in self.best.items()
            if n.subnet_of(outer)
        )

    def entries(self):
        return sorted((int(n.network_address), n.prefixlen, v) for n, v in self.best.items())
