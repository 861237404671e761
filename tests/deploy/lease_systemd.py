"""A real systemd, PID 1 of namespaces of its own, running one test unit of
``acl serve`` (this checkout) -- for the lease store tests (the fd store
needs the real service manager: test_lease_store_live.py).

Rules of this file (read them before changing the boot):

* SAFETY: systemd booted over the host's root file system must not write
  to it.  Before systemd starts, inside the new mount namespace, tmpfs
  covers /run, /opt, /var/log, /var/tmp, /etc/systemd/system and
  /usr/local/bin, /etc is an overlay whose upper layer is on tmpfs, and
  /tmp is covered LAST (after everything needed from it is bind-mounted
  under /opt).  ``systemd-tmpfiles --boot --remove`` once emptied the host's
  /tmp from such a boot: sysinit.target, the tmpfiles units, udev, sysctl
  and the journal flush are masked (``MASKED``), and the test unit has
  ``DefaultDependencies=no``, so nothing pulls them in.  The boot target
  wants the test unit alone; no journald (the unit logs to a file on tmpfs).
* Namespaces: ``unshare --pid --fork --mount --mount-proc --net --uts
  --cgroup --propagation private``, run by a shell that first moved itself
  into a fresh cgroup2 group ``s24d-<token>``; cgroup2 is mounted inside,
  so systemd manages that group only.  ``container=s24d`` keeps it off the
  clock, hostname and kernel modules.  Its network namespace has only
  loopback; clients run in it with ``nsenter --net`` (``in_net``).
* The sidecar is this checkout run by the test run's Python, both bound
  read-only under /opt/s24d (a launcher ``exec``s it, so MainPID is the
  sidecar: NotifyAccess=main).  acl-wrap is a fresh build of ext/wrap.
  The test process reaches the sidecar's Unix sockets through
  ``/proc/<systemd>/root`` (``path``).
* Teardown: SIGKILL to systemd's PID, ours by construction (it ignores
  SIGTERM as PID 1); that ends the whole PID namespace and with it the
  mounts.  Then the empty cgroup group is removed.  Every wait is bounded.
* systemd's console is a pty of ours bound over /dev/console (else its
  log would go to the host's console), drained into ``console.log``.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = "/lib/systemd/systemd"
TARGET = "s24d.target"
UNIT = "acl-lease.service"
#: Units a boot must never run here (see SAFETY above).
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

LAUNCHER = """\
#!/bin/sh
# this checkout's acl, run by the test run's Python (lease_systemd.py)
export LD_LIBRARY_PATH=/opt/s24d/python/lib PYTHONPATH=/opt/s24d/src PYTHONDONTWRITEBYTECODE=1
exec /opt/s24d/python/{python} -m acl "$@"
"""

BOOT_TARGET = f"""\
[Unit]
Description=lease store test boot
DefaultDependencies=no
Wants={UNIT}
"""


def unit_text(extra: str = "", notify: bool = True) -> str:
    """The unit under test: Type=notify, the fd store, Restart=on-failure;
    without ``notify``, Type=simple and no store (systemd 252 turns
    NotifyAccess=none into main when FileDescriptorStoreMax= is set)."""
    kind = ("Type=notify\nNotifyAccess=main\nFileDescriptorStoreMax=16\n" if notify
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


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, a systemd of its own)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"systemd is not installed ({SYSTEMD})"
    for tool in ("unshare", "nsenter", "systemctl", "ip", "cc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy to give systemd a group of its own"
    return None


def python_prefix() -> tuple[Path, str]:
    prefix = Path(sys.base_prefix).resolve()
    exe = Path(sys.executable).resolve()
    if not exe.is_relative_to(prefix):        # a venv: its base interpreter
        exe = prefix / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return prefix, str(exe.relative_to(prefix))


def inner_script(stage: Path, console: str, users=()) -> str:
    prefix, _ = python_prefix()
    q = shlex.quote
    users = "\n".join(f"useradd --system --no-create-home --shell /usr/sbin/nologin {q(u)}"
                      for u in users)
    masks = "\n".join(f"ln -s /dev/null /etc/systemd/system/{m}" for m in MASKED)
    return f"""\
