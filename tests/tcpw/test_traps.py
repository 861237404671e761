"""One test (or more) per trap of spec D.1, numbered as there."""

from __future__ import annotations

import pytest

from acl.compile.tcpw import Query, after_aclexec_failure, percent_expand
from acl.model import Reason, Request, Verdict
from acl.resolve import PARANOID, UNKNOWN, HostsFileBackend, Resolver

from .helpers import layer, verdict, where

VERDICT = {Verdict.ALLOW: "granted", Verdict.DENY: "denied"}

A = "ALL: ALL\n"


def test_d1_01_first_match_allow_then_deny_then_grant():
    # the broad allow line wins over a more specific deny line after it
    assert where("ALL: 10.\nALL: 10.0.0.1: deny\n", A, "sshd", "10.0.0.1") == \
        "granted /rules/hosts.allow:1"
    assert where("sshd: 1.2.3.4\n", "ALL: 10.\n", "sshd", "10.0.0.1") == "denied /rules/hosts.deny:1"
    assert where("sshd: 1.2.3.4\n", "sshd: 1.2.3.4\n", "sshd", "9.9.9.9") == "granted -"


@pytest.mark.parametrize("pattern,client,word", [
    ("192.168.1.", "192.168.1.5", "granted"),
    ("192.168.1.", "192.168.10.5", "denied"),
    ("192.168.1", "192.168.1.5", "denied"),
    (".1", "10.0.3.1", "granted"),
    (".1", "10.0.3.11", "denied"),
])
def test_d1_02_textual_prefix_exact_and_suffix(pattern, client, word):
    assert verdict(f"ALL: {pattern}\n", A, "sshd", client) == word


@pytest.mark.parametrize("pattern,client,word", [
    ("10.0.0.1/255.0.0.0", "10.0.0.1", "denied"),        # net not masked
    ("10.0.0.0/255.0.0.0", "10.9.9.9", "granted"),
    ("0.0.0.0/0", "1.2.3.4", "denied"),                  # /0 invalid
    ("0.0.0.0/0.0.0.0", "1.2.3.4", "granted"),
    ("1.2.3.4/255.255.255.255", "1.2.3.4", "denied"),
    ("1.2.3.4/32", "1.2.3.4", "granted"),
    ("10.0.0.0/8junk", "10.1.1.1", "granted"),
    ("012.0.0.0/255.0.0.0", "10.1.1.1", "granted"),      # octal net
    ("0xa.0.0.0/8", "10.1.1.1", "granted"),              # hex net
    ("012.0.0.1", "10.0.0.1", "denied"),                 # plain = string
    ("10.0.0.5/255.0.0.255", "10.77.1.5", "granted"),    # non-contiguous
    ("10.0.0.5/255.0.0.255", "10.77.1.6", "denied"),
])
def test_d1_03_net_mask(pattern, client, word):
    assert verdict(f"ALL: {pattern}\n", A, "sshd", client) == word


@pytest.mark.parametrize("clients,client,word", [
    ("10. EXCEPT 10.1. EXCEPT 10.1.1.1", "10.2.0.1", "granted"),
    ("10. EXCEPT 10.1. EXCEPT 10.1.1.1", "10.1.0.5", "denied"),
    ("10. EXCEPT 10.1. EXCEPT 10.1.1.1", "10.1.1.1", "granted"),
    ("10. except 10.1.", "10.1.0.5", "denied"),
    ("10. EXCEPT", "10.1.0.5", "granted"),
    ("EXCEPT 10.", "10.1.0.5", "denied"),
])
def test_d1_04_except(clients, client, word):
    assert verdict(f"ALL: {clients}\n", A, "sshd", client) == word


def test_d1_05_comments_and_joins():
    assert verdict("  # ALL: ALL\n", A, "sshd", "1.2.3.4") == "granted"
    assert verdict("# c \\\nALL: ALL\n", A, "sshd", "1.2.3.4") == "denied"
    assert where("sshd: 10.0.0.\\\n1\n", A, "sshd", "10.0.0.1") == "granted /rules/hosts.allow:2"


