"""The real tcpserver with IPv6 clients, in a network namespace of our own.

This is the live proof of ucspi's IPv6 text (spec B.4): tcpserver sets
TCPREMOTEIP to the very text it looks the client up by, so for every client
address it must equal acl's ``ip6_fmt``, and tcpserver's decision on textual
IPv6 prefix rules (acl-written cdb) must equal acl's.  The addresses are
chosen to exercise the formatter's corners: single zero groups, equal runs,
runs at either end.  A second test binds a few hundred generated addresses
(any group values, runs of every length anywhere, IPv4-compatible ``::/96``
ones) and checks tcpserver's text against ``ip6_fmt`` itself, the oracle of
the fast path ``client_text`` uses.

Needs root (``unshare -n``); the namespace has only ``lo``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from acl.compile.tcprules import load_tcprules
from acl.model import Request, Verdict
from acl.ucspi_addr import client_text, ip6_fmt

from .real import TCPSERVER

pytestmark = [
    pytest.mark.live, pytest.mark.root,
    pytest.mark.skipif(TCPSERVER is None, reason="tcpserver not installed"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                       or shutil.which("ip") is None,
                       reason="needs root, unshare and ip for a private network namespace"),
]

GROUPS = [0, 0, 0, 1, 0xA, 0xDB8, 0xBEEF]
FIRST = [0x2001, 0xFD00, 0xA, 0x10]


def _addresses(r: random.Random, n: int) -> list[str]:
    out = set()
    while len(out) < n:
        g = [r.choice(FIRST)] + [r.choice(GROUPS) for _ in range(7)]
        if r.random() < 0.3:
            g[1:4] = [0xDB8, 0, 1]                        # shared text prefixes
        out.add(str(ipaddress.IPv6Address(b"".join(x.to_bytes(2, "big") for x in g))))
    return sorted(out)


def _rules(r: random.Random, addrs: list[str]) -> bytes:
    lines = []
    for _ in range(r.randrange(5, 15)):
        text = client_text(r.choice(addrs))[0]
        cuts = [i + 1 for i, c in enumerate(text) if c == ":"]
        key = r.choice([text, text, text[:r.choice(cuts)], text[:r.choice(cuts)]])
        val = r.choice(["v", "a b", "", str(r.randrange(99))])
        lines.append(f'{key}:{r.choice(["allow", "deny"])},X="{val}"')
    lines.append(r.choice([":deny", ':allow,X="default"', "#"]))
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("seed", range(2))
def test_ipv6_clients_in_a_namespace(seed, tmp_path):
    r = random.Random(100 + seed)
    addrs = _addresses(r, 60)
    text = _rules(r, addrs)
    cdb = tmp_path / "rules.cdb"
    out = subprocess.run([sys.executable, "-m", "acl", "compile", str(cdb),
                          str(tmp_path / "rules.tmp")],
                         input=text, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    probe = Path(__file__).with_name("netns_probe.py")
    port = 22900 + seed
    res = subprocess.run(["unshare", "-n", sys.executable, str(probe), TCPSERVER, str(cdb),
                          str(port), *addrs], capture_output=True, timeout=120)
    if res.returncode != 0 and b"unshare" in res.stderr:
        pytest.skip(f"cannot make a network namespace here: {res.stderr!r}")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert len(result["added"]) >= 50, result["added"]
    layer = load_tcprules(cdb, use_host=False)
    seen = {"allow": 0, "deny": 0, "differs_from_rfc5952": 0}
    for a in result["added"]:
        got = result["answers"][a]
        d = layer.check(Request("live6", a), 0.0)
        where = f"{a}\n{text.decode()}"
        if d.verdict is Verdict.DENY:
            assert got == "", where
            seen["deny"] += 1
            continue
        env = dict(line.split("=", 1) for line in got.splitlines() if "=" in line)
        ucspi = client_text(a)[0]
        assert env["TCPREMOTEIP"] == ucspi == ip6_fmt(socket.inet_pton(socket.AF_INET6, a)), where
        assert env.get("X") == dict(d.env).get("X"), where
        seen["allow"] += 1
        if ucspi != a:
            seen["differs_from_rfc5952"] += 1
    print(seen)
    assert seen["allow"] and seen["deny"] and seen["differs_from_rfc5952"], seen


def _generated(r: random.Random, n: int) -> list[str]:
    """Addresses a socket can be bound to (not multicast, not link-local:
    those need a scope): each group zero with odds 0.45, else a small or any
    16-bit value; a few IPv4-compatible ones (::a.b.c.d, which glibc prints
    dotted and ucspi in hex)."""
    out = set()
    while len(out) < n:
        if r.random() < 0.05:
            packed = bytes(12) + bytes(r.randrange(1, 256) for _ in range(4))
        else:
            groups = [0 if r.random() < 0.45 else r.choice([r.randrange(1, 16),
                                                           r.randrange(1, 65536)])
                      for _ in range(8)]
            packed = b"".join(g.to_bytes(2, "big") for g in groups)
        a = ipaddress.IPv6Address(packed)
        if a.is_multicast or a.is_link_local or a.is_loopback or a.is_unspecified \
                or a.ipv4_mapped is not None:
            continue
        out.add(str(a))
    return sorted(out)


@pytest.mark.parametrize("seed", range(2))
def test_tcpremoteip_is_ip6_fmt_of_generated_clients(seed, tmp_path):
    r = random.Random(200 + seed)
    addrs = _generated(r, 150)
    cdb = tmp_path / "rules.cdb"
    out = subprocess.run([sys.executable, "-m", "acl", "compile", str(cdb),
                          str(tmp_path / "rules.tmp")],
                         input=b":allow\n", capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    probe = Path(__file__).with_name("netns_probe.py")
    res = subprocess.run(["unshare", "-n", sys.executable, str(probe), TCPSERVER, str(cdb),
                          str(22910 + seed), *addrs], capture_output=True, timeout=120)
    if res.returncode != 0 and b"unshare" in res.stderr:
        pytest.skip(f"cannot make a network namespace here: {res.stderr!r}")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert len(result["added"]) >= 140, result["added"]
    seen = {"lone_zero": 0, "compat": 0, "trailing_run": 0}
    for a in result["added"]:
        env = dict(line.split("=", 1) for line in result["answers"][a].splitlines() if "=" in line)
        packed = socket.inet_pton(socket.AF_INET6, a)
        assert env["TCPREMOTEIP"] == ip6_fmt(packed) == client_text(a)[0], a
        seen["lone_zero"] += "::" not in a and "0" in a.split(":")
        seen["compat"] += packed[:12] == bytes(12)
        seen["trailing_run"] += ip6_fmt(packed).endswith("::")
    print(seen)
    assert all(seen.values()), seen
