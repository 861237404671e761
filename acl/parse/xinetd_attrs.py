"""xinetd attribute table and value parsers (spec C.2, C.3, C.8).

Facts from xinetd 2.3.15.3 ``parse.c`` (tables) and ``parsers.c``:

* Each attribute has a value count: a positive number is *exact* (a wrong
  count is warned about and the line ignored: ``cps = 10`` keeps 50 10), -1
  is "any", -2 is "any, and ``+=``/``-=`` allowed" (the *list* attributes).
* A scalar given twice keeps the first ("attribute already set"); ``+=`` /
  ``-=`` on a scalar is warned about and ignored.
* In ``defaults`` a list attribute's ``=`` means ``+=``.
* A value parser that fails disables the service (``AttrFail``); in
  ``defaults`` it stops xinetd.
* Keywords and keyword values compare case-insensitively (C ``strcasecmp``).

Every parser stores its result in ``entry.parsed[attr_id]``; the raw lines of
every attribute stay in ``entry.raw`` so a configuration round-trips.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket

from acl.parse.xinetd_addr import AddrError, inet_aton_exact, parse_value, v6_mask_overrun

__all__ = ["AttrFail", "SERVICE_ATTRS", "DEFAULT_ATTRS", "FLAGS", "TYPES", "c_strtol"]

UNLIMITED = -1


class AttrFail(Exception):
    """The attribute's value is wrong: xinetd disables the service."""


def _eq(a: str, b: str) -> bool:
    return a.lower() == b.lower()


_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)[ \t\n\v\f\r]*\Z")
_OCT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-7]+)[ \t\n\v\f\r]*\Z")
_FLOAT_RE = re.compile(
    r"[ \t\n\v\f\r]*([+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN]))")


# glibc's scanf %lf also reads C99 hex floats: "0x" then hex digits with an
# optional point (a lone point is read as 0: "0x." is 0), then an optional
# binary exponent ("p" with no digits after it is left unread); "0x" with
# neither digit nor point is no number at all.
_HEX_FLOAT_RE = re.compile(
    r"[ \t\n\v\f\r]*([+-]?)0[xX](?:([0-9a-fA-F]*)(\.?)([0-9a-fA-F]*))(?:[pP]([+-]?[0-9]+))?")


def c_scanf_double(text: str) -> float | None:
    """glibc ``sscanf(text, "%lf")``: the longest leading number, or None."""
    h = _HEX_FLOAT_RE.match(text)
    if h is not None:
        sign, whole, point, frac, exp = h.groups()
        if not (whole or point or frac):
            return None
        try:
            return float.fromhex(f"{sign}0x{whole or '0'}.{frac or '0'}p{exp or '0'}")
        except OverflowError:                 # glibc: HUGE_VAL with ERANGE
            return -math.inf if sign == "-" else math.inf
    m = _FLOAT_RE.match(text)
    return None if m is None else float(m[1])


def c_strtol(text: str, base: int = 10) -> int | None:
    """xinetd ``parse_base10`` (and, base 8, util.c ``parse_int(text, 8,
    -1)``): strtol with trailing blanks allowed, the result stored in a C int
    (it wraps)."""
    m = (_INT_RE if base == 10 else _OCT_RE).match(text)
    if m is None:
        return None
    neg = m[1] == "-"
    mag = int(m[2], base)
    if mag > (1 << 63) - (0 if neg else 1):
        return None                           # ERANGE
    v = (-mag if neg else mag) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def c_strtoul_full(text: str) -> int | None:
    """xinetd ``parse_ubase10``: strtoull, then stored in an unsigned int."""
    m = _INT_RE.match(text)
    if m is None:
        return None
    mag = int(m[2])
    if mag > (1 << 64) - 1:
        return None                           # ERANGE
    v = (-mag) % (1 << 64) if m[1] == "-" else mag
    return v & 0xFFFFFFFF


FLAGS = ("REUSE", "INTERCEPT", "NORETRY", "IDONLY", "NAMEINARGS", "NODELAY", "KEEPALIVE",
         "NOLIBWRAP", "SENSOR", "IPv4", "IPv6", "LABELED")
