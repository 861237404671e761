"""A real systemd as PID 1 of namespaces of its own, running the shipped units.

Rules of this file:

* One boot = ``unshare --pid --fork --mount --mount-proc --net --uts --cgroup
  --propagation private``, started by a shell that first moved itself into
  a fresh cgroup2 group ``acl-live-<pid>-<random>`` below its own.  Inside,
  cgroup2 is mounted at /sys/fs/cgroup, so systemd sees a unified hierarchy
  rooted at that group and never touches the host's cgroups (here a v1
  hybrid).  ``container=acl-live`` tells it it is a container, so it leaves the
  clock, host name, sysctls and kernel modules alone; the UTS and network
  namespaces are its own anyway.
* Nothing it writes reaches the host: /run, /tmp, /var/tmp, /var/log,
  /var/spool, /usr/local/bin and /opt are tmpfs inside,
  /etc/systemd/system too, and /etc is an overlay whose upper layer lives
  in the /opt tmpfs.  PrivateTmp= directories, the journal, useradd's
  edits and /etc/acl vanish with the mount namespace, even after SIGKILL.
* The units are the shipped files, copied byte for byte; the admin's
  steps run for real inside, as the operator guide's section 2 writes them
  (``install_as_the_guide_says``: useradd, install -d, cp, daemon-reload,
  enable --now).  Nothing of the units is overridden.
* What is not the shipped layout, and why:
  - /usr/local/bin/acl is a launcher script: THIS checkout, run by the test
    run's Python, both bind-mounted read-only under /opt/acl-live.  Their real
    homes (/tmp, /root) are what PrivateTmp= and ProtectHome= hide from the
    service (a Python under /root, mode 0700, is unusable to user acl
    anyway).  It ``exec``s, so MainPID is the sidecar (NotifyAccess=main).
    /usr/local/bin/acl-wrap is a fresh build of ext/wrap.
  - The manager's DefaultLimitNOFILE= is Debian's shape (soft 1024, hard
    the host's): in a container systemd keeps the limits it inherited
    (soft = hard here), which would hide whether ``acl serve`` can still
    raise its own soft limit under the unit's system call filter.
* Teardown: SIGKILL to systemd's PID (as PID 1 it ignores SIGTERM), which
  ends every process of the PID namespace, hence the mount and network
  namespaces; then the emptied cgroup subtree is removed.  It runs even
  when a test failed.  Every wait here is bounded.
* Commands run inside with ``nsenter``; the test process reaches the Unix
  sockets through ``/proc/<systemd>/root`` and TCP through ``nsenter
  --net`` (``Inside``, a tests/deploy/netns.py ``Netns`` without holder).
"""

from __future__ import annotations

import os
import re
import resource
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

from tests.wrap.harness import build_wrap

from .conftest import DEPLOY, ROOT
from .netns import Netns

SYSTEMD = "/lib/systemd/systemd"
GUIDE = ROOT / "docs" / "operator-guide.md"
UNIT_DIR = DEPLOY / "systemd"
#: Where the checkout appears inside (the guide's ``cp deploy/...`` runs there).
SRC = "/opt/acl-live/src"
BOOT_TARGET = "acl-live.target"

#: What systemd starts at boot: the journal (acl's log, acl-wrap's syslog).
TARGET = """\
[Unit]
Description=live systemd test of acl's units
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
"""

LAUNCHER = """\
#!/bin/sh
# /usr/local/bin/acl of the live systemd test: this checkout, run by the
# test run's Python, both mounted where acl.service's sandbox can see them.
export LD_LIBRARY_PATH=/opt/acl-live/python/lib PYTHONPATH={src} PYTHONDONTWRITEBYTECODE=1
exec /opt/acl-live/python/{python} -m acl "$@"
"""


class CannotBoot(RuntimeError):
    """systemd did not come up here: the reason, and the end of its log."""


