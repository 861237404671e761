"""Where a key of the policy file is written: ``PATH:LINE:COLUMN`` for errors.

``tomllib`` keeps no positions, so on an error path only (never on a good
load) the file is read again and scanned for what the message names.
Rules of this file:

* The scanner reads TOML's grammar, nothing more: comments; keys bare,
  ``"basic"`` (with escapes: ``"\\u0071ueues"`` is ``queues``) or
  ``'literal'``, dotted with spaces around the dots; ``[table]`` and
  ``[[array]]`` headers, spaces inside the brackets; values, of which it
  walks arrays (element by element) and inline tables (key by key) and
  skips the rest: strings of the four kinds, numbers, booleans, dates (a
  space may join a date to its time).  It runs only after tomllib took the
  file, so it need not say what is wrong with one; on anything it does not
  expect it gives up, and the message starts with the path alone.
* What it finds is a *key path*, as tomllib's dict holds it: ``("nfqueue",
  "ports", "22")`` is the same key written ``22 =`` under
  ``[nfqueue.ports]``, ``ports."22" =`` under ``[nfqueue]``, ``ports = {
  22 = ... }``, or ``nfqueue.ports.22 =`` above every header.  A ``[[source]]``
  element is ``("source", i)``, counting from 0 as the messages do; so is
  the i-th element of an array value (``source = [{...}, {...}]``).
* Each path has two places: its *key* -- the key's last part as written
  (``"22"`` in ``ports."22"``), or a header's ``[`` -- and its *value*:
  what follows the ``=``, or the header again.  A table named only on the
  way to another key (``[nfqueue.ports]`` with no ``[nfqueue]``,
  ``nfqueue.queues = 1``) is where it is first so named: that header's
  ``[``, the part of that dotted key; its own header, once there is one,
  wins.
* Callers name a path as a tuple, or as text: ``table.key``, ``array[i]``,
  ``array[i].key``, ``table`` or ``[table]``, ``table.sub.KEY`` (KEY the
  rest, dots and all: ``nfqueue.ports.10.0.0.1:22``).  A key that is not
  written -- a required key left out, so the whole table is the mistake --
  is reported at the nearest table around it that is: its header, an
  inline table's ``{``, or the first dotted key naming it.
* :func:`value_text` is a value's own text, all of it, over lines if it
  spans them, and nothing after it (``600`` of ``mode = 600  # octal?``):
  for a message that quotes how a number was written.  It takes no
  stand-in: None for what is not written after an ``=`` (a header's table,
  a key left out).
* The scanner also takes what TOML 1.1 adds (an inline table over several
  lines, ``\\e`` and ``\\xHH`` escapes): tomllib refuses them first today.
* Lines are TOML's: they end at ``\\n`` (a ``\\r`` before it belongs to the
  break).  ``str.splitlines`` would also break at U+2028, U+0085 and the
  like, which TOML allows in comments and strings: every later position
  would be a line off.  Columns count characters, as tomllib's do.
* A file that cannot be read again (gone, out of descriptors) gives no
  position, never a second error.
"""

from __future__ import annotations

import re

from acl.errors import OutOfResources
from acl.rulefiles import read_bytes

#: a message's name for a key (the rules above)
_NAME_PART = re.compile(r"([A-Za-z0-9_-]+)(?:\[(\d+)\])?$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: a number, boolean or date: up to the next space, comma, bracket or comment
_SCALAR = re.compile(r"[^ \t\r\n,\]}#]+")
_DATE_THEN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\",
            "e": "\x1b"}
_HEX_DIGITS = {"u": 4, "U": 8, "x": 2}

Path = tuple                      # keys (str) and array indices (int)


class _Unexpected(Exception):
    """The text is not TOML as this scanner reads it: no position."""


