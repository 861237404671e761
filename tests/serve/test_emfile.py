"""Out of descriptors: acl serve says so once, counts it, keeps its clients
waiting instead of dropping them, and serves again when descriptors free up
-- on asyncio's loop and on uvloop's (acl/serve/accept.py).

The server runs with RLIMIT_NOFILE 64 (soft and hard, so acl cannot raise
it) and 100 clients connect and stay.  Metrics on 127.0.0.1:2446x
(PORTS["serve"]).
"""

from __future__ import annotations

import re
import resource
import socket
import urllib.request

import pytest

from acl.client import Client

from .conftest import policy_toml, start_server, wait_for
from .test_server import admin

NOFILE = 64
CLIENTS = 100
LOOPS = {"asyncio": ("1", 24460), "uvloop": ("0", 24461)}


def _limit() -> None:                  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_out_of_descriptors_is_logged_once_counted_and_survived(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    no_uvloop, port = LOOPS[loop]
    srv = start_server(tmp_path, policy_toml(tmp_path, metrics=f"127.0.0.1:{port}"),
                       env={"ACL_NO_UVLOOP": no_uvloop}, preexec=_limit)
    socks: list[socket.socket] = []
    try:
        assert f"{loop} loop" in srv.text()
        for _ in range(CLIENTS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(srv.query)
            socks.append(s)
        wait_for(lambda: "out of descriptors" in srv.text(), 15, "the out-of-descriptors line")
        # no client was accepted and dropped: every one is open or waiting
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        for s in socks:
            s.close()
        socks.clear()
        with Client(srv.query, timeout=15) as c:      # served again
            assert c.decide("sshd", "192.0.2.1").allowed
        st = admin(srv.admin, "stats")
        failed = {(sock, code): n for sock, code, n in st["accept_errors"]}
        assert failed.get(("query", "EMFILE"), 0) >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        m = re.search(r'^acl_accept_errors_total\{errno="EMFILE",socket="query"\} (\S+)$',
                      body, re.M)
        assert m and float(m[1]) >= 1, body
    finally:
        for s in socks:
            s.close()
        srv.stop()
    log = srv.text()
    assert log.count("out of descriptors") == 1, log      # at most one a minute
    assert "Traceback" not in log and "exception" not in log.lower(), log
