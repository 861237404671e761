"""``[names] ttl = 0`` / ``negative_ttl = 0``: no caching across requests,
and still one lookup per request, in a worker thread, whose answer that
request's decision reads (acl/names.py rules).  The lookup waits on an Event,
so the test says when an answer arrives (as tests/nfq/test_held.py does)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from acl.engine import KERNEL, Engine
from acl.model import Verdict
from acl.policy import load_policy
from acl.serve.server import Server

from .conftest import in_process, until

NAMED, UNNAMED = "10.2.2.2", "10.3.3.3"
WAIT = 10.0


def write_policy(d: Path, key: str) -> Path:
    (d / "hosts.allow").write_text("sshd: 127.0.0.1\necho: .good.example\necho: unknown\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "hosts").write_text(f"{NAMED}\tc2.good.example\n")
    toml = d / "policy.toml"
    toml.write_text(f'[sockets]\nquery = "query.sock"\n\n[names]\nhosts_file = "hosts"\n'
                    f'{key} = 0\n\n[[source]]\ntype = "hosts_access"\n'
                    'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["*"]\n')
    return toml


@pytest.mark.parametrize("key, client", [("ttl", NAMED), ("negative_ttl", UNNAMED)])
def test_a_zero_ttl_answer_is_used_by_its_request_never_looked_up_on_the_loop(
        tmp_path, key, client):
    engine = Engine(load_policy(write_policy(tmp_path, key)))
    names = engine.policy.name_service
    gate = threading.Event()
    lookup = names.lookup
    threads: list[str] = []

    def gated_lookup(kind, addr):
        threads.append(threading.current_thread().name)
        assert gate.wait(WAIT), "the test never opened the gate"
        return lookup(kind, addr)

    names.lookup = gated_lookup
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()

    async def scenario():
        async with in_process(server, 2, WAIT) as (named, other):
            asking = asyncio.ensure_future(named.decide("echo", client))
            await until(lambda: threads, "the lookup to start", WAIT)
            # the lookup waits: another client is answered meanwhile
            d = await asyncio.wait_for(other.decide("sshd", "127.0.0.1"), WAIT)
            assert d.verdict is Verdict.ALLOW
            gate.set()
            d = await asyncio.wait_for(asking, WAIT)
            # echo: .good.example (the named client), echo: unknown (the other)
            assert d.verdict is Verdict.ALLOW

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
    assert threads and all(t.startswith("names") for t in threads), threads
    assert len(threads) == 1, threads           # one lookup for the one request
    assert names.entries == 1 and names.cached("verified", client) == (False, None)


def test_a_lookup_that_raises_is_made_once_and_reads_as_unknown(tmp_path):
    """A failed lookup (a resolver error, a full queue's LookupShed) is "no
    name" for the request that asked: not asked again by the connection's
    next round (acl/serve/server.py ``look_up_names``)."""
    engine = Engine(load_policy(write_policy(tmp_path, "ttl")))
    names = engine.policy.name_service
    calls: list[tuple] = []

    def failing_lookup(*item):
        calls.append(item)
        raise OSError("resolver broke")

    names.lookup = failing_lookup
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()

    async def scenario():
        async with in_process(server, 1, WAIT) as (c,):
            # echo: unknown -- what a name that could not be looked up is
            d = await asyncio.wait_for(c.decide("echo", NAMED), WAIT)
            assert d.verdict is Verdict.ALLOW

    asyncio.run(scenario())
    assert calls == [("verified", NAMED)]
    assert names.cached("verified", NAMED) == (False, None)      # a failure is not cached
    # and it is counted as a name the decision went without (docs/metrics.md)
    assert server.names_unanswered == {"deadline": 0, "shed": 0, "error": 1}
