"""What ``acl check`` says about a hosts.allow/hosts.deny pair.

Three kinds of findings, all as :class:`~acl.errors.Diagnostic`:

* **lint** -- tcpdchk's criticisms (spec A.10: empty lists, names ending in
  a dot, bad net/mask, reserved words as daemon names...) plus patterns we
  know can never match (host bits in a net, ``192.168.1`` without its dot,
  an unparsable ``[v6]``, a missing ``/file``), patterns that look like
  something they are not (octal in a plain address, ``::`` outside brackets,
  an indented ``#``), and options that differ between tcpd and tcpdmatch.
* **shadowed rules** -- a rule no client can reach because, for every daemon
  and every address it names, an earlier rule (in either file) matches first.
  Found with the prefix tables: ``covering`` of each of the rule's prefixes.
* **allow/deny overlaps** -- an earlier rule with the opposite verdict that
  decides some of a rule's addresses (``covering`` and ``covered_by``), e.g.
  a hosts.deny network part of which hosts.allow grants.  Catch-alls
  (``ALL``, ``/0``) are meant to come last and are not reported.

Only address-shaped rule heads are analysed for shadows and overlaps: a
verdict on host names would need the resolver's answers, which change.
"""

from __future__ import annotations

import ipaddress
import os
import re

from acl.compile.tcpw import HostsAccessLayer, client_prefixes, daemon_keys
from acl.core import PrefixTable
from acl.errors import Diagnostic, Severity
from acl.parse.hosts_access import HostsRule, HostsTable
from acl.parse.hosts_patterns import (
    AllWord,
    Exact,
    HostFile,
    HostString,
    KnownWord,
    Mask4,
    Netgroup,
    NeverMask,
    Port,
    StrPrefix,
    V6Exact,
    ascii_lower,
    not_inaddr,
    split_at,
)

W = Severity.WARNING
RESERVED = ("unknown", "known", "paranoid", "all", "local")
_PERCENT = re.compile(r"%(.)")


def _net_text(fam: int, net: int, length: int) -> str:
    return str(ipaddress.ip_network((net, length)) if fam == 4 else
               ipaddress.IPv6Network((net, length)))


def _tok_where(rule: HostsRule, tokens, text: str) -> tuple[int, int]:
    for t in tokens:
        if t.text == text:
            return rule.where(t.offset)
    return rule.line, 0


def _lint_list(rule: HostsRule, tokens, what: str, out: list) -> None:
    """tcpdchk: a list whose last EXCEPT has nothing after it, or no tokens."""
    if tokens and ascii_lower(tokens[0].text) == "except":
        line, col = rule.where(tokens[0].offset)
        out.append(Diagnostic(rule.path, line, col,
                              f"{what} list starts with EXCEPT: the rule never matches", W))
        return
    count = 0
    for t in tokens:
        count = 0 if ascii_lower(t.text) == "except" else count + 1
    if count == 0:
        line, col = rule.where(tokens[-1].offset) if tokens else (rule.line, 0)
        msg = (f"{what} list is empty: the rule never matches" if not tokens
               else f"{what} list ends in EXCEPT")
        out.append(Diagnostic(rule.path, line, col, msg, W))


def _lint_host(rule: HostsRule, where, pat, out: list) -> None:
    line, col = where

    def warn(msg):
        out.append(Diagnostic(rule.path, line, col, msg, W))

    if isinstance(pat, NeverMask):
        warn(f"{pat.text}: bad net/mask pattern: never matches")
    elif isinstance(pat, Mask4):
        if pat.net & ~pat.mask & 0xFFFFFFFF:
            warn(f"{pat.text}: the net has bits outside the mask (it is not masked): never matches")
        elif pat.contiguous_length() is None:
            warn(f"{pat.text}: non-contiguous mask (matched bit by bit)")
    elif isinstance(pat, HostFile):
        if pat.patterns is None:
            warn(f"{pat.path}: pattern file missing or unreadable: matches nothing")
    elif isinstance(pat, Netgroup):
        if not pat.group:
            warn("empty netgroup name")
    elif isinstance(pat, HostString):
        tok, sm = pat.text, pat.sm
        if ascii_lower(tok) == "fail":
            warn("FAIL is no longer recognized (use EXCEPT or a deny option)")
        elif isinstance(sm, V6Exact) and sm.packed is None:
            warn(f"{tok}: not an IPv6 address: never matches")
        elif not tok:
            warn("empty host pattern: never matches")
        elif not_inaddr(tok):
            if tok.endswith(".") and not isinstance(sm, (AllWord, KnownWord)):
                warn(f"{tok}: domain or host name ends in dot (a name prefix)")
        elif tok.startswith("."):
            warn(f"{tok}: network number begins with dot (an address suffix)")
        elif isinstance(sm, Exact):
            parts = tok.split(".")
            if len(parts) != 4:
                warn(f"{tok}: not a full dotted quad: compared as text, matches no address"
                     + (f" (did you mean {tok}.?)" if len(parts) < 4 else ""))
            elif any(len(p) > 1 and p.startswith("0") for p in parts):
                warn(f"{tok}: leading zero: plain addresses are compared as text, never as octal")
        elif isinstance(sm, StrPrefix) and any(len(p) > 1 and p.startswith("0")
                                                for p in tok[:-1].split(".")):
            warn(f"{tok}: leading zero: prefixes are compared as text")


