"""Small builders shared by the tcpw tests: files from strings, one-line decisions."""

from __future__ import annotations

from acl.cli.match_tcpw import explain
from acl.compile.tcpw import HostsAccessLayer
from acl.parse.hosts_access import parse_hosts
from acl.resolve import HostsFileBackend, Resolver

HOSTS = """127.0.0.1 localhost
10.0.0.1 good.example.com good
10.0.0.2 www.example.com
10.0.0.3 example.com
10.0.0.9 1.2.3.4
10.0.0.9 numrev.example.com
10.0.0.10 plainhost
10.0.0.30 first.example.com alias.example.com
10.0.0.31 alias.example.com yalias.example.com
"""


def layer(allow: str | bytes | None, deny: str | bytes | None, *, dry_run: bool = True,
          hosts: str = HOSTS, path: str = "/rules") -> HostsAccessLayer:
    def b(x):
        return x.encode("latin-1") if isinstance(x, str) else x

    resolver = Resolver(HostsFileBackend(text=hosts))
    return HostsAccessLayer(parse_hosts(f"{path}/hosts.allow", b(allow), dry_run=dry_run),
                            parse_hosts(f"{path}/hosts.deny", b(deny), dry_run=dry_run),
                            resolver)


def verdict(allow, deny, daemon: str, client: str, **kw) -> str:
    """tcpdmatch's answer word for one query (the last address's, like tcpw_cases)."""
    lay = layer(allow, deny, **kw)
    return explain(lay, lay.resolver, daemon, client)[-1].word


def where(allow, deny, daemon: str, client: str, **kw) -> str:
    lay = layer(allow, deny, **kw)
    o = explain(lay, lay.resolver, daemon, client)[-1]
    return f"{o.word} {o.where}"
