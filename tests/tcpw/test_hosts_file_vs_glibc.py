"""The private hosts-file resolvers against glibc's own ``files`` module.

``acl.resolve.HostsFileBackend`` (hosts_access names) and
``acl.parse.xinetd_resolve.HostsResolver`` (xinetd names) stand in for the C
library when a policy names ``[names] hosts_file`` and in every name test.
Here generated hosts files -- IPv4, IPv6, ``::1``, ``::ffff:a.b.c.d``
lines, repeated addresses and names, mixed case, names that read as
numbers, addresses alone on a line (glibc names them ``""``, and the empty
name is asked forward too) -- are bind-mounted over /etc/hosts in a private mount namespace
(``hosts: files`` only, so nothing leaves the machine), and the real
``getnameinfo``/``getaddrinfo`` answer the same questions: reverse,
forward for IPv4 and for IPv6 (address sets), and forward for both
families with the official name, every entry counted (``acl check
--hosts-file`` counts them as tcpdchk does).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys

import pytest

from acl.parse.xinetd_resolve import HostsResolver
from acl.resolve import HostsFileBackend

from .tcpdmatch import NSSWITCH, unavailable

SEEDS = range(40)

_ASK = r"""
import json, socket, sys
qs = json.load(open(sys.argv[1]))
out = {"rev": [], "fwd": [], "fwd6": [], "any": []}
for fam, addr in qs["rev"]:
    try:
        out["rev"].append(socket.getnameinfo((addr, 0), socket.NI_NAMEREQD)[0])
    except OSError:
        out["rev"].append(None)
for name in qs["fwd"]:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        out["fwd"].append(sorted({i[4][0] for i in infos}))
    except OSError:
        out["fwd"].append([])
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET6, socket.SOCK_STREAM)
        out["fwd6"].append(sorted({i[4][0] for i in infos}))
    except OSError:
        out["fwd6"].append([])
    try:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
        out["any"].append([infos[0][3], sorted(i[4][0] for i in infos)])
    except OSError:
        out["any"].append(None)
json.dump(out, sys.stdout)
"""

_SCRIPT = r"""
set -u
mount --bind "$1/hosts" /etc/hosts || exit 97
mount --bind "$1/nss" /etc/nsswitch.conf || exit 98
exec "$2" "$1/ask.py" "$1/q.json"
"""


def _hosts(seed: int) -> tuple[str, list[str], list[str]]:
    r = random.Random(seed)
    v4 = [f"127.0.{r.randrange(3)}.{r.randrange(1, 6)}" for _ in range(6)]
    v6 = ["::1", "2001:db8::1", "2001:db8::2"] + [f"::ffff:{a}" for a in v4[:3]]
    names = [f"h{i}.lab.test" for i in range(8)] + ["localhost", "Mixed.Lab.Test", "solo",
                                                     "127.0.0.5", "10.1", "2001:db8::9"]
    lines = []
    for _ in range(r.randint(3, 12)):
        addr = r.choice(v4 + v6 + ["127.0.0.1"])
        if r.random() < 0.15:       # an address alone, maybe with blanks or a comment
            lines.append(addr + r.choice(["", " ", "\t", " # no name"]))
            continue
        lines.append(f"{addr}\t" + " ".join(r.sample(names, r.randint(1, 3))))
    return ("\n".join(lines) + "\n", sorted(set(v4 + v6 + ["127.0.0.1", "127.0.9.9"])),
            [*names, ""])


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_private_hosts_resolvers_answer_as_glibc(tmp_path):
    asked = 0
    bad = []
    for seed in SEEDS:
        d = tmp_path / f"s{seed}"
        d.mkdir()
        text, addrs, names = _hosts(seed)
        rev = [(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addrs]
        (d / "hosts").write_text(text)
        (d / "nss").write_text(NSSWITCH)
        (d / "ask.py").write_text(_ASK)
        (d / "q.json").write_text(json.dumps({"rev": rev, "fwd": names}))
        proc = subprocess.run(["unshare", "-m", "sh", "-c", _SCRIPT, "sh", str(d), sys.executable],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        real = json.loads(proc.stdout)
        backend, xinetd = HostsFileBackend(text=text), HostsResolver(text)
        for (fam, addr), want in zip(rev, real["rev"], strict=True):
            packed = socket.inet_pton(fam, addr)
            mine = backend.reverse(fam, packed)
            # glibc compares names only up to case; the first line's spelling is kept
            if mine != want or xinetd.reverse(addr) != want:
                bad.append(f"seed {seed}: reverse {addr}: glibc {want!r}, hosts_access "
                           f"{mine!r}, xinetd {xinetd.reverse(addr)!r}\n{text}")
            asked += 1
        for name, want in zip(names, real["fwd"], strict=True):
            fwd = backend.forward(name, socket.AF_INET)
            mine = sorted({socket.inet_ntop(socket.AF_INET, a) for a in fwd[1]}) if fwd else []
            if mine != want:
                bad.append(f"seed {seed}: forward {name}: glibc {want}, hosts_access {mine}\n{text}")
            asked += 1
        for name, want in zip(names, real["fwd6"], strict=True):
            fwd = backend.forward(name, socket.AF_INET6)
            mine = sorted({socket.inet_ntop(socket.AF_INET6, a) for a in fwd[1]}) if fwd else []
            if mine != want:
                bad.append(f"seed {seed}: forward6 {name}: glibc {want}, hosts_access {mine}\n{text}")
            asked += 1
        for name, want in zip(names, real["any"], strict=True):
            hit = backend.addrinfo(name)
            mine = [hit[0], sorted(socket.inet_ntop(*a) for a in hit[1])] if hit else None
            if mine != want:
                bad.append(f"seed {seed}: addrinfo {name}: glibc {want}, hosts_access {mine}\n{text}")
            asked += 1
    assert not bad, "\n".join(bad[:5])
    assert asked >= 40 * 50
