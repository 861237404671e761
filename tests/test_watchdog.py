"""tests/watchdog.py stops a stuck test -- one holding the GIL in a loop,
as an endless loop in compiled code does -- with its traceback, and leaves
tests that finish alone, however many of them, each under the limit.

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

# each test alone stays under the limit; together they run past it
UNDER = '''
import time


def test_one():
    time.sleep(1.2)


def test_two():
    time.sleep(1.2)


def test_three():
    time.sleep(1.2)
'''


def _pytest(tmp_path, text: str, limit: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "test_case.py").write_text(text)
    env = {"PATH": "/usr/bin:/bin", "ACL_TEST_WATCHDOG": limit, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.watchdog", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - start


def test_a_stuck_test_ends_the_run_with_its_traceback(tmp_path):
    done, took = _pytest(tmp_path, STUCK, "2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Timeout (0:00:02)!" in done.stderr, done.stderr
    assert "in test_stuck" in done.stderr, done.stderr
    assert took < 60, took


def test_tests_under_the_limit_each_are_left_alone(tmp_path):
    done, took = _pytest(tmp_path, UNDER, "2")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "3 passed" in done.stdout and "Timeout" not in done.stderr, (done.stdout, done.stderr)
    assert took > 3, took           # the run as a whole went past the limit
