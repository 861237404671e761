"""Reload (SIGHUP, admin, watched file) under load with zero failed
requests; a broken file keeps the running policy and says file:line:column;
leases and counters survive; sd_notify; socket activation; privilege drop
and chroot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from acl.client import Client
from acl.model import Reason, Request, Verdict
from acl.wire import binary as wb

from .conftest import policy_toml, start_server, wait_for
from .test_server import admin


class Load(threading.Thread):
    """Pipelined requests without pause; every reply must be a DECISION."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.allowed_seen: set[bool] = set()

    def run(self) -> None:
        reqs = [Request("sshd", "192.0.2.1"), Request("smtpd", "192.0.2.5")] * 100
        try:
            with Client(self.path, timeout=10) as c:
                while not self.stop.is_set():
                    for d in c.decide_many(reqs):
                        self.answers += 1
                        if d.reason not in (Reason.OK, Reason.LIBWRAP):
                            self.failures.append(repr(d))
                    self.allowed_seen.add(d.allowed)
        except Exception as exc:               # a failed request is the finding
            self.failures.append(repr(exc))


def test_reload_under_load_sighup_admin_and_file_change(tmp_path):
    srv = start_server(tmp_path, policy_toml(tmp_path))
    load = Load(srv.query)
    load.start()
    try:
        wait_for(lambda: load.answers > 2000, 10, "load running")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded (SIGHUP)" in srv.text(), 10, "SIGHUP reload")
        r = admin(srv.admin, "reload")
        assert r["ok"] is True
        # a watched file changes: smtpd from 192.0.2.5 becomes denied
        allow = tmp_path / "hosts.allow"
        allow.write_text(allow.read_text().replace("smtpd: 127.0.0.1 127.0.0.2 192.0.2.0/255.255.255.0",
                                                   "smtpd: 127.0.0.1 127.0.0.2"))
        wait_for(lambda: "reloaded (file changed)" in srv.text(), 10, "file reload")
        with Client(srv.query) as c:
            assert c.decide("smtpd", "192.0.2.5").reason is Reason.LIBWRAP
        before = load.answers
        wait_for(lambda: load.answers > before + 2000, 10, "load still running")
    finally:
        load.stop.set()
        load.join(15)
        srv.stop()
    assert load.failures == []
    assert load.answers > 4000
    st = srv.text()
    assert st.count("reloaded") >= 3


def test_broken_file_keeps_running_policy_and_says_where(tmp_path):
    srv = start_server(tmp_path, policy_toml(tmp_path))
    try:
        with Client(srv.query) as c:
            lease = c.decide("echo-stream", "127.0.0.9", lease=True)
            assert lease.allowed and lease.lease
            assert c.decide("smtpd", "192.0.2.66").reason is Reason.TCPRULES
            before = admin(srv.admin, "stats")
            rules = tmp_path / "tcp.smtpd"
            good = rules.read_text()
            rules.write_text(good + "192.0.2.7:allow,oops\n")
            r = admin(srv.admin, "reload")
            assert r["ok"] is False
            assert f"{rules}:5:" in r["error"]          # file:line:column
            # the running policy still answers, the lease still counts
            assert c.decide("smtpd", "192.0.2.66").reason is Reason.TCPRULES
            st = admin(srv.admin, "stats")
            assert st["reloads"] == {"success": 0, "failure": 1}
            assert st["leases"]["echo-stream"] == 1
            assert f"{rules}:5:" in st["last_reload_error"]
            rules.write_text(good.replace("192.0.2.66:deny", "192.0.2.66:allow"))
            assert admin(srv.admin, "reload")["ok"] is True
            assert c.decide("smtpd", "192.0.2.66").allowed
            # leases and counters survived the reload
            assert c.decide("echo-stream", "127.0.0.9", lease=True).allowed
            third = c.decide("echo-stream", "127.0.0.9", lease=True)
            assert (third.verdict, third.reason) == (Verdict.DENY, Reason.PER_SOURCE_LIMIT)
            after = admin(srv.admin, "stats")
            total = sum(n for *_k, n in after["decisions"])
            assert total >= sum(n for *_k, n in before["decisions"]) + 4
    finally:
        srv.stop()


