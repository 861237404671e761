"""The real tcpserver with IPv6 clients, in a network namespace of our own.

This is the live proof of ucspi's IPv6 text (spec B.4): tcpserver sets
TCPREMOTEIP to the very text it looks the client up by, so for every client
address it must equal acl's ``ip6_fmt``, and tcpserver's decision on textual
IPv6 prefix rules (acl-written cdb) must equal acl's.  The addresses are
chosen to exercise the formatter's corners: single zero groups, equal runs,
runs at either end.

Needs root (``unshare -n``); the namespace has only ``lo``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acl.compile.tcprules import load_tcprules
from acl.model import Request, Verdict
from acl.ucspi_addr import client_text

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
    import ipaddress
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
    out = subprocess.run(["acl", "compile", str(cdb), str(tmp_path / "rules.tmp")],
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
        assert env["TCPREMOTEIP"] == ucspi, where
        assert env.get("X") == dict(d.env).get("X"), where
        seen["allow"] += 1
        if ucspi != a:
            seen["differs_from_rfc5952"] += 1
    print(seen)
    assert seen["allow"] and seen["deny"] and seen["differs_from_rfc5952"], seen
