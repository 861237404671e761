"""hosts.allow / hosts.deny files -> rules, read exactly the way libwrap reads them.

Rules of this file (spec A.1.5, A.2, A.3; libwrap ``table_match``, ``xgets``):

* Physical lines are read with a 2048-byte buffer (``fgets`` + ``strlen``, so
  a NUL byte cuts the rest of its chunk).  Backslash-newline joins the next
  physical line with **no** space.  The line number of a rule is libwrap's
  counter after its last physical line (what tcpdmatch prints).
* A logical line that does not end in a newline -- the last line of a file
  without one, or a line of 2047+ characters -- is an **error that stops the
  file**: in hosts.allow the remaining rules are gone, in hosts.deny every
  client not matched earlier is denied.  :attr:`HostsTable.stop` records it.
* ``#`` in column 1 is a comment (after joining, so a comment ending in ``\\``
  eats the next line); blank lines are skipped; a line without a ``:``
  outside brackets is skipped with a warning.
* Fields: ``daemons : clients [: options]``, split at the first two colons
  outside ``[...]``.  Lists are split on runs of space, tab, CR, LF and comma.
* ``a b EXCEPT c EXCEPT d`` is ``(a or b) and not (c and not d)``: a list is
  its head (tokens before the first EXCEPT) and the list after it.
* A file that is missing (ENOENT) or a directory is empty; any other read
  error is an error of that table (libwrap: "cannot open").
* Speed, without a change of meaning (``tests/tcpw/test_fast_lane.py``): a
  file of a million prefixes is 20,000 lines of 50 patterns.  The usual line
  (one chunk, no NUL, no backslash-newline) skips the general ``xgets``
  loop, and when the compiler hands in ``scan_clients``, a client list made
  only of plain IPv4 patterns becomes packed prefixes (``HostsRule.scanned``)
  with no token objects; every other list goes through the full parser.
* Objects, without a change of meaning: a DenyHosts/fail2ban file is 200,000
  lines of ``sshd: a.b.c.d``.  A *compact* line -- one physical line, no
  options, client list read by the fast lane -- is not a :class:`HostsRule`
  but a few columns of :class:`HostsRules` (where it begins in the file's
  bytes, its line numbers, daemon list, a span of the table's packed
  prefixes: no object of its own).  ``table.rules[i]`` makes the HostsRule on first use, the same
  one the full parser's lane would hold, and keeps it (two threads asking at
  once may each make one: equal, and either serves); the compiler reads the
  columns (:meth:`HostsRules.spans`, :meth:`HostsRules.compact`) and asks
  for no HostsRule.
"""

from __future__ import annotations

import bisect
import re
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

from acl.errors import Diagnostic, Severity
from acl.parse.hosts_options import NO_OPTIONS, OptionProgram, compile_options
from acl.parse.hosts_patterns import (
    DaemonToken,
    ascii_lower,
    client_token,
    daemon_token,
    split_at,
)
from acl.parse.hosts_prefixes import RulePrefixes
from acl.rulefiles import read_bytes

BUFLEN = 2048
SEPARATORS = ", \t\r\n"


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    offset: int     # in the logical line


@dataclass(frozen=True, slots=True)
class PatternList:
    """``head EXCEPT tail``; ``tail`` None when there is no EXCEPT."""

    head: tuple
    tail: PatternList | None = None

    def match(self, q) -> bool:
        for tok in self.head:
            if tok.match(q):
                return self.tail is None or not self.tail.match(q)
        return False

    def tokens(self):
        yield from self.head
        if self.tail is not None:
            yield from self.tail.tokens()


EMPTY_LIST = PatternList(())


def build_list(tokens: list, make) -> PatternList:
    """Right-associative EXCEPT (A.3): split at the first EXCEPT, recurse."""
    for i, tok in enumerate(tokens):
        if ascii_lower(tok.text) == "except":
            return PatternList(tuple(make(t.text) for t in tokens[:i]),
                               build_list(tokens[i + 1:], make))
    return PatternList(tuple(make(t.text) for t in tokens))


