"""One test (or more) per trap of spec D.3, through the parser and the layer."""

from __future__ import annotations

import os

import pytest

from acl.errors import RuleSyntaxError
from acl.model import Request
from tests.xinetd.helpers import NOON, addr, defaults, full, layer, load, svc


def test_d3_1_both_lists_match_denies_whatever_the_specificity():
    lay = layer(svc("a", "only_from = 127.0.0.2", "no_access = 127.0.0.0/8")
                + svc("b", "only_from = 127.0.0.0", "no_access = 127.0.0.2", port=23901)
                + svc("c", "only_from = 127.0.0.5", "no_access = 127.0.0.5", port=23902))
    assert addr(lay, "a", "127.0.0.2") == "deny address"
    assert addr(lay, "a", "127.0.0.3") == "deny address"
    assert addr(lay, "b", "127.0.0.2") == "deny address"
    assert addr(lay, "b", "127.0.0.3") == "allow"
    assert addr(lay, "c", "127.0.0.5") == "deny address"


def test_d3_2_empty_only_from_means_nobody_absent_means_everybody():
    lay = layer(svc("empty", "only_from =")
                + svc("unparsed", "only_from = nosuch.invalid", port=23901)
                + svc("absent", port=23902)
                + svc("noaccess_empty", "no_access =", port=23903)
                + svc("minus_only", "only_from -= 127.0.0.9", port=23904))
    assert addr(lay, "empty", "127.0.0.1") == "deny address"
    assert addr(lay, "unparsed", "127.0.0.1") == "deny address"
    assert addr(lay, "absent", "127.0.0.1") == "allow"
    assert addr(lay, "noaccess_empty", "127.0.0.2") == "allow"
    # ``-=`` on a list nobody gave creates it, empty: nobody (parsers.c NEW_SET)
    assert addr(lay, "minus_only", "127.0.0.1") == "deny address"
    lay = layer(defaults("only_from = 127.0.0.2") + svc("m", "only_from -= 127.0.0.2"))
    assert addr(lay, "m", "127.0.0.2") == "deny address"
    assert addr(lay, "m", "127.0.0.3") == "deny address"


@pytest.mark.parametrize("value,inside,outside", [
    ("10.0.0.0", "10.200.3.4", "11.0.0.1"),
    ("127.1.0.0", "127.1.2.3", "127.2.0.1"),
    ("192.168.1.0", "192.168.1.77", "192.168.2.1"),
    ("0.0.0.0", "127.3.3.3", None),
    ("127.1", "127.0.0.1", "127.0.0.2"),
    ("010.0.0.1", "8.0.0.1", "10.0.0.1"),
    ("0x7f.0.0.3", "127.0.0.3", "127.0.0.4"),
    ("10.0.0.5", "10.0.0.5", "10.0.0.6"),
])
def test_d3_3_trailing_zero_octets_inet_aton_forms(value, inside, outside):
    lay = layer(svc("s", f"only_from = {value}"))
    assert addr(lay, "s", inside) == "allow"
    if outside:
        assert addr(lay, "s", outside) == "deny address"


def test_d3_4_cidr_unaligned_zero_v6_128_and_unspecified():
    lay = layer(svc("u", "only_from = 127.0.0.7/29")
                + svc("z", "only_from = 0.0.0.0/0", port=23901)
                + svc("h", "only_from = 127.0.0.5/40", port=23902)
                + svc("v128", "only_from = ::1/128", bind="::1", flags="IPv6", port=23903)
                + svc("vany", "only_from = ::/0", bind="::1", flags="IPv6", port=23904)
                + svc("vunsp", "only_from = ::", bind="::1", flags="IPv6", port=23905)
                + svc("vexact", "only_from = ::1", bind="::1", flags="IPv6", port=23906))
    assert addr(lay, "u", "127.0.0.1") == "allow"
    assert addr(lay, "u", "127.0.0.8") == "deny address"
    assert addr(lay, "z", "127.3.3.3") == "allow"
    assert addr(lay, "h", "127.0.0.5") == "allow"      # N >= 32 is one host
    assert addr(lay, "h", "127.0.0.6") == "deny address"
    assert addr(lay, "v128", "::1") == "deny address"
    assert addr(lay, "vany", "::1") == "allow"
    assert addr(lay, "vunsp", "::1") == "deny address"
    assert addr(lay, "vunsp", "::") == "allow"
    assert addr(lay, "vexact", "::1") == "allow"


