"""``[limits]`` rate through the engine, against a model of what the docs say
(docs/configuration.md ``[limits]``, acl/engine.py rules):

* one token bucket per client source: an IPv4 client by its address (a
  v4-mapped client of an IPv6 socket is that same source), an IPv6 client
  by its ``ipv6_prefix`` network;
* a bucket starts with ``burst`` tokens (``burst = 0``: ``max(1, rate)``),
  gains ``rate`` per second up to ``burst``, and a request takes one token
  or is refused (reason ``rate``); ``rate = 0`` is off;
* the table of buckets survives a reload unless ``sources`` grows past its
  size (``sources`` rounded up to a power of two, at least 16), and a
  reload's new ``rate``/``burst`` apply from the swap on.

Generated schedules of requests and reloads are answered by an engine on
the compiled batch path (binary frames, as a front door sends them), by one
on the Python path alone, and by the model; all three must agree, answer
for answer.  Few enough sources that the table never evicts (evictions are
tests/serve/test_fastpath.py's, twin against twin).
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from acl.engine import KERNEL, Engine
from acl.model import Request
from acl.wire import binary as wb

from .test_fastpath import answer

CLIENTS = ["10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2", "2001:db8:0:1::1",
           "2001:db8:0:1::2", "2001:db8:0:1:8000::1", "2001:db8:1::1"]
SOURCES = [1, 10, 16, 17, 40, 100]
RATES = [(0.0, 0.0), (0.5, 0.0), (1.0, 1.0), (3.0, 0.0), (2.0, 2.5), (10.0, 4.0)]


class Model:
    """The docs' buckets (module docstring), written plainly."""

    def __init__(self) -> None:
        self.capacity = 0
        self.buckets: dict[tuple, list[float]] = {}

    def load(self, sources: int, rate: float, burst: float, prefix: int) -> None:
        if sources > self.capacity:              # a new, larger table: empty
            self.capacity = max(16, 1 << (sources - 1).bit_length())
            self.buckets = {}
        self.rate, self.burst, self.prefix = rate, burst if burst > 0 else max(1.0, rate), prefix

    def source(self, client: str) -> tuple:
        addr = ipaddress.ip_address(client)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.version == 4:
            return (4, int(addr))
        return (6, int(ipaddress.ip_network(f"{addr}/{self.prefix}", strict=False)
                       .network_address))

    def take(self, client: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        b = self.buckets.setdefault(self.source(client), [self.burst, now])
        if now > b[1]:
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False


def write(d, sources: int, rate: float, burst: float, prefix: int) -> None:
    (d / "policy.toml").write_text(
        f"[run]\nwatch = false\n[limits]\nsources = {sources}\nipv6_prefix = {prefix}\n"
        f"rate = {rate}\nburst = {burst}\n[[source]]\ntype = \"hosts_access\"\n"
        'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["sshd"]\n')


def verdicts(engine, requests, now: float) -> list[tuple[str, str]]:
    """Each request's (verdict, reason), sent as binary DECIDE frames."""
    blob = b"".join(wb.encode_decide(i, r) for i, r in enumerate(requests))
    return [(r.decision.verdict.name, r.decision.reason.name)
            for r in wb.ReplyDecoder().feed(answer(engine, blob, now, 1 << 20))]


@pytest.mark.parametrize("seed", range(12))
def test_buckets_follow_the_docs_across_reloads(tmp_path, seed):
    rng = random.Random(seed)
    prefix = rng.choice([48, 64, 128])
    (tmp_path / "hosts.allow").write_text("sshd: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    model = Model()

    def limits():
        return (rng.choice(SOURCES), *rng.choice(RATES[1:]))

    sources, rate, burst = limits()
    write(tmp_path, sources, rate, burst, prefix)
    model.load(sources, rate, burst, prefix)
    fast = Engine.from_path(tmp_path / "policy.toml")
    slow = Engine(fast.policy, batch=False)
    if KERNEL == "compiled":
        assert fast.plan is not None and "sshd" in fast.plan.services
    now = 1_700_000_000.0
    for step in range(40):
        if rng.random() < 0.2:
            # a reload: the same limits, others, or rate off
            if rng.random() < 0.7:
                sources, rate, burst = limits() if rng.random() < 0.6 else (
                    sources, *rng.choice(RATES))
            write(tmp_path, sources, rate, burst, prefix)
            model.load(sources, rate, burst, prefix)
            fast.reload(tmp_path / "policy.toml")
            slow.reload(tmp_path / "policy.toml")
        now += rng.choice([0.0, 0.0, 0.1, 0.4, 1.0, 2.5])
        requests = [Request("sshd", rng.choice(CLIENTS)) for _ in range(rng.randrange(1, 6))]
        want = [("ALLOW", "OK") if model.take(r.client, now) else ("DENY", "RATE")
                for r in requests]
        where = (seed, step, sources, rate, burst)
        assert verdicts(fast, requests, now) == want, where
        assert verdicts(slow, requests, now) == want, where


def test_a_reload_keeps_the_table_unless_sources_grows(tmp_path):
    """The same schedule, spelled out: a client that spent its burst stays
    refused across reloads that keep ``sources`` or shrink it (10 is a
    table of 16 entries: the same size), and starts afresh when ``sources``
    grows past the table."""
    (tmp_path / "hosts.allow").write_text("sshd: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    write(tmp_path, 10, 1.0, 2.0, 64)
    engines = [Engine.from_path(tmp_path / "policy.toml")]
    engines.append(Engine(engines[0].policy, batch=False))
    now = 1_700_000_000.0
    one = [Request("sshd", "192.0.2.1")]
    for eng in engines:
        assert verdicts(eng, one * 3, now) == [("ALLOW", "OK")] * 2 + [("DENY", "RATE")]
    for sources in (10, 5, 16, 17):
        write(tmp_path, sources, 1.0, 2.0, 64)
        for eng in engines:
            eng.reload(tmp_path / "policy.toml")
            got = verdicts(eng, one, now)
            assert got == ([("ALLOW", "OK")] if sources == 17 else [("DENY", "RATE")]), sources
    # a new rate applies at the swap (on the batch path too): half a
    # second at 100/s is 50 tokens, not the old rate's half of one
    write(tmp_path, 17, 100.0, 100.0, 64)
    for eng in engines:
        eng.reload(tmp_path / "policy.toml")
        assert verdicts(eng, one * 10, now + 0.5) == [("ALLOW", "OK")] * 10
        assert eng.counters()["limit_trips"] == {("sshd", "rate"): 4}
