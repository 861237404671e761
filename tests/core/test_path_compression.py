"""Path compression in the compiled trie, against the twin.

A table whose prefixes sit at the ends of long bare paths (IPv6 routing: a /48
alone under its top slot) is built with nodes that skip the bits their whole
subtree shares; a dense one (tor-geoipdb) without, and its batches take the
walk without the skip check.  The choice is ``bare_paths_pay`` in
``ext/acl/_core.pyx``.  These tests build both kinds on purpose, check which
one was built, and compare every lookup with the twin -- above all addresses
that agree with a prefix except in one skipped bit, which must get what
covers the skipping node, not the prefix below it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import _core_py
from tests.conftest import load_impl
from tests.core.oracle import Oracle
from tests.core.strategies import BITS, mask
from tests.core.test_oracle import packed


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def sparse_entries(family: int, rng: random.Random, count: int):
    """Lone long prefixes, a few shorter ones holding some of them, and bare
    paths longer than one node can skip (a /128 or /32 alone under a /8)."""
    bits = BITS[family]
    lengths = [48, 48, 56, 64, 100, 128] if family == 6 else [24, 27, 29, 32]
    entries = []
    for _ in range(count):
        ln = rng.choice(lengths)
        net = rng.getrandbits(bits) & mask(bits, ln)
        entries.append((net, ln, rng.randrange(1000)))
    for net, ln, _ in rng.sample(entries, count // 10):
        short = ln - rng.randrange(4, ln // 2)
        entries.append((net & mask(bits, short), short, rng.randrange(1000)))
    entries.append((0, 0, 999))
    return entries


def probes(family: int, entries, rng: random.Random):
    """Per prefix: an address inside, its neighbours just outside, and one
    that differs from it in a single bit of its network part."""
    bits = BITS[family]
    top = (1 << bits) - 1
    out = []
    for net, ln, _ in entries:
        last = net | (top >> ln)
        out += [a for a in (net, last, net - 1, last + 1) if 0 <= a <= top]
        if ln:
            out.append(net ^ (1 << (bits - 1 - rng.randrange(ln))))
    return out


def check_against_twin(table, twin, family, addrs):
    buf = packed(family, addrs)
    assert list(table.first_match_batch(buf)) == [twin.first_match(a) for a in addrs]
    assert list(table.most_specific_batch(buf)) == [twin.most_specific(a) for a in addrs]
    assert [table.first_match(a) for a in addrs] == list(twin.first_match_batch(buf))
    assert [table.most_specific(a) for a in addrs] == list(twin.most_specific_batch(buf))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("count", [300, 6000], ids=["small-top", "big-top"])
def test_sparse_tables_are_compressed_and_agree(compiled, family, count):
    rng = random.Random(count * family)
    entries = sparse_entries(family, rng, count)
    table = compiled.PrefixTable(family, entries)
    shape = compiled._trie_shape(table)
    # Lone prefixes under the top level are Lones, the others skipping nodes.
    assert shape["compressed"] and shape["skipping_nodes"] + shape["lone_tops"] > len(entries) // 4, shape
    assert shape["node_bytes"] == 64 and shape["nodes_aligned"], shape   # one cache line each
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, probes(family, entries, rng))


@pytest.mark.parametrize("family", [4, 6])
def test_dense_tables_are_not_compressed_and_agree(compiled, family):
    """Every /24 of a /12 (IPv6: every /60 of a /48) side by side, some
    split further: no prefix ends a bare path, so no node skips."""
    rng = random.Random(family)
    bits = BITS[family]
    base = (0xC0A << (bits - 12)) if family == 4 else (0x2001_0DB8_0000 << (bits - 48))
    width = 24 if family == 4 else 60
    span = width - (12 if family == 4 else 48)
    entries = [(base | (i << (bits - width)), width, rng.randrange(1000)) for i in range(1 << span)]
    for net, ln, _ in rng.sample(entries, 200):
        entries.append((net | (1 << (bits - ln - 1)), ln + 1, rng.randrange(1000)))
    table = compiled.PrefixTable(family, entries)
    shape = compiled._trie_shape(table)
    assert not shape["compressed"] and shape["skipping_nodes"] == 0, shape
    assert shape["nodes_aligned"], shape
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, probes(family, entries, rng))


def test_a_bare_path_longer_than_a_skip_takes_several_nodes(compiled):
    """A lone /128 under its top slot: 110 bare bits, more than one node may
    skip (32), so the path is a chain of skipping nodes -- and an address
    that leaves it at any depth gets the covering /16's value."""
    net = 0x2001_0DB8_0000_0000_0000_0000_0000_0001
    entries = [(net, 128, 1), (net & mask(128, 16), 16, 2)]
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["compressed"] and shape["skipping_nodes"] >= 3, shape
    assert table.most_specific(net) == 1 and table.first_match(net) == 1
    for bit in range(16, 128):
        other = net ^ (1 << (127 - bit))
        assert table.most_specific(other) == 2, bit
        assert list(table.most_specific_batch(other.to_bytes(16, "big"))) == [2], bit


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_skipping_node_answers_both_values_of_what_covers_it(compiled, data):
    """Two nested prefixes at the top level (the inner one exactly one top
    slot), the inner of the higher value (first != specific there), and
    below them two sibling prefixes that
    share a long bare path, of lower values: every leaf of the skipping node
    holding them has first == specific, but what an address that leaves its
    skipped bits gets -- its near[0] -- does not, so the trie must keep
    Pairs.  Lone prefixes elsewhere make it path-compressed."""
    family = data.draw(st.sampled_from([4, 6]))
    bits = BITS[family]
    inner_len = 8      # one slot of a small table's top level: its node inherits the Pair
    outer_len = data.draw(st.integers(0, inner_len - 1))
    inner = data.draw(st.integers(0, (1 << bits) - 1)) & mask(bits, inner_len)
    low = data.draw(st.integers(0, 100))
    entries = [(inner & mask(bits, outer_len), outer_len, low + 1),
               (inner, inner_len, low + 1 + data.draw(st.integers(1, 100)))]
    # The siblings: one prefix of `length`, split in two (bits past the
    # skip limit make a chain of skipping nodes).
    length = data.draw(st.integers(inner_len + 8, bits))
    pair = (inner | data.draw(st.integers(0, (1 << (bits - inner_len)) - 1))) & mask(bits, length - 1)
    values = data.draw(st.lists(st.integers(0, low), min_size=2, max_size=2))
    entries += [(pair, length, values[0]), (pair | (1 << (bits - length)), length, values[1])]
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(4):     # lone host routes outside the inner prefix
        host = rng.getrandbits(bits)
        if host & mask(bits, inner_len) != inner:
            entries.append((host, bits, rng.randrange(1000)))
    table = compiled.PrefixTable(family, entries)
    shape = compiled._trie_shape(table)
    assert shape["compressed"] and shape["skipping_nodes"] >= 1, shape   # the premise
    oracle = Oracle(family, entries)
    addrs = probes(family, entries, rng) + [inner | rng.getrandbits(bits - inner_len)
                                            for _ in range(40)]
    buf = packed(family, addrs)
    assert list(table.most_specific_batch(buf)) == [oracle.most_specific(a) for a in addrs]
    assert list(table.first_match_batch(buf)) == [oracle.first_match(a) for a in addrs]
    assert [table.most_specific(a) for a in addrs] == [oracle.most_specific(a) for a in addrs]
    assert [table.first_match(a) for a in addrs] == [oracle.first_match(a) for a in addrs]