def test_d1_06_missing_newline_and_long_lines():
    assert where(None, "sshd: 10.0.0.1", "sshd", "1.2.3.4") == "denied /rules/hosts.deny:1"
    assert verdict(None, "sshd: 1.2.3.4\nftpd: 10.0.0.1", "sshd", "1.2.3.4") == "denied"
    assert verdict("sshd: 1.2.3.4", A, "sshd", "1.2.3.4") == "denied"
    assert verdict("sshd: 1.2.3.4", "", "sshd", "1.2.3.4") == "granted"
    # 2046 characters + newline still fit the 2048-byte buffer; 2047 do not
    fits = "sshd: " + "9" * (2046 - len("sshd: ") - len(" 1.2.3.4")) + " 1.2.3.4\n"
    assert len(fits) == 2047
    assert verdict(fits, A, "sshd", "1.2.3.4") == "granted"
    too_long = fits.replace(" 1.2", "  1.2")
    assert verdict(too_long, A, "sshd", "1.2.3.4") == "denied"
    lay = layer(None, too_long)
    assert lay.deny.stop is not None and "too long" in lay.deny.stop.message


@pytest.mark.parametrize("opts", ["", " (/usr/sbin/safe_finger -l @%h | mail root) &",
                                  " allow: severity info", " umask 999", " severity bogus",
                                  " allow yes", " bogus", " spawn x:"])
def test_d1_07_option_errors_deny_even_in_allow(opts):
    assert verdict(f"ALL: 1.2.3.4:{opts}\n", "", "sshd", "1.2.3.4") == "denied"


def test_d1_08_allow_and_deny_options_override_the_file():
    assert verdict("ALL: ALL: deny\n", "", "sshd", "1.2.3.4") == "denied"
    assert verdict(None, "ALL: ALL: ALLOW\n", "sshd", "1.2.3.4") == "granted"
    assert verdict(None, "ALL: ALL: spawn /bin/true\n", "sshd", "1.2.3.4") == "denied"


def test_d1_09_unknown_and_paranoid_are_string_compares():
    assert verdict(None, "ALL: UNKNOWN\n", "sshd", "1.2.3.4") == "denied"       # name unknown
    assert verdict(None, "ALL: unknown\n", "sshd", "1.2.3.4") == "denied"
    assert verdict(None, "ALL: UNKNOWN\n", "sshd", "paranoid") == "denied"      # addr unknown
    assert verdict(None, "ALL: PARANOID\n", "sshd", "numrev.example.com") == "denied"
    assert verdict("ALL: KNOWN\n", A, "sshd", "numrev.example.com") == "denied"
    assert verdict("ALL: UNKNOWN\n", A, "sshd", "numrev.example.com") == "denied"
    assert verdict("ALL: 10.0.0.9\n", A, "sshd", "numrev.example.com") == "granted"


def test_d1_10_paranoid_hosts_are_not_dropped():
    assert verdict(A, "", "sshd", "numrev.example.com") == "granted"


class _NoForward(HostsFileBackend):
    def forward(self, name, family):
        return None


def test_d1_11_name_verification_is_strict():
    r = Resolver(HostsFileBackend(text="10.0.0.9 1.2.3.4\n10.0.0.1 good.example.com\n"
                                       "10.0.0.30 first.example.com alias.example.com\n"
                                       "10.0.0.31 alias.example.com\n"))
    assert r.hostname("10.0.0.9") == PARANOID          # numeric PTR
    assert r.hostname("10.0.0.31") == PARANOID         # canonical name differs (CNAME-like)
    assert r.hostname("10.0.0.77") == UNKNOWN          # no PTR
    assert r.hostname("10.0.0.1") == "good.example.com"
    assert r.hostname("::ffff:10.0.0.1") == "good.example.com"    # mapped: looked up as v4
    nofwd = Resolver(_NoForward(text="10.0.0.1 good.example.com\n"))
    assert nofwd.hostname("10.0.0.1") == PARANOID      # forward lookup fails


def test_d1_11_resolver_cache_is_bounded_and_expires():
    r = Resolver(HostsFileBackend(text="10.0.0.1 a.example\n10.0.0.2 b.example\n"),
                 ttl=10, negative_ttl=1, max_entries=2)
    assert r.hostname("10.0.0.1", now=0) == "a.example"
    assert r.hostname("10.0.0.1", now=5) == "a.example"
    assert r.lookups == 1
    assert r.hostname("10.0.0.1", now=11) == "a.example"     # expired: looked up again
    assert r.lookups == 2
    r.hostname("10.0.0.2", now=11)
    r.hostname("10.0.0.3", now=11)
    assert r.evictions == 1 and len(r._cache) == 2


