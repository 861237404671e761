"""``Engine.adopt_lease`` (a restart's leases counted again, acl/serve/leasestore.py)
on both limits twins: the slots are taken without a limit check, under the
same id, and behave as the original lease -- per_source and instances
count it, RELEASE gives it back, later ids go past it; a service the policy
does not bind keeps its lease counted toward no limit."""

from __future__ import annotations

import pytest

from acl.engine import Engine
from acl.model import Reason, Request
from acl.policy import load_policy

NOW = 1e9

XINETD = """\
service echo
{
	type = UNLISTED
	port = 23190
	socket_type = stream
	protocol = tcp
	wait = no
	user = root
	server = /bin/cat
	bind = 127.0.0.1
	flags = NOLIBWRAP IPv4
	instances = 3
	per_source = 1
}
"""


@pytest.fixture
def engine(limits, monkeypatch, tmp_path):
    monkeypatch.setattr("acl.compile.xinetd._limits", limits)
    (tmp_path / "x.conf").write_text(XINETD)
    (tmp_path / "policy.toml").write_text(
        '[run]\nwatch = false\n[[source]]\ntype = "xinetd"\nfile = "x.conf"\n')
    return Engine(load_policy(tmp_path / "policy.toml"), batch=False)


def ask(eng, client):
    return eng.decide(Request("echo", client, lease=True), NOW)


def test_adopted_leases_count_as_taken_ones(engine):
    engine.adopt_lease(40, Request("echo", "127.0.0.8", lease=True), NOW)
    engine.adopt_lease(17, Request("echo", "127.0.0.9", 1, "127.0.0.1", 23190, lease=True),
                       NOW)
    # per_source 1: both sources are full, though no limit was asked
    assert ask(engine, "127.0.0.8").reason is Reason.PER_SOURCE_LIMIT
    assert ask(engine, "127.0.0.9").reason is Reason.PER_SOURCE_LIMIT
    third = ask(engine, "127.0.0.10")
    assert third.allowed and third.lease == 41            # ids go on past 40
    assert ask(engine, "127.0.0.11").reason is Reason.SERVICE_LIMIT   # instances 3
    assert engine.counters()["leases"] == {"echo": 3}
    assert engine.release(17) and not engine.release(17)
    assert ask(engine, "127.0.0.9").allowed


def test_adoption_takes_no_limit_into_account(engine):
    """A restart with more leases than the (new) limits allow counts them all."""
    for i in range(5):
        engine.adopt_lease(i + 1, Request("echo", "127.0.0.8", lease=True), NOW)
    assert engine.leases_active == 5
    assert ask(engine, "127.0.0.12").reason is Reason.SERVICE_LIMIT
    engine.release(1)
    engine.release(2)
    assert ask(engine, "127.0.0.12").reason is Reason.SERVICE_LIMIT   # 3 left: full
    engine.release(3)
    assert ask(engine, "127.0.0.12").allowed


def test_a_service_the_policy_does_not_bind_keeps_a_lease_toward_no_limit(engine):
    engine.adopt_lease(9, Request("gone", "127.0.0.8", lease=True), NOW)
    assert engine.counters()["leases"] == {"_unknown": 1}
    assert ask(engine, "127.0.0.8").allowed               # echo does not count it
    assert engine.release(9)


def test_an_id_in_use_or_no_id_is_refused(engine):
    engine.adopt_lease(3, Request("echo", "127.0.0.8", lease=True), NOW)
    for bad in (3, 0, -1):
        with pytest.raises(ValueError):
            engine.adopt_lease(bad, Request("echo", "127.0.0.9", lease=True), NOW)
    assert engine.leases_active == 1


# -- a reload that brings a lease's service back -------------------------------
OTHER = XINETD.replace("service echo", "service other").replace("23190", "23191")


def _reload(engine, tmp_path, xinetd: str, hosts: bool = False) -> None:
    """The policy with ``xinetd`` as its x.conf (and, with ``hosts``, a
    hosts_access source binding every service too)."""
    (tmp_path / "x.conf").write_text(xinetd)
    extra = ""
    if hosts:
        (tmp_path / "hosts.allow").write_text("ALL: ALL\n")
        (tmp_path / "hosts.deny").write_text("")
        extra = ('[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\n'
                 'deny = "hosts.deny"\nservices = ["*"]\n')
    (tmp_path / "policy.toml").write_text(
        '[run]\nwatch = false\n[[source]]\ntype = "xinetd"\nfile = "x.conf"\n' + extra)
    engine.reload()


@pytest.mark.parametrize("how", ["taken, its service dropped by a reload",
                                 "adopted while its service is absent",
                                 "taken while no xinetd layer bound its service"])
def test_a_lease_counts_again_when_a_reload_brings_its_service_back(engine, tmp_path, how):
    """A lease held for a service no xinetd layer counts is counted (without
    a limit check) by the reload that binds one to it again: per_source 1
    refuses its source, and RELEASE gives the slot back -- the same for a
    lease taken before its service was dropped (its slot outlives the
    drop: _limits retire), one a restart adopted while the service was
    absent, and one taken while only hosts_access bound the service."""
    if how.startswith("taken, "):
        assert ask(engine, "127.0.0.8").lease == 1
        _reload(engine, tmp_path, OTHER)
    elif how.startswith("adopted"):
        _reload(engine, tmp_path, OTHER)
        engine.adopt_lease(1, Request("echo", "127.0.0.8", lease=True), NOW)
    else:
        _reload(engine, tmp_path, OTHER, hosts=True)
        taken = ask(engine, "127.0.0.8")
        assert taken.allowed and taken.lease == 1
    _reload(engine, tmp_path, XINETD)
    assert ask(engine, "127.0.0.8").reason is Reason.PER_SOURCE_LIMIT
    assert {k: n for k, n in engine.counters()["leases"].items() if n} == {"echo": 1}
    assert engine.release(1)
    got = ask(engine, "127.0.0.8")
    assert got.allowed and got.lease > 1
