"""tcprules text -> records, exactly as Debian's ``tcprules`` (ucspi-tcp-ipv6
1:0.88-7) turns its standard input into cdb records (spec B.1, B.2).

Rules of this file (each quoted beside the code below):

* The input is bytes, split on LF.  A line whose first byte is ``#`` and an
  empty line are skipped.  A last line without LF is still used.
* Trailing spaces and tabs are stripped; CR is not (so a CRLF file fails),
  leading blanks are kept and become part of the key.
* ``ADDRESS:INSTRUCTIONS``: the address ends at the **first colon directly
  followed by** ``deny`` **or** ``allow`` (the IPv6 build's rule; it is what
  makes ``::1:allow`` work).  When no such colon exists the real IPv6
  tcprules loops forever (or, on a last line without LF, may exit 100
  after comparing bytes past the line's end); acl reports the line instead.
* INSTRUCTIONS: ``allow`` or ``deny``, then any number of ``,NAME=qVALUEq``
  where ``q`` is whatever byte follows the ``=`` and the value runs to its
  next occurrence.  NAME is everything between the comma and the first ``=``.
  Anything else is an error.
* Data stored: ``D\\0`` for deny, nothing for allow, then ``+NAME=VALUE\\0``
  per item in order.
* Ranges (``doaddressdata``): only when the address has no ``=`` and no
  ``@`` but has a ``-``; the first ``-`` counts; its octet runs from the
  previous ``.`` (or the start) to the next ``.`` (or the end); both bounds
  all digits (empty = 0, parsed like ``scan_ulong``: wraps modulo 2**64);
  the top is clamped to 255; bottom > top gives no key at all; numbers are
  re-printed in decimal.

The first wrong line raises :class:`acl.errors.RuleSyntaxError`; tcprules
also stops at the first wrong line (exit 100).
"""

from __future__ import annotations

from dataclasses import dataclass

from acl.errors import RuleSyntaxError

__all__ = ["TcpRule", "parse_tcprules", "rules_to_records", "expand_address"]

_ULONG = 1 << 64


@dataclass(frozen=True, slots=True)
class TcpRule:
    """One rule line."""

    line: int                                  # 1-based line number
    address: bytes                             # text before the colon, as written
    keys: tuple[bytes, ...]                    # cdb keys (ranges expanded)
    deny: bool
    env: tuple[tuple[bytes, bytes], ...]       # (NAME, VALUE) in rule order
    data: bytes                                # cdb data, as tcprules stores it


def _bad(path: str, line: int, column: int, message: str) -> RuleSyntaxError:
    return RuleSyntaxError(path, line, column, message)


def _show(b: int) -> str:
    ch = chr(b)
    if ch == "\r":
        return "carriage return (is this a CRLF file?)"
    return repr(ch) if ch.isprintable() else f"byte 0x{b:02x}"


def _scan_ulong(digits: bytes) -> int | None:
    """``getnum``: the whole field must be decimal digits; empty is 0."""
    if digits and not digits.isdigit():
        return None
    return int(digits) % _ULONG if digits else 0


def expand_address(address: bytes, path: str = "<rules>", line: int = 0) -> tuple[bytes, ...]:
    """The cdb keys one address stands for (``doaddressdata``)."""
    # "It applies only if the address contains no = and no @ but does
    # contain a -" (B.1 Range expansion).
    if b"=" in address or b"@" in address:
        return (address,)
    dash = address.find(b"-")
    if dash < 0:
        return (address,)
    # "Its octet runs from the previous . (or the start) to the next . (or
    # the end)."
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right < 0:
        right = len(address)
    bot = _scan_ulong(address[left:dash])
    if bot is None:
        raise _bad(path, line, left + 1,
                   f"range start {address[left:dash].decode('latin-1')!r} is not a number")
    top = _scan_ulong(address[dash + 1:right])
    if top is None:
        raise _bad(path, line, dash + 2,
                   f"range end {address[dash + 1:right].decode('latin-1')!r} is not a number")
    # "The upper bound is clamped to 255.  If lower > upper, no keys at all."
    top = min(top, 255)
    head, tail = address[:left], address[right:]
    return tuple(head + str(n).encode() + tail for n in range(bot, top + 1))


def _split_colon(text: bytes) -> int:
    """Index of the first ``:`` followed by ``deny`` or ``allow``, or -1."""
    colon = text.find(b":")
    while colon >= 0:
        after = text[colon + 1:colon + 6]
        if after[:4] == b"deny" or after == b"allow":
            return colon
        colon = text.find(b":", colon + 1)
    return -1


def _parse_line(text: bytes, path: str, line: int) -> TcpRule:
    colon = _split_colon(text)
    if colon < 0:
        raise _bad(path, line, 1,
                   "no ':allow' or ':deny' after the address (ucspi-tcp-ipv6's tcprules "
                   "loops forever on such a line)")
    address = text[:colon]
    pos = colon + 1
    # "INSTRUCTIONS = allow or deny (lowercase, exact)"
    if text.startswith(b"deny", pos):
        deny, pos = True, pos + 4
    else:
        deny, pos = False, pos + 5
    data = [b"D\0"] if deny else []
    env = []
    n = len(text)
    while pos < n:
        # ",NAME<q>VALUE<q>": NAME runs to the first '=', the byte after it
        # is the delimiter, the value runs to the delimiter's next occurrence.
        if text[pos] != 0x2C:
            raise _bad(path, line, pos + 1,
                       f"expected ',' before an environment item, found {_show(text[pos])}")
        eq = text.find(b"=", pos)
        if eq < 0:
            raise _bad(path, line, pos + 1, "environment item has no '='")
        name = text[pos + 1:eq]
        if eq + 1 >= n:
            raise _bad(path, line, eq + 1,
                       f"value of {name.decode('latin-1')!r} is missing (nothing after '=')")
        quote = text[eq + 1]
        end = text.find(bytes((quote,)), eq + 2)
        if end < 0:
            raise _bad(path, line, eq + 2,
                       f"value of {name.decode('latin-1')!r} has no closing {_show(quote)}")
        value = text[eq + 2:end]
        env.append((name, value))
        data.append(b"+" + name + b"=" + value + b"\0")
        pos = end + 1
    keys = expand_address(address, path, line)
    return TcpRule(line, address, keys, deny, tuple(env), b"".join(data))


def parse_tcprules(text: bytes, path: str = "<rules>") -> list[TcpRule]:
    """Every rule of a tcprules file, in file order; RuleSyntaxError at the
    first line the real tool would not accept."""
    if isinstance(text, str):
        raise TypeError("tcprules input is bytes (keys are byte strings)")
    pieces = text.split(b"\n")
    rules = []
    last = len(pieces) - 1
    for index, raw in enumerate(pieces):
        if not raw:
            # An empty piece is an empty line, or the end after a final LF.
            if index == last:
                break
            continue
        # "A line whose first byte is # is a comment."
        if raw[0] == 0x23:
            continue
        # "Trailing spaces, tabs and LFs are stripped; CR is not."
        rules.append(_parse_line(raw.rstrip(b" \t"), path, index + 1))
    return rules


def rules_to_records(rules) -> list[tuple[bytes, bytes, int]]:
    """``(key, data, line)`` in the order tcprules adds them to the cdb."""
    return [(key, r.data, r.line) for r in rules for key in r.keys]