def _lint_user(rule: HostsRule, where, text: str, out: list) -> None:
    """tcpdchk's ``check_user``."""
    low = ascii_lower(text)
    msg = None
    if text.startswith("@"):
        msg = f'{text}: user name begins with "@"'
    elif text.startswith("/"):
        msg = f'{text}: user name begins with "/"'
    elif text.startswith("."):
        msg = f"{text}: user name begins with dot"
    elif text.endswith("."):
        msg = f"{text}: user name ends in dot"
    elif low == "fail":
        msg = "FAIL is no longer recognized"
    elif low in RESERVED and low not in ("all", "unknown", "known"):
        msg = f"{text}: user name may be reserved word"
    if msg:
        out.append(Diagnostic(rule.path, *where, msg, W))


def _words(tokens):
    """The raw tokens that are patterns (EXCEPT is an operator)."""
    return [t for t in tokens if ascii_lower(t.text) != "except"]


def lint_rule(rule: HostsRule) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    _lint_list(rule, rule.daemon_tokens, "daemon", out)
    _lint_list(rule, rule.client_tokens, "client", out)
    raw = rule.source.text
    if raw.lstrip(" \t").startswith("#"):
        out.append(Diagnostic(rule.path, rule.first_line, 1,
                              "'#' starts a comment only in column 1: this line is a rule", W))
    head = raw.split(":", 1)[0] if rule.options_text is None else raw
    if re.search(r"(?<![\[\w.:])[0-9a-fA-F]*::", head.replace("[", " [")) and "[" not in raw:
        out.append(Diagnostic(rule.path, rule.line, 0,
                              "'::' outside brackets splits the fields: write IPv6 as [addr]", W))
    for tok, dt in zip(_words(rule.daemon_tokens), rule.daemons.tokens(), strict=True):
        where = rule.where(tok.offset)
        d = dt.daemon
        text = d.text if isinstance(d, Port) else dt.text.split("@", 1)[0]
        low = ascii_lower(text)
        if not isinstance(d, Port):
            if text.startswith("@"):
                out.append(Diagnostic(rule.path, *where, f"{text}: daemon name begins with \"@\"", W))
            elif text.startswith("/"):
                out.append(Diagnostic(rule.path, *where, f"{text}: daemon name begins with \"/\"", W))
            elif text.startswith("."):
                out.append(Diagnostic(rule.path, *where,
                                      f"{text}: daemon name begins with dot (a suffix pattern)", W))
            elif text.endswith("."):
                out.append(Diagnostic(rule.path, *where,
                                      f"{text}: daemon name ends in dot (a prefix pattern)", W))
            elif low == "fail":
                out.append(Diagnostic(rule.path, *where, "FAIL is no longer recognized", W))
            elif low in RESERVED and low not in ("all", "unknown"):
                out.append(Diagnostic(rule.path, *where,
                                      f"{text}: daemon name may be reserved word", W))
        if dt.host is not None:
            if dt.text.endswith("@"):
                out.append(Diagnostic(rule.path, *where,
                                      f"{dt.text}: empty host after '@': never matches", W))
            else:
                _lint_host(rule, where, dt.host, out)
    for tok, ct in zip(_words(rule.client_tokens), rule.clients.tokens(), strict=True):
        where = rule.where(tok.offset)
        _lint_host(rule, where, ct.host, out)
        if ct.user is not None:
            _lint_user(rule, where, split_at(ct.text, "@", 1)[0], out)
        if isinstance(ct.host, HostFile):
            for sub in ct.host.patterns or ():
                _lint_host(rule, where, sub, out)
    for opt in rule.options.ran:
        if opt.keyword == "banners" and not os.path.isdir(opt.value):
            out.append(Diagnostic(rule.path, rule.line, 0,
                                  f"option banners: {opt.value}: no such directory", W))
        if opt.keyword in ("user", "group"):
            out.append(Diagnostic(rule.path, rule.line, 0,
                                  f"option {opt.keyword}: does nothing in Debian's tcpd, "
                                  "yet tcpdmatch run as root reports it as denied", W))
        for code in _PERCENT.findall(opt.value or ""):
            if code not in "aAcdhHnNprRsu%":
                out.append(Diagnostic(rule.path, rule.line, 0,
                                      f"option {opt.keyword}: unknown expansion %{code}", W))
    return out


