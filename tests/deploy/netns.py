"""A network namespace held open by a process the test starts (``unshare --net``
running ``sleep``) and kills by PID; commands enter it with ``nsenter``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


class Netns:
    """A network namespace held open by a process we started (and kill by PID)."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "up":
            err = self.holder.stderr.read() if self.holder.poll() is not None else ""
            self.close()
            pytest.skip(f"cannot make a network namespace: {err.strip() or line!r}")
        self.path = f"/proc/{self.holder.pid}/ns/net"

    def cmd(self, *argv) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv, timeout=30, check=True):
        return subprocess.run(self.cmd(*argv), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def fetch(self, url: str) -> str:
        """HTTP GET from inside the namespace (the test process lives outside it)."""
        return self.fetch_many([url])[0]

    def fetch_many(self, urls: list[str]) -> list[str]:
        """Several GETs in one process started inside the namespace."""
        code = ("import json, sys, urllib.request; json.dump([urllib.request.urlopen(u, "
                "timeout=5).read().decode() for u in sys.argv[1:]], sys.stdout)")
        out = self.run(sys.executable, "-c", code, *urls, timeout=60, check=False)
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            raise OSError(f"GET {urls[0]}...: {lines[-1] if lines else out.returncode}")
        return json.loads(out.stdout)

    def close(self):
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(timeout=10)


#: The veth link ``link`` makes: the server's address, then the client's
#: (a client in another namespace, as the daemons' real clients are).
SERVER_ADDR = "10.213.9.1"
CLIENT_ADDRS = ("10.213.9.10", "10.213.9.11")


def link(server: Netns, client: Netns) -> None:
    """A veth pair between two namespaces the test made, with the addresses above."""
    server.run("ip", "link", "add", "aclsrv", "type", "veth", "peer", "name", "aclcli",
               "netns", str(client.holder.pid))
    server.run("ip", "addr", "add", f"{SERVER_ADDR}/24", "dev", "aclsrv")
    for addr in CLIENT_ADDRS:
        client.run("ip", "addr", "add", f"{addr}/24", "dev", "aclcli")
    server.run("ip", "link", "set", "aclsrv", "up")
    client.run("ip", "link", "set", "aclcli", "up")
