"""The layer's contract with the engine, and the spec's verified rows (B.6).

Rows marked with the real tool are re-run against tcprules + tcprulescheck
here, so the table is evidence, not a copy.
"""

from __future__ import annotations

import pytest

from acl.compile.tcprules import NO_MATCH, decode_data, layer_from_cdb, layer_from_text
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.ucspi_addr import client_text, ip6_fmt

from .real import check_many, need_tools, parse_check, run_tcprules

ORDER_RULES = b"""1.2.3.4:allow,WHO="exact"
1.2.3.:deny
1.2.:allow,WHO="b"
=h.example.com:allow,WHO="host"
=.example.com:deny
=:allow,WHO="anyname"
:deny
"""

ROWS = [
    # (rules, ip, host, info, deciding key or None, deny, env)
    (ORDER_RULES, "1.2.3.4", "h.example.com", None, "1.2.3.4", False, [("WHO", "exact")]),
    (ORDER_RULES, "1.2.3.9", "h.example.com", None, "=h.example.com", False, [("WHO", "host")]),
    (ORDER_RULES, "1.2.3.9", "x.example.com", None, "1.2.3.", True, []),
    (ORDER_RULES, "1.2.9.9", "x.example.com", None, "1.2.", False, [("WHO", "b")]),
    (ORDER_RULES, "1.9.9.9", "x.example.com", None, "=.example.com", True, []),
    (ORDER_RULES, "1.9.9.9", "x.other.org", None, "=", False, [("WHO", "anyname")]),
    (ORDER_RULES, "1.9.9.9", None, None, "", True, []),
    (ORDER_RULES, "9.9.9.9", "H.EXAMPLE.COM", None, "=", False, [("WHO", "anyname")]),
    (ORDER_RULES, "1.9.9.9", "", None, "=", False, [("WHO", "anyname")]),  # empty host
    (b'joe@1.2.3.4:allow,U="joe-ip"\njoe@=h.example.com:allow,U="joe-host"\n'
     b"joe@1.2.3.:allow\n1.2.3.4:deny\n", "1.2.3.5", "h.example.com", "joe",
     "joe@=h.example.com", False, [("U", "joe-host")]),
    (b"joe@1.2.3.:allow\n", "1.2.3.5", None, "joe", None, False, []),   # no info@prefix
    (b"1.2.3.4:deny\n1.2.3.4:allow,X=\"second\"\n", "1.2.3.4", None, None, "1.2.3.4", True, []),
    (b"1.2.3.4:allow,A=\"x y\",B='q\"q',C=/sl/,D=\"\",E=aba,F,G=\"v\"", "1.2.3.4", None, None,
     "1.2.3.4", False, [("A", "x y"), ("B", 'q"q'), ("C", "sl"), ("D", ""), ("E", "b"),
                        ("F,G", "v")]),
    (b'2001:db8:::allow,V="pfx2"\n2001:db8::allow,V="pfx1"\n', "2001:db8:5::2", None, None,
     "2001:db8:", False, [("V", "pfx1")]),
    (b" 1.2.3.4:deny\n", "1.2.3.4", None, None, None, False, []),
    (b"1.2.3:deny\n", "1.2.3.4", None, None, None, False, []),
    (b"10.0.0.5-7:deny\n10.0.3.05-06:deny\n", "10.0.3.6", None, None, "10.0.3.6", True, []),
    (b"10.0.2.9-5:deny\n", "10.0.2.7", None, None, None, False, []),
    (b"10.1-2.:deny\n", "10.2.7.7", None, None, "10.2.", True, []),
    # a NUL inside a value ends the item; a following "D" item means deny
    (b'1.2.3.4:allow,X="a\x00Dz"\n', "1.2.3.4", None, None, "1.2.3.4", True, []),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[1]}/{r[2]}/{r[3]}")
def test_spec_rows(row):
    text, ip, host, info, key, deny, env = row
    layer = layer_from_text(text, "r.txt", mapped_as_v4=False)
    got_key, d = layer.explain(Request("s", ip, host=host, user=info))
    assert got_key == key
    assert (d.verdict is Verdict.DENY) == deny
    assert list(d.env) == env


@need_tools
def test_spec_rows_hold_with_the_real_tools(tmp_path):
    for i, (text, ip, host, info, key, deny, env) in enumerate(ROWS):
        real = run_tcprules(text)
        assert real.status == "ok"
        p = tmp_path / f"{i}.cdb"
        p.write_bytes(real.cdb)
        rkey, rdeny, _renv = parse_check(check_many(str(p), [(ip, host, info)])[0])
        assert (rkey.decode() if rkey is not None else None, rdeny) == (key, deny), i
        if not deny:
            assert _renv == [f"{n}={v}".encode() for n, v in env]


