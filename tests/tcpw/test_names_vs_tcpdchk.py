"""``acl check``'s name checks say what the real tcpdchk's say, and no more.

Both programs run on the same generated hosts.allow/hosts.deny pairs (and
their ``/file`` patterns), one after the other, inside one private network
and mount namespace (names_ns.py) where every name is answered by the test:
a private /etc/hosts, a netgroup file and a fake DNS server (fake_dns.py)
with names that resolve, do not resolve, are CNAME or /etc/hosts aliases,
have several addresses, only IPv6 addresses, a mapped address,
addresses whose PTR fails libwrap's double check each way, and an address
alone on its /etc/hosts line (glibc names it ``""``, and tcpdchk says
nothing of it).

For every file and line, the name warnings of ``LD_PRELOAD=shim tcpdchk -d``
and the name findings of ``acl check -d`` must be the same multiset of
(kind, subject) -- "host not found" of the same token, "hostname alias" of
the same token with the same official name, the same address without a
name, the same libwrap double-check failure, the same server host with
several addresses, the same netgroup.  Left out, each for a reason the
module rules of acl/check_names.py give:

* tcpdchk's "host not found" for a wildcard (``*``/``?``) token;
* rules whose line holds a CR: tcpdchk splits lists on ", \\t\\n" (no CR,
  unlike libwrap), so a CRLF file gives it tokens ending in CR;
* what follows a NUL on a line of a ``/file``: tcpdchk stops reading the
  line there, libwrap (and acl) go on;
* cases where a file stops libwrap's scan (no final newline, a line too
  long): tcpdchk checks the lines after the stop, libwrap never reads them;
* the tokens after a ``/file`` pattern in the same list (or on the same
  line of a pattern file): tcpdchk walks both with ``strtok``, so reading
  the file ends the walk of the list, and a pattern file named only where
  tcpdchk does not read is never opened (:func:`blind_spots`);
* ``user``/``group`` options in the generated rules: tcpdchk carries them
  out (spec A.8) and, as nobody, can read no later ``/file``.

``test_a_silent_dns_server_does_not_hold_acl_check``: a DNS server that
never answers; acl check ends at its ``--names-timeout`` with every name
reported as not checked, where tcpdchk is still waiting for its first
names; ``--no-names`` asks nothing.  The netgroups named after those names
are checked all the same (they are not DNS questions), and say what
tcpdchk says of them.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from acl.check_names import WORKERS
from acl.parse.hosts_access import parse_hosts
from acl.parse.hosts_patterns import split_at

from . import gen
from .names_ns import run_commands
from .names_ns import unavailable as ns_unavailable
from .tcpdmatch import build_shim
from .tcpdmatch import unavailable as tcpd_unavailable

ROOT = Path(__file__).resolve().parents[2]

HOSTS = gen.HOSTS + """10.0.1.5 multi.hosts.test
10.0.1.6 multi.hosts.test
2001:db8:5::5 only6.hosts.test
::ffff:10.0.1.9 mapped.hosts.test
10.0.1.10 canon.hosts.test nick.hosts.test
10.0.1.20
10.0.1.11 """ + "long" * 40 + """.hosts.test longalias.hosts.test
"""

ZONE = {
    "a": {"a.lab.test": "10.20.0.1", "noptr.lab.test": "10.20.0.2", "dual.lab.test": "10.20.0.3",
          "multi.lab.test": ["10.20.0.4", "10.20.0.5"], "wrongptr.lab.test": "10.20.0.6",
          "aliasptr.lab.test": "10.20.0.7", "numptr.lab.test": "10.20.0.8",
          "lostptr.lab.test": "10.20.0.9"},
    "aaaa": {"six.lab.test": "2001:db8:20::1", "six-noptr.lab.test": "2001:db8:20::2",
             "dual.lab.test": "2001:db8:20::3",
             # a mapped address: libwrap checks it as IPv4 (10.20.0.6's PTR
             # names a.lab.test, which does not have it)
             "mapwrong.lab.test": "::ffff:10.20.0.6"},
    "cname": {"www.lab.test": "a.lab.test", "chain.lab.test": "www.lab.test",
              "dangling.lab.test": "gone.lab.test"},
    "ptr": {"10.20.0.1": "a.lab.test", "10.20.0.3": "dual.lab.test", "2001:db8:20::1": "six.lab.test",
            "2001:db8:20::3": "dual.lab.test", "10.20.0.4": "multi.lab.test",
            "10.20.0.6": "a.lab.test", "10.20.0.7": "www.lab.test", "10.20.0.8": "10.20.0.8",
            "10.20.0.9": "lost.lab.test"},
}

NETGROUP = "labgroup (a.lab.test,,)\nemptygroup\n"

#: host tokens with something to say (or, as cleanly, nothing)
NAME_TOKENS = [
    "a.lab.test", "A.LAB.TEST", "noptr.lab.test", "dual.lab.test", "multi.lab.test",
    "wrongptr.lab.test", "aliasptr.lab.test", "numptr.lab.test", "lostptr.lab.test",
    "six.lab.test", "six-noptr.lab.test", "www.lab.test", "chain.lab.test", "dangling.lab.test",
    "nx.lab.test", "nx", "multi.hosts.test", "only6.hosts.test", "mapped.hosts.test",
    "nick.hosts.test", "canon.hosts.test", "good", "lhseven", "ydup.example.com",
    "longalias.hosts.test",     # its official name is cut at 128 characters
    "mapwrong.lab.test",
    "10.20.0.1", "10.20.0.2", "10.20.0.6", "10.20.0.8", "10.20.0.9", "010.20.0.1", "10.20.1",
    "10.0.1.20",    # alone on its /etc/hosts line: named "", which passes libwrap's check
    "@labgroup", "@emptygroup", "@nosuchgroup",
]
SERVER_NAMES = ["a.lab.test", "dual.lab.test", "multi.lab.test", "multi.hosts.test",
                "six.lab.test", "www.lab.test", "nx.lab.test", "localhost", "10.20.0.2"]

KINDS = {"notfound", "alias", "noname", "numeric", "forward", "canonical", "address", "multi",
         "netgroup"}


class NamesGen(gen.Gen):
    """gen.Gen's rules, with names from the test's zone mixed in."""

    def host_token(self, depth: int = 0) -> str:
        if self.r.random() < 0.3:
            return self.r.choice(NAME_TOKENS)
        return super().host_token(depth)

    def daemon_token(self) -> str:
        if self.r.random() < 0.2:
            return f"{self.r.choice(gen.DAEMONS)}@{self.r.choice(SERVER_NAMES)}"
        return super().daemon_token()

    def options(self) -> str:
        # tcpdchk carries out user/group options (spec A.8): after "user
        # nobody" it reads no later /file pattern (pytest's tmp is 0700)
        text = super().options()
        return ": ".join(o for o in text.split(": ") if not o.startswith(("user", "group"))
                         ) or "allow"


# -- reading both programs' words --------------------------------------------

_TCPD_LINE = re.compile(r"^warning: (.+?), line (\d+): (.*)$", re.M)
_TCPD = [
    ("notfound", re.compile(r"^(.*): host not found$")),
    ("alias", re.compile(r"^(.*): hostname alias$")),
    ("noname", re.compile(r"^host address (.*)->name lookup failed$")),
    ("numeric", re.compile(r"^host name/name mismatch: reverse lookup results in non-FQDN (.*)$")),
    ("forward", re.compile(r"^can't verify hostname: getaddrinfo\((.*), (AF_INET6?)\) failed$")),
    ("canonical", re.compile(r"^host name/name mismatch: (.*) != (.*)$")),
    ("address", re.compile(r"^host name/address mismatch: (.*) != (.*)$")),
    ("multi", re.compile(r"^host (.*) has more than one address$")),
    ("netgroup", re.compile(r"^(.*): unknown or empty netgroup$")),
]
_ACL_LINE = re.compile(r"^(.+?):(\d+):(\d+): warning: (.*)$", re.M)
_ACL = [
    ("notfound", re.compile(r"^(.*): host not found \(")),
    ("alias", re.compile(r"^(.*): hostname alias of (.*) \(libwrap matches")),
    ("alias", re.compile(r"^(.*): hostname alias with no official name()")),
    ("noname", re.compile(r"^.*: host address (\S+) has no name ")),
    ("numeric", re.compile(r"^.*: host address \S+ has the numeric name (\S+) ")),
    ("forward", re.compile(r"^.*: host address \S+ has the name (\S+), which does not resolve "
                           r"\((AF_INET6?):")),
    ("canonical", re.compile(r"^.*: host address \S+ has the name (\S+), whose official name "
                             r"is (\S+) \(")),
    ("address", re.compile(r"^.*: host address (\S+) has the name \S+, which does not resolve "
                           r"to it \(official name (\S*);")),
    ("multi", re.compile(r"^(.*): server host has \d+ addresses")),
    ("netgroup", re.compile(r"^@(.*): unknown or empty netgroup")),
    ("not checked", re.compile(r"^(.*): not checked: ")),
    ("not checked", re.compile(r"^(.*): host address (\S+) not checked: ")),
]


def tcpdchk_names(text: str) -> list[tuple]:
    """(file, line, kind, *subject) of each name warning tcpdchk printed."""
    out: list[tuple] = []
    for m in _TCPD_LINE.finditer(text):
        fname, line, msg = m.group(1), int(m.group(2)), m.group(3)
        off = re.match(r"^\((?:official name: (.*)|(cannot obtain) official name)\)$", msg)
        if off and out and out[-1][2] == "alias":
            out[-1] = (*out[-1][:4], off.group(1) if off.group(1) is not None else "")
            continue
        for kind, rx in _TCPD:
            hit = rx.match(msg)
            if hit:
                out.append((fname, line, kind, *hit.groups()))
                break
    return out


def acl_names(text: str) -> list[tuple]:
    """(file, line, column, kind, *subject) of each name finding acl check printed."""
    out = []
    for m in _ACL_LINE.finditer(text):
        msg = re.sub(r" \[in a pattern file named at \S+\]$", "", m.group(4))
        for kind, rx in _ACL:
            hit = rx.match(msg)
            if hit:
                out.append((m.group(1), int(m.group(2)), int(m.group(3)), kind, *hit.groups()))
                break
    return out


# -- the comparison ----------------------------------------------------------

def _rule_lines(path: Path, data: bytes | None) -> dict[int, int]:
    """Physical line -> libwrap's line number of the rule (what tcpdchk prints);
    lines of a rule holding a CR are left out (see the module docstring)."""
    table = parse_hosts(str(path), data, read_file=None)
    out = {}
    for rule in table.rules:
        if "\r" in rule.source.text:
            continue
        for n in range(rule.first_line, rule.line + 1):
            out[n] = rule.line
    return out


def _nul_columns(files: dict[str, str]) -> dict[tuple[str, int], int]:
    """(pattern file, line) -> column of its first NUL."""
    out = {}
    for path, body in files.items():
        for n, text in enumerate(body.split("\n"), start=1):
            if "\0" in text:
                out[(path, n)] = text.index("\0") + 1
    return out


def blind_spots(case: gen.Case, work: Path) -> set[tuple[str, int, int]]:
    """(file, line, column) of the host tokens tcpdchk never reads.

    tcpdchk walks a daemon or client list with ``strtok``, and reading a
    ``/file`` pattern walks each of its lines with ``strtok`` too, which
    leaves nothing for the walk of the list: every token after a ``/file``
    that opens is skipped (the rest of the line, inside a pattern file).
    A pattern file named only where tcpdchk does not read (there, after a
    NUL on a line of a pattern file, or just before the CR of a CRLF line,
    which tcpdchk keeps in the name) is never opened: none of its tokens is
    read.
    """
    out = set()
    opened = set()                          # pattern files a read token names
    for name, data in (("hosts.allow", case.allow), ("hosts.deny", case.deny)):
        for rule in parse_hosts(str(work / name), data, read_file=None).rules:
            for tokens, server in ((rule.daemon_tokens, True), (rule.client_tokens, False)):
                blind = False
                for t in tokens:
                    parts = split_at(t.text, "@", 1)
                    host, skip = (t.text, 0) if parts is None else (parts[1], len(parts[0]) + 1)
                    if blind:
                        out.add((name, *rule.where(t.offset + skip)))
                    elif host.startswith("/") and host in case.files and (parts or not server):
                        blind = True
                        end = t.offset + len(t.text)
                        if rule.source.text[end:end + 1] != "\r":
                            opened.add(host)    # (tcpdchk's token keeps a CR: no such file)
    names: dict[str, set[str]] = {}         # pattern file -> the files its read tokens name
    tokens: dict[str, list[tuple[str, int, int]]] = {}
    for path, body in case.files.items():
        for n, text in enumerate(body.split("\n"), start=1):
            blind = False
            nul = text.find("\0")
            for m in re.finditer(r"[^ \t\r\n]+", text):
                tokens.setdefault(path, []).append((path, n, m.start() + 1))
                if blind:
                    out.add((path, n, m.start() + 1))
                elif m.group().split("\0", 1)[0] in case.files:
                    blind = True
                    if nul < 0 or m.start() < nul:
                        names.setdefault(path, set()).add(m.group().split("\0", 1)[0])
    todo = list(opened)
    while todo:                             # at most one visit per file
        for other in names.get(todo.pop(), ()):
            if other not in opened:
                opened.add(other)
                todo.append(other)
    for path, where in tokens.items():
        if path not in opened:
            out.update(where)
    return out


def compare(case: gen.Case, work: Path, tcpd_text: str, acl_text: str) -> tuple[list, Counter]:
    """The disagreements of one case, and the kinds compared."""
    lines = {name: _rule_lines(work / name, data)
             for name, data in (("hosts.allow", case.allow), ("hosts.deny", case.deny))}
    nuls = _nul_columns(case.files)
    unread = blind_spots(case, work)
    real: Counter = Counter()
    for fname, line, kind, *subject in tcpdchk_names(tcpd_text):
        if fname in lines:
            if line not in lines[fname].values():
                continue                    # a rule of a CR line
        if kind in ("notfound", "alias", "multi") and re.search(r"[*?]", subject[0]):
            continue                        # a wildcard, never looked up by libwrap
        if kind in ("notfound", "netgroup") and subject[0] == "":
            continue                        # empty host / "@": acl's lint says so
        real[(fname, line, kind, *subject)] += 1
    ours: Counter = Counter()
    for fname, line, col, kind, *subject in acl_names(acl_text):
        if (fname, line, col) in unread:
            continue
        if fname in lines:
            if line not in lines[fname]:
                continue
            line = lines[fname][line]
        elif (fname, line) in nuls and col > nuls[(fname, line)]:
            continue                        # past a NUL: tcpdchk never reads it
        ours[(fname, line, kind, *subject)] += 1
    bad = []
    for key in sorted(set(real) | set(ours), key=str):
        if real[key] != ours[key]:
            bad.append(f"seed {case.seed}: {key}: tcpdchk {real[key]}, acl {ours[key]}")
    return bad, Counter(k[2] for k in real.elements())


def compare_pairs(cases, results, hosts_file=None) -> tuple[list, Counter]:
    """The findings of each (case, work) -- tcpdchk's run, then acl check's,
    in ``results`` -- compared; what differs (with the hosts file it used,
    when one names it), and how many of each kind were met."""
    bad, kinds = [], Counter()
    for i, (case, work) in enumerate(cases):
        real, ours = results[2 * i], results[2 * i + 1]
        assert real["rc"] == 0, real
        assert ours["rc"] in (0, 1, 100), ours
        assert "Traceback" not in ours["stdout"], ours["stdout"]
        b, k = compare(case, work, real["stdout"], ours["stdout"])
        if hosts_file is not None:
            b = [f"{x}\n--- hosts file:\n{(work / hosts_file).read_text('latin-1')}" for x in b]
        bad += b
        kinds += k
    return bad, kinds


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    why = tcpd_unavailable() or ns_unavailable()
    if why:
        pytest.skip(why)
    return build_shim(tmp_path_factory.mktemp("shim"))


def acl_check_command(cwd: Path, *args: str, timeout: float = 60) -> dict:
    return {"argv": [sys.executable, "-m", "acl", "check", "-d", *args], "cwd": str(cwd),
            "env": dict(os.environ, PYTHONPATH=str(ROOT)), "timeout": timeout}


def tcpdchk_command(cwd: Path, shim: str, timeout: float = 60) -> dict:
    return {"argv": ["tcpdchk", "-d"], "cwd": str(cwd),
            "env": dict(os.environ, LD_PRELOAD=shim), "timeout": timeout}


def test_acl_check_names_match_tcpdchk(tmp_path, shim):
    cases = []
    for seed in range(300, 400):
        if len(cases) == 40:
            break
        work = tmp_path / f"n{seed}"
        g = NamesGen(seed, str(work))
        case = g.case(g.r.randint(3, 12), g.r.randint(3, 12), 0)
        stops = [parse_hosts("x", data).stop for data in (case.allow, case.deny)]
        if any(stops):
            continue                        # see the module docstring
        work.mkdir(parents=True)
        for name, data in (("hosts.allow", case.allow), ("hosts.deny", case.deny)):
            if data is not None:
                (work / name).write_bytes(data)
        for path, body in case.files.items():
            Path(path).write_text(body, encoding="latin-1")
        cases.append((case, work))
    commands = []
    for _, work in cases:
        commands += [tcpdchk_command(work, shim), acl_check_command(work)]
    results = run_commands(tmp_path, hosts=HOSTS, dns=ZONE, netgroup=NETGROUP,
                           commands=commands)
    bad, kinds = compare_pairs(cases, results)
    assert len(cases) == 40
    assert set(kinds) == KINDS, kinds        # every kind of warning was met
    assert sum(kinds.values()) >= 200, kinds
    assert not bad, "\n".join(bad[:30])


def test_a_silent_dns_server_does_not_hold_acl_check(tmp_path, shim):
    names = [f"n{i}.silent.test" for i in range(40)]
    (tmp_path / "hosts.allow").write_text(
        "sshd: " + " ".join(names) + "\nsshd@srv.silent.test: 10.30.0.1 @labgroup\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    # glibc's defaults: 5 s a try, 2 tries -- per name, one name after the other
    slow = "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n"
    runs = run_commands(tmp_path, hosts="127.0.0.1 localhost\n", dns={"silent": [""]},
                        resolv=slow, netgroup=NETGROUP,
                        commands=[acl_check_command(tmp_path, "--names-timeout", "2", timeout=60),
                                  acl_check_command(tmp_path, "--no-names", timeout=60),
                                  tcpdchk_command(tmp_path, shim, timeout=12)])
    timed, off, real = runs
    assert timed["rc"] == 1, timed
    found = acl_names(timed["stdout"])
    late = {f[4] for f in found if f[3] == "not checked"}
    assert late >= {*names, "srv.silent.test", "10.30.0.1"}, timed["stdout"]
    assert all(f[3] == "not checked" for f in found), timed["stdout"]
    assert "within 2 s" in timed["stdout"]
    # nothing asked: no name finding at all
    assert off["rc"] == 0 and off["stdout"] == "", off
    # the real tcpdchk is still waiting for its first names when stopped
    assert real["rc"] == "timeout", real
    assert len(tcpdchk_names(real["stdout"])) < 5, real["stdout"]


def test_netgroups_are_checked_while_every_name_waits_on_a_silent_dns_server(tmp_path, shim):
    """Netgroups come from NSS (``netgroup: files`` here), never from DNS: a
    DNS server that holds every name lookup past the deadline must not leave
    the netgroups written after those names "not checked".  Their findings
    are the real tcpdchk's on the same netgroups (a file naming only them,
    which it can check with DNS dead)."""
    names = [f"n{i}.silent.test" for i in range(3 * WORKERS)]
    groups = ["@labgroup", "@emptygroup", "@nosuchgroup"]
    (tmp_path / "hosts.allow").write_text(
        "sshd: " + " ".join(names) + "\nftpd: " + " ".join(groups) + "\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    only_groups = tmp_path / "groups"
    only_groups.mkdir()
    (only_groups / "hosts.allow").write_text("ftpd: " + " ".join(groups) + "\n")
    (only_groups / "hosts.deny").write_text("ALL: ALL\n")
    slow = "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n"
    ours, real = run_commands(
        tmp_path, hosts="127.0.0.1 localhost\n", dns={"silent": [""]}, resolv=slow,
        netgroup=NETGROUP, commands=[acl_check_command(tmp_path, "--names-timeout", "2"),
                                     tcpdchk_command(only_groups, shim, timeout=30)])
    assert ours["rc"] == 1 and real["rc"] == 0, (ours, real)
    found = acl_names(ours["stdout"])
    late = {f[4] for f in found if f[3] == "not checked"}
    assert late == set(names), ours["stdout"]           # the names did wait
    group_words = sorted(f[4] for f in found if f[3] == "netgroup")
    real_words = sorted(f[3] for f in tcpdchk_names(real["stdout"]) if f[2] == "netgroup")
    assert group_words == real_words == ["emptygroup", "nosuchgroup"], (ours, real)
