"""deploy/daemontools/acl under the real svscan/supervise/multilog (Debian daemontools).

The service directory is copied as it ships; only its ``env/`` files are
rewritten to point at the test's tmp dir (policy, socket directory, PATH).
The test then checks what an operator relies on: svscan starts the sidecar
and its logger, output reaches multilog with TAI64N stamps, the sidecar runs
as ACL_USER, a killed sidecar is restarted, and ``svc -dx`` stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import stop_process

from .conftest import DEPLOY, acl_entry_point, free_ports
from .sidecar import Client, scrape, wait_for, write_policy

TOOLS = ("svscan", "supervise", "svstat", "svc", "multilog", "envdir", "setuidgid")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason="daemontools is not installed"),
]


def svstat(service: Path) -> tuple[str, int | None]:
    out = subprocess.run(["svstat", str(service)], capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r": (up|down) (?:\(pid (\d+)\) )?", out)
    if not m:
        return out.strip(), None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def unprivileged_user_can_run(exe: str) -> str | None:
    """A user other than root who can execute the interpreter behind ``acl``.

    On a machine where Python lives under /root (pyenv), no other user can
    run it, and the run script's setuidgid goes to root instead.
    """
    if os.geteuid() != 0:
        return None
    probe = subprocess.run(["setuidgid", "nobody", exe, "--version"], capture_output=True,
                           timeout=30)
    return "nobody" if probe.returncode == 0 else None


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_supervised_logged_restarted_stopped(tmp_path):
    exe = acl_entry_point()
    (metrics_port,) = free_ports("daemontools", 1)
    user = unprivileged_user_can_run(exe) or "root"
    work = tmp_path / "work"
    config = write_policy(work, metrics_port)
    if user != "root":
        os.chmod(tmp_path, 0o755)
        shutil.chown(work, user)
        shutil.chown(work / "run", user)

    # As in /service -> /etc/acl-service: svscan's directory holds a link.
    services = tmp_path / "service"
    services.mkdir()
    svc_dir = tmp_path / "acl-service"
    shutil.copytree(DEPLOY / "daemontools" / "acl", svc_dir)
    (services / "acl").symlink_to(svc_dir)
    assert os.access(svc_dir / "run", os.X_OK) and os.access(svc_dir / "log" / "run", os.X_OK)
    env = svc_dir / "env"
    assert sorted(p.name for p in env.iterdir()) == \
        ["ACL_CONFIG", "ACL_LOG_USER", "ACL_RUNDIR", "ACL_USER", "PATH"]
    (env / "ACL_CONFIG").write_text(f"{config}\n")
    (env / "ACL_RUNDIR").write_text(f"{work / 'run'}\n")
    (env / "ACL_USER").write_text(f"{user}\n")
    (env / "ACL_LOG_USER").write_text(f"{user}\n")
    (env / "PATH").write_text(f"{Path(exe).parent}:/usr/bin:/bin\n")
    if user != "root":
        shutil.chown(svc_dir / "log", user)

    svscan = subprocess.Popen(["svscan", str(services)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        # Up, with a PID, and serving.
        _, pid1 = wait_for(lambda: (s := svstat(svc_dir))[0] == "up" and s, 15)
        wait_for(lambda: scrape(metrics_port, 1.0), 20)
        assert uid_of(pid1) == (0 if user == "root" else int(
            subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout))
        from acl.model import Verdict
        assert _verdict(work, "alpha", "127.0.0.1") is Verdict.ALLOW

        # The guide's reload under daemontools: `acl reload --config` finds
        # the admin socket in the policy the sidecar runs and returns when the
        # new rules answer (no waiting here before the query), or fails with
        # the file:line:column of a rule file that does not load.
        (work / "hosts.allow").write_text("beta: ALL\n")
        done = subprocess.run([exe, "reload", "--config", str(config)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert _verdict(work, "alpha", "127.0.0.1") is Verdict.DENY
        # (hosts_access itself refuses no line, as libwrap: break the policy.)
        good_policy = config.read_text()
        config.write_text(good_policy + '[[source]]\ntype = "no-such-kind"\n')
        refused = subprocess.run([exe, "reload", "--config", str(config)],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 100, (refused.returncode, refused.stderr)
        assert f"{config}:" in refused.stderr and "no-such-kind" in refused.stderr, \
            refused.stderr
        assert _verdict(work, "alpha", "127.0.0.1") is Verdict.DENY
        assert _verdict(work, "beta", "127.0.0.1") is Verdict.ALLOW
        config.write_text(good_policy)        # the restart below reads it
        # The sidecar's output reaches multilog, each line TAI64N-stamped.
        current = svc_dir / "log" / "main" / "current"
        text = wait_for(lambda: current.exists() and current.read_text(), 15)
        lines = text.splitlines()
        assert all(re.match(r"^@4000[0-9a-f]{20} ", ln) for ln in lines), lines[:5]

        # Kill the sidecar: supervise starts a new one.
        os.kill(pid1, signal.SIGKILL)
        _, pid2 = wait_for(lambda: (s := svstat(svc_dir))[0] == "up" and s[1] != pid1 and s,
                           15)
        assert pid2 != pid1
        wait_for(lambda: scrape(metrics_port, 1.0), 20)
        # Two runs of the sidecar have now logged through the same multilog.
        wait_for(lambda: len(current.read_text().splitlines()) > len(lines), 15)

        # Stop, the way daemontools says: take the link out of svscan's
        # directory first (else its next scan starts a new supervise), then
        # svc -dx the service and its logger; both supervise processes exit.
        supervisors = _children(svscan.pid)
        assert len(supervisors) == 2            # one for acl, one for acl/log
        (services / "acl").unlink()
        subprocess.run(["svc", "-dx", str(svc_dir)], check=True, timeout=10)
        wait_for(lambda: not _alive(pid2), 15)
        subprocess.run(["svc", "-dx", str(svc_dir / "log")], check=True, timeout=10)
        wait_for(lambda: _supervise_gone(svc_dir) and _supervise_gone(svc_dir / "log"), 15)
        # svscan reaps its exited supervise children on its next scan (every
        # 5 s); stopping it before that would leave zombies to PID 1.
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in supervisors), 12,
                 step=0.25)
    finally:
        # Never leave a supervise behind, even when an assertion failed.
        if (services / "acl").is_symlink():
            (services / "acl").unlink()
        for d in (svc_dir, svc_dir / "log"):
            if not _supervise_gone(d):
                subprocess.run(["svc", "-dx", str(d)], timeout=10, check=False)
        stop_process(svscan)


def _verdict(work, service: str, client_address: str):
    """One decision from the supervised sidecar, on a connection of its own."""
    from acl.model import Request
    client = Client(work / "run" / "query.sock")
    try:
        (reply,) = client.decide_many([Request(service, client_address)])
        return reply.decision.verdict
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _children(ppid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == ppid:
                        kids.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return kids


def _supervise_gone(d: Path) -> bool:
    """supervise holds a lock on supervise/lock while it runs."""
    out = subprocess.run(["svok", str(d)], capture_output=True, timeout=10)
    return out.returncode != 0
