"""Compare acl's decisions with the real tcpdmatch on generated cases.

acl reads each pair twice and both readings must answer as tcpdmatch: with
the full parser alone, and as ``load_hosts_access`` reads them for the
sidecar -- with the fast lane (``acl.core.hosts_scan``, the compiled
scanner), which turns client lists of plain IPv4 patterns into prefixes
without the parser's pattern objects.  Checked against each other only
(tests/tcpw/test_fast_lane.py), a bug shared by both would go unseen.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from acl.cli.match_tcpw import HostNotFound, explain
from acl.compile.tcpw import HostsAccessLayer
from acl.core import hosts_scan
from acl.model import Request
from acl.parse.hosts_access import parse_hosts
from acl.resolve import HostsFileBackend, Resolver

from . import gen
from .tcpdmatch import run_batch

#: the two ways acl reads a pair (see the module docstring)
READERS = {"full parser": None, "fast lane": hosts_scan.v4_client_prefixes}


def ours(case: gen.Case, workdir: Path, scan=None):
    resolver = Resolver(HostsFileBackend(text=gen.HOSTS))
    allow = parse_hosts(str(workdir / "hosts.allow"), case.allow, dry_run=True,
                        scan_clients=scan)
    deny = parse_hosts(str(workdir / "hosts.deny"), case.deny, dry_run=True,
                       scan_clients=scan)
    layer = HostsAccessLayer(allow, deny, resolver)
    out = []
    for d, c in case.queries:
        try:
            outcomes = explain(layer, resolver, d, c)
        except HostNotFound:
            outcomes = []
        out.append(outcomes)
        for o in outcomes:
            # the engine's entry point must say the same as acl match's
            q = o.query
            req = Request(q.daemon, q.client.addr, server=q.server.addr if q.server_sin else None,
                          server_port=q.server_port, host=q.client.name, user=q.user)
            # (which names it looked up is acl-wrap's business: not compared)
            got = replace(layer.check(req, 0.0), client_name=None, server_name=None)
            assert got == o.decision, (d, c)
    return out


def compare(case: gen.Case, workdir: Path, shim: str) -> list[str]:
    """Every disagreement for one case, as readable text (empty: none)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for path, body in case.files.items():
        Path(path).write_text(body, encoding="latin-1")
    real = run_batch(workdir, shim, case.allow, case.deny, gen.HOSTS, case.queries)
    bad = []
    for reader, scan in READERS.items():
        mine = ours(case, workdir, scan)
        for (d, c), outs, ans in zip(case.queries, mine, real, strict=True):
            words = tuple(o.word for o in outs)
            matched = tuple((os.path.basename(o.decision.location.path),
                             o.decision.location.line) for o in outs if o.index is not None)
            if words != ans.verdicts or matched != ans.matched:
                bad.append(f"seed {case.seed} ({reader}): {d} {c}: acl {words} {matched} "
                           f"!= tcpdmatch {ans.verdicts} {ans.matched}\n"
                           f"allow={case.allow!r}\ndeny={case.deny!r}\nfiles={case.files!r}\n"
                           f"{ans.text}")
    return bad


def run_many(seeds, tmp: Path, shim: str, rules=(1, 12), queries=170, workers=2):
    """Generate and compare one case per seed; returns (queries asked, disagreements)."""
    def one(seed):
        workdir = tmp / f"case{seed}"
        g = gen.Gen(seed, str(workdir))
        r = g.r
        case = g.case(r.randint(*rules), r.randint(*rules), queries)
        return len(case.queries), compare(case, workdir, shim)

    total, bad = 0, []
    with ThreadPoolExecutor(workers) as pool:
        for n, b in pool.map(one, seeds):
            total += n
            bad.extend(b)
    return total, bad
