"""A SIGHUP that arrives while acl serve starts (before its loop takes the
signal over) does not kill it: it is remembered and answered by one reload
once serving.  The signal is sent from inside the start-up by a
sitecustomize on the child's path: the policy loader sends it to its own
process before the first load."""

from __future__ import annotations

import os

from .conftest import ROOT, policy_toml, start_server, wait_for

HUP = """\
import os, signal
import acl.policy as p
_load = p.load_policy
def load(*a, **kw):
    if not kw.get("previous"):
        os.kill(os.getpid(), signal.SIGHUP)
    return _load(*a, **kw)
p.load_policy = load
"""


def test_a_sighup_during_start_up_is_a_reload_once_serving(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HUP)
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    srv = start_server(tmp_path, policy_toml(tmp_path), env={"PYTHONPATH": path})
    try:
        wait_for(lambda: "reloaded (SIGHUP during start-up)" in srv.text(), 15, "the reload")
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0
