"""The xinetd layer as the engine uses it: order, leases, reload, counters."""

from __future__ import annotations

from acl.compile.xinetd import XinetdLayer, load_xinetd
from acl.model import Reason, Request, Verdict
from tests.xinetd.helpers import NOON, RESOLVER, defaults, full, layer, load, svc


def test_check_returns_none_for_other_services_and_locates_the_service():
    lay = layer(svc("a", "only_from = 127.0.0.9"))
    assert lay.name == "xinetd"
    assert lay.check(Request(service="sshd", client="127.0.0.1"), NOON) is None
    d = lay.check(Request(service="a", client="127.0.0.2"), NOON)
    assert (d.verdict, d.reason) == (Verdict.DENY, Reason.ADDRESS)
    assert str(d.location) == "test.conf:1"
    assert lay.check(Request(service="a", client="bogus"), NOON).reason is Reason.ERROR


def test_service_id_is_what_requests_name():
    lay = layer(svc("ftp", "id = ftp-special", "only_from = 127.0.0.2"))
    assert set(lay.policy.services) == {"ftp-special"}
    assert full(lay, "ftp-special", "127.0.0.2", NOON) == "allow"


def test_state_survives_a_reload():
    text1 = svc("s", "per_source = 1", "cps = 3 60")
    lay1 = layer(text1)
    req = Request(service="s", client="127.0.0.2", lease=True)
    assert full(lay1, "s", "127.0.0.2", NOON) == "allow"
    lease = lay1.take_lease(req, NOON)
    # reload with a changed file: same state object
    policy2, _ = load(text1.replace("per_source = 1", "per_source = 1\n  instances = 5"))
    lay2 = XinetdLayer(policy2, state=lay1.state, resolver=RESOLVER)
    lay2.activate()                  # what the engine does at the swap
    assert full(lay2, "s", "127.0.0.2", NOON + 0.1) == "deny per_source_limit"
    assert full(lay2, "s", "127.0.0.3", NOON + 0.2) == "allow"
    # the cps window restarted at the reload, as xinetd's does (its count
    # lives in the configuration a SIGHUP replaces): the 4th connection
    # since the reload trips, not the 4th in all
    assert full(lay2, "s", "127.0.0.4", NOON + 0.3) == "allow"
    assert full(lay2, "s", "127.0.0.5", NOON + 0.4) == "deny connections per second"
    assert lay2.release(lease)
    c = lay2.counters()
    assert c["services"]["s"]["per_source_limit"] == 1
    assert c["services"]["s"]["cps_trips"] == 1
    assert c["services"]["s"]["active_leases"] == 0


def test_per_source_compares_in_the_service_family():
    lay = layer(svc("m", "per_source = 1", bind="::ffff:127.0.0.1", flags="IPv6"))
    lease = lay.take_lease(Request(service="m", client="127.0.0.2", lease=True), NOON)
    assert full(lay, "m", "::ffff:127.0.0.2", NOON) == "deny per_source_limit"
    assert full(lay, "m", "127.0.0.2", NOON) == "deny per_source_limit"
    assert lay.release(lease)


def test_token_bucket_is_configured_per_service_and_aggregates_v6():
    lay = layer(svc("r", "cps = 0 0", bind="::1", flags="IPv6"), rate={"r": (1.0, 2.0)})
    got = [full(lay, "r", f"2001:db8::{i}", NOON) for i in range(3)]
    assert got == ["allow", "allow", "deny rate"]
    assert full(lay, "r", "2001:db8:0:1::1", NOON) == "allow"    # another /64
    c = lay.counters()
    assert c["services"]["r"]["rate"] == 1 and c["tracked_sources"] == 2


def test_max_load_reads_the_callers_loadavg_only_when_set():
    calls = []

    def loadavg():
        calls.append(1)
        return 0.7

    lay = layer(svc("l", "max_load = 0.7") + svc("n", port=23901), loadavg=loadavg)
    assert full(lay, "n", "127.0.0.2", NOON) == "allow" and not calls
    assert full(lay, "l", "127.0.0.2", NOON) == "deny load" and calls


def test_scalar_defaults_reach_every_service_late(tmp_path):
    text = svc("before") + defaults("instances = 0", "cps = 0 0") + svc("after", port=23901)
    policy, _ = load(text)
    assert policy.services["before"].instances == 0
    assert policy.services["after"].cps == (0, 0)
    conf = tmp_path / "x.conf"
    conf.write_text(text)
    policy, diags = load_xinetd(str(conf), RESOLVER)
    assert set(policy.services) == {"before", "after"}


def test_required_attributes_and_port_checks_drop_services():
    text = ("service nope\n{\n  socket_type = stream\n  wait = no\n  user = root\n"
            "  server = /bin/echo\n}\n"
            + svc("nouser").replace("  user = root\n", "")
            + "service echo\n{\n  type = INTERNAL\n  socket_type = stream\n  wait = no\n}\n"
            + "service echo\n{\n  type = INTERNAL\n  socket_type = stream\n  wait = no\n"
              "  bind = 127.0.0.1\n}\n"
            + svc("daytime", "port = 99", flags="").replace("  type = UNLISTED\n", ""))
    policy, diags = load(text)
    assert set(policy.services) == {"echo"}
    assert policy.services["echo"].bind is None          # the first of a duplicated id
    msgs = "\n".join(str(d) for d in diags)
    assert "Port not specified and can't find service: nope" in msgs
    assert "missing attribute user" in msgs
    assert "Service daytime expects port 13, not" in msgs


