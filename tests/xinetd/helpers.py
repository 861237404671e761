"""Small builders shared by the xinetd unit tests."""

from __future__ import annotations

import time

from acl.compile.xinetd import XinetdLayer, load_xinetd_text
from acl.model import Request
from acl.parse.xinetd_resolve import HostsResolver
from tests.xinetd.live_support import HOSTS, NETWORKS

RESOLVER = HostsResolver(HOSTS, NETWORKS)
#: a fixed local noon, so access_times tests do not depend on the hour they run
NOON = time.mktime((2026, 1, 15, 12, 0, 30, 0, 0, -1))


def svc(name: str, *lines: str, port: int = 23900, bind: str | None = "127.0.0.1",
        flags: str = "NOLIBWRAP", server: str = "/bin/echo") -> str:
    body = ["type = UNLISTED", f"port = {port}", "socket_type = stream", "protocol = tcp",
            "wait = no", "user = root", f"server = {server}"]
    if bind:
        body.append(f"bind = {bind}")
    if flags:
        body.append(f"flags = {flags}")
    body += list(lines)
    inner = "\n".join("  " + b for b in body)
    return f"service {name}\n{{\n{inner}\n}}\n"


def defaults(*lines: str) -> str:
    inner = "\n".join("  " + b for b in lines)
    return f"defaults\n{{\n{inner}\n}}\n"


def load(text: str):
    return load_xinetd_text(text, "test.conf", RESOLVER)


def layer(text: str, **kw) -> XinetdLayer:
    policy, _ = load(text)
    return XinetdLayer(policy, resolver=RESOLVER, **kw)


def addr(lay: XinetdLayer, service: str, client: str) -> str:
    """``allow`` / ``deny REASON`` / ``absent`` for an address-only query."""
    d = lay.check_address(Request(service=service, client=client))
    if d is None:
        return "absent"
    return "allow" if d.allowed else f"deny {d.reason.log_text}"


def full(lay: XinetdLayer, service: str, client: str, now: float) -> str:
    d = lay.check(Request(service=service, client=client), now)
    if d is None:
        return "absent"
    return "allow" if d.allowed else f"deny {d.reason.log_text}"
