"""tests/watchdog.py stops a stuck test -- one holding the GIL in a loop,
as an endless loop in compiled code does -- with its traceback, and leaves
tests that finish alone, however many of them, each under the limit, and
lets a child a test forks finish.

Each case is a pytest of its own, in a subprocess, on a test file made
here, with the plugin given by ``-p`` and a limit of a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUCK = '''
def test_quick():
    pass


def test_stuck():
    n = 0
    while True:          # no call out of the loop: the GIL is never let go
        n += 1
'''

# each test alone stays under the limit (4 s); together they run past it
UNDER = '''
import time


def test_one():
    time.sleep(1.5)


def test_two():
    time.sleep(1.5)


def test_three():
    time.sleep(1.5)
'''

# a test fails, then its fixture's teardown never ends (pytest's own
# faulthandler plugin cancels the timer when a test fails)
FAILS_THEN_HANGS = '''
import pytest


@pytest.fixture
def daemon():
    yield
    n = 0
    while True:
        n += 1


def test_fails(daemon):
    assert False
'''


# the child returns into pytest, as a test's child might by mistake: it
# finishes the session in its own process and exits
FORKS = '''
import os


def test_fork():
    pid = os.fork()
    if pid == 0:
        return
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
'''


def _pytest(tmp_path, text: str, limit: str,
            *options: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "test_case.py").write_text(text)
    env = {"PATH": "/usr/bin:/bin", "ACL_TEST_WATCHDOG": limit, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.watchdog", *options, "--rootdir", str(tmp_path),
                           str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - start


def test_a_stuck_test_ends_the_run_with_its_traceback(tmp_path):
    done, took = _pytest(tmp_path, STUCK, "2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Timeout (0:00:0" in done.stderr, done.stderr
    assert "in test_stuck" in done.stderr, done.stderr
    assert took < 60, took


def test_tests_under_the_limit_each_are_left_alone(tmp_path):
    done, took = _pytest(tmp_path, UNDER, "4")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "3 passed" in done.stdout and "Timeout" not in done.stderr, (done.stdout, done.stderr)
    assert took > 4.5, took         # the run as a whole went past the limit


def test_a_teardown_stuck_after_a_failure_ends_the_run(tmp_path):
    done, took = _pytest(tmp_path, FAILS_THEN_HANGS, "2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Timeout (0:00:0" in done.stderr and "in daemon" in done.stderr, done.stderr
    assert took < 60, took


def test_faulthandler_timeout_is_refused_beside_it(tmp_path):
    done, _ = _pytest(tmp_path, "def test_quick():\n    pass\n", "2",
                      "-o", "faulthandler_timeout=1")
    assert done.returncode == 4 and "set ACL_TEST_WATCHDOG instead" in done.stderr, \
        (done.returncode, done.stderr)


def test_a_forked_child_does_not_wait_for_the_watchdog(tmp_path):
    done, took = _pytest(tmp_path, FORKS, "3")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Timeout" not in done.stderr and took < 60, (done.stderr, took)