class _Scanner:
    """One pass over the text: every key path -> (key index, value index)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.places: dict[Path, tuple[int, int]] = {}
        self.value_ends: dict[Path, int] = {}   # of a value written after ``=``
        self.named_only: set[Path] = set()  # tables met on the way to a key
        self.arrays: dict[Path, int] = {}   # [[array]] -> elements so far

    def run(self) -> dict[Path, tuple[int, int]]:
        table: Path = ()
        while True:
            self._skip_blank(newlines=True)
            if self.i >= len(self.text):
                return self.places
            if self.text[self.i] == "[":
                table = self._header()
            else:
                self._key_value(table)
            self._skip_blank(newlines=False)
            if self.i < len(self.text) and self.text[self.i] not in "\r\n":
                raise _Unexpected(self.i)

    # -- places ---------------------------------------------------------------
    def _note(self, path: Path, key: int, value: int, *, own: bool) -> None:
        """``own``: written here (a header of its own, a key = value);
        else named on the way to another key, kept only if nothing was."""
        if own and (path not in self.places or path in self.named_only):
            self.places[path] = (key, value)
            self.named_only.discard(path)
        elif not own and path not in self.places:
            self.places[path] = (key, value)
            self.named_only.add(path)

    def _header(self) -> Path:
        start = self.i
        array = self.text.startswith("[[", start)
        self.i += 2 if array else 1
        keys = self._key()
        self._skip_blank(newlines=False)
        close = "]]" if array else "]"
        if not self.text.startswith(close, self.i):
            raise _Unexpected(self.i)
        self.i += len(close)
        path: Path = ()
        for n, (key, _) in enumerate(keys):
            path += (key,)
            last = n == len(keys) - 1
            if last and array:
                self._note(path, start, start, own=True)   # the array: its first header
                index = self.arrays.get(path, 0)
                self.arrays[path] = index + 1
                path += (index,)
            elif path in self.arrays:                      # its latest element
                path += (self.arrays[path] - 1,)
            self._note(path, start, start, own=last)
        return path

    def _key_value(self, table: Path) -> None:
        keys = self._key()
        self._skip_blank(newlines=False)
        if not self.text.startswith("=", self.i):
            raise _Unexpected(self.i)
        self.i += 1
        self._skip_blank(newlines=False)
        path = table
        for n, (key, at) in enumerate(keys):
            path += (key,)
            last = n == len(keys) - 1
            self._note(path, at, self.i if last else at, own=last)
        self._value(path)
        self.value_ends.setdefault(path, self.i)

    # -- keys -----------------------------------------------------------------
    def _key(self) -> list[tuple[str, int]]:
        """A dotted key: each part, decoded, with where it starts."""
        parts = []
        while True:
            self._skip_blank(newlines=False)
            at = self.i
            parts.append((self._simple_key(), at))
            self._skip_blank(newlines=False)
            if not self.text.startswith(".", self.i):
                return parts
            self.i += 1

    def _simple_key(self) -> str:
        text, i = self.text, self.i
        if text.startswith('"', i):
            return self._basic_string()
        if text.startswith("'", i):
            end = text.index("'", i + 1)
            self.i = end + 1
            return text[i + 1:end]
        m = _BARE_KEY.match(text, i)
        if m is None:
            raise _Unexpected(i)
        self.i = m.end()
        return m[0]

    def _basic_string(self) -> str:
        """A one-line ``"..."``, its escapes decoded (a key may be one)."""
        text, i, out = self.text, self.i + 1, []
        while text[i] != '"':
            if text[i] == "\\":
                code = text[i + 1]
                if code in _HEX_DIGITS:
                    digits = _HEX_DIGITS[code]
                    out.append(chr(int(text[i + 2:i + 2 + digits], 16)))
                    i += 2 + digits
                    continue
                out.append(_ESCAPES[code])
                i += 2
            else:
                out.append(text[i])
                i += 1
        self.i = i + 1
        return "".join(out)

    # -- values ---------------------------------------------------------------
    def _value(self, path: Path) -> None:
        text, i = self.text, self.i
        if text.startswith(('"""', "'''"), i):
            self._multiline_string()
        elif text.startswith('"', i):
            self._basic_string()
        elif text.startswith("'", i):
            self.i = text.index("'", i + 1) + 1
        elif text.startswith("[", i):
            self._array(path)
        elif text.startswith("{", i):
            self._inline_table(path)
        else:
            m = _SCALAR.match(text, i)
            if m is None:
                raise _Unexpected(i)
            # a local date-time may be written with a space for its T
            self.i = m.end()
            if _DATE_THEN_TIME.match(text, i):
                self.i = _SCALAR.match(text, m.end() + 1).end()

    def _multiline_string(self) -> None:
        text, quote = self.text, self.text[self.i]
        i = self.i + 3
        while not text.startswith(quote * 3, i):
            i += 2 if quote == '"' and text[i] == "\\" else 1
            if i >= len(text):
                raise _Unexpected(self.i)
        # the closing three may follow up to two quotes of the content
        # (TOML's ``"""a""""`` is ``a"``): the run of quotes ends it
        while i < len(text) and text[i] == quote:
            i += 1
        self.i = i

    def _array(self, path: Path) -> None:
        self.i += 1
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self.text.startswith("]", self.i):
                self.i += 1
                return
            self._note(path + (index,), self.i, self.i, own=True)
            self._value(path + (index,))
            self.value_ends[path + (index,)] = self.i
            index += 1
            self._skip_blank(newlines=True)
            if self.text.startswith(",", self.i):
                self.i += 1

    def _inline_table(self, path: Path) -> None:
        self.i += 1
        while True:
            self._skip_blank(newlines=True)      # (TOML 1.1 lets it span lines)
            if self.text.startswith("}", self.i):
                self.i += 1
                return
            self._key_value(path)
            self._skip_blank(newlines=True)
            if self.text.startswith(",", self.i):
                self.i += 1

    def _skip_blank(self, *, newlines: bool) -> None:
        """Spaces and tabs, and a comment; with ``newlines``, line breaks
        and the comments of every line too."""
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                return