class LogicalLine(NamedTuple):
    """One logical line and where each piece of it came from (a tuple: a
    file of a million lines makes one each)."""

    text: str
    starts: tuple[int, ...]     # logical offsets where a physical piece begins
    lines: tuple[int, ...]      # physical line of each piece
    cols: tuple[int, ...]       # column (1-based) where each piece begins
    line: int                   # libwrap's line counter after this line
    at: int = -1                # byte offset of the first piece in the file

    def where(self, offset: int) -> tuple[int, int]:
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        return self.lines[i], self.cols[i] + offset - self.starts[i]


class HostsRule:
    """One rule: where it is, its daemon list, its client list, its options.

    ``scanned`` is set when the client list is only plain IPv4 patterns and
    was read by the fast lane (``scan_clients`` of :func:`parse_hosts`): then it holds
    the rule's prefixes, and the client tokens and patterns, which only the
    interpreter and ``acl check`` need, are made on first use.
    """

    __slots__ = ("path", "line", "first_line", "daemon_tokens", "daemons", "options_text",
                 "options", "source", "scanned", "_client_text", "_client_base",
                 "_client_tokens", "_clients")

    def __init__(self, *, path: str, line: int, first_line: int,
                 daemon_tokens: tuple[Token, ...], daemons: PatternList,
                 options_text: str | None, options: OptionProgram, source: LogicalLine,
                 client_tokens: tuple[Token, ...] | None = None,
                 clients: PatternList | None = None, client_text: str = "",
                 client_base: int = 0, scanned: RulePrefixes | None = None) -> None:
        self.path = path
        self.line = line                # libwrap's line number (tcpdmatch "matched")
        self.first_line = first_line
        self.daemon_tokens = daemon_tokens
        self.daemons = daemons
        self.options_text = options_text    # raw third field (newline included), or None
        self.options = options
        self.source = source
        self.scanned = scanned
        self._client_text = client_text
        self._client_base = client_base
        self._client_tokens = client_tokens
        self._clients = clients

    @property
    def client_tokens(self) -> tuple[Token, ...]:
        if self._client_tokens is None:
            self._client_tokens = tuple(strtok(self._client_text, self._client_base))
        return self._client_tokens

    @property
    def clients(self) -> PatternList:
        if self._clients is None:
            # scanned lists hold no /file patterns: nothing to read
            self._clients = build_list(list(self.client_tokens), lambda t: client_token(t))
        return self._clients

    def matches(self, q) -> bool:
        return self.daemons.match(q) and self.clients.match(q)

    def where(self, offset: int) -> tuple[int, int]:
        return self.source.where(offset)


