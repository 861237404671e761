"""Shared test fixtures.

* Every core test runs twice: on the compiled module and on its pure twin
  (STYLE.md 4).  ``tests/run`` sets ``ACL_REQUIRE_COMPILED=1`` so that in CI a
  compiled core that fails to import is a failure, not a silent skip.
* Live tests bind only to loopback; each area owns a port range so the
  areas do not collide (see PORTS).  Two runs of one area at once do: the
  live helpers call ``require_free_ports`` before they start a server on
  fixed ports, so a port another run holds fails as that, not as a false
  disagreement with the real tool (tests/README.md: run each suite in its
  own network namespace).
* A test that runs longer than ``ACL_TEST_WATCHDOG`` seconds ends the run
  with every thread's traceback (tests/watchdog.py, registered here).
* The long differential runs (``ACL_SLOW=1``) draw their generated files from
  fixed seed ranges, shifted by ``ACL_SEED_BASE`` (see SLOW_SEED_BASE) so a
  run can explore cases no earlier run has seen and still be repeated.
"""

from __future__ import annotations

import errno
import importlib
import os
import runpy
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from . import watchdog

#: Loopback TCP port ranges, one per test area (half-open).  They sit below
#: Linux's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
#: default), so that no client socket the tests or anything else opens can
#: be handed a port a live test is about to listen on.
PORTS = {
    "tcpw": (21000, 22000),
    "tcprules": (22000, 23000),
    "xinetd": (23000, 24000),
    "serve": (24000, 25000),
    "wrap": (25000, 26000),
    "nfq": (26000, 27000),
    "deploy": (27000, 28000),
}

#: ACL_SLOW=1 (any value but empty or "0") asks the long runs: more generated
#: cases, examples and queries.  Every test reads it from here, so "0" means
#: the same everywhere.
SLOW = os.environ.get("ACL_SLOW", "") not in ("", "0")

#: Added to the first seed of every ACL_SLOW differential range (default 0:
#: the ranges the suite has always used).
SLOW_SEED_BASE = int(os.environ.get("ACL_SEED_BASE", "0"))

REQUIRE_COMPILED = os.environ.get("ACL_REQUIRE_COMPILED", "") not in ("", "0")


#: The sanitizers of an ACL_SANITIZE run ("" for none) and the flags that
#: the C a test compiles itself gets then: the same as the package's build
#: (ext/sanitizer.py, run by its path: its rules).
_SANITIZER = runpy.run_path(str(Path(__file__).resolve().parents[1] / "ext" / "sanitizer.py"))
SANITIZE = _SANITIZER["sanitizers"]()
SANITIZE_FLAGS = _SANITIZER["flags"]()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 10) -> int | None:
    """Stop a child the test started, by its handle: ``sig``, then SIGKILL
    if it has not exited within ``timeout``.  Its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def require_free_ports(ports, hosts=("127.0.0.1", "::1"), proto: str = "tcp") -> None:
    """Fail the test, saying why, when a port a live helper is about to give
    a server is already taken at one of ``hosts``.  Otherwise the real tool
    would fail to bind it (xinetd logs it and runs on without that service)
    or a probe would reach another run's server, and the test would blame
    acl or the tool.

    TCP binds as the servers do, with SO_REUSEADDR: a connection of an
    earlier test left in TIME_WAIT is no conflict, a listening socket is.
    UDP binds without it: two UDP sockets with SO_REUSEADDR (xinetd sets it)
    share a port, and only the last bound gets the datagrams -- a silent
    clash; UDP has no TIME_WAIT to excuse."""
    kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}[proto]
    for port in ports:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                    continue
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        continue        # no such address here (no IPv6): nothing to clash with
            # outside the except: the report starts with this, not the OSError
            pytest.fail(
                f"{proto} port {port} on {host} is in use: is another test run going? "
                "Run each suite in its own network namespace (tests/README.md, "
                "\"Two runs on one machine\")", pytrace=False)


def load_impl(kind: str, compiled: str, pure: str):
    """Import the compiled or the pure implementation of a core module.

    The compiled one is skipped when absent, unless ACL_REQUIRE_COMPILED is set,
    in which case its absence fails the test.
    """
    if kind == "pure":
        return importlib.import_module(pure)
    try:
        return importlib.import_module(compiled)
    except ImportError as exc:
        if REQUIRE_COMPILED:
            pytest.fail(f"compiled module {compiled} required but not importable: {exc}")
        pytest.skip(f"compiled module {compiled} not built: {exc}")


@pytest.fixture(params=["compiled", "pure"])
def core(request):
    """The prefix core module: ``acl._core`` and its twin ``acl._core_py``."""
    return load_impl(request.param, "acl._core", "acl._core_py")


def pytest_configure(config):
    if not config.pluginmanager.is_registered(watchdog):
        config.pluginmanager.register(watchdog, "acl-watchdog")


def pytest_sessionfinish(session, exitstatus):
    # "No tests ran" must never look green, whatever the runner's exit code.
    if exitstatus == 0 and session.testscollected == 0:
        session.exitstatus = 5