def test_d3_5_factorized_widths_blanks_and_commas():
    lay = layer(svc("h", "only_from = 127.0.0.{2,3}")
                + svc("n16", "only_from = 127.{0,5}", port=23901)
                + svc("n24", "only_from = 128.138.{1,2}", port=23902)
                + svc("n8", "only_from = {127}", port=23903)
                + svc("blank", "only_from = 127.0.0.{2, 3}", port=23904)
                + svc("comma", "only_from = 127.0.0.2,127.0.0.3", port=23905)
                + svc("dots", "only_from = 127..0.{1}", port=23906)
                + svc("big", "only_from = 127.0.0.{258}", port=23907))
    assert addr(lay, "h", "127.0.0.2") == "allow"
    assert addr(lay, "h", "127.0.0.4") == "deny address"
    assert addr(lay, "n16", "127.0.9.9") == "allow"
    assert addr(lay, "n16", "127.5.1.1") == "allow"
    assert addr(lay, "n16", "127.6.1.1") == "deny address"
    assert addr(lay, "n24", "128.138.2.200") == "allow"
    assert addr(lay, "n24", "128.138.3.1") == "deny address"
    assert addr(lay, "n8", "127.200.1.1") == "allow"
    for dropped in ("blank", "comma", "dots"):
        assert addr(lay, dropped, "127.0.0.2") == "absent"
    # element values are not range-checked: 258 carries into the next octet
    assert addr(lay, "big", "127.0.1.2") == "allow"


def test_d3_6_trailing_comment_words_are_values_and_can_grant():
    lay = layer(svc("s", "only_from = 127.0.0.2 # trailing comment 127.0.0.3"))
    assert addr(lay, "s", "127.0.0.3") == "allow"
    assert addr(lay, "s", "127.0.0.4") == "deny address"
    policy, diags = load(svc("s", "only_from = 127.0.0.2 # x"))
    assert any("failed to parse #" in str(d) and str(d).startswith("test.conf:") for d in diags)


def test_d3_7_names_resolve_at_load_and_match_by_reverse_name_only():
    lay = layer(svc("host", "only_from = two.example.com")
                + svc("dom", "only_from = .example.com", port=23901)
                + svc("bare", "only_from = example.com", port=23902)
                + svc("case", "only_from = TWO.EXAMPLE.COM", port=23903))
    assert addr(lay, "host", "127.0.0.2") == "allow"
    assert addr(lay, "host", "127.0.0.3") == "deny address"
    assert addr(lay, "dom", "127.0.0.3") == "allow"
    assert addr(lay, "dom", "127.0.0.5") == "allow"          # Five.EXAMPLE.com
    assert addr(lay, "dom", "127.0.0.4") == "deny address"   # four.other.org
    # first occurrence of the pattern must end the name
    assert addr(lay, "dom", "127.1.2.3") == "deny address"
    assert addr(lay, "bare", "127.0.0.1") == "deny address"  # did not resolve: dropped
    assert addr(lay, "case", "127.0.0.2") == "allow"
    # a name the caller already knows is used as the reverse name, unchecked
    d = lay.check_address(Request(service="dom", client="10.9.9.9", host="a.example.com"))
    assert d.allowed


def test_d3_8_families_mapped_clients_and_the_dual_stack_default():
    lay = layer(svc("m4", "only_from = 127.0.0.2", bind="::ffff:127.0.0.1", flags="IPv6")
                + svc("m6", "only_from = ::ffff:0:0/96", bind="::ffff:127.0.0.1",
                      flags="IPv6", port=23901)
                + svc("v4svc", "only_from = ::1", port=23902)
                + svc("v4svc6net", "only_from = ::ffff:0:0/96", port=23903)
                + svc("dual", "only_from = ::ffff:127.0.0.0/104", bind=None, flags="",
                      port=23904))
    assert addr(lay, "m4", "::ffff:127.0.0.2") == "allow"
    assert addr(lay, "m4", "127.0.0.2") == "allow"           # mapped for the socket
    assert addr(lay, "m4", "::ffff:127.0.0.3") == "deny address"
    assert addr(lay, "m6", "::ffff:127.0.0.3") == "allow"
    assert addr(lay, "v4svc", "127.0.0.1") == "deny address"
    assert addr(lay, "v4svc6net", "127.0.0.1") == "deny address"
    # no flags, no bind: Debian's xinetd listens on IPv6, clients are mapped
    assert lay.policy.services["dual"].family == 6
    assert addr(lay, "dual", "127.0.0.2") == "allow"


