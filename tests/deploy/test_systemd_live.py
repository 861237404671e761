"""The shipped units under a real systemd: what an admin does, and what follows.

One systemd boots for the whole module (tests/deploy/systemd_boot.py: its
own namespaces, the host read-only), installed as the operator guide's
section 2 says, the units copied byte for byte, nothing of them overridden.  Before each test the baseline is put
back: the test policy in /etc/acl, acl.service stopped, its three sockets
listening, every other acl unit stopped.  Clients reach the Unix sockets
through /proc/<systemd>/root and TCP inside the namespace (``nsenter``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acl import core
from acl.model import Reason, Request, Verdict

from . import systemd_boot
from .conftest import DEPLOY, GUIDE, ROOT, SLICES, guide_commands
from .sidecar import Client
from .systemd_boot import SRC, wait_until
from .test_socket_activation import postfix_ask

pytestmark = [pytest.mark.root, pytest.mark.live]

UNITS = DEPLOY / "systemd"
SOCKETS = ("acl.socket", "acl-admin.socket", "acl-metrics.socket")
ALLOWED, DENIED, TCPRULES_DENIED = "127.0.0.2", "127.0.0.3", "127.0.0.9"
#: The NFQUEUE test's server port, inside the boot's own network namespace.
NFQ_PORT = SLICES["systemd_live"][0]
NFQ_QUEUE = 5

POLICY = """\
[sockets]
query = "/run/acl/query.sock"
admin = "/run/acl/admin.sock"

[metrics]
listen = "127.0.0.1:9464"

[[source]]
type = "tcprules"
file = "tcp.rules"
services = ["alpha"]

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]

