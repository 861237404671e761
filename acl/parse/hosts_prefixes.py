"""The address prefixes of one hosts_access rule, held as packed columns.

A pure rule (see :mod:`acl.compile.tcpw`) is a daemon list and a set of
prefixes; a policy of a million prefixes must not cost a million Python
tuples on every reload, so the IPv4 ones live in two arrays that the prefix
core and the engine's range builder read as they are.  IPv6 prefixes are
rare in hosts.allow and stay a list of ``(network, length)``.

Iterating yields ``(family, network, length)`` -- the shape the rest of the
code (``acl check``, the shadowed-rule analysis) has always used -- so only
the paths that care about speed need to know about the columns.
"""

from __future__ import annotations

from array import array


class RulePrefixes:
    """``nets4`` array('I') of host-order IPv4 networks, ``lens4``
    array('B') of their lengths, ``v6`` list of (network int, length)."""

    __slots__ = ("nets4", "lens4", "v6")

    def __init__(self, nets4: array | None = None, lens4: array | None = None,
                 v6: list | None = None) -> None:
        self.nets4 = array("I") if nets4 is None else nets4
        self.lens4 = array("B") if lens4 is None else lens4
        self.v6 = [] if v6 is None else v6

    @classmethod
    def from_tuples(cls, prefixes) -> RulePrefixes:
        """From ``(family, network, length)`` triples."""
        out = cls()
        for fam, net, length in prefixes:
            if fam == 4:
                out.nets4.append(net)
                out.lens4.append(length)
            else:
                out.v6.append((net, length))
        return out

    def __iter__(self):
        for net, length in zip(self.nets4, self.lens4, strict=True):
            yield 4, net, length
        for net, length in self.v6:
            yield 6, net, length

    def __len__(self) -> int:
        return len(self.nets4) + len(self.v6)

    def __eq__(self, other) -> bool:
        if not isinstance(other, RulePrefixes):
            return NotImplemented
        return (self.nets4 == other.nets4 and self.lens4 == other.lens4
                and self.v6 == other.v6)

    __hash__ = None

    def families(self) -> set[int]:
        """The address families present: a subset of {4, 6}."""
        return ({4} if self.nets4 else set()) | ({6} if self.v6 else set())

    def __repr__(self) -> str:
        return f"RulePrefixes({list(self)!r})"