def head_shape(rule: HostsRule):
    """(daemon keys, prefixes) that bound everything the rule can match, or None."""
    d, c = rule.daemons, rule.clients
    if d.tail is not None or not d.head or not c.head:
        return None
    keys = daemon_keys(d)
    prefixes = None if keys is None else client_prefixes(c, users=True)
    return None if prefixes is None else (keys, prefixes)


def _tables(layer: HostsAccessLayer, indices) -> dict:
    """Per daemon key, (v4, v6) tables of *pure* rules among ``indices``."""
    entries: dict = {}
    for i in indices:
        shape = layer.shapes[i] if layer.pure[i] else None
        if shape is None:
            continue
        keys, prefixes = shape
        for key in keys:
            e4, e6 = entries.setdefault(key, ([], []))
            for fam, net, length in prefixes:
                (e4 if fam == 4 else e6).append((net, length, i))
    return {k: (PrefixTable(4, e4), PrefixTable(6, e6)) for k, (e4, e6) in entries.items()}


def _loc(layer: HostsAccessLayer, i: int) -> str:
    r = layer.rules[i]
    return f"{r.path}:{r.line}"


def shadowed(layer: HostsAccessLayer) -> list[Diagnostic]:
    """Rules that can never match because earlier rules cover all they name."""
    tables = _tables(layer, range(len(layer.rules)))
    out = []
    for j, rule in enumerate(layer.rules):
        shape = head_shape(rule)
        if shape is None or not shape[1]:
            continue
        keys, prefixes = shape
        by: set[int] = set()
        covered = True
        for key in keys:
            cands = [tables.get(None)] + ([tables.get(key)] if key is not None else [])
            for fam, net, length in prefixes:
                best = None
                for t in cands:
                    if t is None:
                        continue
                    for _, ln, v in t[0 if fam == 4 else 1].covering(net):
                        if ln <= length and v < j and (best is None or v < best):
                            best = v
                if best is None:
                    covered = False
                    break
                by.add(best)
            if not covered:
                break
        if covered and by:
            earlier = ", ".join(_loc(layer, i) for i in sorted(by))
            out.append(Diagnostic(rule.path, rule.line, 0,
                                  f"rule can never match: every client it names is matched "
                                  f"first by {earlier}", W))
    return out


def overlaps(layer: HostsAccessLayer, skip=frozenset(), limit: int = 5) -> list[Diagnostic]:
    """Earlier rules with the opposite verdict that take some of a rule's clients."""
    out = []
    tables = _tables(layer, range(len(layer.rules)))
    for j, rule in enumerate(layer.rules):
        shape = head_shape(rule)
        if shape is None or j in skip:
            continue
        mine = layer.decisions[j].verdict
        keys, prefixes = shape
        names = list(tables) if None in keys else [None, *keys]
        hits: dict[int, tuple] = {}
        for key in names:
            t = tables.get(key)
            if t is None:
                continue
            for fam, net, length in prefixes:
                if length == 0:
                    continue        # a catch-all (ALL, /0) is meant to come last
                table = t[0 if fam == 4 else 1]
                rows = [r for r in table.covering(net) if r[1] <= length]
                rows += table.covered_by(net, length)
                for n2, l2, v in rows:
                    if v < j and layer.decisions[v].verdict != mine:
                        hits.setdefault(v, (fam, n2, l2, net, length))
        for v in sorted(hits)[:limit]:
            fam, n2, l2, net, length = hits[v]
            if l2 <= length:        # the earlier prefix holds all of ours
                n2, l2 = net, length
            out.append(Diagnostic(
                rule.path, rule.line, 0,
                f"overlap: clients in {_net_text(fam, n2, l2)} (of this rule's "
                f"{_net_text(fam, net, length)}) are decided first by {_loc(layer, v)} "
                f"({layer.decisions[v].verdict.name.lower()})", W))
        if len(hits) > limit:
            out.append(Diagnostic(rule.path, rule.line, 0,
                                  f"overlap: and {len(hits) - limit} more earlier rules", W))
    return out


def comment_continuations(table: HostsTable, data: bytes) -> list[Diagnostic]:
    """A comment line ending in a backslash swallows the next line (D.1.5)."""
    out = []
    lines = data.split(b"\n")
    for n, raw in enumerate(lines[:-1], start=1):
        if raw.startswith(b"#") and raw.rstrip(b"\r").endswith(b"\\"):
            out.append(Diagnostic(table.path, n, len(raw),
                                  "comment ends in a backslash: the next line is part of the comment",
                                  W))
    return out


def check(layer: HostsAccessLayer) -> list[Diagnostic]:
    """Every finding: parse diagnostics, lint, shadowed rules, overlaps."""
    out = list(layer.allow.diagnostics) + list(layer.deny.diagnostics)
    for rule in layer.rules:
        out.extend(lint_rule(rule))
    shadows = shadowed(layer)
    out.extend(shadows)
    hidden = {i for i, r in enumerate(layer.rules)
              for d in shadows if (d.path, d.line) == (r.path, r.line)}
    out.extend(overlaps(layer, frozenset(hidden)))
    return out