def test_d1_12_digit_patterns_never_compared_with_names():
    assert verdict("ALL: 10.0.0.1.\n", A, "sshd", "good.example.com") == "denied"
    assert verdict("ALL: 10.0.0.\n", A, "sshd", "good.example.com") == "granted"
    assert verdict("ALL: good.\n", A, "sshd", "good.example.com") == "granted"


@pytest.mark.parametrize("pattern,client,word", [
    ("*", "unknown", "granted"),
    (".exam*", "www.example.com", "denied"),
    ("2001?db8??1", "2001:db8::1", "granted"),
    ("192.168.?.1", "192.168.55.1", "denied"),
])
def test_d1_13_globs_first(pattern, client, word):
    assert verdict(f"ALL: {pattern}\n", A, "sshd", client) == word


def test_d1_14_ipv6(tmp_path):
    assert verdict("ALL: ::1\n", A, "sshd", "::1") == "denied"
    assert verdict("ALL: [::1]\n", A, "sshd", "::1") == "granted"
    assert verdict("ALL: [2001:DB8:0::1]\n", A, "sshd", "2001:db8::1") == "granted"
    assert verdict("ALL: [::ffff:1.2.3.4]\n", A, "sshd", "::ffff:1.2.3.4") == "denied"
    assert verdict("ALL: [::ffff:0.0.0.0]/96\n", A, "sshd", "::ffff:1.2.3.4") == "denied"
    assert verdict("ALL: 1.2.3.0/24\n", A, "sshd", "::ffff:1.2.3.4") == "granted"
    assert verdict("ALL: [2001:db8::]/0\n", A, "sshd", "fe80::1") == "granted"
    assert verdict("ALL: [::]/0\n", A, "sshd", "1.2.3.4") == "denied"
    listing = tmp_path / "list"
    listing.write_text("2001:db8::1\n")
    assert verdict(f"ALL: {listing}\n", A, "sshd", "2001:db8::1") == "granted"
    assert verdict(f"ALL: {listing}\n", A, "sshd", "2001:DB8:0::1") == "denied"


def test_file_pattern_tokens_end_at_a_nul_byte(tmp_path):
    """hostfile_match reads fscanf("%s") tokens into C strings: a NUL ends
    the pattern, a token starting with NUL matches nothing, and a NUL cuts a
    nested file's path (the real tcpdmatch -d answered these four alike)."""
    nested = tmp_path / "nested"
    nested.write_bytes(b"10.0.0.7\n")
    listing = tmp_path / "list"
    listing.write_bytes(b"10.0.0.1\0junk\t\0" + b"10.0.0.2 10.0.0.3\0\n"
                        + str(nested).encode() + b"\0.x\n")
    rules = f"ALL: {listing}\n"
    assert where(rules, A, "sshd", "10.0.0.1") == "granted /rules/hosts.allow:1"
    assert verdict(rules, A, "sshd", "10.0.0.2") == "denied"
    assert verdict(rules, A, "sshd", "10.0.0.3") == "granted"
    assert verdict(rules, A, "sshd", "10.0.0.7") == "granted"


def test_d1_15_numeric_daemon_is_the_local_port():
    assert verdict("0: ALL\n", A, "sshd@127.0.0.1", "1.2.3.4") == "granted"
    assert verdict("22: ALL\n", A, "sshd@127.0.0.1", "1.2.3.4") == "denied"
    assert verdict("0: ALL\n", A, "sshd", "1.2.3.4") == "denied"
    lay = layer("22: ALL\n", A)
    assert lay.check(Request("sshd", "1.2.3.4", server="10.0.0.1", server_port=22), 0).verdict \
        is Verdict.ALLOW
    assert lay.check(Request("sshd", "1.2.3.4", server="10.0.0.1", server_port=23), 0).verdict \
        is Verdict.DENY


