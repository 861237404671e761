"""acl/workers.py's DaemonPool: the promises of its top comment, and the
Executor behaviour it shares with the standard library's
ThreadPoolExecutor (the real peer: check_names and the server hand either
kind to the same callers -- ``loop.run_in_executor``, ``Future.result``).

* Differential: the same scenarios run on both pools and must give the same
  results, exceptions, cancellations and thread counts.
* DaemonPool only: a thread is started only when none is idle (an idle one
  is reused), ``resize`` moves the limit both ways, the threads are daemon
  threads -- a real interpreter exits with a task that never ends, at once,
  with its exit handlers run and its exit status kept.

Every task that blocks waits on an Event with a timeout, and every wait in
here is bounded.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time

import pytest

from acl.workers import DaemonPool

from .conftest import ROOT

LONG = 10.0         # no task here is meant to block this long


def _pools():
    return [("daemon", lambda n: DaemonPool(n, "t")),
            ("stdlib", lambda n: concurrent.futures.ThreadPoolExecutor(n, "t"))]


def _threads(pool) -> int:
    return len(pool._threads)


def _settle(pool, timeout: float = 5.0) -> None:
    """Until every DaemonPool thread is back waiting for a task."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with pool._lock:
            if pool._busy == 0 and pool._waiting == 0:
                return
        time.sleep(0.005)
    raise AssertionError(f"pool did not settle: busy={pool._busy} waiting={pool._waiting}")


def _shutdown(pool, **kw) -> None:
    """``pool.shutdown(**kw)``, failing (not hanging) when it does not return."""
    t = threading.Thread(target=pool.shutdown, kwargs=kw, daemon=True)
    t.start()
    t.join(LONG)
    assert not t.is_alive(), f"shutdown({kw}) did not return"


@pytest.fixture(params=_pools(), ids=lambda p: p[0])
def make(request):
    made = []

    def new(n):
        pool = request.param[1](n)
        made.append(pool)
        return pool
    yield new
    for pool in made:
        pool.shutdown(wait=False, cancel_futures=True)


class Boom(Exception):
    pass


def _raise(exc):
    raise exc


def test_results_and_exceptions_reach_the_caller(make):
    pool = make(2)
    assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(LONG) == 5
    assert isinstance(pool.submit(_raise, Boom("x")).exception(LONG), Boom)
    # even SystemExit is carried (the thread survives it and works on)
    assert isinstance(pool.submit(_raise, SystemExit(3)).exception(LONG), SystemExit)
    assert pool.submit(lambda: "still here").result(LONG) == "still here"
    assert list(pool.map(lambda x: x * x, range(20))) == [x * x for x in range(20)]


def test_blocked_tasks_start_threads_up_to_the_limit_then_queue(make):
    pool = make(3)
    go = threading.Event()
    futs = [pool.submit(go.wait, LONG) for _ in range(5)]
    assert _threads(pool) == 3              # the limit: the other two wait
    go.set()
    assert [f.result(LONG) for f in futs] == [True] * 5
    assert _threads(pool) == 3


def test_shutdown_cancel_futures_drops_only_the_queued_ones(make):
    pool = make(1)
    go, started, ran = threading.Event(), threading.Event(), []

    def first_task():
        started.set()
        return go.wait(LONG)
    first = pool.submit(first_task)
    assert started.wait(LONG)
    queued = [pool.submit(ran.append, i) for i in range(4)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    go.set()
    assert first.result(LONG) is True
    _shutdown(pool, wait=True, cancel_futures=True)    # a second shutdown is harmless
    assert ran == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(ran.append, 9)


def test_a_cancelled_future_never_runs(make):
    pool = make(1)
    go, ran = threading.Event(), []
    first = pool.submit(go.wait, LONG)
    second = pool.submit(ran.append, "second")
    assert second.cancel()
    third = pool.submit(ran.append, "third")
    go.set()
    third.result(LONG)
    assert first.result(LONG) is True and ran == ["third"]


def test_shutdown_without_cancel_runs_what_was_queued_and_waits(make):
    pool = make(2)
    done = []

    def slow(i):
        time.sleep(0.05)
        done.append(i)
    for i in range(6):
        pool.submit(slow, i)
    _shutdown(pool, wait=True)
    assert sorted(done) == list(range(6))
    assert not any(t.is_alive() for t in pool._threads)


# -- DaemonPool only --------------------------------------------------------------


def test_an_idle_thread_is_reused_not_joined_by_another():
    pool = DaemonPool(4, "t")
    try:
        for i in range(20):
            assert pool.submit(lambda x=i: x).result(LONG) == i
            _settle(pool)
        assert _threads(pool) == 1
        go = threading.Event()
        futs = [pool.submit(go.wait, LONG) for _ in range(2)]
        assert _threads(pool) == 2          # the idle one took the first
        go.set()
        for f in futs:
            f.result(LONG)
        _settle(pool)
        futs = [pool.submit(lambda: 1) for _ in range(2)]
        assert [f.result(LONG) for f in futs] == [1, 1]
        assert _threads(pool) == 2          # both idle: neither submit started one
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_resize_raises_and_lowers_the_limit_started_threads_stay():
    pool = DaemonPool(1, "t")
    go = threading.Event()
    try:
        futs = [pool.submit(go.wait, LONG) for _ in range(3)]
        assert _threads(pool) == 1
        pool.resize(3)
        futs += [pool.submit(go.wait, LONG) for _ in range(3)]
        assert _threads(pool) == 3
        pool.resize(1)
        futs += [pool.submit(go.wait, LONG) for _ in range(3)]
        assert _threads(pool) == 3
        go.set()
        assert all(f.result(LONG) for f in futs)
    finally:
        go.set()
        pool.shutdown(wait=False, cancel_futures=True)


def test_threads_are_daemons_and_named_after_the_pool():
    pool = DaemonPool(2, "names")
    go = threading.Event()
    futs = []
    try:
        futs = [pool.submit(go.wait, LONG) for _ in range(2)]
        assert [(t.daemon, t.name) for t in pool._threads] == [(True, "names_0"),
                                                               (True, "names_1")]
    finally:
        go.set()
        for f in futs:
            f.result(LONG)
        _shutdown(pool, wait=True)


EXITS = """
import atexit, sys, threading
from acl.workers import DaemonPool
atexit.register(lambda: print("exit handler ran", flush=True))
pool = DaemonPool(2, "hang")
started = threading.Semaphore(0)
def hang():
    started.release()
    threading.Event().wait(3600)
running = [pool.submit(hang) for _ in range(2)]
assert started.acquire(timeout=10) and started.acquire(timeout=10)
queued = [pool.submit(hang) for _ in range(3)]
pool.shutdown(wait=False, cancel_futures=True)
print("cancelled", sum(f.cancelled() for f in queued), flush=True)
sys.exit(7)
"""


def test_a_real_interpreter_exits_with_a_task_that_never_ends():
    """What the stop of ``acl serve`` relies on (tests/serve/test_stop_prompt.py
    shows it whole): no exit hook joins the threads."""
    out = subprocess.run([sys.executable, "-c", EXITS], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 7, out
    # both threads hang in a task; the three queued were cancelled; the
    # interpreter did not wait the hour (subprocess's timeout would say so)
    assert out.stdout.splitlines() == ["cancelled 3", "exit handler ran"], out
