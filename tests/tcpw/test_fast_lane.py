"""The hosts.allow reader's fast lane against its full parser.

A client list of plain IPv4 patterns goes straight to packed prefixes
(``acl.core.hosts_scan``: ``ext/acl/_hosts_scan.pyx`` and its twin), and the
usual line skips the general ``xgets`` emulation.  Both must change nothing
but the time: the scanner's answer is the full parser's prefixes whenever it
gives one, on generated client lists; whole generated files read with and
without the fast lane give the same rules, the same tables and the same
answers; and the two ``xgets`` paths give the same logical lines, whose
recorded physical positions hold their text.
"""

from __future__ import annotations

import bisect
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl.compile.tcpw import HostsAccessLayer, client_prefixes, pure_shape
from acl.core import hosts_scan
from acl.model import Request
from acl.parse.hosts_access import build_list, logical_lines, parse_hosts, strtok
from acl.parse.hosts_patterns import client_token
from acl.parse.hosts_prefixes import RulePrefixes
from tests.conftest import load_impl


@pytest.fixture(params=["compiled", "pure"])
def scan(request):
    return load_impl(request.param, "acl._hosts_scan", "acl._hosts_scan_py")


# -- one client list ------------------------------------------------------------

def _octet(draw) -> str:
    # mostly canonical octets; now and then one above 255 or with a leading zero
    odd = draw(st.integers(0, 19))
    v = draw(st.integers(256, 999) if odd == 19 else st.integers(0, 255))
    return "0" + str(v) if odd == 18 else str(v)


@st.composite
def v4_token(draw) -> str:
    kind = draw(st.sampled_from(["quad", "quad", "prefix", "mask", "mask", "bits", "bits", "odd"]))
    if kind == "odd":
        return draw(st.sampled_from([
            "ALL", "EXCEPT", "except", "[::1]", "[2001:db8::]/32", "@group", "/etc/hosts.list",
            "root@10.0.0.1", ".example.com", "10.0.0.*", "é", "1.2.3", "1.2.3.4.", "1..2.",
            "10.0.0.0/", "10.0.0.0/8junk", "10.0.0.0/1.2.3", "LOCAL", "KNOWN", "255.255.255.255",
            "10.0.0.0/255.255.255.255", "0x10.0.0.1", "1.2.3.4/-8", "1.2.3.4/+8"]))
    quad = ".".join(_octet(draw) for _ in range(4))
    if kind == "quad":
        return quad
    if kind == "prefix":
        return ".".join(_octet(draw) for _ in range(draw(st.integers(1, 3)))) + "."
    if kind == "bits":
        bits = draw(st.integers(0, 40))
        return f"{quad}/{draw(st.sampled_from([str(bits), str(bits), '0' + str(bits)]))}"
    length = draw(st.integers(0, 32))
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    if draw(st.integers(0, 5)) == 0:
        mask ^= 1 << draw(st.integers(0, 31))            # not contiguous
    text = ".".join(str((mask >> s) & 0xFF) for s in (24, 16, 8, 0))
    if draw(st.booleans()):
        # a net inside its mask, so that most tokens do match something
        net = ".".join(quad.split(".")[:length // 8] + ["0"] * (4 - length // 8))
        quad = net if all(p == str(int(p)) for p in net.split(".")) else quad
    return f"{quad}/{text}"


client_field = st.lists(
    st.tuples(v4_token(), st.sampled_from([" ", ",", "\t", " , ", "\r", "  "])),
    min_size=0, max_size=5).map(lambda xs: " " + "".join(t + sep for t, sep in xs))


def full_parser_prefixes(text: str):
    """What the full parser makes of a client field: RulePrefixes for a pure
    list (no EXCEPT, every token address-shaped), else None."""
    toks = strtok(text)
    lst = build_list(toks, client_token)
    if lst.tail is not None or not lst.head:
        return None
    got = client_prefixes(lst, users=False)
    return None if got is None else RulePrefixes.from_tuples(got)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])   # scan is a module
@given(text=client_field)
def test_scanner_answers_only_what_the_full_parser_says(scan, text):
    got = scan.v4_client_prefixes(text)
    if got is None:
        return
    want = full_parser_prefixes(text)
    assert want is not None, f"scanner answered for {text!r}, which is not a pure list"
    assert RulePrefixes(*got) == want, text


@settings(max_examples=300, deadline=None)
@given(text=client_field)
def test_compiled_scanner_and_twin_agree(text):
    compiled = load_impl("compiled", "acl._hosts_scan", "acl._hosts_scan_py")
    pure = load_impl("pure", "acl._hosts_scan", "acl._hosts_scan_py")
    assert compiled.v4_client_prefixes(text) == pure.v4_client_prefixes(text)