def _read(path) -> str | None:
    try:
        return read_bytes(path).decode("utf-8", "replace")
    except (OSError, TypeError, OutOfResources):
        return None


def key_path(where) -> Path | None:
    """A message's name for a key (the rules above) as a key path."""
    if isinstance(where, tuple):
        return where
    if where[:1] == "[" and where[-1:] == "]":
        where = where[1:-1]
    parts = where.split(".", 2)
    path: Path = ()
    for n, part in enumerate(parts):
        m = _NAME_PART.match(part) if n < 2 else None
        if n == 2:
            path += (part,)
        elif m is None:
            return None
        else:
            path += (m[1],) if m[2] is None else (m[1], int(m[2]))
    return path


def _line_column(text: str, index: int) -> tuple[int, int]:
    """Both from 1; lines end at \\n only (the rules above)."""
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def _scan(path) -> tuple[str, _Scanner] | None:
    text = _read(path)
    if text is None:
        return None
    scanner = _Scanner(text)
    try:
        scanner.run()
    # (OverflowError: a \U escape past sys.maxunicode; RecursionError: nested
    # deeper than the scanner's stack -- the file changed since tomllib read it,
    # or tomllib's recursion is a frame shallower: no position, never a crash)
    except (_Unexpected, IndexError, KeyError, ValueError, OverflowError, RecursionError):
        return None
    return text, scanner


def position(path, where, at_key: bool = False) -> str:
    """``PATH:LINE:COLUMN`` of what ``where`` names (of its value, or with
    ``at_key`` of the key itself); of the nearest table around it when it
    is not written; or ``PATH`` alone."""
    scanned, keys = _scan(path), key_path(where)
    if scanned is None or keys is None:
        return str(path)
    text, places = scanned[0], scanned[1].places
    if keys in places:
        key, value = places[keys]
        index = key if at_key else value
    else:
        around = next((keys[:n] for n in range(len(keys) - 1, 0, -1)
                       if keys[:n] in places), None)
        if around is None:
            return str(path)
        index = places[around][1]
    line, column = _line_column(text, index)
    return f"{path}:{line}:{column}"


def value_text(path, where) -> str | None:
    """The source text of ``where``'s value (``600`` of ``mode = 600  #
    decimal``), or None: not written after an ``=``."""
    scanned, keys = _scan(path), key_path(where)
    if scanned is None or keys not in scanned[1].value_ends:
        return None
    return scanned[0][scanned[1].places[keys][1]:scanned[1].value_ends[keys]]
