"""Hypothesis on the tcprules parser.

Invariant: any bytes either parse or raise RuleSyntaxError -- never another
exception.  And, differentially: what acl accepts the real tcprules accepts
with a byte-identical cdb; what acl rejects for a reason other than the
missing ``:allow``/``:deny`` the real tcprules rejects with exit 100.  (Files
acl rejects for the missing keyword are the ones that make the real IPv6
tcprules loop forever; test_rejects.py covers those with a timeout.)
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl.cdb import make_cdb
from acl.errors import RuleSyntaxError
from acl.parse.tcprules import parse_tcprules, rules_to_records
from tests.conftest import SLOW

from .real import need_tools, run_tcprules

# Bytes that matter to the grammar, plus a few that do not.
ALPHABET = b"0123456789.:-=@,\"'/# \t\r\nadeilnowyADX"
TOKENS = [b"allow", b"deny", b":allow", b":deny", b",X=", b'"', b"1.2.3.", b"::1", b"10-20",
          b"=h.example.com", b"joe@", b"\n", b"\n#", b"\r\n"]

pieces = st.one_of(st.binary(min_size=1, max_size=3).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)), st.sampled_from(TOKENS))
texts = st.lists(pieces, max_size=30).map(b"".join)
# Mostly well-formed lines, with a twist, so that acceptance is common.
lines = st.builds(
    lambda addr, verb, env, junk: addr + b":" + verb + env + junk,
    st.sampled_from([b"1.2.3.4", b"1.2.", b"", b"=", b"=.x.com", b"::1", b"2001:db8:",
                     b"10.0.0.1-9", b"10.0.0.-", b"1-2.", b"joe@1.2.3.4", b" 5.5.5.5",
                     b"1.2.3.4-05", b"1.2.3.99999999999999999999999-2"]),
    st.sampled_from([b"allow", b"deny"]),
    st.lists(st.builds(lambda n, q, v: b"," + n + b"=" + q + v + q,
                       st.sampled_from([b"A", b"", b"F,G", b"a b"]),
                       st.sampled_from([b'"', b"'", b"/", b"x"]),
                       st.sampled_from([b"", b"v", b"a b", b"=", b"y"])), max_size=3).map(b"".join),
    st.sampled_from([b"", b"", b"", b" ", b"\t", b"x", b",", b"\r"]))
files = st.lists(lines | texts, max_size=6).map(b"\n".join)


@settings(max_examples=5000 if SLOW else 500, deadline=None)
@given(texts)
def test_parse_or_syntax_error(text):
    try:
        rules = parse_tcprules(text, "f")
    except RuleSyntaxError as exc:
        assert exc.line >= 1 and str(exc).startswith(f"f:{exc.line}:")
        return
    make_cdb((k, d) for k, d, _ in rules_to_records(rules))


@need_tools
@settings(max_examples=1500 if SLOW else 250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files)
def test_parser_agrees_with_real_tcprules(text):
    try:
        records = rules_to_records(parse_tcprules(text, "f"))
    except RuleSyntaxError as exc:
        if "loops forever" in exc.message:
            return                        # the real tool would hang: see test_rejects
        real = run_tcprules(text, timeout=2)
        assert real.status == "error" and real.code == 100, (text, exc, real)
        return
    real = run_tcprules(text, timeout=2)
    assert real.status == "ok", (text, real)
    assert make_cdb((k, d) for k, d, _ in records) == real.cdb, text
