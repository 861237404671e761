"""A table is built once, and only a built table answers.

The rules (``acl/_core_py.py``'s module docstring): lookups and queries on a
table that is not built -- never, not yet (another thread is building it),
or not since its build failed -- raise ``ValueError``; ``__init__`` on a
built table or on one being built is a ``RuntimeError``; a failed build
leaves the table as never built, so that it can be built again.

The compiled core releases the GIL while it sorts and builds, so a lookup
can meet a half-built table; and a build can fail for lack of memory.  Both
once made lookups walk a trie that was not there, and the process died:
those cases run in a child process, where a crash is a test failure and
not a dead pytest.  The rest run on both cores and compare outcomes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acl import _core_py
from tests.conftest import load_impl
from tests.core.test_errors import outcome, same


@pytest.fixture(scope="module")
def compiled():
    return load_impl("compiled", "acl._core", "acl._core_py")


@pytest.fixture(scope="module")
def cores(compiled):
    return compiled, _core_py


def run_child(compiled, script: str, timeout: float = 120) -> dict:
    """Run ``script`` on the same build as ``compiled``; its last line of
    output, JSON.  A crash (a signal) fails here, with what it printed."""
    root = Path(compiled.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, (f"child exited {proc.returncode}\n"
                                  f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


RACE = r"""
import json, random, threading
from acl import _core as C, _core_py as P
rng = random.Random(1)
ents = [(rng.getrandbits(24) << 8, 24, rng.randrange(1000)) for _ in range(400_000)]
probe = ents[7][0]
want = P.PrefixTable(4, [e for e in ents if e[0] == probe])
t = C.PrefixTable.__new__(C.PrefixTable)
th = threading.Thread(target=t.__init__, args=(4, ents))
th.start()
seen = {}
def note(key):
    seen[key] = seen.get(key, 0) + 1
while th.is_alive():
    family = t.family
    try:
        got = (t.first_match(probe), t.most_specific(probe),
               list(t.first_match_batch(probe.to_bytes(4, "big"))), t.exact(probe, 24))
        note("answer" if got == (want.first_match(probe), want.most_specific(probe),
                                 [want.first_match(probe)], want.exact(probe, 24)) else repr(got))
    except Exception as exc:
        note(f"{family} {type(exc).__name__}: {exc}")
    if family and not seen.get("claim"):
        try:
            t.__init__(4, [])
            note("second build ran")
        except Exception as exc:
            note(f"claim {type(exc).__name__}: {exc}")
        seen["claim"] = 1
th.join()
seen.pop("claim", None)
print(json.dumps({"seen": seen, "after": t.first_match(probe), "want": want.first_match(probe),
                  "len": len(t), "distinct": len({(n, l) for n, l, _ in ents})}))
"""


def test_lookups_during_a_build_in_another_thread(compiled):
    """Lookups racing ``__init__`` in another thread get "not built" until the
    whole table is there, then the right answer; a second ``__init__`` meanwhile
    is refused.  (They used to walk a NULL trie once ``family`` was set.)"""
    result = run_child(compiled, RACE)
    seen = result["seen"]
    not_built = f"ValueError: {_core_py.NOT_BUILT}"
    allowed = {f"0 {not_built}", f"4 {not_built}", "answer",
               "claim RuntimeError: PrefixTable is being built",
               "claim RuntimeError: PrefixTable is already built"}
    assert set(seen) <= allowed, seen
    # The race was run: lookups met the table after the build had claimed it.
    assert seen.get(f"4 {not_built}", 0) > 0, seen
    assert result["after"] == result["want"] and result["len"] == result["distinct"], result


FAILED = r"""
import json, random, resource
from acl import _core as C, _core_py as P
rng = random.Random(2)
# Sparse /32s: a path-compressed trie, whose 22-bit top level needs 36 MB of
# scratch while it is built.
ents = [(rng.getrandbits(32), 32, rng.randrange(1000)) for _ in range(6000)]
probe = ents[0][0]
t = C.PrefixTable.__new__(C.PrefixTable)
out = {}
def note(key, fn):
    try:
        out[key] = ["ok", fn()]
    except Exception as exc:
        out[key] = [type(exc).__name__, str(exc)]