def test_d3_9_defaults_equals_accumulates_service_operators():
    text = (defaults("only_from = 127.0.0.2", "only_from = 127.0.0.66")
            + svc("inherit")
            + svc("plus", "only_from += 127.0.0.3", port=23901)
            + svc("set", "only_from = 127.0.0.4", port=23902)
            + svc("minus_other", "only_from -= 127.0.0.0/8", port=23903)
            + svc("twice", "only_from = 127.0.0.2", "only_from = 127.0.0.3", port=23904))
    lay = layer(text)
    assert addr(lay, "inherit", "127.0.0.2") == "allow"
    assert addr(lay, "inherit", "127.0.0.66") == "allow"    # defaults '=' was '+='
    assert addr(lay, "inherit", "127.0.0.3") == "deny address"
    assert addr(lay, "plus", "127.0.0.3") == "allow"
    assert addr(lay, "set", "127.0.0.2") == "deny address"
    assert addr(lay, "set", "127.0.0.4") == "allow"
    assert addr(lay, "minus_other", "127.0.0.2") == "allow"  # not identical: kept
    assert addr(lay, "twice", "127.0.0.2") == "deny address"
    assert addr(lay, "twice", "127.0.0.3") == "allow"


def test_d3_10_scalars_first_wins_and_wrong_counts_are_ignored():
    policy, diags = load(svc("s", "cps = 10", "instances = 5", "instances = 0",
                             "per_source += 3"))
    s = policy.services["s"]
    assert s.cps == (50, 10)
    assert s.instances == 5
    assert s.per_source == -1
    text = "\n".join(str(d) for d in diags)
    assert "expects 2 values and 1 values" in text
    assert "attribute already set" in text
    assert "operator '+=' cannot be used" in text


def test_d3_11_cps_default_fixed_window_counts_refused_addresses():
    lay = layer(svc("s", "only_from = 127.0.0.9") + svc("t", port=23901))
    now = NOON
    answers = [full(lay, "s", "127.0.0.2", now + 0.01 * i) for i in range(52)]
    assert answers[:50] == ["deny address"] * 50          # counted although refused
    assert answers[50] == "deny connections per second"   # the 51st trips
    assert answers[51] == "deny connections per second"  # socket closed
    assert full(lay, "t", "127.0.0.2", now + 1) == "allow"  # per service
    assert full(lay, "s", "127.0.0.9", now + 9.9) == "deny connections per second"
    # back after 10 s, the old window (10 s long) is over: a new one opens
    assert full(lay, "s", "127.0.0.9", now + 10.6) == "allow"


def test_d3_12_parent_checks_come_before_the_address_check():
    lay = layer(svc("s", "only_from = 127.0.0.9", "instances = 0")
                + svc("t", "only_from = 127.0.0.9", "max_load = 0.5", port=23901),
                loadavg=lambda: 3.0)
    assert full(lay, "s", "127.0.0.2", NOON) == "deny service_limit"
    assert full(lay, "t", "127.0.0.2", NOON) == "deny load"


def test_d3_13_access_times_local_inclusive_minutes_no_wrap():
    lay = layer(svc("open", "access_times = 11:00-12:00")
                + svc("closed", "access_times = 0:00-11:59 12:01-23:59", port=23901)
                + svc("wrap", "access_times = 22:00-02:00", port=23902))
    assert full(lay, "open", "127.0.0.2", NOON) == "allow"        # 12:00 inclusive
    assert full(lay, "closed", "127.0.0.2", NOON) == "deny time"
    assert full(lay, "closed", "127.0.0.2", NOON + 60) == "allow"  # 12:01
    assert addr(lay, "wrap", "127.0.0.2") == "absent"
    with pytest.raises(RuleSyntaxError):
        load(defaults("instances = x"))
    _, diags = load(defaults("access_times = 1:00-2:00") + svc("s"))
    assert any("should not be in default section" in str(d) for d in diags)


