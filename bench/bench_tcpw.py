"""hosts.allow/hosts.deny decisions: acl's compiled layer vs libwrap's own ``hosts_ctl()``.

What is compared (the same run, the same files, the same queries):

* Generated file pairs of 10, 1,000 and 100,000 rules: hosts.allow holds
  exact addresses, ``a.b.c.`` prefixes, ``net/len`` and ``net/mask`` rules,
  ``[v6]/len`` rules for several daemons, then a few name rules
  (``.example.com``, ``LOCAL``, ``KNOWN``); hosts.deny ends in ``ALL: ALL``.
* QUERIES clients (IPv4, IPv6, v4-mapped) hitting early, middle and late
  rules and none, for a few daemons.
* **libwrap**: ``hosts_ctl(daemon, "unknown", addr, "unknown")`` from
  ``libwrap.so.0`` through ctypes, with its ``hosts_allow_table`` /
  ``hosts_deny_table`` globals pointed at the generated files (it re-reads
  them on every call, as it does in tcpd).
* **acl**: ``HostsAccessLayer.check`` on the same files, compiled once.

Before timing, both must agree on every query.  Each benchmark times one
pass over its queries; the per-decision cost (fastest pass / queries) and
the libwrap/acl ratio per size are printed at the end and kept in
``extra_info``.

Run: ``python -m pytest bench/bench_tcpw.py --benchmark-only -s``.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from acl.compile.tcpw import load_hosts_access  # noqa: E402
from acl.core import IMPLEMENTATION  # noqa: E402
from acl.model import Request  # noqa: E402

SIZES = (10, 1_000, 100_000)
QUERIES = 400
DAEMONS = ["sshd", "ftpd", "in.telnetd", "imapd"]
_RESULTS: dict[tuple[str, int], float] = {}
_TMP = Path(tempfile.mkdtemp(prefix="bench-tcpw."))
# the generated files go when the process ends (bench_serve imports this module too)
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def _files(n: int, seed: int = 7):
    r = random.Random(seed + n)
    lines, targets = [], []
    for i in range(max(n - 5, 1)):
        daemon = r.choice(DAEMONS + ["ALL"])
        a = ipaddress.IPv4Address((10 << 24) + r.randrange(2**24))
        kind = r.random()
        if kind < 0.5:
            pat = str(a)
        elif kind < 0.7:
            pat = ".".join(str(a).split(".")[:3]) + "."
        elif kind < 0.8:
            net = ipaddress.ip_network((int(a) >> 8 << 8, 24))
            pat = str(net)
        elif kind < 0.9:
            net = ipaddress.ip_network((int(a) >> 12 << 12, 20))
            pat = f"{net.network_address}/{net.netmask}"
        else:
            v6 = ipaddress.IPv6Address((0x20010DB8 << 96) + (r.randrange(2**16) << 64))
            pat = f"[{v6}]/64"
            a = v6 + 5
        lines.append(f"{daemon}: {pat}\n")
        targets.append((i, daemon, a))
    lines += ["sshd: .example.com\n", "ALL: LOCAL\n", "ftpd: KNOWN EXCEPT 10.\n",
              "in.telnetd: good.example.org\n", "imapd: *.lan\n"]
    allow = _TMP / f"hosts.allow.{n}"
    deny = _TMP / f"hosts.deny.{n}"
    allow.write_text("".join(lines[:n] if n >= 5 else lines))
    deny.write_text("ALL: ALL\n")
    return str(allow), str(deny), targets


def _queries(targets, seed: int = 11):
    r = random.Random(seed)
    out = []
    for k in range(QUERIES):
        kind = k % 5
        if kind < 3 and targets:
            # a query that a rule early / in the middle / late in the file decides
            pos = [0.05, 0.5, 0.95][kind]
            i, daemon, a = targets[min(int(pos * len(targets)) + r.randrange(3), len(targets) - 1)]
            if daemon == "ALL":
                daemon = r.choice(DAEMONS)
            client = str(a)
            if a.version == 4 and r.random() < 0.2:
                client = "::ffff:" + client
        elif kind == 3:
            daemon, client = r.choice(DAEMONS), f"192.0.2.{r.randrange(256)}"
        else:
            daemon, client = r.choice(DAEMONS), f"2001:db8:ffff::{r.randrange(9999)}"
        out.append((daemon, client))
    return out


class LibWrap:
    """``hosts_ctl`` from the installed libwrap.so.0."""

    def __init__(self):
        self.lib = ctypes.CDLL("libwrap.so.0")
        self.lib.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
        self.lib.hosts_ctl.restype = ctypes.c_int
        self._keep = []

    def use(self, allow: str, deny: str):
        a, d = ctypes.create_string_buffer(allow.encode()), ctypes.create_string_buffer(deny.encode())
        self._keep = [a, d]
        ctypes.c_void_p.in_dll(self.lib, "hosts_allow_table").value = ctypes.addressof(a)
        ctypes.c_void_p.in_dll(self.lib, "hosts_deny_table").value = ctypes.addressof(d)

    def ctl(self, daemon: bytes, addr: bytes) -> int:
        return self.lib.hosts_ctl(daemon, b"unknown", addr, b"unknown")


_CASES = {}


def _case(n: int):
    if n not in _CASES:
        allow, deny, targets = _files(n)
        layer, diags = load_hosts_access(allow, deny)
        assert not diags, diags
        queries = _queries(targets)
        requests = [Request(d, c) for d, c in queries]
        wrapped = [(d.encode(), c.encode()) for d, c in queries]
        _CASES[n] = (allow, deny, layer, requests, wrapped)
    return _CASES[n]


@pytest.fixture(scope="module")
def libwrap():
    try:
        return LibWrap()
    except OSError as exc:
        pytest.skip(f"libwrap.so.0 not loadable: {exc}")


@pytest.mark.parametrize("n", SIZES)
def test_acl_decision(benchmark, n, libwrap):
    """Times one pass of QUERIES HostsAccessLayer.check calls on an n-rule pair."""
    allow, deny, layer, requests, wrapped = _case(n)
    libwrap.use(allow, deny)
    for req, (d, c) in zip(requests, wrapped, strict=True):
        ours = layer.check(req, 0.0).allowed
        assert ours == bool(libwrap.ctl(d, c)), (n, req)
    check = layer.check

    def run():
        for req in requests:
            check(req, 0.0)

    benchmark.pedantic(run, rounds=20 if n < 100_000 else 10, iterations=1, warmup_rounds=1)
    # the minimum: the machine is shared, the fastest pass is the least disturbed
    per = benchmark.stats.stats.min / len(requests)
    _RESULTS[("acl", n)] = per
    benchmark.extra_info.update(per_decision_us=per * 1e6, core=IMPLEMENTATION)


@pytest.mark.parametrize("n", SIZES)
def test_libwrap_hosts_ctl(benchmark, n, libwrap):
    """Times one pass of libwrap hosts_ctl calls (it re-reads both files each call) on an n-rule pair."""
    allow, deny, layer, requests, wrapped = _case(n)
    libwrap.use(allow, deny)
    sample = wrapped if n < 100_000 else wrapped[:40]
    ctl = libwrap.ctl

    def run():
        for d, c in sample:
            ctl(d, c)

    benchmark.pedantic(run, rounds=5 if n < 100_000 else 2, iterations=1)
    per = benchmark.stats.stats.min / len(sample)
    _RESULTS[("libwrap", n)] = per
    benchmark.extra_info.update(per_decision_us=per * 1e6)
    acl = _RESULTS.get(("acl", n))
    if acl:
        benchmark.extra_info["libwrap_over_acl"] = per / acl


def teardown_module(module):
    rows = []
    for n in SIZES:
        acl, lw = _RESULTS.get(("acl", n)), _RESULTS.get(("libwrap", n))
        if acl and lw:
            rows.append(f"  {n:>7} rules: acl {acl * 1e6:8.2f} us   libwrap {lw * 1e6:10.1f} us"
                        f"   libwrap/acl = {lw / acl:8.0f}x")
    if rows:
        print(f"\nhosts_access per decision ({IMPLEMENTATION} core):\n" + "\n".join(rows))
