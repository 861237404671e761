"""Random tcprules files and the queries that probe them.

Rules and queries draw on the same small pools of addresses, names and users,
so most queries hit several keys at once and the *order* of the probes
(spec B.3) decides: exact vs ``=host`` vs prefixes vs domain suffixes vs the
catch-all.  Every key form of spec B.1 appears, including keys that can never
match (``1.2.3``, CIDR text, a leading blank, non-canonical octets, upper
case names) and duplicates.
"""

from __future__ import annotations

import random

from acl.ucspi_addr import ip6_fmt

OCTETS = [0, 1, 2, 5, 7, 10, 99, 200, 254, 255]
V4_NETS = [1, 10, 127, 192]
GROUPS = [0, 0, 0, 1, 0xA, 0x10, 0xDB8, 0x2001, 0xFFFF]
LABELS = ["a", "b", "www", "mail", "h", "corp"]
DOMAINS = ["example.com", "example.org", "com", "b.example.com", "x.y.net"]
USERS = ["joe", "bob", "root", "x-y"]
QUOTES = ['"', "'", "/", "|", "x", "%"]
VALUE_CHARS = "abc XYZ019=,:@#.-_\"'/\tü"
NAME_CHARS = "ABCXYZ_09,:@ "


class Pools:
    def __init__(self, r: random.Random):
        self.r = r
        self.v4 = sorted({self._v4() for _ in range(18)})
        self.v6 = sorted({ip6_fmt(self._v6()) for _ in range(14)})
        self.hosts = sorted({f"{r.choice(LABELS)}.{r.choice(DOMAINS)}" for _ in range(8)})

    def _v4(self) -> str:
        r = self.r
        return ".".join(str(x) for x in (r.choice(V4_NETS), r.choice(OCTETS),
                                          r.choice(OCTETS), r.choice(OCTETS)))

    def _v6(self) -> bytes:
        r = self.r
        groups = [r.choice(GROUPS) for _ in range(8)]
        if r.random() < 0.15:
            groups[:6] = [0, 0, 0, 0, 0, 0xFFFF]      # v4-mapped text
        return b"".join(g.to_bytes(2, "big") for g in groups)


def _value(r: random.Random, quote: str) -> str:
    chars = [c for c in VALUE_CHARS if c != quote]
    return "".join(r.choice(chars) for _ in range(r.randrange(0, 6)))


def _env(r: random.Random) -> str:
    items = []
    for _ in range(r.choice([0, 0, 1, 1, 2, 3])):
        name = r.choice(["A", "B", "WHO", "X_Y"])
        if r.random() < 0.1:
            name = "".join(r.choice(NAME_CHARS) for _ in range(r.randrange(1, 4)))
        q = r.choice(QUOTES)
        items.append(f",{name}={q}{_value(r, q)}{q}")
    return "".join(items)


def _v4_range(r: random.Random, addr: str) -> str:
    parts = addr.split(".")
    lo = r.choice([0, 1, 2, 5, 9, 200, 250])
    hi = lo + r.choice([-3, 0, 1, 2, 5, 60, 300])
    lo_s, hi_s = str(lo), str(max(hi, 0))
    if r.random() < 0.2:
        lo_s = "0" + lo_s                             # leading zero, re-printed
    if r.random() < 0.05:
        lo_s = ""                                     # empty bound is 0
    where = r.choice([3, 3, 3, 2, 1])
    if where >= 2 and r.random() < 0.15:
        # a second '-' in an earlier octet: only the first '-' is a range,
        # the later one stays in every key as written
        parts[1] += f"-{int(parts[1]) + r.choice([0, 1, 3])}"
    if where == 3:
        return ".".join(parts[:3] + [f"{lo_s}-{hi_s}"])
    # a range in an inner octet of a prefix: 10.2-3.
    return ".".join(parts[:where] + [f"{lo_s}-{hi_s}"]) + "."


def _v6_prefix(r: random.Random, text: str) -> str:
    cuts = [i + 1 for i, c in enumerate(text) if c in ":."]
    return text[:r.choice(cuts)] if cuts else text


