"""Read ``xinetd.conf`` the way xinetd 2.3.15.3 reads it (spec C.1, C.2).

Rules of this file (from ``parse.c``, ``parsesup.c``, ``includedir.c``,
``confparse.c``), in the order xinetd applies them:

* A line whose first non-blank character is ``#`` is a comment; there are no
  trailing comments (``# x`` after values are *values*).  Values are split on
  blanks and tabs only.  Lines end at LF: a CR stays in the line, so in a
  CRLF file the last value of each line ends in CR (``127.0.0.2\r`` fails
  to parse, ``NOLIBWRAP\r`` is a bad flag).
* Entries: ``service NAME`` / ``defaults`` followed by a line holding only
  ``{``, attributes, a line holding only ``}``; ``include FILE``,
  ``includedir DIR`` (names with ``.`` or ending in ``~`` skipped, regular
  files only, ``strcmp`` order).  Keywords ignore case.  A bad entry header
  is reported and its body skipped up to the next ``}`` line.
* An attribute line is ``name op values``: op ``=``, ``+=``, ``-=``, with a
  blank before it.  A malformed line drops the whole service (its body is
  skipped); in ``defaults`` the rest of the section is read as entries.
* Unknown attribute: warning, ignored.  Wrong value count, a second scalar,
  ``+=``/``-=`` on a scalar: warning, ignored.  A bad value: "DISABLING
  SERVICE" (the service is kept but marked disabled; ``enabled`` in defaults
  can still pick it), or, in ``defaults``, a fatal error
  (:class:`~acl.errors.RuleSyntaxError`).  ``disable = yes`` drops the
  service at once.
* A service starts with a *copy* of the defaults' lists as they are when its
  entry is read (``only_from``, ``no_access``, ``log_on_*``, ``passenv``,
  banners); scalar defaults (``instances``, ``per_source``, ``cps``,
  ``max_load``, ``bind``, ``umask``, ``groups``, ``v6only``) are applied after
  the whole file is read.  Built-ins: cps 50 10, everything else unlimited/off.
* After reading: ``enabled``/``disabled`` of defaults, then per service the
  fill-in of defaults (socket family: flags, else ``bind``, else IPv6) and
  xinetd's entry checks (required attributes, ports, duplicates).  A
  service failing them is dropped with the reason.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from acl.errors import Diagnostic, RuleSyntaxError, Severity
from acl.parse.xinetd_attrs import DEFAULT_ATTRS, SERVICE_ATTRS, AttrFail
from acl.parse.xinetd_resolve import SystemResolver
from acl.parse.xinetd_system import SystemLookups
from acl.rulefiles import list_dir, read_bytes

__all__ = ["XEntry", "XinetdConfig", "parse_xinetd", "parse_xinetd_text"]

#: scalar defaults applied at the end (confparse.c service_fill)
_LATE_DEFAULTS = ("instances", "per_source", "cps", "max_load", "bind", "umask", "groups",
                  "v6only")
#: lists (and banners) copied when a service entry starts (parse.c)
_EARLY_DEFAULTS = ("log_on_success", "log_on_failure", "only_from", "no_access", "passenv",
                   "banner", "banner_success", "banner_fail")
#: builtin.c: internal services xinetd implements itself
_BUILTINS = {"echo": ("stream", "dgram"), "discard": ("stream", "dgram"),
             "daytime": ("stream", "dgram"), "chargen": ("stream", "dgram"),
             "time": ("stream", "dgram"), "servers": ("stream",), "services": ("stream",),
             "xadmin": ("stream",), "tcpmux": ("stream",), "sensor": ("stream", "dgram")}


@dataclass(eq=False)
class XEntry:
    """One ``service`` (or the ``defaults``) section."""

    name: str
    path: str
    line: int
    is_defaults: bool = False
    #: attribute id -> parsed value (see xinetd_attrs); absent = not given
    parsed: dict = field(default_factory=dict)
    #: attribute ids set by this section itself (xinetd's "specified")
    specified: set = field(default_factory=set)
    #: every attribute line as written: (name, op, values, path, line)
    raw: list = field(default_factory=list)
    disabled: bool = False
    reason: str = ""

    @property
    def id(self) -> str:
        return self.parsed.get("id", self.name)

    def get(self, attr, default=None):
        return self.parsed.get(attr, default)

    @property
    def flags(self) -> set:
        return self.parsed.get("flags", set())

    @property
    def types(self) -> set:
        return self.parsed.get("types", set())


@dataclass
class XinetdConfig:
    """What xinetd would run: kept services in file order, plus the dropped
    ones with why, and every diagnostic."""

    path: str
    defaults: XEntry
    services: list[XEntry]
    dropped: list[XEntry]
    diagnostics: list[Diagnostic]
    #: every file read and directory listed (``include``, ``includedir``;
    #: ones that could not be opened too), top file first, each with the
    #: stamp taken just before it was read (None without a ``stamp``)
    files: list[tuple[str, object]] = field(default_factory=list)

    def service(self, ident: str) -> XEntry | None:
        for s in self.services:
            if s.id == ident:
                return s
        return None


class _Ctx:
    def __init__(self, resolver, max_depth: int = 16, system=None, stamp=None):
        #: stamp(path) before each file is read / directory listed
        self.stamp = stamp or (lambda path: None)
        self.files: list[tuple[str, object]] = []
        self.resolver = resolver if resolver is not None else SystemResolver()
        #: protocols, users, groups, servers, /etc/services (xinetd_system)
        self.system = system if system is not None else SystemLookups()
        self.diags: list[Diagnostic] = []
        self.defaults: XEntry | None = None
        self.entries: list[XEntry] = []
        self.dropped: list[XEntry] = []
        self.depth = 0
        self.max_depth = max_depth
        self.where = ("", 0, "", 0)       # path, line, line text, col0 (for note())

    def diag(self, path, line, col, msg, warn=False):
        self.diags.append(Diagnostic(path, line, col, _visible(msg),
                                     Severity.WARNING if warn else Severity.ERROR))

    def note(self, msg, value=None):
        path, line, text, col0 = self.where
        col = _value_column(text, value) if value else 0
        self.diag(path, line, col0 + col if col else 0, msg, warn=True)

    def resolver_addresses(self, name, family):
        return self.resolver.addresses(name, family)


#: control characters in a message (a CRLF file's values end in CR) shown as
#: escapes, so a terminal does not overwrite the message with what follows
_VISIBLE = {c: f"\\x{c:02x}" for c in range(32) if c != 9} | {13: "\\r", 10: "\\n"}


def _visible(msg: str) -> str:
    return msg.translate(_VISIBLE)


def _value_column(text: str, value: str) -> int:
    """1-based column of ``value`` as a whole blank-separated word after the
    operator (0 when not found)."""
    start = text.find("=") + 1
    i = start
    while i <= len(text):
        j = text.find(value, i)
        if j < 0:
            return 0
        before = text[j - 1] if j > start else " "
        after = text[j + len(value)] if j + len(value) < len(text) else " "
        if before in " \t" and after in " \t":
            return j + 1
        i = j + 1
    return 0


def _split_values(text: str) -> list[str]:
    # str_parse(" \t"): runs of blanks/tabs separate, empty components dropped.
    return [v for v in text.replace("\t", " ").split(" ") if v]


#: C ``isspace`` in the C locale (xinetd never calls setlocale): what the
#: reader skips around names and operators.  Python's ``str.isspace`` and
#: ``str.split()`` also take U+00A0, U+001C..U+001F and the other Unicode
#: blanks, which xinetd reads as ordinary characters.
C_SPACE = " \t\n\v\f\r"


def _only_char(line: str, ch: str) -> bool:
    # parsesup.c line_has_only_1_char: exactly one ch, everything else blank.
    seen = False
    for c in line:
        if c == ch and not seen:
            seen = True
        elif c not in C_SPACE:
            return False
    return seen


def _page_unit() -> int:
    """siosup.c try_memory_mapping: the map unit (2 pages, at least
    SIO_BUFFER_SIZE 8192 when that is a multiple of it) -- the size of the
    buffer Srdline reads a configuration file in."""
    import mmap

    unit = mmap.PAGESIZE * 2
    if unit < 8192:
        unit = 8192 if unit and 8192 % unit == 0 else mmap.PAGESIZE
    return unit


SIO_UNIT = _page_unit()


def sio_lines(data: bytes, unit: int = SIO_UNIT):
    """The lines xinetd's ``Srdline`` returns for a regular file, as
    ``(start offset, bytes)``.

    sio.c Srdline keeps the unread rest of the current ``unit``-byte block,
    reads the next block behind it and looks for LF there; when that block
    has none either, the line ends *one byte before the block's end* (that
    byte is overwritten by the terminating NUL and lost) and the next call
    starts at the following block.  So a line of up to ``unit - 1`` bytes is
    always whole; a longer one is cut when it does not end within the block
    after the one it starts in (at most ``2 * unit - 1`` bytes, fewer the
    later in its block it starts).  At end of file the rest is a line."""
    n = len(data)
    nextb = end = 0
    while True:
        if end > nextb:
            nl = data.find(b"\n", nextb, end)
            if nl >= 0:
                yield nextb, data[nextb:nl]
                nextb = nl + 1
                continue
        start = nextb
        got = min(unit, n - end)
        if got <= 0:
            if end == nextb:
                return
            yield start, data[start:end]
            nextb = end
            continue
        nl = data.find(b"\n", end, end + got)
        end += got
        if nl >= 0:
            yield start, data[start:nl]
            nextb = nl + 1
        elif got < unit:                         # short read: end of file
            yield start, data[start:end]
            nextb = end
        else:                                    # the block's last byte is lost
            yield start, data[start:end - 1]
            nextb = end


class _Lines:
    """parsesup.c next_line over sio.c Srdline: lines as xinetd's reader
    returns them (cut as :func:`sio_lines` says, each ending at its first
    NUL: the parser sees a C string), blank and ``#`` lines skipped.

    Each line keeps the number of the file line it starts on, and ``col0``
    the characters before it on that line (0 unless a long line was cut)."""

    def __init__(self, path: str, data: bytes, ctx: _Ctx | None = None):
        self.path = path
        self.lines: list[str] = []
        self.where: list[tuple[int, int]] = []       # (file line, col0)
        lineno, line_start = 1, 0
        for start, raw in sio_lines(data):
            while line_start < start:                # count the LFs before this piece
                nl = data.find(b"\n", line_start, start)
                if nl < 0:
                    break
                lineno, line_start = lineno + 1, nl + 1
            col0 = len(data[line_start:start].decode("utf-8", "surrogateescape"))
            full_end = data.find(b"\n", start)
            if full_end < 0:
                full_end = len(data)
            if start + len(raw) < full_end and ctx is not None:
                cut = col0 + len(raw.decode("utf-8", "surrogateescape")) + 1
                ctx.diag(path, lineno, cut,
                         f"line longer than xinetd's reader takes here: xinetd ends it at "
                         f"column {cut} (drops that byte) and reads the rest as a new line; "
                         f"lines of up to {SIO_UNIT - 1} bytes are always read whole",
                         warn=True)
            nul = raw.find(b"\0")
            if nul >= 0:
                raw = raw[:nul]
            self.lines.append(raw.decode("utf-8", "surrogateescape"))
            self.where.append((lineno, col0))
        self.i = 0
        self.col0 = 0
        self.last_line = lineno if data else 0

    def next(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            lineno, self.col0 = self.where[self.i]
            self.i += 1
            stripped = line.lstrip(C_SPACE)
            if stripped and not stripped.startswith("#"):
                return lineno, line
        return None

    def skip_entry(self, ctx: _Ctx) -> None:
        while True:
            got = self.next()
            if got is None:
                ctx.diag(self.path, self.last_line, 0, "missing } in last service entry",
                         warn=True)
                return
            if _only_char(got[1], "}"):
                return


def _get_attr_op(line: str):
    """parsesup.c get_attr_op: (name, op, rest, name column), or (error text,
    column of the character it stopped at)."""
    i = 0
    while i < len(line) and line[i] in C_SPACE:
        i += 1
    if i == len(line):
        return "Empty line", i + 1
    start = i
    while i < len(line) and line[i] not in C_SPACE and line[i] != "=":
        i += 1
    name = line[start:i]
    if i == len(line):
        return f"Nothing after attribute: {name}", i + 1
    if line[i] == "=":
        return f"Attribute {name} needs a space before operator", i + 1
    i += 1
    while i < len(line) and line[i] in C_SPACE:
        i += 1
    if i == len(line):
        return f"Nothing after attribute: {name}", i + 1
    c = line[i]
    if c == "=":
        op = "="
    elif c in "+-" and i + 1 < len(line) and line[i + 1] == "=":
        op = c + "="
        i += 1
    else:
        return f"Bad operator for attribute: {name}", i + 1
    return name, op, line[i + 1:], start + 1


def _parse_entry(lines: _Lines, ctx: _Ctx, entry: XEntry) -> bool:
    """parse.c parse_entry: False = FAILED (service dropped)."""
    table = DEFAULT_ATTRS if entry.is_defaults else SERVICE_ATTRS
    while True:
        got = lines.next()
        if got is None:
            ctx.diag(lines.path, lines.last_line, 0, "incomplete entry")
            return False
        lineno, text = got
        if _only_char(text, "}"):
            return True
        r = _get_attr_op(text)
        if len(r) == 2:                          # (message, column)
            ctx.diag(lines.path, lineno, lines.col0 + r[1], r[0])
            return False
        name, op, rest, col = r
        col += lines.col0
        values = _split_values(rest)
        entry.raw.append((name, op, tuple(values), lines.path, lineno))
        ctx.where = (lines.path, lineno, text, lines.col0)
        _attribute(ctx, entry, table, name, op, values, lines.path, lineno, col)
        # parse.c: once "disable" leaves the entry disabled, stop reading it
        # (whatever happened to that line, and whatever disabled the entry).
        if name.lower() == "disable" and entry.disabled:
            if not entry.reason:
                entry.reason = f"{lines.path}:{lineno}: disable = yes"
            return False


def _attribute(ctx, entry, table, name, op, values, path, lineno, col) -> None:
    """parse.c identify_attribute."""
    spec = None
    for key, val in table.items():
        if key.lower() == name.lower():
            spec = val
            break
    if spec is None:
        if entry.is_defaults:
            ctx.diag(path, lineno, col,
                     f"attribute: {name} should not be in default section", warn=True)
        else:
            ctx.diag(path, lineno, col, f"bad service attribute: {name}", warn=True)
        return
    attr, nvalues, parser = spec
    if nvalues != -2:
        if attr in entry.specified:
            ctx.diag(path, lineno, col,
                     f"Service {entry.name}: attribute already set: {name}", warn=True)
            return
        if op != "=":
            ctx.diag(path, lineno, col,
                     f"Service {entry.name}: operator '{op}' cannot be used for "
                     f"attribute '{name}'", warn=True)
            return
    elif entry.is_defaults and op == "=":
        op = "+="
    if nvalues > 0 and len(values) != nvalues:
        ctx.diag(path, lineno, col,
                 f"attribute {name} expects {nvalues} values and {len(values)} values "
                 "were specified", warn=True)
        return
    try:
        parser(entry, values, op, ctx)
    except AttrFail as exc:
        if entry.is_defaults:
            raise RuleSyntaxError(
                path, lineno, col,
                _visible(f"{exc}; error parsing attribute {name} in defaults: xinetd exits"),
                tuple(ctx.diags)) from None
        ctx.diag(path, lineno, col, f"{exc}; Error parsing attribute {name} - DISABLING SERVICE")
        entry.disabled = True
        entry.reason = f"{path}:{lineno}: bad value for {name}"
        return
    entry.specified.add(attr)
    if attr == "disable":
        # svcdisable_parser: "yes" disables, "no" *enables* (even an entry an
        # earlier bad value had disabled).
        entry.disabled = bool(entry.parsed["disable"])
        entry.reason = f"{path}:{lineno}: disable = yes" if entry.disabled else ""


def _copy_early_defaults(entry: XEntry, defaults: XEntry) -> None:
    for attr in _EARLY_DEFAULTS:
        if attr in defaults.specified and attr in defaults.parsed:
            v = defaults.parsed[attr]
            entry.parsed[attr] = v.copy() if hasattr(v, "copy") else v


def _read_file(path: str, ctx: _Ctx, top: bool) -> None:
    # xinetd reads bytes and ends a line at LF only, so a CR is part of the
    # line (a CRLF file's last value on each line ends in CR).
    ctx.files.append((path, ctx.stamp(path)))
    try:
        data = read_bytes(path)
    except OSError as exc:
        if top:
            raise RuleSyntaxError(path, 0, 0, f"cannot read configuration: {exc.strerror}") \
                from None
        ctx.diag(path, 0, 0, f"Unable to open included configuration file: {path}")
        return
    _parse_text(path, data, ctx)


def _parse_text(path: str, data: bytes, ctx: _Ctx) -> None:
    """parse.c parse_conf_file."""
    lines = _Lines(path, data, ctx)
    found_defaults = False
    while True:
        got = lines.next()
        if got is None:
            return
        lineno, line = got
        col = lines.col0 + len(line) - len(line.lstrip(C_SPACE)) + 1   # the first word
        words = _split_values(line)
        kw = words[0].lower() if words else ""
        if kw in ("service", "include", "includedir"):
            if len(words) < 2:
                ctx.diag(path, lineno, col, "service name missing")
                lines.skip_entry(ctx)
                continue
            if kw == "include":
                _include(words[1], ctx)
                continue
            if kw == "includedir":
                _includedir(words[1], ctx)
                continue
        elif kw != "defaults":
            ctx.diag(path, lineno, col, "missing service keyword")
            lines.skip_entry(ctx)
            continue
        brace = lines.next()
        if brace is None or not _only_char(brace[1], "{"):
            name = words[1] if kw == "service" else "defaults"
            ctx.diag(path, brace[0] if brace else lineno, 1, f"Service {name}: missing '{{'")
            lines.skip_entry(ctx)
            continue
        if kw == "defaults":
            if found_defaults:
                ctx.diag(path, lineno, 1,
                         "only 1 defaults entry is allowed. This entry will be ignored")
                lines.skip_entry(ctx)
                continue
            if _parse_entry(lines, ctx, ctx.defaults):
                found_defaults = True
            continue
        entry = XEntry(words[1], path, lineno)
        _copy_early_defaults(entry, ctx.defaults)
        if not _parse_entry(lines, ctx, entry):
            if not entry.reason:
                entry.reason = f"{path}:{lineno}: entry could not be read"
            entry.disabled = True
            ctx.dropped.append(entry)
            lines.skip_entry(ctx)
            continue
        ctx.entries.append(entry)


def _include(path: str, ctx: _Ctx) -> None:
    if ctx.depth >= ctx.max_depth:
        ctx.diag(path, 0, 0, "include nesting too deep; not read")
        return
    ctx.depth += 1
    try:
        _read_file(path, ctx, top=False)
    finally:
        ctx.depth -= 1


def _includedir(path: str, ctx: _Ctx) -> None:
    # the directory itself is watched: its stamp changes when a file is added
    ctx.files.append((path, ctx.stamp(path)))
    try:
        names = list_dir(path)       # out of descriptors: OutOfResources, not "unreadable"
    except OSError:
        ctx.diag(path, 0, 0, f"Unable to read included directory: {path}")
        return
    for name in sorted(names, key=lambda n: os.fsencode(n)):
        if not name or "." in name or name.endswith("~"):
            continue
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            ctx.diag(full, 0, 0, f"{full} is not a regular file. It is being skipped.",
                     warn=True)
            continue
        _include(full, ctx)


# -- after reading: confparse.c ---------------------------------------------
def _drop(ctx: _Ctx, e: XEntry, why: str) -> None:
    e.disabled = True
    e.reason = e.reason or why
    ctx.dropped.append(e)


def _remove_disabled(ctx: _Ctx) -> list[XEntry]:
    d = ctx.defaults
    services = list(ctx.entries)
    if "enabled" in d.specified:
        wanted = [x.lower() for x in d.parsed.get("enabled", [])]
        for s in services:
            s.disabled = s.id.lower() not in wanted
            if s.disabled:
                s.reason = f"{s.path}:{s.line}: not in defaults' enabled list"
    kept = []
    for s in services:
        if s.disabled:
            _drop(ctx, s, "")
        else:
            kept.append(s)
    if "disabled" in d.specified:
        off = [x.lower() for x in d.parsed.get("disabled", [])]
        out = []
        for s in kept:
            if s.id.lower() in off:
                _drop(ctx, s, f"{s.path}:{s.line}: listed in defaults' disabled")
            else:
                out.append(s)
        kept = out
    return kept


def _fill(ctx: _Ctx, s: XEntry) -> str | None:
    """confparse.c service_fill; returns why it fails, or None."""
    d = ctx.defaults
    p = s.parsed
    if "redirect" in p:
        p["server"] = "/bin/true"
        s.specified.add("server")
    for attr in _LATE_DEFAULTS:
        if attr not in s.specified and attr in d.specified:
            p[attr] = d.parsed[attr]
            if attr == "bind" and "bind_name" in d.parsed:
                p["bind_name"] = d.parsed["bind_name"]
            s.specified.add(attr)
    p.setdefault("cps", (50, 10))
    p.setdefault("instances", -1)
    p.setdefault("per_source", -1)
    flags = p.setdefault("flags", set())
    if "IPv4" not in flags and "IPv6" not in flags:
        if p.get("bind"):
            flags.add("IPv6" if ":" in p["bind"] else "IPv4")
        else:
            flags.add("IPv6")
    if "IPv4" in flags and "IPv6" in flags:
        flags.discard("IPv4")
    if p.get("bind") is None and "bind_name" in p:
        fam = socket.AF_INET6 if "IPv6" in flags else socket.AF_INET
        addrs = ctx.resolver.addresses(p["bind_name"], fam)
        if not addrs:
            return f"bad address given for: {s.name}"
        p["bind"] = addrs[0]
    if "protocol" not in s.specified and "socket_type" in s.specified:
        st = p["socket_type"]
        if st in ("stream", "dgram"):
            p["protocol"] = "tcp" if st == "stream" else "udp"
            s.specified.add("protocol")
    if "protocol" in s.specified and "socket_type" not in s.specified:
        if p["protocol"].lower() in ("tcp", "udp"):
            p["socket_type"] = "stream" if p["protocol"].lower() == "tcp" else "dgram"
            s.specified.add("socket_type")
    types = s.types
    mux = bool(types & {"TCPMUX", "TCPMUXPLUS"})
    if "port" not in s.specified and not mux and "RPC" not in types:
        if "UNLISTED" in types:
            return f"Unlisted service: {s.name} must have a port entry"
        if "protocol" not in s.specified:
            return f"Port not specified for service: {s.name} and no protocol given"
        p["port"] = ctx.system.port(s.name, p["protocol"])
        if p["port"] is None:
            return (f"Port not specified and can't find service: {s.name} "
                    "with getservbyname")
        s.specified.add("port")
    return None


def _check(ctx: _Ctx, s: XEntry, earlier: list[XEntry]) -> str | None:
    """confparse.c check_entry + service_attr_check; why it fails, or None."""
    p = s.parsed
    for t in earlier:
        if t.parsed.get("bind") is None:
            continue
        if t.parsed.get("port") != p.get("port") or \
                (t.parsed.get("protocol") or "").lower() != (p.get("protocol") or "").lower():
            continue
        if p.get("bind") is not None:
            if (":" in p["bind"]) != (":" in t.parsed["bind"]):
                continue
            if socket.inet_pton(socket.AF_INET6 if ":" in p["bind"] else socket.AF_INET,
                                p["bind"]) != \
                    socket.inet_pton(socket.AF_INET6 if ":" in t.parsed["bind"]
                                     else socket.AF_INET, t.parsed["bind"]):
                continue
        if t.id.lower() == s.id.lower():
            return f"service: {s.name} id: {s.id} not unique or is a duplicate - DISABLING"
        return (f"service: {s.name} id: {s.id} is unique but its identical to "
                f"service: {t.name} id: {t.id} - DISABLING")
    types = s.types
    flags = s.flags
    if "SENSOR" in flags:
        types.add("INTERNAL")
        p["types"] = types
    if "INTERNAL" in types:
        name = "sensor" if "SENSOR" in flags else s.name
        if p.get("socket_type") not in _BUILTINS.get(name, ()):
            return f"no builtin for internal service {s.name}"
    if types & {"TCPMUX", "TCPMUXPLUS"}:
        if "UNLISTED" not in types:
            return f"Service: {s.name} (tcpmux) should have UNLISTED in type."
        if (p.get("protocol") or "").lower() != "tcp":
            return f"Service: {s.name} (tcpmux) should have tcp in protocol."
    if "RPC" not in types and "UNLISTED" not in types:
        if "protocol" not in s.specified:
            return f"A protocol or a socket_type must be specified for service: {s.name}."
        port = ctx.system.port(s.name, p["protocol"])
        if port is None:
            return ("service/protocol combination not in /etc/services: "
                    f"{s.name}/{p['protocol']}")
        if "port" in s.specified and p["port"] != port:
            return f"Service {s.name} expects port {port}, not {p['port']}"
    if "redirect" in s.specified:
        if p.get("socket_type") != "stream":
            return f"Only tcp sockets are supported for redirected service {s.name}"
        if p.get("wait"):
            return f"Redirected service {s.name} must not wait"
        if "NAMEINARGS" in flags:
            return f"Redirected service {s.name} should not have NAMEINARGS flag set"
    elif "TRAFFIC" in p.get("log_on_success", ()):
        return f"Service {s.name} should not have TRAFFIC flag set since its not redirected"
    if "NAMEINARGS" in flags:
        if "INTERNAL" in types:
            return f"Service {s.name} is INTERNAL and has NAMEINARGS flag set"
        if "server_args" not in s.specified:
            return f"Service {s.name} has NAMEINARGS flag set and no server_args"
    if p.get("socket_type") == "dgram" and not p.get("wait"):
        return f"Service {s.name} has socket_type dgram, but does not wait"
    need = ["socket_type", "wait"]
    if "INTERNAL" not in types:
        need += ["user"] + ([] if "redirect" in s.specified else ["server"])
        if "UNLISTED" in types:
            need += ["protocol"] + ([] if types & {"TCPMUX", "TCPMUXPLUS"} else ["port"])
    if "RPC" in types:
        need = [n for n in need if n != "port"] + ["protocol", "rpc_version"]
        if "UNLISTED" in types:
            need.append("rpc_number")
    missing = [n for n in need if n not in s.specified]
    if missing:
        return f"Service {s.id} missing attribute {' '.join(missing)} - DISABLING"
    return _cannot_start(s)


def _cannot_start(s: XEntry) -> str | None:
    """Services xinetd reads and keeps but whose socket it cannot make
    (service.c svc_activate: socket() or bind() fails, the service is
    deactivated), so acl drops them too (deny unknown_service).  A stream
    socket with protocol udp (or dgram with tcp): socket() always fails.
    flags IPv6 with an IPv4 bind address: xinetd binds its IPv6 socket to
    the IPv4 address read as an IPv6 one, bytes past it included, so the
    result depends on its memory -- live, "bind failed (errno 99)" in one
    configuration and a socket bound to :: in another; acl fails closed."""
    p = s.parsed
    st, proto = p.get("socket_type"), (p.get("protocol") or "").lower()
    if (st, proto) in (("stream", "udp"), ("dgram", "tcp")):
        return (f"Service {s.name}: socket_type {st} with protocol {proto}: xinetd cannot "
                "create its socket and never serves it")
    bind = p.get("bind")
    if bind is not None and "IPv6" in s.flags and ":" not in bind:
        return (f"Service {s.name}: flags IPv6 with the IPv4 bind address {bind}: xinetd "
                "binds a garbage address (it may fail to start the service or listen "
                "elsewhere); acl drops it (write bind = ::ffff:" + bind + ")")
    return None


def _finish(ctx: _Ctx, path: str) -> XinetdConfig:
    kept = _remove_disabled(ctx)
    final: list[XEntry] = []
    for s in kept:
        why = _fill(ctx, s) or _check(ctx, s, final)
        if why:
            ctx.diag(s.path, s.line, 0, why)
            _drop(ctx, s, f"{s.path}:{s.line}: {why}")
            continue
        final.append(s)
    return XinetdConfig(path, ctx.defaults, final, ctx.dropped, ctx.diags, ctx.files)


def parse_xinetd(path: str, resolver=None, system=None, stamp=None) -> XinetdConfig:
    """Read ``path`` (and what it includes).  Raises RuleSyntaxError when
    xinetd itself would refuse to start (unreadable file, bad defaults).
    ``system`` answers the system questions (acl.parse.xinetd_system; a
    fresh one when None); ``stamp(path)`` is called just before each file
    is read and each directory listed (``XinetdConfig.files``)."""
    ctx = _Ctx(resolver, system=system, stamp=stamp)
    ctx.defaults = XEntry("defaults", path, 0, is_defaults=True)
    _read_file(path, ctx, top=True)
    return _finish(ctx, path)


def parse_xinetd_text(text: str, path: str = "<xinetd.conf>", resolver=None,
                      system=None) -> XinetdConfig:
    """Like :func:`parse_xinetd` for text already in memory."""
    ctx = _Ctx(resolver, system=system)
    ctx.defaults = XEntry("defaults", path, 0, is_defaults=True)
    _parse_text(path, text.encode("utf-8", "surrogateescape"), ctx)
    return _finish(ctx, path)