class HostsRules:
    """``HostsTable.rules``: the rules of one file in order (see the module
    rules: compact lines are columns until someone asks for them).

    Per rule ``j``: ``_items[j]`` the HostsRule, None for a compact line not
    asked for yet; ``_at[j]`` where the rule's line begins in ``data`` (the
    file; a compact line ends at the first newline from there), rising with
    ``j`` (``_ordered`` says it does: a rule made elsewhere may not know
    where it was); ``_line``/``_first`` its
    line numbers; ``_daemon[j]`` 1 + its daemon list's number in
    ``daemon_lists`` (0: not compact); ``_start[j]:_stop[j]`` its span of
    ``nets4``/``lens4``.
    """

    __slots__ = ("path", "data", "_items", "_at", "_line", "_first", "_daemon", "_start",
                 "_stop", "daemon_lists", "nets4", "lens4", "_ordered")

    def __init__(self, path: str = "", data: bytes = b"") -> None:
        self.path = path
        self.data = data
        self._items: list = []
        self._at = array("Q")
        self._line = array("I")
        self._first = array("I")
        self._daemon = array("I")
        self._start = array("I")
        self._stop = array("I")
        #: (daemon tokens, daemon PatternList) of each distinct daemon field
        self.daemon_lists: list[tuple] = []
        self.nets4 = array("I")     # the compact lines' prefixes, in rule order
        self.lens4 = array("B")
        self._ordered = True

    def _at_next(self, at: int) -> None:
        if at < 0 or (self._at and at <= self._at[-1]):
            self._ordered = False
        self._at.append(max(at, 0))

    def append(self, rule: HostsRule) -> None:
        self._items.append(rule)
        self._at_next(getattr(rule.source, "at", -1))
        for col in (self._line, self._first, self._daemon, self._start, self._stop):
            col.append(0)

    def append_compact(self, at: int, line: int, first_line: int, daemon_list: int,
                       nets, lens) -> None:
        """A compact line beginning at byte ``at`` of ``data``: ``daemon_list``
        its index in ``daemon_lists``, ``nets``/``lens`` its prefixes as the
        fast lane gave them."""
        self._items.append(None)
        self._at_next(at)
        self._line.append(line)
        self._first.append(first_line)
        self._daemon.append(daemon_list + 1)
        self._start.append(len(self.nets4))
        self.nets4.extend(nets)
        self.lens4.extend(lens)
        self._stop.append(len(self.nets4))

    def compact(self, j: int):
        """``(daemon PatternList, line, start, stop)`` when rule ``j`` was read
        as a compact line (made into a HostsRule since or not), else None."""
        d = self._daemon[j]
        if not d:
            return None
        return self.daemon_lists[d - 1][1], self._line[j], self._start[j], self._stop[j]

    def spans(self):
        """``(j, daemon list number + 1 or 0 when not compact, start, stop)``
        for every rule ``j`` in order: the compiler's view of the columns."""
        return zip(range(len(self._items)), self._daemon, self._start, self._stop, strict=True)

    def n_prefixes(self, j: int) -> int:
        """How many prefixes compact rule ``j`` has."""
        return self._stop[j] - self._start[j]

    def compact_holding(self, needle: bytes) -> list[int] | None:
        """The compact rules whose line holds ``needle``, in order -- all a
        client that only a pattern written with ``needle`` can match need try
        of them (acl.compile.tcpw: the broadcast address); None when the
        columns cannot say (a rule that does not know where its line is)."""
        if not self._ordered:
            return None
        data, at, daemon, found = self.data, self._at, self._daemon, []
        hit = data.find(needle)
        while hit >= 0:
            start = data.rfind(b"\n", 0, hit) + 1
            j = bisect.bisect_left(at, start)
            if j < len(at) and at[j] == start and daemon[j]:
                found.append(j)
            end = data.find(b"\n", hit)
            hit = -1 if end < 0 else data.find(needle, end + 1)
        return found

    def full_rules(self) -> list[int]:
        """The rules that are not compact lines, in order."""
        return [j for j, d in enumerate(self._daemon) if not d]

    def prefixes(self, j: int) -> RulePrefixes:
        """A compact rule's prefixes (a new object each call)."""
        return RulePrefixes(self.nets4[self._start[j]:self._stop[j]],
                            self.lens4[self._start[j]:self._stop[j]])

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self._items)))]
        got = self._items[j]
        if got is None:
            if j < 0:
                j += len(self._items)
            got = self._items[j] = self._make(j)
        return got

    def __iter__(self):
        for j in range(len(self._items)):
            yield self[j]

    def __repr__(self) -> str:
        return repr(list(self))

    def _make(self, j: int) -> HostsRule:
        """The HostsRule of compact line ``j``: what :func:`parse_hosts`
        makes of a scanned line (the fields split again from its text)."""
        at = self._at[j]
        text = self.data[at:self.data.index(b"\n", at) + 1].decode("latin-1")
        daemon_text, rest = split_at(text, ":")
        client_base = len(daemon_text) + 1
        tokens, daemons = self.daemon_lists[self._daemon[j] - 1]
        line, first = self._line[j], self._first[j]
        return HostsRule(path=self.path, line=line, first_line=first, daemon_tokens=tokens,
                         daemons=daemons, options_text=None, options=NO_OPTIONS,
                         source=LogicalLine(text, (0,), (first,), (1,), line, at),
                         client_text=rest, client_base=client_base, scanned=self.prefixes(j))