def test_debian_shipped_configuration_loads(tmp_path):
    """The package's own /etc/xinetd.conf + xinetd.d (every service enabled)."""
    import shutil
    from pathlib import Path

    src = Path("/etc/xinetd.d")
    if not src.is_dir() or not Path("/etc/xinetd.conf").is_file():
        import pytest

        pytest.skip("xinetd's configuration files are not installed")
    inc = tmp_path / "xinetd.d"
    shutil.copytree(src, inc)
    for f in inc.iterdir():
        f.write_text(f.read_text().replace("disable\t\t= yes", "disable = no")
                     .replace("disable = yes", "disable = no"))
    conf = tmp_path / "xinetd.conf"
    conf.write_text(Path("/etc/xinetd.conf").read_text().replace("/etc/xinetd.d", str(inc)))
    policy, diags = load_xinetd(str(conf), RESOLVER)
    errors = [str(d) for d in diags if d.severity == "error"]
    assert not errors, errors
    kept = set(policy.services)
    assert {"echo-stream", "echo-dgram", "daytime-stream", "time-dgram"} <= kept, kept
    assert all(s.libwrap_name == s.name for s in policy.services.values()
               if "INTERNAL" in s.entry.types)


def test_decisions_point_at_the_list_value_that_decided():
    text = defaults("no_access = 127.0.0.66") + svc(
        "a", "only_from = 127.0.0.0 .example.com", "no_access += 127.0.0.9")
    lay = layer(text)
    where = {c: str(lay.check_address(Request(service="a", client=c)).location)
             for c in ("127.0.0.66", "127.0.0.9", "127.0.0.2", "10.0.0.1", "10.1.1.1")}
    lines = text.splitlines()
    assert lines[2].strip() == "no_access = 127.0.0.66" and where["127.0.0.66"] == "test.conf:3"
    n = next(i for i, t in enumerate(lines, 1) if "no_access +=" in t)
    o = next(i for i, t in enumerate(lines, 1) if "only_from =" in t)
    assert where["127.0.0.9"] == f"test.conf:{n}"
    assert where["127.0.0.2"] == f"test.conf:{o}"            # granted by this line
    s = next(i for i, t in enumerate(lines, 1) if t.startswith("service a"))
    assert where["10.0.0.1"] == f"test.conf:{s}"             # no entry matched: the service


def test_services_sharing_an_id_each_keep_their_lists_and_limits():
    """An id xinetd keeps twice (bind differs) is picked by the request's
    server address; each entry has its own cps slot; a request that does not
    pick one entry is refused, and the load says so."""
    text = (svc("d", "only_from = 127.0.0.2", "cps = 1 60")
            + svc("d", "only_from = 127.0.0.3", bind="127.0.0.10")
            + svc("d", "only_from = 127.0.0.4", bind=None, port=23901, flags="IPv4 NOLIBWRAP"))
    policy, diags = load(text)
    assert any("service id d is kept 3 times" in str(d) for d in diags)
    lay = XinetdLayer(policy, resolver=RESOLVER)

    def ask(client, server=None, port=0, now=None):
        req = Request(service="d", client=client, server=server, server_port=port)
        d = lay.check_address(req) if now is None else lay.check(req, now)
        return "allow" if d.allowed else f"deny {d.reason.log_text}"

    assert ask("127.0.0.2", "127.0.0.1") == "allow"
    assert ask("127.0.0.3", "127.0.0.1") == "deny address"
    assert ask("127.0.0.3", "127.0.0.10") == "allow"
    assert ask("127.0.0.2", "::ffff:127.0.0.10") == "deny address"
    assert ask("127.0.0.4", "127.0.0.1", 23901) == "allow"        # the port picks
    assert ask("127.0.0.4", "127.0.0.9") == "allow"               # only the unbound one
    assert ask("127.0.0.2") == "deny address"                     # no server: ambiguous
    assert ask("127.0.0.4", "127.0.0.1") == "deny address"        # bound one wins, no .4
    # cps 1 60 trips the 127.0.0.1 entry only
    assert ask("127.0.0.2", "127.0.0.1", now=1000.0) == "allow"
    assert ask("127.0.0.2", "127.0.0.1", now=1000.1) == "deny connections per second"
    assert ask("127.0.0.3", "127.0.0.10", now=1000.2) == "allow"


def test_services_xinetd_cannot_make_a_socket_for_are_dropped():
    """stream + udp: socket() fails (live: "socket creation failed (errno
    93)", test_live_address.py); flags IPv6 with an IPv4 bind: xinetd binds
    a garbage address (live: "bind failed (errno 99)" in one configuration,
    a socket on :: in another); both are dropped, the reason at the service."""
    policy, diags = load(svc("su", "protocol = udp").replace("  protocol = tcp\n", "")
                         + svc("dt", port=23901).replace("socket_type = stream",
                                                         "socket_type = dgram")
                         .replace("wait = no", "wait = yes")
                         + svc("v6", port=23902, flags="IPv6 NOLIBWRAP")
                         + svc("v6m", port=23903, flags="IPv6 NOLIBWRAP",
                               bind="::ffff:127.0.0.1")
                         + svc("ok", port=23904))
    assert set(policy.services) == {"v6m", "ok"}
    text = "\n".join(map(str, diags))
    assert "test.conf:1: Service su: socket_type stream with protocol udp" in text
    assert "Service dt: socket_type dgram with protocol tcp" in text
    assert "Service v6: flags IPv6 with the IPv4 bind address 127.0.0.1" in text
