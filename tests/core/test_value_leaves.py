"""Tries of one int32 per leaf (``Trie.leaf_shift`` 2), against the twin.

When every leaf's first-match value equals its most-specific one -- no
prefix lies inside another of higher value: disjoint ranges such as
tor-geoipdb's, or nested prefixes whose values fall as they get longer --
the compiled trie stores each leaf as one int32 instead of a Pair, and each
node keeps twice as many leaves in its own lines (a Node 7 after its skip's
answer, a WideNode 12).  What such a trie gets wrong is where it differs
from a trie of Pairs: the decision itself (one disagreeing leaf must keep
Pairs), a node's last leaf in its own lines and the first in
``Trie.leaves``, the skip's answer of a path-compressed node, the top
level's leaves, and the batch walks' compiled variants.  Every lookup,
single and batch, is compared with the twin.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import _core_py
from tests.conftest import load_impl
from tests.core.strategies import mask
from tests.core.test_path_compression import check_against_twin, probes

BITS = {4: 32, 6: 128}


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def storage(compiled, table) -> tuple[int, int]:
    shape = compiled._trie_shape(table)
    return shape["leaf_bytes"], shape["near_leaves"]


def disjoint(family: int, prefixes, values):
    """The prefixes, in sorted order, that overlap none kept before them,
    with ``values``.  Sorted, a prefix overlaps a kept one only if it starts
    at or before the end of the last one kept."""
    top = (1 << BITS[family]) - 1
    kept, end = [], -1
    for net, plen in sorted(set(prefixes)):
        if net > end:
            kept.append((net, plen))
            end = net | (top >> plen)
    return [(net, plen, v) for (net, plen), v in zip(kept, values, strict=False)]


@st.composite
def agreeing_sets(draw, family: int):
    """Prefix sets whose two disciplines agree everywhere: disjoint ones, or
    nested ones whose values fall as prefixes get longer (the longest
    covering prefix then also has the lowest value)."""
    bits = BITS[family]
    lengths = st.one_of(st.integers(0, bits), st.sampled_from([7, 8, 9, 14, 15, 16, 24, 48, bits]))
    raw = draw(st.lists(st.tuples(st.integers(0, (1 << bits) - 1), lengths.filter(lambda n: n <= bits)),
                        min_size=1, max_size=60))
    raw = [(net & mask(bits, plen), plen) for net, plen in raw]
    if draw(st.booleans()):
        values = draw(st.lists(st.integers(0, 2**31 - 2), min_size=len(raw), max_size=len(raw)))
        return disjoint(family, raw, values)
    unique = {(net, plen): None for net, plen in raw}
    return [(net, plen, (bits + 1 - plen) * 10_000 + draw(st.integers(0, 9_999))) for net, plen in unique]


@pytest.mark.parametrize("family", [4, 6])
@settings(max_examples=80, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_agreeing_tables_store_one_value_per_leaf_and_agree(compiled, family, data, seed):
    entries = data.draw(agreeing_sets(family))
    table = compiled.PrefixTable(family, entries)
    assert storage(compiled, table)[0] == 4
    rng = random.Random(seed)
    addrs = probes(family, entries, rng) + [rng.getrandbits(BITS[family]) for _ in range(40)]
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, addrs)


def test_one_disagreeing_leaf_keeps_pairs(compiled):
    """A /16 inside a /8 of lower value: first (the /8's) and specific (the
    /16's) differ there, so the whole trie keeps Pairs."""
    agreeing = [(10 << 24, 8, 5), (11 << 24, 8, 6)]
    assert storage(compiled, compiled.PrefixTable(4, agreeing)) == (4, 7)
    table = compiled.PrefixTable(4, agreeing + [((10 << 24) | (1 << 16), 16, 9)])
    assert storage(compiled, table) == (8, 3)
    assert table.first_match("10.1.2.3") == 5 and table.most_specific("10.1.2.3") == 9


def runs_of(count: int, slots: int) -> list[int]:
    """Slot values in ``count`` runs of nearly equal length."""
    return [i * count // slots for i in range(slots)]


@pytest.mark.parametrize("stored", ["values", "pairs"])
@pytest.mark.parametrize("runs", [6, 7, 8, 9, 64], ids=lambda n: f"{n}-runs")
def test_a_nodes_own_leaves_and_the_next(compiled, runs, stored):
    """One 6-bit Node with ``runs`` leaf runs: 64 /14s under 10.0.0.0/8.
    Under a /8 of higher value every leaf agrees (values: 7 in the node's
    line); under one of value 0 none does (Pairs: 3)."""
    anchor = 10 << 24
    values = [v + 1 for v in runs_of(runs, 64)]
    cover = 999 if stored == "values" else 0
    entries = [(anchor | (i << 18), 14, v) for i, v in enumerate(values)] + [(anchor, 8, cover)]
    table = compiled.PrefixTable(4, entries)
    assert storage(compiled, table) == ((4, 7) if stored == "values" else (8, 3))
    addrs = [net | 0x1234 for net, _, _ in entries[:64]]
    assert [table.most_specific(a) for a in addrs] == values
    assert [table.first_match(a) for a in addrs] == [min(v, cover) for v in values]
    buf = b"".join(a.to_bytes(4, "big") for a in addrs)
    assert list(table.most_specific_batch(buf)) == values
    assert list(table.first_match_batch(buf)) == [min(v, cover) for v in values]


@pytest.mark.parametrize("stored", ["values", "pairs"])
@pytest.mark.parametrize("runs", [11, 12, 13, 256], ids=lambda n: f"{n}-runs")
def test_a_wide_nodes_own_leaves_and_the_next(compiled, runs, stored):
    """One WideNode with ``runs`` leaf runs (values: 12 in its lines)."""
    anchor = 0x2001_0DB8 << 96
    values = [v + 1 for v in runs_of(runs, 256)]
    cover = 999 if stored == "values" else 0
    entries = [(anchor | (i << 88), 40, v) for i, v in enumerate(values)] + [(anchor, 32, cover)]
    table = compiled.PrefixTable(6, entries)
    assert compiled._trie_shape(table)["wide"]
    assert storage(compiled, table) == ((4, 12) if stored == "values" else (8, 6))
    addrs = [net | 7 for net, _, _ in entries[:256]]
    assert [table.most_specific(a) for a in addrs] == values
    buf = b"".join(a.to_bytes(16, "big") for a in addrs)
    assert list(table.first_match_batch(buf)) == [min(v, cover) for v in values]


@pytest.mark.parametrize("family", [4, 6])
def test_big_disjoint_tables(compiled, family):
    """Thousands of disjoint prefixes side by side, as tor-geoipdb's ranges
    are: most /24s of a /11 (IPv6: /60s of a /47), some of the missing ones
    split into longer prefixes, and short prefixes elsewhere -- an 18-bit top
    level with leaf runs of its own and 6-bit Nodes (IPv6: a 16-bit one and
    wide nodes)."""
    rng = random.Random(family)
    bits = BITS[family]
    anchor, alen, plen = (10 << 24, 11, 24) if family == 4 else (0x2001_0DB8_0040 << 80, 47, 60)
    step = 1 << (bits - plen)
    raw = []
    for i in range(1 << (plen - alen)):
        net = anchor | (i * step)
        if rng.random() < 0.7:
            raw.append((net, plen))
        elif rng.random() < 0.5:
            longer = plen + rng.randrange(1, 5)
            raw += [(net | (k << (bits - longer)), longer) for k in range(1 << (longer - plen)) if rng.random() < 0.6]
    for _ in range(300):
        short = rng.randrange(12, 19) if family == 4 else rng.randrange(20, 33)
        raw.append((rng.getrandbits(bits) & mask(bits, short), short))
    entries = disjoint(family, raw, [rng.randrange(2**31 - 1) for _ in raw])
    assert len(entries) >= 4096
    table = compiled.PrefixTable(family, entries)
    shape = compiled._trie_shape(table)
    assert shape["leaf_bytes"] == 4 and not shape["compressed"], shape
    assert shape["top_bits"] == (18 if family == 4 else 16), shape
    addrs = (probes(family, entries, rng) + [rng.getrandbits(bits) for _ in range(1000)]
             + [anchor | rng.getrandbits(bits - alen) for _ in range(3000)])
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, addrs)


def test_compressed_tables_with_one_value_per_leaf(compiled):
    """Lone /48s far apart: a path-compressed trie whose nodes answer a
    skipped-bits miss from their near area's first int32."""
    rng = random.Random(48)
    entries = disjoint(6, [((0x2 << 124 | rng.getrandbits(124)) & mask(128, 48), 48) for _ in range(600)],
                       list(range(600)))
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["compressed"] and shape["skipping_nodes"] and shape["leaf_bytes"] == 4, shape
    addrs = probes(6, entries, rng) + [rng.getrandbits(128) for _ in range(500)]
    check_against_twin(table, _core_py.PrefixTable(6, entries), 6, addrs)
