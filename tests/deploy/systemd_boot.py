"""A real systemd, PID 1 of namespaces of its own, for the live tests of the
units (test_systemd_live.py) and of the lease store (test_lease_store_live.py).

Rules of this file (read them before changing the boot):

* SAFETY: the host is never written.  systemd boots over the host's root
  file system, and ``systemd-tmpfiles --boot --remove`` once emptied the
  host's /tmp from such a boot.  So, inside the new mount namespace and
  before systemd starts:
  - every mount the namespace starts with is made read-only (a remount of
    this namespace's copy; the host's own stays as it is), and so are
    /proc/sys (but /proc/sys/net, the boot's own network namespace) and
    /proc/sysrq-trigger.  What this file forgot to cover fails with EROFS
    instead of writing the host;
  - what the boot writes is a tmpfs of its own (all named ``acl-live-*``):
    /run, /opt, /usr/local/bin, /var/log, /var/tmp, /var/spool,
    /etc/systemd/system and /tmp, which is covered LAST, after everything
    needed from it was read; /etc is an overlay whose upper layer is in the
    /opt tmpfs; /dev is a tmpfs with the usual device nodes, its own devpts
    and /dev/shm (so /dev/log and tmpfiles' nodes stay inside);
  - module loading, raw I/O and the clock are out of systemd's capability
    bounding set, so the units that need them skip themselves, as in a
    container.  binfmt_misc (global to the kernel: systemd-binfmt flushes
    its rules) is not mounted, as /proc/sys is read-only.
* Namespaces: ``unshare --pid --fork --kill-child --mount --mount-proc --net
  --uts --ipc --cgroup --propagation private``, run by a shell that first
  moved itself into a fresh cgroup2 group ``acl-live-<pid>-<random>``
  below its own; cgroup2 is mounted inside, so systemd manages that group
  only.
  ``container=acl-live`` keeps it off the host name and the console's
  settings.  Its network has only loopback; ``net()`` enters it.
* Two kinds of boot.  ``early_boot=True``: sysinit.target, tmpfiles,
  sysctl.d, journald... run as on a real host (over the mounts above), so
  the shipped units run with their default dependencies.
  ``early_boot=False``: they are masked (``MASKED``); the units under test
  set ``DefaultDependencies=no`` and log to a file (no journald).
* The code under test: /usr/local/bin/acl is a launcher of THIS checkout
  run by the test run's Python, both bound read-only under /opt/acl-live
  (their real homes, /tmp and /root, are what PrivateTmp= and ProtectHome=
  hide); it ``exec``s, so MainPID is the sidecar (NotifyAccess=main).
  /usr/local/bin/acl-wrap is a fresh build of ext/wrap.  The manager's
  DefaultLimitNOFILE= is Debian's shape (soft 1024, hard the host's): in a
  container systemd keeps the limits it inherited, which would hide
  whether ``acl serve`` raises its own soft limit.
* systemd's console is a pty of ours bound over /dev/console, drained into
  ``console.log`` (else its log would go to the host's console).
* Teardown: SIGKILL to systemd's PID, ours by construction (as PID 1 it
  ignores SIGTERM); that ends the whole PID namespace and with it the
  mounts.  Before systemd is found (a boot that gives up early), it kills
  ``unshare``, and ``--kill-child`` has the kernel kill the namespaces' first
  process with it (else that one would live on, and could still exec
  systemd).  Then the emptied cgroup group is removed.  It runs even when a
  test failed.  Every wait here is bounded.
* The test process reaches files and Unix sockets inside through
  ``/proc/<systemd>/root`` (``path``); commands run inside with ``nsenter``.
* ``paused()`` stops systemd (SIGSTOP: a PID 1 takes it from an ancestor
  namespace) and always continues it, so a test can have the units do
  things systemd only reads afterwards (a notification sent just before a
  crash).  Meanwhile nothing may ask systemd (``systemctl`` would wait):
  files, sockets and ``run`` (nsenter) still work.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.wrap.harness import build_wrap

from .conftest import ROOT
from .netns import Netns

SYSTEMD = "/lib/systemd/systemd"
BOOT_TARGET = "acl-live.target"
#: Where the checkout and the test run's Python appear inside.
SRC = "/opt/acl-live/src"
PYTHON_HOME = "/opt/acl-live/python"
#: The test run's Python inside, with this checkout on its path.
PYTHON = "/opt/acl-live/bin/python"
#: What ``early_boot=False`` masks: the early boot, and what would pull it in.
MASKED = ("sysinit.target", "systemd-tmpfiles-setup.service",
          "systemd-tmpfiles-setup-dev.service", "systemd-tmpfiles-clean.service",
          "systemd-tmpfiles-clean.timer", "systemd-udevd.service",
          "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
          "systemd-udev-trigger.service", "systemd-udev-settle.service",
          "systemd-sysctl.service", "systemd-journal-flush.service",
          "systemd-journald.service", "systemd-journald.socket",
          "systemd-journald-dev-log.socket", "systemd-binfmt.service",
          "proc-sys-fs-binfmt_misc.automount", "systemd-remount-fs.service",
          "systemd-random-seed.service", "systemd-update-utmp.service")
JOURNAL = "systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service"
#: Device nodes of the boot's /dev: name, major, minor.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))

LAUNCHERS = {
    "python": f"""\