vm = int(open("/proc/self/statm").read().split()[0]) * 4096
resource.setrlimit(resource.RLIMIT_AS, (vm + 16 * 2**20, resource.RLIM_INFINITY))
note("build", lambda: t.__init__(4, ents))
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
note("family", lambda: t.family)
note("len", lambda: len(t))
note("nbytes", lambda: t.nbytes)
note("first_match", lambda: t.first_match(probe))
note("batch", lambda: list(t.most_specific_batch(probe.to_bytes(4, "big"))))
note("entries", lambda: t.entries())
note("retry", lambda: t.__init__(4, ents))
note("after", lambda: (t.first_match(probe), t.most_specific(probe), len(t)))
want = P.PrefixTable(4, ents)
out["want"] = [want.first_match(probe), want.most_specific(probe), len(want)]
print(json.dumps(out))
"""


def test_a_failed_build_leaves_a_never_built_table(compiled):
    """A build that runs out of memory says so, leaves the table as never
    built (no lookup walks what it freed), and may be run again.  (It used to
    say "too large", keep the table marked built with no trie, and refuse the
    retry as "already built".)"""
    result = run_child(compiled, FAILED)
    assert result["build"][0] == "MemoryError", result
    assert "out of memory" in result["build"][1], result
    not_built = ["ValueError", _core_py.NOT_BUILT]
    assert result["family"] == ["ok", 0] and result["len"] == ["ok", 0], result
    assert result["nbytes"] == ["ok", 0], result
    assert result["first_match"] == result["batch"] == result["entries"] == not_built, result
    assert result["retry"] == ["ok", None], result
    assert result["after"] == ["ok", result["want"]], result


NOT_BUILT_CALLS = {
    "first_match": lambda t: t.first_match("10.1.2.3"),
    "most_specific": lambda t: t.most_specific(b"\x0a\x01\x02\x03"),
    "exact": lambda t: t.exact("10.0.0.0", 8),
    "covering": lambda t: t.covering("10.1.2.3"),
    "covered_by": lambda t: t.covered_by("10.0.0.0", 8),
    "entries": lambda t: t.entries(),
    "first_match_batch": lambda t: t.first_match_batch(b"\x0a\x01\x02\x03"),
    "most_specific_batch": lambda t: t.most_specific_batch(b""),
    "len": len,
    "nbytes": lambda t: t.nbytes,
    "family": lambda t: t.family,
}


@pytest.mark.parametrize("call", NOT_BUILT_CALLS.values(), ids=NOT_BUILT_CALLS.keys())
def test_a_never_built_table_behaves_alike(cores, call):
    result = same(cores, lambda c: call(c.PrefixTable.__new__(c.PrefixTable)))
    assert result in (("raised", ValueError, _core_py.NOT_BUILT), ("ok", 0)), result


def test_a_built_table_is_not_built_again(cores):
    """``__init__`` again is refused, and the table keeps its prefixes."""
    def rebuild(core):
        table = core.PrefixTable(4, [("10.0.0.0", 8, 1), ("10.1.0.0", 16, 2)])
        try:
            table.__init__(4, [("192.168.0.0", 16, 9)])
        finally:
            assert (table.first_match("10.1.2.3"), len(table), table.family) == (1, 2, 4)
    assert same(cores, rebuild) == ("raised", RuntimeError, "PrefixTable is already built")
    # A bad entry is reported as such, before the table's state.
    result = same(cores, lambda c: c.PrefixTable(4, []).__init__(4, [("10.0.0.1", 8, 1)]))
    assert result[:2] == ("raised", ValueError), result


def test_a_table_whose_build_failed_can_be_built(cores):
    def retry(core):
        table = core.PrefixTable.__new__(core.PrefixTable)
        assert outcome(lambda: table.__init__(4, [("10.0.0.0", 8, 1), ("10.0.0.1", 8, 2)]))[:2] == (
            "raised", ValueError)
        assert outcome(lambda: table.first_match("10.1.2.3")) == ("raised", ValueError, _core_py.NOT_BUILT)
        table.__init__(4, [("10.0.0.0", 8, 1)])
        return table.first_match("10.1.2.3"), len(table), table.family
    assert same(cores, retry) == ("ok", (1, 1, 4))


def test_the_twins_failed_build_leaves_a_never_built_table():
    """The twin's half of test_a_failed_build_leaves_a_never_built_table:
    a build that fails once claimed (``family`` set) goes back to never
    built -- family 0, no lookups -- and may be run again.  Here the twin's
    first insert runs out of memory (as a dict may)."""
    failed = []

    class FailsOnce(_core_py.PrefixTable):
        __slots__ = ()

        def _insert(self, net, length, value):
            if not failed:
                failed.append(True)
                raise MemoryError("out of memory")
            super()._insert(net, length, value)

    table = FailsOnce.__new__(FailsOnce)
    assert outcome(lambda: table.__init__(4, [("10.0.0.0", 8, 1)]))[:2] == ("raised", MemoryError)
    assert (table.family, len(table), table.nbytes) == (0, 0, 0)
    assert outcome(lambda: table.first_match("10.1.2.3")) == ("raised", ValueError, _core_py.NOT_BUILT)
    table.__init__(4, [("10.0.0.0", 8, 1)])
    assert (table.first_match("10.1.2.3"), len(table), table.family) == (1, 1, 4)