@pytest.mark.parametrize("value", [None, b"1.2.3.4", 1234, ["1.2.3.4"]])
def test_compiled_scanner_and_twin_refuse_a_non_str_alike(value):
    """v4_client_prefixes(None): the compiled scanner answered None, the twin
    raised AttributeError; both raise TypeError now."""
    from tests.xinetd.test_limits_twins import outcome

    compiled = load_impl("compiled", "acl._hosts_scan", "acl._hosts_scan_py")
    pure = load_impl("pure", "acl._hosts_scan", "acl._hosts_scan_py")
    got = outcome(lambda: compiled.v4_client_prefixes(value))
    assert got == outcome(lambda: pure.v4_client_prefixes(value)) and got[0] == "TypeError"


def test_scanner_takes_the_common_shapes_and_leaves_the_rest(scan):
    """The shapes a file of a million prefixes is written in are all taken."""
    got = scan.v4_client_prefixes(
        " 10.0.0.0/255.255.255.240, 192.168.1. 10.1.0.0/16\t203.0.113.7 10.0.0.1/24\n")
    assert got is not None
    assert list(got[0]) == [0x0A000000, 0xC0A80100, 0x0A010000, 0xCB007107]
    assert list(got[1]) == [28, 24, 16, 32]         # 10.0.0.1/24: host bits, never matches
    for text in (" 10.0.0.1 EXCEPT 10.0.0.2", " ALL", "", " \t", " 010.0.0.1",
                 " 10.0.0.0/255.0.255.0", " user@10.0.0.1", " [::1]"):
        assert scan.v4_client_prefixes(text) is None, text


# -- whole files ------------------------------------------------------------------

def random_file(rng: random.Random, lines: int) -> bytes:
    """Lines of plain prefixes (the fast lane) among lines it must leave alone."""
    out = []
    for n in range(lines):
        daemons = rng.choice(["sshd", "ALL", "sshd, ftpd", "in.ftpd", "sshd EXCEPT ftpd",
                              "sshd@127.0.0.1"])
        pats = []
        for _ in range(rng.randrange(1, 12)):
            a, b, c = rng.randrange(256), rng.randrange(256), rng.randrange(256)
            pats.append(rng.choice([
                f"{a}.{b}.{c}.{rng.randrange(256)}", f"{a}.{b}.", f"{a}.{b}.{c}.0/24",
                f"{a}.{b}.0.0/255.255.0.0", f"{a}.{b}.{c}.{rng.randrange(256)}/28",
                f"{a}.{b}.{c}.0/255.255.255.{rng.choice([0, 128, 240, 5])}",
                f"{a}.{b}.{c}.0/{rng.randrange(0, 40)}"]))
        if rng.random() < 0.15:
            pats.insert(rng.randrange(len(pats) + 1), rng.choice(
                ["EXCEPT", "LOCAL", ".example.com", "[::1]/128", "010.0.0.1", "ALL"]))
        line = f"{daemons}: {rng.choice([' ', ', ', chr(9)]).join(pats)}"
        if rng.random() < 0.3:
            line += rng.choice([": allow", ": deny", ": spawn /bin/true", ": bogus"])
        if rng.random() < 0.05:
            line = "# " + line
        if rng.random() < 0.05:
            line = line.replace(" ", " \\\n", 1)         # a continued line
        out.append(line + "\n")
        if n % 17 == 0:
            out.append("\n")
    return "".join(out).encode()


@pytest.mark.parametrize("seed", range(6))
def test_files_read_with_and_without_the_fast_lane_agree(seed):
    rng = random.Random(seed)
    allow, deny = random_file(rng, 300), random_file(rng, 100)
    scan = hosts_scan.v4_client_prefixes
    fast = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow, scan_clients=scan),
                            parse_hosts("/f/hosts.deny", deny, scan_clients=scan))
    full = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow),
                            parse_hosts("/f/hosts.deny", deny))
    assert len(fast.rules) == len(full.rules) > 300
    scanned = sum(r.scanned is not None for r in fast.rules)
    assert scanned > len(fast.rules) // 2             # the fast lane did the work
    assert all(r.scanned is None for r in full.rules)
    for a, b in zip(fast.rules, full.rules, strict=True):
        assert (a.line, a.first_line, a.source, a.options_text) == \
            (b.line, b.first_line, b.source, b.options_text)
        assert [(t.text, t.offset) for t in a.client_tokens] == \
            [(t.text, t.offset) for t in b.client_tokens]
        assert pure_shape(a) == pure_shape(b)
        assert a.clients == b.clients                  # made on first use, the same
    assert fast.pure == full.pure and fast.residual == full.residual
    for _ in range(3000):
        client = ".".join(str(rng.choice([rng.randrange(256), 0, 10, 192])) for _ in range(4))
        daemon = rng.choice(["sshd", "ftpd", "in.ftpd", "telnetd"])
        request = Request(daemon, client)
        assert fast.check(request, 0.0) == full.check(request, 0.0), request


