"""SIGTERM while a name lookup hangs: acl serve exits at once, status 0
(acl/workers.py).  The lookup is made to hang by a sitecustomize on
the child's path that replaces the hosts-file backend's reverse lookup with
one that sleeps an hour (and first says so in a file)."""

from __future__ import annotations

import os
import signal
import subprocess

from .conftest import ROOT, connect, policy_toml, start_server, wait_for

HANG = """\
import time
from pathlib import Path
import acl.resolve as r
def hang(self, family, packed):
    Path("lookup-started").touch()
    time.sleep(3600)
r.HostsFileBackend.reverse = hang
"""


def test_sigterm_during_a_hanging_lookup_exits_at_once_with_status_0(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG)
    (tmp_path / "hosts").write_text("192.0.2.77\tslow.example.org\n")
    cfg = policy_toml(tmp_path, extra='[names]\nhosts_file = "hosts"\n')
    (tmp_path / "hosts.allow").write_text("sshd: .example.org\n")
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    srv = start_server(tmp_path, cfg, env={"PYTHONPATH": path})
    try:
        from acl.model import Request
        from acl.wire import binary as wb

        s = connect(srv.query)
        s.sendall(wb.encode_decide(1, Request("sshd", "192.0.2.77")))
        wait_for(lambda: (tmp_path / "lookup-started").exists(), 15, "the lookup")
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(30)        # the lookup would hold it an hour
        except subprocess.TimeoutExpired:
            raise AssertionError("acl serve did not exit while a lookup hung:\n"
                                 + srv.text()) from None
        assert code == 0, srv.text()
        assert "stopped" in srv.text()
        s.close()
    finally:
        srv.stop(timeout=5)
