"""Error and diagnostic types shared by every layer.

Every problem found in a rule file is located as ``path:line:column`` (line and
column counted from 1, column 0 when only the line is known), so a person can
jump to it and a script can parse it.  Parsers that must *tolerate* a bad line
the way the real tool does (libwrap skips a line without a colon, xinetd
disables one service) report it as a :class:`Diagnostic` and go on; a parser
asked to be strict raises :class:`RuleSyntaxError` instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class AclError(Exception):
    """Base class of every error acl raises on purpose."""


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a rule file, at a place a person can find."""

    path: str
    line: int
    column: int
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.column else f"{self.path}:{self.line}"
        tag = "" if self.severity is Severity.ERROR else f"{self.severity.value}: "
        return f"{where}: {tag}{self.message}"


class RuleSyntaxError(AclError):
    """A rule file that cannot be used, with the first place that is wrong."""

    def __init__(self, path: str, line: int, column: int, message: str,
                 diagnostics: tuple[Diagnostic, ...] = ()):
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        self.diagnostics = diagnostics or (Diagnostic(path, line, column, message),)
        super().__init__(str(Diagnostic(path, line, column, message)))

    @classmethod
    def from_diagnostic(cls, d: Diagnostic, more: tuple[Diagnostic, ...] = ()) -> RuleSyntaxError:
        return cls(d.path, d.line, d.column, d.message, (d, *more))


#: How tomllib's TOMLDecodeError says where: "MESSAGE (at line L, column C)".
_TOML_WHERE = re.compile(r"(?P<path>.+?): (?P<message>.+) \(at line (?P<line>\d+), "
                         r"column (?P<column>\d+)\)", re.DOTALL)


class PolicyError(AclError):
    """The policy configuration (TOML) names something impossible.

    A syntax error the TOML parser reports as ``PATH: MESSAGE (at line L,
    column C)`` is given as ``PATH:L:C: MESSAGE``, the form of every other
    error in a file (acl.policy wraps tomllib's error as ``PATH: error``)."""

    def __init__(self, *args) -> None:
        m = _TOML_WHERE.fullmatch(args[0]) if args and isinstance(args[0], str) else None
        if m is not None:
            args = (f"{m['path']}:{m['line']}:{m['column']}: {m['message']}", *args[1:])
        super().__init__(*args)


class ProtocolError(AclError):
    """A peer sent bytes that are not valid in its protocol (a client's
    request, or a server's reply as acl.client reads it)."""
