"""Lones: top slots that hold one prefix alone.

In a routing table (IPv6: most /48s alone under their 22-bit top slot;
IPv4: most /24s alone under their 18-bit one) the compiled trie puts a
16-byte ``Lone`` in place of the Node such a slot would get -- the prefix's
bits below the top level, its value, and what covers the slot -- four to a
cache line (``pack_lone_tops`` in ``ext/acl/_core.pyx``), in path-compressed
tries and in dense ones, when at least a quarter of the top nodes qualify.
What it can get wrong: which slots qualify (one prefix, at most 31 bits below
the top level; its block at the start, the end or the middle of the node's
slots), the key's last bit, the painted answer inside (the value, and the
lower of the two firsts), the answer outside, the places of a word's Lones
before its top nodes, the nodes moved behind them (their children's
indexes), the top level's leaves around Lone slots, the quarter, and the
batch walk's separate pass over Lone lanes (its own variant in a dense
trie).  Every lookup, single and batch, is compared with the twin.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import _core_py
from tests.conftest import load_impl
from tests.core.strategies import BITS, mask
from tests.core.test_path_compression import check_against_twin, probes

# Top level bits of the compiled trie (see _core.pyx): 8 below 4096
# prefixes, 22 for a big path-compressed table, 18 for a big dense one.
SMALL_TOP, SPARSE_TOP, DENSE_TOP = 8, 22, 18


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def bit_flips(family: int, entries, top: int = SPARSE_TOP):
    """Per prefix, its network with each of its bits from the top level's
    last on flipped in turn: the Lone's key must compare every one of them."""
    bits = BITS[family]
    out = []
    for net, length, _ in entries:
        out += [net ^ (1 << (bits - 1 - b)) for b in range(max(min(length, top) - 1, 0), length)]
    return out


def lone_entries(family: int, rng: random.Random, slots: int, lengths, top: int):
    """One prefix under each of ``slots`` distinct top slots (of ``top``
    bits), of lengths drawn from ``lengths``; some covered by a shorter
    prefix (above the top level) of a lower or a higher value."""
    bits = BITS[family]
    chosen = rng.sample(range(1 << top), slots)
    entries = []
    for slot in chosen:
        length = rng.choice(lengths)
        net = ((slot << (bits - top)) | rng.getrandbits(bits - top)) & mask(bits, length)
        entries.append((net, length, rng.randrange(100, 1000)))
    for net, _, _ in rng.sample(entries, slots // 5):
        cover = rng.randrange(1, top + 1)
        entries.append((net & mask(bits, cover), cover, rng.choice([rng.randrange(0, 100), rng.randrange(1000, 2000)])))
    return entries


def build(compiled, family, entries):
    table = compiled.PrefixTable(family, entries)
    return table, compiled._trie_shape(table)


@pytest.mark.parametrize("family", [4, 6])
def test_a_sparse_table_keeps_its_lone_prefixes_in_lones(compiled, family):
    """6,000 prefixes alone under their 22-bit top slots (IPv4 /23-/32, IPv6
    /23-/53: 1-31 bits below the top level), a fifth of them covered."""
    rng = random.Random(family)
    last = 32 if family == 4 else SPARSE_TOP + 31
    entries = lone_entries(family, rng, 6000, range(SPARSE_TOP + 1, last + 1), SPARSE_TOP)
    table, shape = build(compiled, family, entries)
    assert shape["compressed"] and shape["top_bits"] == SPARSE_TOP, shape
    # Every lone prefix is a Lone; a cover shares a slot with its prefix
    # only when it is longer than the top level, never here.
    assert shape["lone_tops"] == 6000 and shape["nodes"] == 0, shape
    addrs = probes(family, entries, rng) + bit_flips(family, entries)
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, addrs)


