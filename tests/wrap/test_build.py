"""acl-wrap is built by setup.py, warning-free, and installed on PATH.

* the sources compile with -Wall -Wextra -Werror;
* ``setup.py build_scripts`` (what pip runs for ``pip install .`` and for
  the editable install) produces an executable ``acl-wrap`` -- and builds
  nothing with ACL_NO_EXTENSIONS=1, which must still succeed;
* where the suite requires the compiled parts (tests/run sets
  ACL_REQUIRE_COMPILED=1 after ``pip install -e``), the installed acl-wrap
  is in the environment's scripts directory.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REQUIRE_COMPILED
from tests.wrap import harness


def test_sources_compile_without_warnings(tmp_path):
    out = harness.build_wrap(tmp_path)          # -Werror inside
    assert os.access(out, os.X_OK)


@pytest.mark.parametrize("no_ext", ["", "1"])
def test_setup_builds_acl_wrap_as_a_script(tmp_path, no_ext):
    env = dict(os.environ, ACL_NO_EXTENSIONS=no_ext)
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_scripts", "-d", str(tmp_path)],
                         cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    built = tmp_path / "acl-wrap"
    if no_ext:
        assert not built.exists()
    else:
        assert os.access(built, os.X_OK)
        with open(built, "rb") as f:
            assert f.read(4) == b"\x7fELF"     # the native program, not a script


def test_installed_on_path():
    inst = harness.installed_wrap()
    if inst is None:
        if REQUIRE_COMPILED:
            pytest.fail("acl-wrap is not installed (pip install -e . should put it "
                        "in the scripts directory)")
        pytest.skip("acl-wrap not installed")
    res = subprocess.run([str(inst)], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=10)
    assert res.returncode == 100 and "usage: acl-wrap" in res.stderr
