"""The client-name cache of ``[names]`` (acl/names.py rules), through the
engine outside ``acl serve`` (a miss looks up at once), on a clock the test
sets: a name is cached for ``ttl`` seconds and no longer (``ttl = 0``: not
even for a second request at the same instant), "no name" for
``negative_ttl``, and at most ``cache`` names are kept, the least recently
used going first.  What is counted is what ``acl_name_lookups_total`` and
``acl_name_cache_entries`` export."""

from __future__ import annotations

import pytest

from acl.engine import Engine
from acl.model import Request
from acl.policy import load_policy

from .conftest import NAMED, UNNAMED, named_hosts

T = 1_700_000_000.0


def engine(tmp_path, names: str):
    named_hosts(tmp_path)
    (tmp_path / "policy.toml").write_text(
        f'[run]\nwatch = false\n[names]\nhosts_file = "hosts"\n{names}\n'
        '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\ndeny = "hosts.deny"\n')
    eng = Engine(load_policy(tmp_path / "policy.toml"), batch=False)
    clock = [T]
    eng.policy.name_service.clock = lambda: clock[0]
    return eng, clock


def lookups(eng, clients, now: float) -> int:
    """The lookups deciding ``clients`` (in order) made."""
    names = eng.policy.name_service
    before = names.lookups["verified"]
    for c in clients:
        eng.decide(Request("echo", c), now)
    return names.lookups["verified"] - before


@pytest.mark.parametrize("ttl,negative", [(0, 0), (30, 0), (0, 30), (300, 60)])
def test_a_name_is_cached_for_its_ttl_and_no_longer(tmp_path, ttl, negative):
    eng, clock = engine(tmp_path, f"ttl = {ttl}\nnegative_ttl = {negative}")
    named, unnamed = NAMED[0], UNNAMED
    for client, keep in ((named, ttl), (unnamed, negative)):
        clock[0] = T
        assert lookups(eng, [client], T) == 1
        # the same instant: a hit unless the ttl is 0
        assert lookups(eng, [client], T) == (1 if keep == 0 else 0), (client, keep)
        if keep:
            clock[0] = T + keep - 0.001
            assert lookups(eng, [client], clock[0]) == 0
            clock[0] = T + keep                      # expired at its ttl exactly
            assert lookups(eng, [client], clock[0]) == 1
    assert eng.counters()["decisions"] == {("echo", 1, 0): 4 if ttl else 2,
                                           ("echo", 0, 7): 4 if negative else 2}


def test_the_least_recently_used_name_goes_first(tmp_path):
    """cache = 2: A, B, A again, then C pushes out B (not A, used since);
    A is still a hit, B is looked up again (pushing out C)."""
    eng, _clock = engine(tmp_path, "cache = 2")
    a, b, c = NAMED[:3]
    assert lookups(eng, [a, b, a], T) == 2
    assert lookups(eng, [c], T) == 1
    assert lookups(eng, [a], T) == 0
    assert lookups(eng, [b], T) == 1
    assert lookups(eng, [a], T) == 0
    assert lookups(eng, [c], T) == 1
    names = eng.policy.name_service
    assert names.entries == 2 and names.evictions == 3