def test_a_lone_prefix_at_most_31_bits_below_the_top_is_a_lone(compiled):
    """The key holds the prefix's bits below the top level and a marker bit
    in 32: a /53 (31 bits below 22) is a Lone, a /54 stays a Node."""
    rng = random.Random(53)
    for length, lones in ((53, 5000), (54, 0)):
        entries = lone_entries(6, rng, 5000, [length], SPARSE_TOP)
        table, shape = build(compiled, 6, entries)
        assert shape["compressed"] and shape["lone_tops"] == lones, (length, shape)
        addrs = probes(6, entries, rng) + bit_flips(6, entries)
        check_against_twin(table, _core_py.PrefixTable(6, entries), 6, addrs)


@pytest.mark.parametrize("family", [4, 6])
def test_lones_and_top_nodes_share_words(compiled, family):
    """Runs of up to 64 neighbouring slots each with a Lone (a word's Lones
    fill several Node places), and, between them, slots holding two or more
    prefixes -- top nodes with children, which move behind the Lones of
    their word -- and slots that are leaves of the top level."""
    rng = random.Random(family * 7)
    bits = BITS[family]
    below = bits - SPARSE_TOP
    entries = []
    # 150 words of 1-64 slots: over 4,096 prefixes, so a big top level.
    for word in rng.sample(range(1 << (SPARSE_TOP - 6)), 150):
        for slot in range(word * 64, word * 64 + rng.randrange(1, 65)):
            base = slot << below
            kind = rng.random()
            if kind < 0.6:
                length = rng.randrange(SPARSE_TOP + 1, min(bits, SPARSE_TOP + 31) + 1)
                entries.append(((base | rng.getrandbits(below)) & mask(bits, length), length, rng.randrange(1000)))
            elif kind < 0.8:
                # A top node: a shorter prefix holding two long ones.
                outer = min(bits - 2, SPARSE_TOP + rng.randrange(2, 10))
                net = (base | rng.getrandbits(below)) & mask(bits, outer)
                entries.append((net, outer, rng.randrange(1000)))
                for _ in range(2):
                    inner = rng.randrange(outer + 1, bits + 1)
                    entries.append(((net | rng.getrandbits(bits - outer)) & mask(bits, inner), inner, rng.randrange(1000)))
            # else: a slot no prefix reaches below the top level
    entries.append((0, 0, 5000))
    table, shape = build(compiled, family, entries)
    assert shape["compressed"] and shape["top_bits"] == SPARSE_TOP, shape
    assert shape["lone_tops"] > 2000 and shape["nodes"] > 500, shape
    addrs = probes(family, entries, rng) + bit_flips(family, entries)
    check_against_twin(table, _core_py.PrefixTable(family, entries), family, addrs)


def test_lones_in_a_trie_of_int32_leaves(compiled):
    """Disjoint lone prefixes (a blocklist's shape): the trie stores one
    int32 per leaf, and its Lones answer both disciplines alike."""
    rng = random.Random(32)
    entries = lone_entries(6, rng, 5000, [40, 44, 48], SPARSE_TOP)[:5000]
    table, shape = build(compiled, 6, entries)
    assert shape["leaf_bytes"] == 4 and shape["lone_tops"] == 5000, shape
    addrs = probes(6, entries, rng) + bit_flips(6, entries)
    check_against_twin(table, _core_py.PrefixTable(6, entries), 6, addrs)