TYPES = ("RPC", "INTERNAL", "UNLISTED", "SPECIAL", "TCPMUX", "TCPMUXPLUS")
SOCKET_TYPES = ("stream", "dgram", "raw", "seqpacket")
SUCCESS_LOG = ("HOST", "DURATION", "EXIT", "PID", "USERID", "TRAFFIC")
FAILURE_LOG = ("HOST", "ATTEMPT", "USERID")
FACILITIES = ("daemon", "auth", "authpriv", "user", "mail", "lpr", "news", "uucp", "ftp",
              *(f"local{i}" for i in range(8)))
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def _pick(value: str, names, what: str) -> str:
    for n in names:
        if _eq(n, value):
            return n
    raise AttrFail(f"Bad {what}: {value}")


# -- parsers: (entry, values, op, ctx) -------------------------------------
def p_names(names, what):
    def parse(entry, values, op, ctx):
        if not values:
            raise AttrFail(f"attribute {what} expects at least 1 value and none was given.")
        cur = entry.parsed.setdefault(what, set())
        for v in values:
            cur.add(_pick(v, names, f"service {what[:-1] if what.endswith('s') else what}"))
    return parse


def p_socket_type(entry, values, op, ctx):
    entry.parsed["socket_type"] = _pick(values[0], SOCKET_TYPES, "socket type")


def p_protocol(entry, values, op, ctx):
    if not ctx.system.protocol(values[0]):
        raise AttrFail(f"Protocol {values[0]} not in /etc/protocols")
    entry.parsed["protocol"] = values[0]


def p_yes_no(attr):
    def parse(entry, values, op, ctx):
        if _eq(values[0], "yes"):
            entry.parsed[attr] = True
        elif _eq(values[0], "no"):
            entry.parsed[attr] = False
        else:
            raise AttrFail(f"Bad value for {attr}: {values[0]}")
    return parse


def _account_parser(attr: str):
    """``user``/``group``: a number (read as strtoul reads it) or a name the
    system knows (``ctx.system``: acl.parse.xinetd_system)."""
    def parse(entry, values, op, ctx):
        name = values[0]
        if name.isdigit() and name.isascii() or name == "":
            if c_strtoul_full(name) is None:
                raise AttrFail(f"Error parsing {attr} as a number: {name}")
        elif not getattr(ctx.system, attr)(name):
            raise AttrFail(f"Unknown {attr}: {name}")
        entry.parsed[attr] = name
    return parse


p_user = _account_parser("user")
p_group = _account_parser("group")


def p_server(entry, values, op, ctx):
    s = values[0]
    if not ctx.system.executable(s):
        raise AttrFail(f"Server {s} is not executable")
    entry.parsed["server"] = s


def p_server_args(entry, values, op, ctx):
    if not values:
        raise AttrFail("attribute server_args expects at least 1 value and none was given.")
    entry.parsed["server_args"] = tuple(values)


def p_limit(attr, what):
    def parse(entry, values, op, ctx):
        v = values[0]
        if _eq(v, "UNLIMITED"):
            entry.parsed[attr] = UNLIMITED
            return
        n = c_strtol(v)
        if n is None or n < 0:
            raise AttrFail(f"{what} is invalid: {v}")
        entry.parsed[attr] = n
    return parse


def p_cps(entry, values, op, ctx):
    a = c_strtoul_full(values[0])
    if a is None:
        raise AttrFail("cps argument not a number")
    b = c_strtoul_full(values[1])
    if b is None:
        raise AttrFail("cps time argument not a number")
    entry.parsed["cps"] = (a, b)


def p_id(entry, values, op, ctx):
    entry.parsed["id"] = values[0]


def p_port(entry, values, op, ctx):
    n = c_strtol(values[0])
    if n is None or not 0 <= n < 65536:
        raise AttrFail("port number is invalid")
    entry.parsed["port"] = n


def p_text(attr):
    def parse(entry, values, op, ctx):
        entry.parsed[attr] = values[0]
    return parse


def p_env(entry, values, op, ctx):
    if op == "-=":
        raise AttrFail("operator '-=' not supported for env attribute")
    cur = entry.parsed.setdefault("env", [])
    if op == "=":
        cur.clear()
    for v in values:
        if "=" not in v:
            raise AttrFail(f"{v} has no '='")
        cur.append(v)


