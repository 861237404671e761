"""Names longer than libwrap keeps: acl match against the real ``tcpdmatch -d``.

libwrap holds the client's and the server's host names, the daemon name and
the remote user in ``STRING_LENGTH`` (128) byte buffers and cuts each to 127
characters (``STRN_CPY`` in ``request_set`` and ``sock_hostname``).  A PTR
name of 128 characters or more is therefore looked up forward *cut*: that
usually fails ("paranoid"), and succeeds when the hosts file names the cut
name itself at the same address (then the cut name is the verified name).

Both answer from the same private hosts file: tcpdmatch in a mount
namespace (tests/tcpw/tcpdmatch.py), ``acl match`` through
``acl.resolve.HostsFileBackend`` (and, as a second twin, glibc's own files
module through ``SystemBackend`` inside the same kind of namespace is what
the live tests in tests/wrap do).
"""

from __future__ import annotations

import pytest

from acl.cli.match_tcpw import explain
from acl.compile.tcpw import load_hosts_access
from acl.model import Verdict
from acl.resolve import HostsFileBackend, Resolver

from .tcpdmatch import build_shim, run_batch, unavailable

LONG = {n: "a" * 60 + "." + "b" * (n - 70) + ".lab.test" for n in (126, 127, 128, 130)}
CUT = "e" * 60 + "." + "f" * 60 + ".lab.test"          # 130; its first 127 are listed too
assert all(len(v) == n for n, v in LONG.items()) and len(CUT) == 130
HOSTS = "127.0.0.1\tlocalhost\n" + "".join(
    f"127.0.1.{n - 100}\t{name}\n" for n, name in LONG.items()) + (
    f"127.0.1.40\t{CUT}\n127.0.1.40\t{CUT[:127]}\n")
D130 = "d" * 130
U130 = "u" * 130

ALLOW = f"""\
by-domain: .lab.test
by-known: KNOWN
by-glob: *.LAB.test
by-full: {CUT}
by-cut: {CUT[:127]}
{D130[:127]}: ALL
by-user: {U130[:127]}@ALL
"""
DENY = "by-paranoid: PARANOID\nALL: ALL\n"
DAEMONS = ["by-domain", "by-known", "by-glob", "by-full", "by-cut", "by-paranoid"]
QUERIES = [(d, c) for d in DAEMONS for c in [*LONG.values(), CUT]] + [
    (D130, "127.0.0.1"), (D130[:127] + "x", "127.0.0.1"), (D130[:126], "127.0.0.1"),
    ("by-user", f"{U130}@127.0.0.1"), ("by-user", f"{U130[:126]}@127.0.0.1"),
]
WORD = {Verdict.ALLOW: "granted", Verdict.DENY: "denied", Verdict.DELEGATE: "delegated"}


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_long_names_are_cut_as_libwrap_cuts_them(tmp_path):
    shim = build_shim(tmp_path)
    real = run_batch(tmp_path / "real", shim, ALLOW.encode(), DENY.encode(), HOSTS, QUERIES)
    (tmp_path / "hosts.allow").write_text(ALLOW)
    (tmp_path / "hosts.deny").write_text(DENY)
    resolver = Resolver(HostsFileBackend(text=HOSTS))
    layer, _ = load_hosts_access(str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"),
                                 resolver)
    bad = []
    for (d, c), ans in zip(QUERIES, real, strict=True):
        mine = tuple(WORD[o.decision.verdict] for o in explain(layer, resolver, d, c))
        if mine != ans.verdicts:
            bad.append(f"{d} {c}: acl {mine} != tcpdmatch {ans.verdicts}\n{ans.text}")
    assert not bad, "\n".join(bad)
    # the cases probe what they say: 127 kept, 128 and 130 paranoid, the cut
    # name verified when the hosts file lists it
    said = {q: a.verdicts for q, a in zip(QUERIES, real, strict=True)}
    assert said["by-domain", LONG[127]] == ("granted",)
    assert said["by-domain", LONG[128]] == said["by-domain", LONG[130]] == ("denied",)
    assert said["by-paranoid", LONG[128]] == ("denied",)
    assert said["by-cut", CUT] == ("granted",) and said["by-full", CUT] == ("denied",)
    assert said[D130, "127.0.0.1"] == said["by-user", f"{U130}@127.0.0.1"] == ("granted",)


def test_resolver_cuts_before_checking():
    r = Resolver(HostsFileBackend(text=HOSTS))
    assert r.verify("127.0.1.27") == LONG[127]
    assert r.verify("127.0.1.28") == "paranoid"
    assert r.verify("127.0.1.40") == CUT[:127]