#!/bin/sh
# the test run's Python with this checkout on its path (systemd_boot.py)
export LD_LIBRARY_PATH={PYTHON_HOME}/lib PYTHONPATH={SRC} PYTHONDONTWRITEBYTECODE=1
exec {PYTHON_HOME}/{{python}} "$@"
""",
    "acl": f"""\
#!/bin/sh
# /usr/local/bin/acl of the live tests: this checkout (systemd_boot.py)
exec {PYTHON} -m acl "$@"
""",
}


class CannotBoot(RuntimeError):
    """systemd did not come up here: the reason, and the end of its log."""


def missing_tools() -> str | None:
    """Why no systemd can boot here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, a systemd of its own)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"systemd is not installed ({SYSTEMD})"
    for tool in ("unshare", "nsenter", "setpriv", "systemctl", "ip", "useradd", "cc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if own_cgroup2() is None:
        return "no cgroup2 hierarchy to give systemd a group of its own"
    return None


def required() -> bool:
    """tests/run (the CI) sets ACL_REQUIRE_LIVE_SYSTEMD=1: a systemd that
    cannot boot there is a failure, not a skip."""
    return os.environ.get("ACL_REQUIRE_LIVE_SYSTEMD", "") not in ("", "0")


def own_cgroup2() -> Path | None:
    """This process's group in the host's cgroup2 hierarchy (hybrid or unified)."""
    mount = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            mount = Path(fields[1])
    if mount is None:
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    return None


def python_prefix() -> tuple[Path, str]:
    """The test run's Python installation, and its interpreter relative to it."""
    prefix = Path(sys.base_prefix).resolve()
    exe = Path(sys.executable).resolve()
    if not exe.is_relative_to(prefix):        # a venv: its base interpreter
        exe = prefix / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return prefix, str(exe.relative_to(prefix))


def mount_table(mountinfo: str) -> list[tuple[str, str, list[str], str]]:
    """A /proc/PID/mountinfo as (device, mount point, per-mount flags, fs type)."""
    table = []
    for line in mountinfo.splitlines():
        fields = line.split()
        point = codecs.decode(fields[4], "unicode_escape")     # "\040" is a space
        table.append((fields[2], point, fields[5].split(","), fields[fields.index("-") + 1]))
    return table


def read_only_host() -> str:
    """Shell lines that make every mount this process sees read-only in the
    new mount namespace (its /proc is a fresh one, left writable)."""
    lines = []
    for _, point, flags, _ in mount_table(Path("/proc/self/mountinfo").read_text()):
        if point == "/proc" or point.startswith("/proc/"):
            continue
        keep = [f for f in flags if f in ("nosuid", "nodev", "noexec")]
        line = f"mount -o {','.join(['remount', 'bind', 'ro', *keep])} {shlex.quote(point)}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def inner_script(stage: Path, console: str, early_boot: bool) -> str:
    """The shell that prepares the namespaces (the rules above), then becomes systemd."""
    prefix, _ = python_prefix()
    q = shlex.quote
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    masks = "" if early_boot else "\n".join(
        f"ln -s /dev/null /etc/systemd/system/{unit}" for unit in MASKED)
    nodes = "\n".join(f"mknod -m 0666 /dev/{name} c {major} {minor}"
                      for name, major, minor in DEVICES)
    return f"""\
#!/bin/sh
# PID 1 of the new namespaces until it execs systemd (systemd_boot.py)
set -eu
ip link set lo up
# SAFETY: what the namespace starts with, read-only; the kernel's tunables too
{read_only_host()}
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,rw /proc/sys/net
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi
# the boot's own: its cgroup, and tmpfs where it writes
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 acl-live-run /run
mount -t tmpfs -o mode=0755 acl-live-opt /opt
mkdir -p {PYTHON_HOME} {SRC} /opt/acl-live/bin /opt/acl-live/etc-upper /opt/acl-live/etc-work
mount --bind {q(str(prefix))} {PYTHON_HOME}
mount -o remount,bind,ro {PYTHON_HOME}
mount --bind {q(str(ROOT))} {SRC}
mount -o remount,bind,ro {SRC}
install -m 0755 {q(str(stage / "python"))} {PYTHON}
mount -t overlay acl-live-etc \\
    -o lowerdir=/etc,upperdir=/opt/acl-live/etc-upper,workdir=/opt/acl-live/etc-work /etc
mount -t tmpfs -o mode=0755 acl-live-units /etc/systemd/system
cp {q(str(stage / BOOT_TARGET))} /etc/systemd/system/
{masks}
mkdir -p /etc/systemd/system.conf.d
printf '[Manager]\\nDefaultLimitNOFILE=1024:{hard}\\n' > /etc/systemd/system.conf.d/acl-live.conf
mount -t tmpfs -o mode=0755 acl-live-bin /usr/local/bin
install -m 0755 {q(str(stage / "acl"))} {q(str(stage / "acl-wrap"))} /usr/local/bin/
mount -t tmpfs -o mode=0755 acl-live-log /var/log
mount -t tmpfs -o mode=1777 acl-live-vartmp /var/tmp
mount -t tmpfs -o mode=0755 acl-live-spool /var/spool
mkdir -m 0755 /var/spool/postfix
# /dev: the console is kept aside first (the host's devpts is hidden below ours)
touch /opt/acl-live/console
mount --bind {q(console)} /opt/acl-live/console
mount -t tmpfs -o mode=0755 acl-live-dev /dev
{nodes}
mkdir -m 0755 /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 acl-live-pts /dev/pts
mount -t tmpfs -o mode=1777 acl-live-shm /dev/shm
ln -s pts/ptmx /dev/ptmx
ln -s /proc/self/fd /dev/fd
ln -s fd/0 /dev/stdin
ln -s fd/1 /dev/stdout
ln -s fd/2 /dev/stderr
touch /dev/console
mount --move /opt/acl-live/console /dev/console
# last: the stage itself lives under /tmp
mount -t tmpfs -o mode=1777 acl-live-tmp /tmp
exec setpriv --bounding-set -sys_module,-sys_rawio,-sys_time \\
    env container=acl-live {SYSTEMD} --system --unit={BOOT_TARGET} \\
    --log-target=console --show-status=no
"""


class Inside(Netns):
    """The booted systemd's network namespace, for ``Netns.run``/``fetch_many``."""

    def __init__(self, pid: int):     # no holder process: systemd holds it
        self.path = f"/proc/{pid}/ns/net"

    def close(self):
        pass


class SystemdBoot:
    """One boot of systemd (the rules above); ``stage`` is a directory of the host."""

    def __init__(self, stage: Path, early_boot: bool = True):
        self.stage = stage
        self.early_boot = early_boot
        self.token = f"acl-live-{os.getpid()}-{secrets.token_hex(3)}"
        self.pid: int | None = None           # systemd, as the host sees it
        self.proc: subprocess.Popen | None = None
        self.cgroup: Path | None = None
        self.log_path = stage / "console.log"
        self._console: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        stage.mkdir(parents=True, exist_ok=True)
        wants = f"Wants={JOURNAL}\n" if early_boot else ""
        (stage / BOOT_TARGET).write_text(
            "[Unit]\nDescription=boot of acl's live tests\nDefaultDependencies=no\n" + wants)
        for name, text in LAUNCHERS.items():
            (stage / name).write_text(text.format(python=python_prefix()[1]))
        build_wrap(stage)

    # -- life cycle ----------------------------------------------------
    def boot(self, deadline_s: float = 30) -> None:
        master, slave = os.openpty()
        self._console = (master, slave)
        self._reader = threading.Thread(target=self._drain, args=(master,), daemon=True)
        self._reader.start()
        script = inner_script(self.stage, os.ttyname(slave), self.early_boot)
        (self.stage / "inner.sh").write_text(script)
        self.cgroup = own_cgroup2() / self.token
        self.cgroup.mkdir()
        outer = (f"echo $$ > {shlex.quote(str(self.cgroup / 'cgroup.procs'))} && exec unshare "
                 "--pid --fork --kill-child --mount --mount-proc --net --uts --ipc --cgroup "
                 f"--propagation private sh {shlex.quote(str(self.stage / 'inner.sh'))}")
        self.proc = subprocess.Popen(["sh", "-c", outer], stdin=subprocess.DEVNULL,
                                     stdout=slave, stderr=slave)
        end = time.monotonic() + deadline_s
        state = ""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CannotBoot(f"the namespaces' shell or systemd exited with "
                                 f"{self.proc.returncode}{self.log_tail()}")
            if self.pid is None:
                self.pid = self._systemd_pid()
            else:
                out = self.run("systemctl", "is-system-running", check=False, timeout=10)
                state = out.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise CannotBoot(f"not up within {deadline_s} s (state {state!r}){self.log_tail()}")

    def _systemd_pid(self) -> int | None:
        """The child of ``unshare --fork`` once it has become systemd."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
            if len(pids) == 1 and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                return int(pids[0])
        except OSError:
            pass
        return None

    def _drain(self, master: int) -> None:
        """systemd's console into console.log, until the pty is closed."""
        with open(self.log_path, "ab") as log:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                log.write(data)
                log.flush()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n" + "\n".join(text.splitlines()[-lines:])

    def teardown(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            if self.pid is None and self.proc.poll() is None:
                self.proc.kill()              # unshare; --kill-child ends what it forked
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.cgroup is not None:
            remove_cgroup_tree(self.cgroup)
        if self._console is not None:
            master, slave = self._console
            os.close(slave)
            os.close(master)                  # ends _drain's read
            self._reader.join(timeout=5)
            self._console = None

    # -- inside --------------------------------------------------------
    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        out = subprocess.run(self.cmd(*argv), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {out.returncode}\n"
                                 f"{out.stdout}{out.stderr}{self.log_tail(10)}")
        return out

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=60)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def path(self, inside: str) -> Path:
        """A path of the namespace's file system, as the test process reaches it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def put(self, files: dict[str, str], where: str = "/etc/acl") -> None:
        """Write files (``name`` or ``dir/name``) below ``where`` inside."""
        for name, text in files.items():
            dest = self.path(f"{where}/{name}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)

    def proc_file(self, inner_pid: int | str, name: str) -> str:
        """/proc/PID/NAME of a process of the namespace (PID as systemd sees it)."""
        return self.path(f"/proc/{inner_pid}/{name}").read_text()

    def net(self) -> Inside:
        return Inside(self.pid)

    @contextlib.contextmanager
    def paused(self):
        """systemd stopped for the block (the rules above)."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def booted(stage: Path, early_boot: bool = True):
    """A booted SystemdBoot, torn down at the end; a skip where none can boot
    (a failure where ``required()``)."""
    why = missing_tools()
    if why:
        cannot(f"no live systemd: {why}")
    boot = SystemdBoot(stage, early_boot)
    try:
        try:
            boot.boot()
        except CannotBoot as exc:
            cannot(f"systemd cannot boot here: {exc}")
        yield boot
    finally:
        boot.teardown()


def cannot(why: str) -> None:
    """No boot: a failure where ``required()``, else a skip."""
    if required():
        pytest.fail(why)
    pytest.skip(why)


def wait_until(what, deadline_s: float = 20, step: float = 0.1, why: str = ""):
    """Poll ``what()`` until it returns a true value, for at most deadline_s."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = what()
            if last:
                return last
        except (OSError, ValueError, AssertionError) as exc:
            last = exc
        time.sleep(step)
    raise AssertionError(f"gave up after {deadline_s} s waiting for {why}: {last!r}")


def remove_cgroup_tree(top: Path, deadline_s: float = 10) -> None:
    """rmdir ``top`` and its groups, deepest first; a group is removable a
    moment after its last process died, so each pass is retried a while."""
    end = time.monotonic() + deadline_s
    while top.exists() and time.monotonic() < end:
        groups = sorted((p for p in top.rglob("*") if p.is_dir()),
                        key=lambda p: len(p.parts), reverse=True)
        for g in [*groups, top]:
            try:
                g.rmdir()
            except OSError:
                pass
        if top.exists():
            time.sleep(0.1)
