"""``@group`` in hosts.allow: ``innetgr`` (NIS, LDAP: it may be slow) is asked
in a names worker thread, never on the event loop, once per request, and the
decision reads the answer fetched (acl/names.py rules).  The netgroup backend
waits on an Event, so the test says when an answer arrives (as
tests/serve/test_names_ttl0.py does for names): while it has not, another
client must be answered.

The netgroup is asked of the client's verified name, so a client whose name
is not cached needs two rounds (name, then netgroup); a caller that sends
the name needs only the netgroup.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from acl.engine import KERNEL, Engine
from acl.model import Verdict
from acl.policy import load_policy
from acl.resolve import NetgroupTable
from acl.serve.server import Server

from .conftest import in_process, until

MEMBER, OTHER = "10.2.2.2", "10.3.3.3"
WAIT = 10.0


def write_policy(d: Path, ttl: str) -> Path:
    (d / "hosts.allow").write_text("sshd: 127.0.0.1\necho: @ops\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "hosts").write_text(f"{MEMBER}\tc2.good.example\n{OTHER}\tc3.good.example\n")
    toml = d / "policy.toml"
    toml.write_text(f'[sockets]\nquery = "query.sock"\n\n[names]\nhosts_file = "hosts"\n'
                    f'{ttl}\n\n[[source]]\ntype = "hosts_access"\n'
                    'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["*"]\n')
    return toml


@pytest.mark.parametrize("ttl", ["", "ttl = 0\nnegative_ttl = 0"])
@pytest.mark.parametrize("client, host, verdict", [
    (MEMBER, None, Verdict.ALLOW),                  # name looked up, then the netgroup
    (OTHER, None, Verdict.DENY),
    (OTHER, "c2.good.example", Verdict.ALLOW),      # the caller's name is the one asked
])
def test_a_slow_netgroup_is_asked_once_in_a_names_thread(tmp_path, ttl, client, host, verdict):
    engine = Engine(load_policy(write_policy(tmp_path, ttl)))
    names = engine.policy.name_service
    backend = names.resolver.backend
    backend.netgroups = NetgroupTable({"ops": {"c2.good.example"}})
    gate = threading.Event()
    asked = backend.innetgr
    calls: list[tuple[str, str, str]] = []

    def gated_innetgr(group, name):
        calls.append((threading.current_thread().name, group, name))
        assert gate.wait(WAIT), "the test never opened the gate"
        return asked(group, name)

    backend.innetgr = gated_innetgr
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()
    kw = {} if host is None else {"host": host}

    async def scenario():
        async with in_process(server, 2, WAIT) as (asker, other):
            asking = asyncio.ensure_future(asker.decide("echo", client, **kw))
            await until(lambda: calls, "the lookup to start", WAIT)
            # innetgr waits: another client is answered meanwhile
            d = await asyncio.wait_for(other.decide("sshd", "127.0.0.1"), WAIT)
            assert d.verdict is Verdict.ALLOW
            assert not asking.done()
            gate.set()
            d = await asyncio.wait_for(asking, WAIT)
            assert d.verdict is verdict, d

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
    asked_name = host or {MEMBER: "c2.good.example", OTHER: "c3.good.example"}[client]
    assert [c[1:] for c in calls] == [("ops", asked_name)], calls     # once per request
    assert all(c[0].startswith("names") for c in calls), calls
    assert names.lookups["netgroup"] == 1
    assert names.cached("netgroup", "ops", asked_name) == (
        (False, None) if ttl else (True, verdict is Verdict.ALLOW))


def netgroup_engine(d: Path, allow_line: str, deadline: float, netgroups: dict):
    """An engine on ``allow_line`` in hosts.allow (hosts.deny ``ALL: ALL``),
    MEMBER named c2.good.example by a hosts file, ``[names] deadline``,
    and the netgroups given; and its name backend, to gate its lookups."""
    (d / "hosts.allow").write_text(allow_line + "\n")
    (d / "hosts.deny").write_text("ALL: ALL\n")
    (d / "hosts").write_text(f"{MEMBER}\tc2.good.example\n")
    toml = d / "policy.toml"
    toml.write_text('[sockets]\nquery = "query.sock"\n\n[names]\nhosts_file = "hosts"\n'
                    f'deadline = {deadline}\n\n[[source]]\ntype = "hosts_access"\n'
                    'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["*"]\n')
    engine = Engine(load_policy(toml))
    backend = engine.policy.name_service.resolver.backend
    backend.netgroups = NetgroupTable(netgroups)
    return engine, backend


def ask_echo_then_open(engine: Engine, gate: threading.Event):
    """One ``echo`` request from MEMBER (named c2.good.example) to an
    in-process server of ``engine``; ``gate`` is opened once it is answered
    or has failed, so that the stuck lookups it holds end with the test."""
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()

    async def scenario():
        async with in_process(server, 1, WAIT) as (asker,):
            try:
                return await asyncio.wait_for(
                    asker.decide("echo", MEMBER, host="c2.good.example"), WAIT)
            finally:
                gate.set()

    try:
        return server, asyncio.run(scenario())
    finally:
        gate.set()


def test_a_stuck_netgroup_holds_its_request_one_deadline(tmp_path):
    """@slow never answers, @ops at once (one netgroup a round): the request
    is decided after one ``[names] deadline`` with @slow unknown and @ops
    in, and @slow counts once as gone past the deadline.  It used to count
    twice: after the deadline the connection probes again with @slow given,
    looks @ops up, and that second call's next round forgot @slow was given
    and waited for it a whole new deadline (the request waited 2 x deadline,
    up to CONN_NAME_ROUNDS x).  Now the connection passes what it was given
    to its next call."""
    engine, backend = netgroup_engine(tmp_path, "echo: @slow @ops", 0.5,
                                      {"ops": {"c2.good.example"}, "slow": {"c9.good.example"}})
    gate = threading.Event()
    asked = backend.innetgr
    calls: list[str] = []

    def gated_innetgr(group, name):
        calls.append(group)
        if group == "slow":
            gate.wait(WAIT)
        return asked(group, name)

    backend.innetgr = gated_innetgr
    server, d = ask_echo_then_open(engine, gate)
    assert calls == ["slow", "ops"], calls
    assert d.verdict is Verdict.ALLOW, d
    assert server.names_unanswered == {"deadline": 1, "shed": 0, "error": 0}


def test_a_name_past_the_rounds_is_never_looked_up_on_the_loop(tmp_path):
    """``echo: @s1 @s2 @s3 @s4``, the first three stuck: each costs its
    request one deadline, in a round of its own -- at most three such waits
    a request (docs/configuration.md).  Then the request is decided with
    what was fetched: @s4, never asked, counts as "not a member" (the
    client is one), and is not asked in line on the event loop either."""
    engine, backend = netgroup_engine(tmp_path, "echo: @s1 @s2 @s3 @s4", 0.2,
                                      {"s4": {"c2.good.example"}})
    gate = threading.Event()
    asked = backend.innetgr
    calls: list[tuple[str, str]] = []

    def gated_innetgr(group, name):
        calls.append((group, threading.current_thread().name))
        if group != "s4":
            gate.wait(WAIT)
        return asked(group, name)

    backend.innetgr = gated_innetgr
    server, d = ask_echo_then_open(engine, gate)
    assert [group for group, _ in calls] == ["s1", "s2", "s3"], calls
    assert all(thread.startswith("names") for _, thread in calls), calls
    assert d.verdict is Verdict.DENY, d
    assert server.names_unanswered == {"deadline": 3, "shed": 0, "error": 0}
