"""A DNS server for one test, run inside a private network namespace
(``unshare -n``: nothing but ``lo``) by the tests that must never ask the
real DNS: test_names_slow_dns.py, tests/wrap/netns_names.py and
tests/tcpw/names_ns.py.

Usage: ``python3 fake_dns.py CONFIG.json [READY_FILE]``; READY_FILE, when
given, is created once the socket is bound (a server that answers nothing
cannot be probed).  CONFIG names (every key but ``ptr``, ``a`` and ``drop``
may be left out):

* ``ptr``: address -> name (IPv4 or IPv6 text; ``in-addr.arpa`` and
  ``ip6.arpa`` questions).
* ``a`` / ``aaaa``: name -> an address, or a list of them.
* ``cname``: alias -> target.  A question for the alias is answered with
  the CNAME record and then the target's records of the asked type, as a
  recursive server does; the resolver's canonical name is the target.
* ``drop``: address prefixes whose PTR questions are never answered.
* ``silent``: name suffixes ("" is every name) whose questions of any type
  are never answered: a DNS server that hangs.

A name the server knows (any record) but not for the asked type gets an
empty answer (NODATA); any other name NXDOMAIN.  Names are compared
ignoring ASCII case.  Listens on 127.0.0.1:53 (UDP), one thread per query,
and exits as soon as its parent (the process it was started from) is gone,
so it never outlives the namespace it serves.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys
import threading

A, PTR, CNAME, AAAA = 1, 12, 5, 28


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode("latin-1") for p in name.split(".") if p) + b"\0"


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _ptr_address(labels: list[str]) -> str | None:
    """The address an ``in-addr.arpa`` / ``ip6.arpa`` question names, as text."""
    low = [x.lower() for x in labels]
    if low[-2:] == ["in-addr", "arpa"] and len(low) == 6:
        return ".".join(reversed(labels[:4]))
    if low[-2:] == ["ip6", "arpa"] and len(low) == 34:
        digits = "".join(reversed(low[:32]))
        try:
            return str(ipaddress.IPv6Address(int(digits, 16)))
        except ValueError:
            return None
    return None


class Zone:
    def __init__(self, cfg: dict):
        def low(d):
            return {k.lower(): v for k, v in d.items()}
        self.a = {k: _as_list(v) for k, v in low(cfg.get("a", {})).items()}
        self.aaaa = {k: _as_list(v) for k, v in low(cfg.get("aaaa", {})).items()}
        self.cname = low(cfg.get("cname", {}))
        self.ptr = {}
        for addr, name in cfg.get("ptr", {}).items():
            self.ptr[str(ipaddress.ip_address(addr))] = name
        self.drop = list(cfg.get("drop", []))
        self.silent = [s.lower() for s in cfg.get("silent", [])]

    def knows(self, name: str) -> bool:
        return name in self.a or name in self.aaaa or name in self.cname

    def answer(self, labels: list[str], qtype: int):
        """(records, rcode) for a question, or None: never answer it."""
        name = ".".join(labels).lower()
        if any(s == "" or name == s or name.endswith("." + s) for s in self.silent):
            return None
        addr = _ptr_address(labels)
        if addr is not None:
            if any(addr.startswith(p) for p in self.drop):
                return None
            target = self.ptr.get(str(ipaddress.ip_address(addr))) if qtype == PTR else None
            if target:
                return [(PTR, _encode_name(target))], 0
            return [], 3
        records = []
        for _ in range(8):                      # a CNAME chain, bounded
            target = self.cname.get(name)
            if target is None:
                break
            records.append((CNAME, _encode_name(target)))
            name = target.lower()
        if qtype == A:
            records += [(A, socket.inet_pton(socket.AF_INET, x)) for x in self.a.get(name, [])]
        elif qtype == AAAA:
            records += [(AAAA, socket.inet_pton(socket.AF_INET6, x))
                        for x in self.aaaa.get(name, [])]
        if records or self.knows(name):
            return records, 0
        return [], 3


def main() -> None:
    with open(sys.argv[1]) as f:
        zone = Zone(json.load(f))
    parent = os.getppid()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    s.settimeout(0.2)
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").close()

    def answer(q: bytes, addr) -> None:
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode("latin-1"))
            i += 1 + q[i]
        qtype = struct.unpack_from(">H", q, i + 1)[0]
        question = q[12:i + 5]
        got = zone.answer(labels, qtype)
        if got is None:
            return                                      # never answered
        records, rcode = got
        # the first record is owned by the question's name; after a CNAME
        # the next is owned by its target (its rdata, written out whole)
        body, owner = b"", b"\xc0\x0c"
        for rtype, rdata in records:
            body += owner + struct.pack(">HHIH", rtype, 1, 60, len(rdata)) + rdata
            if rtype == CNAME:
                owner = rdata
        head = q[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(records), 0, 0)
        s.sendto(head + question + body, addr)

    while os.getppid() == parent:
        try:
            q, addr = s.recvfrom(512)
        except TimeoutError:
            continue
        threading.Thread(target=answer, args=(q, addr), daemon=True).start()


if __name__ == "__main__":
    main()
