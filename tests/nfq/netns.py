"""Network namespaces for the live NFQUEUE tests and the benchmark.

Rules (network safety):

* Everything happens in two namespaces made here, named
  ``acltest-nfq-<pid>-srv`` and ``-cli``, joined by one veth pair; the
  addresses below exist only on that veth, inside those namespaces.
* Firewall rules are added inside the server namespace only.
* ``close()`` deletes exactly the namespaces this object made (by name),
  which also removes the veth pair and every rule in them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER4 = "10.213.0.1"
SERVER6 = "fd00:ac1::1"
#: Client addresses, one per role in a test: (IPv4, IPv6).
CLIENTS4 = [f"10.213.0.{i}" for i in range(10, 30)]
CLIENTS6 = [f"fd00:ac1::{i}" for i in range(10, 30)]   # same digits, read as hex


def available() -> str | None:
    """None when live tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "ip6tables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        import acl._nfq  # noqa: F401
    except ImportError as exc:
        return f"acl._nfq not built: {exc}"
    return None


def run(*args, check=True, timeout=20, **kw):
    return subprocess.run(args, check=check, timeout=timeout, capture_output=True, text=True, **kw)


class NetnsPair:
    """A server and a client namespace joined by a veth pair (see the rules)."""

    def __init__(self, tag: str = ""):
        base = f"acltest-nfq-{os.getpid()}{tag}"
        self.srv = f"{base}-srv"
        self.cli = f"{base}-cli"
        self.made: list[str] = []
        short = f"{os.getpid() % 100000}{tag}"[:8]
        self.veth_srv = f"anq{short}s"
        self.veth_cli = f"anq{short}c"

    def __enter__(self) -> NetnsPair:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        for ns in (self.srv, self.cli):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.srv, "link", "add", self.veth_srv, "type", "veth",
            "peer", "name", self.veth_cli, "netns", self.cli)
        run("ip", "-n", self.srv, "addr", "add", f"{SERVER4}/24", "dev", self.veth_srv)
        run("ip", "-n", self.srv, "addr", "add", f"{SERVER6}/64", "dev", self.veth_srv, "nodad")
        for a4, a6 in zip(CLIENTS4, CLIENTS6, strict=True):
            run("ip", "-n", self.cli, "addr", "add", f"{a4}/24", "dev", self.veth_cli)
            run("ip", "-n", self.cli, "addr", "add", f"{a6}/64", "dev", self.veth_cli, "nodad")
        for ns, dev in ((self.srv, self.veth_srv), (self.cli, self.veth_cli)):
            run("ip", "-n", ns, "link", "set", dev, "up")

    def exec_args(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def srv_run(self, *argv: str, **kw):
        return run(*self.exec_args(self.srv, *argv), **kw)

    def python(self, ns: str, module: str, *argv: str) -> list[str]:
        return self.exec_args(ns, sys.executable, "-m", module, *argv)

    def rules(self, action: str, **settings: str) -> None:
        """The deploy script's iptables rules, in the server namespace."""
        env = dict(os.environ, **settings)
        self.srv_run("sh", str(ROOT / "deploy" / "nfqueue" / "acl-nfqueue-rules"), "iptables",
                     action, env=env)

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.made = []
