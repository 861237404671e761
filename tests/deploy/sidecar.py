"""Helpers for the deploy tests that run a real ``acl serve``: its policy, polling, a client.

Everything a sidecar binds is under the test's tmp dir or on 127.0.0.1 in
the area's ports; each test starts and stops its own processes by PID.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
import urllib.request
from pathlib import Path

from acl.model import Request
from acl.wire import binary

HOSTS_ALLOW = """\
# alpha: loopback and 10/8; beta: everyone.
alpha: 127.0.0.0/255.0.0.0 [::1] 10.0.0.0/255.0.0.0
beta: ALL
"""
HOSTS_DENY = "ALL: ALL\n"


def write_policy(directory: Path, metrics_port: int, *, rate: float = 0, burst: float = 0,
                 sources: int = 1024) -> Path:
    """A policy TOML with one hosts_access source, sockets under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.allow").write_text(HOSTS_ALLOW)
    (directory / "hosts.deny").write_text(HOSTS_DENY)
    path = directory / "policy.toml"
    path.write_text(textwrap.dedent(f"""\
        [sockets]
        query = "run/query.sock"
        admin = "run/admin.sock"
        mode = "0660"
        admin_uids = [{os.getuid()}]

        [metrics]
        listen = "127.0.0.1:{metrics_port}"

        [limits]
        sources = {sources}
        rate = {rate}
        burst = {burst}

        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["alpha", "beta"]

        [run]
        user = ""
        group = ""
        watch = false
        """))
    (directory / "run").mkdir(exist_ok=True)
    return path


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, deadline_s: float, step: float = 0.1, proc=None):
    """Poll ``what()`` until it returns a true value, for at most deadline_s."""
    end = time.monotonic() + deadline_s
    last_exc = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            value = what()
            if value:
                return value
            last_exc = None
        except (OSError, ValueError) as exc:
            last_exc = exc
        time.sleep(step)
    raise AssertionError(f"gave up after {deadline_s}s: {last_exc!r}")


class Client:
    """A blocking client of the binary protocol (docs/protocol.md)."""

    def __init__(self, path: Path | str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = binary.ReplyDecoder()
        self.next_id = 1

    def send_raw(self, data: bytes, replies: int) -> list:
        self.sock.sendall(data)
        got: list = []
        while len(got) < replies:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"sidecar closed after {len(got)} of {replies} replies")
            got.extend(self.decoder.feed(chunk))
        return got

    def decide_many(self, requests: list[Request]) -> list:
        frames = b""
        for req in requests:
            frames += binary.encode_decide(self.next_id, req)
            self.next_id += 1
        return self.send_raw(frames, len(requests))

    def close(self) -> None:
        self.sock.close()
