"""Real data: Debian tor-geoipdb, zero disagreements with pytricia.

The range files become ~560k IPv4 and ~595k IPv6 CIDRs (``geoip.py``).  The
tables also get a coarse layer of aggregates (every /8 resp. /20 that holds
a country prefix) with *lower* values than the country prefixes, so the two
disciplines differ: most_specific must equal pytricia's longest match over
everything, first_match must equal the aggregate when one covers (a second
pytricia holding only the aggregates) and the longest match otherwise.

One million addresses per family go through the compiled core (single calls
and batch); the pure twin answers a sample (it is an oracle, not fast).
"""

from __future__ import annotations

import random
from array import array

import pytest

from tests.conftest import REQUIRE_COMPILED, SLOW, load_impl
from tests.core import geoip

pytricia = pytest.importorskip("pytricia")

ADDRESSES = 1_000_000
TWIN_SAMPLE = 20_000 if SLOW else 3_000
AGGREGATE = {4: 8, 6: 20}


@pytest.fixture(scope="module", params=[4, 6])
def world(request):
    family = request.param
    if geoip.missing():
        message = f"tor-geoipdb files missing: {', '.join(geoip.missing())} (apt install tor-geoipdb)"
        if REQUIRE_COMPILED:
            pytest.fail(message)
        pytest.skip(message)
    bits = 32 if family == 4 else 128
    width = bits // 8
    agg_len = AGGREGATE[family]
    countries = geoip.prefixes(family)
    # (An aggregate that is itself a country prefix is left out: no duplicates.)
    aggregates = sorted({(n >> (bits - agg_len)) << (bits - agg_len) for n, _ in countries}
                        - {n for n, ln in countries if ln == agg_len})
    # Aggregates take values 0..k-1, country prefixes k.. in file order.
    entries = [(n, agg_len, i) for i, n in enumerate(aggregates)]
    entries += [(n, ln, len(aggregates) + i) for i, (n, ln) in enumerate(countries)]
    everything = pytricia.PyTricia(bits)
    only_aggregates = pytricia.PyTricia(bits)
    for n, ln, v in entries:
        key = n.to_bytes(width, "big")
        everything.insert(key, ln, v)
        if ln == agg_len and v < len(aggregates):
            only_aggregates.insert(key, ln, v)
    rng = random.Random(20261122 + family)
    addrs = []
    for _ in range(ADDRESSES):
        roll = rng.random()
        if roll < 0.6:
            n, ln = countries[rng.randrange(len(countries))]
            a = n | rng.getrandbits(bits - ln) if ln < bits else n
        elif roll < 0.8:
            # Just outside a prefix: the neighbour of its first or last address.
            n, ln = countries[rng.randrange(len(countries))]
            a = (n - 1) if rng.random() < 0.5 else n + (1 << (bits - ln))
            a %= 1 << bits
        else:
            a = rng.getrandbits(bits)
        addrs.append(a.to_bytes(width, "big"))
    specific = [everything.get(a, -1) for a in addrs]
    first = [only_aggregates.get(a, s) for a, s in zip(addrs, specific, strict=True)]
    return family, entries, addrs, specific, first


def columns(family, entries):
    width = 4 if family == 4 else 16
    return (b"".join(n.to_bytes(width, "big") for n, _, _ in entries),
            bytes(ln for _, ln, _ in entries), array("i", [v for _, _, v in entries]))


def disagreements(got, want):
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    return len(bad), bad[:5]


def test_compiled_core_agrees_with_pytricia(world):
    family, entries, addrs, specific, first = world
    core = load_impl("compiled", "acl._core", "acl._core_py")
    table = core.PrefixTable.from_arrays(family, *columns(family, entries))
    assert len(table) == len(entries)
    packed = b"".join(addrs)
    assert disagreements(table.most_specific_batch(packed), specific) == (0, [])
    assert disagreements(table.first_match_batch(packed), first) == (0, [])
    assert disagreements([table.most_specific(a) for a in addrs], specific) == (0, [])
    assert disagreements([table.first_match(a) for a in addrs], first) == (0, [])
    # The answers are not trivial: most addresses hit, and the disciplines differ.
    assert sum(s >= 0 for s in specific) > ADDRESSES // 2
    assert sum(f != s for f, s in zip(first, specific, strict=True)) > ADDRESSES // 2


def test_twin_agrees_with_pytricia(world):
    family, entries, addrs, specific, first = world
    twin = load_impl("pure", "acl._core", "acl._core_py")
    table = twin.PrefixTable.from_arrays(family, *columns(family, entries))
    sample = range(0, ADDRESSES, ADDRESSES // TWIN_SAMPLE)
    assert [table.most_specific(addrs[i]) for i in sample] == [specific[i] for i in sample]
    assert [table.first_match(addrs[i]) for i in sample] == [first[i] for i in sample]


def test_covering_agrees_with_pytricia(world):
    """covering() on real data: pytricia's parent chain, shortest first."""
    family, entries, addrs, specific, first = world
    core = load_impl("compiled", "acl._core", "acl._core_py")
    table = core.PrefixTable.from_arrays(family, *columns(family, entries))
    values = {(n, ln): v for n, ln, v in entries}
    for a in addrs[:2000]:
        want = [values[(n, ln)] for n, ln in sorted(values_of(a, family, values))]
        assert [v for _, _, v in table.covering(a)] == want


def values_of(a: bytes, family: int, values):
    # At most two prefixes cover an address here: its aggregate and its country prefix.
    bits = 32 if family == 4 else 128
    x = int.from_bytes(a, "big")
    found = []
    for ln in range(bits + 1):
        n = x >> (bits - ln) << (bits - ln) if ln else 0
        if (n, ln) in values:
            found.append((ln, n))
    return [(n, ln) for ln, n in found]