[run]
user = ""
group = ""
watch = false
"""
NFQUEUE_TABLE = f'\n[nfqueue]\nqueues = [{NFQ_QUEUE}]\nports = {{ {NFQ_PORT} = "guarded" }}\n'
BASELINE = {
    "policy.toml": POLICY,
    "hosts.allow": "".join(f"{svc}: {ALLOWED}\n" for svc in ("alpha", "echo", "smtpd", "guarded")),
    "hosts.deny": "ALL: ALL\n",
    "tcp.rules": f"{TCPRULES_DENIED}:deny\n:allow\n",
}


def unit_value(unit: str, key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", (UNITS / unit).read_text(), re.M)
    assert m, (unit, key)
    return m.group(1).strip()


# -- the boot ----------------------------------------------------------------
@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    with systemd_boot.booted(tmp_path_factory.mktemp("systemd")) as boot:
        install_as_the_guide_says(boot)
        yield boot


def install_as_the_guide_says(boot) -> None:
    """Run the guide's section-2 commands inside (``cp deploy/...`` from the
    checkout), then copy the other shipped units beside them."""
    for line in guide_commands():
        boot.run("sh", "-c", f"cd {SRC} && {line}")
    for unit in sorted(UNITS.iterdir()):
        dest = boot.path(f"/etc/systemd/system/{unit.name}")
        if not dest.exists():
            shutil.copyfile(unit, dest)
    boot.systemctl("daemon-reload")


def present(live, unit: str) -> bool:
    return live.path(f"/etc/systemd/system/{unit}").exists()


@pytest.fixture
def live(booted):
    """The booted systemd, back at the baseline."""
    others = [u for u in ("acl-nfqueue.service", "acl-wrap.socket", "acl-policy.socket",
                          "acl-nfqueue-policy.socket") if present(booted, u)]
    booted.systemctl("stop", *others)
    booted.put(BASELINE)
    booted.systemctl("reset-failed")
    booted.systemctl("start", *SOCKETS)
    # a connection still queued on a socket starts the service again: stop it until it stays
    for _ in range(5):
        booted.systemctl("stop", "acl.service")
        if booted.show("acl.service", "ActiveState")["ActiveState"] == "inactive":
            break
    assert booted.show("acl.service", "ActiveState")["ActiveState"] == "inactive"
    return booted


# -- helpers -----------------------------------------------------------------
def decide(live, service: str, client: str):
    """One decision over the query socket (the first one starts acl.service)."""
    c = Client(live.path("/run/acl/query.sock"), timeout=20)
    try:
        (reply,) = c.decide_many([Request(service, client)])
    finally:
        c.close()
    return reply.decision


def metrics(live) -> str:
    return live.net().fetch("http://127.0.0.1:9464/metrics")


def sample(body: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    assert m, name
    return float(m.group(1))


def status(live, pid) -> dict[str, str]:
    text = live.proc_file(pid, "status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def main_pid(live, unit: str = "acl.service") -> int:
    return int(live.show(unit, "MainPID")["MainPID"])


def user_ids(live, name: str) -> tuple[int, int]:
    for line in live.path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {name} inside")


def with_nfqueue(policy: str) -> str:
    return policy + NFQUEUE_TABLE


def guide_postfix() -> tuple[list[str], list[str]]:
    """The guide's Postfix steps 1 and 2: the [sockets] lines it adds to
    policy.toml, and the commands that install the socket."""
    text = GUIDE.read_text()
    section = text[text.index("### Postfix (`check_policy_service`)"):]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    lines = [ln.strip() for ln in toml.splitlines() if ln.strip().startswith("policy")]
    sh = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return lines, [ln.strip() for ln in sh.splitlines() if ln.strip()]


def with_postfix(policy: str) -> str:
    lines, _ = guide_postfix()
    return policy.replace("[sockets]\n", "[sockets]\n" + "".join(f"{ln}\n" for ln in lines), 1)


def ask_postfix(live, client: str) -> str:
    return postfix_ask(live.path("/var/spool/postfix/acl/policy.sock"), client)


# -- the boot itself ---------------------------------------------------------
def test_no_file_system_of_the_host_is_writable_inside(booted):
    """systemd_boot.py's SAFETY rules, after the early boot ran (tmpfiles,
    sysctl.d, binfmt.d): each file system of the host that a path inside
    reaches is mounted read-only there (but the boot's own cgroup); the
    kernel's tunables are read-only but for the boot's own network; the
    kernel-wide binfmt_misc is not mounted; no module loading, raw I/O or
    clock setting in systemd's bounding set."""
    host = {dev for dev, *_ in systemd_boot.mount_table(Path("/proc/self/mountinfo").read_text())}
    inside = systemd_boot.mount_table(booted.proc_file(1, "mountinfo"))
    for dev, point, flags, fstype in inside:
        if dev not in host or (point, fstype) == ("/sys/fs/cgroup", "cgroup2"):
            continue
        try:
            st = os.stat(booted.path(point))
        except OSError:
            continue                            # under a mount of the boot
        if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" == dev:
            assert "ro" in flags, (point, fstype, flags)
    flags = {point: flags for _, point, flags, _ in inside}
    assert "ro" in flags["/proc/sys"] and "rw" in flags["/proc/sys/net"]
    binfmt = booted.show("proc-sys-fs-binfmt_misc.automount", "ConditionResult")
    assert binfmt == {"ConditionResult": "no"}
    bounding = int(status(booted, 1)["CapBnd"], 16)
    for cap in (16, 17, 25):                    # CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_TIME
        assert not bounding & (1 << cap), cap


def test_a_boot_that_never_becomes_systemd_leaves_nothing_running(tmp_path, monkeypatch):
    """The namespaces' first process is stuck before it execs systemd (here
    it sleeps instead: no systemd starts): the boot gives up, and its
    teardown ends that process too, not only ``unshare`` -- else it would
    hold the namespaces and their mounts, and could still exec systemd with
    no one left to stop it."""
    why = systemd_boot.missing_tools()
    if why:
        pytest.skip(why)
    monkeypatch.setattr(systemd_boot, "inner_script",
                        lambda stage, console, early_boot: "#!/bin/sh\nexec sleep 60\n")
    boot = systemd_boot.SystemdBoot(tmp_path / "stage")
    first = None
    try:
        with pytest.raises(systemd_boot.CannotBoot, match="not up within"):
            boot.boot(deadline_s=1)
        children = Path(f"/proc/{boot.proc.pid}/task/{boot.proc.pid}/children").read_text()
        (first,) = map(int, children.split())
        assert Path(f"/proc/{first}/comm").read_text().strip() == "sleep"
        boot.teardown()

        def gone() -> bool:
            try:
                return Path(f"/proc/{first}/stat").read_text().split(")")[-1].split()[0] == "Z"
            except OSError:
                return True
        wait_until(gone, 5, why="the namespaces' first process to end with the boot")
        first = None
    finally:
        if first is not None:                   # ours: unshare forked it for this test
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, 9)
        boot.teardown()


