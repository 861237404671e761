"""A DNS server for one test, run inside the sidecar's private network
namespace (``unshare -n``: nothing but ``lo``) by test_names_slow_dns.py.

Usage: ``python3 fake_dns.py CONFIG.json``; CONFIG names ``ptr`` (address ->
name), ``a`` (name -> address) and ``drop`` (address prefixes whose PTR
queries are never answered: a DNS server that hangs).  Anything else is
NXDOMAIN.  Listens on 127.0.0.1:53 (UDP), one thread per query, and exits
as soon as its parent (the process it was started from) is gone, so it
never outlives the sidecar whose namespace it serves.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    parent = os.getppid()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    s.settimeout(0.2)

    def answer(q: bytes, addr) -> None:
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        qtype = struct.unpack_from(">H", q, i + 1)[0]
        question = q[12:i + 5]
        rtype, rdata = 0, None
        if labels[-2:] == ["in-addr", "arpa"] and qtype == 12:
            ip = ".".join(reversed(labels[:4]))
            if any(ip.startswith(p) for p in cfg["drop"]):
                return                                  # never answered
            name = cfg["ptr"].get(ip)
            if name:
                rtype = 12
                rdata = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        elif qtype == 1 and ".".join(labels) in cfg["a"]:
            rtype, rdata = 1, socket.inet_aton(cfg["a"][".".join(labels)])
        if rdata is None:
            s.sendto(q[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question, addr)
            return
        ans = b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, 60, len(rdata)) + rdata
        s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + ans, addr)

    while os.getppid() == parent:
        try:
            q, addr = s.recvfrom(512)
        except TimeoutError:
            continue
        threading.Thread(target=answer, args=(q, addr), daemon=True).start()


if __name__ == "__main__":
    main()
