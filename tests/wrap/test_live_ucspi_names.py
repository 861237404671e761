"""tcprules name and info rules through acl-wrap under tcpserver, side by
side with the real ``tcpserver -x`` on the same cdb (docs/operator-guide.md,
"From daemontools + tcpserver + tcprules").

Everything runs in a network namespace of its own (``unshare -n``,
tests/wrap/netns_names.py): a DNS server there gives tcpserver PTR names
(NAMES) and A records (FORWARD, for ``-p``), an identd answers ``joe`` for
127.0.0.6 and an ident ERROR for everyone else (tcpserver then sets
TCPREMOTEINFO empty, and ``@ip`` rules match).  For each tcpserver flag set
(defaults ``-h -r``; ``-p``; ``-H -R``) every client gets the same answer
from ``tcpserver FLAGS -x rules.cdb`` and from ``tcpserver FLAGS acl-wrap``
asking this tree's ``acl serve``: the names tcpserver computed, with the
admin's flags, are what acl-wrap forwards (DECIDE flag UCSPI).

The names are never taken for a verified one: service ``guarded`` is a
hosts_access rule ``guarded: h.example.com``; tcpserver names 127.0.0.2
h.example.com, but the sidecar's own lookup (its hosts_file, SIDECAR_HOSTS)
gives that name to 127.0.0.3 only -- so 127.0.0.3 is served and 127.0.0.2
refused, as tcpd would decide.

Ports 25610-25616 (tests/wrap/conftest.py), inside the namespace only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.wrap import harness
from tests.wrap.conftest import needs_root

pytestmark = pytest.mark.live

PORT = 25610
FLAG_SETS = [[], ["-p"], ["-H", "-R"]]
RULES = """\
=h.example.com:allow,W="host"
=.example.com:allow,W="domain"
=a.other.org:deny
@127.0.0.5:allow,W="empty-info"
joe@127.0.0.6:allow,W="info"
=:allow,W="anyname"
:deny
"""
NAMES = {"127.0.0.2": "h.example.com", "127.0.0.3": "x.example.com",
         "127.0.0.4": "a.other.org", "127.0.0.6": "six.other.org", "127.0.0.7": "z.other.org"}
FORWARD = {"h.example.com": "127.0.0.2", "six.other.org": "127.0.0.6"}
IDENT = {"127.0.0.6": "joe"}
CLIENTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"]
SIDECAR_HOSTS = "127.0.0.3 h.example.com\n"
#: what the real tcpserver answers (checked: each case probes what it says)
EXPECT = {
    "defaults": {"127.0.0.2": "host", "127.0.0.3": "domain", "127.0.0.4": "DENY",
                 "127.0.0.5": "empty-info", "127.0.0.6": "info", "127.0.0.7": "anyname"},
    # -p: only names whose A record gives the client back are kept
    "-p": {"127.0.0.2": "host", "127.0.0.3": "DENY", "127.0.0.4": "DENY",
           "127.0.0.5": "empty-info", "127.0.0.6": "info", "127.0.0.7": "DENY"},
    "-H -R": dict.fromkeys(CLIENTS, "DENY"),
}


def test_tcprules_names_and_info_decide_as_tcpserver(wrap_bin):
    needs_root()
    for tool in ("tcpserver", "tcprules", "unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    d = Path(tempfile.mkdtemp(prefix="awu."))
    try:
        d.chmod(0o755)
        cfg = {"dir": str(d), "wrap": str(wrap_bin), "root": str(harness.ROOT), "port": PORT,
               "flag_sets": FLAG_SETS, "rules": RULES, "names": NAMES, "forward": FORWARD,
               "ident": IDENT, "sidecar_hosts": SIDECAR_HOSTS,
               "hosts_allow": "guarded: h.example.com\n", "hosts_deny": "guarded: ALL\n",
               "clients": CLIENTS}
        (d / "cfg.json").write_text(json.dumps(cfg))
        res = subprocess.run(["unshare", "-n", sys.executable,
                              str(Path(__file__).with_name("netns_names.py")),
                              str(d / "cfg.json")],
                             capture_output=True, text=True, timeout=240,
                             env=dict(os.environ, PYTHONPATH=str(harness.ROOT)))
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for flags in FLAG_SETS:
        label = " ".join(flags) or "defaults"
        real, wrap = got[f"tcpserver {label} -x"], got[f"tcpserver {label} acl-wrap"]
        assert real == EXPECT[label], label
        assert wrap == real, label
    # hosts_access: the sidecar's verified name, not tcpserver's
    guarded = got["guarded"]
    assert (guarded["127.0.0.2"], guarded["127.0.0.3"]) == ("DENY", "served")
