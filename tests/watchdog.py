"""A stuck test ends the run with every thread's traceback, not at CI's limit.

Rules of this file (a pytest plugin: tests/conftest.py registers it; a
pytest of its own takes it with ``-p tests.watchdog``):

* A test still running ``ACL_TEST_WATCHDOG`` seconds after it started
  (default 600, 3600 with ACL_SLOW; 0 turns the watchdog off) is stuck:
  the suite's whole budget is 15 minutes, and no test needs ten of them.
  Without this, an endless loop in a test or in the code it runs holds CI
  until its 90-minute limit and says nothing about where.
* The watchdog is faulthandler's: a C thread.  ``signal.alarm`` or a Python
  thread cannot fire while compiled code holds the GIL in a loop -- a
  mutation audit of the limits core planted exactly that (an overflow probe
  that never ends).  When it fires it writes every thread's stack and
  calls ``_exit(1)``: the run fails, and no cleanup runs -- daemons and
  namespaces the stuck test made stay behind, in a run that has failed
  anyway.
* The stacks go to the terminal's stderr, a copy of fd 2 taken when pytest
  configures: while a test runs, pytest's capture holds fd 2, and what is
  written there is lost at ``_exit``.
* Armed again for every test (setup, call and teardown together) and
  cancelled after it, so the limit is per test, not per run; re-armed
  before the teardown for what is left (pytest cancels it when setup or
  call fails), and off at a debugger prompt.  ``faulthandler_timeout`` would
  take its timer: the two together are refused.
* Disarmed across ``os.fork``: a child has no watchdog thread (threads do
  not cross ``fork``), yet faulthandler's state says there is one, so the
  child's first cancel -- at the latest when its interpreter exits -- waits
  for it for ever (CPython 3.11; a child ending in ``sys.exit`` hangs).
  So the watchdog is cancelled just before a fork and armed again in the
  parent just after, for what was left of the test's time.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time

import pytest

_SLOW = os.environ.get("ACL_SLOW", "") not in ("", "0")
LIMIT_S = float(os.environ.get("ACL_TEST_WATCHDOG", "3600" if _SLOW else "600"))

_terminal: list[int] = []     # the copy of the terminal's stderr
_deadline: list[float] = []   # while a test runs: when the watchdog fires (monotonic)


def _arm(seconds: float) -> None:
    faulthandler.dump_traceback_later(seconds, exit=True, file=_terminal[0])


def _before_fork() -> None:
    if _deadline:
        faulthandler.cancel_dump_traceback_later()


def _after_fork_in_parent() -> None:
    if _deadline:
        _arm(max(0.001, _deadline[0] - time.monotonic()))


def _after_fork_in_child() -> None:
    _deadline.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def pytest_configure(config):
    try:
        theirs = float(config.getini("faulthandler_timeout") or 0)
    except ValueError:                   # -p no:faulthandler: no such setting
        theirs = 0
    if theirs > 0 and LIMIT_S > 0:
        # faulthandler has one timer: pytest's would replace this one, and
        # it only prints (the run would go on hanging)
        raise pytest.UsageError("faulthandler_timeout replaces acl's test watchdog "
                                "(tests/watchdog.py): set ACL_TEST_WATCHDOG instead")
    if LIMIT_S > 0 and not _terminal:
        _terminal.append(os.dup(sys.__stderr__.fileno()))


def pytest_unconfigure(config):
    while _terminal:
        os.close(_terminal.pop())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _terminal:
        yield
        return
    _deadline[:] = [time.monotonic() + LIMIT_S]
    _arm(LIMIT_S)
    try:
        yield
    finally:
        if _deadline:                    # (not in a forked child)
            _deadline.clear()
            faulthandler.cancel_dump_traceback_later()


def _rearm():
    """pytest's faulthandler plugin cancels the timer whenever a setup or
    call fails (``pytest_exception_interact``): armed again, for what is
    left of the test's time, before the teardown -- the one phase that runs
    after a failure, and one that hangs after a failure is the likeliest
    stuck test of all."""
    if _deadline:
        _arm(max(0.001, _deadline[0] - time.monotonic()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    _rearm()
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_enter_pdb(config, pdb):
    # someone at a debugger prompt is not stuck
    if _deadline:
        _deadline.clear()
        faulthandler.cancel_dump_traceback_later()
