"""Policies for the NFQUEUE tests, built from real parts.

Until the rule-language loaders are present, a test policy is the real
engine (acl.engine.Engine) over a real acl.policy.Policy whose one layer is a
real prefix table (acl.core.PrefixTable) denying the networks it is given;
the per-source token bucket is the engine's own ([limits] rate/burst).
When the hosts_access loader is importable, :func:`hosts_access_policy`
writes real hosts.allow/hosts.deny files instead.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from acl.core import PrefixTable
from acl.model import Decision, Reason, Request, Verdict

DENY = Decision(Verdict.DENY, Reason.ADDRESS)


class PrefixDenyLayer:
    """Deny a client covered by one of ``networks``; no opinion otherwise."""

    name = "prefix-deny"

    def __init__(self, networks):
        v4, v6 = [], []
        for i, n in enumerate(networks):
            net = ipaddress.ip_network(n)
            (v4 if net.version == 4 else v6).append((str(net.network_address), net.prefixlen, i))
        self.tables = {4: PrefixTable(4, v4), 6: PrefixTable(6, v6)}

    def check(self, request: Request, now: float):
        family = 6 if ":" in request.client else 4
        return DENY if self.tables[family].first_match(request.client) >= 0 else None


def engine_denying(networks, services=("sshd", "echo"), rate=0.0, burst=0.0):
    from acl.engine import Engine
    from acl.policy import Limits, Policy, Source

    layer = PrefixDenyLayer(networks)
    policy = Policy(None, [Source("hosts_access", layer, frozenset(services), ())],
                    limits=Limits(rate=rate, burst=burst))
    return Engine(policy)


def hosts_access_available() -> bool:
    try:
        import acl.compile.tcpw  # noqa: F401
    except ImportError:
        return False
    return True


def write_policy(tmp: Path, allow: str, deny: str, *, rate=0.0, burst=0.0,
                 nfqueue: str = "") -> Path:
    """A policy TOML with real hosts.allow/hosts.deny files; returns its path."""
    (tmp / "hosts.allow").write_text(allow)
    (tmp / "hosts.deny").write_text(deny)
    # libwrap reads a client's name even for some address patterns (EXCEPT
    # lists): answer from a private file, so no lookup ever asks DNS
    (tmp / "hosts").write_text("127.0.0.1\tlocalhost\n")
    toml = tmp / "policy.toml"
    toml.write_text(
        '[sockets]\nquery = "query.sock"\n\n'
        '[names]\nhosts_file = "hosts"\n\n'
        f"[limits]\nrate = {float(rate)}\nburst = {float(burst)}\n\n"
        '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\ndeny = "hosts.deny"\n'
        'services = ["*"]\n\n' + nfqueue)
    return toml
