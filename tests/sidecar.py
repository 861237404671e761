"""A live ``acl serve`` for the tests that need the real sidecar: started
with Popen in the test's temp dir, ready when its log says so, stopped by
its PID (never by name).  The decision-service tests (tests/serve) and the
acl-wrap tests (tests/wrap) both start theirs here; each area writes its
own policy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import stop_process


class Live:
    """A running ``acl serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen, d: Path, log: Path):
        self.proc = proc
        self.dir = d
        self.log = log
        self.query = str(d / "query.sock")
        self.policy = str(d / "policy.sock")
        self.admin = str(d / "admin.sock")

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 10) -> int:
        return stop_process(self.proc, sig, timeout)


def wait_for(pred, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_server(d: Path, config: Path, *, env=None, args=(), pass_fds=(), prefix=(),
                 wait_path: str | None = "query.sock", preexec=None) -> Live:
    log = d / "serve.log"
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [*prefix, sys.executable, "-m", "acl", "serve", "--config", str(config), *args]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                            pass_fds=pass_fds, cwd=str(d), preexec_fn=preexec)
    out.close()
    live = Live(proc, d, log)
    try:
        wait_for(lambda: proc.poll() is not None or "ready" in live.text(), 30, "acl serve ready")
        if proc.poll() is not None:
            raise AssertionError(f"acl serve exited {proc.returncode}:\n{live.text()}")
        if wait_path:
            wait_for(lambda: os.path.exists(d / wait_path), 10, wait_path)
    except BaseException:
        live.stop()
        raise
    return live
