"""acl against the real tcpdmatch (Debian tcpd) on generated file pairs and queries.

Default run: 120 generated hosts.allow/hosts.deny pairs x 170 queries
(20,400 queries) -- IPv4, IPv6, v4-mapped, names through a private
/etc/hosts, every pattern and option form (NUL bytes in ``/file`` lists
too), comments, continuations, bad lines, empty ``@client`` users,
near-miss addresses at mask boundaries -- zero disagreements allowed; and
400 rules that each decide one query with a generated option list.
``ACL_SLOW=1`` asks ``ACL_TCPW_QUERIES`` queries (default 1,000,000), from
seed 100,000 + ``ACL_SEED_BASE``.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import SLOW, SLOW_SEED_BASE

from . import gen
from .differential import compare, run_many
from .tcpdmatch import build_shim, unavailable

PER_CASE = 170


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(why)
    return build_shim(tmp_path_factory.mktemp("shim"))


def _check(seeds, tmp_path, shim, minimum):
    total, bad = run_many(seeds, tmp_path, shim, queries=PER_CASE)
    assert total >= minimum
    assert not bad, f"{len(bad)} disagreements out of {total}; first:\n" + "\n\n".join(bad[:3])


def test_tcpdmatch_agrees_on_20000_generated_queries(tmp_path, shim):
    _check(range(120), tmp_path, shim, 20_000)


def test_tcpdmatch_agrees_on_big_files(tmp_path, shim):
    """Fewer pairs, 40-80 rules each: deep first-match orders and long residuals."""
    total, bad = run_many(range(10_000, 10_006), tmp_path, shim, rules=(40, 80), queries=PER_CASE)
    assert total == 6 * PER_CASE
    assert not bad, "\n\n".join(bad[:3])


def test_tcpdmatch_agrees_on_generated_option_lists(tmp_path, shim):
    """400 rules, each deciding one query with a generated option list (half
    of its options bad): every option value is asked of tcpdmatch, not only
    those a rule of the mixed cases happens to decide with."""
    bad = compare(gen.Gen(20_000, str(tmp_path)).options_case(400), tmp_path / "opts", shim)
    assert not bad, "\n\n".join(bad[:3])


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long differential run: set ACL_SLOW=1")
def test_tcpdmatch_agrees_slow(tmp_path, shim):
    want = int(os.environ.get("ACL_TCPW_QUERIES", "1000000"))
    cases = -(-want // PER_CASE)
    first = 100_000 + SLOW_SEED_BASE
    _check(range(first, first + cases), tmp_path, shim, want)