def test_decision_shapes():
    layer = layer_from_text(b'1.2.3.4:allow,A="1",B="2"\n1.2.3.5:deny,A="x"\n', "r.txt")
    assert layer.name == "tcprules"
    d = layer.check(Request("s", "1.2.3.4"), 0.0)
    assert d == Decision(Verdict.ALLOW, Reason.OK, Location("r.txt", 1), (("A", "1"), ("B", "2")))
    d = layer.check(Request("s", "1.2.3.5"), 0.0)
    assert d == Decision(Verdict.DENY, Reason.TCPRULES, Location("r.txt", 2))
    assert layer.check(Request("s", "9.9.9.9"), 0.0) == NO_MATCH
    assert NO_MATCH.location is None and NO_MATCH.env == () and NO_MATCH.allowed
    assert layer.check(Request("s", "not-an-ip"), 0.0).reason is Reason.ERROR


def test_cdb_location_names_the_key():
    layer = layer_from_cdb(run_or_make(b"1.2.3.:deny\n"), "/etc/r.cdb")
    d = layer.check(Request("s", "1.2.3.9"), 0.0)
    assert d.location == Location("/etc/r.cdb[1.2.3.]", 0)


def run_or_make(text: bytes) -> bytes:
    from acl.cdb import make_cdb
    from acl.parse.tcprules import parse_tcprules, rules_to_records
    return make_cdb((k, d) for k, d, _ in rules_to_records(parse_tcprules(text)))


def test_mapped_clients_and_minus_6():
    text = (b'127.0.0.1:allow,X="exact-v4"\n127.0.0.:deny\n127.0.:allow,X="prefix"\n'
            b'::ffff:127.0.0.3:allow,X="mapped-key"\n:deny\n')
    v4 = layer_from_text(text)
    v6 = layer_from_text(text, mapped_as_v4=False)
    assert v4.check(Request("s", "::ffff:127.0.0.1"), 0).env == (("X", "exact-v4"),)
    assert v4.check(Request("s", "::ffff:127.0.5.5"), 0).env == (("X", "prefix"),)
    assert not v4.check(Request("s", "::ffff:127.0.0.3"), 0).allowed
    assert not v6.check(Request("s", "::ffff:127.0.0.1"), 0).allowed
    assert v6.check(Request("s", "::ffff:127.0.0.3"), 0).env == (("X", "mapped-key"),)
    assert not v6.check(Request("s", "::ffff:127.0.5.5"), 0).allowed


def test_minus_H_tries_no_equals_key():
    text = b"=h.example.com:deny\n=:deny\n"
    assert not layer_from_text(text).check(Request("s", "1.1.1.1", host="h.example.com"), 0).allowed
    no_host = layer_from_text(text, use_host=False)
    assert no_host.check(Request("s", "1.1.1.1", host="h.example.com"), 0) == NO_MATCH


def test_prefix_core_only_takes_canonical_v4_prefixes():
    text = b"01.:deny\n1.2.3.4.:deny\n256.:deny\n1.02.:deny\n1.:allow,P=\"one\"\n"
    layer = layer_from_text(text)
    assert layer.check(Request("s", "1.2.3.4"), 0).env == (("P", "one"),)
    assert layer._v4_keys == ["1."]


def test_decode_data_like_tcpserver():
    assert decode_data(b"") == (False, ())
    assert decode_data(b"D\x00+A=x\x00") == (True, (("A", "x"),))
    assert decode_data(b"+A=x\x00D\x00") == (True, (("A", "x"),))
    assert decode_data(b"+NOEQ\x00+B=1=2\x00junk\x00+C=trailing") == (False, (("B", "1=2"),))


IP6_ROWS = [  # bytes -> ucspi text; checked against ucspi's ip6_fmt (spec B.4)
    ("2001:db8:0:1:1:1:1:1", "2001:db8::1:1:1:1:1"),
    ("2001:db8::1", "2001:db8::1"),
    ("2001:db8:0:1::5", "2001:db8:0:1::5"),
    ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
    ("::", "::"),
    ("::1", "::1"),
    ("1::", "1::"),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    ("::1.2.3.4", "::102:304"),
    ("fe80::AB:cd", "fe80::ab:cd"),
    ("0:1:0:1:0:1:0:1", "::1:0:1:0:1:0:1"),
]


@pytest.mark.parametrize(("addr", "text"), IP6_ROWS)
def test_ip6_fmt(addr, text):
    import socket
    assert ip6_fmt(socket.inet_pton(socket.AF_INET6, addr)) == text
    assert client_text(addr, mapped_as_v4=False)[0] == text


def test_client_text():
    assert client_text("10.0.0.1") == ("10.0.0.1", bytes([10, 0, 0, 1]))
    assert client_text("::ffff:10.0.0.1") == ("10.0.0.1", bytes([10, 0, 0, 1]))
    assert client_text("fe80::1%lo")[0] == "fe80::1"
    for bad in ("", "1.2.3", "01.2.3.4", "x", "1.2.3.4 "):
        with pytest.raises(ValueError):
            client_text(bad)
    # what is not a str is not an address either (no TypeError from deep inside)
    for bad in (b"1.2.3.4", None, 16909060, ("1.2.3.4", 0)):
        with pytest.raises(ValueError, match="not an address"):
            client_text(bad)
    # ip6_fmt formats sixteen bytes and nothing else
    for size in (0, 4, 15, 17):
        with pytest.raises(ValueError, match="16 bytes"):
            ip6_fmt(bytes(size))