@st.composite
def small_sets(draw, shortest: int = 16, longest: int = 32):
    """IPv4 prefixes of /``shortest``-/``longest`` under distinct /8s (8 top
    bits: a small table) over covers of /0-/8.  A slot holds one prefix, or
    two, or a prefix split into its two halves of one value: then the whole
    prefix has one Pair, different from what painting the halves' value
    over the cover gives when the split prefix's value is lower (not a
    Lone); or two neighbours of one value that straddle a boundary (the
    middle quarters of a prefix: one block, of a Lone's shape, but not
    aligned, so no prefix and no Lone).  Of /16-/32: path-compressed unless most slots' prefixes share
    their first bits (the shrunk examples); of /9-/14, within one node of
    the top level, never."""
    values = st.integers(0, 50) | st.integers(0, 2**31 - 2)
    slots = draw(st.lists(st.integers(0, 255), min_size=1, max_size=40, unique=True))
    entries = []
    for slot in slots:
        kind = draw(st.sampled_from(["one", "one", "two", "split", "straddle"]))
        length = draw(st.integers(shortest, longest - 1 if kind == "split" else longest))
        net = (slot << 24 | draw(st.integers(0, (1 << 24) - 1))) & mask(32, length)
        entries.append((net, length, draw(values)))
        if kind == "two":
            other = draw(st.integers(shortest, longest))
            entries.append(((slot << 24 | draw(st.integers(0, (1 << 24) - 1))) & mask(32, other), other, draw(values)))
        elif kind == "split":
            half = draw(values)
            entries += [(net, length + 1, half), (net | 1 << (31 - length), length + 1, half)]
        elif kind == "straddle":
            # Two neighbours of one value whose union is no prefix: the
            # middle quarters of a /length-2 (shaped like a Lone's block
            # between two runs of the cover, but not aligned).
            length = max(length, 10)
            base = net & mask(32, length - 2)
            half = draw(values)
            entries[-1] = (base | 1 << (32 - length), length, half)
            entries.append((base | 2 << (32 - length), length, half))
    for _ in range(draw(st.integers(0, 4))):
        length = draw(st.integers(0, SMALL_TOP))
        entries.append((draw(st.integers(0, (1 << 32) - 1)) & mask(32, length), length, draw(values)))
    return entries


def lone_bounds(entries, top: int, deepest: int) -> tuple[int, int]:
    """How many IPv4 top slots (of ``top`` bits) must hold a Lone, and how
    many may.  Must: one distinct prefix below the top level, at most
    ``deepest`` bits below it (31 in a path-compressed trie, whose nodes
    skip to it; one node's 6 in a dense one), whose painted Pair differs
    from what covers the slot (else its node has one run and answers as a
    leaf would).  May: any slot with prefixes below the top level (two
    prefixes may still answer as one)."""
    kept: dict[tuple[int, int], int] = {}
    for net, length, value in entries:
        kept[net, length] = min(value, kept.get((net, length), value))
    below: dict[int, list[tuple[int, int]]] = {}
    for (net, length), value in kept.items():
        if length > top:
            below.setdefault(net >> (32 - top), []).append((value, length))
    must = 0
    for slot, values in below.items():
        if len(values) != 1 or values[0][1] - top > deepest:
            continue
        covers = [(length, value) for (net, length), value in kept.items()
                  if length <= top and (slot << (32 - top)) & mask(32, length) == net]
        first = min((v for _, v in covers), default=-1)
        specific = max(covers)[1] if covers else -1
        # Painting changes nothing when the cover already has this value
        # as its specific one and a first no higher.
        value = values[0][0]
        must += not (specific == value and 0 <= first <= value)
    return must, len(below)


@settings(max_examples=200, deadline=None)
@given(entries=small_sets() | small_sets(9, 14), seed=st.integers(0, 2**32 - 1))
def test_small_tables_against_the_twin(compiled, entries, seed):
    table, shape = build(compiled, 4, entries)
    assert shape["top_bits"] == SMALL_TOP, shape
    must, may = lone_bounds(entries, SMALL_TOP, 31 if shape["compressed"] else 6)
    # Built when at least a quarter of the top nodes (``may`` of them)
    # would be Lones; when built, every one that can be is one.
    if must >= may // 4:
        assert must <= shape["lone_tops"] <= may, (must, may, shape)
    else:
        assert shape["lone_tops"] in (0, *range(must, may + 1)), (must, may, shape)
    addrs = probes(4, entries, random.Random(seed)) + bit_flips(4, entries, SMALL_TOP)
    check_against_twin(table, _core_py.PrefixTable(4, entries), 4, addrs)