def test_d3_14_zero_limits_refuse_and_per_source_counts_live_leases():
    lay = layer(svc("i0", "instances = 0") + svc("p0", "per_source = 0", port=23901)
                + svc("p1", "per_source = 1", port=23902))
    assert full(lay, "i0", "127.0.0.2", NOON) == "deny service_limit"
    assert full(lay, "p0", "127.0.0.2", NOON) == "deny per_source_limit"
    req = Request(service="p1", client="127.0.0.2", lease=True)
    assert full(lay, "p1", "127.0.0.2", NOON) == "allow"
    lease = lay.take_lease(req, NOON)
    assert full(lay, "p1", "127.0.0.2", NOON + 1) == "deny per_source_limit"
    assert full(lay, "p1", "127.0.0.3", NOON + 1) == "allow"
    assert lay.release(lease)
    assert not lay.release(lease)
    assert full(lay, "p1", "127.0.0.2", NOON + 2) == "allow"


def test_d3_15_bad_value_disables_the_service_only_defaults_is_fatal():
    policy, diags = load(svc("bad", "cps = x 1") + svc("good", port=23901))
    assert "bad" not in policy.services and "good" in policy.services
    assert any("DISABLING SERVICE" in str(d) and str(d).startswith("test.conf:")
               for d in diags)
    with pytest.raises(RuleSyntaxError) as exc:
        load(defaults("cps = x 1") + svc("good"))
    assert exc.value.path == "test.conf" and exc.value.line == 3


def test_d3_16_disable_happens_before_enabled_and_case_is_ignored():
    text = (defaults("enabled = A b")
            + svc("a", "DISABLE = YES") + svc("b", "ONLY_FROM = 127.0.0.2", port=23901)
            + svc("c", port=23902))
    policy, _ = load(text)
    assert set(policy.services) == {"b"}
    lay = layer(text)
    assert addr(lay, "b", "127.0.0.3") == "deny address"
    policy, _ = load(defaults("disabled = c") + svc("c") + svc("d", port=23901))
    assert set(policy.services) == {"d"}


def test_d3_17_banners_are_kept_and_inherited(tmp_path):
    text = (defaults("banner_fail = /tmp/fail")
            + svc("s", "banner = /tmp/hello", "only_from = 127.0.0.9"))
    s = load(text)[0].services["s"]
    assert (s.banner, s.banner_fail, s.banner_success) == ("/tmp/hello", "/tmp/fail", None)


def test_d3_18_libwrap_daemon_name():
    text = (svc("e", flags="")
            + svc("n", "server_args = /usr/sbin/in.ftpd -l", flags="NAMEINARGS", port=23901)
            + svc("w", "libwrap = custom", flags="", port=23902)
            + "service echo\n{\n  type = INTERNAL\n  socket_type = stream\n  wait = no\n}\n")
    p = load(text)[0].services
    assert p["e"].libwrap_name == "echo" and p["e"].libwrap
    assert p["n"].libwrap_name == "in.ftpd"
    assert p["w"].libwrap_name == "custom"
    assert p["echo"].libwrap_name == "echo"
    assert not load(svc("x"))[0].services["x"].libwrap      # NOLIBWRAP


def test_d3_18_acl_wrap_server_is_named_as_acl_wrap_asks(tmp_path):
    """A service whose server is acl-wrap (by basename) records the name
    acl-wrap asks the sidecar with (ext/wrap/main.c): -n in explicit mode,
    else ACL_WRAP_SERVICE from ``env`` (the last one), else the server's
    name; tcpd mode: ACL_WRAP_SERVICE, else argv[0].  Other servers record
    none."""
    wrap = tmp_path / "acl-wrap"
    wrap.write_text("#!/bin/sh\n")
    wrap.chmod(0o755)
    w = str(wrap)
    cases = {
        "env": ("flags = NAMEINARGS NOLIBWRAP", "server_args = /bin/cat",
                "env = ACL_WRAP_SERVICE=x ACL_WRAP_SERVICE=env"),
        "tcpd": ("flags = NAMEINARGS NOLIBWRAP", "server_args = /usr/sbin/in.ftpd -l"),
        "rel": ("flags = NAMEINARGS NOLIBWRAP", "server_args = sub/in.ftpd"),
        "emptyenv": ("flags = NAMEINARGS NOLIBWRAP", "server_args = /bin/cat",
                     "env = ACL_WRAP_SERVICE="),
        "opt": ("flags = NOLIBWRAP", "server_args = -o -n named /bin/cat"),
        "glued": ("flags = NOLIBWRAP", "server_args = -t 500 -onglued /bin/cat"),
        "plain": ("flags = NOLIBWRAP", "server_args = -s /run/q.sock /usr/bin/in.x"),
        "nameinargs": ("flags = NAMEINARGS NOLIBWRAP",
                       "server_args = acl-wrap -n nia /bin/cat"),
        # -n is read after the environment, so it wins
        "optenv": ("flags = NOLIBWRAP", "server_args = -n fromopt /bin/cat",
                   "env = ACL_WRAP_SERVICE=fromenv"),
        "tcpdenv": ("flags = NAMEINARGS NOLIBWRAP", "server_args = /usr/sbin/in.ftpd",
                    "env = ACL_WRAP_SERVICE=tcpdenv"),
    }
    text = "".join(svc(name, *lines, flags="", server=w, port=23901 + i)
                   for i, (name, lines) in enumerate(cases.items()))
    text += svc("cat", port=23950, server="/bin/cat")
    got = {k: v.wrapper_name for k, v in load(text)[0].services.items()}
    assert got == {"env": "env", "tcpd": "in.ftpd", "rel": "sub/in.ftpd", "emptyenv": "cat",
                   "opt": "named", "glued": "glued", "plain": "in.x", "nameinargs": "nia",
                   "optenv": "fromopt", "tcpdenv": "tcpdenv", "cat": None}


