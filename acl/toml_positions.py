"""Where a key of the policy file is written: ``PATH:LINE:COLUMN`` for errors.

``tomllib`` keeps no positions, so on an error path only (never on a good
load) the file is read again and searched for what the message names.
Rules of this file:

* Names are the ones the policy's messages use: ``table.key`` (a ``key =``
  line under ``[table]``, or a ``[table.key]`` header when the key is a
  table of its own), ``array[i]`` / ``array[i].key`` (the i-th
  ``[[array]]``, counting from 0 as the messages do), ``table`` or
  ``[table]`` (its header), a bare ``key`` (above every header), and
  ``table.sub.KEY`` (a key of the sub-table ``[table.sub]``, bare or
  quoted: ``[nfqueue.ports]``'s ``"10.0.0.1:22" =``).
* What is not written that way -- a dotted key (``ports."22" = ...``), a
  quoted header (``["nfqueue".ports]``), a key spelt with escapes -- has no
  position here: the message then starts with the path alone.  Inside an
  inline table (``ports = { 22 = "sshd" }``) a key's position is the
  table's value.
* Lines are TOML's: they end at ``\\n`` (a ``\\r`` before it belongs to the
  break).  ``str.splitlines`` would also break at U+2028, U+0085 and the
  like, which TOML allows in comments and strings: every later position
  would be a line off.
* A file that cannot be read again (gone, out of descriptors) gives no
  position, never a second error.
"""

from __future__ import annotations

import re

from acl.errors import OutOfResources
from acl.rulefiles import read_bytes

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$")
_ARRAY_HEADER = re.compile(r"\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]\s*(?:#.*)?$")
_SUB_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\.\s*([A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$")
_ASSIGN = re.compile(r"(\s*)([A-Za-z0-9_-]+)\s*=\s*")
#: a key as a sub-table of names writes it: bare, or quoted (``"10.0.0.1:22"``)
_SUB_ASSIGN = re.compile(r"""(\s*)([A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')\s*=\s*""")
#: ``table.key``, ``array[i]`` or ``array[i].key``
_WHERE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?(?:\.([A-Za-z_][A-Za-z0-9_]*))?$")

Found = tuple[int, int, str]      # (line, column, the line's text), both from 1


def position(path, where: str, at_key: bool = False) -> str:
    """``PATH:LINE:COLUMN`` of what ``where`` names (of its value, or with
    ``at_key`` of the key itself), or ``PATH`` alone."""
    at = locate(path, where)
    if at is None:
        return str(path)
    column = len(at[2]) - len(at[2].lstrip()) + 1 if at_key else at[1]
    return f"{path}:{at[0]}:{column}"


def value_text(path, where: str) -> str | None:
    """The source text from ``where``'s value to the end of its line."""
    at = locate(path, where)
    return None if at is None else at[2][at[1] - 1:]


def _lines(path) -> list[str] | None:
    try:
        text = read_bytes(path).decode("utf-8", "replace")
    except (OSError, TypeError, OutOfResources):
        return None
    return [line.removesuffix("\r") for line in text.split("\n")]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) + 1


def locate(path, where: str) -> Found | None:
    """Where ``where`` (see the rules above) is written, or None."""
    parts = where.split(".", 2)
    if len(parts) == 3 and "[" not in parts[0] + parts[1]:
        return _locate_in_subtable(path, *parts)
    m = _WHERE.match(where[1:-1] if where[:1] == "[" else where)
    lines = None if m is None else _lines(path)
    if lines is None:
        return None
    table, index, key = m[1], m[2], m[3]
    whole = index is None and key is None    # ``[table]``'s header, or ``table =``
    if whole:
        table, key = "", table         # (a key above every header)
    inside = table == ""           # under the header ``where`` names
    seen = -1                      # [[table]] headers so far
    for n, line in enumerate(lines, 1):
        h = _HEADER.match(line)
        a = None if h else _ARRAY_HEADER.match(line)
        if h and whole and h[1] == key:
            return n, _indent(line), line
        if h:
            inside = index is None and h[1] == table
        elif a:
            inside = False
            if index is not None and a[1] == table:
                seen += 1
                if seen == int(index):
                    if key is None:
                        return n, _indent(line), line
                    inside = True
        elif index is None and not whole and (s := _SUB_HEADER.match(line)) \
                and (s[1], s[2]) == (table, key):
            # ``table.key`` written as its own sub-table, [table.key]: its header
            return n, _indent(line), line
        elif line.lstrip().startswith("["):
            inside = False         # a sub-table ([a.b], [[a.b]]): not ours
        elif inside:
            k = _ASSIGN.match(line)
            if k and k[2] == key:
                return n, k.end() + 1, line
    return None


def _locate_in_subtable(path, table: str, sub: str, key: str) -> Found | None:
    """``KEY``'s line under a ``[table.sub]`` header; else where
    ``table.sub`` itself is: that header (a key spelt with escapes), or the
    value of an inline table, ``sub = { ... }``."""
    lines = _lines(path)
    if lines is None:
        return None
    inside = False
    for n, line in enumerate(lines, 1):
        h = _SUB_HEADER.match(line)
        if h:
            inside = (h[1], h[2]) == (table, sub)
        elif line.lstrip().startswith("["):
            inside = False
        elif inside:
            k = _SUB_ASSIGN.match(line)
            if k and (k[2][1:-1] if k[2][:1] in "\"'" else k[2]) == key:
                return n, k.end() + 1, line
    at = locate(path, f"{table}.{sub}")
    if at is None or at[2].lstrip().startswith("["):
        return at
    # an inline table: its value is pointed at, for the key in it too (the
    # text returned starts there, so position()'s "at the key" lands on it)
    n, column, line = at
    return n, column, " " * (column - 1) + line[column - 1:]