def test_toml_syntax_error_on_reload_says_file_line_column(tmp_path):
    """policy.toml:L:C: message, like every other error -- in the admin's
    answer, in stats and in the log -- not tomllib's '(at line L, column C)'."""
    cfg = policy_toml(tmp_path)
    srv = start_server(tmp_path, cfg)
    try:
        text = cfg.read_text()
        cfg.write_text(text + "[limits]\n")            # a second [limits] table
        want = f"{cfg}:{len(text.splitlines()) + 1}:8: Cannot declare ('limits',) twice"
        r = admin(srv.admin, "reload")
        assert r == {"ok": False, "cause": "policy", "error": want}
        assert admin(srv.admin, "stats")["last_reload_error"] == want
        assert f"failed, keeping the running policy: {want}\n" in srv.text()
    finally:
        srv.stop()
    start = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
    assert (start.returncode, start.stderr) == (100, f"acl serve: fatal: {want}\n")


def test_reload_logs_and_answers_the_new_policy_diagnostics(tmp_path):
    """A rule xinetd would disable loads with a diagnostic: a reload says so
    in the log (as startup does) and in the admin's answer."""
    srv = start_server(tmp_path, policy_toml(tmp_path))
    try:
        assert admin(srv.admin, "reload")["diagnostics"] == []
        x = tmp_path / "xinetd.conf"
        text = x.read_text()
        x.write_text(text + "service foo\n{\n\tid = foo\n\tinstances 5\n}\n")
        # column 12: where xinetd's reader looked for the operator ("5")
        where = f"{x}:{len(text.splitlines()) + 4}:12: Bad operator for attribute: instances"
        r = admin(srv.admin, "reload")
        assert r["ok"] is True and r["diagnostics"] == [where]
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded (SIGHUP)" in srv.text(), 10, "SIGHUP reload")
        lines = srv.text().splitlines()
        sighup = next(i for i, ln in enumerate(lines) if "reloaded (SIGHUP)" in ln)
        assert lines[sighup - 1] == f"acl serve: {where}"
        assert lines[sighup].endswith(", 1 diagnostic)")
    finally:
        srv.stop()


def test_sd_notify_ready_reloading_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    srv = start_server(tmp_path, policy_toml(tmp_path), env={"NOTIFY_SOCKET": path})
    try:
        _notified_through_a_life(sock, srv)
    finally:
        srv.stop()
        sock.close()


def _notified_through_a_life(sock, srv, inside=None) -> None:
    """READY=1; on SIGHUP RELOADING=1 with its time, then READY=1; STOPPING=1."""
    assert sock.recv(4096) == b"READY=1"
    if inside is not None:
        assert os.readlink(f"/proc/{srv.proc.pid}/root") == str(inside)
    srv.proc.send_signal(signal.SIGHUP)
    msg = sock.recv(4096).decode()
    assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(msg.split("=")[-1]) > 0
    assert sock.recv(4096) == b"READY=1"
    assert srv.stop() == 0
    assert sock.recv(4096) == b"STOPPING=1"


def test_socket_activation_listen_fds(tmp_path):
    qpath = str(tmp_path / "activated.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(qpath)
    lsock.listen(16)
    cfg = policy_toml(tmp_path, policy_socket=False)
    fd = lsock.fileno()

    def to_fd3():
        os.dup2(fd, 3)

    srv = start_server(tmp_path, cfg, env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "query"},
                       prefix=["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"],
                       pass_fds=(3,) if fd != 3 else (), preexec=to_fd3, wait_path=None)
    try:
        lsock.close()
        assert "query on fd:3 (systemd)" in srv.text()
        assert not os.path.exists(tmp_path / "query.sock")     # did not bind its own
        with Client(qpath) as c:
            assert c.decide("sshd", "192.0.2.1").allowed
    finally:
        srv.stop()


def _serve_once(cfg, *args) -> subprocess.CompletedProcess:
    """``acl serve`` expected to exit at once (it must not get to serving)."""
    return subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=30, cwd=str(cfg.parent))


