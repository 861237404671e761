"""Both cores against the brute-force ``ipaddress`` oracle, on generated sets.

Every method is checked on every generated case: first_match, most_specific
(single and batch), exact, covering, covered_by, entries, len -- and a table
built by ``from_arrays`` answers exactly like one built from tuples.
"""

from __future__ import annotations

import ipaddress
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SLOW
from tests.core.oracle import Oracle
from tests.core.strategies import BITS, addresses, mask, prefix_sets

FAMILIES = [4, 6]
# ACL_SLOW=1 runs ten times the examples.
EXAMPLES = 400 if SLOW else 40
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def packed(family, addrs):
    width = BITS[family] // 8
    return b"".join(a.to_bytes(width, "big") for a in addrs)


def from_arrays(core, family, entries):
    width = BITS[family] // 8
    nets = b"".join(n.to_bytes(width, "big") for n, _, _ in entries)
    lens = bytes(ln for _, ln, _ in entries)
    return core.PrefixTable.from_arrays(family, nets, lens, array("i", [v for _, _, v in entries]))


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_lookups_match_the_oracle(core, family, data):
    entries = data.draw(prefix_sets(family))
    addrs = data.draw(addresses(family, entries))
    oracle = Oracle(family, entries)
    for table in (core.PrefixTable(family, entries), from_arrays(core, family, entries)):
        first = [oracle.first_match(a) for a in addrs]
        specific = [oracle.most_specific(a) for a in addrs]
        assert [table.first_match(a) for a in addrs] == first
        assert [table.most_specific(a) for a in addrs] == specific
        buf = packed(family, addrs)
        assert list(table.first_match_batch(buf)) == first
        assert list(table.most_specific_batch(buf)) == specific
        for a in addrs:
            assert table.covering(a) == oracle.covering(a)
        assert table.entries() == oracle.entries()
        assert len(table) == len(oracle.best)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_prefix_queries_match_the_oracle(core, family, data):
    entries = data.draw(prefix_sets(family))
    bits = BITS[family]
    table = core.PrefixTable(family, entries)
    oracle = Oracle(family, entries)
    queries = [(n, ln) for n, ln, _ in entries]
    # Prefixes that are absent, shorter or longer than the present ones.
    for _ in range(data.draw(st.integers(0, 8))):
        ln = data.draw(st.integers(0, bits))
        queries.append((data.draw(st.integers(0, (1 << bits) - 1)) & mask(bits, ln), ln))
    for n, ln, _ in entries:
        for other in (ln - 1, ln + 1, 0):
            if 0 <= other <= bits:
                queries.append((n & mask(bits, other), other))
    for n, ln in queries:
        assert table.exact(n, ln) == oracle.exact(n, ln), (n, ln)
        assert table.covered_by(n, ln) == oracle.covered_by(n, ln), (n, ln)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_every_address_form_gives_the_same_answer(core, family, data):
    entries = data.draw(prefix_sets(family, max_size=10))
    table = core.PrefixTable(family, entries)
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    for a in data.draw(addresses(family, entries)):
        ip = make(a)
        forms = [a, str(ip), ip, ip.packed, bytearray(ip.packed), memoryview(ip.packed), ip.exploded]
        assert len({table.first_match(f) for f in forms}) == 1
        assert len({table.most_specific(f) for f in forms}) == 1
        assert {core.parse_address(f, family) for f in forms} == {a}
    # Prefix networks in every form too.
    for n, ln, _ in entries:
        assert table.exact(str(make(n)), ln) == table.exact(make(n).packed, ln) == table.exact(n, ln)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_into_caller_buffers(core, family):
    bits = BITS[family]
    entries = [(0, 0, 9), (1 << (bits - 1), 1, 3), ((1 << bits) - 1, bits, 1)]
    table = core.PrefixTable(family, entries)
    addrs = [0, 1 << (bits - 1), (1 << bits) - 1, (1 << bits) - 2]
    buf = packed(family, addrs)
    want_first, want_specific = [9, 3, 1, 3], [9, 3, 1, 3]
    for out in (array("i", [7] * 6), memoryview(bytearray(24)).cast("i"), memoryview(array("i", [0] * 4))):
        assert table.first_match_batch(buf, out) is out
        assert list(memoryview(out).cast("B").cast("i"))[:4] == want_first
        table.most_specific_batch(memoryview(buf), out)
        assert list(memoryview(out).cast("B").cast("i"))[:4] == want_specific
    # Any contiguous buffer of the right byte length is accepted.
    assert list(table.first_match_batch(array("B", buf))) == want_first
    assert list(table.first_match_batch(bytearray(buf))) == want_first
    assert list(table.first_match_batch(b"")) == []
    # Entries past the batch are left alone.
    out = array("i", [7] * 6)
    table.first_match_batch(buf, out)
    assert list(out[4:]) == [7, 7]


@pytest.mark.parametrize("family", FAMILIES)
def test_large_random_table_against_the_twin(core, family):
    """Thousands of prefixes (so the big top level, 18 or 20 bits, is used) against the twin."""
    import random

    from acl import _core_py

    rng = random.Random(family)
    bits = BITS[family]
    entries = []
    for _ in range(6000):
        ln = rng.choice([0, 1, 8, 12, 16, 17, 20, 22, 23, 24, 28, 29, 32] if family == 4 else
                        [0, 3, 16, 22, 28, 32, 34, 40, 47, 48, 52, 64, 100, 127, 128])
        net = (rng.getrandbits(bits) & ~((1 << (bits - 8)) - 1) | rng.getrandbits(bits - 8)
               if rng.random() < 0.5 else rng.getrandbits(bits))
        if rng.random() < 0.7:
            net = (0xC0 << (bits - 8)) | (net >> 8)   # crowd one /8 so prefixes nest
        entries.append((net & mask(bits, ln), ln, rng.randrange(10000)))
    table = core.PrefixTable(family, entries)
    twin = _core_py.PrefixTable(family, entries)
    addrs = [rng.getrandbits(bits) for _ in range(3000)]
    addrs += [(0xC0 << (bits - 8)) | rng.getrandbits(bits - 8) for _ in range(3000)]
    addrs += [n | rng.getrandbits(bits - ln) if ln < bits else n for n, ln, _ in entries[:3000]]
    buf = packed(family, addrs)
    assert list(table.first_match_batch(buf)) == [twin.first_match(a) for a in addrs]
    assert list(table.most_specific_batch(buf)) == [twin.most_specific(a) for a in addrs]
    assert [table.first_match(a) for a in addrs[:2000]] == list(twin.first_match_batch(buf))[:2000]
    assert table.entries() == twin.entries()
    n, ln, _ = entries[0]
    assert table.covered_by(n & mask(bits, 4), 4) == twin.covered_by(n & mask(bits, 4), 4)
