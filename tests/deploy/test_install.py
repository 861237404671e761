"""deploy/install.sh puts acl-nfqueue-rules where the guides call it.

install.sh itself needs apt and pip, so it is not run here; its line that
installs the rules script is, with the destination moved under the test's
tmp dir.  Every path the guides call the script by must be that
destination, and the guide's lock-out safety net (section 6, step 4: the
``at`` job) must remove the rules ``add`` made, run as ``sh -c`` with a bare
PATH, inside a network namespace the test makes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from .conftest import DEPLOY, ROOT

INSTALL = DEPLOY / "install.sh"
GUIDES = [ROOT / "docs" / "operator-guide.md", ROOT / "docs" / "nfqueue.md"]


def install_line() -> tuple[list[str], str]:
    """install.sh's command installing the rules script, and its destination."""
    (line,) = [ln for ln in INSTALL.read_text().splitlines()
               if ln.startswith("install ") and "deploy/nfqueue/acl-nfqueue-rules" in ln]
    argv = shlex.split(line)
    return argv, argv[-1]


def test_every_path_the_guides_call_is_the_installed_one():
    _, dest = install_line()
    assert dest.startswith("/") and dest.endswith("/acl-nfqueue-rules")
    called = set()
    for guide in GUIDES:
        # what precedes each call: a directory, or nothing (a bare name: PATH)
        called |= set(re.findall(r"([\w/.-]*)acl-nfqueue-rules (?:iptables|nft)",
                                 guide.read_text()))
    # from a source checkout, or installed; never by bare name
    assert called <= {"deploy/nfqueue/", dest.removesuffix("acl-nfqueue-rules")}, called
    assert dest.removesuffix("acl-nfqueue-rules") in called
    step4 = re.search(r"echo '([^']*)' \| at now", GUIDES[0].read_text()).group(1)
    assert step4 == f"{dest} iptables delete"


def test_the_installed_script_is_the_shipped_one(tmp_path):
    argv, dest = install_line()
    moved = str(tmp_path) + dest
    os.makedirs(os.path.dirname(moved))
    subprocess.run([*argv[:-1], moved], cwd=ROOT, check=True, timeout=30)
    assert open(moved, "rb").read() == (DEPLOY / "nfqueue" / "acl-nfqueue-rules").read_bytes()
    assert os.stat(moved).st_mode & 0o777 == 0o755


@pytest.mark.root
@pytest.mark.skipif(shutil.which("iptables") is None or shutil.which("unshare") is None,
                    reason="iptables/unshare not installed")
def test_the_guides_safety_net_removes_the_rules(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace and iptables")
    argv, dest = install_line()
    moved = str(tmp_path) + dest
    os.makedirs(os.path.dirname(moved))
    subprocess.run([*argv[:-1], moved], cwd=ROOT, check=True, timeout=30)
    step4 = re.search(r"echo '([^']*)' \| at now", GUIDES[0].read_text()).group(1)
    job = step4.replace(dest, moved)
    script = (f"{shlex.quote(moved)} iptables add && iptables -w -S INPUT && "
              f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c {shlex.quote(job)} && "
              "echo --- && iptables -w -S")
    out = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split("---\n")
    assert "-A INPUT -j ACL_NFQ" in before
    assert "ACL_NFQ" not in after, after