def missing_tools() -> str | None:
    """Why no live systemd can run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, a systemd of its own)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"systemd is not installed ({SYSTEMD})"
    for tool in ("unshare", "nsenter", "systemctl", "ip", "useradd", "cc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if own_cgroup2() is None:
        return "no cgroup2 hierarchy to give systemd a group of its own"
    return None


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


def guide_commands() -> list[str]:
    """The first ``sh`` block of the operator guide's "2. Under systemd"."""
    text = GUIDE.read_text()
    section = text[text.index("## 2. Under systemd"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def inner_script(stage: Path, console: str) -> str:
    """The shell that prepares the namespaces, then becomes systemd."""
    prefix, _ = python_prefix()
    q = shlex.quote
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return textwrap.dedent(f"""\
        #!/bin/sh
        # PID 1 of the new namespaces until it execs systemd (live_systemd.py)
        set -eu
        ip link set lo up
        mount -t cgroup2 cgroup2 /sys/fs/cgroup
        mount -t tmpfs -o mode=0755 acl-live-run /run
        mount -t tmpfs -o mode=0755 acl-live-opt /opt
        mkdir -p /opt/acl-live/python {SRC} /opt/acl-live/etc-upper /opt/acl-live/etc-work
        mount --bind {q(str(prefix))} /opt/acl-live/python
        mount -o remount,bind,ro /opt/acl-live/python
        mount --bind {q(str(ROOT))} {SRC}
        mount -o remount,bind,ro {SRC}
        mount -t overlay acl-live-etc \\
            -o lowerdir=/etc,upperdir=/opt/acl-live/etc-upper,workdir=/opt/acl-live/etc-work /etc
        mount -t tmpfs -o mode=0755 acl-live-units /etc/systemd/system
        mkdir -p /etc/systemd/system.conf.d
        printf '[Manager]\\nDefaultLimitNOFILE=1024:{hard}\\n' > /etc/systemd/system.conf.d/acl-live.conf
        cp {q(str(stage / BOOT_TARGET))} /etc/systemd/system/
        mount -t tmpfs -o mode=0755 acl-live-bin /usr/local/bin
        install -m 0755 {q(str(stage / "acl"))} /usr/local/bin/acl
        install -m 0755 {q(str(stage / "acl-wrap"))} /usr/local/bin/acl-wrap
        mount -t tmpfs -o mode=0755 acl-live-log /var/log
        mount -t tmpfs -o mode=1777 acl-live-vartmp /var/tmp
        mount -t tmpfs -o mode=0755 acl-live-spool /var/spool
        mkdir -m 0755 /var/spool/postfix
        # last: the stage itself lives under /tmp
        mount -t tmpfs -o mode=1777 acl-live-tmp /tmp
        mount --bind {q(console)} /dev/console
        exec env container=acl-live {SYSTEMD} --system --unit={BOOT_TARGET} \\
            --log-target=console --show-status=no
        """)


class Inside(Netns):
    """The booted systemd's network namespace, for ``Netns.run``/``fetch_many``."""

    def __init__(self, pid: int):     # no holder process: systemd holds it
        self.path = f"/proc/{pid}/ns/net"

    def close(self):
        pass


class LiveSystemd:
    """One boot of systemd over the shipped units (see the rules above)."""

    def __init__(self, stage: Path):
        self.stage = stage
        self.token = f"acl-live-{os.getpid()}-{secrets.token_hex(3)}"
        self.pid: int | None = None           # systemd, as the host sees it
        self.proc: subprocess.Popen | None = None
        self.cgroup: Path | None = None
        self._console: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        self.log_path = stage / "console.log"
        (stage / BOOT_TARGET).write_text(TARGET)
        _, python = python_prefix()
        (stage / "acl").write_text(LAUNCHER.format(src=SRC, python=python))
        build_wrap(stage)

    # -- life cycle ----------------------------------------------------
    def boot(self, deadline_s: float = 30) -> None:
        master, slave = os.openpty()
        self._console = (master, slave)
        self._reader = threading.Thread(target=self._drain, args=(master,), daemon=True)
        self._reader.start()
        (self.stage / "inner.sh").write_text(inner_script(self.stage, os.ttyname(slave)))
        self.cgroup = own_cgroup2() / self.token
        self.cgroup.mkdir()
        outer = (f"echo $$ > {shlex.quote(str(self.cgroup / 'cgroup.procs'))} && exec unshare "
                 "--pid --fork --mount --mount-proc --net --uts --cgroup --propagation private "
                 f"sh {shlex.quote(str(self.stage / 'inner.sh'))}")
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
                self.proc.kill()              # still the shell, before systemd
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

    # -- the admin's steps ---------------------------------------------
    def install_as_the_guide_says(self) -> list[str]:
        """Run the guide's section-2 commands inside (``cp deploy/...`` from
        the checkout), then copy the other shipped units beside them."""
        commands = guide_commands()
        for line in commands:
            self.run("sh", "-c", f"cd {SRC} && {line}")
        for unit in sorted(UNIT_DIR.iterdir()):
            dest = self.path(f"/etc/systemd/system/{unit.name}")
            if not dest.exists():
                shutil.copyfile(unit, dest)
        self.systemctl("daemon-reload")
        return commands

    def put(self, files: dict[str, str], where: str = "/etc/acl") -> None:
        for name, text in files.items():
            self.path(f"{where}/{name}").write_text(text)

    # -- inside --------------------------------------------------------
    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "--", *argv]

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

    def proc_file(self, inner_pid: int | str, name: str) -> str:
        """/proc/PID/NAME of a process of the namespace (PID as systemd sees it)."""
        return self.path(f"/proc/{inner_pid}/{name}").read_text()

    def net(self) -> Inside:
        return Inside(self.pid)


def wait_until(what, deadline_s: float = 20, step: float = 0.1, why: str = ""):
    """Poll ``what()`` until it returns a true value, for at most deadline_s."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = what()
            if last:
                return last
        except (OSError, ValueError) as exc:
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


def required() -> bool:
    """tests/run (the CI) sets ACL_REQUIRE_LIVE_SYSTEMD=1: a systemd that
    cannot boot there is a failure, not a skip."""
    return os.environ.get("ACL_REQUIRE_LIVE_SYSTEMD", "") not in ("", "0")
