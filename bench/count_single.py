"""What one single-call lookup costs in instructions and in reads past L2,
counted by valgrind's cachegrind rather than timed: the same numbers on a
quiet machine and a loaded one.

Run::

    python bench/count_single.py                      # routing v4 str, routing v6 bytes
    python bench/count_single.py --sets "geoip v6" --kinds str bytes

For each set and key kind it counts four loops over the bench's 20,000
single-call keys (bench_prefix's, in the same order): ``pytricia get``,
``acl most_specific``, acl on a one-prefix table (its call and parse with a
walk that stays in L1), and ``len`` (the Python loop and a builtin call:
what no lookup can go below).  Each runs under cachegrind twice, with one
pass and with four; the difference over three passes is one pass, so the
set's generation and the table builds (counted in both runs) drop out.

Why counts: the timed ratios (test_paired) move with the machine.  When the
L3 is busy with other tenants, a read past L2 costs 80-170 ns and the
walks' reads decide the ratio; when it is free, the same reads cost an L3
hit (16-28 ns) and the instructions weigh as much.  The counts say how much
of each kind of work each peer does, so a ratio can be read against them.

Rules of the count:

- The simulated last level is this core's L2 (read from sysfs; 512 KiB,
  8-way here), so "past L2" misses are the reads that go to the L3 or
  beyond.  The simulated L1s are cachegrind's defaults (the host's).
- Cachegrind has no prefetcher: the key objects, which the loop reads in
  memory order, count as misses here though hardware streams them in.
  The ``len`` row shows that part (about 1.9 a call); the last column
  ("the lookup's own") subtracts the one-prefix row's misses from acl's
  and the len row's from pytricia's, leaving each lookup's own reads into
  its structure.
- PYTHONHASHSEED=0, so both runs of a peer build the same dicts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.bench_prefix as bp  # noqa: E402

PEERS = ("pytricia", "acl", "acl 1-prefix", "len")
DEFAULT = [("routing v4 100k", "str"), ("routing v6 50k", "bytes")]


def child(name: str, kind: str, peer: str, passes: int) -> None:
    """Inside valgrind: build the peer, then run its loop ``passes`` times."""
    d = bp.dataset(name)
    if peer == "pytricia":
        fn = bp.pytricia_tree(name).get
    elif peer == "acl":
        fn = bp.acl_table(name).most_specific
    elif peer == "acl 1-prefix":
        fn = bp.one_prefix_table(name).most_specific
    else:
        fn = len
    keys = d.single_str if kind == "str" else d.single_bytes
    run = bp.loop(fn, keys)
    for _ in range(passes):
        run()


def l2_geometry() -> str:
    """This core's L2 as cachegrind's --LL=size,ways,line."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        if (index / "level").read_text().strip() == "2":
            size = (index / "size").read_text().strip()         # "512K"
            unit = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
            size_bytes = int(size.rstrip("KM")) * unit
            ways = (index / "ways_of_associativity").read_text().strip()
            line = (index / "coherency_line_size").read_text().strip()
            return f"{size_bytes},{ways},{line}"
    raise SystemExit("no L2 described in sysfs")


def start(name: str, kind: str, peer: str, passes: int, ll: str, out: str) -> subprocess.Popen:
    """One run of the peer's loop under cachegrind, writing its counts to ``out``."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={ll}",
           f"--cachegrind-out-file={out}", sys.executable, __file__,
           "--child", name, kind, peer, str(passes)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def totals(out: str) -> dict[str, int]:
    """Cachegrind's program totals from its output file, by event name."""
    events = summary = None
    for line in Path(out).read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            summary = [int(x) for x in line.split()[1:]]
    if events is None or summary is None:
        raise SystemExit(f"{out}: no events or summary line")
    return dict(zip(events, summary, strict=True))


def per_call(name: str, kind: str, peer: str, ll: str) -> tuple[float, float]:
    """Instructions and data reads past L2 for one call of the loop."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = {passes: os.path.join(tmp, f"cg.{passes}") for passes in (1, 4)}
        runs = [start(name, kind, peer, passes, ll, out) for passes, out in outs.items()]
        for run in runs:        # the two at once: one per core
            _, err = run.communicate(timeout=3600)
            if run.returncode:
                raise SystemExit(f"valgrind failed ({peer}, {name}, {kind}):\n{err.decode()[-2000:]}")
        one, four = totals(outs[1]), totals(outs[4])
    calls = 3 * bp.SINGLE
    return (four["Ir"] - one["Ir"]) / calls, (four["DLmr"] - one["DLmr"]) / calls


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+")
    parser.add_argument("--kinds", nargs="+", choices=["str", "bytes"])
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    args = parser.parse_args()
    if args.sets or args.kinds:
        cases = [(s, k) for s in (args.sets or [s for s, _ in DEFAULT])
                 for k in (args.kinds or ["str", "bytes"])]
    else:
        cases = DEFAULT
    ll = l2_geometry()
    print(f"cachegrind, last level simulated as this core's L2 ({ll}); per call of the loop\n")
    print("| set | keys | peer | instructions | reads past L2 | the lookup's own |")
    print("|---|---|---|---:|---:|---:|")
    for name, kind in cases:
        got = {peer: per_call(name, kind, peer, ll) for peer in args.peers}
        mine = {peer: own(got, peer) for peer in args.peers}
        for peer in args.peers:
            ins, reads = got[peer]
            shown = "" if mine[peer] is None else f"{mine[peer]:.2f}"
            print(f"| {name} | {kind} | {peer} | {ins:.0f} | {reads:.2f} | {shown} |", flush=True)
        if "pytricia" in got and "acl" in got:
            theirs, ours = mine["pytricia"], mine["acl"]
            own_ratio = f"{theirs / ours:.1f}x" if theirs is not None and ours is not None else ""
            print(f"| {name} | {kind} | pytricia / acl | {got['pytricia'][0] / got['acl'][0]:.2f}x | "
                  f"{got['pytricia'][1] / got['acl'][1]:.2f}x | {own_ratio} |", flush=True)


def own(got: dict[str, tuple[float, float]], peer: str) -> float | None:
    """A lookup's own reads past L2: its loop's, less those of the loop
    without its structure (acl: the one-prefix table; pytricia: len);
    None when that loop was not counted."""
    base = {"acl": "acl 1-prefix", "pytricia": "len"}.get(peer)
    return got[peer][1] - got[base][1] if base in got else None


if __name__ == "__main__":
    main()
