"""The ints single lookups return, which the compiled core hands out again.

``most_specific`` and ``first_match`` keep the last int they returned and,
when no one else holds it any more, rewrite it in place for the next answer
(``ext/acl/answer.h``).  What could go wrong is an int someone still holds
changing under them, or a value that does not fit the kept int's shape
coming out wrong.  These tests hold answers in every way a caller can
(variables, lists, dict keys, another thread's list, after the table is
gone) and check each against the twin; and they check that the reuse is
really on where the header says it is, since a silent fallback would only
show as a slower call.
"""

from __future__ import annotations

import gc
import platform
import random
import sys
import sysconfig
import threading

import pytest

from acl import _core_py
from tests.conftest import load_impl

# Values on both sides of every edge answer.h checks: -1 (no match), CPython's
# cached small ints (..256), the first rewritten one (257), the largest of
# one 30-bit digit, and two-digit ones.
EDGE_VALUES = [0, 1, 255, 256, 257, 258, 1000, 65535, 65536, (1 << 30) - 1, 1 << 30, _core_py.MAX_VALUE]


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def tables(module, rng: random.Random):
    """An IPv4 and an IPv6 table of /16s and /48s, one per edge value and
    100 random ones, and addresses (one in each prefix, some in none)."""
    values = EDGE_VALUES + [rng.randrange(257, _core_py.MAX_VALUE + 1) for _ in range(100)]
    v4 = [((i + 1) << 16, 16, v) for i, v in enumerate(values)]
    v6 = [((0x2001_0db8_0000 + i) << 80, 48, v) for i, v in enumerate(values)]
    probes4 = [net | rng.getrandbits(16) for net, _, _ in v4] + [0xF0000000 + i for i in range(20)]
    probes6 = [net | rng.getrandbits(80) for net, _, _ in v6] + [(0x3fff << 112) + i for i in range(20)]
    for probes in (probes4, probes6):
        rng.shuffle(probes)
    return [(module.PrefixTable(4, v4), _core_py.PrefixTable(4, v4), probes4),
            (module.PrefixTable(6, v6), _core_py.PrefixTable(6, v6), probes6)]


def test_held_answers_never_change(compiled):
    rng = random.Random(11)
    for table, twin, probes in tables(compiled, rng):
        for method in ("most_specific", "first_match"):
            fn, want = getattr(table, method), getattr(twin, method)
            kept = [fn(a) for a in probes]                     # a list holds each one
            as_keys = {fn(a): None for a in probes[:40]}        # dict keys
            one = fn(probes[0])                                 # a variable
            for a in probes:                                    # answers dropped at once
                assert fn(a) == want(a)
            assert kept == [want(a) for a in probes]
            assert set(as_keys) == {want(a) for a in probes[:40]}
            assert one == want(probes[0])


def test_mixed_holding_and_dropping(compiled):
    """A caller that keeps some answers and drops others, in a random order:
    each kept one must still have its value at the end."""
    rng = random.Random(12)
    for table, twin, probes in tables(compiled, rng):
        kept = []
        for _ in range(3000):
            a = rng.choice(probes)
            answer = table.most_specific(a)
            assert answer == twin.most_specific(a)
            if rng.random() < 0.3:
                kept.append((a, answer))
        assert all(answer == twin.most_specific(a) for a, answer in kept)


def test_answer_outlives_its_table(compiled):
    table, twin, probes = tables(compiled, random.Random(13))[0]
    a = next(p for p in probes if twin.most_specific(p) > 256)
    answer = table.most_specific(a)
    del table
    gc.collect()
    # the table let go of its reference once, not twice: ours and
    # getrefcount's argument are left
    assert sys.getrefcount(answer) == 2
    assert answer == twin.most_specific(a)
    assert answer + 1 == twin.most_specific(a) + 1


def test_threads_keep_their_answers(compiled):
    """Threads sharing one table each keep every answer; all must be right."""
    table, twin, probes = tables(compiled, random.Random(14))[1]
    results: dict[int, list] = {}

    def worker(k: int):
        mine = []
        for i in range(4000):
            a = probes[(i * 7 + k) % len(probes)]
            mine.append((a, table.most_specific(a)))
            table.first_match(a)                                # dropped at once
        results[k] = mine

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1, 2, 3]
    for mine in results.values():
        assert all(answer == twin.most_specific(a) for a, answer in mine)


def expected_to_reuse() -> bool:
    """What answer.h promises: CPython 3.11-3.14 built with a GIL."""
    return (platform.python_implementation() == "CPython" and (3, 11) <= sys.version_info[:2] <= (3, 14)
            and not sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_reuse_is_on_where_promised(compiled):
    assert compiled.ANSWER_REUSES == expected_to_reuse()
    if not compiled.ANSWER_REUSES:
        pytest.skip("this interpreter always gets a fresh int")
    table = compiled.PrefixTable(4, [(0x0A000000, 8, 100_000), (0x0B000000, 8, 200_000)])
    first = table.most_specific("10.0.0.1")
    # the table keeps a reference besides ours (and getrefcount's argument)
    assert sys.getrefcount(first) == 3
    first_id = id(first)
    del first
    second = table.most_specific("11.0.0.1")
    assert (id(second), second) == (first_id, 200_000)
    # held: the next answer is a new int, and this one keeps its value
    third = table.most_specific("10.0.0.1")
    assert id(third) != id(second) and (second, third) == (200_000, 100_000)
    # and the table let go of the one it kept before (no leak): only ours
    # and getrefcount's argument are left
    assert sys.getrefcount(second) == 2
