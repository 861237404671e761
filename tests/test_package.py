"""The package as a user meets it: its command, its core switch, its lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


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
