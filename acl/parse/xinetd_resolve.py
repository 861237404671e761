"""Name services the xinetd reader needs, behind one small interface.

xinetd resolves host names in ``only_from``/``no_access`` at load time
(getaddrinfo, any family: the name must resolve, the *name* is kept), matches
them at connect time by a reverse lookup of the client (getnameinfo with
NI_NAMEREQD, no forward check -- spec C.4), reads ``/etc/networks`` for
network names (getnetbyname) and resolves ``bind`` names.

* :class:`SystemResolver` asks the C library (whatever nsswitch says).
* :class:`HostsResolver` answers from hosts/networks *text*, the way glibc's
  ``files`` backend does (first line wins for a reverse lookup; names compare
  case-insensitively).  Tests use it so nothing leaves the machine, and the
  live test gives xinetd the same files through a private mount namespace.
"""

from __future__ import annotations

import ipaddress
import socket

from acl.resolve import HostsFileBackend, numeric_address
from acl.rulefiles import short_of_resources

__all__ = ["SystemResolver", "HostsResolver", "inet_network"]


def inet_network(text: str) -> int | None:
    """glibc ``inet_network``: dotted parts (octal/hex allowed) folded into a
    right-aligned number, as ``/etc/networks`` numbers are read."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    val = 0
    for p in parts:
        try:
            if p.lower().startswith("0x"):
                n = int(p[2:], 16)
            elif len(p) > 1 and p.startswith("0"):
                n = int(p, 8)
            else:
                n = int(p, 10)
        except ValueError:
            return None
        if not 0 <= n <= 255:
            return None
        val = (val << 8) | n
    return val


class SystemResolver:
    """The C library's resolvers (may use DNS: never in tests).  A name
    that does not resolve is dropped, as xinetd drops it; one that could
    not be looked up for lack of descriptors or memory fails the load
    (OutOfResources, acl/rulefiles.py): xinetd would have looked it up."""

    def resolves(self, name: str) -> bool:
        try:
            return bool(socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME))
        except OSError as exc:
            short_of_resources(exc, f"looking up {name!r}")
            return False
        except (UnicodeError, ValueError):
            return False

    def addresses(self, name: str, family: int = 0) -> list[str]:
        try:
            infos = socket.getaddrinfo(name, None, family)
        except OSError as exc:
            short_of_resources(exc, f"looking up {name!r}")
            return []
        except (UnicodeError, ValueError):
            return []
        return [i[4][0] for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]

    def reverse(self, addr: str) -> str | None:
        try:
            host, _ = socket.getnameinfo((addr, 0), socket.NI_NAMEREQD)
        except (OSError, UnicodeError, ValueError):
            return None
        return host

    def network(self, name: str) -> int | None:
        try:
            with open("/etc/networks", encoding="utf-8", errors="replace") as f:
                return HostsResolver(networks=f.read()).network(name)
        except OSError as exc:
            short_of_resources(exc, "/etc/networks: cannot read")
            return None


class HostsResolver:
    """Answers from ``hosts`` and ``networks`` file text only."""

    def __init__(self, hosts: str = "", networks: str = ""):
        self._by_name: dict[str, list[str]] = {}
        # reverse lookups read the lines as glibc's files module does, which
        # acl.resolve already knows (first line wins; an IPv4 question reads
        # ::ffff:a.b.c.d and ::1 lines as IPv4)
        self._lines = HostsFileBackend(text=hosts)
        for line in hosts.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 2:
                continue
            try:
                ip = ipaddress.ip_address(words[0])
            except ValueError:
                continue
            addr = str(ip)
            for w in words[1:]:
                self._by_name.setdefault(w.lower(), []).append(addr)
        self._nets: dict[str, int] = {}
        for line in networks.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 2:
                continue
            num = inet_network(words[1])
            if num is None:
                continue
            for w in [words[0], *words[2:]]:
                self._nets.setdefault(w, num)

    def resolves(self, name: str) -> bool:
        return bool(self.addresses(name))

    def addresses(self, name: str, family: int = 0) -> list[str]:
        try:
            ip = ipaddress.ip_address(name)
            out = [str(ip)]
        except ValueError:
            out = list(self._by_name.get(name.lower(), ()))
        if family == socket.AF_INET:
            out = [a for a in out if ":" not in a]
        elif family == socket.AF_INET6:
            out = [a for a in out if ":" in a]
        return out

    def reverse(self, addr: str) -> str | None:
        parsed = numeric_address(addr)
        # No unmapping: glibc's files backend looks ::ffff:a.b.c.d up as an
        # IPv6 address, which an IPv4 line of /etc/hosts does not name.  An
        # address alone on its line is named "" (glibc), which no only_from
        # or no_access name matches, as no name matches none.
        return None if parsed is None else self._lines.reverse(*parsed)

    def network(self, name: str) -> int | None:
        return self._nets.get(name)