def p_passenv(entry, values, op, ctx):
    cur = entry.parsed.setdefault("passenv", [])
    if op == "=":
        cur.clear()
        op = "+="
    for v in values:
        found = any(_eq(v, x) for x in cur)
        if op == "-=":
            if found:
                cur[:] = [x for x in cur if not _eq(x, v)]
        elif not found:
            cur.append(v)


def p_id_list(attr):
    def parse(entry, values, op, ctx):
        entry.parsed.setdefault(attr, []).extend(values)
    return parse


def p_log_type(entry, values, op, ctx):
    if not values:
        raise AttrFail("attribute log_type expects at least 1 value and none was given.")
    if "log_type" in entry.parsed:
        raise AttrFail("Cannot set more than one log_type attribute")
    kind = values[0]
    if _eq(kind, "FILE"):
        if not 2 <= len(values) <= 4:
            raise AttrFail("wrong number of arguments")
        entry.parsed["log_type"] = ("FILE", *values[1:])
    elif _eq(kind, "SYSLOG"):
        if not 2 <= len(values) <= 3:
            raise AttrFail("wrong number of arguments")
        _pick(values[1], FACILITIES, "syslog facility")
        if len(values) == 3:
            _pick(values[2], LEVELS, "syslog level")
        entry.parsed["log_type"] = ("SYSLOG", *values[1:])
    else:
        raise AttrFail(f"Unknown log type: {kind}")


def p_log_flags(attr, names):
    def parse(entry, values, op, ctx):
        cur = entry.parsed.setdefault(attr, set())
        if op == "=":
            cur.clear()
            op = "+="
        for v in values:
            n = _pick(v, names, f"{attr} flag")
            if op == "+=":
                cur.add(n)
            else:
                cur.discard(n)
    return parse


def p_addresses(attr):
    """parsers.c parse_inet_addresses + addr.c addrlist_op (spec C.3)."""
    def parse(entry, values, op, ctx):
        cur = entry.parsed.get(attr)
        if cur is None:
            cur = entry.parsed[attr] = []
        if op == "=":
            cur.clear()
            op = "+="
        for v in values:
            if "," in v and "{" not in v:
                raise AttrFail(f"Address: {v} has a comma in it - remove the comma")
            try:
                got = parse_value(v, ctx.resolver)
            except AddrError as exc:
                raise AttrFail(f"{exc}; Failed adding: {v}") from exc
            if got is None:
                ctx.note(f"failed to parse {v}", value=v)
                continue
            path, line = ctx.where[:2]
            for e in got:
                overrun = v6_mask_overrun(e)
                if overrun:
                    ctx.note(f"{v}: {overrun}", value=v)
                e = dataclasses.replace(e, path=path, line=line)
                if op == "+=":
                    cur.append(e)
                else:
                    cur[:] = [x for x in cur if not x.same_as(e)]
    return parse


def p_banner(attr):
    def parse(entry, values, op, ctx):
        entry.parsed[attr] = values[0]
    return parse


def p_max_load(entry, values, op, ctx):
    # sscanf("%lf"): the longest leading number (hex floats too); anything
    # after is ignored.
    v = c_scanf_double(values[0])
    if v is None:
        raise AttrFail("error reading max_load argument")
    if v == 0:
        raise AttrFail("error parsing max_load argument")
    entry.parsed["max_load"] = v


def p_redirect(entry, values, op, ctx):
    port = c_strtol(values[1])
    if port is None or port <= 0:
        port = ctx.system.port(values[1], "tcp")
        if port is None:
            raise AttrFail("port number invalid")
    if port >= 65536:
        raise AttrFail("port number too large")
    fam = socket.AF_INET6 if ":" in values[0] else socket.AF_INET
    if not ctx.resolver_addresses(values[0], fam):
        raise AttrFail("bad address")
    entry.parsed["redirect"] = (values[0], port)


def p_bind(entry, values, op, ctx):
    a = values[0]
    if all(c in "0123456789." for c in a):
        n = inet_aton_exact(a)
        addrs = [] if n is None else [socket.inet_ntoa(n.to_bytes(4, "big"))]
    elif ":" in a:
        try:
            addrs = [socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, a))]
        except (OSError, ValueError):
            addrs = []
    else:
        addrs = ctx.resolver_addresses(a, 0)
    if not addrs:
        raise AttrFail("bad address")
    # One address: bound now; several: chosen later by the IPv4/IPv6 flag.
    entry.parsed["bind"] = addrs[0] if len(addrs) == 1 else None
    entry.parsed["bind_name"] = a


