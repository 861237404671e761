"""Fixtures of the decision-service tests: policies in temp dirs, a live
``acl serve`` subprocess on Unix sockets, helpers for raw frames.

Live servers bind only Unix sockets in the test's temp dir and, for metrics,
loopback ports of this area (tests/conftest.py PORTS["serve"]: 24000-24999).
Every server is started by Popen and stopped by its PID in a finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest

from acl.client import AsyncClient
from acl.wire import binary as wb
from tests.sidecar import Live, start_server, wait_for  # noqa: F401  (the area's tests import them from here)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

HOSTS_ALLOW = """\
sshd: 127.0.0.1 [::1] 192.0.2.0/255.255.255.0 [2001:db8::]/32
smtpd: 127.0.0.1 127.0.0.2 192.0.2.0/255.255.255.0
echo: ALL
"""
HOSTS_DENY = "ALL: ALL\n"
TCPRULES = """\
127.0.0.1:allow,RELAYCLIENT=""
192.0.2.66:deny
192.0.2.:allow,GREETDELAY="5"
:allow
"""
XINETD = """\
defaults
{
	instances	= 50
}

service echo
{
	id		= echo-stream
	type		= INTERNAL
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	flags		= IPv4
	only_from	= 127.0.0.0/8 192.0.2.0/24
	per_source	= 2
	instances	= 3
	cps		= 0 0
}
"""


#: The clients that ``named_hosts``'s hosts file names (``NAMED[i]`` is
#: ``c<i>.good.example``), and one it does not name.
NAMED = ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"]
UNNAMED = "10.3.0.1"


def named_hosts(d: Path, allow: str = "") -> None:
    """The rule files of the name tests that run the engine in process:
    ``echo`` is allowed from .good.example (after the ``allow`` lines
    given), all else denied; and ``hosts``, for ``[names] hosts_file =
    "hosts"``, names each of NAMED -- names from a file of the test's, so
    no lookup leaves the machine."""
    (d / "hosts.allow").write_text(f"{allow}echo: .good.example\n")
    (d / "hosts.deny").write_text(HOSTS_DENY)
    (d / "hosts").write_text("".join(f"{a}\tc{i}.good.example\n" for i, a in enumerate(NAMED)))


def policy_toml(d: Path, *, metrics: str = "", extra: str = "", policy_socket: bool = True,
                admin_uids: str = "[0]", rate: float = 0, burst: float = 0,
                run: str = "") -> Path:
    (d / "hosts.allow").write_text(HOSTS_ALLOW)
    (d / "hosts.deny").write_text(HOSTS_DENY)
    (d / "tcp.smtpd").write_text(TCPRULES)
    (d / "xinetd.conf").write_text(XINETD)
    text = f"""
[sockets]
query = "query.sock"
{'policy = "policy.sock"' if policy_socket else ''}
policy_service = "smtpd"
admin = "admin.sock"
mode = "0666"
admin_uids = {admin_uids}

[metrics]
listen = "{metrics}"

[limits]
sources = 4096
rate = {rate}
burst = {burst}

[[source]]
type = "xinetd"
file = "xinetd.conf"

[[source]]
type = "tcprules"
file = "tcp.smtpd"
services = ["smtpd"]

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]

[run]
watch = true
{run}
{extra}
"""
    p = d / "policy.toml"
    p.write_text(text)
    return p


@pytest.fixture
def served(tmp_path):
    """A fresh server on the test policy (no metrics listener)."""
    live = start_server(tmp_path, policy_toml(tmp_path))
    try:
        yield live
    finally:
        live.stop()


def connect(path: str, timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_replies(sock: socket.socket, n: int, dec: wb.ReplyDecoder | None = None) -> list:
    dec = dec or wb.ReplyDecoder()
    out = []
    while len(out) < n:
        data = sock.recv(1 << 16)
        if not data:
            break
        out.extend(dec.feed(data))
    return out


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def in_process(server, clients: int = 1, wait: float = 10.0):
    """``server`` (a bound acl.serve.server.Server) serving on this event
    loop for the block, which gets ``clients`` AsyncClients connected to its
    query socket; afterwards they are closed and the server stopped, every
    wait bounded by ``wait`` seconds."""
    ready = asyncio.Event()
    serving = asyncio.ensure_future(server.serve(ready=ready.set))
    conns: list[AsyncClient] = []
    try:
        await asyncio.wait_for(ready.wait(), wait)
        for _ in range(clients):
            conns.append(await asyncio.wait_for(
                AsyncClient.connect(server.addresses["query"]), wait))
        yield conns
    finally:
        for c in conns:
            await c.close()
        server.stop()
        await asyncio.wait_for(serving, wait)


async def until(pred, what: str, wait: float = 10.0) -> None:
    """Poll ``pred`` on the event loop until it holds; fail after ``wait`` s."""
    give_up = time.monotonic() + wait
    while not pred():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
