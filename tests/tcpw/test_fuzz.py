"""Hypothesis: the parser never fails except with the syntax error, and the
compiled layer (prefix tables + residual) answers exactly as the plain
first-to-last interpreter does -- on the compiled core and on its twin."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import acl.compile.tcpw as tcpw
from acl.compile.tcpw import HostsAccessLayer, HostView, Query, load_hosts_access
from acl.compile.tcpw_check import check
from acl.errors import RuleSyntaxError
from acl.parse.hosts_access import parse_hosts
from acl.resolve import HostsFileBackend, Resolver

from .helpers import HOSTS

PIECES = ["sshd", "ALL", "EXCEPT", "except", ":", ": ", ",", " ", "\t", "\r", "\n", "\\\n", "#",
          "[", "]", "/", "@", ".", "*", "?", "10.", "10.0.0.1", "192.168.1.", "/24", "/8junk",
          "/255.0.0.0", "[::1]", "[2001:db8::]/32", "::1", "allow", "deny", "twist x",
          "spawn a\\:b", "umask 9", "severity=info", "user root", "KNOWN", "LOCAL", "UNKNOWN",
          "PARANOID", ".example.com", "root@", "%h", "=", "\0", "é", "0", "22"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.sampled_from(PIECES), max_size=40).map(lambda xs: "".join(xs).encode())))
def test_parse_or_raise_the_syntax_error_nothing_else(tmp_path, data):
    table = parse_hosts("/f/hosts.allow", data)
    for d in table.diagnostics:
        text = str(d)
        assert text.startswith("/f/hosts.allow:") and d.message
    lay = HostsAccessLayer(table, parse_hosts("/f/hosts.deny", data), Resolver(HostsFileBackend(text=HOSTS)))
    for client in ("10.0.0.1", "::1", "unknown", "::ffff:192.168.1.7"):
        d = lay.check(tcpw.Request("sshd", client), 0.0)
        assert d.verdict in (0, 1, 2)
    for finding in check(lay):          # acl check never fails on what parses
        assert str(finding).startswith("/f/hosts.")
    allow = tmp_path / "hosts.allow"
    allow.write_bytes(data)
    try:
        load_hosts_access(str(allow), str(tmp_path / "absent"), strict=True)
    except RuleSyntaxError as exc:
        assert exc.diagnostics and exc.line >= 0
    else:
        assert not [d for d in table.diagnostics if d.severity == "error"]


DAEMON_TOKENS = ["ALL", "sshd", "ftpd", "SSHD", "ssh*", "22", "sshd@127.0.0.1", "ALL@127."]
CLIENT_TOKENS = ["ALL", "10.", "10.0.", "10.0.0.", "10.0.0.1", "10.0.0.0/8", "10.0.0.0/255.255.0.0",
                 "10.0.0.5/255.0.0.255", "10.0.0.1/255.0.0.0", "0.0.0.0/0.0.0.0", "10.0.0.0/0",
                 "192.168.1.", "192.168.1.0/24", "192.168.1", ".1", "10.0.?.1", "[::1]",
                 "[2001:db8::]/32", "[2001:db8::]/0", "[::ffff:10.0.0.1]", "good.example.com",
                 ".example.com", "KNOWN", "UNKNOWN", "root@10.", "ALL@ALL", "012.0.0.0/8", "1.2.3.4.",
                 "LOCAL", "*"]


@st.composite
def rule_lines(draw):
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        d = draw(st.lists(st.sampled_from(DAEMON_TOKENS), min_size=1, max_size=3))
        c = draw(st.lists(st.sampled_from(CLIENT_TOKENS), min_size=1, max_size=3))
        if draw(st.booleans()) and draw(st.booleans()):
            c += ["EXCEPT"] + draw(st.lists(st.sampled_from(CLIENT_TOKENS), max_size=2))
        opt = draw(st.sampled_from(["", "", "", ": deny", ": allow", ": twist x", ": bogus"]))
        lines.append(f"{' '.join(d)}: {' '.join(c)}{opt}\n")
    return "".join(lines).encode()


CLIENTS = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
    st.sampled_from(["10.0.0.1", "10.0.0.5", "10.77.1.5", "10.0.1.1", "192.168.1.9", "192.168.10.9",
                     "10.0.3.1", "::1", "2001:db8::5", "2001:db9::5", "::ffff:10.0.0.1",
                     "::ffff:192.168.1.1", "255.255.255.255", "10.0.0.9"]),
)


def test_compiled_layer_equals_interpreter(monkeypatch, core):
    monkeypatch.setattr(tcpw, "PrefixTable", core.PrefixTable)
    resolver = Resolver(HostsFileBackend(text=HOSTS))

    @settings(max_examples=100, deadline=None)
    @given(rule_lines(), rule_lines(), st.lists(st.tuples(st.sampled_from(["sshd", "ftpd", "x"]),
                                                          CLIENTS), min_size=1, max_size=20))
    def check(allow, deny, queries):
        lay = HostsAccessLayer(parse_hosts("/a", allow), parse_hosts("/d", deny), resolver)
        for daemon, client in queries:
            for server in (None, "127.0.0.1"):
                def make(daemon=daemon, client=client, server=server):
                    return Query(daemon, HostView(client, None, resolver, 0),
                                 HostView(server or "unknown", None if server else "unknown",
                                          resolver if server else None, 0),
                                 server_sin=bool(server), user="root")
                fast = lay.first_match(client, daemon, make)
                q = make()
                slow = next((i for i, r in enumerate(lay.rules) if r.matches(q)), None)
                assert fast == slow, (allow, deny, daemon, client, server)
                merged, lay._merged = lay._merged, {}     # the two-lookup path too
                assert lay.first_match(client, daemon, make) == slow
                lay._merged = merged

    check()


NAME_TOKENS = ["good.example.com", ".example.com", "www.", "LOCAL", "KNOWN", "*.lan", "@grp",
               "unknown", ".nown", "*nown", "x*", "10.0.0.*", "ab::", "[::1]", "ALL"]


def test_check_without_a_name_source_equals_interpreter(monkeypatch, core):
    """``check`` skips name-only rules when no name can exist; nothing else changes."""
    monkeypatch.setattr(tcpw, "PrefixTable", core.PrefixTable)
    tokens = st.sampled_from(CLIENT_TOKENS + NAME_TOKENS)

    @st.composite
    def files(draw):
        lines = []
        for _ in range(draw(st.integers(1, 10))):
            c = draw(st.lists(tokens, min_size=1, max_size=3))
            if draw(st.booleans()):
                c += ["EXCEPT"] + draw(st.lists(tokens, max_size=2))
            lines.append(f"{draw(st.sampled_from(DAEMON_TOKENS))}: {' '.join(c)}\n")
        return "".join(lines).encode()

    @settings(max_examples=100, deadline=None)
    @given(files(), files(), st.lists(st.tuples(st.sampled_from(["sshd", "ftpd"]), CLIENTS),
                                      min_size=1, max_size=15))
    def run(allow, deny, queries):
        lay = HostsAccessLayer(parse_hosts("/a", allow), parse_hosts("/d", deny), None)
        for daemon, client in queries:
            q = Query(daemon, HostView(client, None, None, 0), HostView("unknown", "unknown", None, 0),
                      server_sin=False)
            slow = next((i for i, r in enumerate(lay.rules) if r.matches(q)), None)
            want = lay.error_decision if slow is None else lay.decisions[slow]
            assert lay.check(tcpw.Request(daemon, client), 0.0) == want, (allow, deny, daemon, client)

    run()