def test_d1_16_user_part_only_after_host_matches():
    lay = layer("ALL: root@10.0.0.1\n", A)
    seen = []

    class Q(Query):
        __slots__ = ()

        @property
        def ukey(self):
            seen.append(1)
            return "root"

        @ukey.setter
        def ukey(self, v):
            pass

    from acl.compile.tcpw import HostView
    q = Q("sshd", HostView("10.0.0.2", UNKNOWN, None, 0), HostView(UNKNOWN, UNKNOWN, None, 0),
          server_sin=False)
    assert lay.decide(q)[1].verdict is Verdict.DENY and seen == []
    q = Q("sshd", HostView("10.0.0.1", UNKNOWN, None, 0), HostView(UNKNOWN, UNKNOWN, None, 0),
          server_sin=False)
    assert lay.decide(q)[1].verdict is Verdict.ALLOW and seen == [1]
    # the sidecar never does ident: no user given means "unknown"
    assert verdict("ALL: KNOWN@ALL\n", A, "sshd", "1.2.3.4") == "denied"
    assert verdict("ALL: ALL@ALL\n", A, "sshd", "1.2.3.4") == "granted"


@pytest.mark.parametrize("rules,word", [("sshd: KNOWN@ALL\n", "denied"),
                                         ("sshd: UNKNOWN@ALL\n", "granted")])
def test_empty_user_is_unknown(rules, word):
    """eval_user takes an empty user for "not looked up": tcpdmatch -d sshd
    @10.0.0.1 reports it unknown; the engine reads Request.user "" alike."""
    assert verdict(rules, A, "sshd", "@10.0.0.1") == word
    assert verdict(rules, A, "sshd", "@::1") == word
    lay = layer(rules, A)
    for user in ("", None):
        assert VERDICT[lay.check(Request("sshd", "10.0.0.1", user=user), 0).verdict] == word


def test_d1_17_case_insensitive_except_netgroups():
    assert verdict(None, "all: all\n", "SSHD", "1.2.3.4") == "denied"
    assert verdict("ALL: GOOD.example.COM\n", A, "sshd", "good.example.com") == "granted"
    backend = HostsFileBackend(text="10.0.0.1 good.example.com\n",
                               netgroups={"ops": {"good.example.com"}})
    r = Resolver(backend)
    assert r.innetgr("ops", "good.example.com") and not r.innetgr("OPS", "good.example.com")
    from acl.compile.tcpw import HostsAccessLayer
    from acl.parse.hosts_access import parse_hosts
    for rules, want in (("ALL: @ops\n", Verdict.ALLOW), ("ALL: @OPS\n", Verdict.DENY)):
        lay = HostsAccessLayer(parse_hosts("/a", rules.encode()), parse_hosts("/d", A.encode()), r)
        assert lay.check(Request("sshd", "10.0.0.1"), 0).verdict is want


def test_d1_18_expansions_depend_on_lookup_order():
    from acl.compile.tcpw import HostView
    r = Resolver(HostsFileBackend(text="10.0.0.1 good.example.com\n"))

    def q():
        return Query("sshd", HostView("10.0.0.1", None, r, 0), HostView(UNKNOWN, UNKNOWN, None, 0),
                     server_sin=False)
    assert percent_expand("c=%c n=%n", q()) == "c=10.0.0.1 n=good.example.com"
    assert percent_expand("n=%n c=%c", q()) == "n=good.example.com c=good.example.com"
    assert percent_expand("%d %% %x|%u", q()) == "sshd % |unknown"


def test_d1_19_user_and_group_options():
    # tcpdmatch (dry run, as root) reports denied; real tcpd ignores them
    assert verdict("ALL: ALL: user nobody\n", "", "sshd", "1.2.3.4") == "denied"
    assert verdict("ALL: ALL: user nobody\n", "", "sshd", "1.2.3.4", dry_run=False) == "granted"
    assert verdict("ALL: ALL: user nosuchuser\n", "", "sshd", "1.2.3.4", dry_run=False) == "denied"
    assert verdict("ALL: ALL: user nobody.nogroup\n", "", "sshd", "1.2.3.4") == "granted"


def test_d1_20_acl_match_shows_the_matched_line(tmp_path, capsys):
    from acl.cli import match
    (tmp_path / "a").write_text("sshd: 10.0.0.\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    rc = match.main(["--hosts-allow", str(tmp_path / "a"), "--hosts-deny", str(tmp_path / "d"),
                     "sshd", "10.0.0.1"])
    out = capsys.readouterr().out
    assert rc == 0 and f"matched:  {tmp_path / 'a'} line 1" in out and "access:   granted" in out


