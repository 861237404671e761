"""The limits core: limit checks per second and the bounded source table.

What is measured (one run, inputs built before any timing):

* **batch, 1M distinct sources**: ``LimitState.check_batch`` (the ``nogil``
  loop over a packed buffer of 16-byte sources and int32 service slots,
  ``now`` passed in) over 1,000,000 distinct sources spread over 4 services
  whose per_source limit and token bucket make every check look up (and,
  for a new source, insert into) the source table.  Reported: checks/s and
  the table's memory.  Target: >= 20 million checks/s on one core.
* **flood, 10M distinct sources** into a table bounded at 1M entries
  (32 MiB): the table never grows -- tracked sources stay <= capacity,
  evictions count the rest, and the process RSS grows by less than the
  configured bound plus the input buffer.
* **peers in the same run**: the pure-Python twin (the same algorithm
  without the core) and the per-call API of the compiled core, on the same
  kind of input; the ratios are printed and kept in ``extra_info``.
  (xinetd itself has no callable check: it counts in its accept loop.)

Run: ``python -m pytest bench/bench_limits.py --benchmark-only -s``.
"""

from __future__ import annotations

import array
import resource
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import acl._limits_py as twin  # noqa: E402

try:
    import acl._limits as compiled  # noqa: E402
except ImportError:                   # pragma: no cover - reported as a skip
    compiled = None

N_SOURCES = 1_000_000
FLOOD = 10_000_000
FLOOD_BOUND = 1 << 20
SERVICES = 4
TWIN_SAMPLE = 20_000
NOW = 1_700_000_000.5
_RESULTS: dict[str, float] = {}


def _sources(n: int, start: int = 0) -> bytes:
    """n distinct IPv4-mapped sources, packed 16 bytes each."""
    import numpy as np

    buf = np.zeros((n, 16), dtype=np.uint8)
    buf[:, 10] = 0xFF
    buf[:, 11] = 0xFF
    ids = np.arange(start, start + n, dtype=np.uint32).byteswap()   # big-endian
    buf[:, 12:16] = ids.view(np.uint8).reshape(n, 4)
    return buf.tobytes()


def _slots(n: int) -> array.array:
    return array.array("i", [i % SERVICES for i in range(n)])


def _state(mod, max_sources: int):
    st = mod.LimitState(max_sources=max_sources, v6_prefix=64)
    for i in range(SERVICES):
        s = st.slot(f"svc{i}")
        st.configure(s, cps_max=0, per_source=4, instances=-1, rate=100.0, burst=10.0)
    return st


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module")
def million():
    return _sources(N_SOURCES), _slots(N_SOURCES)


def test_batch_checks_1m_distinct_sources(benchmark, million):
    """Times one check_batch call over 1M distinct sources (4 services)."""
    if compiled is None:
        pytest.skip("acl._limits is not built")
    srcs, slots = million
    out = bytearray(N_SOURCES)
    rss0 = _rss_bytes()
    st = _state(compiled, 2 * N_SOURCES)
    st.check_batch(srcs, slots, NOW, 0.0, out, 600)        # warm: every source inserted
    assert st.tracked_sources == N_SOURCES and out.count(0) == N_SOURCES

    def run():
        return st.check_batch(srcs, slots, NOW, 0.0, out, 600)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    rate = N_SOURCES / benchmark.stats.stats.mean
    _RESULTS["batch"] = rate
    benchmark.extra_info.update(checks_per_s=rate, table_bytes=st.memory_bytes,
                                rss_growth_bytes=_rss_bytes() - rss0,
                                tracked_sources=st.tracked_sources)
    print(f"\nlimits batch: {rate / 1e6:.1f} M checks/s over {N_SOURCES:,} sources; "
          f"table {st.memory_bytes / 2**20:.0f} MiB, RSS +{(_rss_bytes() - rss0) / 2**20:.0f} MiB")


def test_single_checks_compiled_per_call(benchmark, million):
    """Times 20k per-call LimitState.check calls (the Python-level API)."""
    if compiled is None:
        pytest.skip("acl._limits is not built")
    srcs, _ = million
    items = [(i % SERVICES, srcs[16 * i:16 * i + 16]) for i in range(TWIN_SAMPLE)]
    st = _state(compiled, 1 << 16)
    check = st.check

    def run():
        for s, src in items:
            check(s, src, NOW, 0.0, 600)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    rate = TWIN_SAMPLE / benchmark.stats.stats.mean
    _RESULTS["single"] = rate
    benchmark.extra_info["checks_per_s"] = rate


def test_twin_batch_peer(benchmark, million):
    """Times the pure-Python twin's check_batch over 20k distinct sources."""
    srcs, slots = million
    sub_src = srcs[:16 * TWIN_SAMPLE]
    sub_slots = array.array("i", slots[:TWIN_SAMPLE])
    out = bytearray(TWIN_SAMPLE)
    st = _state(twin, 1 << 16)
    st.check_batch(sub_src, sub_slots, NOW, 0.0, out, 600)

    def run():
        return st.check_batch(sub_src, sub_slots, NOW, 0.0, out, 600)

    benchmark.pedantic(run, rounds=3, iterations=1)
    rate = TWIN_SAMPLE / benchmark.stats.stats.mean
    _RESULTS["twin"] = rate
    benchmark.extra_info["checks_per_s"] = rate
    if "batch" in _RESULTS:
        ratio = _RESULTS["batch"] / rate
        benchmark.extra_info["compiled_batch_over_twin"] = ratio
        print(f"\nlimits: compiled batch {_RESULTS['batch'] / 1e6:.1f} M/s, "
              f"compiled per-call {_RESULTS.get('single', 0) / 1e6:.2f} M/s, "
              f"twin {rate / 1e3:.0f} k/s -> batch/twin x{ratio:,.0f}")


def test_flood_10m_sources_stays_bounded(benchmark):
    """Times 10M distinct sources (10 batches of 1M) into a 1M-entry table."""
    if compiled is None:
        pytest.skip("acl._limits is not built")
    chunks = [_sources(N_SOURCES, start=k * N_SOURCES) for k in range(FLOOD // N_SOURCES)]
    slots = _slots(N_SOURCES)
    out = bytearray(N_SOURCES)
    rss0 = _rss_bytes()
    holder = {}

    def run():
        st = _state(compiled, FLOOD_BOUND)
        for chunk in chunks:
            st.check_batch(chunk, slots, NOW, 0.0, out, 600)
        holder["st"] = st

    benchmark.pedantic(run, rounds=1, iterations=1)
    st = holder["st"]
    growth = _rss_bytes() - rss0
    bound = st.memory_bytes
    assert st.capacity == FLOOD_BOUND and bound == FLOOD_BOUND * compiled.ENTRY_BYTES
    assert st.tracked_sources <= st.capacity
    assert st.evictions == FLOOD - st.tracked_sources
    assert growth < bound + (64 << 20), f"RSS grew {growth} for a {bound}-byte table"
    rate = FLOOD / benchmark.stats.stats.mean
    benchmark.extra_info.update(checks_per_s=rate, table_bytes=bound, rss_growth_bytes=growth,
                                evictions=st.evictions, tracked=st.tracked_sources)
    print(f"\nflood: {FLOOD:,} sources into {st.capacity:,} entries ({bound / 2**20:.0f} MiB): "
          f"{st.evictions:,} evictions, {st.tracked_sources:,} tracked, RSS +"
          f"{growth / 2**20:.0f} MiB, {rate / 1e6:.1f} M checks/s")
