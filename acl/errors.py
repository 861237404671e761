"""Error and diagnostic types shared by every layer.

Every problem found in a rule file is located as ``path:line:column`` (line and
column counted from 1, column 0 when only the line is known), so a person can
jump to it and a script can parse it.  Parsers that must *tolerate* a bad line
the way the real tool does (libwrap skips a line without a colon, xinetd
disables one service) report it as a :class:`Diagnostic` and go on; a parser
asked to be strict raises :class:`RuleSyntaxError` instead.
"""

from __future__ import annotations

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


class PolicyError(AclError):
    """The policy configuration (TOML) names something impossible."""


class OutOfResources(AclError):
    """A policy file could not be read for lack of descriptors or memory
    (EMFILE, ENFILE, ENOMEM, ENOBUFS): a temporary failure of this host,
    never a statement about the file (acl/rulefiles.py)."""


class SandboxError(AclError):
    """The process may never do what its policy needs (a service manager's
    sandbox forbids it, not a passing state of the host): retrying cannot
    help, so ``acl serve`` exits 100, which acl.service does not restart."""


class ProtocolError(AclError):
    """A peer sent bytes that are not valid in its protocol (a client's
    request, or a server's reply as acl.client reads it)."""
