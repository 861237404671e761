"""Fixtures of the acl-wrap tests (tests/wrap).

* ``wrap_bin``: the acl-wrap binary under test -- the installed one when it
  is at least as new as ext/wrap, else a fresh -Werror build of the sources.
* ``short_tmp``: a short temp dir (Unix socket paths must fit in 108 bytes).
* ``port``: a fresh loopback port from this area's range, 25000-25999
  (tests/conftest.py PORTS["wrap"]); each test module takes its own block.
* Under ACL_SANITIZE (harness rules) a test during which acl-wrap wrote a
  sanitizer report fails with the report, whatever else it checked.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import PORTS
from tests.wrap import harness

#: Port blocks inside PORTS["wrap"] for modules using the ``port`` fixture.
#: Fixed users: test_expand_vs_tcpd 25150, test_live 25200-25599 (100 per
#: super-server) and 25600-25606, test_live_ucspi_names 25610-25616 (in a
#: network namespace of its own), test_live_env_vs_tcpserver 25617-25619,
#: test_live_tcpserver_groups 25620, test_live_seal 25630,
#: test_fuzz 25640,
#: test_live_vs_tcpd 25800-25802,
#: bench/bench_wrap.py 25900-25902.
BLOCKS = {
    "test_wrap_unit": 25000,
    "test_fuzz": 25640,
    "test_vs_tcpd": 25700,
}
_counters: dict[str, itertools.count] = {}


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare -m, bind mounts)")


@pytest.fixture(autouse=True)
def no_sanitizer_reports():
    if not harness.SANITIZE:
        yield
        return
    before = set(harness.sanitizer_reports())
    yield
    new = [p for p in harness.sanitizer_reports() if p not in before]
    if new:
        pytest.fail("acl-wrap's sanitizer reported:\n"
                    + "\n".join(p.read_text(errors="replace")[:4000] for p in new), pytrace=False)


@pytest.fixture(scope="session")
def wrap_bin(tmp_path_factory) -> Path:
    return harness.wrap_binary(tmp_path_factory.mktemp("wrapbin"))


@pytest.fixture
def short_tmp():
    d = Path(tempfile.mkdtemp(prefix="aw."))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def port(request) -> int:
    mod = request.module.__name__.rsplit(".", 1)[-1]
    base = BLOCKS[mod]
    n = next(_counters.setdefault(mod, itertools.count()))
    p = base + n % 100
    lo, hi = PORTS["wrap"]
    assert lo <= p < hi
    return p