def test_d1_21_failing_aclexec():
    req = Request("sshd", "1.2.3.4")
    lay = layer(None, "ALL: ALL: aclexec /bin/false\n")
    idx = lay.first_match("1.2.3.4", "sshd", None)
    assert lay.check(req, 0).verdict is Verdict.DENY
    assert after_aclexec_failure(lay, idx, req, 0).verdict is Verdict.ALLOW
    lay = layer("ALL: ALL: aclexec /bin/false\n", "ALL: 1.2.3.4\nALL: ALL: deny\n")
    idx = lay.first_match("1.2.3.4", "sshd", None)
    assert after_aclexec_failure(lay, idx, req, 0).verdict is Verdict.ALLOW
    assert after_aclexec_failure(lay, idx, Request("sshd", "5.5.5.5"), 0).verdict is Verdict.DENY


def test_layer_contract_fields():
    lay = layer("sshd: 10.0.0.1: setenv A %a: spawn echo %h: allow\n", "ALL: 10.: twist /bin/x %d\n")
    d = lay.check(Request("sshd", "10.0.0.1"), 0)
    assert d.verdict is Verdict.ALLOW and d.reason is Reason.OK
    assert str(d.location) == "/rules/hosts.allow:1"
    assert d.options == (("setenv", "A %a"), ("spawn", "echo %h"), ("allow", ""))
    d = lay.check(Request("ftpd", "::ffff:10.9.9.9"), 0)
    assert d.verdict is Verdict.DELEGATE and d.options == (("twist", "/bin/x %d"),)
    d = lay.check(Request("ftpd", "10.9.9.9"), 0)
    assert d.verdict is Verdict.DELEGATE
    lay = layer(None, "ALL: 10.\n")
    d = lay.check(Request("ftpd", "10.9.9.9"), 0)
    assert d.verdict is Verdict.DENY and d.reason is Reason.LIBWRAP
    assert lay.check(Request("ftpd", "11.9.9.9"), 0).location is None


def test_caller_supplied_host_name_is_used_without_lookup():
    lay = layer("sshd: .example.com\n", A, hosts="")
    assert lay.check(Request("sshd", "10.0.0.1", host="a.example.com"), 0).verdict is Verdict.ALLOW
    assert lay.check(Request("sshd", "10.0.0.1"), 0).verdict is Verdict.DENY
    assert lay.resolver.lookups == 1


def test_setenv_name_checked_after_expansion():
    lay = layer("ALL: ALL: setenv %u x\n", "", dry_run=False)
    assert lay.check(Request("sshd", "1.2.3.4", user="a=b"), 0).verdict is Verdict.DENY
    assert lay.check(Request("sshd", "1.2.3.4", user="ab"), 0).verdict is Verdict.ALLOW


def test_unreadable_deny_file_denies(tmp_path):
    from acl.compile.tcpw import load_hosts_access
    bad = tmp_path / "notadir" / "hosts.deny"
    (tmp_path / "notadir").write_text("x")
    lay, diags = load_hosts_access(str(tmp_path / "missing"), str(bad))
    assert lay.check(Request("sshd", "1.2.3.4"), 0).verdict is Verdict.DENY
    assert diags and "cannot open" in diags[0].message


def test_strict_loading_refuses_what_libwrap_would_skip(tmp_path):
    from acl.compile.tcpw import load_hosts_access
    from acl.errors import RuleSyntaxError
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("sshd: 10.\nsshd ALL\nALL: ALL: bogus\n")
    deny.write_text("ALL: ALL")
    lay, diags = load_hosts_access(str(allow), str(deny))
    assert [str(d) for d in diags] == [
        f'{allow}:2:1: missing ":" separator: line ignored',
        f'{allow}:3:11: bad option name: "bogus" (the connection is denied)',
        f"{deny}:1:9: missing newline at end of file: this and every later rule is ignored"]
    assert lay.check(Request("sshd", "10.1.1.1"), 0).verdict is Verdict.ALLOW
    try:
        load_hosts_access(str(allow), str(deny), strict=True)
    except RuleSyntaxError as exc:
        assert (exc.path, exc.line, exc.column) == (str(allow), 2, 1)
        assert len(exc.diagnostics) == 3
    else:
        raise AssertionError("strict loading accepted a broken file")
