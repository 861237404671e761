"""SIGHUPs at awkward moments.

* One that arrives while acl serve starts (before its loop takes the signal
  over) does not kill it: it is remembered and answered by one reload once
  serving.  The signal is sent from inside the start-up by a sitecustomize
  on the child's path: the policy loader sends it to its own process before
  the first load.
* One that arrives while a reload runs is not lost: the files may have
  changed after that reload read them, so exactly one more reload follows
  it (acl/serve/server.py, "triggers during one make exactly one more").  A
  sitecustomize holds the reload after it has read the files until the test
  says go, so the change and the signal land in that window every time.
"""

from __future__ import annotations

import os
import signal

from acl.client import Client

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

#: after a reload has read and compiled the files: say so, then wait for go
HOLD = """\
import os, time
import acl.engine as e
_prepare = e.Engine.prepare
def prepare(self, *a, **kw):
    out = _prepare(self, *a, **kw)
    gate = os.environ["ACL_TEST_GATE"]
    n = len(os.listdir(gate))
    open(os.path.join(gate, f"read-{n}"), "w").close()
    for _ in range(1000):                  # 10 s at most
        if os.path.exists(os.path.join(gate, "go")):
            break
        time.sleep(0.01)
    return out
e.Engine.prepare = prepare
"""


def _site(tmp_path, text: str) -> str:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(text)
    return os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])


def test_a_sighup_during_start_up_is_a_reload_once_serving(tmp_path):
    path = _site(tmp_path, HUP)
    srv = start_server(tmp_path, policy_toml(tmp_path), env={"PYTHONPATH": path})
    try:
        wait_for(lambda: "reloaded (SIGHUP during start-up)" in srv.text(), 15, "the reload")
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


def test_a_sighup_during_a_reload_is_one_more_reload(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace("watch = true", "watch = false"))
    srv = start_server(tmp_path, cfg, env={"PYTHONPATH": _site(tmp_path, HOLD),
                                           "ACL_TEST_GATE": str(gate)})
    try:
        with Client(srv.query) as c:
            assert not c.decide("sshd", "10.7.7.7").allowed
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_for(lambda: (gate / "read-0").exists(), 15, "the reload to read the files")
        # changed after that reload read them; the signal comes while it runs
        with open(tmp_path / "hosts.allow", "a") as f:
            f.write("sshd: 10.7.7.7\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        (gate / "go").touch()
        wait_for(lambda: "reloaded (again)" in srv.text(), 15, "one more reload")
        with Client(srv.query) as c:
            assert c.decide("sshd", "10.7.7.7").allowed
        assert srv.text().count("reloaded (") == 2
    finally:
        assert srv.stop() == 0
