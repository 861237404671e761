"""Fixtures of the deploy area: loopback ports 27000-27999 only.

Each test module takes its own slice of the range (listed here so two
modules never share a port when pytest-xdist or a developer runs them at
once), and every helper that starts a daemon stops it by its Popen PID.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "operator-guide.md"

#: Port slices (half-open) inside the area's 27000-28000.
SLICES = {
    "audit_proc": (27000, 27100),
    "audit_policy": (27100, 27200),
    "daemontools": (27200, 27300),
    "prometheus": (27300, 27400),
    "socket_activation": (27400, 27500),
    "capabilities": (27500, 27502),      # test_capabilities NFQ_PORT, in its own namespaces
    "postfix_policy": (27502, 27503),    # test_postfix_policy SMTP_PORT, likewise
    "systemd_live": (27503, 27504),      # test_systemd_live NFQ_PORT, in its systemd's namespaces
    "lease_store": (27504, 27505),       # test_lease_store_live PORT, in a booted systemd's
}


def free_ports(area: str, count: int, kind: str = "tcp") -> list[int]:
    """``count`` ports of an area's slice that are free on 127.0.0.1 and ::1 now."""
    import socket

    lo, hi = SLICES[area]
    found = []
    for port in range(lo, hi):
        ok = True
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            for typ in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(fam, typ)
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                finally:
                    s.close()
        if ok:
            found.append(port)
            if len(found) == count:
                return found
    pytest.skip(f"no {count} free ports in {lo}-{hi}")


def acl_entry_point() -> str:
    """The installed ``acl`` console script (not a pyenv shim)."""
    beside = Path(sys.executable).with_name("acl")
    if beside.exists():
        return str(beside)
    found = shutil.which("acl")
    if found is None:
        pytest.skip("the acl entry point is not installed (pip install -e .)")
    return os.path.realpath(found)


def guide_commands() -> list[str]:
    """The first ``sh`` block of the operator guide's "2. Under systemd"."""
    text = GUIDE.read_text()
    section = text[text.index("## 2. Under systemd"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


#: Where deploy/install.sh puts the manual pages.
MAN_PREFIX = "/usr/local/share/man"


def install_man_pages(dest: Path) -> Path:
    """Run install.sh's lines for the manual pages -- from its "# the manual
    pages" comment to the end of its mandb ``if`` -- with ``MAN_PREFIX``
    moved to ``dest`` and ``MANPATH`` set to it (the block indexes the pages'
    directory under the names man's search path gives it); ``dest``, a man
    tree ``man -M`` reads."""
    text = (DEPLOY / "install.sh").read_text()
    block = re.search(r"^# the manual pages.*?^fi$", text, re.M | re.S)
    assert block and block.group(0).count(MAN_PREFIX) >= 3, "install.sh installs no pages"
    script = "set -eu\n" + block.group(0).replace(MAN_PREFIX, str(dest))
    out = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MANPATH": str(dest)})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return dest
