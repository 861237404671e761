"""The live tests' port areas (tests/conftest.py PORTS) stay apart and clear of
the kernel's ephemeral range: a client socket handed a port a live test was
about to listen on made rare, unrepeatable failures."""

from itertools import pairwise
from pathlib import Path

from tests.conftest import PORTS

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_port_areas_do_not_overlap():
    spans = sorted(PORTS.values())
    for (_, end), (start, _) in pairwise(spans):
        assert end <= start, spans


def test_port_areas_are_outside_the_ephemeral_range():
    low, high = map(int, EPHEMERAL.read_text().split())
    inside = {area: span for area, span in PORTS.items()
              if span[0] <= high and span[1] - 1 >= low}
    assert not inside, f"ephemeral ports {low}-{high} overlap {inside}"
