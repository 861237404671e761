"""Hypothesis strategies for prefix sets and addresses.

Prefix sets mix every length with the edges (/0, /1, full length) favoured,
prefixes nested inside earlier ones, duplicates with other values, and
addresses at and just outside prefix boundaries -- the places leaf pushing and
stride boundaries get wrong.
"""

from __future__ import annotations

from hypothesis import strategies as st

BITS = {4: 32, 6: 128}


def mask(bits: int, length: int) -> int:
    return ((1 << length) - 1) << (bits - length)


@st.composite
def prefix_sets(draw, family: int, max_size: int = 40):
    bits = BITS[family]
    edge = st.sampled_from([0, 1, bits - 1, bits])
    # Stride boundaries of the trie (16 + 6k) and their neighbours.
    stride = st.sampled_from(sorted({min(bits, x) for k in range(20) for x in (16 + 6 * k - 1, 16 + 6 * k, 16 + 6 * k + 1)} | {7, 8, 9, 15}))
    lengths = st.one_of(st.integers(0, bits), edge, stride)
    values = st.integers(0, 50) | st.integers(0, 2**31 - 2)
    # A few "anchors" keep random prefixes near each other, so they overlap.
    anchors = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=4))
    out: list[tuple[int, int, int]] = []
    for _ in range(draw(st.integers(0, max_size))):
        kind = draw(st.sampled_from(["anchor", "random", "nested", "duplicate"]))
        length = draw(lengths)
        if kind == "random" or not out and kind in ("nested", "duplicate"):
            base = draw(st.integers(0, (1 << bits) - 1))
        elif kind == "anchor":
            base = draw(st.sampled_from(anchors)) ^ draw(st.integers(0, 255))
        else:
            net, plen, _ = draw(st.sampled_from(out))
            if kind == "duplicate":
                out.append((net, plen, draw(values)))
                continue
            base = net | draw(st.integers(0, (1 << (bits - plen)) - 1)) if plen < bits else net
            length = draw(st.integers(plen, bits))
        out.append((base & mask(bits, length), length, draw(values)))
    return out


@st.composite
def addresses(draw, family: int, prefixes):
    """Addresses: random, and each prefix's first, last and neighbours."""
    bits = BITS[family]
    top = (1 << bits) - 1
    out = draw(st.lists(st.integers(0, top), max_size=10))
    for net, length, _ in prefixes:
        last = net | (top >> length)
        out.extend(a for a in (net, last, net - 1, last + 1) if 0 <= a <= top)
        if length < bits:
            out.append(net | draw(st.integers(0, (1 << (bits - length)) - 1)))
    return out