@pytest.mark.parametrize("seed", range(6))
def test_compact_lines_compile_as_their_rules(seed):
    """Compact lines (one physical line, no options, prefixes only) are
    compiled from the table's columns, before anyone asks for a HostsRule:
    every Decision, shape, flag, table column, metric and ``acl check``
    finding is the full parser's."""
    from acl.compile.tcpw_check import shadowed
    from acl.metrics import rule_counts

    rng = random.Random(seed)
    allow = random_file(rng, 300) + b": 10.9.9.9\n \t: 10.9.9.8\nsshd, ALL: 10.9.9.7\n"
    deny = random_file(rng, 100) + b"sshd: 10.0.0.1/0\nsshd: 10.9.9.6\n"
    if seed % 2:
        # a NUL: every line takes xgets' general path, and libwrap's line
        # counter falls behind the physical line from there on
        allow = b"sshd: 10.8.8.8\0 cut\n" + allow
    scan = hosts_scan.v4_client_prefixes
    fast = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow, scan_clients=scan),
                            parse_hosts("/f/hosts.deny", deny, scan_clients=scan))
    full = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow),
                            parse_hosts("/f/hosts.deny", deny))
    n = len(full.rules)
    assert len(fast.rules) == n and len(fast.decisions) == n and len(fast.shapes) == n
    assert [fast.decisions[i] for i in range(n)] == list(full.decisions)
    assert list(fast.shapes) == list(full.shapes)
    assert (fast.pure, fast.dynamic, fast.residual) == (full.pure, full.dynamic, full.residual)
    for key in ["sshd", "ftpd", "in.ftpd", "telnetd"]:
        assert fast.prefix_columns(key) == full.prefix_columns(key)
    assert fast.daemon_names() == full.daemon_names()
    assert rule_counts(fast) == rule_counts(full)
    assert [str(d) for d in shadowed(fast)] == [str(d) for d in shadowed(full)]
    assert fast.decisions[-1] is fast.decisions[n - 1]      # made once, then kept
    assert fast.rules[-1] is fast.rules[n - 1] is fast.deny.rules[-1]
    assert [(r.line, r.first_line) for r in fast.rules[3:9]] == \
        [(r.line, r.first_line) for r in full.rules[3:9]]
    assert [(r.line, r.first_line, r.source) for r in fast.rules] == \
        [(r.line, r.first_line, r.source) for r in full.rules]
    if seed % 2:
        assert any(r.line != r.first_line for r in full.rules)


def test_compact_lines_make_no_rule_objects():
    """A DenyHosts-shaped file compiles with no HostsRule, Decision or
    RulePrefixes per line: they are made when asked for, once."""
    import gc

    from acl.model import Decision
    from acl.parse.hosts_access import HostsRule

    data = "".join(f"sshd: 10.{i >> 8 & 255}.{i & 255}.{i % 7}/32\n" for i in range(2000))
    scan = hosts_scan.v4_client_prefixes

    def alive(kind) -> int:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.get_objects())

    before = {k: alive(k) for k in (HostsRule, Decision, RulePrefixes)}
    layer = HostsAccessLayer(parse_hosts("/f/hosts.allow", data.encode(), scan_clients=scan),
                             parse_hosts("/f/hosts.deny", b"", scan_clients=scan))
    assert layer.check(Request("sshd", "10.0.7.0"), 0.0).location.line == 8
    assert {k: alive(k) - n for k, n in before.items()} == \
        {HostsRule: 0, Decision: 1, RulePrefixes: 0}
    assert layer.rules[7].scanned == RulePrefixes(
        *hosts_scan.v4_client_prefixes(" 10.0.7.0/32\n"))
    assert alive(HostsRule) - before[HostsRule] == 1


