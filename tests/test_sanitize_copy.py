"""tests/sanitize's copy of the checkout (its rules): the files git lists
(tracked and untracked, not ignored) are copied, and a copy that fails at
any step stops the run before anything is built in it.

The script runs for real, with the real git and tar, on a small checkout
made here whose setup.py only says that it ran (the build step): nothing
is built and no test area runs.  Before, the copy was a pipeline
``git | tar -c | tar -x`` whose status was the last tar's, so a ``tar -c``
that failed (a write error, memory, a signal) went unnoticed and the
sanitizers ran on a partial copy.  Here ``tar -c`` fails through a
``tar`` first on PATH that runs the real one and then exits 2, as tar
exits on a fatal error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = "stub setup.py ran"

FAILING_TAR = """\
#!/bin/sh
# the real tar; a create then fails as tar does on a fatal error
create=no
for a in "$@"; do
    case $a in -c*|--create) create=yes ;; esac
done
{real} "$@" || exit
[ $create = yes ] || exit 0
echo "tar: (test) archive write failed" >&2
touch "{mark}"
exit 2
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                   timeout=60)


@pytest.fixture
def checkout(tmp_path):
    if shutil.which("git") is None or shutil.which("tar") is None:
        pytest.skip("needs git and tar")
    co = tmp_path / "checkout"
    (co / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "sanitize", co / "tests" / "sanitize")
    (co / "setup.py").write_text(f"print({BUILT!r})\nraise SystemExit(3)\n")
    (co / "acl").mkdir()
    (co / "acl" / "tracked.py").write_text("x = 1\n")
    (co / ".gitignore").write_text("build/\n")
    _git(co, "init", "-q")
    _git(co, "add", "-A")
    (co / "untracked.py").write_text("y = 2\n")         # copied: the code being edited
    (co / "build").mkdir()
    (co / "build" / "ignored.so").write_text("stale\n")  # not copied
    return co


def _run(co: Path, tmp_path: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACL_SANITIZE_TREE=str(tmp_path / "tree"),
               ACL_SANITIZE_LOGS=str(tmp_path / "logs"))
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["sh", str(co / "tests" / "sanitize"), "core"], cwd=str(co),
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_copy_holds_what_git_lists_and_the_build_runs_in_it(checkout, tmp_path):
    out = _run(checkout, tmp_path)
    assert BUILT in out.stdout, (out.stdout, out.stderr)
    assert out.returncode == 1, out                    # the stub build "fails"
    tree = tmp_path / "tree"
    got = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert got == [".acl-sanitize-tree", ".gitignore", "acl/tracked.py", "setup.py",
                   "tests/sanitize", "untracked.py"], got


def test_a_tar_c_that_fails_stops_the_run_before_the_build(checkout, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tar"
    failed = tmp_path / "tar-c-failed"
    wrapper.write_text(FAILING_TAR.format(real=shutil.which("tar"), mark=failed))
    wrapper.chmod(0o755)
    out = _run(checkout, tmp_path, f"{bin_dir}:{os.environ['PATH']}")
    assert failed.exists()                              # the wrapper did fail a tar -c
    assert BUILT not in out.stdout, "built and tested a copy whose tar -c failed"
    assert "tests/sanitize: cannot copy the checkout" in out.stderr, out.stderr
    assert out.returncode == 1, out