def p_access_times(entry, values, op, ctx):
    """time.c ti_add: ``H:M-H:M``, 0-23 / 0-59, start < end, inclusive."""
    if not values:
        raise AttrFail("attribute access_times expects at least 1 value and none was given.")
    cur = entry.parsed.setdefault("access_times", [])
    for v in values:
        cur.append(_interval(v))


def _get_num(s: str, i: int, lo: int, hi: int, stop: str) -> tuple[int, int]:
    j = i
    n = 0
    while j < len(s) and s[j] in "0123456789":
        n = n * 10 + ord(s[j]) - 48
        j += 1
    if (s[j] if j < len(s) else "") != stop:
        raise AttrFail("incorrect time interval")
    if not lo <= n <= hi:
        raise AttrFail("invalid time interval")
    return n, j + 1


def _interval(v: str) -> tuple[int, int]:
    i = 0
    while i < len(v) and v[i] == " ":
        i += 1
    h1, i = _get_num(v, i, 0, 23, ":")
    m1, i = _get_num(v, i, 0, 59, "-")
    h2, i = _get_num(v, i, 0, 23, ":")
    m2, _ = _get_num(v, i, 0, 59, "")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start >= end:
        raise AttrFail(f"invalid time interval: {v}")
    return start, end


def p_rpc_version(entry, values, op, ctx):
    v = values[0]
    if "-" in v:
        a, _, b = v.partition("-")
        lo, hi = c_strtol(a), c_strtol(b)
        if lo is None or hi is None:
            lo, hi = 0, -1
    else:
        lo = c_strtol(v)
        hi = lo if lo is not None else -1
        lo = lo if lo is not None else 0
    if lo > hi:
        raise AttrFail(f"bad version range: {v}")
    entry.parsed["rpc_version"] = (lo, hi)


def p_int(attr):
    def parse(entry, values, op, ctx):
        n = c_strtol(values[0])
        if n is None:
            raise AttrFail(f"Error parsing: {values[0]}")
        entry.parsed[attr] = n
    return parse


def p_deny_time(entry, values, op, ctx):
    v = values[0]
    if _eq(v, "FOREVER"):
        entry.parsed["deny_time"] = -1
    elif _eq(v, "NEVER"):
        entry.parsed["deny_time"] = 0
    else:
        n = c_strtol(v)
        if n is None:
            raise AttrFail(f"Error parsing: {v}")
        entry.parsed["deny_time"] = n


def p_umask(entry, values, op, ctx):
    # util.c parse_int(str, 8, -1): strtol base 8 (C blanks before, after),
    # the long stored in an int -- not Python's int(), which also takes
    # "0o22", "0_22", Unicode digits and Unicode blanks.
    n = c_strtol(values[0], 8)
    if n is None or not 0 <= n <= 0o777:
        raise AttrFail("umask argument is invalid.")
    entry.parsed["umask"] = n


def p_rlimit(attr):
    def parse(entry, values, op, ctx):
        v = values[0]
        if _eq(v, "UNLIMITED"):
            entry.parsed[attr] = UNLIMITED
            return
        body = v.rstrip(" \t\n\v\f\r")        # get_limit: C isspace only
        mult = 1
        if attr != "rlimit_cpu" and body[-1:] in ("k", "K", "m", "M"):
            mult = 1024 if body[-1] in "kK" else 1024 * 1024
            body = body[:-1]
        n = c_strtoul_full(body) if body else None
        if n is None:
            raise AttrFail(f"{attr} is invalid: {v}")
        entry.parsed[attr] = n * mult
    return parse


def p_svcdisable(entry, values, op, ctx):
    if _eq(values[0], "yes"):
        entry.parsed["disable"] = True
    elif _eq(values[0], "no"):
        entry.parsed["disable"] = False
    else:
        raise AttrFail(f"Bad value: {values[0]}")


def p_libwrap(entry, values, op, ctx):
    entry.parsed["libwrap"] = values[0]