def test_a_compiled_layer_is_freed_by_its_reference_count():
    """No reference cycle in a layer, with every lazy part made: a reload
    makes few objects now, so the cyclic collector's full pass (which would
    free a cycle) may not come for many reloads, and each replaced policy
    would stay in memory until then."""
    import gc
    import weakref

    rng = random.Random(7)
    scan = hosts_scan.v4_client_prefixes
    was = gc.isenabled()
    gc.disable()
    try:
        layer = HostsAccessLayer(
            parse_hosts("/f/hosts.allow", random_file(rng, 200), scan_clients=scan),
            parse_hosts("/f/hosts.deny", random_file(rng, 50), scan_clients=scan))
        list(layer.decisions), list(layer.shapes), list(layer.rules)
        layer.check(Request("sshd", "10.1.2.3"), 0.0)
        layer.check(Request("sshd", "unknown"), 0.0)          # every rule's closure
        gone = weakref.ref(layer)
        del layer
        assert gone() is None
    finally:
        if was:
            gc.enable()


# -- logical lines --------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["sshd: 10.0.0.1", "a", "\\", "\n", "\\\n", "\r", " ", "#",
                                 "x" * 700, "ALL: ALL", ":"]), max_size=30))
def test_fast_and_general_logical_lines_agree(pieces):
    data = "".join(pieces).encode()
    fast = list(logical_lines(data))
    general = list(logical_lines(data, fast=False))
    assert fast == general
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 10]
    for ll in general:
        ends = list(ll.starts[1:]) + [len(ll.text)]
        for start, end, line, col in zip(ll.starts, ends, ll.lines, ll.cols, strict=True):
            at = starts[line - 1] + col - 1
            assert data[at:at + end - start] == ll.text[start:end].encode("latin-1")
            assert start > 0 or at == ll.at        # where compact lines are read again
            assert bisect.bisect_right(starts, at) == line


BROADCAST_PATTERNS = ["255.255.255.255", "255.", "255.255.", "255.255.255.", "255.255.255.255/32",
                      "255.255.255.0/24", "255.255.255.255/255.255.255.255", "1.255.", "0.0.0.0/0",
                      "25.255.255.255", "255.255.255.254"]


@pytest.mark.parametrize("seed", range(8))
def test_the_broadcast_address_tries_only_the_lines_that_may_match_it(seed):
    """255.255.255.255 is no number to libwrap, so only a pattern written
    with ``255.`` in it (the address itself, or a prefix of it) matches it:
    its scan tries the full rules and the compact lines holding ``255.``,
    and answers as the full parser's layer that tries every rule."""
    rng = random.Random(seed)

    def planted(lines: int) -> bytes:
        out = random_file(rng, lines).decode().splitlines(keepends=True)
        for _ in range(rng.randrange(1, 6)):
            daemons = rng.choice(["sshd", "ALL", "ftpd", "sshd, ftpd"])
            pats = rng.sample(BROADCAST_PATTERNS, rng.randrange(1, 3))
            out.insert(rng.randrange(len(out) + 1), f"{daemons}: {' '.join(pats)}\n")
        return "".join(out).encode()

    allow, deny = planted(200), planted(80)
    scan = hosts_scan.v4_client_prefixes
    fast = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow, scan_clients=scan),
                            parse_hosts("/f/hosts.deny", deny, scan_clients=scan))
    full = HostsAccessLayer(parse_hosts("/f/hosts.allow", allow),
                            parse_hosts("/f/hosts.deny", deny))
    for daemon in ["sshd", "ftpd", "in.ftpd", "telnetd"]:
        for client in ["255.255.255.255", "::ffff:255.255.255.255", "::FFFF:255.255.255.255"]:
            request = Request(daemon, client)
            assert fast.check(request, 0.0) == full.check(request, 0.0), (daemon, client)
    # each pattern alone deciding, for a daemon no other line names
    for pattern in BROADCAST_PATTERNS:
        lone = random_file(rng, 20) + f"telnetd: 10.1.1.1 {pattern}\n".encode()
        one = HostsAccessLayer(parse_hosts("/f/a", lone, scan_clients=scan),
                               parse_hosts("/f/d", b"", scan_clients=scan))
        ref = HostsAccessLayer(parse_hosts("/f/a", lone), parse_hosts("/f/d", b""))
        request = Request("telnetd", "255.255.255.255")
        assert one.check(request, 0.0) == ref.check(request, 0.0), pattern
    tried = {i for i, _ in fast._broadcast_candidates()}
    compact = [i for i in range(len(fast.rules)) if i not in set(fast.allow.rules.full_rules())
               | {fast.n_allow + j for j in fast.deny.rules.full_rules()}]
    assert compact and not set(compact) <= tried     # some compact lines were left out
    assert fast._fns is None                          # and no rule was made for them all
