"""deploy/install.sh puts acl-nfqueue-rules where the guides call it, and
the manual pages where ``man acl`` finds them.

install.sh itself needs apt and pip, so it is not run here; its line that
installs the rules script is, and so are its lines that install the
manual pages, with the destination moved under the test's tmp dir.  Every path the guides call the script by must be that
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

from .conftest import DEPLOY, ROOT, install_man_pages

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


def test_every_manual_page_is_installed_where_man_finds_it(tmp_path):
    """Each page of man/ lands, unchanged and 0644, in the man<section>
    directory of the tree, and man, whatis and apropos find it there --
    ``man acl`` shows acl(8), whatever other acl page the system has."""
    if shutil.which("man") is None:
        pytest.skip("man-db is not installed")
    tree = install_man_pages(tmp_path / "man")
    pages = sorted(p for p in (ROOT / "man").iterdir() if re.fullmatch(r".+\.[1-9]", p.name))
    assert pages
    # Debian's package "acl" (POSIX ACLs) has an acl(5): man-db's section
    # order (8 before 5) must still pick ours
    (tree / "man5" / "acl.5").write_text(".TH ACL 5\n.SH NAME\nacl \\- POSIX ACLs\n")
    for page in pages:
        installed = tree / f"man{page.suffix[1:]}" / page.name
        assert installed.read_bytes() == page.read_bytes(), installed
        assert os.stat(installed).st_mode & 0o777 == 0o644
        name, section = page.name.rsplit(".", 1)
        found = subprocess.run(["man", "-M", str(tree), "-w", name], capture_output=True,
                               text=True, timeout=30)
        assert found.stdout.strip() == str(installed), found.stdout + found.stderr
        if shutil.which("whatis") and shutil.which("mandb"):      # install.sh ran mandb
            said = subprocess.run(["whatis", "-M", str(tree), name], capture_output=True,
                                  text=True, timeout=30)
            assert said.returncode == 0, said.stderr
            assert re.match(rf"{re.escape(name)} \({section}\) +- \S", said.stdout), said.stdout