def test_d3_19_includedir_skips_and_list_defaults_reach_later_services(tmp_path):
    inc = tmp_path / "xinetd.d"
    inc.mkdir()
    (inc / "a").write_text(svc("a", port=23901))
    (inc / "b.conf").write_text(svc("b", port=23902))
    (inc / "c~").write_text(svc("c", port=23903))
    (inc / "d").mkdir()
    main = tmp_path / "xinetd.conf"
    main.write_text(svc("early") + defaults("only_from = 127.0.0.2") + f"includedir {inc}\n")
    from acl.compile.xinetd import load_xinetd
    from tests.xinetd.helpers import RESOLVER
    policy, _ = load_xinetd(str(main), RESOLVER)
    assert set(policy.services) == {"early", "a"}
    assert policy.services["early"].only_from is None        # defaults came after it
    assert policy.services["a"].only_from is not None
    assert policy.services["a"].location.path == os.path.join(str(inc), "a")


def test_d3_16_enabled_revives_a_service_a_bad_value_disabled():
    # live-verified (test_live_address): parse.c marks such a service disabled
    # but keeps it; remove_disabled_services re-enables what ``enabled`` names.
    text = (defaults("enabled = a b c d")
            + svc("a", "cps = x 1") + svc("b", "only_from = 127.0.0.2 1,2", port=23901)
            + svc("c", "per_source = zz", "disable = yes", port=23902)
            + svc("d", "only_from = 1,2", "disable = no", port=23903))
    policy, _ = load(text)
    assert set(policy.services) == {"a", "b", "d"}
    assert policy.services["a"].cps == (50, 10)               # the bad cps never counted
    lay = layer(text)
    assert addr(lay, "b", "127.0.0.2") == "allow"             # added before the comma
    assert addr(lay, "b", "127.0.0.3") == "deny address"
    assert addr(lay, "d", "127.0.0.3") == "deny address"      # present, empty


def test_sensor_service_denies_and_blocks_the_address_everywhere():
    text = (svc("trap", "deny_time = 2", flags="SENSOR", port=23910).replace(
                "  server = /bin/echo\n", "")
            + svc("real", port=23911) + svc("other", port=23912))
    lay = layer(text)
    assert lay.policy.services["trap"].sensor
    assert full(lay, "real", "127.0.0.7", NOON) == "allow"
    assert full(lay, "trap", "127.0.0.7", NOON) == "deny address"
    assert full(lay, "real", "127.0.0.7", NOON + 1) == "deny address"
    assert full(lay, "other", "127.0.0.7", NOON + 119) == "deny address"
    assert full(lay, "real", "127.0.0.8", NOON + 2) == "allow"
    assert full(lay, "real", "127.0.0.7", NOON + 121) == "allow"      # 2 minutes later
    # the list lives in the limit state: it survives a reload
    lay.check(Request(service="trap", client="127.0.0.9"), NOON + 200)
    from acl.compile.xinetd import XinetdLayer
    from tests.xinetd.helpers import RESOLVER
    lay2 = XinetdLayer(lay.policy, state=lay.state, resolver=RESOLVER)
    assert full(lay2, "real", "127.0.0.9", NOON + 201) == "deny address"


