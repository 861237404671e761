"""Out of descriptors while reading the policy (acl/rulefiles.py's rules):
the files were not read, so a reload fails as a temporary failure -- the
running policy stays, a watched change is tried again once there is room,
``acl`` commands exit 111 -- and a file that could not be opened for that
reason is never compiled as the real tool's "cannot be opened".

Found while building the mixed isolation test (test_isolation_mixed.py,
whose flood and reloads take turns for this reason): a change to
hosts.allow made while a connection flood held every descriptor of the
server failed to load ("cause": "policy", as for a broken file) and was
never tried again -- once the flood ended, the server went on with the old
rules.  The descriptors run out for real here: a live server limited to
``NOFILE`` of them and held connections, or a child process that fills its
own table before it reads.  No ports.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import textwrap

import pytest

from acl.client import Client

from .conftest import ROOT, connect, policy_toml, start_server, wait_for

NOFILE = 64
FLOOD = 100
NEW = "198.51.100.7"           # allowed by the change the tests make to hosts.allow


def _limit() -> None:          # in the server's child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Admin:
    """An admin connection made before the descriptors run out."""

    def __init__(self, path: str) -> None:
        self.sock = connect(path, 30)
        self.f = self.sock.makefile("rwb")

    def ask(self, command: str) -> dict:
        self.f.write(command.encode() + b"\n")
        self.f.flush()
        return json.loads(self.f.readline())

    def out_of_descriptors(self) -> bool:
        return any(code == "EMFILE" and n for _s, code, n in self.ask("stats")["accept_errors"])

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def flood(path: str) -> list[socket.socket]:
    socks = []
    for _ in range(FLOOD):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)                 # the backlog (4096) takes what acl cannot accept
        socks.append(s)
    return socks


def allowed(srv) -> bool:
    with Client(srv.query, timeout=30) as c:
        return c.decide("sshd", NEW).allowed


def test_a_watched_change_made_out_of_descriptors_loads_once_there_is_room(tmp_path):
    srv = start_server(tmp_path, policy_toml(tmp_path), preexec=_limit)    # watch = true
    admin = Admin(srv.admin)
    socks = []
    try:
        assert not allowed(srv)
        # that client's descriptor freed before the flood: freed after it, it
        # was a slot a reload could read every file through
        wait_for(lambda: admin.ask("stats")["clients"]["binary"] == 0, 15, "its close")
        socks = flood(srv.query)
        wait_for(admin.out_of_descriptors, 15, "the server to run out of descriptors")
        with open(tmp_path / "hosts.allow", "a") as f:
            f.write(f"sshd: {NEW}\n")
        # the watcher tries, cannot read, and tries again at every poll
        wait_for(lambda: admin.ask("stats")["reloads"]["failure"] >= 3, 15,
                 "three reloads that could not read the files")
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: allowed(srv), 15, "the change to load once there is room")
    finally:
        for s in socks:
            s.close()
        admin.close()
        srv.stop()
    log = srv.text()
    failed = [line for line in log.splitlines() if "reload (file changed) failed" in line]
    assert len(failed) == 1 and "Too many open files" in failed[0], log   # once a minute
    assert "a temporary failure" in failed[0], log
    assert "reloaded (file changed)" in log and "Traceback" not in log, log


def test_an_admin_reload_out_of_descriptors_is_a_temporary_failure(tmp_path):
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace("watch = true", "watch = false"))
    srv = start_server(tmp_path, cfg, preexec=_limit)
    admin = Admin(srv.admin)
    socks = []
    try:
        socks = flood(srv.query)
        wait_for(admin.out_of_descriptors, 15, "the server to run out of descriptors")
        with open(tmp_path / "hosts.allow", "a") as f:
            f.write(f"sshd: {NEW}\n")
        got = admin.ask("reload")
        # no "cause": nothing is wrong with the policy (acl reload: 111, not 100)
        assert got["ok"] is False and "cause" not in got, got
        assert "Too many open files" in got["error"], got
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: admin.ask("stats")["clients"]["binary"] == 0, 15, "the flood to go")
        assert not allowed(srv)                          # the running policy stayed
        assert admin.ask("reload")["ok"] is True
        assert allowed(srv)
    finally:
        for s in socks:
            s.close()
        admin.close()
        srv.stop()


@pytest.mark.parametrize("no_uvloop", ["0", "1"], ids=["uvloop", "asyncio"])
def test_admin_commands_out_of_descriptors_say_so_at_once(tmp_path, no_uvloop):
    """Out of descriptors the server cannot take an admin connection.  Before,
    ``acl reload`` waited in the backlog for its whole timeout, then said
    "no answer within 10 s: is it the admin socket?" -- a wrong guess.  Now
    the server answers it through the admin socket's spare descriptor
    (acl/serve/accept.py): exit 111 with the real cause, the running policy
    kept; the refused ``reload`` is never run later; once the flood is
    gone, ``acl reload`` works."""
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace("watch = true", "watch = false"))
    srv = start_server(tmp_path, cfg, preexec=_limit, env={"ACL_NO_UVLOOP": no_uvloop})
    admin = Admin(srv.admin)
    socks = []

    def acl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "acl", *args], capture_output=True,
                              text=True, timeout=60, cwd=str(ROOT))

    try:
        wait_for(lambda: admin.ask("stats")["clients"]["binary"] == 0, 15, "no client")
        socks = flood(srv.query)
        wait_for(admin.out_of_descriptors, 15, "the server to run out of descriptors")
        with open(tmp_path / "hosts.allow", "a") as f:
            f.write(f"sshd: {NEW}\n")
        said = ("acl serve is out of descriptors (EMFILE: Too many open files): it cannot "
                "take this admin connection now")
        out = acl("reload", "--admin", srv.admin, "--timeout", "10")
        assert out.returncode == 111, out
        assert out.stderr.startswith(f"acl reload: fatal: {said}; try again when "), out.stderr
        assert out.stderr.endswith("; the running policy stays\n"), out.stderr
        out = acl("query", "--admin", srv.admin, "--timeout", "10", "stats")
        assert out.returncode == 111, out
        assert json.loads(out.stdout)["error"].startswith(said), out.stdout
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: admin.ask("stats")["clients"]["binary"] == 0, 15, "the flood to go")
        assert not allowed(srv)                          # the running policy stayed
        out = acl("reload", "--admin", srv.admin)
        assert out.returncode == 0, out
        assert allowed(srv)
    finally:
        for s in socks:
            s.close()
        admin.close()
        srv.stop()
    log = srv.text()
    assert log.count("reloaded (admin)") == 1 and "Traceback" not in log, log
    assert "out of descriptors, new clients " in log, log


#: A child that imports what it needs, fills its descriptor table for real,
#: then reads: what it got, as JSON (``raised``: OutOfResources' text).
CHILD = textwrap.dedent("""\
    import json, os, resource, sys
    import acl.cli.serve, acl.core, acl.engine, acl.policy, acl.compile.tcpw
    import acl.compile.tcprules, acl.compile.xinetd, acl.names, acl.resolve
    import acl.parse.xinetd_resolve, acl.parse.tcprules
    from acl.cli import main
    try:
        from acl.errors import OutOfResources
    except ImportError:                 # an older acl: show what it made of the read
        class OutOfResources(Exception):
            pass
    from acl.parse.hosts_access import parse_hosts, read_hosts
    from acl.parse.xinetd import parse_xinetd_text
    from acl.parse.xinetd_resolve import HostsResolver

    what, path = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.dup(2))
    except OSError:
        pass
    try:
        if what == "hosts.allow":
            out = [str(d) for d in read_hosts(path).diagnostics]
        elif what == "/file pattern":
            t = parse_hosts("hosts.allow", f"sshd: {path}\\n".encode())
            out = [str(d) for d in t.diagnostics] + [repr(t.rules)]
        elif what in ("include", "includedir"):
            c = parse_xinetd_text(f"{what} {path}\\n", resolver=HostsResolver())
            out = [str(d) for d in c.diagnostics]
        else:
            out = {"exit": main(["serve", "--check", "--config", path])}
    except OutOfResources as exc:
        out = {"raised": str(exc)}
    for fd in held:
        os.close(fd)
    print(json.dumps(out))
