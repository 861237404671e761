"""Wide nodes (dense IPv6 tables) in the compiled trie, against the twin.

A dense IPv6 table -- one that path compression would not pay for -- is
built of ``WideNode``s: 256 slots, one address byte each, their bit vectors
in four words with the counts before each word.  What such a node gets
wrong is at word edges: a run of equal leaves that starts in one word and
goes on in the next (the next word's popcount is 0 there, and the count
before it names the run), children on both sides of an edge, a node's 6th
and 7th leaves (the last in its own lines, the first in ``Trie.leaves``).
These tests build fans of 256 sibling prefixes under one anchor, so that
each slot of a node is its own prefix, with values in long and short runs,
then nest and cover them at every length, and compare every lookup (single
and batch) with the twin.
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


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def fan(anchor: int, length: int, values: list[int]):
    """The 256 prefixes one byte longer than ``anchor``/``length``, in order."""
    return [(anchor | (i << (120 - length)), length + 8, v) for i, v in enumerate(values)]


@st.composite
def dense_sets(draw):
    """A fan of 256 siblings under an anchor of any length 0..120, values in
    runs of random lengths (some crossing the 64-slot words), plus up to 30
    prefixes nested anywhere below the anchor or covering it -- too few to
    make the table sparse (bare paths need one entry in eight)."""
    length = draw(st.integers(0, 120))
    anchor = draw(st.integers(0, (1 << 128) - 1)) & mask(128, length)
    values: list[int] = []
    while len(values) < 256:
        values += [draw(st.integers(0, 2**31 - 2))] * draw(st.sampled_from([1, 1, 2, 5, 63, 64, 65, 130]))
    entries = fan(anchor, length, values[:256])
    for _ in range(draw(st.integers(0, 30))):
        plen = draw(st.integers(0, 128))
        low = draw(st.integers(0, (1 << (128 - length)) - 1)) if length < 128 else 0
        entries.append(((anchor | low) & mask(128, plen), plen, draw(st.integers(0, 300))))
    return entries


@settings(max_examples=60, deadline=None)
@given(entries=dense_sets(), seed=st.integers(0, 2**32))
def test_dense_ipv6_tables_are_wide_and_agree(compiled, entries, seed):
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["wide"] and not shape["compressed"], shape
    assert shape["node_bytes"] == 128 and shape["nodes_aligned"], shape
    rng = random.Random(seed)
    addrs = probes(6, entries, rng) + [rng.getrandbits(128) for _ in range(50)]
    check_against_twin(table, _core_py.PrefixTable(6, entries), 6, addrs)


@pytest.mark.parametrize("leaves", [5, 6, 7, 12, 256], ids=lambda n: f"{n}-runs")
def test_a_nodes_own_leaves_and_the_next(compiled, leaves):
    """A node with ``leaves`` runs: 6 stay in its lines, the rest in
    Trie.leaves; every slot answers its own run's value.  The /32 of value 0
    covering them keeps the leaves Pairs (first 0, specific the run's); see
    test_value_leaves.py for tries of one value per leaf."""
    anchor = 0x2001_0DB8 << 96
    values = [1 + i * leaves // 256 for i in range(256)]
    entries = fan(anchor, 32, values) + [(anchor, 32, 0)]
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["wide"] and shape["leaf_bytes"] == 8 and shape["near_leaves"] == 6, shape
    addrs = [net | 7 for net, _, _ in entries]
    assert [table.most_specific(a) for a in addrs] == values + [values[0]]
    assert list(table.first_match_batch(b"".join(a.to_bytes(16, "big") for a in addrs))) == [0] * 257


def test_big_dense_tables_are_wide_with_a_byte_aligned_top(compiled):
    """4096+ prefixes: a 16-bit top level, so every node is one address byte.
    Every /48 of a /36, values in runs; 400 prefixes nested below them at
    /49 .. /128 and 20 covering them from /0 .. /35."""
    rng = random.Random(6)
    anchor = 0x2A0D_B0 << 104
    value = 0
    entries = []
    for i in range(4096):
        value = value if rng.random() < 0.7 else rng.randrange(10**6)
        entries.append((anchor | (i << 80), 48, value))
    for net, _, _ in rng.sample(entries, 400):
        plen = rng.randrange(49, 129)
        entries.append(((net | rng.getrandbits(80)) & mask(128, plen), plen, rng.randrange(10**6)))
    for _ in range(20):
        plen = rng.randrange(0, 36)
        entries.append((anchor & mask(128, plen), plen, rng.randrange(10**6)))
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["wide"] and shape["top_bits"] == 16, shape
    addrs = probes(6, entries, rng) + [anchor | rng.getrandbits(92) for _ in range(2000)]
    check_against_twin(table, _core_py.PrefixTable(6, entries), 6, addrs)