def test_second_instance_refuses_live_sockets_and_replaces_stale_ones(tmp_path):
    """A second ``acl serve`` on the same config leaves the first untouched;
    socket files a killed server left behind are taken over."""
    cfg = policy_toml(tmp_path)
    srv = start_server(tmp_path, cfg)
    try:
        before = {p: os.stat(p).st_ino for p in (srv.query, srv.policy, srv.admin)}
        second = _serve_once(cfg)
        assert second.returncode == 111, second.stderr
        assert (f"acl serve: fatal: cannot listen: {srv.query}: a server is answering on "
                "this socket") in second.stderr
        assert {p: os.stat(p).st_ino for p in before} == before
        with Client(srv.query) as c:
            assert c.decide("sshd", "192.0.2.1").allowed
        assert admin(srv.admin, "stats")["ok"] is True
        srv.stop(signal.SIGKILL)                 # leaves its socket files behind
        assert all(os.path.exists(p) for p in before)
        srv = start_server(tmp_path, cfg)        # stale: connect is refused, replace them
        with Client(srv.query) as c:
            assert c.decide("sshd", "192.0.2.1").allowed
    finally:
        srv.stop()


def test_failed_start_removes_the_sockets_it_made(tmp_path):
    """The metrics port is taken: exit 111 and no socket file is left."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", 24401))
    taken.listen(1)
    try:
        out = _serve_once(policy_toml(tmp_path, metrics="127.0.0.1:24401"))
    finally:
        taken.close()
    assert out.returncode == 111, out.stderr
    assert "cannot listen" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_socket()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop privileges")
def test_binds_then_drops_to_unprivileged_user(tmp_path):
    cfg = policy_toml(tmp_path, run='user = "nobody"\ngroup = "nogroup"')
    srv = start_server(tmp_path, cfg)
    try:
        with open(f"/proc/{srv.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert status["Uid"].split()[:3] == ["65534"] * 3
        assert status["Gid"].split()[:3] == [str(_gid("nogroup"))] * 3
        assert "running as uid 65534" in srv.text()
        with Client(srv.query) as c:
            assert c.decide("sshd", "192.0.2.1").allowed
    finally:
        srv.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chroot")
def test_chroot_serves_and_reloads_inside(tmp_path):
    cfg = policy_toml(tmp_path, run=f'chroot = "{tmp_path}"')
    srv = start_server(tmp_path, cfg)
    try:
        assert f"in {tmp_path}" in srv.text()
        root = os.readlink(f"/proc/{srv.proc.pid}/root")
        assert root == str(tmp_path)
        allow = tmp_path / "hosts.allow"
        allow.write_text(allow.read_text().replace("sshd: 127.0.0.1", "sshd: 127.0.0.9"))
        r = admin(srv.admin, "reload")
        assert r["ok"] is True, r
        with Client(srv.query) as c:
            assert c.decide("sshd", "127.0.0.9").allowed
            assert not c.decide("sshd", "127.0.0.1").allowed
        assert srv.stop() == 0
        assert not os.path.exists(srv.query)
    finally:
        srv.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chroot")
def test_chroot_reload_keeps_the_socket_names_looked_up_at_start(tmp_path):
    """``[sockets]`` names -- ``group``, ``admin_uids``, ``admin_gids`` --
    are looked up once, at start, before the chroot.  Inside it there is no
    /etc/passwd or /etc/group: a reload that looked ``admin_uids`` up again
    failed every time, with nothing changed (``sockets.admin_uids: no such
    user or group 'daemon'``, cause "policy": ``acl reload`` exit 100)."""
    cfg = policy_toml(tmp_path, run=f'chroot = "{tmp_path}"')
    cfg.write_text(cfg.read_text().replace(
        "admin_uids = [0]", 'admin_uids = [0, "daemon"]\nadmin_gids = ["daemon"]\n'
        'group = "daemon"'))
    srv = start_server(tmp_path, cfg)
    try:
        assert os.stat(srv.query).st_gid == _gid("daemon")      # the gid of the start
        r = admin(srv.admin, "reload")
        assert r["ok"] is True, r
        assert "reloaded (admin)" in srv.text()
    finally:
        srv.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chroot")
def test_sd_notify_reaches_systemd_from_inside_a_chroot(tmp_path):
    """$NOTIFY_SOCKET is a path outside the chroot (/run/systemd/notify): the
    socket is connected before the chroot, so READY=1, a reload's
    RELOADING=1 / READY=1 and STOPPING=1 still arrive."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "run"
    outside.mkdir()
    path = str(outside / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    srv = start_server(root, policy_toml(root, run=f'chroot = "{root}"'),
                       env={"NOTIFY_SOCKET": path})
    try:
        _notified_through_a_life(sock, srv, inside=root)
    finally:
        srv.stop()
        sock.close()


XINETD_MORE = """
service ftp
{
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= nobody
	group		= nogroup
	server		= /bin/cat
	flags		= IPv4
	no_access	= 192.0.2.66
	cps		= 0 0
}

service daytime
{
	type		= INTERNAL
	id		= daytime-stream
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	flags		= IPv4
	cps		= 2 30
}
"""


CHROOT_EXIT = """
import sys, threading, time
from acl.serve import privileges
privileges.drop(chroot=sys.argv[1])

def tick():
    while True:              # wakes during finalization and ends by pthread_exit
        time.sleep(0.0005)

for _ in range(4):
    threading.Thread(target=tick, daemon=True).start()
time.sleep(0.05)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chroot")
def test_a_chrooted_process_with_daemon_threads_exits_cleanly(tmp_path):
    """CPython ends daemon threads at exit by pthread_exit, for which glibc
    loads libgcc_s -- absent inside a bare chroot, so it aborted (SIGABRT,
    "libgcc_s.so.1 must be installed") unless privileges.drop loaded it
    first.  Several rounds: the abort needs a thread to wake at the wrong
    moment."""
    root = tmp_path / "root"
    root.mkdir()
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", CHROOT_EXIT, str(root)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (out.returncode, out.stderr)
        assert "libgcc_s" not in out.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chroot")
def test_chroot_reload_keeps_xinetd_services(tmp_path):
    """Inside ``[run] chroot`` there is no /etc/protocols, /etc/services,
    /etc/passwd or /bin/cat: a reload must still keep every xinetd service
    the first load kept (protocol, user, group, server and the port from
    /etc/services answered as they were before the chroot), not disable
    them all and report success -- nor forget their limit state: the state
    of the file the first load read outside the chroot is the state of the
    file the reload reads inside it (cps = 2 30 tripped before the reload
    keeps daytime-stream off after it)."""
    cfg = policy_toml(tmp_path, run=f'chroot = "{tmp_path}"')
    with open(tmp_path / "xinetd.conf", "a") as f:
        f.write(XINETD_MORE)
    srv = start_server(tmp_path, cfg)
    try:
        with Client(srv.query) as c:
            # no hosts.allow line for daytime; the third within a second trips cps
            tripped = [c.decide("daytime-stream", "127.0.0.1").reason for _ in range(3)]
        assert tripped == [Reason.LIBWRAP, Reason.LIBWRAP, Reason.CPS], tripped

        def answers():
            with Client(srv.query) as c:
                return [(d.verdict, d.reason) for d in (
                    c.decide("echo-stream", "127.0.0.1"), c.decide("echo-stream", "198.51.100.1"),
                    c.decide("ftp", "192.0.2.1"), c.decide("ftp", "192.0.2.66"))]

        before = answers()
        assert before == [(Verdict.ALLOW, Reason.OK), (Verdict.DENY, Reason.ADDRESS),
                          (Verdict.DENY, Reason.LIBWRAP), (Verdict.DENY, Reason.ADDRESS)]
        dump = admin(srv.admin, "dump")["policy"]["sources"][0]
        r = admin(srv.admin, "reload")
        assert r["ok"] is True and r["diagnostics"] == [], r
        assert answers() == before
        assert admin(srv.admin, "dump")["policy"]["sources"][0]["rules"] == dump["rules"]
        assert "DISABLING" not in srv.text()
        with Client(srv.query) as c:
            assert c.decide("daytime-stream", "127.0.0.1").reason is Reason.CPS
    finally:
        srv.stop()


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def test_frame_level_pipelining_across_a_reload_keeps_order(tmp_path):
    srv = start_server(tmp_path, policy_toml(tmp_path))
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(srv.query)
        s.settimeout(10)
        ids = list(range(1, 20001))
        blob = b"".join(wb.encode_decide(i, Request("sshd", "192.0.2.1")) for i in ids)
        t = threading.Thread(target=s.sendall, args=(blob,))
        t.start()
        admin(srv.admin, "reload")
        dec = wb.ReplyDecoder()
        got = []
        while len(got) < len(ids):
            got.extend(dec.feed(s.recv(65536)))
        t.join()
        assert [r.request_id for r in got] == ids
        assert all(r.type == wb.T_DECISION and r.decision.allowed for r in got)
        s.close()
    finally:
        srv.stop()
