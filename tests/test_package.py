"""The package as a user meets it: its command, its core switch, its lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None, cwd=ROOT):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def test_version_names_the_core():
    out = run(sys.executable, "-m", "acl", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("acl ")
    assert "(compiled core)" in out.stdout or "(pure core)" in out.stdout


def test_no_extensions_switch_selects_the_twin():
    env = dict(os.environ, ACL_NO_EXTENSIONS="1")
    out = run(sys.executable, "-m", "acl", "--version", env=env)
    assert out.returncode == 0, out.stderr
    assert "(pure core)" in out.stdout


def test_compiled_core_runs_when_required():
    if not os.environ.get("ACL_REQUIRE_COMPILED"):
        pytest.skip("only meaningful where the compiled core must be present")
    env = {k: v for k, v in os.environ.items() if k != "ACL_NO_EXTENSIONS"}
    out = run(sys.executable, "-m", "acl", "--version", env=env)
    assert "(compiled core)" in out.stdout, out.stdout + out.stderr


def test_unknown_command_is_a_usage_error():
    out = run(sys.executable, "-m", "acl", "frobnicate")
    assert out.returncode == 100
    assert "unknown command" in out.stderr


@pytest.mark.parametrize("command", ["audit", "check", "compile", "match", "query", "serve"])
def test_every_command_answers_help_on_stdout_with_success(command):
    out = run(sys.executable, "-m", "acl", command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower(), out.stdout


def test_sdist_ships_the_manual_pages_and_guides(tmp_path):
    """MANIFEST.in: the sdist carries every file of man/ and docs/*.md, so
    what is built from it can install ``man acl`` and /usr/share/doc/acl.
    Built with its egg-info in tmp_path: the checkout is left as it was."""
    out = run(sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
              "sdist", "--dist-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (tarball,) = tmp_path.glob("acl-*.tar.gz")
    with tarfile.open(tarball) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    want = {f"man/{p.name}" for p in (ROOT / "man").iterdir() if p.is_file()}
    want |= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert any(w.startswith("man/") for w in want)
    assert want <= shipped, sorted(want - shipped)


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None and not os.environ.get("ACL_REQUIRE_COMPILED"):
        pytest.skip("ruff not installed")
    out = run(ruff or "ruff", "check", "acl", "tests", "bench", "ext", "setup.py")
    assert out.returncode == 0, out.stdout + out.stderr


def test_cython_lint_is_clean():
    tool = shutil.which("cython-lint")
    if tool is None and not os.environ.get("ACL_REQUIRE_COMPILED"):
        pytest.skip("cython-lint not installed")
    sources = sorted(str(p) for p in (ROOT / "ext").rglob("*.p[yx][xd]"))
    if not sources:
        pytest.skip("no Cython sources yet")
    out = run(tool or "cython-lint", "--max-line-length", "100", *sources)
    assert out.returncode == 0, out.stdout + out.stderr


# -- which tree's compiled modules count (acl.core's rules) --------------------
CORE_MODULES = ("_core", "_limits", "_engine", "_hosts_scan")


def _built(name: str) -> Path:
    hits = sorted((ROOT / "acl").glob(f"{name}.*.so"))
    if not hits:
        if os.environ.get("ACL_REQUIRE_COMPILED"):
            pytest.fail(f"acl/{name}.*.so not built")
        pytest.skip(f"acl/{name}.*.so not built")
    return hits[0]


def _tree(tmp_path: Path, with_so: tuple[str, ...]) -> Path:
    """A copy of the package in ``tmp_path`` with only the named extensions
    built: a partial build, or (none) a pure install."""
    dest = tmp_path / "acl"
    shutil.copytree(ROOT / "acl", dest, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in with_so:
        shutil.copy2(_built(name), dest)
    return tmp_path


def test_a_compiled_module_of_another_tree_is_not_used(tmp_path):
    """A pure install first on the path, and behind it an import finder that
    answers ``acl.*`` from this tree (what the system site-packages' editable
    finder does in a --system-site-packages venv): the other tree's .so
    files must not run in the pure install."""
    for name in CORE_MODULES:
        _built(name)
    top = _tree(tmp_path, ())
    code = f"""
import importlib.util, sys
class Elsewhere:            # the editable finder of another acl tree
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.startswith("acl._"):
            import glob
            hits = glob.glob({str(ROOT / 'acl')!r} + "/" + name[4:] + ".*.so")
            if hits:
                return importlib.util.spec_from_file_location(name, hits[0])
        return None
sys.meta_path.append(Elsewhere)
import acl.core as c
print(c.BUILD, c.PURE_PARTS, c.limits.__name__)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("ACL_NO_EXTENSIONS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(top)
    out = run(sys.executable, "-c", code, env=env, cwd=top)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "pure", out.stdout
    assert "acl._limits_py" in out.stdout


def test_a_partial_build_says_so_and_serve_refuses_it(tmp_path):
    """Every extension but acl._limits built: not "compiled" anywhere, and
    acl serve wants --allow-pure for it as for a pure core."""
    top = _tree(tmp_path, ("_core", "_engine", "_hosts_scan"))
    env = {k: v for k, v in os.environ.items() if k not in ("ACL_NO_EXTENSIONS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(top)
    out = run(sys.executable, "-m", "acl", "--version", env=env, cwd=top)
    assert out.returncode == 0, out.stderr
    assert "(mixed core, pure: limits)" in out.stdout, out.stdout
    out = run(sys.executable, "-m", "acl", "serve", "--metrics", "", env=env, cwd=top)
    assert out.returncode == 100, out.stderr
    assert "(mixed core, pure: limits)" in out.stderr and "--allow-pure" in out.stderr
