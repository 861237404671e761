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
"""

from __future__ import annotations

import os

import pytest

from acl.compile.tcpw import HostsAccessLayer
from acl.compile.tcpw_check import check
from acl.parse.hosts_access import parse_hosts

from . import gen
from .tcpdmatch import build_shim, run_tcpdchk, unavailable

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
