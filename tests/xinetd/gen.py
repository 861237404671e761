"""Generated xinetd configurations for the live differential tests.

Each service gets random ``only_from`` / ``no_access`` lines (``=``, ``+=``,
``-=``; every address form of spec C.3, including the odd ones, names from
the private hosts file, unparseable words and, now and then, a value that
disables the service), on a random socket family (now and then left to the
``bind`` address: no IPv4/IPv6 flag).  Some services, and the defaults, get
``instances`` / ``per_source`` / ``cps`` lines that decide every connection
whatever its count (0, UNLIMITED, large, a wrong value count, a bad value,
the same attribute twice: the first wins), never a limit a sequence of
single probes could trip.  The defaults may give a list twice with ``=``
(there it adds).  Clients are drawn from a fixed set of 127.x.y.z sources
that the values are built to hit and miss.
"""

from __future__ import annotations

import random

CLIENTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6",
           "127.0.0.9", "127.0.1.1", "127.1.0.1", "127.1.2.3", "127.2.0.1", "127.5.1.1",
           "127.3.3.3", "127.0.0.200"]

V4_VALUES = [
    "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.9", "127.1.2.3",
    "127.0.0.0", "127.1.0.0", "127.0.1.0", "127.2.0.0", "0.0.0.0", "127.1", "127.0.1",
    "0177.0.0.2", "0x7f.0.0.3", "127.0.0.0/30", "127.0.0.7/29", "127.0.0.2/31", "127.1.0.0/16",
    "127.0.0.0/24", "127.0.0.0/8", "0.0.0.0/0", "127.0.0.5/32", "127.0.0.4/33",
    "127.0.0.{2,3}", "127.0.0.{4,5,9}", "127.{0,5}", "127.1.{0,2}", "127.{1}", "{127}",
    "127.0.0.{200}", "127.0.{0}", "0.0.0.0.127.{1}", "127.0.0.2.0.{0}",
    "two.example.com", ".example.com", ".other.org", "four.other.org", "TWO.EXAMPLE.COM",
    ".EXAMPLE.com", "example.com", "nosuch.invalid", "loopnet", "looptwo",
    "#", "x", "127.0.0.300", "1.2.3.4.5", "",
]
V6_VALUES = ["::ffff:127.0.0.2", "::ffff:127.0.0.3", "::ffff:0:0/96", "::ffff:127.0.0.0/120",
             "::ffff:127.1.0.0/112", "::1", "::1/128", "::/0", "::", "::ffff:127.0.0.2/128"]
DISABLING = ["127.0.0.2,127.0.0.3", "127..0.{1}", "127.0.0.{2,}", "127.0.0.{2}x"]
#: scalar limits a probe's outcome depends on but no count reaches
LIMITS = ["instances = UNLIMITED", "instances = 0", "instances = 100", "per_source = 0",
          "per_source = UNLIMITED", "per_source = 40", "cps = 10", "cps = 200 1",
          "instances = unlimited", "per_source = -1", "instances = x"]
DEFAULT_LIMITS = ["instances = 0", "per_source = 0", "instances = UNLIMITED", "per_source = 30"]


def _values(rng: random.Random, v6: bool) -> list[str]:
    pool = V4_VALUES + (V6_VALUES if v6 else V6_VALUES[:3])
    return [rng.choice(pool) for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4]))]


def address_lines(rng: random.Random, v6: bool, disabling: bool) -> list[str]:
    lines = []
    for attr in ("only_from", "no_access"):
        for _ in range(rng.choice([0, 0, 1, 1, 1, 2, 3])):
            op = rng.choice(["=", "=", "+=", "-="])
            vals = _values(rng, v6)
            lines.append(f"{attr} {op} {' '.join(v for v in vals if v)}".rstrip())
    if disabling:
        attr = rng.choice(["only_from", "no_access"])
        lines.insert(rng.randrange(len(lines) + 1), f"{attr} = {rng.choice(DISABLING)}")
    if rng.random() < 0.25:
        lines += [rng.choice(LIMITS) for _ in range(rng.choice([1, 1, 2]))]
    rng.shuffle(lines)
    return lines


def config(rng: random.Random, first_port: int, count: int) -> tuple[str, list[dict]]:
    """A configuration text and, per service, its id, port, family, bind."""
    out = ["defaults", "{", "  log_type = SYSLOG daemon info", "  log_on_failure = HOST"]
    defaults_list = []
    if rng.random() < 0.7:
        for attr in ("only_from", "no_access"):
            for _ in range(rng.choice([0, 0, 1, 1, 1, 2])):     # a second "=" adds
                vals = [v for v in _values(rng, False) if v and v not in ("#", "x")]
                defaults_list.append(f"  {attr} = {' '.join(vals)}".rstrip())
    zero = None          # a limit of 0 in defaults: services that set their own get in
    if rng.random() < 0.15:
        line = rng.choice(DEFAULT_LIMITS)
        defaults_list.append("  " + line)
        if line.endswith(" 0"):
            zero = line.split()[0]
    out += defaults_list + ["}", ""]
    services = []
    for i in range(count):
        kind = rng.choice(["v4", "v4", "v4", "mapped", "mapped", "v6only"])
        bind = {"v4": "127.0.0.1", "mapped": "::ffff:127.0.0.1", "v6only": "::1"}[kind]
        flags = "NOLIBWRAP" if kind == "v4" else "IPv6 NOLIBWRAP"
        if kind == "v4" and rng.random() < 0.3:
            flags = "NOLIBWRAP IPv4"
        if kind == "mapped" and rng.random() < 0.4:
            flags = "NOLIBWRAP"             # IPv6 from the bind address
        sid = f"svc{i}"
        port = first_port + i
        lines = [f"service {sid}", "{", "  type = UNLISTED", f"  port = {port}",
                 "  socket_type = stream", "  protocol = tcp", "  wait = no", "  user = root",
                 "  server = /bin/echo", "  server_args = ok", f"  bind = {bind}",
                 f"  flags = {flags}"]
        lines += ["  " + a for a in address_lines(rng, kind != "v4", rng.random() < 0.08)]
        if zero and rng.random() < 0.6:
            lines.append(f"  {zero} = UNLIMITED")
        lines += ["}", ""]
        out += lines
        services.append({"id": sid, "port": port, "kind": kind, "bind": bind})
    return "\n".join(out) + "\n", services