#!/bin/sh
# PID 1 of the new namespaces until it execs systemd (lease_systemd.py)
set -eu
ip link set lo up
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 s24d-run /run
mount -t tmpfs -o mode=0755 s24d-opt /opt
mkdir -p /opt/s24d/python /opt/s24d/src /opt/s24d/etc-upper /opt/s24d/etc-work
mount --bind {q(str(prefix))} /opt/s24d/python
mount -o remount,bind,ro /opt/s24d/python
mount --bind {q(str(ROOT))} /opt/s24d/src
mount -o remount,bind,ro /opt/s24d/src
mount -t overlay s24d-etc -o lowerdir=/etc,upperdir=/opt/s24d/etc-upper,workdir=/opt/s24d/etc-work /etc
mount -t tmpfs -o mode=0755 s24d-units /etc/systemd/system
mount -t tmpfs -o mode=0755 s24d-bin /usr/local/bin
mount -t tmpfs -o mode=0755 s24d-log /var/log
mount -t tmpfs -o mode=1777 s24d-vartmp /var/tmp
{masks}
{users}
install -d -m 0755 /etc/acl
cp {q(str(stage / "etc-acl"))}/* /etc/acl/
cp -r {q(str(stage / "units"))}/. /etc/systemd/system/
install -m 0755 {q(str(stage / "acl"))} /usr/local/bin/acl
install -m 0755 {q(str(stage / "acl-wrap"))} /usr/local/bin/acl-wrap
# last: the stage itself lives under /tmp
mount -t tmpfs -o mode=1777 s24d-tmp /tmp
mount --bind {q(console)} /dev/console
exec env container=s24d {SYSTEMD} --system --unit={TARGET} --log-target=console \\
    --show-status=no
"""


class Boot:
    """One boot (the rules above).  ``stage`` is a directory of the host."""

    def __init__(self, stage: Path, policy_files: dict[str, str], unit: str,
                 units: dict[str, str] | None = None, users=()) -> None:
        """``unit``: UNIT's text; ``units``: more files for
        /etc/systemd/system (``name`` or ``name.d/drop-in.conf``);
        ``users``: system users made inside (/etc is an overlay)."""
        self.users = tuple(users)
        from tests.wrap.harness import build_wrap

        self.stage = stage
        self.token = f"s24d-{os.getpid()}-{secrets.token_hex(3)}"
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.cgroup: Path | None = None
        self.console = stage / "console.log"
        self._pty: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        (stage / "etc-acl").mkdir(parents=True, exist_ok=True)
        for name, text in policy_files.items():
            (stage / "etc-acl" / name).write_text(text)
        for name, text in {UNIT: unit, TARGET: BOOT_TARGET, **(units or {})}.items():
            (stage / "units" / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / "units" / name).write_text(text)
        (stage / "acl").write_text(LAUNCHER.format(python=python_prefix()[1]))
        build_wrap(stage)

    def boot(self, deadline_s: float = 30) -> None:
        master, slave = os.openpty()
        self._pty = (master, slave)
        self._reader = threading.Thread(target=self._drain, args=(master,), daemon=True)
        self._reader.start()
        (self.stage / "inner.sh").write_text(inner_script(self.stage, os.ttyname(slave), self.users))
        self.cgroup = cgroup2_root() / self.token
        self.cgroup.mkdir()
        outer = (f"echo $$ > {shlex.quote(str(self.cgroup / 'cgroup.procs'))} && exec unshare "
                 "--pid --fork --mount --mount-proc --net --uts --cgroup --propagation private "
                 f"sh {shlex.quote(str(self.stage / 'inner.sh'))}")
        self.proc = subprocess.Popen(["sh", "-c", outer], stdin=subprocess.DEVNULL,
                                     stdout=slave, stderr=slave)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and self.pid is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"namespace setup exited {self.proc.returncode}"
                                   f"{self.tail()}")
            self.pid = self._systemd_pid()
            time.sleep(0.05)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd exited {self.proc.returncode}{self.tail()}")
            if self.pid is not None:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"systemd not up within {deadline_s} s{self.tail()}")

    def _systemd_pid(self) -> int | None:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
            if len(pids) == 1 and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                return int(pids[0])
        except OSError:
            pass
        return None

    def _drain(self, master: int) -> None:
        with open(self.console, "ab") as log:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                log.write(data)
                log.flush()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.console.read_text(errors="replace")
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
                self.proc.kill()              # still our setup shell or unshare
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.cgroup is not None:
            end = time.monotonic() + 10
            while self.cgroup.exists() and time.monotonic() < end:
                for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True) + [self.cgroup]:
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                if self.cgroup.exists():
                    time.sleep(0.1)
        if self._pty is not None:
            for fd in self._pty[::-1]:
                os.close(fd)
            self._reader.join(timeout=5)
            self._pty = None

    # -- inside ----------------------------------------------------------
    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "--", *argv]

    def in_net(self, *argv: str) -> list[str]:
        """argv run in the boot's network namespace, the host's files."""
        return ["nsenter", "-t", str(self.pid), "-n", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30):
        out = subprocess.run(self.cmd(*argv), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {out.returncode}\n"
                                 f"{out.stdout}{out.stderr}")
        return out

    def systemctl(self, *args: str, check: bool = True):
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=60)

    def show(self, *props: str) -> dict[str, str]:
        return self.show_unit(UNIT, *props)

    def show_unit(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def acl_log(self) -> str:
        try:
            return self.path("/var/log/acl.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, what, deadline_s: float = 20, step: float = 0.05, why: str = ""):
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
        raise AssertionError(f"gave up after {deadline_s} s {why}: {last!r}")
