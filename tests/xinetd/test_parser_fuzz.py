"""Parser fuzzing: parse, or report the error -- nothing else.

Any text (grammar-shaped or not) yields a configuration plus diagnostics that
carry ``file:line``, or a :class:`RuleSyntaxError` where xinetd would not
start; address values yield entries, "cannot parse", or an AddrError; and
whatever loads can be queried without an exception.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl.compile.xinetd import XinetdLayer, load_xinetd_text
from acl.errors import Diagnostic, RuleSyntaxError
from acl.model import Request
from acl.parse.xinetd_addr import AddrEntry, AddrError, parse_value
from tests.xinetd.gen import DISABLING, V4_VALUES, V6_VALUES
from tests.xinetd.helpers import RESOLVER

ATTRS = ["only_from", "no_access", "cps", "instances", "per_source", "max_load",
         "access_times", "disable", "flags", "bind", "port", "protocol", "socket_type",
         "server", "wait", "user", "type", "libwrap", "banner", "id", "enabled", "disabled",
         "log_type", "env", "passenv", "server_args", "umask", "v6only", "bogus", "ONLY_FROM"]
VALUES = (V4_VALUES + V6_VALUES + DISABLING +
          ["UNLIMITED", "yes", "no", "YES", "maybe", "0", "-1", "10", "2", "0.5", "stream",
           "dgram", "tcp", "udp", "root", "/bin/echo", "IPv4", "IPv6", "NOLIBWRAP", "BOGUS",
           "UNLISTED", "INTERNAL", "8:00-17:00", "22:00-02:00", "24:00-25:00", "23123",
           "127.0.0.1", "::1", "FILE", "SYSLOG", "daemon", "A=b", "PATH", "{", "}", "#", "="])
OPS = ["=", "+=", "-=", "==", "+", ""]

line = st.one_of(
    st.builds(lambda a, o, vs: f"  {a} {o} {' '.join(vs)}", st.sampled_from(ATTRS),
              st.sampled_from(OPS), st.lists(st.sampled_from(VALUES), max_size=4)),
    st.sampled_from(["{", "}", "", "# comment", "service", "service s1", "service s2",
                     "defaults", "include /nonexistent", "includedir /nonexistent",
                     "  only_from=127.0.0.1", "\t}\t", " { "]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=30),
)


REQUIRED = ["type = UNLISTED", "socket_type = stream", "protocol = tcp", "wait = no",
            "user = root", "server = /bin/echo"]


@st.composite
def structured(draw):
    """Whole entries with the required attributes plus random lines."""
    out = []
    if draw(st.booleans()):
        out += ["defaults", "{", *draw(st.lists(line, max_size=4)), "}"]
    for i in range(draw(st.integers(1, 4))):
        body = REQUIRED + [f"port = {23800 + i}"] + draw(st.lists(line, max_size=6))
        out += [f"service s{i}", "{", *draw(st.permutations(body)), "}"]
    return out


def _check_result(text: str) -> None:
    try:
        policy, diags = load_xinetd_text(text, "fuzz.conf", RESOLVER)
    except RuleSyntaxError as exc:
        assert exc.path == "fuzz.conf" and exc.line >= 0
        assert str(exc).startswith("fuzz.conf:")
        return
    for d in diags:
        assert isinstance(d, Diagnostic) and d.line >= 0
        assert str(d).startswith(d.path + ":")
    layer = XinetdLayer(policy, resolver=RESOLVER)
    for sid in policy.services:
        for client in ("127.0.0.2", "::1", "::ffff:127.0.0.3"):
            assert layer.check_address(Request(service=sid, client=client)) is not None
            assert layer.check(Request(service=sid, client=client), 1e9) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(line, max_size=40), structured()))
def test_grammar_shaped_text_parses_or_reports(lines):
    _check_result("\n".join(lines) + "\n")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_reports(text):
    _check_result(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(VALUES),
                 st.text(alphabet="0123456789.{},:/abcfx -", max_size=25),
                 st.text(max_size=12)))
def test_address_values_parse_or_report(value):
    try:
        got = parse_value(value, RESOLVER)
    except AddrError as exc:
        assert str(exc)
        return
    assert got is None or all(isinstance(e, AddrEntry) for e in got)
