"""``acl check --hosts-file F`` says what the real tcpdchk says on a machine
whose /etc/hosts is F and whose nsswitch.conf says ``hosts: files``.

Each case is a generated hosts file and a generated hosts.allow/hosts.deny
pair (test_names_vs_tcpdchk.py's generator, with the hosts file's names and
addresses mixed in).  Both programs run in one namespace of names_ns.py:

* tcpdchk in a mount namespace of its own where F is bind-mounted over
  /etc/hosts and ``hosts: files`` over nsswitch.conf: F alone answers it;
* acl check with ``--hosts-file F`` where /etc/hosts is a decoy naming the
  same hosts at other addresses, and DNS (fake_dns.py) answers the zone of
  test_names_vs_tcpdchk.py: an acl check that asked the system resolver
  instead of F, or after it, would say other things.

The findings are compared as test_names_vs_tcpdchk.py compares them (its
``compare``, with the cases it leaves out and why).  The hosts files hold
what glibc's ``files`` module reads in its own way: aliases, names on
several lines, IPv6 and ``::ffff:a.b.c.d`` lines, a name longer than
libwrap's 127-character buffer (and the cut name on a line of its own),
a number as a name, comments, lines glibc skips, and addresses alone on a
line (glibc names them ``""``: test_an_address_only_line_names_its_address_the_empty_name).
Netgroups come from the system in both (the namespace's netgroup file).

``ACL_SLOW=1`` compares 400 cases, from seeds shifted by ``ACL_SEED_BASE``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from acl.parse.hosts_access import parse_hosts
from tests.conftest import SLOW, SLOW_SEED_BASE

from .names_ns import run_commands
from .names_ns import unavailable as ns_unavailable
from .tcpdmatch import NSSWITCH
from .test_names_vs_tcpdchk import (
    HOSTS,
    KINDS,
    NETGROUP,
    SERVER_NAMES,
    ZONE,
    NamesGen,
    acl_check_command,
    acl_names,
    compare_pairs,
    shim,  # noqa: F401  (a fixture)
    tcpdchk_command,
    tcpdchk_names,
)

CASES = 400 if SLOW else 40
FIRST_SEED = 500_000 + SLOW_SEED_BASE if SLOW else 500
#: 131 characters: libwrap keeps 127 of a PTR name (acl/resolve.py NAME_LIMIT)
LONG = "l" * 60 + "." + "o" * 60 + ".long.test"
NAMES = [f"h{i}.hf.test" for i in range(6)] + [
    "H0.HF.Test", "solo", "Solo", "localhost", "10.40.0.6", LONG, LONG[:127]]
V4 = [f"10.40.0.{i}" for i in range(1, 9)]
V6 = ["2001:db8:40::1", "2001:db8:40::2", "::ffff:10.40.0.7", "::ffff:10.40.0.8", "::1"]
#: address fields glibc's parser may read otherwise than a strict one
ODD = ["10.40.1", "010.40.0.3", "0x0a.40.0.4", "10.40.0.300", "1.2.3.4.5", "bad",
       "2001:db8:40::9%lo", "10.40.0.5/24", "127.1"]
#: rule tokens about the file that are not in it
ABSENT = ["nx.hf.test", "10.40.0.99", "10.40.0.0"]
#: the decoy /etc/hosts acl check must not read: the same names elsewhere
DECOY = HOSTS + "".join(f"10.99.0.{i} {n}\n" for i, n in enumerate(NAMES[:8], start=1))


def hosts_text(r) -> str:
    lines = []
    for _ in range(r.randint(4, 14)):
        k = r.random()
        if k < 0.08:
            lines.append(r.choice(["# a comment", "", "   ", "#10.40.0.1 h0.hf.test"]))
            continue
        addr = r.choice(ODD if k < 0.2 else V6 + ["127.0.0.1"] if k < 0.4 else V4)
        # an address alone: glibc names it "" (acl/resolve.py rules)
        names = [] if r.random() < 0.15 else r.sample(NAMES, r.choice([1, 1, 1, 2, 2, 3]))
        line = r.choice(["", " ", "\t"]) + addr + "".join(r.choice([" ", "\t", " \t "]) + n
                                                          for n in names)
        if r.random() < 0.15:
            line += r.choice([" # trailing", "#x", " #"])
        lines.append(line)
    return "\n".join(lines) + "\n"


class HostsFileGen(NamesGen):
    """test_names_vs_tcpdchk's rules, with the hosts file's own names and
    addresses (and some it lacks) mixed in."""

    def host_token(self, depth: int = 0) -> str:
        k = self.r.random()
        if k < 0.25:
            return self.r.choice(NAMES)
        if k < 0.4:
            return self.r.choice(V4 + ABSENT + ["@labgroup", "@emptygroup", "@nosuchgroup"])
        return super().host_token(depth)

    def daemon_token(self) -> str:
        if self.r.random() < 0.2:
            host = self.r.choice(NAMES + ABSENT[:1] + SERVER_NAMES)
            return f"{self.r.choice(['sshd', 'ftpd'])}@{host}"
        return super().daemon_token()


def _in_own_etc(command: dict, hosts: Path, nss: Path) -> dict:
    """``command`` run where ``hosts`` is /etc/hosts and ``nss`` is
    /etc/nsswitch.conf: a mount namespace of its own inside the test's.  A
    preload goes to the command alone, not to the tools that set it up."""
    env = dict(command["env"])
    preload = [f"LD_PRELOAD={env.pop('LD_PRELOAD')}"] if "LD_PRELOAD" in env else []
    script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && ' \
             'shift 2 && exec env "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(hosts), str(nss), *preload, *command["argv"]]
    return {**command, "argv": argv, "env": env}


def test_acl_check_hosts_file_names_match_tcpdchk(tmp_path, shim):  # noqa: F811
    nss = tmp_path / "nsswitch.conf"
    nss.write_text(NSSWITCH)
    cases = []
    for seed in range(FIRST_SEED, FIRST_SEED + 3 * CASES):
        if len(cases) == CASES:
            break
        work = tmp_path / f"h{seed}"
        g = HostsFileGen(seed, str(work))
        hosts = hosts_text(g.r)
        case = g.case(g.r.randint(3, 12), g.r.randint(3, 12), 0)
        if any(parse_hosts("x", data).stop for data in (case.allow, case.deny)):
            continue                        # see test_names_vs_tcpdchk.py
        work.mkdir(parents=True)
        (work / "_hosts").write_text(hosts, encoding="latin-1")
        for name, data in (("hosts.allow", case.allow), ("hosts.deny", case.deny)):
            if data is not None:
                (work / name).write_bytes(data)
        for path, body in case.files.items():
            Path(path).write_text(body, encoding="latin-1")
        cases.append((case, work))
    commands = []
    for _, work in cases:
        commands += [_in_own_etc(tcpdchk_command(work, shim), work / "_hosts", nss),
                     acl_check_command(work, "--hosts-file", str(work / "_hosts"))]
    results = run_commands(tmp_path, hosts=DECOY, dns=ZONE, netgroup=NETGROUP,
                           commands=commands)
    bad, kinds = compare_pairs(cases, results, hosts_file="_hosts")
    assert not bad, "\n".join(bad[:10])
    assert len(cases) == CASES
    assert set(kinds) == KINDS, kinds        # every kind of warning was met
    assert sum(kinds.values()) >= 200, kinds


@pytest.mark.skipif(ns_unavailable() is not None, reason=str(ns_unavailable()))
def test_hosts_file_answers_are_not_the_system_resolvers(tmp_path):
    """One file pair whose names the decoy /etc/hosts and the DNS zone know
    and the hosts file does not (and the other way round): the findings
    name the hosts file's view alone.  No tcpdchk here: it pins which
    source acl check asks, which the differential test shows in bulk."""
    (tmp_path / "hosts.allow").write_text(
        "sshd: good.example.com a.lab.test h1.hf.test 10.40.0.1 10.20.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    (tmp_path / "_hosts").write_text("10.40.0.1 h1.hf.test\n")
    [ours] = run_commands(tmp_path, hosts=DECOY, dns=ZONE, netgroup=NETGROUP,
                          commands=[acl_check_command(tmp_path, "--hosts-file",
                                                      str(tmp_path / "_hosts"))])
    assert ours["rc"] == 1, ours
    lines = sorted(ln.split(": warning: ", 1)[1] for ln in ours["stdout"].splitlines())
    assert lines == [
        "10.20.0.1: host address 10.20.0.1 has no name (address->name lookup failed)",
        "a.lab.test: host not found (no address: the pattern matches no host)",
        "good.example.com: host not found (no address: the pattern matches no host)",
    ], ours["stdout"]


def test_an_address_only_line_names_its_address_the_empty_name(tmp_path, shim):  # noqa: F811
    """glibc's files module reads ``10.40.0.6`` alone on a line as that
    address with the empty name (getnameinfo answers "", getaddrinfo("")
    finds it back), so libwrap's double check passes and tcpdchk says
    nothing.  (acl once skipped such a line and said "has no name".)"""
    (tmp_path / "hosts.allow").write_text("sshd: 10.40.0.6\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    (tmp_path / "_hosts").write_text("10.40.0.6\n10.40.0.7 h7.hf.test\n")
    nss = tmp_path / "nsswitch.conf"
    nss.write_text(NSSWITCH)
    real, ours = run_commands(
        tmp_path, hosts=DECOY, dns=ZONE, netgroup=NETGROUP,
        commands=[_in_own_etc(tcpdchk_command(tmp_path, shim), tmp_path / "_hosts", nss),
                  acl_check_command(tmp_path, "--hosts-file", str(tmp_path / "_hosts"))])
    assert real["rc"] == 0 and tcpdchk_names(real["stdout"]) == [], real
    assert acl_names(ours["stdout"]) == [], ours
