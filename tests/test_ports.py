"""The live tests' port areas (tests/conftest.py PORTS) stay apart and clear of
the kernel's ephemeral range: a client socket handed a port a live test was
about to listen on made rare, unrepeatable failures.  A port another test
run holds is reported as that (tests/conftest.py require_free_ports)."""

import errno
import socket
from itertools import pairwise
from pathlib import Path

import pytest

from tests.conftest import PORTS, require_free_ports

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_port_areas_do_not_overlap():
    spans = sorted(PORTS.values())
    for (_, end), (start, _) in pairwise(spans):
        assert end <= start, spans


def test_port_areas_are_outside_the_ephemeral_range():
    low, high = map(int, EPHEMERAL.read_text().split())
    inside = {area: span for area, span in PORTS.items()
              if span[0] <= high and span[1] - 1 >= low}
    assert not inside, f"ephemeral ports {low}-{high} overlap {inside}"


def _listener() -> socket.socket:
    """A socket listening on 127.0.0.1, on a port the kernel picks (no port
    of the areas: this test must not clash with a live test running), with
    SO_REUSEADDR as xinetd and tcpserver set it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_port_another_run_holds_fails_as_that():
    held = _listener()
    port = held.getsockname()[1]
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            require_free_ports([port])
        assert (f"tcp port {port} on 127.0.0.1 is in use: is another test run going? "
                "Run each suite in its own network namespace") in str(failed.value)
    finally:
        held.close()
    require_free_ports([port])


def test_xinetd_is_not_started_on_a_held_port(tmp_path):
    """The live xinetd helper checks its configuration's ports, those of an
    includedir file too, before it starts xinetd (which would run on without
    the service, and the probes would disagree with acl)."""
    from tests.xinetd.helpers import svc
    from tests.xinetd.live_support import Xinetd

    held = _listener()
    port = held.getsockname()[1]
    inc = tmp_path / "xinetd.d"
    inc.mkdir()
    (inc / "held").write_text(svc("held", port=port))
    # the other service's port: one the kernel hands out, free now (an area
    # port could be another run's, and fail first with its own message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    xd = Xinetd(svc("free", port=free) + f"includedir {inc}\n", 2)
    try:
        with pytest.raises(pytest.fail.Exception, match=f"tcp port {port} on 127.0.0.1 is in use"):
            xd.start()
        assert xd.proc is None
    finally:
        xd.stop()
        held.close()


def test_a_connection_left_in_time_wait_is_no_conflict():
    """The servers bind with SO_REUSEADDR, so the check does too: the server
    side of a connection the server closed first stays in TIME_WAIT on the
    port for a minute, and the next test's server binds it all the same."""
    listener = _listener()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    listener.close()
    conn.close()                    # the server side closes first: TIME_WAIT
    client.recv(1)
    client.close()
    # the TIME_WAIT is there: a bind without SO_REUSEADDR is refused
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    require_free_ports([port])


def test_a_udp_port_another_run_shares_fails_as_that():
    """Two UDP sockets with SO_REUSEADDR (xinetd sets it) both bind one
    port, and only the last bound gets the datagrams: the UDP check binds
    without it, so another run's socket is seen."""
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        require_free_ports([port])          # TCP: a different port space
        with pytest.raises(pytest.fail.Exception,
                           match=f"udp port {port} on 127.0.0.1 is in use"):
            require_free_ports([port], proto="udp")
    finally:
        held.close()
    require_free_ports([port], proto="udp")
