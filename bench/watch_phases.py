"""Watch the machine's memory phases and acl's single calls together, step
by step, for a while: what the paired rounds' medians hide.

Run::

    python bench/watch_phases.py                          # routing v4, 8 minutes
    python bench/watch_phases.py --set "geoip v6" --seconds 120 --out steps.jsonl

Each step (~0.3 s) writes one JSON line: the ns per load of a dependent
chase over bench_prefix's CHASE_SIZES (2 and 16 MiB) and over the size of
acl's table (table_chase_bytes: 6 MiB for routing v4); then ns per call
of acl ``most_specific`` on the bench's 20,000 str and bytes keys and of
builtin ``len`` on the str keys (each the best of the last 3 passes after
~0.06 s of passes, so acl's lines are back in the caches), and of one
pytricia ``get(str)`` pass.  At the end it prints,
grouped by the table-sized chase, the medians of each, and how many steps
fell below 10x pytricia.

With ``--counts 50000,25000`` (routing sets only) each step also times
acl ``most_specific(str)`` and pytricia ``get(str)`` on tables of the
first 50,000 and 25,000 prefixes of the same set (bench_prefix's
first_of), so that the report shows how each side's calls move with
the table's size in the same phases.

Why: on this shared machine our share of the L3 moves.  For minutes at a
time a 6 MiB working set costs a DRAM load while a 2 MiB one stays at an
L3 hit; acl's routing v4 table (5.3 MiB) then stops staying cached, and
its single calls take 1.5-3x their usual time while pytricia's take ~1.3x
(bench/prefix-history.md, fifteenth session).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.bench_prefix as bench  # noqa: E402

CHASE_HOPS = 50_000
WARM_SECONDS = 0.06         # a peer's passes per step, before its best of the last 3
MAX_PASSES = 100
GROUPS = ((0, 30), (30, 100), (100, 10_000))    # by the table-sized chase, ns per load
TABLE = "chase table size"


def best_pass(one_pass) -> float:
    """ns per call: the best of the last 3 passes after WARM_SECONDS of passes."""
    passes: list[float] = []
    while sum(passes) < WARM_SECONDS and len(passes) < MAX_PASSES:
        start = time.process_time()
        one_pass()
        passes.append(time.process_time() - start)
    return min(passes[-3:]) / bench.SINGLE * 1e9


def smaller_sets(name: str, counts: list[int]) -> list[str]:
    """Names of the smaller tables ``--counts`` asks for."""
    try:
        return [bench.first_of(name, count) for count in counts]
    except ValueError as exc:
        raise SystemExit(f"--counts: {exc}") from None


def size_peers(names: Sequence[str]) -> dict:
    """acl's and pytricia's str passes on each smaller table, by step key."""
    peers = {}
    for small in names:
        keys = bench.dataset(small).single_str
        peers[f"acl str @{small}"] = bench.loop(bench.acl_table(small).most_specific, keys)
        peers[f"pytricia str @{small}"] = bench.loop(bench.pytricia_tree(small).get, keys)
    return peers


def watch(name: str, seconds: float, out, smaller: Sequence[str] = ()) -> list[dict]:
    data = bench.dataset(name)
    table = bench.acl_table(name)
    chase = bench.walk_module().chase
    sizes = {f"chase {size}": nbytes for size, nbytes in bench.CHASE_SIZES.items()}
    sizes[TABLE] = bench.table_chase_bytes(table)
    buffers = {key: bench.huge_buffer(nbytes) for key, nbytes in sizes.items()}
    peers = {"acl str": bench.loop(table.most_specific, data.single_str),
             "acl bytes": bench.loop(table.most_specific, data.single_bytes),
             "len str": bench.loop(len, data.single_str)}
    pytricia_pass = bench.loop(bench.pytricia_tree(name).get, data.single_str)
    # Both sides take their best of the last 3 passes here: these rows are
    # read against each other, not against the one-pass pytricia column.
    peers.update(size_peers(smaller))
    steps = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            step = {"t": round(time.time(), 2)}
            for key, (_, view) in buffers.items():
                step[key] = round(chase(view, CHASE_HOPS), 1)
            for peer, one_pass in peers.items():
                step[peer] = round(best_pass(one_pass), 1)
            start = time.process_time()
            pytricia_pass()
            step["pytricia str"] = round((time.process_time() - start) / bench.SINGLE * 1e9, 1)
            steps.append(step)
            out.write(json.dumps(step) + "\n")
            out.flush()
    finally:
        for m, view in buffers.values():
            view.release()
            m.close()
    return steps


def report(steps: list[dict], smaller: Sequence[str] = ()) -> None:
    ratio = [s["pytricia str"] / s["acl str"] for s in steps]
    print(f"{len(steps)} steps; acl str vs pytricia str: median {statistics.median(ratio):.1f}x, "
          f"below 10x in {sum(r < 10 for r in ratio)}, lowest {min(ratio):.1f}x")
    for low, high in GROUPS:
        group = [s for s in steps if low <= s[TABLE] < high]
        if not group:
            continue
        medians = ", ".join(f"{key} {statistics.median(s[key] for s in group):.0f}"
                            for key in ("chase 2 MiB", "acl str", "acl bytes", "len str", "pytricia str"))
        below = sum(s["pytricia str"] / s["acl str"] < 10 for s in group)
        print(f"table-sized chase {low}-{high} ns: {len(group)} steps; medians (ns): {medians}; below 10x: {below}")
        for small in smaller:
            acl = statistics.median(s[f"acl str @{small}"] for s in group)
            tricia = statistics.median(s[f"pytricia str @{small}"] for s in group)
            ratio = statistics.median(s[f"pytricia str @{small}"] / s[f"acl str @{small}"]
                                      for s in group)
            mib = bench.acl_table(small).nbytes / 2**20
            print(f"    {small} ({mib:.1f} MiB): medians (ns): acl str {acl:.0f}, "
                  f"pytricia str {tricia:.0f}; ratio {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="routing v4 100k", help="a bench data set (default: routing v4 100k)")
    parser.add_argument("--seconds", type=float, default=480)
    parser.add_argument("--out", default="-", help="JSON lines, one per step (default: stdout)")
    parser.add_argument("--counts", default="",
                        help="comma-separated prefix counts: smaller tables of the same "
                             "routing set")
    args = parser.parse_args()
    smaller = smaller_sets(args.set, [int(c) for c in args.counts.split(",") if c])
    if args.out == "-":
        steps = watch(args.set, args.seconds, sys.stdout, smaller)
    else:
        with open(args.out, "w") as out:
            steps = watch(args.set, args.seconds, out, smaller)
    report(steps, smaller)


if __name__ == "__main__":
    main()
