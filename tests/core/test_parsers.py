"""The compiled core's own text parsers and batch walk against the twin.

``ext/acl/_core.pyx`` reads the common address texts itself: a dotted quad
with a branch-free parser (dot/digit masks), and IPv6 made of hex groups and
at most one ``::`` with a hand-written scanner; anything they do not accept
goes to inet_pton and then to the twin.  A parser that accepts must accept
exactly what ``ipaddress`` accepts, with the same value, so the texts here
are valid addresses in every spelling ``ipaddress`` allows, then mutated one
or two characters at a time into the near-misses a scanner gets wrong.  Both
cores must give the same outcome (value, or exception and message), and an
accepted text must be the address ``ipaddress`` reads.

The batch walk visits, per level, only the lanes still at a node (a list
rebuilt without branches); the batch tests mix shallow and deep lookups in
one call, over more addresses than one group of lanes.
"""

from __future__ import annotations

import ipaddress
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SLOW, load_impl
from tests.core.oracle import Oracle
from tests.core.strategies import BITS, addresses, mask, prefix_sets
from tests.core.test_errors import outcome, same

EXAMPLES = 3000 if SLOW else 400
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def cores():
    return load_impl("compiled", "acl._core", "acl._core_py"), load_impl("pure", "acl._core", "acl._core_py")


def v6_spellings(value: int, rng: random.Random) -> list[str]:
    """Spellings ``ipaddress`` accepts: compressed at any run of zero groups
    (or not at all), groups with and without leading zeros, either case."""
    groups = [(value >> (16 * (7 - i))) & 0xFFFF for i in range(8)]
    out = [str(ipaddress.IPv6Address(value)), ipaddress.IPv6Address(value).exploded]
    for _ in range(3):
        texts = [format(g, "x").zfill(rng.choice([1, 2, 3, 4])) for g in groups]
        runs = [(i, j) for i in range(8) for j in range(i + 1, 9) if all(g == 0 for g in groups[i:j])]
        if runs and rng.random() < 0.8:
            i, j = rng.choice(runs)
            text = ":".join(texts[:i]) + "::" + ":".join(texts[j:])
        else:
            text = ":".join(texts)
        out.append(text.upper() if rng.random() < 0.3 else text)
    return out


def mutate(text: str, rng: random.Random, alphabet: str) -> str:
    chars = list(text)
    for _ in range(rng.choice([1, 1, 2])):
        pos = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4 or not chars:
            chars.insert(pos, rng.choice(alphabet))
        elif op < 0.7:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def check_text(cores, text: str, family: int) -> None:
    result = same(cores, lambda c: c.parse_address(text, family))
    if result[0] == "ok":
        make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        assert result[1] == int(make(text)), text


# Values with long zero runs (where '::' goes) as well as dense ones.
V6_VALUES = st.one_of(
    st.integers(0, 2**128 - 1),
    st.builds(lambda v, s: (v << s) & (2**128 - 1), st.integers(0, 2**64 - 1), st.sampled_from([0, 16, 48, 64, 96])),
    st.sampled_from([0, 1, 2**128 - 1, 1 << 127, 0xFFFF << 32]),
)


@SETTINGS
@given(value=V6_VALUES, seed=st.integers(0, 2**32))
def test_ipv6_text_spellings_and_near_misses(cores, value, seed):
    rng = random.Random(seed)
    for text in v6_spellings(value, rng):
        check_text(cores, text, 6)
        check_text(cores, text, 4)
        for _ in range(4):
            check_text(cores, mutate(text, rng, "0123456789abcdefABCDEFg:.% \x00"), 6)


def test_ipv6_texts_in_bulk_on_both_read_paths(cores):
    """The compiled reader reads 48 bytes in place when they lie in the
    text's page, and copies the text otherwise (near a page end): 20,000
    texts, placed wherever the allocator puts them, cover both, and bytes
    after the text (whatever lies there) must not change the answer."""
    compiled = cores[0]
    rng = random.Random(6)
    texts = []
    for _ in range(4000):
        value = rng.getrandbits(128) >> rng.choice([0, 0, 16, 64]) << rng.choice([0, 0, 32, 80])
        texts += v6_spellings(value & (2**128 - 1), rng)
    header = sys.getsizeof("") - 1       # a compact ASCII str's data follows its header
    near_end = sum(1 for t in texts if (id(t) + header) % 4096 > 4096 - 48)
    assert near_end > 20, near_end       # the copying path ran too
    for text in texts:
        assert compiled.parse_address(text, 6) == int(ipaddress.IPv6Address(text)), text


OCTET = st.one_of(st.integers(0, 255).map(str), st.text("0123456789", min_size=0, max_size=4))


@SETTINGS
@given(octets=st.lists(OCTET, min_size=1, max_size=6), sep=st.sampled_from([".", ".", ".", ":", ",", ". "]),
       seed=st.integers(0, 2**32))
def test_dotted_quad_near_misses(cores, octets, sep, seed):
    rng = random.Random(seed)
    text = sep.join(octets)
    check_text(cores, text, 4)
    check_text(cores, text, 6)
    for _ in range(4):
        check_text(cores, mutate(text, rng, "0123456789.x \x00:"), 4)


@SETTINGS
@given(value=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**32))
def test_dotted_quad_every_width(cores, value, seed):
    """Valid quads of every octet width (7..15 characters), then one change."""
    rng = random.Random(seed)
    text = str(ipaddress.IPv4Address(value))
    check_text(cores, text, 4)
    check_text(cores, mutate(text, rng, "0123456789.x\x00"), 4)


def test_single_lookups_take_the_address_positionally(cores):
    """The compiled lookups are one-argument C methods (their wording of a
    wrong call is CPython's, not the twin's); both reject the same calls."""
    for core in cores:
        table = core.PrefixTable(4, [(0, 0, 1)])
        for method in (table.first_match, table.most_specific):
            assert method("1.2.3.4") == 1
            for call in (lambda m=method: m(addr="1.2.3.4"), lambda m=method: m(),
                         lambda m=method: m("1.2.3.4", "1.2.3.5")):
                result = outcome(call)
                assert result[0] == "raised" and result[1] is TypeError, (core, result)


@pytest.mark.parametrize("family", [4, 6])
@settings(max_examples=EXAMPLES // 8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batch_mixes_depths_across_groups(cores, family, data):
    """Hundreds of addresses per call -- several groups of lanes -- that end
    at the top level, at shallow and at the deepest nodes, in random order."""
    compiled, _ = cores
    entries = data.draw(prefix_sets(family, max_size=60))
    bits = BITS[family]
    # Host routes and long prefixes make the deepest walks.
    for net, _, value in entries[:8]:
        entries.append((net, bits, value % 1000 + 1))
        entries.append((net & mask(bits, bits - 3), bits - 3, value % 1000 + 2))
    addrs = data.draw(addresses(family, entries))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    addrs = [rng.choice(addrs) for _ in range(300)] if addrs else []
    addrs += [rng.getrandbits(bits) for _ in range(100)]
    rng.shuffle(addrs)
    table = compiled.PrefixTable(family, entries)
    oracle = Oracle(family, entries)
    buf = b"".join(a.to_bytes(bits // 8, "big") for a in addrs)
    assert list(table.first_match_batch(buf)) == [oracle.first_match(a) for a in addrs]
    assert list(table.most_specific_batch(buf)) == [oracle.most_specific(a) for a in addrs]
