"""The values of the engine's metric families (docs/metrics.md), not only
their names: a scenario moves each of them by a known amount, and the
server's exposition (what ``/metrics`` sends, read back with
prometheus_client's parser) must show exactly that -- so a counter that
stops counting, counts another counter's events, or loses a series fails
here.  The live tests scrape the same endpoint with the real Prometheus
(tests/serve/test_prometheus_live.py, tests/deploy/test_prometheus.py).

The scenario, one engine and server in process (no socket), a clock the
test sets: a rate-limited client and a flood of new sources through the
engine's bucket table ([limits] sources = 2: its 16 entries, and an xinetd
table of 2); names looked up for hosts_access (verified) and for an xinetd
``.domain`` entry (PTR) from a private hosts file; an xinetd ``per_source``
service whose leases fill its table, its overflow area and then some,
before they are all given back; one decision that took two seconds (the
histogram's last bucket); a reload that fails, then one that works.  The
engine's perf_counter is the test's too: every other decision takes no
time at all, so which latency bucket each lands in follows from the test,
not from how fast the machine is.
"""

from __future__ import annotations

import time
import types

import pytest

from acl import engine as engine_module
from acl.engine import KERNEL, Engine
from acl.errors import PolicyError
from acl.model import Request
from acl.policy import load_policy
from acl.serve.server import Server

from .conftest import NAMED, UNNAMED, named_hosts
from .test_lookup_and_session_metrics import scrape

T = 1_700_000_000.0
#: two services alike but for the line that makes each: lim's per_source
#: (its leases), named's ``.domain`` entry (a PTR lookup)
XINETD = "".join(
    f"service {name}\n{{\n" + "".join(f"\t{line}\n" for line in (
        "type = UNLISTED", f"port = {port}", "socket_type = stream", "protocol = tcp",
        "wait = no", "user = root", "server = /bin/cat", "flags = NOLIBWRAP IPv4",
        "cps = 0 0", own)) + "}\n"
    for name, port, own in (
        ("lim", 24390, "per_source = 1"),
        ("named", 24391, "only_from = 127.0.0.0/8 2001:db8::/32 .good.example")))
POLICY = """\
[run]
watch = false
[limits]
sources = 2
rate = 1
burst = 1
[names]
hosts_file = "hosts"
[[source]]
type = "xinetd"
file = "x.conf"
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["sshd", "echo"]
"""


def setup(d):
    (d / "x.conf").write_text(XINETD)
    named_hosts(d, allow="sshd: ALL\n")
    (d / "policy.toml").write_text(POLICY)
    eng = Engine(load_policy(d / "policy.toml"))
    return eng, Server(eng, compiled=KERNEL == "compiled", log_fn=lambda m: None)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def decided(samples) -> float:
    return sum(v for (n, _), v in samples.items() if n == "acl_decisions_total")


def test_every_engine_family_counts_what_it_says(tmp_path, monkeypatch):
    eng, server = setup(tmp_path)
    readings: list[float] = []          # what perf_counter says next; after them 0.0
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(
        perf_counter=lambda: readings.pop(0) if readings else 0.0, time=time.time))

    def ask(service, client, lease=False):
        return eng.decide(Request(service, client, lease=lease), T)

    # the bucket: one client twice (the second refused), then 40 new sources
    assert ask("sshd", "10.9.9.9").allowed and not ask("sshd", "10.9.9.9").allowed
    assert all(ask("sshd", f"10.8.0.{i}").allowed for i in range(40))
    # names: three named clients and an unnamed one (verified), one PTR
    assert all(ask("echo", a).allowed for a in NAMED[:3])
    assert not ask("echo", UNNAMED).allowed
    assert ask("named", NAMED[3]).allowed
    # leases: 2 in the xinetd table's one group, 16 in the overflow area,
    # the 19th refused (the area full: per_source fails closed)
    got = [ask("lim", f"10.7.0.{i}", lease=True) for i in range(19)]
    leases = [d.lease for d in got if d.allowed]
    assert len(leases) == 18 and got[-1].reason.name == "PER_SOURCE_LIMIT"

    s = scrape(server)
    assert value(s, "acl_decisions_total", service="sshd", verdict="allow", reason="ok") == 41
    assert value(s, "acl_decisions_total", service="sshd", verdict="deny", reason="rate") == 1
    assert value(s, "acl_decisions_total", service="echo", verdict="deny", reason="libwrap") == 1
    assert value(s, "acl_decisions_total", service="lim", verdict="allow", reason="ok") == 18
    assert value(s, "acl_limit_trips_total", service="sshd", limit="rate") == 1
    assert value(s, "acl_limit_trips_total", service="lim", limit="per_source") == 1
    assert value(s, "acl_leases_active", service="lim") == 18
    assert value(s, "acl_lease_overflow_entries") == 16
    assert value(s, "acl_lease_overflows_total") == 16
    assert value(s, "acl_lease_overflow_full_total") == 1
    assert value(s, "acl_name_lookups_total", kind="verified") == 4
    assert value(s, "acl_name_lookups_total", kind="ptr") == 1
    assert value(s, "acl_name_cache_entries") == 5
    # every source the bucket table met (65, none twice) is in it or was
    # evicted from it; the xinetd table holds its 2 (no eviction: leases)
    tracked, evicted = value(s, "acl_sources_tracked"), value(s, "acl_sources_evictions_total")
    assert tracked + evicted == 65 + 2 and evicted > 0 and tracked <= 16 + 2
    assert value(s, "acl_decision_latency_seconds_count") == decided(s) == 66

    # every lease given back; a decision that took 2 s; a failed reload, a good one
    assert all(eng.release(lease) for lease in leases)
    readings[:] = [0.0, 2.0]             # its start, its end
    assert ask("sshd", "10.6.0.1").allowed and not readings
    policy = (tmp_path / "policy.toml").read_text()
    (tmp_path / "policy.toml").write_text(policy + "[limits]\n")
    with pytest.raises(PolicyError):          # [limits] twice
        eng.reload()
    s = scrape(server)
    assert value(s, "acl_reloads_total", result="failure") == 1
    assert value(s, "acl_reloads_total", result="success") == 0
    assert value(s, "acl_last_reload_success") == 0
    (tmp_path / "policy.toml").write_text(policy)
    eng.reload()

    s = scrape(server)
    assert value(s, "acl_reloads_total", result="failure") == 1
    assert value(s, "acl_reloads_total", result="success") == 1
    assert value(s, "acl_last_reload_success") == 1
    assert value(s, "acl_leases_active", service="lim") == 0
    assert value(s, "acl_lease_overflow_entries") == 0
    assert value(s, "acl_lease_overflows_total") == 16
    assert value(s, "acl_lease_overflow_full_total") == 1
    tracked, evicted = value(s, "acl_sources_tracked"), value(s, "acl_sources_evictions_total")
    assert tracked + evicted == 66
    # the histogram: every decision once, each where the test's clock put
    # it -- the ones that took no time in the first bucket, the slow one
    # past the last bound
    count = value(s, "acl_decision_latency_seconds_count")
    assert count == decided(s) == 67
    assert value(s, "acl_decision_latency_seconds_bucket", le="1e-06") == count - 1
    assert value(s, "acl_decision_latency_seconds_bucket", le="1.0") == count - 1
    assert value(s, "acl_decision_latency_seconds_bucket", le="+Inf") == count
    assert value(s, "acl_decision_latency_seconds_sum") == 2.0
    for family, n in (("ipv4", 1), ("ipv6", 1), ("name", 1)):
        assert value(s, "acl_policy_rules", source="xinetd", family=family) == n, family
