"""hosts_options(5) as Debian builds it (PROCESS_OPTIONS + ACLEXEC).

Rules of this file (spec A.8; libwrap ``options.c``):

* The third field of a rule is split at ``:``; ``\\:`` is a literal colon.
  Because libwrap keeps the line's newline in that field, a rule ending in
  ``:`` yields an empty last field, i.e. "missing option name" (deny).
* Each field is trimmed (``isspace``); the keyword ends at the first blank or
  ``=``; then blanks, at most one ``=``, blanks; the rest is the value.
* Checks, in libwrap's order, for each option: empty name, unknown keyword,
  value missing / not allowed, ``allow``/``deny``/``twist`` not last, then the
  option's own value check.  The first failure stops processing and the
  connection is **denied**; options before it have already run.
* ``%`` expansions are *not* done here: values are returned raw for the
  caller (acl-wrap) to expand and act on.  Only ``setenv`` can fail on an
  expanded value (an empty name, or ``=`` in the name), so a ``setenv`` whose
  value holds ``%`` is marked for a check at decision time.
* ``user``/``group`` need the account to exist; a lookup that could not
  be done (out of descriptors: acl/nss.py) raises OutOfResources, never
  "unknown user".  Debian's ``initgroups``
  patch inverts the dry-run test, so in real tcpd they do nothing else, while
  tcpdmatch (dry run, as root) really calls setuid/setgid and fails on
  setgid after dropping root.  ``dry_run=True`` reproduces tcpdmatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from acl import nss
from acl.parse.hosts_patterns import ascii_lower, scan_number, split_at

_WS = " \t\r\n"
_ISSPACE = " \t\n\v\f\r"

#: keyword -> (needs value, value optional, must be last, value %-expanded)
KEYWORDS = {
    "user": (True, False, False, False),
    "group": (True, False, False, False),
    "umask": (True, False, False, False),
    "linger": (True, False, False, False),
    "keepalive": (False, False, False, False),
    "aclexec": (True, False, False, True),
    "spawn": (True, False, False, True),
    "twist": (True, False, True, True),
    "rfc931": (False, True, False, False),
    "setenv": (True, False, False, True),
    "nice": (False, True, False, False),
    "severity": (True, False, False, False),
    "allow": (False, False, True, False),
    "deny": (False, False, True, False),
    "banners": (True, False, False, False),
}

FACILITIES = ("kern", "user", "mail", "daemon", "auth", "lpr", "news", "uucp", "cron",
              "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(frozen=True, slots=True)
class Option:
    keyword: str        # lower-cased
    value: str | None   # raw value (after ``\\:`` unescaping), not %-expanded
    offset: int         # where the field starts in the options text

    @property
    def item(self) -> tuple[str, str]:
        """(keyword, value) as a decision carries them: the file is read as
        Latin-1 (one char per byte, as libwrap matches), a decision's text
        is the file's bytes under surrogateescape (acl.wire.binary), so a
        byte such as 0xE9 leaves as 0xE9, as libwrap hands it on."""
        v = self.value or ""
        if not v.isascii():
            v = v.encode("latin-1").decode("utf-8", "surrogateescape")
        return (self.keyword, v)


@dataclass(frozen=True, slots=True)
class OptionProgram:
    """What the options of one rule do, decided at load time.

    ``ran`` are the options that run (in order) before ``error`` stops them.
    ``final`` is "allow", "deny" or "twist" when such an option ends the list
    and no error comes first.  ``check_setenv`` holds positions in ``ran`` of
    ``setenv`` options whose expanded name must be checked per decision.
    """

    ran: tuple[Option, ...]
    error: str | None = None
    error_offset: int = 0
    final: str | None = None
    check_setenv: tuple[int, ...] = ()

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        # most rules have no options: no generator for them (one per rule on load)
        return tuple(o.item for o in self.ran) if self.ran else ()


NO_OPTIONS = OptionProgram(())


def chop(s: str) -> str:
    return s.strip(_ISSPACE)


def split_fields(text: str) -> list[tuple[str, int]]:
    """``get_field``: ``:``-separated fields, ``\\:`` unescaped, with offsets."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        start, buf = i, []
        while i < n:
            ch = text[i]
            if ch == ":":
                i += 1
                break
            if ch == "\\" and i + 1 < n and text[i + 1] == ":":
                i += 1
            buf.append(text[i])
            i += 1
        out.append(("".join(buf), start))
    return out


def split_option(field: str) -> tuple[str, str | None]:
    """Keyword and value of one field, the way ``process_options`` cuts them."""
    cur = chop(field)
    k = 0
    while k < len(cur) and cur[k] not in "=" + _WS:
        k += 1
    key, rest = cur[:k], cur[k:]
    if rest:
        if rest[0] != "=":
            rest = rest[1:].lstrip(_WS)
        if rest[:1] == "=":
            rest = rest[1:].lstrip(_WS)
    return key, (rest or None)


