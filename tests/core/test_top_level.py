"""The compiled trie's top level, against the twin.

The top level is one wide node of 2**dp slots (8, 16, 18, or 22 bits), its
bit vectors cut into 64-slot words that carry the counts of top nodes and
leaf runs before them (``TopWord`` in ``ext/acl/_core.pxd``).  A slot's node
or leaf index is a word's count plus a popcount, so what can go wrong is at
the words' edges: a top node in a word's first or last slot, a run of equal
leaves that starts in one word and covers the next ones entirely (a word
with no run of its own), the first and last slot of the table.  These
tables put prefixes exactly there, for each top size, and compare every
lookup with the twin, single and batch.
"""

from __future__ import annotations

import random

import pytest

from acl import _core_py
from tests.conftest import load_impl
from tests.core.strategies import BITS, mask
from tests.core.test_path_compression import check_against_twin, sparse_entries


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


def edge_entries(family: int, dp: int, rng: random.Random):
    """Prefixes at the words' edges of a top level of ``dp`` bits."""
    bits = BITS[family]
    slots = 1 << dp

    def net(slot: int) -> int:
        return slot << (bits - dp)

    entries = []
    # a top node in each word's first and last slots, and the table's ends
    for slot in {0, 1, 62, 63, 64, 65, 127, 128, 191, 192, slots - 65, slots - 64, slots - 1}:
        entries.append((net(slot) | (rng.getrandbits(2) << (bits - dp - 2)), dp + 2, rng.randrange(100)))
    # one value over slots 32..223: a run starting mid-word 0 that covers
    # words 1 and 2 whole (no run starts in them) and ends mid-word 3; the
    # top nodes above interrupt it without ending it
    entries += [(net(32), dp - 5, 500), (net(64), dp - 6, 500), (net(128), dp - 6, 500), (net(192), dp - 5, 500)]
    # runs of one slot each, side by side across the word 4 / word 5 edge
    # (with 256 slots, 318..321 wrap to 62..65: the word 0 / word 1 edge)
    entries += [(net(slot % slots), dp, 600 + slot % 7) for slot in range(318, 322)]
    # a covering prefix for half of the table, so that "nothing" and "something" alternate
    entries.append((net(slots // 2), 1, 700))
    return entries


def slot_probes(family: int, dp: int, entries, rng: random.Random):
    """The first and last address of the first 400 slots, of the last 70,
    and of every slot holding an entry, plus random addresses."""
    bits = BITS[family]
    slots = 1 << dp
    chosen = set(range(min(400, slots))) | set(range(slots - 70, slots))
    chosen |= {n >> (bits - dp) for n, _, _ in entries}
    out = []
    for slot in chosen:
        first = slot << (bits - dp)
        out += [first, first | ((1 << (bits - dp)) - 1)]
    out += [rng.getrandbits(bits) for _ in range(2000)]
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_small_top_level(compiled, family):
    rng = random.Random(family)
    entries = edge_entries(family, 8, rng)
    table = compiled.PrefixTable(family, entries)
    assert compiled._trie_shape(table)["top_bits"] == 8
    check_against_twin(table, _core_py.PrefixTable(family, entries), family,
                       slot_probes(family, 8, entries, rng))


@pytest.mark.parametrize("family", [4, 6])
def test_big_top_level(compiled, family):
    """4096+ prefixes: the 18-bit top level (IPv6: 16 bits, over wide nodes).
    The filler is a dense block of /32s (IPv6: /64s) inside one slot far
    from the edges, so the table is not path-compressed."""
    rng = random.Random(10 + family)
    bits = BITS[family]
    top_bits = 18 if family == 4 else 16
    entries = edge_entries(family, top_bits, rng)
    block = (0x5A5A5 << (bits - 20))
    width = 32 if family == 4 else 64
    entries += [(block | (i << (bits - width)), width, rng.randrange(1000)) for i in range(4200)]
    table = compiled.PrefixTable(family, entries)
    shape = compiled._trie_shape(table)
    assert shape["top_bits"] == top_bits and not shape["compressed"], shape
    assert shape["wide"] == (family == 6), shape
    check_against_twin(table, _core_py.PrefixTable(family, entries), family,
                       slot_probes(family, top_bits, entries, rng))


def test_sparse_big_top_level(compiled):
    """A big path-compressed table takes 22 top bits; edges as above."""
    rng = random.Random(22)
    entries = sparse_entries(6, rng, 6000) + edge_entries(6, 22, rng)
    table = compiled.PrefixTable(6, entries)
    shape = compiled._trie_shape(table)
    assert shape["top_bits"] == 22 and shape["compressed"], shape
    probes = slot_probes(6, 22, entries, rng)
    probes += [net | (rng.getrandbits(128) & ~mask(128, ln)) for net, ln, _ in entries[:3000]]
    check_against_twin(table, _core_py.PrefixTable(6, entries), 6, probes)