def random_key(r: random.Random, p: Pools, previous: list[str]) -> str:
    kind = r.choices(
        ["v4", "v4pfx", "v4range", "v6", "v6pfx", "host", "domain", "anyname", "empty",
         "info_ip", "info_host", "info_pfx", "junk", "dup"],
        weights=[14, 12, 6, 8, 8, 7, 7, 2, 2, 5, 4, 2, 5, 6])[0]
    if kind == "dup" and previous:
        return r.choice(previous)
    if kind == "v4":
        return r.choice(p.v4)
    if kind == "v4pfx":
        parts = r.choice(p.v4).split(".")
        return ".".join(parts[:r.randrange(1, 4)]) + "."
    if kind == "v4range":
        return _v4_range(r, r.choice(p.v4))
    if kind == "v6":
        return r.choice(p.v6)
    if kind == "v6pfx":
        return _v6_prefix(r, r.choice(p.v6))
    if kind == "host":
        return "=" + r.choice(p.hosts)
    if kind == "domain":
        host = r.choice(p.hosts)
        dots = [i for i, c in enumerate(host) if c == "."]
        return "=" + host[r.choice(dots):]
    if kind == "anyname":
        return "="
    if kind == "empty":
        return ""
    if kind == "info_ip":
        return f"{r.choice(USERS)}@{r.choice(p.v4 + p.v6)}"
    if kind == "info_host":
        return f"{r.choice(USERS)}@={r.choice(p.hosts)}"
    if kind == "info_pfx":
        return f"{r.choice(USERS)}@{r.choice(p.v4).rsplit('.', 1)[0]}."
    a = r.choice(p.v4)
    return r.choice([
        a.rsplit(".", 1)[0],                          # 1.2.3: an exact key, never matches
        " " + a,                                      # leading blank is part of the key
        a + ".",
        "0" + a,
        r.choice(p.v6) + "/64",                       # no CIDR in tcprules
        "=" + r.choice(p.hosts).upper(),              # keys are case-sensitive
        "::ffff:" + a,                                # only matches with -6 / tcprulescheck
        "::ffff:" + a.rsplit(".", 1)[0] + ".",
        ".",
    ])


def random_rules(r: random.Random, p: Pools, lines: int | None = None) -> tuple[bytes, int]:
    """A rules file the real tcprules accepts; returns (text, rule count)."""
    out = []
    keys: list[str] = []
    n = lines if lines is not None else r.randrange(1, 40)
    for _ in range(n):
        if r.random() < 0.08:
            out.append(r.choice(["# a comment", "#", ""]))
        key = random_key(r, p, keys)
        keys.append(key)
        verb = "deny" if r.random() < 0.45 else "allow"
        line = f"{key}:{verb}{_env(r)}"
        if r.random() < 0.1:
            line += r.choice([" ", "\t", "  \t"])
        out.append(line)
    text = "\n".join(out)
    if r.random() < 0.85:
        text += "\n"                                  # else: last line without newline
    return text.encode(), n


def random_query(r: random.Random, p: Pools) -> tuple[str, str | None, str | None]:
    k = r.random()
    if k < 0.55:
        ip = r.choice(p.v4)
        if r.random() < 0.3:                          # a neighbour, for ranges/prefixes
            parts = ip.split(".")
            parts[3] = str(r.choice(OCTETS + [3, 6, 8, 251]))
            ip = ".".join(parts)
    elif k < 0.9:
        ip = r.choice(p.v6)
    else:
        ip = "::ffff:" + r.choice(p.v4)
    host = None
    if r.random() < 0.55:
        host = r.choice(p.hosts)
        if r.random() < 0.1:
            host = host.upper()
    info = r.choice(USERS) if r.random() < 0.35 else None
    return ip, host, info


# -- keys that all share one cdb hash ----------------------------------------

_BLOCK_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _djb_step(h: int, block: bytes) -> int:
    for b in block:
        h = ((h * 33) & 0xFFFFFFFF) ^ b
    return h


def _colliding_blocks(state: int) -> tuple[bytes, bytes, int]:
    """Two distinct two-letter blocks that take djb's hash from ``state`` to
    the same value (xor only touches the low byte, so pairs are common)."""
    seen: dict[int, bytes] = {}
    for a in _BLOCK_CHARS:
        for b in _BLOCK_CHARS:
            block = bytes((a, b))
            h = _djb_step(state, block)
            if h in seen:
                return seen[h], block, h
            seen[h] = block
    raise AssertionError(f"no colliding pair of blocks from state {state:#x}")


def colliding_keys(n: int) -> tuple[list[bytes], int]:
    """``2**n`` distinct letter keys with one cdb hash, and that hash: a chain
    of ``n`` colliding block pairs, every combination of choices."""
    state = 5381
    pairs = []
    for _ in range(n):
        a, b, state = _colliding_blocks(state)
        pairs.append((a, b))
    keys = [b""]
    for a, b in pairs:
        keys = [k + a for k in keys] + [k + b for k in keys]
    return keys, state