# name -> (attribute id, value count, parser); parse.c service_attributes
# for Debian's build (LIBWRAP, HAVE_LOADAVG, RPC, every RLIMIT).
SERVICE_ATTRS = {
    "socket_type": ("socket_type", 1, p_socket_type),
    "protocol": ("protocol", 1, p_protocol),
    "wait": ("wait", 1, p_yes_no("wait")),
    "user": ("user", 1, p_user),
    "group": ("group", 1, p_group),
    "server": ("server", 1, p_server),
    "server_args": ("server_args", -1, p_server_args),
    "instances": ("instances", 1, p_limit("instances", "Number of instances")),
    "log_on_success": ("log_on_success", -2, p_log_flags("log_on_success", SUCCESS_LOG)),
    "log_on_failure": ("log_on_failure", -2, p_log_flags("log_on_failure", FAILURE_LOG)),
    "log_type": ("log_type", -1, p_log_type),
    "only_from": ("only_from", -2, p_addresses("only_from")),
    "no_access": ("no_access", -2, p_addresses("no_access")),
    "access_times": ("access_times", -1, p_access_times),
    "type": ("type", -1, p_names(TYPES, "types")),
    "rpc_version": ("rpc_version", 1, p_rpc_version),
    "rpc_number": ("rpc_number", 1, p_int("rpc_number")),
    "id": ("id", 1, p_id),
    "env": ("env", -2, p_env),
    "port": ("port", 1, p_port),
    "passenv": ("passenv", -2, p_passenv),
    "flags": ("flags", -1, p_names(FLAGS, "flags")),
    "nice": ("nice", 1, p_int("nice")),
    "redirect": ("redirect", 2, p_redirect),
    "banner": ("banner", 1, p_banner("banner")),
    "bind": ("bind", 1, p_bind),
    "interface": ("bind", 1, p_bind),
    "per_source": ("per_source", 1, p_limit("per_source", "Number of per source instances")),
    "groups": ("groups", 1, p_yes_no("groups")),
    "banner_success": ("banner_success", 1, p_banner("banner_success")),
    "banner_fail": ("banner_fail", 1, p_banner("banner_fail")),
    "cps": ("cps", 2, p_cps),
    "disable": ("disable", 1, p_svcdisable),
    "max_load": ("max_load", 1, p_max_load),
    "rlimit_as": ("rlimit_as", 1, p_rlimit("rlimit_as")),
    "rlimit_cpu": ("rlimit_cpu", 1, p_rlimit("rlimit_cpu")),
    "rlimit_data": ("rlimit_data", 1, p_rlimit("rlimit_data")),
    "rlimit_files": ("rlimit_files", 1, p_rlimit("rlimit_files")),
    "rlimit_rss": ("rlimit_rss", 1, p_rlimit("rlimit_rss")),
    "rlimit_stack": ("rlimit_stack", 1, p_rlimit("rlimit_stack")),
    "v6only": ("v6only", 1, p_yes_no("v6only")),
    "deny_time": ("deny_time", 1, p_deny_time),
    "umask": ("umask", 1, p_umask),
    "libwrap": ("libwrap", 1, p_libwrap),
}

# parse.c default_attributes
DEFAULT_ATTRS = {
    "log_type": ("log_type", -2, p_log_type),
    "log_on_success": SERVICE_ATTRS["log_on_success"],
    "log_on_failure": SERVICE_ATTRS["log_on_failure"],
    "disabled": ("disabled", -2, p_id_list("disabled")),
    "no_access": SERVICE_ATTRS["no_access"],
    "only_from": SERVICE_ATTRS["only_from"],
    "instances": SERVICE_ATTRS["instances"],
    "passenv": SERVICE_ATTRS["passenv"],
    "banner": SERVICE_ATTRS["banner"],
    "bind": SERVICE_ATTRS["bind"],
    "interface": SERVICE_ATTRS["interface"],
    "per_source": SERVICE_ATTRS["per_source"],
    "groups": SERVICE_ATTRS["groups"],
    "banner_success": SERVICE_ATTRS["banner_success"],
    "banner_fail": SERVICE_ATTRS["banner_fail"],
    "cps": SERVICE_ATTRS["cps"],
    "enabled": ("enabled", -2, p_id_list("enabled")),
    "max_load": SERVICE_ATTRS["max_load"],
    "v6only": SERVICE_ATTRS["v6only"],
    "umask": SERVICE_ATTRS["umask"],
}
