"""Shared benchmark plumbing: a session-wide table of ratios.

Benchmarks record what they measured with the ``ratios`` fixture::

    ratios.time("prefix: single lookup", "geoip v4", "pytricia", seconds_per_op)
    ratios.note("prefix: memory", "geoip v4", "acl", "12.7 MB")

At the end of the run every table is printed as Markdown (ready for
bench/README.md): per case, each implementation's time per operation,
operations per second and speed relative to the table's baseline
(``ratios.baseline(table, impl)``; > 1 means faster than the baseline).
``ACL_BENCH_TABLES=path`` also writes them to that file.

Timings should be the *best* round (``ratios.timed(..., benchmark, ops)``): this machine
is shared, and the minimum is the least noisy estimate of what the code
costs.  Benchmarks are never collected by the default ``pytest`` run
(testpaths is ``tests``); run them with ``python -m pytest bench/<file>
--benchmark-only``.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Ratios:
    def __init__(self):
        # table -> case -> impl -> seconds per operation
        self.timings: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        # table -> case -> impl -> free text (memory, counts...)
        self.notes: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        self.baselines: dict[str, str] = {}

    def baseline(self, table: str, impl: str) -> None:
        self.baselines[table] = impl

    def time(self, table: str, case: str, impl: str, seconds_per_op: float) -> None:
        self.timings[table][case][impl] = seconds_per_op

    def timed(self, table: str, case: str, impl: str, benchmark, ops: int) -> float:
        """Record the best round of ``benchmark`` (``ops`` operations per round)."""
        sec = benchmark.stats.stats.min / ops
        self.time(table, case, impl, sec)
        return sec

    def note(self, table: str, case: str, impl: str, text: str) -> None:
        self.notes[table][case][impl] = text

    def markdown(self) -> str:
        out = []
        for table, cases in self.timings.items():
            base = self.baselines.get(table)
            out.append(f"### {table}\n")
            out.append(f"| case | implementation | ns/op | ops/s | x {base or 'baseline'} |")
            out.append("|---|---|---:|---:|---:|")
            for case, impls in cases.items():
                ref = impls.get(base) if base else None
                for impl, sec in impls.items():
                    ratio = f"{ref / sec:.1f}" if ref and sec else ""
                    out.append(f"| {case} | {impl} | {sec * 1e9:,.1f} | {1 / sec:,.0f} | {ratio} |")
            out.append("")
        for table, cases in self.notes.items():
            impls = sorted({i for c in cases.values() for i in c})
            out.append(f"### {table}\n")
            out.append("| case | " + " | ".join(impls) + " |")
            out.append("|---|" + "---:|" * len(impls))
            for case, values in cases.items():
                out.append(f"| {case} | " + " | ".join(values.get(i, "") for i in impls) + " |")
            out.append("")
        return "\n".join(out)


_RATIOS = Ratios()


@pytest.fixture(scope="session")
def ratios() -> Ratios:
    return _RATIOS


def pytest_terminal_summary(terminalreporter):
    if not _RATIOS.timings and not _RATIOS.notes:
        return
    text = _RATIOS.markdown()
    terminalreporter.write_sep("=", "ratios")
    terminalreporter.write_line(text)
    path = os.environ.get("ACL_BENCH_TABLES")
    if path:
        Path(path).write_text(text)