# -- socket activation, the sandbox, the sockets ----------------------------
def test_first_query_starts_the_sandboxed_sidecar(live):
    assert live.show("acl.service", "ActiveState")["ActiveState"] == "inactive"
    for sock in SOCKETS:
        st = live.show(sock, "ActiveState", "SubState")
        assert (st["ActiveState"], st["SubState"]) == ("active", "listening"), (sock, st)
    out = live.run("/usr/local/bin/acl", "query", "alpha", ALLOWED, check=False)
    assert out.returncode == 0 and out.stdout.startswith(f"allow alpha {ALLOWED}: ok"), out
    out = live.run("/usr/local/bin/acl", "query", "alpha", DENIED, check=False)
    assert out.returncode == 1 and out.stdout.startswith(f"deny alpha {DENIED}: libwrap"), out
    d = decide(live, "alpha", TCPRULES_DENIED)
    assert (d.verdict, d.reason) == (Verdict.DENY, Reason.TCPRULES)
    props = live.show("acl.service", "ActiveState", "SubState", "MainPID", "LimitNOFILESoft")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    log = live.journal("acl.service")
    for name in ("query", "admin", "metrics"):
        assert re.search(rf"acl serve: {name} on fd:\d+ \(systemd\)", log), log

    # User=acl, no capability, NoNewPrivileges=, a seccomp filter
    pid = props["MainPID"]
    uid, gid = user_ids(live, "acl")
    st = status(live, pid)
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(gid)] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert st[cap] == "0" * 16, (cap, st[cap])
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")
    # PrivateNetwork=, PrivateUsers= (root and acl mapped, no one else)
    for ns in ("net", "user", "mnt"):
        assert (os.readlink(live.path(f"/proc/{pid}/ns/{ns}"))
                != os.readlink(f"/proc/{live.pid}/ns/{ns}")), ns
    mapped = {tuple(line.split()) for line in live.proc_file(pid, "uid_map").splitlines()}
    assert mapped == {("0", "0", "1"), (str(uid), str(uid), "1")}
    # ProtectSystem=strict: "/" read-only; ProtectHome=, PrivateTmp=: mounts of their own
    mounts = {f[4]: f[5].split(",") for f in
              (line.split() for line in live.proc_file(pid, "mountinfo").splitlines())}
    assert "ro" in mounts["/"]
    assert {"/root", "/tmp"} <= set(mounts)
    # the code under test is this checkout (its compiled core, when built)
    maps = live.proc_file(pid, "maps")
    assert f" {SRC}/acl/" in maps or core.BUILD == "pure", "not this checkout's code"
    if core.BUILD == "compiled":
        assert re.search(rf" {SRC}/acl/_core\.\S+\.so$", maps, re.M), maps
    # soft limit 1024 from the manager, raised to the hard limit by acl
    # serve itself (prlimit64 passes the unit's system call filter)
    assert props["LimitNOFILESoft"] == "1024"
    limits = re.search(r"^Max open files +(\d+) +(\d+)", live.proc_file(pid, "limits"), re.M)
    assert limits.group(1) == limits.group(2) != "1024", limits.group(0)

    # the sockets: query for group acl, admin root's alone
    q = os.stat(live.path("/run/acl/query.sock"))
    assert stat.S_ISSOCK(q.st_mode) and stat.S_IMODE(q.st_mode) == 0o660 and q.st_gid == gid
    a = os.stat(live.path("/run/acl/admin.sock"))
    assert stat.S_ISSOCK(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o600 and a.st_uid == 0
    out = live.run("/usr/local/bin/acl", "query", "--admin", "/run/acl/admin.sock", "stats")
    assert json.loads(out.stdout)["ok"] is True
    out = live.run("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                   "/usr/local/bin/acl", "query", "--admin", "/run/acl/admin.sock", "stats",
                   check=False)
    assert out.returncode == 111 and "Permission denied" in out.stderr, out

    # Prometheus text over HTTP on the passed TCP socket
    body = metrics(live)
    assert f'acl_core_info{{implementation="{core.BUILD}"' in body
    assert 'acl_decisions_total{reason="ok",service="alpha",verdict="allow"}' in body


def test_the_running_manager_rates_the_unit_as_the_guide_says(live):
    out = live.run("systemd-analyze", "security", "acl.service")
    m = re.search(r"Overall exposure level for acl\.service: (\d+\.\d) (\w+)", out.stdout)
    assert m, out.stdout[-300:]
    assert f"| `acl.service` | **{m.group(1)} {m.group(2)}** |" in GUIDE.read_text()


# -- reload, restart, crash, a policy that does not load --------------------
#: Clients of "alpha" each reload round allows a random part of.
RELOAD_CLIENTS = [f"127.0.1.{i}" for i in range(1, 31)]
RELOAD_ROUNDS = 4
#: hosts.allow lines for none of the clients asked about, so that each
#: reload takes a while (tens of microseconds a line: the guide): a query
#: sent while it still runs would get the old policy's answer, which is
#: what ``ExecReload=/bin/kill -HUP $MAINPID`` gave (it returns at once).
RELOAD_FILLER = "".join(f"alpha: 10.{i >> 8 & 255}.{i & 255}.1\n" for i in range(20_000))


def allow_alpha(live, allowed) -> None:
    """hosts.allow: the filler, the baseline's lines, and alpha for ``allowed``."""
    live.put({"hosts.allow": RELOAD_FILLER + BASELINE["hosts.allow"]
              + "".join(f"alpha: {a}\n" for a in sorted(allowed))})


def granted(live, service: str, clients: list[str]) -> set[str]:
    """The clients the running sidecar allows ``service``, asked in one batch."""
    c = Client(live.path("/run/acl/query.sock"), timeout=20)
    try:
        replies = c.decide_many([Request(service, a) for a in clients])
    finally:
        c.close()
    return {a for a, r in zip(clients, replies, strict=True)
            if r.decision.verdict is Verdict.ALLOW}


def test_systemctl_reload_returns_once_the_new_policy_answers(live):
    """Generated rounds, each allowing another random part of the clients:
    the first query after ``systemctl reload acl`` returns 0 -- no waiting,
    no retry -- is decided by the new files, for every client.  The last
    round is ``acl reload`` run by hand (root, the default admin socket)."""
    rng = random.Random(252)
    assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW
    pid = main_pid(live)
    for n in range(RELOAD_ROUNDS):
        allowed = set(rng.sample(RELOAD_CLIENTS, rng.randrange(len(RELOAD_CLIENTS) + 1)))
        allow_alpha(live, allowed)
        if n < RELOAD_ROUNDS - 1:
            live.systemctl("reload", "acl.service")
        else:
            out = live.run("/usr/local/bin/acl", "reload")
            assert out.stdout.startswith("acl reload: reloaded in "), out
        assert granted(live, "alpha", RELOAD_CLIENTS) == allowed, n
    assert live.show("acl.service", "ActiveState", "MainPID") == {
        "ActiveState": "active", "MainPID": str(pid)}
    assert live.journal("acl.service").count("reloaded (admin)") == RELOAD_ROUNDS
    assert sample(metrics(live), "acl_last_reload_success") == 1.0


def test_systemctl_reload_waits_for_a_sidecar_slow_to_start_the_reload(live):
    """The sidecar does not run for a moment when the reload is asked (SIGSTOP
    here; a starved process on a loaded host alike): ``systemctl reload``
    must not return before it has run the reload.  (``kill -HUP $MAINPID``
    returned at once: systemd ends that reload when kill exits, unless the
    sidecar's RELOADING=1 happens to reach it first -- a race this stop
    decides.)  Then the first query gets the new policy."""
    assert decide(live, "alpha", DENIED).verdict is Verdict.DENY
    pid = main_pid(live)
    allow_alpha(live, {DENIED})
    live.run("kill", "-STOP", str(pid))
    reload = None
    try:
        reload = subprocess.Popen(live.cmd("systemctl", "--no-pager", "reload", "acl.service"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            reload.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        returned_while_stopped = reload.poll() is not None
    finally:
        live.run("kill", "-CONT", str(pid))
        if reload is not None:
            try:
                out, err = reload.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                reload.kill()
                out, err = reload.communicate(timeout=10)
    assert not returned_while_stopped, (reload.returncode, err)
    assert reload.returncode == 0, err
    assert decide(live, "alpha", DENIED).verdict is Verdict.ALLOW


def test_a_reload_that_does_not_load_fails_and_the_old_policy_answers(live):
    """A broken rule file: ``systemctl reload acl`` fails, ``systemctl
    status`` shows the file:line:column, the unit stays active on the same
    process, and the policy running before answers (not a mix: the changed
    hosts.allow beside the broken tcp.rules is not read either).  Fixed,
    the next reload works."""
    allow_alpha(live, {DENIED})
    assert decide(live, "alpha", DENIED).verdict is Verdict.ALLOW
    pid = main_pid(live)
    allow_alpha(live, set())
    rules = live.path("/etc/acl/tcp.rules")
    good = rules.read_text()
    rules.write_text(good + "127.0.0.7:allow,oops\n")
    out = live.systemctl("reload", "acl.service", check=False)
    assert out.returncode != 0 and "Job for acl.service failed" in out.stderr, out
    fatal = (r"acl reload: fatal: /etc/acl/tcp\.rules:3:\d+: [^\n]*; "
             r"the running policy stays")
    status_text = live.systemctl("status", "--lines=20", "acl.service", check=False).stdout
    assert re.search(fatal, status_text), status_text
    assert re.search(r"Active: active \(running\)", status_text), status_text
    log = live.journal("acl.service")
    assert re.search(r"reload \(admin\) failed, keeping the running policy: "
                     r"/etc/acl/tcp\.rules:3:\d+: ", log), log
    assert live.show("acl.service", "ActiveState", "SubState", "MainPID") == {
        "ActiveState": "active", "SubState": "running", "MainPID": str(pid)}
    assert decide(live, "alpha", DENIED).verdict is Verdict.ALLOW
    assert decide(live, "alpha", TCPRULES_DENIED).reason is Reason.TCPRULES
    body = metrics(live)
    assert sample(body, "acl_last_reload_success") == 0.0
    assert sample(body, 'acl_reloads_total{result="failure"}') == 1.0

    rules.write_text(good)
    live.systemctl("reload", "acl.service")
    assert decide(live, "alpha", DENIED).verdict is Verdict.DENY
    assert sample(metrics(live), "acl_last_reload_success") == 1.0


def wait_restarted(live, before: int, old_pid: int) -> int:
    def back():
        p = live.show("acl.service", "NRestarts", "ActiveState", "MainPID")
        return (int(p["NRestarts"]) == before + 1 and p["ActiveState"] == "active"
                and p["MainPID"] not in ("0", str(old_pid)) and int(p["MainPID"]))
    return wait_until(back, 20, why="Restart=on-failure")


def crash_signals() -> list[str]:
    """SIGKILL, and SIGSEGV unless core dumps are piped to a program: that
    one runs on the host (systemd-coredump), outside the test's namespaces.
    Here the service's cwd "/" is read-only, so a "core" file is not written."""
    piped = open("/proc/sys/kernel/core_pattern").read().startswith("|")
    return ["KILL"] if piped else ["KILL", "SEGV"]


def test_stop_restart_and_crashes(live):
    assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW
    first = main_pid(live)
    live.systemctl("restart", "acl.service")
    second = main_pid(live)
    assert second not in (0, first)
    assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW
    # a clean stop (SIGTERM -> STOPPING=1, exit 0); the next query starts it again
    stopped = live.journal("acl.service").count("acl serve: stopped")
    live.systemctl("stop", "acl.service")
    assert live.show("acl.service", "ActiveState", "Result") == {
        "ActiveState": "inactive", "Result": "success"}
    assert live.journal("acl.service").count("acl serve: stopped") == stopped + 1
    assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW
    for sig in crash_signals():
        old = main_pid(live)
        before = int(live.show("acl.service", "NRestarts")["NRestarts"])
        live.run("kill", f"-{sig}", str(old))
        wait_restarted(live, before, old)
        assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW, sig
        assert decide(live, "alpha", DENIED).verdict is Verdict.DENY, sig


#: Starts that restarting cannot mend: exit 100, and the line that says why.
def _line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


NOT_RESTARTED = {
    "a policy that does not load": (
        POLICY.replace('user = ""', 'usr = ""'),
        "acl serve: fatal: /etc/acl/policy.toml:{}:1: [run]: unknown key 'usr'".format(
            _line_of(POLICY, 'user = ""'))),
    "an [nfqueue] policy in acl.service": (
        with_nfqueue(POLICY),
        f"acl serve: fatal: cannot bind NFQUEUE {NFQ_QUEUE}: Address family not supported by "
        "protocol: this process may not open netlink sockets (under systemd, a policy with "
        "[nfqueue] runs in acl-nfqueue.service"),
}


@pytest.mark.parametrize("case", NOT_RESTARTED)
def test_a_start_that_cannot_work_is_not_restarted(live, case):
    policy, says = NOT_RESTARTED[case]
    if "[nfqueue]" in policy:
        nfqueue_skip()
    live.put({"policy.toml": policy})
    out = live.systemctl("restart", "acl.service", check=False)
    assert out.returncode != 0
    props = ("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    failed = {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "100",
              "NRestarts": "0"}
    assert live.show("acl.service", *props) == failed, live.journal("acl.service")[-500:]
    assert says in live.journal("acl.service")
    # Restart=on-failure would have started it again after RestartSec=
    time.sleep(2 * float(unit_value("acl.service", "RestartSec").rstrip("s")))
    assert live.show("acl.service", *props) == failed
    # the guide: fix the file, then systemctl restart acl
    live.put(BASELINE)
    live.systemctl("restart", "acl")
    assert live.show("acl.service", "ActiveState")["ActiveState"] == "active"


# -- acl-wrap.socket + acl-wrap@.service (Accept=yes) ------------------------
ECHO_CLIENT = """
import json, socket, sys
port = int(sys.argv[1])
out = {}
for src in sys.argv[2:]:
    s = socket.socket()
    s.settimeout(10)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"hello from " + src.encode() + b"\\n")
    got = b""
    try:
        while not got.endswith(b"\\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    out[src] = got.decode()
    s.close()
print(json.dumps(out))
"""


def test_accept_yes_pair_echoes_to_an_allowed_client_only(live):
    host, port = unit_value("acl-wrap.socket", "ListenStream").rsplit(":", 1)
    assert host == "127.0.0.1"
    # the sidecar up first: acl-wrap's own deadline (2 s) is for a running sidecar
    assert decide(live, "echo", ALLOWED).verdict is Verdict.ALLOW
    live.systemctl("enable", "--now", "acl-wrap.socket")
    out = live.net().run(sys.executable, "-c", ECHO_CLIENT, port, ALLOWED, DENIED)
    assert json.loads(out.stdout) == {ALLOWED: f"hello from {ALLOWED}\n", DENIED: ""}
    def wrap_log() -> str:
        # by the syslog tag acl-wrap logs under (the service name, as tcpd):
        # journald ties a line to its unit by the sender's cgroup, which it
        # may no longer read once a short-lived acl-wrap has exited: the
        # likely reason a loaded CI run waited 10 s for ``-u acl-wrap@*``
        text = live.run("journalctl", "--no-pager", "-o", "cat", "-t", "echo",
                        check=False).stdout
        return text if f"refused connect from {DENIED}" in text else ""

    log = wait_until(wrap_log, 20, why="acl-wrap's log lines")
    assert f"connect from {ALLOWED} ({ALLOWED})" in log
    # exit 1 (refused) is SuccessExitStatus=: no failed instance
    failed = live.systemctl("list-units", "--failed", "--plain", "--no-legend", "acl-wrap@*")
    assert failed.stdout.strip() == ""


# -- acl-policy.socket, as the guide's Postfix section installs it -----------
def postfix_skip():
    try:
        grp.getgrnam("postfix")
    except KeyError:
        pytest.skip("no group postfix (Postfix not installed): acl-policy.socket needs it")


def test_postfix_policy_socket_installed_as_the_guide_says(live):
    postfix_skip()
    # acl is running, as it is on a host that adds Postfix later; then step 1
    assert decide(live, "alpha", ALLOWED).verdict is Verdict.ALLOW
    live.put({"policy.toml": with_postfix(POLICY)})
    _, commands = guide_postfix()
    for line in commands:
        live.run("sh", "-c", f"cd {SRC} && {line}")
    st = os.stat(live.path("/var/spool/postfix/acl/policy.sock"))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam("postfix").gr_gid)
    assert ask_postfix(live, ALLOWED) == "action=DUNNO"
    assert ask_postfix(live, DENIED).startswith("action=REJECT ")
    assert re.search(r"acl serve: policy on fd:\d+ \(systemd\)", live.journal("acl.service"))


# -- acl-nfqueue.service -----------------------------------------------------
def nfqueue_skip():
    from acl import nfq

    if not nfq.AVAILABLE:
        pytest.skip("acl built without libnetfilter_queue: no NFQUEUE front door")
    if subprocess.run(["sh", "-c", "command -v iptables"], capture_output=True).returncode:
        pytest.skip("iptables not installed")


RULES = DEPLOY / "nfqueue" / "acl-nfqueue-rules"


def nfq_rules(live, action: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACL_NFQ_QUEUES=str(NFQ_QUEUE), ACL_NFQ_TCP=str(NFQ_PORT))
    return subprocess.run(live.net().cmd("sh", str(RULES), "iptables", action), env=env,
                          capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def nfqueue_traffic(live):
    """The guide's queue rules and a TCP server on NFQ_PORT inside; yields a
    function trying one connection from ALLOWED and one from DENIED."""
    server = None
    try:
        out = nfq_rules(live, "add")
        assert out.returncode == 0, out.stderr
        server = subprocess.Popen(
            live.net().cmd(sys.executable, "-m", "tests.nfq.netns_tools", "server",
                           "--tcp", str(NFQ_PORT), "--udp", str(NFQ_PORT), "--seconds", "60"),
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        attempts = json.dumps([["tcp", src, "127.0.0.1", NFQ_PORT] for src in (ALLOWED, DENIED)])

        def attempt() -> list[str]:
            out = live.net().run(sys.executable, "-m", "tests.nfq.netns_tools", "client",
                                 attempts, "--timeout", "3")
            return json.loads(out.stdout)

        yield attempt
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        nfq_rules(live, "delete")


def test_nfqueue_variant_refuses_a_syn_and_accepts_one(live):
    nfqueue_skip()
    live.put({"policy.toml": with_nfqueue(POLICY)})
    live.systemctl("start", "acl-nfqueue.service")
    for unit in ("acl.service", *SOCKETS):      # Conflicts=
        assert live.show(unit, "ActiveState")["ActiveState"] == "inactive", unit
    pid = main_pid(live, "acl-nfqueue.service")
    uid, _ = user_ids(live, "acl")
    st = status(live, pid)
    net_admin = f"{1 << 12:016x}"
    assert st["Uid"].split() == [str(uid)] * 4
    assert (st["CapEff"], st["CapBnd"], st["CapAmb"]) == (net_admin,) * 3, st
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")
    assert f"nfqueue on queues {NFQ_QUEUE}" in live.journal("acl-nfqueue.service")
    with nfqueue_traffic(live) as attempt:
        assert attempt() == ["ok", "timeout"]
    body = metrics(live)
    assert 'acl_nfqueue_verdicts_total{reason="ok",service="guarded",verdict="allow"}' in body
    assert 'reason="libwrap",service="guarded",verdict="deny"' in body
    # As acl (never root), with ProcSubset=pid, the sidecar cannot read the
    # kernel's queue counters: they are left out -- not shown as 0 -- and
    # that is logged (docs/nfqueue.md, "Metrics"; the guide's alert table).
    assert "acl_nfqueue_waiting{" not in body, body
    assert "acl_nfqueue_queue_drops_total{" not in body, body
    assert f'acl_nfqueue_user_drops_total{{queue="{NFQ_QUEUE}"}}' in body
    wait_until(lambda: "the kernel's queue counters are left out"
               in live.journal("acl-nfqueue.service"), 10, why="the log line")


def test_a_postfix_client_cannot_stop_the_nfqueue_door(live):
    """acl-policy.socket left running (it passes to acl.service) when the
    host moves to acl-nfqueue.service: the NFQUEUE sidecar's start stops
    it, so no SMTP client can start acl.service, whose start would stop
    the NFQUEUE sidecar and leave every SYN to the rules' bypass."""
    postfix_skip()
    nfqueue_skip()
    live.put({"policy.toml": with_nfqueue(POLICY)})
    live.systemctl("start", "acl-policy.socket")
    live.systemctl("start", "acl-nfqueue.service")
    pid = main_pid(live, "acl-nfqueue.service")
    with nfqueue_traffic(live) as attempt:
        assert attempt() == ["ok", "timeout"]
        try:
            answer = ask_postfix(live, ALLOWED)
        except OSError as exc:                  # no socket: smtpd's default_action
            answer = repr(exc)
        time.sleep(1)
        state = live.show("acl-nfqueue.service", "ActiveState", "MainPID")
        after = attempt()
    assert (state, after) == ({"ActiveState": "active", "MainPID": str(pid)},
                              ["ok", "timeout"]), answer
    assert live.show("acl.service", "ActiveState")["ActiveState"] == "inactive"


def test_postfix_with_the_nfqueue_variant(live):
    """acl-nfqueue-policy.socket passes the Postfix socket to acl-nfqueue.service."""
    postfix_skip()
    nfqueue_skip()
    live.put({"policy.toml": with_nfqueue(POLICY)})
    live.systemctl("start", "acl-nfqueue.service")
    live.put({"policy.toml": with_nfqueue(with_postfix(POLICY))})
    text = " ".join(GUIDE.read_text().split())
    m = re.search(r"`(systemctl enable acl-nfqueue-policy\.socket)` and `(systemctl restart "
                  r"acl-nfqueue\.service acl-nfqueue-policy\.socket)`", text)
    assert m, "the guide names the commands"
    for line in m.groups():
        live.run("sh", "-c", line)
    assert ask_postfix(live, ALLOWED) == "action=DUNNO"
    assert ask_postfix(live, DENIED).startswith("action=REJECT ")
    log = live.journal("acl-nfqueue.service")
    assert re.search(r"acl serve: policy on fd:\d+ \(systemd\)", log), log


def test_nfqueue_variant_reload_waits_and_fails_visibly(live):
    """``systemctl reload acl-nfqueue``: the very next SYN is judged by the
    new policy; a policy that does not load fails the reload, the unit
    stays up on the same process and its queue keeps the old verdicts."""
    nfqueue_skip()
    live.put({"policy.toml": with_nfqueue(POLICY)})
    live.systemctl("start", "acl-nfqueue.service")
    pid = main_pid(live, "acl-nfqueue.service")
    allow = live.path("/etc/acl/hosts.allow")
    rules = live.path("/etc/acl/tcp.rules")
    good = rules.read_text()
    with nfqueue_traffic(live) as attempt:
        assert attempt() == ["ok", "timeout"]
        allow.write_text(allow.read_text() + f"guarded: {DENIED}\n")
        live.systemctl("reload", "acl-nfqueue.service")
        assert attempt() == ["ok", "ok"]

        allow.write_text(BASELINE["hosts.allow"])
        rules.write_text(good + "127.0.0.7:allow,oops\n")
        out = live.systemctl("reload", "acl-nfqueue.service", check=False)
        assert out.returncode != 0 and "Job for acl-nfqueue.service failed" in out.stderr, out
        status_text = live.systemctl("status", "--lines=20", "acl-nfqueue.service",
                                     check=False).stdout
        assert re.search(r"acl reload: fatal: /etc/acl/tcp\.rules:3:\d+: [^\n]*; "
                         r"the running policy stays", status_text), status_text
        assert live.show("acl-nfqueue.service", "ActiveState", "SubState", "MainPID") == {
            "ActiveState": "active", "SubState": "running", "MainPID": str(pid)}
        assert attempt() == ["ok", "ok"]
    assert "reload (admin) failed, keeping the running policy: /etc/acl/tcp.rules:3:" \
        in live.journal("acl-nfqueue.service")


def test_nfqueue_variant_without_an_admin_socket_checks_then_signals(live):
    """A policy with no [sockets] admin: nothing can answer the reload, so
    ExecReload checks the policy itself -- one that does not load fails the
    reload and is never signalled -- and sends SIGHUP for one that does,
    with a warning that only the log tells the outcome."""
    nfqueue_skip()
    policy = with_nfqueue(POLICY).replace('admin = "/run/acl/admin.sock"\n', "")
    assert "admin" not in policy
    live.put({"policy.toml": policy})
    live.systemctl("start", "acl-nfqueue.service")
    pid = main_pid(live, "acl-nfqueue.service")
    assert not live.path("/run/acl/admin.sock").exists()
    assert decide(live, "alpha", DENIED).verdict is Verdict.DENY
    rules = live.path("/etc/acl/tcp.rules")
    good = rules.read_text()
    rules.write_text(good + "127.0.0.7:allow,oops\n")
    out = live.systemctl("reload", "acl-nfqueue.service", check=False)
    assert out.returncode != 0, out
    log = live.journal("acl-nfqueue.service")
    assert re.search(r"acl reload: fatal: /etc/acl/tcp\.rules:3:\d+: [^\n]*; nothing sent, "
                     r"the running policy stays", log), log
    assert "reload (SIGHUP)" not in log

    rules.write_text(good)
    allow = live.path("/etc/acl/hosts.allow")
    allow.write_text(allow.read_text() + f"alpha: {DENIED}\n")
    live.systemctl("reload", "acl-nfqueue.service")
    assert (f"acl reload: warning: /etc/acl/policy.toml names no admin socket: sent SIGHUP "
            f"to pid {pid}") in live.journal("acl-nfqueue.service")
    # signalled, not asked: the outcome comes when it comes
    wait_until(lambda: decide(live, "alpha", DENIED).verdict is Verdict.ALLOW, 20,
               why="the signalled reload")
    assert "reloaded (SIGHUP)" in live.journal("acl-nfqueue.service")
    assert live.show("acl-nfqueue.service", "MainPID") == {"MainPID": str(pid)}
