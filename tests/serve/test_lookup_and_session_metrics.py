"""The metrics of name lookups a decision went without, of the lookup pool,
and of the Postfix door's session memory (docs/metrics.md), read from a
server's scrape as Prometheus would read them.

The lookups wait on an Event (as test_names_ttl0.py's do), so the test
decides when an answer arrives: one lookup of a /24 runs, a second waits in
that network's queue, a third finds the queue full (shed); the first two
then pass the ``[names] deadline``.
"""

from __future__ import annotations

import asyncio
import threading

from prometheus_client.parser import text_string_to_metric_families

from acl.engine import KERNEL, Engine
from acl.model import Reason
from acl.policy import load_policy
from acl.serve import lookups
from acl.serve.server import Server

from .conftest import in_process, until
from .test_postfix_door import asked, engine_with_cps

WAIT = 10.0


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    body, _ = server.metrics_body()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples}


def unanswered(samples, why: str) -> float:
    return samples[("acl_name_lookups_unanswered_total", (("why", why),))]


def names_policy(d, names=""):
    (d / "hosts.allow").write_text("echo: .good.example\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "hosts").write_text("10.2.2.2\tc2.good.example\n")
    toml = d / "policy.toml"
    toml.write_text('[sockets]\nquery = "query.sock"\n\n'
                    '[names]\nhosts_file = "hosts"\nper_network = 1\ndeadline = 0.5\n'
                    f'{names}\n'
                    '[[source]]\ntype = "hosts_access"\n'
                    'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["*"]\n')
    return toml


def gated_server(tmp_path, names=""):
    """A server whose name lookups wait for the returned Event, and the list
    of the lookups that started in a thread."""
    engine = Engine(load_policy(names_policy(tmp_path, names)))
    service = engine.policy.name_service
    gate = threading.Event()
    started: list[tuple] = []
    lookup = service.lookup

    def gated_lookup(kind, addr):
        started.append((kind, addr))
        gate.wait(WAIT)
        return lookup(kind, addr)

    service.lookup = gated_lookup
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()
    return server, gate, started


def test_shed_and_expired_lookups_and_the_pool_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(lookups, "QUEUE_PER_NETWORK", 1)
    server, gate, started = gated_server(tmp_path)
    seen = {}

    async def scenario():
        async with in_process(server, 3, WAIT) as clients:
            try:
                first = asyncio.ensure_future(clients[0].decide("echo", "10.2.2.2"))
                await until(lambda: started, "the first lookup", WAIT)
                second = asyncio.ensure_future(clients[1].decide("echo", "10.2.2.3"))
                await until(lambda: server.lookup_scheduler.waiting == 1, "a queued lookup",
                            WAIT)
                # the /24's queue is full: decided at once, without a name
                shed = await asyncio.wait_for(clients[2].decide("echo", "10.2.2.4"), WAIT)
                assert not shed.allowed
                seen["busy"] = scrape(server)
                # the deadline (0.5 s) answers the two that wait, as "unknown"
                for fut in (first, second):
                    assert not (await asyncio.wait_for(fut, WAIT)).allowed
                seen["expired"] = scrape(server)
                gate.set()
                await until(lambda: server.lookup_scheduler.running == 0
                            and server.lookup_scheduler.waiting == 0, "the pool to drain", WAIT)
                seen["drained"] = scrape(server)
            finally:
                gate.set()

    asyncio.run(scenario())
    busy, expired, drained = seen["busy"], seen["expired"], seen["drained"]
    assert busy[("acl_name_lookups_running", ())] == 1
    assert busy[("acl_name_lookups_waiting", ())] == 1
    assert unanswered(busy, "shed") == 1 and unanswered(busy, "deadline") == 0
    assert unanswered(expired, "deadline") == 2 and unanswered(expired, "shed") == 1
    assert unanswered(expired, "error") == 0
    assert drained[("acl_name_lookups_running", ())] == 0
    assert drained[("acl_name_lookups_waiting", ())] == 0
    # the queued lookup ran after all, once the first one ended
    assert started == [("verified", "10.2.2.2"), ("verified", "10.2.2.3")]


def test_lookups_running_counts_those_waiting_for_a_busy_thread(tmp_path):
    """acl_name_lookups_running counts the lookups per_network lets start,
    whether a thread has taken them or they wait for one: with one thread,
    two networks' lookups both count, while one thread runs (docs/metrics.md)."""
    server, gate, started = gated_server(tmp_path, "threads = 1\n")
    seen = {}

    async def scenario():
        async with in_process(server, 2, WAIT) as clients:
            try:
                asking = [asyncio.ensure_future(c.decide("echo", addr))
                          for c, addr in zip(clients, ("10.2.2.2", "10.3.3.3"), strict=True)]
                await until(lambda: started and server.lookup_scheduler.running == 2,
                            "two lookups handed to the pool", WAIT)
                seen["busy"] = scrape(server)
                seen["threads_started"] = len(started)
                for fut in asking:
                    await asyncio.wait_for(fut, WAIT)
            finally:
                gate.set()

    asyncio.run(scenario())
    assert seen["busy"][("acl_name_lookups_running", ())] == 2
    assert seen["busy"][("acl_name_lookups_waiting", ())] == 0
    assert seen["threads_started"] == 1         # the one thread holds the first


def test_postfix_sessions_and_their_limit_trips(tmp_path):
    """cps = 3: a fourth SMTP session trips it once; that session's later
    RCPTs repeat the refusal (decisions) but are not new trips."""
    engine = engine_with_cps(tmp_path, 3)
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    sessions = server.postfix_sessions
    sessions.max_sessions = 3
    now = 1_000_000.0
    for port in (40001, 40002, 40003):
        assert sessions.decide(engine, asked(port), now).allowed
    for i in range(5):
        d = sessions.decide(engine, asked(40004), now + i * 0.1)
        assert d.reason is Reason.CPS
    got = scrape(server)
    assert got[("acl_postfix_sessions", ())] == 3
    assert got[("acl_postfix_sessions_forgotten_total", ())] == 1
    trips = (("limit", "cps"), ("service", "smtpd"))
    assert got[("acl_limit_trips_total", trips)] == 1
    refused = (("reason", "cps"), ("service", "smtpd"), ("verdict", "deny"))
    assert got[("acl_decisions_total", refused)] == 5
