"""``acl check`` reports at least what the real tcpdchk criticises.

For generated file pairs, every tcpdchk warning about the rule files
themselves (bad net/mask, names ending in a dot, numbers beginning with one,
empty lists, suspicious daemon and user names, missing colons, option
errors, a missing newline) must have an ``acl check`` finding on the same
line.  Warnings about inetd.conf and the insides of ``/file`` patterns are
tcpdchk's environment checks and are left out; those about names (DNS,
/etc/hosts, netgroups) are acl check's name checks, which this test does not
run: test_names_vs_tcpdchk.py compares them, in a namespace whose names the
test answers.

``acl check -d -v`` lists every rule as ``tcpdchk -d -v`` does: the
``>>> Rule`` header, daemons, clients, options and the implied access,
rule by rule, compared on generated pairs.  Two differences are allowed,
both in option lines: tcpdchk also prints the bad option that ends a rule
(acl lists the options that apply), and it prints a value with ``%``
expanded against its own made-up request (``%d`` as ``daemon_name``),
where acl prints the value as written (and acl prints keywords in lower
case: ``ALLOW`` as ``allow``).  And from the first rule with a
``user`` or ``group`` option on, access lines are not compared: acl shows
what Debian's tcpd does with them (nothing; its check warns that tcpdmatch
says otherwise), tcpdchk's dry run really calls setuid/setgid -- "user
nobody" is denied, and after it a later ``user root`` fails too
("setuid(root): Operation not permitted"), the state of tcpdchk's own
process.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from acl.cli import main as acl_main
from acl.compile.tcpw import HostsAccessLayer
from acl.compile.tcpw_check import check
from acl.parse.hosts_access import parse_hosts
from tests.conftest import SLOW

from . import gen
from .tcpdmatch import _write_files, build_shim, run_tcpdchk, unavailable

SKIP = ("no such process name", "host name", "hostname", "host not found", "more than one address",
        "consider using", "not an internet", "can't verify", "name lookup failed",
        "possibly not wrapped", "netgroup", "REAL_DAEMON_DIR", "official name",
        "implicit", "option:", "Permission denied")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(why)
    return build_shim(tmp_path_factory.mktemp("shim"))


def test_acl_check_covers_tcpdchk(tmp_path, shim):
    missed = []
    compared = 0
    for seed in range(200, 240):
        work = tmp_path / f"c{seed}"
        g = gen.Gen(seed, str(work))
        case = g.case(g.r.randint(3, 15), g.r.randint(3, 15), 0)
        work.mkdir(parents=True, exist_ok=True)
        for path, body in case.files.items():
            open(path, "w", encoding="latin-1").write(body)
        allow = parse_hosts(str(work / "hosts.allow"), case.allow)
        deny = parse_hosts(str(work / "hosts.deny"), case.deny)
        ours = check(HostsAccessLayer(allow, deny))
        stops = {os.path.basename(t.path): t.stop.line for t in (allow, deny) if t.stop}
        lines = {(os.path.basename(d.path), d.line) for d in ours}
        for table in (allow, deny):     # a finding anywhere in a rule counts for its line
            for rule in table.rules:
                name = os.path.basename(rule.path)
                if any((name, n) in lines for n in range(rule.first_line, rule.line + 1)):
                    lines.add((name, rule.line))
        for fname, line, msg in run_tcpdchk(work, shim, case.allow, case.deny, gen.HOSTS):
            if fname not in ("hosts.allow", "hosts.deny") or any(s in msg for s in SKIP):
                continue
            if "missing newline" in msg:
                ok = fname in stops
            elif fname in stops and line >= stops[fname]:
                continue        # libwrap never reads past the stop; tcpdchk goes on
            else:
                ok = (fname, line) in lines
            compared += 1
            if not ok:
                missed.append(f"seed {seed}: {fname}:{line}: {msg}")
    assert compared >= 50
    assert not missed, "\n".join(missed[:20])


_VERBOSE = r"""
set -u
mount --bind "$1/_hosts" /etc/hosts || exit 97
mount --bind "$1/_nss" /etc/nsswitch.conf || exit 98
cd "$1" || exit 96
LD_PRELOAD="$2" tcpdchk -d -v 2>/dev/null
exit 0
"""


def _rule_blocks(text: str) -> list[tuple]:
    """(header, daemons, clients, access, [option, ...]) per listed rule."""
    blocks = []
    for line in text.splitlines():
        field = line.split(":", 1)[0]
        if line.startswith(">>> Rule "):
            blocks.append({"header": line, "options": []})
        elif blocks and field in ("daemons", "clients", "access"):
            blocks[-1][field] = line
        elif blocks and field == "option":
            blocks[-1]["options"].append(line.rstrip())
    return [(b["header"], b.get("daemons"), b.get("clients"), b.get("access"), b["options"])
            for b in blocks]


def _same_options(real: list[str], ours: list[str], access: str, ids: bool) -> bool:
    """tcpdchk's option lines against acl's (module rules): the same, but
    for a bad last option only tcpdchk prints and ``%`` values; after a
    ``user``/``group`` failed in tcpdchk's process, one list is a prefix of
    the other."""
    if ids:
        real, ours = real[:len(ours)], ours[:len(real)]
    elif len(real) - len(ours) not in ((0, 1) if access.endswith("denied") else (0,)):
        return False
    for r, o in zip(real, ours, strict=False):
        r, o = r.split(None, 2), o.split(None, 2)
        r[1], o[1] = r[1].lower(), o[1].lower()        # acl prints keywords lower-cased
        if "%" in o[-1]:
            r, o = r[:2], o[:2]                         # the keyword alone
        if r != o:
            return False
    return True


def test_verbose_rule_listing_matches_tcpdchk(tmp_path, shim, monkeypatch, capsys):
    """``acl check -d -v`` (./hosts.allow, then ./hosts.deny) against the
    real ``tcpdchk -d -v`` on generated pairs (module rules)."""
    listed = 0
    for seed in range(240, 740 if SLOW else 290):
        work = tmp_path / f"v{seed}"
        g = gen.Gen(seed, str(work))
        case = g.case(g.r.randint(3, 12), g.r.randint(3, 12), 0)
        _write_files(work, case.allow, case.deny, gen.HOSTS)
        for path, body in case.files.items():
            open(path, "w", encoding="latin-1").write(body)
        real = subprocess.run(["unshare", "-m", "sh", "-c", _VERBOSE, "sh", str(work), shim],
                              capture_output=True, timeout=60).stdout.decode("latin-1")
        monkeypatch.chdir(work)
        acl_main(["check", "-d", "-v", "--no-names"])
        ours = capsys.readouterr().out
        # libwrap never reads past a file's stop (an over-long line...); tcpdchk goes on
        stops = {os.path.basename(t.path): t.stop.line
                 for t in (parse_hosts(str(work / "hosts.allow"), case.allow),
                           parse_hosts(str(work / "hosts.deny"), case.deny)) if t.stop}
        theirs = [b for b in _rule_blocks(real)
                  if int(b[0].split()[-1].rstrip(":")) < stops.get(b[0].split()[2], 1 << 30)]
        mine = _rule_blocks(ours)
        assert [b[:3] for b in mine] == [b[:3] for b in theirs], seed
        ids = False
        for r, o in zip(theirs, mine, strict=True):
            ids |= any(opt.split()[1] in ("user", "group") for opt in r[4])
            assert ids or r[3] == o[3], (seed, r, o)
            assert _same_options(r[4], o[4], r[3], ids), (seed, r, o)
        listed += len(mine)
    assert listed >= 150
