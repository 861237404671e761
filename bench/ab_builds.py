"""Two builds of the prefix core, timed against each other and against
pytricia in one process, for a change to the core or to how it is compiled.

Run::

    python bench/ab_builds.py OLD.so NEW.so                  # all four sets
    python bench/ab_builds.py OLD.so NEW.so --sets "routing v4 100k"

OLD.so and NEW.so are two ``acl/_core*.so`` files: e.g. the checkout's own
and one built in a copy of the tree (``git archive HEAD | tar -x -C DIR``,
change it, ``python setup.py build_ext --inplace`` there).

Why one process: this machine's memory latency moves within minutes (see
README.md, Prefix core), so two builds timed in two runs differ by the
machine as much as by the code.  Here the three peers (pytricia, old, new)
take turns, round by round, on the bench's 20,000 single-call keys; each
turn's time is its best of PASSES passes.  The report is each build's best
round and, the figure to judge a change by, the median over rounds of
new's speed over old's in the same round.

Rules of the comparison:

- Both builds load as ``acl._core`` from their own files (an extension
  module's name is fixed by its init function); each table is built by its
  own module's ``from_arrays`` from the bench's columns.
- Before timing, the two builds must give the same answers on every key
  (an A/B of a wrong build measures nothing).
- The turn order alternates between rounds (pytricia, old, new; then
  pytricia, new, old), so neither build always follows pytricia's sweep of
  the cache.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.bench_prefix as bp  # noqa: E402

SETS = ("routing v4 100k", "routing v6 50k", "geoip v4", "geoip v6")
ROUNDS = 15
PASSES = 5


def load_core(path: str) -> ModuleType:
    """The extension module at ``path``, loaded as acl._core (not registered
    in sys.modules, so two can live side by side)."""
    loader = importlib.machinery.ExtensionFileLoader("acl._core", path)
    spec = importlib.util.spec_from_loader("acl._core", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def best_pass(one_pass) -> float:
    """The best of PASSES passes, in seconds."""
    times = []
    for _ in range(PASSES):
        start = time.process_time()
        one_pass()
        times.append(time.process_time() - start)
    return min(times)


def compare(name: str, kind: str, old: ModuleType, new: ModuleType) -> str:
    """One set and key kind: the three peers' rounds, as a table row."""
    d = bp.dataset(name)
    keys = d.single_str if kind == "str" else d.single_bytes
    old_table = old.PrefixTable.from_arrays(d.family, *d.columns)
    new_table = new.PrefixTable.from_arrays(d.family, *d.columns)
    differ = sum(old_table.most_specific(k) != new_table.most_specific(k) for k in keys)
    if differ:
        raise SystemExit(f"{name}, {kind}: the builds disagree on {differ} of {len(keys)} keys")
    peers = {"pytricia": bp.loop(bp.pytricia_tree(name).get, keys),
             "old": bp.loop(old_table.most_specific, keys),
             "new": bp.loop(new_table.most_specific, keys)}
    orders = (("pytricia", "old", "new"), ("pytricia", "new", "old"))
    ns: dict[str, list[float]] = {peer: [] for peer in peers}
    for round_no in range(ROUNDS):
        for peer in orders[round_no % 2]:
            ns[peer].append(best_pass(peers[peer]) / len(keys) * 1e9)
    speed = sorted(o / n for o, n in zip(ns["old"], ns["new"], strict=True))

    def vs_pytricia(peer: str) -> float:
        return statistics.median(p / t for p, t in zip(ns["pytricia"], ns[peer], strict=True))

    best = " | ".join(f"{min(ns[peer]):.1f}" for peer in ("pytricia", "old", "new"))
    return (f"| {name} | {kind} | {best} | "
            f"{statistics.median(speed):.3f} ({speed[0]:.2f}-{speed[-1]:.2f}) | "
            f"{vs_pytricia('old'):.1f}x | {vs_pytricia('new'):.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the reference build's _core .so")
    parser.add_argument("new", help="the changed build's _core .so")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--kinds", nargs="+", choices=["str", "bytes"], default=["str", "bytes"])
    args = parser.parse_args()
    old, new = load_core(args.old), load_core(args.new)
    print(f"{ROUNDS} rounds in turn, each turn the best of {PASSES} passes"
          f" over {bp.SINGLE:,} keys; ns per call\n")
    print("| set | keys | pytricia best | old best | new best"
          " | new/old speed, median of rounds (range) | old x pytricia | new x pytricia |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.sets:
        for kind in args.kinds:
            print(compare(name, kind, old, new), flush=True)


if __name__ == "__main__":
    main()
