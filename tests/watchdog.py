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
  cancelled after it, so the limit is per test, not per run.
"""

from __future__ import annotations

import faulthandler
import os
import sys

import pytest

_SLOW = os.environ.get("ACL_SLOW", "") not in ("", "0")
LIMIT_S = float(os.environ.get("ACL_TEST_WATCHDOG", "3600" if _SLOW else "600"))

_terminal: list[int] = []     # the copy of the terminal's stderr


def pytest_configure(config):
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
    faulthandler.dump_traceback_later(LIMIT_S, exit=True, file=_terminal[0])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