def setenv_name_ok(expanded: str) -> bool:
    """``setenv`` fails (deny) on an empty name or a name holding ``=``."""
    value = chop(expanded)
    k = 0
    while k < len(value) and value[k] not in _WS:
        k += 1
    name = chop(value[:k])
    return bool(name) and "=" not in name


class _Ids:
    """The process identity a dry run changes (tcpdmatch runs as root)."""

    def __init__(self):
        self.uid = 0
        self.gid = 0

    def setgid(self, gid: int) -> bool:
        if self.uid == 0 or gid == self.gid:
            self.gid = gid
            return True
        return False


def _group(name: str, ids: _Ids | None) -> str | None:
    try:
        gr = nss.getgrnam(name)
    except (KeyError, ValueError, UnicodeError):
        return f'unknown group: "{name}"'
    if ids is not None:
        if not ids.setgid(gr.gr_gid):
            return f"setgid({name}): Operation not permitted"
        if ids.uid != 0:
            return f"setgroups({name}): Operation not permitted"
    return None


def _user(value: str, ids: _Ids | None) -> str | None:
    parts = split_at(value, ".")
    name = value if parts is None else parts[0]
    if parts is not None:
        err = _group(parts[1], ids)
        if err:
            return err
    try:
        pw = nss.getpwnam(name)
    except (KeyError, ValueError, UnicodeError):
        return f'unknown user: "{name}"'
    if ids is not None:
        if ids.uid != 0 and pw.pw_uid != ids.uid:
            return f"setuid({name}): Operation not permitted"
        ids.uid = pw.pw_uid
        if parts is None:
            if not ids.setgid(pw.pw_gid):
                return f"setgid({name}): Operation not permitted"
            if ids.uid != 0:
                return f"initgroups({name}): Operation not permitted"
    return None


def _value_error(key: str, value: str | None, ids: _Ids | None) -> str | None:
    """The option function's own check (None: fine)."""
    if key == "umask":
        m = scan_number(value, 8, signed=False)
        if m is None or (m & 0o777) != m:
            return f'bad umask value: "{value}"'
    elif key == "linger":
        v = scan_number(value)
        if v is None or v < 0:
            return f'bad linger value: "{value}"'
    elif key == "nice":
        if value is not None and scan_number(value) is None:
            return f'bad nice value: "{value}"'
    elif key == "rfc931":
        if value is not None:
            v = scan_number(value)
            if v is None or v <= 0:
                return f'bad rfc931 timeout: "{value}"'
    elif key == "severity":
        parts = split_at(value, ".")
        if parts is None:
            if ascii_lower(value) not in LEVELS:
                return f'bad syslog facility or severity: "{value}"'
        else:
            for word, table in ((parts[0], FACILITIES), (parts[1], LEVELS)):
                if ascii_lower(word) not in table:
                    return f'bad syslog facility or severity: "{word}"'
    elif key == "group":
        return _group(value, ids)
    elif key == "user":
        return _user(value, ids)
    elif key == "setenv" and "%" not in value and not setenv_name_ok(value):
        return "memory allocation failure"
    return None


def compile_options(text: str | None, dry_run: bool = False) -> OptionProgram:
    """Decide what an options field does (see the module rules)."""
    if text is None:
        return NO_OPTIONS
    fields = split_fields(text)
    ids = _Ids() if dry_run else None
    ran: list[Option] = []
    checks: list[int] = []
    for i, (field, offset) in enumerate(fields):
        key, value = split_option(field)
        lead = len(field) - len(field.lstrip(_ISSPACE))         # point at the keyword
        if lead == len(field):
            # a blank field (a rule ending in ":"): point at the end of its
            # text, where the line's LF or CR LF starts, not past them
            lead = len(field.rstrip("\r\n"))
        offset += lead
        last = i == len(fields) - 1
        err = None
        low = ascii_lower(key)
        spec = KEYWORDS.get(low)
        if not key:
            err = "missing option name"
        elif spec is None:
            err = f'bad option name: "{key}"'
        elif value is None and spec[0]:
            err = f'option "{key}" requires value'
        elif value is not None and not (spec[0] or spec[1]):
            err = f'option "{key}" requires no value'
        elif not last and spec[2]:
            err = f'option "{key}" must be at end'
        else:
            err = _value_error(low, value, ids)
        if err is not None:
            return OptionProgram(tuple(ran), err, offset, None, tuple(checks))
        if low == "setenv" and "%" in value:
            checks.append(len(ran))
        ran.append(Option(low, value, offset))
        if low in ("allow", "deny", "twist"):
            return OptionProgram(tuple(ran), None, 0, low, tuple(checks))
    return OptionProgram(tuple(ran), None, 0, None, tuple(checks))
