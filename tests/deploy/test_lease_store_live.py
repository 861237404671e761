"""Leases survive a restart and a crash of ``acl serve`` under a real systemd
(``[run] keep_leases``, systemd's fd store: acl/serve/leasestore.py).

One boot per test (tests/deploy/systemd_boot.py, its early boot masked:
the units set DefaultDependencies=no and log to /var/log/acl.log), the
unit under test ``acl-lease.service`` (Type=notify, NotifyAccess=main,
FileDescriptorStoreMax=16, Restart=on-failure) running this checkout's
``acl serve`` on POLICY: xinetd services ``echo`` (instances 1,
per_source 1) and ``multi`` (instances 3).  acl-wrap is real: a *holder*
(HOLDER, run inside the boot's namespaces) connects a client from its
address to itself on 127.0.0.1:PORT and starts ``acl-wrap -n echo SERVER``
on that connection, exactly as inetd does; SERVER reports its lease and,
when told, sends RELEASE of its ``ACL_LEASE_ID`` on ``ACL_LEASE_FD``
(docs/acl-wrap.md, the early release) or exits.

Some tests change the unit: a small ``FileDescriptorStoreMax=`` (a full
store), resolver files bound over /etc's with tests/serve/fake_dns.py
answering nothing on 127.0.0.1:53 in the boot's network namespace (a name
lookup under way at a stop), ``NotifyAccess=all`` (a process of the unit
stores a name a second time); one stops systemd itself for a moment
(``SystemdBoot.paused``: a notification read only after its sender died).

PORT (27504) is listened on inside the boot's own network namespace only
(tests/deploy/conftest.py SLICES).  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import termios
import textwrap
import time

import pytest

from acl.client import Client
from acl.model import Reason, Request
from tests.serve.test_server import admin as admin_at

from .conftest import DEPLOY
from .systemd_boot import PYTHON, SRC, SystemdBoot, booted, wait_until

pytestmark = [pytest.mark.root, pytest.mark.live]

PORT = 27504
UNIT = "acl-lease.service"

XINETD = """\
service echo
{
	type		= UNLISTED
	port		= 7
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	server		= /bin/cat
	instances	= 1
	per_source	= 1
	cps		= 10000 1
}
service multi
{
	type		= UNLISTED
	port		= 8
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	server		= /bin/cat
	instances	= 3
	cps		= 10000 1
}
"""


def policy(keep: int, extra: str = "") -> str:
    """The policy under test; ``extra``: TOML tables added at its end."""
    return textwrap.dedent(f"""\
        [sockets]
        query = "/run/acl/query.sock"
        admin = "/run/acl/admin.sock"
        mode = "0666"
        admin_uids = [0]

        [metrics]
        listen = ""

        [limits]
        sources = 4096

        [[source]]
        type = "xinetd"
        file = "xinetd.conf"

        [run]
        watch = false
        keep_leases = {keep}
        """) + extra


def unit_text(notify: bool = True, store_max: int = 16, extra: str = "") -> str:
    """The unit under test: Type=notify, the fd store (``store_max``
    descriptors), Restart=on-failure; without ``notify``, Type=simple and
    no store (systemd 252 turns NotifyAccess=none into main when
    FileDescriptorStoreMax= is set).  ``extra``: more [Service] lines."""
    kind = (f"Type=notify\nNotifyAccess=main\nFileDescriptorStoreMax={store_max}\n" if notify
            else "Type=simple\nNotifyAccess=none\n")
    return textwrap.dedent("""\
        [Unit]
        Description=acl serve under test (lease store)
        DefaultDependencies=no

        [Service]
        """) + kind + textwrap.dedent("""\
        ExecStart=/usr/local/bin/acl serve --config /etc/acl/policy.toml
        ExecReload=/bin/kill -HUP $MAINPID
        Restart=on-failure
        RestartSec=100ms
        StandardOutput=append:/var/log/acl.log
        StandardError=append:/var/log/acl.log
        """) + extra


#: What acl-wrap runs (with this checkout on its path): says its lease, then
#: obeys its client's lines.
SERVER = """\
import os, socket, struct, sys
from acl.wire import binary as wb
print("LEASE", os.environ.get("ACL_LEASE_ID", "0"), flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        s = socket.socket(fileno=int(os.environ["ACL_LEASE_FD"]))
        s.settimeout(10)
        s.sendall(wb.encode_release(7, int(os.environ["ACL_LEASE_ID"])))
        dec = wb.ReplyDecoder()
        got = []
        for _ in range(100):
            data = s.recv(4096)
            got = dec.feed(data)
            if got or not data:
                break
        s.detach()
        print("RELEASED", got[0].released if got else "EOF", flush=True)
    elif line.strip() == "exit":
        break
"""

#: inetd in miniature: one connection from argv[1] handed to acl-wrap; the
#: test talks to the client end through this process's stdin and stdout.
HOLDER = """\
import os, socket, subprocess, sys, threading
src, port, service, python = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(1)
c = socket.socket(); c.bind((src, 0)); c.connect(("127.0.0.1", port))
conn, _ = ls.accept(); ls.close()
env = {"PATH": "/usr/bin:/bin", "ACL_WRAP_SOCKET": "/run/acl/query.sock",
       "ACL_WRAP_TIMEOUT": "5000"}
p = subprocess.Popen(["/usr/local/bin/acl-wrap", "-n", service, python, "/etc/acl/server.py"],
                     stdin=conn, stdout=conn, stderr=conn, env=env, close_fds=True)
conn.close()
print("STARTED", flush=True)
def pump():
    f = c.makefile("rb")
    for line in f:
        sys.stdout.write("FROM " + line.decode(errors="replace")); sys.stdout.flush()
    print("EOF", flush=True)
threading.Thread(target=pump, daemon=True).start()
for line in sys.stdin:
    c.sendall(line.encode())
    if line.strip() == "exit":
        break
print("EXIT", p.wait(timeout=20), flush=True)
"""


class Holder:
    """One acl-wrap'd connection from ``src`` (HOLDER) inside the boot."""

    def __init__(self, boot: SystemdBoot, src: str, service: str = "echo") -> None:
        self.proc = subprocess.Popen(
            boot.cmd(PYTHON, "/etc/acl/holder.py", src, str(PORT), service, PYTHON),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []

    def read_until(self, pattern: str, deadline_s: float = 20) -> str:
        """The first line (from now on) matching ``pattern``."""
        end = time.monotonic() + deadline_s
        rx = re.compile(pattern)
        buf = b""
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.lines.append(text)
                if rx.search(text):
                    return text
        raise AssertionError(f"no line matching {pattern!r} in {self.lines!r}")

    def say(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def lease(self) -> int:
        """The lease id the server got, or 0 when acl-wrap refused (it exits)."""
        got = self.read_until(r"^(FROM LEASE \d+|EOF)$")
        return int(got.split()[-1]) if got.startswith("FROM") else 0

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.say("exit")
            except OSError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def put_files(b: SystemdBoot, keep: int = 8) -> None:
    b.put({"policy.toml": policy(keep), "xinetd.conf": XINETD, "server.py": SERVER,
           "holder.py": HOLDER})


@contextlib.contextmanager
def boot_with(tmp_path, keep: int = 8, notify: bool = True, store_max: int = 16,
              files: dict[str, str] | None = None, unit_extra: str = ""):
    """A boot running UNIT on ``policy(keep)`` (``files``: more files, or
    others, in /etc/acl)."""
    with booted(tmp_path / "stage", early_boot=False) as b:
        put_files(b, keep)
        b.put(files or {})
        b.put({UNIT: unit_text(notify, store_max, unit_extra)}, "/etc/systemd/system")
        b.systemctl("daemon-reload")
        b.systemctl("start", UNIT)
        wait_active(b)
        yield b


def acl_log(b: SystemdBoot) -> str:
    try:
        return b.path("/var/log/acl.log").read_text(errors="replace")
    except OSError:
        return ""


def main_pid(b: SystemdBoot) -> int:
    return int(b.show(UNIT, "MainPID")["MainPID"])


def wait_active(b: SystemdBoot, other_than: int = 0) -> int:
    def up():
        p = b.show(UNIT, "ActiveState", "MainPID")
        pid = int(p["MainPID"])
        return pid if p["ActiveState"] == "active" and pid and pid != other_than else 0
    try:
        pid = wait_until(up, 30, why=f"{UNIT} to be active")
    except AssertionError as exc:          # the logs as they are now, not at the call
        raise AssertionError(f"{exc}{b.log_tail()}\n{acl_log(b)}") from None
    wait_until(lambda: b.path("/run/acl/query.sock").exists(), 10, why="the query socket")
    return pid


def crash(b: SystemdBoot) -> None:
    """kill -9 the sidecar; Restart=on-failure brings it back."""
    pid = main_pid(b)
    b.run("kill", "-9", str(pid))
    wait_active(b, other_than=pid)


def admin(b: SystemdBoot, command: str) -> dict:
    return admin_at(str(b.path("/run/acl/admin.sock")), command)


@pytest.fixture
def boot(tmp_path):
    with boot_with(tmp_path) as b:
        yield b


def test_the_wrapped_servers_lease_survives_restart_and_crash(boot):
    """instances = 1 stays counted across ``systemctl restart`` and a kill -9;
    the adopted connection's end releases it."""
    first = Holder(boot, "127.0.0.8")
    holders = [first]
    try:
        lease = first.lease()
        assert lease > 0
        boot.systemctl("restart", UNIT)
        wait_active(boot)
        second = Holder(boot, "127.0.0.9")
        holders.append(second)
        assert second.lease() == 0, "instances 1 was forgotten by the restart"
        first.say("exit")                      # the server ends: its connection with it
        first.read_until(r"^EXIT ")
        third = Holder(boot, "127.0.0.10")
        holders.append(third)
        third_lease = third.lease()
        assert third_lease > lease             # ids go on past the adopted ones
        crash(boot)
        fourth = Holder(boot, "127.0.0.11")
        holders.append(fourth)
        assert fourth.lease() == 0, "instances 1 was forgotten by the crash"
        third.say("exit")
        third.read_until(r"^EXIT ")
        fifth = Holder(boot, "127.0.0.12")
        holders.append(fifth)
        assert fifth.lease() > third_lease
        log = acl_log(boot)
        assert log.count("lease store: adopted 1 connections holding 1 leases") == 2, log
    finally:
        for h in holders:
            h.close()


def admin_text(b: SystemdBoot) -> str:
    return json.dumps(admin(b, "stats"))


def test_the_server_releases_its_lease_after_a_restart(boot):
    """RELEASE of ACL_LEASE_ID on the adopted, sealed connection: RELEASED ok,
    and the slot is free at once (docs/acl-wrap.md early release)."""
    first = Holder(boot, "127.0.0.8")
    holders = [first]
    try:
        assert first.lease() > 0
        boot.systemctl("restart", UNIT)
        wait_active(boot)
        first.say("release")
        assert first.read_until(r"^FROM RELEASED ") == "FROM RELEASED True"
        second = Holder(boot, "127.0.0.9")
        holders.append(second)
        assert second.lease() > 0
        # the adopted connection is still sealed: a second RELEASE is "no such lease"
        first.say("release")
        assert first.read_until(r"^FROM RELEASED ") == "FROM RELEASED False"
    finally:
        for h in holders:
            h.close()


def test_a_binary_client_keeps_its_connection_and_leases(boot):
    """acl.client holding three leases of ``multi`` (instances 3) goes on
    on the same connection across a restart; the leases stay counted."""
    sock = str(boot.path("/run/acl/query.sock"))
    with Client(sock, timeout=10) as c:
        held = [c.decide("multi", f"127.0.0.{20 + i}", lease=True) for i in range(3)]
        assert all(d.allowed and d.lease for d in held)
        boot.systemctl("restart", UNIT)
        wait_active(boot)
        stats = admin(boot, "stats")
        assert stats["leases"] == {"multi": 3}, stats
        assert stats["lease_store"]["adopted_leases"] == 3, stats
        # the same connection answers, and instances 3 is still full
        full = c.decide("multi", "127.0.0.30", lease=True)
        assert not full.allowed and full.reason is Reason.SERVICE_LIMIT
        with Client(sock, timeout=10) as other:
            assert other.decide("multi", "127.0.0.31", lease=True).reason is \
                Reason.SERVICE_LIMIT
        assert c.release(held[0].lease) is True
        again = c.decide("multi", "127.0.0.30", lease=True)
        assert again.allowed and again.lease > max(d.lease for d in held)
        crash(boot)
        assert admin(boot, "stats")["leases"] == {"multi": 3}
        assert c.release(again.lease) is True
    # the client closed: systemd drops the stored descriptor, acl the leases
    wait_until(lambda: admin(boot, "stats")["leases"].get("multi", 0) == 0, 10,
               why="the leases released when the adopted connection closed")


@pytest.mark.parametrize("how", ["keep_leases = 0", "no NOTIFY_SOCKET"])
def test_without_the_setting_a_restart_forgets_the_lease(tmp_path, how):
    """As before the store: off unless asked, and only under systemd's notify."""
    setting = {"keep": 0} if how == "keep_leases = 0" else {"notify": False}
    holders = []
    with boot_with(tmp_path, **setting) as b:
        try:
            first = Holder(b, "127.0.0.8")
            holders.append(first)
            assert first.lease() > 0
            pid = main_pid(b)
            b.systemctl("restart", UNIT)
            wait_active(b, other_than=pid)
            second = Holder(b, "127.0.0.9")
            holders.append(second)
            assert second.lease() > 0, "the lease survived without the store"
            if how == "no NOTIFY_SOCKET":
                assert "not run by systemd (no NOTIFY_SOCKET)" in acl_log(b)
        finally:
            for h in holders:
                h.close()


def journal_map(b: SystemdBoot) -> tuple[str, int]:
    """The running sidecar's journal mapping: (map_files path, size)."""
    pid = main_pid(b)
    for line in b.path(f"/proc/{pid}/maps").read_text().splitlines():
        if "memfd:acl-leases" in line:
            span = line.split()[0]
            lo, hi = (int(x, 16) for x in span.split("-"))
            return str(b.path(f"/proc/{pid}/map_files/{span}")), hi - lo
    raise AssertionError("no journal mapping")


def test_a_damaged_journal_does_not_stop_the_start(boot):
    """Garbage in a record: that record is dropped and logged; a journal
    with a garbage header: unusable, logged, every kept connection closed;
    acl serves either way."""
    from acl.serve import lease_journal as lj

    first = Holder(boot, "127.0.0.8")
    holders = [first]
    try:
        assert first.lease() > 0
        second = Holder(boot, "127.0.0.9", "multi")
        holders.append(second)
        assert second.lease() > 0
        path, _size = journal_map(boot)
        with open(path, "r+b") as f:
            data = f.read(lj.HEADER + 4 * lj.RECORD)
            leases = [i for i in range(4) if data[lj.HEADER + i * lj.RECORD + 1] == lj.KIND_LEASE]
            f.seek(lj.HEADER + leases[1] * lj.RECORD + 40)
            f.write(b"\xde\xad\xbe\xef")        # the second lease's record, torn
        boot.systemctl("restart", UNIT)
        wait_active(boot)
        log = acl_log(boot)
        assert "dropped 1 records (1 bad)" in log, log
        stats = admin(boot, "stats")
        assert stats["leases"] == {"echo": 1}, stats
        path, size = journal_map(boot)
        with open(path, "r+b") as f:
            f.write(os.urandom(64))             # the header
        crash(boot)
        log = acl_log(boot)
        assert re.search(r"journal acl-lease-journal-\d+ is unusable: no journal header", log)
        assert "kept connection" in log and "no record of it in the journal" in log
        assert admin(boot, "stats")["leases"] == {}
        third = Holder(boot, "127.0.0.10")
        holders.append(third)
        assert third.lease() > 0
    finally:
        for h in holders:
            h.close()


class Raw:
    """A binary-protocol connection spoken frame by frame (acl.wire.binary)."""

    def __init__(self, b: SystemdBoot) -> None:
        from acl.wire import binary as wb

        self.wb = wb
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(str(b.path("/run/acl/query.sock")))
        self.dec = wb.ReplyDecoder()

    def reply(self):
        for _ in range(1000):
            data = self.sock.recv(65536)
            if not data:
                return None
            got = self.dec.feed(data)
            if got:
                return got[0]
        raise AssertionError("no whole reply in 1000 reads")

    def close(self) -> None:
        self.sock.close()


def test_a_frame_sent_while_acl_is_down_is_answered_by_the_next(boot):
    """Frames the old acl did not read stay in the kept connection for the
    next one (here: sent while the old one is stopped, then restarted)."""
    c = Raw(boot)
    try:
        c.sock.sendall(c.wb.encode_decide(1, Request("multi", "127.0.0.20", lease=True)))
        first = c.reply()
        assert first.decision.lease > 0
        pid = main_pid(boot)
        boot.run("kill", "-STOP", str(pid))
        c.sock.sendall(c.wb.encode_decide(2, Request("multi", "127.0.0.21", lease=True)))
        boot.systemctl("restart", UNIT)          # SIGTERM, then SIGCONT
        wait_active(boot, other_than=pid)
        second = c.reply()
        assert second.request_id == 2 and second.decision.lease > first.decision.lease
        assert admin(boot, "stats")["leases"] == {"multi": 2}
    finally:
        c.close()


def test_part_of_a_frame_at_a_stop_ends_the_connection(boot):
    """The next acl could not frame the rest: the connection is closed at
    the stop, and its leases end (leasestore.py, "Stop")."""
    c = Raw(boot)
    try:
        c.sock.sendall(c.wb.encode_decide(1, Request("multi", "127.0.0.20", lease=True)))
        assert c.reply().decision.lease > 0
        frame = c.wb.encode_decide(2, Request("multi", "127.0.0.21", lease=True))
        c.sock.sendall(frame[:len(frame) // 2])
        wait_until(lambda: admin(boot, "stats")["clients"]["binary"] == 1, 10,
                   why="acl to count the binary client")
        time.sleep(0.3)                             # read into acl's buffer
        boot.systemctl("restart", UNIT)
        wait_active(boot)
        assert c.reply() is None                    # the end of the connection
        assert admin(boot, "stats")["leases"] == {}
        assert "0 connections handed over to systemd, 1 closed: 1 holding part of a frame" \
            in acl_log(boot)
    finally:
        c.close()


def test_the_shipped_unit_keeps_leases(tmp_path):
    """deploy/systemd/acl.service and its sockets as shipped (sandbox, User=acl,
    socket activation, FileDescriptorStoreMax=) with keep_leases in the
    policy: restart and kill -9 keep acl-wrap's lease.  (The drop-ins only
    cut the default dependencies: the early boot is masked here.)"""
    sockets = ("acl.socket", "acl-admin.socket", "acl-metrics.socket")
    no_deps = "[Unit]\nDefaultDependencies=no\n"
    units = {u: (DEPLOY / "systemd" / u).read_text() for u in ("acl.service", *sockets)}
    units.update({f"{u}.d/boot.conf": no_deps for u in ("acl.service", *sockets)})
    holders = []
    with booted(tmp_path / "stage", early_boot=False) as b:

        def active(other: int = 0) -> int:
            p = b.show("acl.service", "ActiveState", "MainPID")
            pid = int(p["MainPID"])
            return pid if p["ActiveState"] == "active" and pid != other else 0

        try:
            b.run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "acl")
            put_files(b)
            b.put(units, "/etc/systemd/system")
            b.systemctl("daemon-reload")
            b.systemctl("start", *sockets, "acl.service")
            pid = wait_until(active, 30, why=f"acl.service to be active{b.log_tail()}")
            first = Holder(b, "127.0.0.8")
            holders.append(first)
            assert first.lease() > 0
            b.systemctl("restart", "acl.service")
            pid = wait_until(lambda: active(pid), 30, why=f"a new acl.service{b.log_tail()}")
            holders.append(Holder(b, "127.0.0.9"))
            assert holders[-1].lease() == 0, "instances 1 forgotten by the restart"
            b.run("kill", "-9", str(pid))
            wait_until(lambda: active(pid), 30, why=f"acl.service restarted{b.log_tail()}")
            holders.append(Holder(b, "127.0.0.10"))
            assert holders[-1].lease() == 0, "instances 1 forgotten by the crash"
            first.say("release")
            assert first.read_until(r"^FROM RELEASED ") == "FROM RELEASED True"
            holders.append(Holder(b, "127.0.0.11"))
            assert holders[-1].lease() > 0
        finally:
            for h in holders:
                h.close()


def test_a_full_fd_store_never_costs_the_journal(tmp_path):
    """FileDescriptorStoreMax=2: the journal and one kept connection fill
    systemd's store, which then closes what it is given (and only logs it:
    FDSTORE has no reply).  A start that replaced the journal it was passed
    with a new one would lose it there -- so two kill -9 in a row keep
    the lease; and a restart with keep_leases changed (a new journal is
    needed, and the full store drops it) still keeps it, from the old
    journal, which stays stored."""
    holders = []
    with boot_with(tmp_path, store_max=2) as b:
        try:
            first = Holder(b, "127.0.0.8")
            holders.append(first)
            assert first.lease() > 0
            for _ in range(2):
                crash(b)
                holders.append(Holder(b, "127.0.0.9"))
                assert holders[-1].lease() == 0, \
                    f"instances 1 forgotten by a crash{b.log_tail()}\n{acl_log(b)}"
            b.put({"policy.toml": policy(16)})
            b.systemctl("restart", UNIT)
            wait_active(b)
            crash(b)
            holders.append(Holder(b, "127.0.0.10"))
            assert holders[-1].lease() == 0, \
                f"instances 1 forgotten after keep_leases changed{b.log_tail()}\n{acl_log(b)}"
            # the store was full indeed: systemd closed the new journal
            assert "Cannot store more fds than FileDescriptorStoreMax=2" in \
                b.log_path.read_text(errors="replace")
            first.say("release")
            assert first.read_until(r"^FROM RELEASED ") == "FROM RELEASED True"
            holders.append(Holder(b, "127.0.0.11"))
            assert holders[-1].lease() > 0
        finally:
            for h in holders:
                h.close()


def fd_store_count(b: SystemdBoot) -> int:
    """How many descriptors systemd holds in UNIT's store now."""
    return int(b.show(UNIT, "NFileDescriptorStore")["NFileDescriptorStore"])


def unread_by_acl(c: Raw) -> int:
    """Bytes the client sent that acl has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(c.sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]


def take_a_kept_lease(b: SystemdBoot) -> Raw:
    """A binary client holding a lease of ``multi``: kept in the store."""
    c = Raw(b)
    c.sock.sendall(c.wb.encode_decide(1, Request("multi", "127.0.0.20", lease=True)))
    assert c.reply().decision.lease > 0
    wait_until(lambda: fd_store_count(b) == 2, 10, why="the journal and the connection stored")
    return c


#: The name case: ``named`` is allowed by host name only, so deciding it
#: looks up the client's name -- through a DNS server that never answers
#: (tests/serve/fake_dns.py in the boot's network namespace; the unit's
#: resolver files bound over /etc's: files, then 127.0.0.1, timeout 20 s).
NAMES_POLICY = """
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["named"]

[names]
deadline = 30
"""
NAMES_FILES = {
    "hosts.allow": "named: .lab.test\n", "hosts.deny": "named: ALL\n",
    "resolv.conf": "nameserver 127.0.0.1\noptions timeout:20 attempts:1\n",
    "nsswitch.conf": "hosts: files dns\nnetworks: files\n",
    "hosts": "127.0.0.1\tlocalhost\n",
    "dns.json": json.dumps({"ptr": {}, "a": {}, "drop": [], "silent": [""]}),
}
NAMES_UNIT = ("BindReadOnlyPaths=/etc/acl/resolv.conf:/etc/resolv.conf "
              "/etc/acl/nsswitch.conf:/etc/nsswitch.conf /etc/acl/hosts:/etc/hosts\n")


def test_a_kept_connection_waiting_for_a_name_at_a_stop_leaves_the_store(tmp_path):
    """Its request waits for a lookup the stop cannot wait out (2 s): the
    connection is removed from systemd's store and closed -- its client
    sees the end with no reply, the next acl adopts nothing and counts no
    lease (leasestore.py, "Stop")."""
    files = {**NAMES_FILES, "policy.toml": policy(8, NAMES_POLICY)}
    with boot_with(tmp_path, files=files, unit_extra=NAMES_UNIT) as b:
        dns = subprocess.Popen(b.cmd(PYTHON, f"{SRC}/tests/serve/fake_dns.py",
                                     "/etc/acl/dns.json", "/run/acl-dns.ready"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        c = None
        try:
            wait_until(lambda: b.path("/run/acl-dns.ready").exists(), 20,
                       why="the fake DNS server")
            c = take_a_kept_lease(b)
            c.sock.sendall(c.wb.encode_decide(2, Request("named", "192.0.2.50")))
            wait_until(lambda: unread_by_acl(c) == 0, 10, why="acl to read the request")
            c.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.sock.recv(1)                   # no reply: it waits for the name
            c.sock.settimeout(20)
            pid = main_pid(b)
            b.systemctl("restart", UNIT)
            wait_active(b, other_than=pid)
            assert c.reply() is None             # the end, and no reply
            assert ("0 connections handed over to systemd, 1 closed: 1 waiting for a name "
                    "lookup") in acl_log(b), acl_log(b)
            stats = admin(b, "stats")
            assert stats["leases"] == {} and stats["lease_store"]["adopted_connections"] == 0
            assert fd_store_count(b) == 1        # the journal alone
        finally:
            if c is not None:
                c.close()
            dns.kill()
            dns.wait(timeout=10)


def test_a_kept_connection_whose_client_does_not_read_leaves_the_store(tmp_path):
    """Replies to 50,000 PINGs the client does not read fill the kernel's
    buffer and wait in acl's (below the point where acl stops reading, so
    every frame sent was read and answered): at the stop they cannot be
    flushed within 2 s, so the connection is removed from systemd's store
    and closed -- its client reads what was written, then the end; the
    next acl adopts nothing (leasestore.py, "Stop")."""
    with boot_with(tmp_path) as b:
        c = take_a_kept_lease(b)
        try:
            c.sock.sendall(b"".join(c.wb.encode_ping(i) for i in range(50_000)))
            wait_until(lambda: unread_by_acl(c) == 0, 20, why="acl to read every PING")
            pid = main_pid(b)
            b.systemctl("restart", UNIT)
            wait_active(b, other_than=pid)
            pongs = 0
            for _ in range(100_000):             # bounded: each read is at least a byte
                data = c.sock.recv(65536)
                if not data:
                    break
                pongs += len(c.dec.feed(data))
            assert 0 < pongs < 50_000, pongs     # some written, then the end
            assert ("0 connections handed over to systemd, 1 closed: 1 its client not "
                    "reading its replies") in acl_log(b), acl_log(b)
            stats = admin(b, "stats")
            assert stats["leases"] == {} and stats["lease_store"]["adopted_connections"] == 0
            assert fd_store_count(b) == 1
        finally:
            c.close()


def test_a_connection_stored_just_before_a_crash_is_kept(boot):
    """systemd reads its notify socket before it reaps a dead main process
    (sd-event priorities: notify before SIGCHLD), so an FDSTORE acl sent
    just before it died is taken: with systemd stopped, a client takes a
    lease (acl stores the connection before it answers) and acl is killed;
    then systemd goes on, reads the FDSTORE of a dead sender, restarts
    acl, and the connection is adopted with its lease (leasestore.py,
    "Crash")."""
    pid = main_pid(boot)
    c = None
    try:
        with boot.paused():
            c = Raw(boot)
            c.sock.sendall(c.wb.encode_decide(1, Request("multi", "127.0.0.20", lease=True)))
            lease = c.reply().decision.lease       # the connection was sent to the store
            assert lease > 0
            boot.run("kill", "-9", str(pid))
            wait_until(lambda: "State:\tZ" in boot.proc_file(pid, "status"), 10,
                       why="acl to be dead (a zombie: systemd has not reaped it)")
        wait_active(boot, other_than=pid)
        stats = admin(boot, "stats")
        assert stats["leases"] == {"multi": 1}, (stats, acl_log(boot))
        assert stats["lease_store"]["adopted_connections"] == 1
        c.sock.sendall(c.wb.encode_release(2, lease))
        assert c.reply().released is True          # the same connection, served again
    finally:
        if c is not None:
            c.close()


#: Sends systemd, as a process of UNIT (NotifyAccess=all), a junk memfd
#: under each name in argv: a name acl stored, stored a second time.
INJECT = """\
import array, os, socket, sys
fd = os.memfd_create("junk")
os.write(fd, b"junk" * 64)
where = os.environ.get("NOTIFY_SOCKET", "/run/systemd/notify")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\\0" + where[1:] if where.startswith("@") else where)
for name in sys.argv[1:]:
    s.sendmsg([f"FDSTORE=1\\nFDNAME={name}".encode()],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
print("SENT", flush=True)
"""


def test_a_journal_name_stored_twice_does_not_refuse_the_start(tmp_path):
    """systemd passes a name twice when it was given it twice (here a
    process of the unit stores junk under the journal's name): the start
    is not refused -- the journal that reads is used, the lease kept, the
    junk logged -- and the start after it is passed one journal again."""
    with boot_with(tmp_path, unit_extra="NotifyAccess=all\n",
                   files={"inject.py": INJECT}) as b:
        first = Holder(b, "127.0.0.8")
        holders = [first]
        try:
            assert first.lease() > 0
            group = b.show(UNIT, "ControlGroup")["ControlGroup"]
            b.run("sh", "-c", f'echo $$ > "/sys/fs/cgroup{group}/cgroup.procs" && '
                  f"exec {PYTHON} /etc/acl/inject.py acl-lease-journal-1")
            wait_until(lambda: fd_store_count(b) == 3, 10, why="the second journal stored")
            crash(b)
            log = acl_log(b)
            assert "journal acl-lease-journal-1 is unusable" in log, log
            holders.append(Holder(b, "127.0.0.9"))
            assert holders[-1].lease() == 0, "instances 1 forgotten"
            crash(b)                    # passed both journals: the new one is used
            log = acl_log(b)
            assert "(journal acl-lease-journal-2, written on)" in log, log
            assert fd_store_count(b) == 2           # the connection, the journal
            holders.append(Holder(b, "127.0.0.10"))
            assert holders[-1].lease() == 0, "instances 1 forgotten"
        finally:
            for h in holders:
                h.close()