""")


@pytest.mark.parametrize("what", ["hosts.allow", "/file pattern", "include", "includedir",
                                  "acl serve --check"])
def test_a_read_out_of_descriptors_is_never_taken_for_an_unreadable_file(tmp_path, what):
    """Before, hosts.allow became a table whose scan is an error (hosts.deny:
    everybody denied), a ``/file`` pattern matched nothing, an xinetd
    include was left out as missing -- each kept until the next reload --
    and ``acl serve --check`` said the policy was bad input (exit 100)."""
    cfg = policy_toml(tmp_path)
    (tmp_path / "clients").write_text("192.0.2.1\n")
    (tmp_path / "xinetd.d").mkdir()
    (tmp_path / "xinetd.d" / "echo").write_text((tmp_path / "xinetd.conf").read_text())
    path = {"hosts.allow": tmp_path / "hosts.allow", "/file pattern": tmp_path / "clients",
            "include": tmp_path / "xinetd.d" / "echo", "includedir": tmp_path / "xinetd.d",
            "acl serve --check": cfg}[what]
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(path)], capture_output=True,
                         text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    if what == "acl serve --check":
        assert got == {"exit": 111}, (got, out.stderr)
        assert "acl serve: fatal: " in out.stderr and "Too many open files" in out.stderr, \
            out.stderr
        return
    assert "raised" in got, got
    assert got["raised"].startswith(f"{path}: cannot ") and "Too many open files" in \
        got["raised"], got
