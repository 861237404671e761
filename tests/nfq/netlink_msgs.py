"""Netlink messages of the queue's kind, built byte by byte for the tests
that feed them to acl's reader (test_attrs.py, test_recv_netlink.py).

Native byte order for the netlink and attribute headers, as the kernel
writes them; the nfqueue payloads inside are the caller's (network order).
"""

from __future__ import annotations

import struct

NFGENMSG_INET = struct.pack("=BBH", 2, 0, 0)     # nfgenmsg: AF_INET, version 0, res_id 0


def attr(kind: int, data: bytes, *, length: int | None = None) -> bytes:
    """One attribute, padded to 4 bytes; ``length`` overrides its header's
    length field (to make it lie)."""
    nla_len = 4 + len(data) if length is None else length
    raw = struct.pack("=HH", nla_len, kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    """One netlink message; ``length`` overrides its header's nlmsg_len."""
    nlmsg_len = 16 + len(body) if length is None else length
    return struct.pack("=IHHII", nlmsg_len, kind, 0, 0, 0) + body
