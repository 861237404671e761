"""What a reload or a dropped front door lets go is freed at once, by
reference counting, not at the next run of Python's cyclic GC.

Why it matters: a policy's compiled tables are C memory (hundreds of MiB for
a million prefixes) that the GC cannot see, so its heuristics -- which count
Python objects -- may not run for a long time.  A reference cycle that holds
a Policy or an Engine would keep the old tables beside the new ones after
every reload.  Each test runs with the GC off and checks, through weak
references, that the object is gone as soon as the last name for it is.
(A dropped NfqueueFrontDoor once kept its engine in a cycle, through a bound
method of its own; a process that made doors one after another grew ~32 MiB
a door until the GC ran.)
"""

from __future__ import annotations

import gc
import weakref
from contextlib import contextmanager

from acl.compile.tcpw import no_gc
from acl.engine import Engine
from acl.model import Request

from .conftest import policy_toml


@contextmanager
def gc_off():
    """The cyclic GC off (after one last run), so only refcounts free."""
    gc.collect()
    with no_gc():
        yield


def test_a_reload_frees_the_policy_it_replaces(tmp_path):
    path = policy_toml(tmp_path)
    engine = Engine.from_path(path)
    engine.decide(Request("sshd", "192.0.2.10"), 1000.0)
    with gc_off():
        replaced = []
        for n in range(3):
            replaced.append(weakref.ref(engine.policy))
            # a change, so that the reload builds new tables
            with open(tmp_path / "hosts.allow", "a") as f:
                f.write(f"sshd: 198.51.100.{n}\n")
            engine.reload(path)
            engine.decide(Request("sshd", f"198.51.100.{n}"), 1000.0)
            assert [r() is None for r in replaced] == [True] * len(replaced), n


def test_a_dropped_engine_is_freed(tmp_path):
    path = policy_toml(tmp_path)
    with gc_off():
        engine = Engine.from_path(path)
        engine.decide(Request("sshd", "192.0.2.10"), 1000.0)
        gone = weakref.ref(engine), weakref.ref(engine.policy)
        del engine
        assert [r() for r in gone] == [None, None]


def test_a_dropped_nfqueue_door_frees_its_engine(tmp_path):
    from acl import nfq
    from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor

    if not nfq.AVAILABLE:
        import pytest
        pytest.skip("acl built without the NFQUEUE binding")
    path = policy_toml(tmp_path)
    with gc_off():
        engine = Engine.from_path(path)
        door = NfqueueFrontDoor(engine, NfqueueConfig.from_table(
            {"queues": [7], "ports": {"22": "sshd"}}), clock=lambda: 1000.0)
        gone = weakref.ref(door), weakref.ref(engine)
        del door, engine
        assert [r() for r in gone] == [None, None]
