"""Drive the real ``tcpdmatch -d`` safely, many queries per file pair.

* Each batch runs in its own mount namespace (``unshare -m``) with a private
  ``/etc/hosts`` and ``nsswitch.conf`` (``hosts: files``) bind-mounted over
  the real ones, so no name lookup leaves the machine and the real files are
  never touched.
* One shell per batch loops over the queries (one tcpdmatch process each:
  that is how tcpdmatch works), printing a marker before each.
* A preloaded shim (``syslog_shim.c``, built at run time into a temp dir)
  makes libwrap's ``matched:`` lines visible on Debian 12.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "@@@acl-query@@@"
NSSWITCH = "hosts: files\nnetgroup: files\n"

_SCRIPT = r"""
set -u
mount --bind "$1/_hosts" /etc/hosts || exit 97
mount --bind "$1/_nss" /etc/nsswitch.conf || exit 98
cd "$1" || exit 96
while IFS=' ' read -r d c; do
  echo "@@@acl-query@@@"
  LD_PRELOAD="$2" tcpdmatch -d "$d" "$c" 2>&1
done < "$1/_queries"
exit 0
"""


def unavailable() -> str | None:
    """Why the real tcpdmatch cannot be driven here, or None."""
    for tool in ("tcpdmatch", "unshare", "gcc", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if os.geteuid() != 0:
        return "needs root for unshare -m and bind mounts"
    return None


def build_shim(tmpdir: Path) -> str:
    out = tmpdir / "syslog_shim.so"
    if not out.exists():
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(out),
                        str(HERE / "syslog_shim.c")], check=True, timeout=60)
    return str(out)


@dataclass(frozen=True)
class RealAnswer:
    verdicts: tuple[str, ...]          # one per client address
    matched: tuple[tuple[str, int], ...]  # (file basename, line) per matched line
    text: str


_ACCESS = re.compile(r"^access:\s+(\S+)", re.M)
_MATCHED = re.compile(r"matched:\s+(\S+) line (\d+)")


def _write_files(workdir: Path, allow: bytes | None, deny: bytes | None, hosts: str) -> None:
    """The rule files (None: absent) and the private hosts/nsswitch files."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in (("hosts.allow", allow), ("hosts.deny", deny)):
        p = workdir / name
        if data is None:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(data)
    (workdir / "_hosts").write_text(hosts)
    (workdir / "_nss").write_text(NSSWITCH)


def match_argv(workdir: Path, shim: str) -> list[str]:
    """The command that asks the real tcpdmatch each ``DAEMON CLIENT`` line of
    ``workdir/_queries`` (answers after MARK lines), in a private mount
    namespace with ``workdir/_hosts`` and ``workdir/_nss`` over /etc."""
    return ["unshare", "-m", "sh", "-c", _SCRIPT, "sh", str(workdir), shim]


def run_batch(workdir: Path, shim: str, allow: bytes | None, deny: bytes | None,
              hosts: str, queries: list[tuple[str, str]], timeout: float = 120) -> list[RealAnswer]:
    """Write the files into ``workdir`` and ask tcpdmatch every query."""
    _write_files(workdir, allow, deny, hosts)
    (workdir / "_queries").write_text("".join(f"{d} {c}\n" for d, c in queries))
    proc = subprocess.run(match_argv(workdir, shim), capture_output=True, timeout=timeout)
    if proc.returncode not in (0,):
        raise RuntimeError(f"tcpdmatch batch failed ({proc.returncode}): {proc.stderr!r}")
    blocks = proc.stdout.decode("latin-1").split(MARK + "\n")[1:]
    if len(blocks) != len(queries):
        raise RuntimeError(f"expected {len(queries)} answers, got {len(blocks)}")
    return [RealAnswer(tuple(_ACCESS.findall(b)),
                       tuple((f, int(n)) for f, n in _MATCHED.findall(b)), b)
            for b in blocks]


_CHK_SCRIPT = r"""
set -u
mount --bind "$1/_hosts" /etc/hosts || exit 97
mount --bind "$1/_nss" /etc/nsswitch.conf || exit 98
cd "$1" || exit 96
LD_PRELOAD="$2" tcpdchk -d 2>&1
exit 0
"""


def run_tcpdchk(workdir: Path, shim: str, allow: bytes | None, deny: bytes | None,
                hosts: str, timeout: float = 60) -> list[tuple[str, int, str]]:
    """tcpdchk -d's warnings and errors: (file, line, message)."""
    _write_files(workdir, allow, deny, hosts)
    proc = subprocess.run(["unshare", "-m", "sh", "-c", _CHK_SCRIPT, "sh", str(workdir), shim],
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"tcpdchk failed ({proc.returncode}): {proc.stderr!r}")
    out = []
    for m in re.finditer(r"^(?:warning|error): (\S+), line (\d+): (.*)$",
                         proc.stdout.decode("latin-1"), re.M):
        out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out