def test_a_prefix_split_into_halves_of_another_value_is_not_a_lone(compiled):
    """A /40 of value 1 split into two /41s of value 5, under one top slot:
    every address in the /40 gets (first 1, specific 5), one Pair on an
    aligned block -- shaped like a Lone, but a Lone of the /40 with value 5
    would answer first 5.  Beside 5,000 true Lones, so the top level is big."""
    rng = random.Random(41)
    entries = lone_entries(6, rng, 5000, [48], SPARSE_TOP)[:5000]
    used = {net >> (128 - SPARSE_TOP) for net, _, _ in entries}
    slot = next(s for s in range(1 << SPARSE_TOP) if s not in used)
    net = slot << (128 - SPARSE_TOP) | 0xAB << (128 - 40)
    split = [(net, 40, 1), (net, 41, 5), (net | 1 << (127 - 40), 41, 5)]
    table, shape = build(compiled, 6, entries + split)
    assert shape["compressed"] and shape["lone_tops"] == 5000 and shape["nodes"] == 1, shape
    inside = [net, net | 1 << (127 - 40), net | (1 << 88) - 1]
    assert [table.first_match(a) for a in inside] == [1, 1, 1]
    assert [table.most_specific(a) for a in inside] == [5, 5, 5]
    addrs = inside + probes(6, split, rng) + probes(6, entries[:500], rng)
    check_against_twin(table, _core_py.PrefixTable(6, entries + split), 6, addrs)


def dense_entries(rng: random.Random, lone: int, paired: int):
    """IPv4 prefixes of /19-/24 under distinct 18-bit top slots, over /8-/18
    covers (routing v4's shape, too dense to be path-compressed): ``lone``
    slots hold one prefix -- its block at the start, the end or the middle
    of its node's 64 slots -- and ``paired`` slots hold two /24s of
    different values, never a Lone."""
    slots = rng.sample(range(1 << DENSE_TOP), lone + paired)
    below = 32 - DENSE_TOP
    entries = []
    for slot in slots[:lone]:
        length = rng.randrange(DENSE_TOP + 1, 25)
        entries.append((((slot << below) | rng.getrandbits(below)) & mask(32, length), length, rng.randrange(100, 1000)))
    for slot in slots[lone:]:
        for place in rng.sample(range(64), 2):
            entries.append(((slot << below) | place << 8, 24, rng.randrange(100, 1000)))
    for _ in range((lone + paired) // 5):
        cover = rng.randrange(8, DENSE_TOP + 1)
        value = rng.choice([rng.randrange(0, 100), rng.randrange(1000, 2000)])
        entries.append((rng.getrandbits(32) & mask(32, cover), cover, value))
    return entries


def test_a_dense_table_keeps_its_lone_prefixes_in_lones(compiled):
    """8,000 /19-/24s alone under their 18-bit top slots, among covers: every
    one a Lone, in a trie built without path compression."""
    rng = random.Random(24)
    entries = dense_entries(rng, 8000, 0)
    table, shape = build(compiled, 4, entries)
    assert not shape["compressed"] and shape["top_bits"] == DENSE_TOP, shape
    assert shape["lone_tops"] == 8000 and shape["nodes"] == 0, shape
    addrs = probes(4, entries, rng) + bit_flips(4, entries, DENSE_TOP)
    check_against_twin(table, _core_py.PrefixTable(4, entries), 4, addrs)


@pytest.mark.parametrize(("lone", "lones"), [(1000, 0), (1400, 1400)])
def test_lones_are_built_when_a_quarter_of_the_top_nodes_would_be(compiled, lone, lones):
    """4,000 top nodes holding two /24s each, and 1,000 lone /24s (under a
    quarter of the 5,000 top nodes: no Lones, the dense batch walk without
    their work) or 1,400 (over a quarter of 5,400: all Lones)."""
    rng = random.Random(lone)
    entries = dense_entries(rng, lone, 4000)
    table, shape = build(compiled, 4, entries)
    assert not shape["compressed"] and shape["lone_tops"] == lones, shape
    assert shape["nodes"] == 4000 + lone - lones, shape
    addrs = probes(4, entries, rng) + bit_flips(4, entries, DENSE_TOP)
    check_against_twin(table, _core_py.PrefixTable(4, entries), 4, addrs)