def test_a_cr_stays_in_lines_read_from_files(tmp_path):
    """xinetd ends a line at LF only, in the main file and in what it
    includes: ``127.0.0.2\\r`` fails to parse (the list is present, empty)
    and a CRLF service has bad values (``NOLIBWRAP\\r``), so it is gone."""
    from acl.compile.xinetd import XinetdLayer, load_xinetd
    from tests.xinetd.helpers import RESOLVER
    inc = tmp_path / "xinetd.d"
    inc.mkdir()
    (inc / "d").write_bytes(svc("incdir", port=23902).replace("\n", "\r\n").encode())
    (tmp_path / "more").write_bytes(svc("inc", port=23901).replace("\n", "\r\n").encode())
    main = tmp_path / "xinetd.conf"
    main.write_bytes((svc("cr", "only_from = 127.0.0.2\r") + f"include {tmp_path / 'more'}\n"
                      + f"includedir {inc}\n" + svc("lf", port=23903)).encode())
    policy, diags = load_xinetd(str(main), RESOLVER)
    assert set(policy.services) == {"cr", "lf"}
    lay = XinetdLayer(policy, resolver=RESOLVER)
    assert addr(lay, "cr", "127.0.0.2") == "deny address"
    assert addr(lay, "lf", "127.0.0.2") == "allow"
    shown = [str(d) for d in diags]
    assert f"{main}:12:15: warning: failed to parse 127.0.0.2\\r" in shown
    assert any(s.startswith(f"{tmp_path / 'more'}:11:3: Bad service flag: NOLIBWRAP\\r;")
               for s in shown)


@pytest.mark.parametrize("value,client,want", [
    ("::1%lo", "::1", "deny address"),                 # a name: link-local only
    ("::1%1", "::1", "allow"),                         # a number: any address
    ("::1%99", "::1", "allow"),
    ("::1%4294967296", "::1", "deny address"),         # over 32 bits
    ("::1%+1", "::1", "deny address"),
    ("::%lo/0", "::1", "deny address"),
    ("::%1/0", "::1", "allow"),
    ("fe80::%lo/0", "::1", "allow"),
    ("::ffff:127.0.0.2%lo", "::ffff:127.0.0.2", "deny address"),
    ("::ffff:127.0.0.2%1", "::ffff:127.0.0.2", "allow"),
])
def test_v6_scope_ids_parse_as_numeric_getaddrinfo_does(value, client, want):
    """glibc's getaddrinfo(AI_NUMERICHOST) takes an interface name after %
    only on link-local addresses (live xinetd: "failed to parse ::1%lo")."""
    bind = "::ffff:127.0.0.1" if "ffff" in value else "::1"
    lay = layer(svc("s", f"only_from = {value}", bind=bind, flags="IPv6"))
    assert addr(lay, "s", client) == want


def test_v6_mask_over_128_warns_what_the_real_xinetd_does():
    """xinetd writes an IPv6 /N over 128 past its buffer: a warning at the
    value says whether it then starts, aborts or hangs (live-verified in
    test_live_address); acl keeps the entry, matching nothing."""
    text = (svc("h", "only_from = ::ffff:127.0.0.2/-1", bind="::1", flags="IPv6")
            + svc("a", "no_access = ::1/1000 ::1/129", port=23901)
            + svc("ok", "only_from = ::1/128 127.0.0.1/-1", port=23902))
    policy, diags = load(text)
    head = "IPv6 mask /{} is over 128: xinetd 2.3.15.3 writes it past its 16-byte buffer and "
    assert [str(d) for d in diags if "over 128" in d.message] == [
        "test.conf:12:15: warning: ::ffff:127.0.0.2/-1: " + head.format(4294967295)
        + 'hangs at start (never "Started working"): no service runs',
        "test.conf:25:15: warning: ::1/1000: " + head.format(1000)
        + 'aborts at start ("stack smashing detected"): no service runs',
        "test.conf:25:24: warning: ::1/129: " + head.format(129)
        + "starts; the entry matches nothing"]
    lay = layer(text)
    assert addr(lay, "h", "::ffff:127.0.0.2") == "deny address"
    assert addr(lay, "ok", "127.0.0.1") == "allow"
