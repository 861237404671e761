"""The residual program: rules the prefix tables cannot decide, as closures.

Each rule becomes one function ``fn(query) -> bool`` built from small
closures, so interpreting a residual rule costs a few calls instead of a walk
over pattern objects.  Semantics are exactly the pattern objects' own
``match`` methods (:mod:`acl.parse.hosts_patterns`), which stay the oracle:
``tests/tcpw/test_fuzz.py`` checks the two against each other.

Rules of this file:

* ``ALWAYS`` marks a test that is true for every query (``ALL``); a list
  whose head holds one is true without looking at its other tokens (libwrap
  would stop at the first true token too; skipping a token only skips a
  lookup, never changes an answer).
* ``a b EXCEPT c`` -> ``(a or b) and not c``; an empty list is false; an
  empty tail (``X EXCEPT``) is false, so ``not tail`` is true (spec A.3).
"""

from __future__ import annotations

from acl.parse.hosts_access import HostsRule, PatternList
from acl.parse.hosts_patterns import (
    UNKNOWN,
    AllWord,
    ClientToken,
    DaemonToken,
    Exact,
    Glob,
    HostFile,
    HostKnown,
    HostLocal,
    HostString,
    Netgroup,
    Port,
    StrPrefix,
    Suffix,
)

#: every character an address in socket form can hold (v4, v6, mapped)
_ADDRESS_CHARS = frozenset("0123456789abcdef:.")


def ALWAYS(q) -> bool:  # noqa: N802 - a constant-like marker function
    return True


def NEVER(q) -> bool:  # noqa: N802
    return False


def _string_fn(sm, attr: str):
    """A string pattern against ``q.<attr>`` (an already normalised key)."""
    if isinstance(sm, AllWord):
        return ALWAYS
    if isinstance(sm, Exact):
        t = sm.text
        if attr == "dkey":
            return lambda q: q.dkey == t
        return lambda q: q.ukey == t
    m = sm.match
    if attr == "dkey":
        return lambda q: m(q.dkey)
    return lambda q: m(q.ukey)


def _host_fn(pat, side: str):
    """A host pattern against the client or the server end."""
    if side == "client" and isinstance(pat, HostLocal):
        def local(q):
            n = q.client.nkey
            return n != "unknown" and n != "paranoid" and "." not in n
        return local
    if side == "client" and isinstance(pat, HostKnown):
        def known(q):
            n = q.client.nkey
            return n != "unknown" and n != "paranoid" and q.client.akey != "unknown"
        return known
    if isinstance(pat, HostString):
        sm = pat.sm
        if isinstance(sm, AllWord):
            return ALWAYS
        names = pat.names
        if isinstance(sm, Exact):
            t = sm.text
            if side == "client":
                if names:
                    return lambda q: q.client.akey == t or q.client.nkey == t
                return lambda q: q.client.akey == t
        elif isinstance(sm, (Suffix, StrPrefix)) and side == "client":
            m = sm.match
            if names:
                return lambda q: m(q.client.akey) or m(q.client.nkey)
            return lambda q: m(q.client.akey)
    m = pat.match
    if side == "client":
        return lambda q: m(q.client)
    return lambda q: m(q.server)


def _daemon_token_fn(tok: DaemonToken):
    d = tok.daemon
    if isinstance(d, Port):
        port = d.port

        def fn(q):
            return q.server_sin and q.server_port == port
    else:
        fn = _string_fn(d, "dkey")
    if tok.host is None:
        return fn
    host = _host_fn(tok.host, "server")
    if fn is ALWAYS:
        return host
    return lambda q: fn(q) and host(q)


def _client_token_fn(tok: ClientToken):
    host = _host_fn(tok.host, "client")
    if tok.user is None:
        return host
    user = _string_fn(tok.user, "ukey")
    if host is ALWAYS:
        return user
    return lambda q: host(q) and user(q)


def list_fn(plist: PatternList, token_fn):
    heads = [token_fn(t) for t in plist.head]
    if not heads:
        head = NEVER
    elif ALWAYS in heads:
        head = ALWAYS
    elif len(heads) == 1:
        head = heads[0]
    elif len(heads) == 2:
        a, b = heads

        def head(q):
            return a(q) or b(q)
    else:
        hs = tuple(heads)

        def head(q):
            return any(h(q) for h in hs)
    if plist.tail is None:
        return head
    if head is NEVER:
        return NEVER
    tail = list_fn(plist.tail, token_fn)
    if tail is NEVER:
        return head
    if head is ALWAYS:
        return lambda q: not tail(q)
    return lambda q: head(q) and not tail(q)


def rule_fn(rule: HostsRule):
    """``fn(query) -> bool``: whether ``rule`` matches (daemons, then clients)."""
    d = list_fn(rule.daemons, _daemon_token_fn)
    c = list_fn(rule.clients, _client_token_fn)
    if d is NEVER or c is NEVER:
        return NEVER
    if d is ALWAYS:
        return c
    if c is ALWAYS:
        return d
    return lambda q: d(q) and c(q)


def _only_names(pat) -> bool:
    """True when ``pat`` can match a client only through a *known* name:
    never a socket-form address, never the name "unknown"."""
    if isinstance(pat, (HostLocal, HostKnown, Netgroup)):
        return True
    if isinstance(pat, HostFile):
        return bool(pat.patterns) and all(_only_names(p) for p in pat.patterns)
    if isinstance(pat, HostString) and pat.names:
        sm = pat.sm
        if isinstance(sm, (Exact, Suffix, StrPrefix)):
            literal = sm.text
        elif isinstance(sm, Glob):
            literal = sm.text.replace("*", "").replace("?", "")
        else:
            return False
        literal = literal.lower()
        return any(c not in _ADDRESS_CHARS for c in literal) and not sm.match(UNKNOWN)
    return False


def needs_a_name(rule: HostsRule) -> bool:
    """Whether ``rule`` can only match a socket-form client whose name is known.

    With no resolver and no name from the caller the name is "unknown", so
    such a rule is skipped without being interpreted (netgroups then see
    "unknown" too and match nothing: there is no resolver to ask).
    """
    head = rule.clients.head
    return bool(head) and all(_only_names(t.host) for t in head)


def _netgroup_in(pat) -> bool:
    if isinstance(pat, Netgroup):
        return True
    if isinstance(pat, HostFile):
        return any(_netgroup_in(p) for p in pat.patterns or ())
    return False


def uses_netgroups(rule: HostsRule) -> bool:
    """Whether matching ``rule`` may ask ``innetgr`` (``@group`` in its client
    list, or after ``daemon@`` in its daemon list, or in a ``/file`` there)."""
    return (any(t.host is not None and _netgroup_in(t.host) for t in rule.daemons.tokens())
            or any(_netgroup_in(t.host) for t in rule.clients.tokens()))