@dataclass(slots=True)
class HostsTable:
    """One parsed file: its rules in order, and how libwrap's scan of it ends."""

    path: str
    rules: HostsRules = field(init=False)     # (made in __post_init__: it knows the path)
    #: the error that stops the scan (too long / no newline / unreadable)
    stop: Diagnostic | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    missing: bool = False
    #: every ``/file`` pattern path read while parsing (for reload watching)
    pattern_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rules = HostsRules(self.path)


def logical_lines(data: bytes, *, fast: bool = True):
    """Emulate ``xgets`` over ``data``.

    Yields ``LogicalLine``; a line that does not end in ``\\n`` is the last.
    ``fast=False`` takes the general path for every line (the tests compare).
    """
    pos = 0
    counter = 0
    n = len(data)
    # Physical position of ``pos``: every newline of ``data`` ends a chunk
    # (a chunk stops at the first newline), so counting them chunk by chunk
    # keeps the line number and the offset where that line starts.
    phys_line, line_start = 1, 0
    # a NUL anywhere: every line takes the general path (fgets cuts at it)
    general_only = not fast or b"\0" in data

    while pos < n:
        end = data.find(b"\n", pos, pos + BUFLEN - 1)
        if end > pos and not general_only and data[end - 1] != 92:
            # the usual line: one chunk, no NUL, no backslash-newline
            counter += 1
            yield LogicalLine(data[pos:end + 1].decode("latin-1"), (0,), (phys_line,), (1,),
                              counter, pos)
            pos = line_start = end + 1
            phys_line += 1
            continue
        pieces: list[bytes] = []
        at = pos                # (set again at the first piece kept)
        starts: list[int] = []
        lines: list[int] = []
        cols: list[int] = []
        room = BUFLEN
        length = 0
        ended = False
        while pos < n:
            maxn = room - 1
            end = data.find(b"\n", pos, pos + maxn)
            chunk = data[pos:pos + maxn] if end < 0 else data[pos:end + 1]
            chunk_pos = pos
            pos += len(chunk)
            cut = chunk.find(b"\0")
            got = len(chunk) if cut < 0 else cut
            keep = got
            if got >= 1 and chunk[got - 1] == 10:
                counter += 1
                if got >= 2 and chunk[got - 2] == 92:
                    keep = got - 2
                else:
                    ended = True
            if keep:
                if not pieces:
                    at = chunk_pos
                starts.append(length)
                lines.append(phys_line)
                cols.append(chunk_pos - line_start + 1)
                pieces.append(chunk[:keep])
                length += keep
            if end >= 0:
                phys_line += 1
                line_start = pos
            if ended:
                break
            room -= keep
            if room == 1:
                break
        if not pieces:
            if ended:
                continue
            return
        text = b"".join(pieces).decode("latin-1")
        yield LogicalLine(text, tuple(starts), tuple(lines), tuple(cols), counter, at)
        if not text.endswith("\n"):
            return


_WORD = re.compile(r"[^, \t\r\n]+")


def strtok(text: str, base: int = 0) -> list[Token]:
    """Split on runs of SEPARATORS (``strtok``), keeping each token's offset."""
    return [Token(m.group(), base + m.start()) for m in _WORD.finditer(text)]


def read_pattern_file(path: str) -> str | None:
    """Contents of a ``/file`` pattern, or None when it cannot be opened."""
    try:
        return read_bytes(path).decode("latin-1")
    except OSError:
        return None


