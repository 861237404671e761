"""tcprules decisions per second: acl's layer vs pure-cdb reading the same cdb.

What is compared (the same run, the same inputs):

* One generated rules file of RULES lines (exact IPv4, IPv4 prefixes and
  ranges, exact and prefix IPv6 in ucspi text, ``=host``, ``=.domain``,
  ``info@ip``, a final ``:deny``), compiled to cdb bytes by acl's writer
  (byte-identical to tcprules, see tests/tcprules).
* QUERIES prebuilt requests: IPv4, IPv6, v4-mapped clients, some with a host
  name and a remote user.
* **acl**: ``TcprulesLayer.check`` on a layer loaded from the cdb bytes
  (keys in a dict, IPv4 prefixes on the prefix core).
* **pure-cdb**: tcpserver's own probe sequence (spec B.3) where each probe
  is ``cdblib.Reader.get`` on the same cdb bytes, and the data is decoded the
  way tcpserver does.  It uses acl's ucspi text formatter for the client
  address (pure-cdb has none), so both sides do the same conversion work.

Before timing, both sides must agree on every query (verdict and
environment).  Inputs are built at import, outside the timed code.

The peer benchmark also times 7 back-to-back (acl, peer) round pairs in
process CPU time and reports the median ratio.  Rates use each side's best of 5 rounds (the round least disturbed by other
work on the machine).  Run:
``python -m pytest bench/bench_tcprules.py --benchmark-only -s``; the ratio
is printed and kept in the peer benchmark's extra_info.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import cdblib

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from acl.cdb import make_cdb  # noqa: E402
from acl.compile.tcprules import decode_data, layer_from_cdb  # noqa: E402
from acl.core import IMPLEMENTATION  # noqa: E402
from acl.model import Request, Verdict  # noqa: E402
from acl.parse.tcprules import parse_tcprules, rules_to_records  # noqa: E402
from acl.ucspi_addr import client_text, ip6_fmt  # noqa: E402

RULES = 3000
QUERIES = 20000
_RESULTS: dict[str, float] = {}


def _v4(r: random.Random) -> str:
    return f"{r.choice([10, 172, 192, 100])}.{r.randrange(64)}.{r.randrange(256)}.{r.randrange(256)}"


def _v6(r: random.Random) -> str:
    groups = [0x2001, 0xDB8, r.choice([0, 1, 2]), r.choice([0, 5])] + [
        r.choice([0, 1, r.randrange(65536)]) for _ in range(4)]
    return ip6_fmt(b"".join(g.to_bytes(2, "big") for g in groups))


def build_inputs(seed: int = 1):
    r = random.Random(seed)
    lines = []
    v4s = [_v4(r) for _ in range(1200)]
    v6s = [_v6(r) for _ in range(400)]
    hosts = [f"h{i}.d{i % 40}.example.com" for i in range(300)]
    for _ in range(RULES - 1):
        kind = r.random()
        a = r.choice(v4s)
        if kind < 0.35:
            key = a
        elif kind < 0.55:
            key = ".".join(a.split(".")[:r.choice([2, 3])]) + "."
        elif kind < 0.6:
            key = a.rsplit(".", 1)[0] + f".{r.randrange(250)}-{r.randrange(250)}"
        elif kind < 0.72:
            key = r.choice(v6s)
        elif kind < 0.78:
            t = r.choice(v6s)
            key = t[:t.rfind(":") + 1]
        elif kind < 0.9:
            key = "=" + r.choice(hosts)
        elif kind < 0.95:
            key = "=." + r.choice(hosts).split(".", 1)[1]
        else:
            key = f"u{r.randrange(20)}@{a}"
        env = f',WHO="r{len(lines)}"' if r.random() < 0.5 else ""
        lines.append(f"{key}:{r.choice(['allow', 'deny'])}{env}")
    lines.append(":deny")
    text = ("\n".join(lines) + "\n").encode()
    blob = make_cdb((k, d) for k, d, _ in rules_to_records(parse_tcprules(text)))
    requests = []
    for _ in range(QUERIES):
        k = r.random()
        if k < 0.6:
            ip = r.choice(v4s) if r.random() < 0.7 else _v4(r)
        elif k < 0.85:
            ip = r.choice(v6s) if r.random() < 0.7 else _v6(r)
        else:
            ip = "::ffff:" + r.choice(v4s)
        host = r.choice(hosts) if r.random() < 0.3 else None
        info = f"u{r.randrange(20)}" if r.random() < 0.1 else None
        requests.append(Request("bench", ip, host=host, user=info))
    return blob, requests


class PureCdbRules:
    """tcpserver's rules.c probe order over pure-cdb's reader."""

    def __init__(self, blob: bytes):
        self.reader = cdblib.Reader(blob)

    def decide(self, request: Request):
        ip, _packed = client_text(request.client)
        key = self._probe(ip.encode(), _enc(request.host), _enc(request.user))
        if key is None:
            return Verdict.ALLOW, ()
        deny, env = decode_data(key)
        return (Verdict.DENY, ()) if deny else (Verdict.ALLOW, env)

    def _probe(self, ip: bytes, host: bytes | None, info: bytes | None):
        get = self.reader.get
        if info is not None:
            d = get(info + b"@" + ip)
            if d is not None:
                return d
            if host is not None:
                d = get(info + b"@=" + host)
                if d is not None:
                    return d
        d = get(ip)
        if d is not None:
            return d
        if host is not None:
            d = get(b"=" + host)
            if d is not None:
                return d
        for n in range(len(ip), 0, -1):
            if ip[n - 1] in b".:":
                d = get(ip[:n])
                if d is not None:
                    return d
        if host is not None:
            for i, c in enumerate(host):
                if c == 0x2E:
                    d = get(b"=" + host[i:])
                    if d is not None:
                        return d
            d = get(b"=")
            if d is not None:
                return d
        return get(b"")


def _enc(s: str | None) -> bytes | None:
    return None if s is None else s.encode("utf-8", "surrogateescape")


BLOB, REQUESTS = build_inputs()
LAYER = layer_from_cdb(BLOB, "bench.cdb")
PEER = PureCdbRules(BLOB)


def _agree() -> None:
    for q in REQUESTS:
        d = LAYER.check(q, 0.0)
        want = PEER.decide(q)
        got = (d.verdict, d.env if d.verdict is Verdict.ALLOW else ())
        assert got == want, (q, got, want)


_agree()


def _acl_round():
    check = LAYER.check
    for q in REQUESTS:
        check(q, 0.0)


def _peer_round():
    decide = PEER.decide
    for q in REQUESTS:
        decide(q)


def test_acl_layer(benchmark):
    """acl TcprulesLayer.check over QUERIES prebuilt requests (cdb loaded once)."""
    benchmark.pedantic(_acl_round, rounds=5, iterations=1, warmup_rounds=1)
    rate = QUERIES / benchmark.stats.stats.min      # best round: least disturbed
    _RESULTS["acl"] = rate
    benchmark.extra_info.update(decisions_per_s=round(rate), core=IMPLEMENTATION)


def test_pure_cdb_peer(benchmark):
    """tcpserver's probe order with pure-cdb Reader.get on the same cdb, same requests."""
    benchmark.pedantic(_peer_round, rounds=5, iterations=1, warmup_rounds=1)
    rate = QUERIES / benchmark.stats.stats.min
    _RESULTS["pure-cdb"] = rate
    benchmark.extra_info.update(decisions_per_s=round(rate))
    if "acl" in _RESULTS:
        ratio = _RESULTS["acl"] / rate
        paired = _paired_ratio()
        benchmark.extra_info["acl_over_pure_cdb"] = round(ratio, 2)
        benchmark.extra_info["acl_over_pure_cdb_paired"] = round(paired, 2)
        print(f"\ntcprules: acl {_RESULTS['acl']:,.0f} decisions/s ({IMPLEMENTATION} core), "
              f"pure-cdb {rate:,.0f} decisions/s, ratio {ratio:.2f}x "
              f"(paired rounds: median {paired:.2f}x)")


def _paired_ratio(pairs: int = 7) -> float:
    """Median of peer/acl CPU time (process_time) over back-to-back rounds:
    steadier than two wall-clock benchmarks when other work shares the
    machine."""
    ratios = []
    for _ in range(pairs):
        t0 = time.process_time()
        _acl_round()
        t1 = time.process_time()
        _peer_round()
        t2 = time.process_time()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)