def parse_hosts(path: str, data: bytes | None, *, dry_run: bool = False,
                read_file=read_pattern_file, scan_clients=None) -> HostsTable:
    """Parse one table.  ``data`` None means the file does not exist.

    ``scan_clients(client field) -> (nets, lengths) | None`` is the fast lane
    (``acl.core.hosts_scan.v4_client_prefixes``, handed in by the compiler:
    this layer does not reach into the core); a None from it, or no
    ``scan_clients``, means the full parser reads the list."""
    table = HostsTable(path)
    if data is None:
        table.missing = True
        return table
    seen_files: list[str] = []

    def reader(p: str):
        seen_files.append(p)
        return read_file(p) if read_file is not None else None

    daemons_seen: dict[str, DaemonToken] = {}
    daemon_lists: dict[str, int] = {}       # daemon field -> its index in rules.daemon_lists
    rules = table.rules
    rules.data = data if type(data) is bytes else bytes(data)     # compact lines read it

    def daemon_of(text: str) -> DaemonToken:
        # daemon tokens repeat on almost every line; they are immutable
        tok = daemons_seen.get(text)
        if tok is None:
            tok = daemons_seen[text] = daemon_token(text, reader)
        return tok

    def diag(line: int, col: int, msg: str, sev=Severity.ERROR):
        table.diagnostics.append(Diagnostic(path, line, col, msg, sev))

    for ll in logical_lines(data):
        text = ll.text
        if not text.endswith("\n"):
            line, col = ll.where(len(text))
            msg = ("line too long (2047 characters or more): this and every later rule is ignored"
                   if len(text) >= BUFLEN - 1 else
                   "missing newline at end of file: this and every later rule is ignored")
            d = Diagnostic(path, line, col, msg)
            table.stop = d
            table.diagnostics.append(d)
            break
        if text[0] == "#" or (text[0] in " \t\r\n" and text.strip(" \t\r\n") == ""):
            continue
        first = split_at(text, ":")
        if first is None:
            diag(ll.line, ll.where(0)[1], 'missing ":" separator: line ignored')
            continue
        daemon_text, rest = first
        second = split_at(rest, ":")
        client_text, options_text = (rest, None) if second is None else second
        client_base = len(daemon_text) + 1
        options_base = client_base + len(client_text) + 1
        d_index = daemon_lists.get(daemon_text)
        if d_index is None:
            # (tokens, list): the same daemon field repeats on most lines
            d_toks = strtok(daemon_text, 0)
            d_index = daemon_lists[daemon_text] = len(rules.daemon_lists)
            rules.daemon_lists.append((tuple(d_toks), build_list(d_toks, daemon_of)))
        daemon_list = rules.daemon_lists[d_index]
        options = (NO_OPTIONS if options_text is None
                   else compile_options(options_text, dry_run=dry_run))
        columns = None if scan_clients is None else scan_clients(client_text)
        if columns is not None and options_text is None and ll.starts == (0,) \
                and ll.cols == (1,):
            rules.append_compact(ll.at, ll.line, ll.lines[0], d_index, *columns)
            continue
        if columns is not None:
            rule = HostsRule(path=path, line=ll.line, first_line=ll.lines[0],
                             daemon_tokens=daemon_list[0], daemons=daemon_list[1],
                             options_text=options_text, options=options, source=ll,
                             client_text=client_text, client_base=client_base,
                             scanned=RulePrefixes(*columns))
        else:
            c_toks = strtok(client_text, client_base)
            rule = HostsRule(path=path, line=ll.line, first_line=ll.lines[0],
                             daemon_tokens=daemon_list[0], daemons=daemon_list[1],
                             options_text=options_text, options=options, source=ll,
                             client_tokens=tuple(c_toks),
                             clients=build_list(c_toks, lambda t: client_token(t, reader)))
        if options.error is not None:
            line, col = ll.where(options_base + options.error_offset)
            diag(line, col, f"{options.error} (the connection is denied)")
        rules.append(rule)
    table.pattern_files = sorted(set(seen_files))
    return table


def read_hosts(path: str, *, dry_run: bool = False, read_file=read_pattern_file,
               scan_clients=None) -> HostsTable:
    """Read and parse ``path`` the way libwrap opens it (A.1.3, A.1.5);
    ``scan_clients`` as for :func:`parse_hosts`."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return parse_hosts(path, None)
    except IsADirectoryError:
        data = b""          # fopen succeeds, the first fgets fails: empty
    except OSError as exc:
        table = HostsTable(path)
        d = Diagnostic(path, 0, 0, f"cannot open: {exc.strerror or exc}")
        table.stop = d
        table.diagnostics.append(d)
        return table
    return parse_hosts(path, data, dry_run=dry_run, read_file=read_file,
                       scan_clients=scan_clients)
