"""acl-wrap deciding with the real sidecar, side by side with Debian's real
tcpd, on what the sidecar has to work out for itself: the client's name,
and an IPv4 client of an IPv6 socket.  Nothing tcpd does is written down
as the answer: it is asked each time (EXPECT only checks that each case
probes what its name says).

Names (``test_name_rules_decide_as_tcpd``):

* One hosts.allow / hosts.deny pair holds every rule set (RULES), each
  under a daemon name of its own, so no set sees another's lines.  tcpd and
  acl-wrap both run in tcpd mode with ``argv[0]`` = that set's server, so
  both ask with the same daemon name; every client (CLIENTS, one 127.x.y.z
  source each) is handed to each program once (harness.Handoff).
* No DNS is ever asked (the machine's resolv.conf names a remote server).
  tcpd runs in a private mount namespace (harness.ns_command) whose
  /etc/hosts is HOSTS, with ``hosts: files`` (no dns module is loaded) and
  ``multi on``: every lookup it makes is answered from HOSTS.  acl-wrap
  runs in that namespace too (it looks nothing up for these rules).
* ``acl serve`` -- this tree's code (PYTHONPATH, checked before it starts)
  -- is told HOSTS by ``[names] hosts_file`` and runs in namespaces of its
  own (SIDECAR_NS): a new network namespace, with no interface up, so no
  query could leave it, and an /etc/hosts that names nobody with ``hosts:
  files`` -- so only hosts_file can give it the names tcpd sees.
* Every (rule set, client): granted by both or refused by both -- a refusal
  is only a refusal when the program logged one (acl-wrap: "refused by
  acl", so failing closed for want of a sidecar never passes for one).
* A second sidecar with ``lookup = false`` (every such client "unknown")
  changes the answer for some client of every rule set: the answers above
  were decided by names.
* Long names: libwrap cuts a PTR name to 127 characters before its double
  check, so a longer one is paranoid (its cut form does not resolve) and
  one of 127 is kept.
* PARANOID with a files-only resolver: glibc's files module returns every
  line naming a host (``multi on``, Debian's host.conf), so a forward lookup
  always gives the PTR line's own address back.  The paranoid clients are
  the other two ways libwrap's double check fails (spec A.6): a PTR name
  whose forward lookup gives another canonical name (it is an alias of a
  host listed earlier) and a PTR name that is a numeric address.

Mapped clients (``test_mapped_client_decides_as_ipv4``): see its docstring.

Ports: 25800-25802 (tests/wrap/conftest.py).  Loopback only; every process
is started here and stopped by its handle or PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import require_free_ports, stop_process
from tests.sidecar import Live, start_server
from tests.wrap import harness, live
from tests.wrap.conftest import needs_root

pytestmark = pytest.mark.live

TCPD = "/usr/sbin/tcpd"
NAMES_PORT = 25800
MAPPED_PORTS = {"tcpd": 25801, "acl-wrap": 25802}
PATH_ENV = {"PATH": "/usr/bin:/bin"}
HOST_CONF = "multi on\n"

HOSTS = """\
127.0.0.1	localhost
127.0.1.1	alpha.lab.test alpha
127.0.1.2	beta
127.0.1.3	gamma.other.test
127.0.1.60	real.lab.test sly.lab.test
127.0.1.6	sly.lab.test
127.0.1.7	127.0.9.9
127.0.1.8	Mixed.LAB.Test
127.0.1.30
127.0.2.1	delta.lab.test
127.0.1.10	aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.lab.test
127.0.1.24	cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.ddddddddddddddddddddddddddddddddddddddddddddddddddddddddd.lab.test
"""

#: client -> its source address (and what HOSTS makes of it)
CLIENTS = {
    "alpha": "127.0.1.1",       # alpha.lab.test
    "beta": "127.0.1.2",        # beta: no dot (LOCAL)
    "gamma": "127.0.1.3",       # gamma.other.test
    "nobody": "127.0.1.4",      # no PTR: unknown
    "sly": "127.0.1.6",         # sly.lab.test, forward canonical real.lab.test: paranoid
    "numeric": "127.0.1.7",     # PTR 127.0.9.9, a numeric name: paranoid
    "mixed": "127.0.1.8",       # Mixed.LAB.Test: rules match names ignoring case
    "delta": "127.0.2.1",       # delta.lab.test, outside 127.0.1.0/24
    "long130": "127.0.1.10",    # a 130-character name: libwrap cuts it to 127, paranoid
    "long127": "127.0.1.24",    # 127 characters: kept
    "bare": "127.0.1.30",       # alone on its line: glibc names it "", KNOWN and LOCAL
}

#: rule set (its daemon name) -> (hosts.allow lines, hosts.deny lines)
RULES = {
    "by-name": ("by-name: alpha.lab.test beta", "by-name: ALL"),
    "by-domain": ("by-domain: .lab.test", "by-domain: ALL"),
    "by-known": ("by-known: KNOWN", "by-known: ALL"),
    "by-unknown": ("", "by-unknown: UNKNOWN"),
    "by-local": ("by-local: LOCAL", "by-local: ALL"),
    "by-paranoid": ("", "by-paranoid: PARANOID"),
    "except-name": ("except-name: .lab.test EXCEPT 127.0.1.1", "except-name: ALL"),
    "except-addr": ("except-addr: 127.0.1.0/255.255.255.0 EXCEPT gamma.other.test",
                    "except-addr: ALL"),
}
#: the clients tcpd is expected to serve, per rule set (checked on tcpd only)
EVERYONE = set(CLIENTS)
EXPECT = {
    "by-name": {"alpha", "beta"},
    "by-domain": {"alpha", "mixed", "delta", "long127"},
    "by-known": {"alpha", "beta", "gamma", "mixed", "delta", "long127", "bare"},
    "by-unknown": EVERYONE - {"nobody"},
    "by-local": {"beta", "bare"},
    "by-paranoid": EVERYONE - {"sly", "numeric", "long130"},
    "except-name": {"mixed", "delta", "long127"},
    "except-addr": {"alpha", "beta", "nobody", "sly", "numeric", "mixed", "long130", "long127",
                    "bare"},
}

# The sidecar's namespaces: no network (a DNS query has nowhere to go), and
# a system resolver that knows no client (only hosts_file can name them).
SIDECAR_NS = """set -e
mount --bind "$1/hosts" /etc/hosts
mount --bind "$1/nsswitch.conf" /etc/nsswitch.conf
shift
exec "$@"
"""


# -- the real sidecar -----------------------------------------------------------------
def write_policy(d: Path, allow: str, deny: str, names: str) -> Path:
    (d / "hosts.allow").write_text(allow)
    (d / "hosts.deny").write_text(deny)
    toml = d / "policy.toml"
    toml.write_text(f"""\
[sockets]
query = "{d}/query.sock"
mode = "0666"

[metrics]
listen = ""

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]

[names]
{names}

[run]
watch = false
""")
    return toml


def sidecar_prefix(d: Path) -> list[str]:
    ns = d / "ns"
    ns.mkdir()
    (ns / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (ns / "nsswitch.conf").write_text("hosts: files\nnetworks: files\n")
    return ["unshare", "--mount", "--net", "bash", "--norc", "--noprofile", "-c", SIDECAR_NS,
            "acl-sidecar-ns", str(ns)]


def this_tree_env() -> dict[str, str]:
    """The sidecar runs the code under test: this tree's acl first on its path."""
    root = str(harness.ROOT)
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": root + (os.pathsep + rest if rest else "")}


def start_sidecar(d: Path, allow: str, deny: str, names: str) -> Live:
    d.mkdir()
    d.chmod(0o755)
    config = write_policy(d, allow, deny, names)
    prefix = sidecar_prefix(d)
    env = this_tree_env()
    # the same interpreter, path and namespaces as the sidecar: which acl?
    where = subprocess.run([*prefix, sys.executable, "-c", "import acl; print(acl.__file__)"],
                           env=dict(os.environ, **env), cwd=str(d), capture_output=True,
                           text=True, timeout=30)
    assert where.stdout.strip() == str(harness.ROOT / "acl" / "__init__.py"), where
    # --allow-pure: as tests/wrap/live.py (the compiled core is used when built)
    return start_server(d, config, env=env, args=("--allow-pure",), prefix=prefix)


@pytest.fixture(scope="module")
def workdir():
    needs_root()
    if not os.access(TCPD, os.X_OK):
        pytest.skip("Debian's tcpd is not installed")
    d = Path(tempfile.mkdtemp(prefix="awn."))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sink(workdir):
    s = harness.SyslogSink(workdir / "log.sock")
    yield s
    s.close()
    os.unlink(s.path)


# -- one connection, handed over inetd-style ---------------------------------------------
def lines_of(sink: harness.SyslogSink, pid: int, since: int = 0) -> list[str]:
    """What process ``pid`` logged, from message number ``since`` on."""
    out = []
    for _, text in list(sink.messages)[since:]:
        m = re.search(r"\[(\d+)\]: (.*)$", text, re.S)
        if m and int(m.group(1)) == pid:
            out.append(m.group(2))
    return out


def attempt(argv: list[str], src: str, sink: harness.SyslogSink, env: dict[str, str],
            refusal: str) -> bool:
    """Hand one connection from ``src`` to ``argv``: True when the server
    ran, False when the program logged ``refusal``; anything else fails.
    (tcpd sleeps 5 s after a refusal: its process, our child, is killed
    once the line is logged.)"""
    data, _lines = session(argv, src, sink, env, refusal)
    return data == b"READY\n"


def session(argv: list[str], src: str, sink: harness.SyslogSink, env: dict[str, str],
            refusal: str) -> tuple[bytes, list[str]]:
    """:func:`attempt`'s exchange: what the client read (a server or a twist
    wrote it) and what the program logged.  Nothing read means a refusal,
    which must have been logged."""
    since = len(sink.messages)
    h = harness.Handoff(argv, src, NAMES_PORT, env=env)
    pid = h.proc.pid            # unshare and bash exec: this is tcpd / acl-wrap

    def refused() -> bool:
        return any(refusal in t for t in lines_of(sink, pid, since))

    data, closed = b"", False
    h.client.settimeout(0.01)
    end = time.monotonic() + 10
    while not closed and time.monotonic() < end:
        try:
            chunk = h.client.recv(4096)
        except TimeoutError:
            if refused():
                break
            continue
        except ConnectionResetError:
            chunk = b""
        closed = not chunk
        data += chunk
    if not closed and h.proc.poll() is None:
        h.proc.kill()
    h.finish()
    if data:
        # its last lines may come after the client saw the output
        end = time.monotonic() + 2
        while not any("connect from" in t or t.startswith("twist ")
                      for t in lines_of(sink, pid, since)) and time.monotonic() < end:
            time.sleep(0.005)
        return data, lines_of(sink, pid, since)
    # acl-wrap closes first, then its lines arrive -- and its refusal is two
    # lines ("refused by acl: ...", then tcpd's "refused connect from ..."):
    # the loop above may have stopped at the first, so wait for the second
    end = time.monotonic() + 2
    while not (refused() and any("connect from" in t for t in lines_of(sink, pid, since))) \
            and time.monotonic() < end:
        time.sleep(0.005)
    assert refused(), (argv[-1], src, data, lines_of(sink, pid, since))
    return data, lines_of(sink, pid, since)


def rule_files(rules: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """hosts.allow and hosts.deny holding every rule set."""
    return ("".join(a + "\n" for a, _ in rules.values() if a),
            "".join(d + "\n" for _, d in rules.values() if d))


def outcomes(workdir: Path, exe: str, sink: harness.SyslogSink, env: dict[str, str],
             refusal: str, hosts: str, rules: dict[str, tuple[str, str]],
             clients: dict[str, str]) -> dict[tuple[str, str], bool]:
    """(rule set, client) -> served, for ``exe`` in tcpd mode in tcpd's
    namespace (/etc/hosts = ``hosts``)."""
    allow, deny = rule_files(rules)
    servers = workdir / "servers"
    servers.mkdir(exist_ok=True)
    got = {}
    for name in rules:
        server = harness.write_exe(servers / name, "#!/bin/sh\necho READY\n")
        for client, src in clients.items():
            argv = harness.ns_command(workdir, str(server), exe, hosts=hosts, allow=allow,
                                      deny=deny, log_sock=sink.path, host_conf=HOST_CONF)
            got[name, client] = attempt(argv, src, sink, env, refusal)
    return got


def side_by_side(workdir: Path, wrap_bin: Path, sink: harness.SyslogSink, hosts: str,
                 rules: dict[str, tuple[str, str]], clients: dict[str, str],
                 names_settings: dict[str, str]) -> tuple[dict, dict[str, dict]]:
    """tcpd's outcomes, and acl-wrap's with a sidecar per ``[names]``
    setting (``{label: toml lines}``; ``{hosts_file}`` is filled in)."""
    ask = (hosts, rules, clients)
    tcpd = outcomes(workdir, TCPD, sink, PATH_ENV, "refused connect from", *ask)
    hosts_file = workdir / "names.hosts"
    hosts_file.write_text(hosts)
    allow, deny = rule_files(rules)
    wrap = {}
    for label, names in names_settings.items():
        d = workdir / f"sidecar-{len(list(workdir.glob('sidecar-*')))}"
        side = start_sidecar(d, allow, deny, names.format(hosts_file=hosts_file))
        try:
            wrap[label] = outcomes(workdir, str(wrap_bin), sink,
                                   dict(PATH_ENV, ACL_WRAP_SOCKET=side.query),
                                   "refused by acl", *ask)
        finally:
            side.stop()
        assert "Traceback" not in side.text(), side.text()
    return tcpd, wrap


def test_name_rules_decide_as_tcpd(workdir, wrap_bin, sink):
    """Name rules (a host name, .domain, KNOWN, UNKNOWN, LOCAL, PARANOID,
    EXCEPT mixing names and addresses): acl-wrap with the sidecar looking
    names up in its hosts_file answers every client as tcpd does (see the
    module rules)."""
    tcpd, wrap = side_by_side(workdir, wrap_bin, sink, HOSTS, RULES, CLIENTS,
                              {"lookup": 'hosts_file = "{hosts_file}"',
                               "no lookup": "lookup = false"})
    served = {rules: {c for c in CLIENTS if tcpd[rules, c]} for rules in RULES}
    assert served == EXPECT                 # each case probes what its name says

    differ = {k: (tcpd[k], wrap["lookup"][k]) for k in tcpd if tcpd[k] != wrap["lookup"][k]}
    assert not differ, f"(rule set, client): (tcpd, acl-wrap) {differ}"
    # and names decided them: without lookups, every rule set answers some
    # client otherwise
    by_name = {rules for (rules, c), v in wrap["no lookup"].items() if v != tcpd[rules, c]}
    assert by_name == set(RULES)


#: IPv6 lines glibc's files module also answers IPv4 lookups from: a
#: v4-mapped address stands for its IPv4 address and ::1 for 127.0.0.1
#: (nss_files' hosts parser, for AF_INET queries)
V6_LINES_HOSTS = "::1\tlocalhost ip6-localhost\n::ffff:127.0.3.1\tmapped.lab.test\n"


def test_hosts_file_ipv6_lines_name_ipv4_clients_as_tcpd(workdir, wrap_bin, sink):
    """A hosts file naming 127.0.0.1 only on its ``::1`` line and 127.0.3.1
    only as ``::ffff:127.0.3.1``: tcpd (glibc) names both clients, so must
    the sidecar reading the same text as its hosts_file."""
    rules = {"v6-lines": ("v6-lines: localhost .lab.test", "v6-lines: ALL")}
    clients = {"loopback": "127.0.0.1", "mapped-line": "127.0.3.1"}
    tcpd, wrap = side_by_side(workdir, wrap_bin, sink, V6_LINES_HOSTS, rules, clients,
                              {"lookup": 'hosts_file = "{hosts_file}"'})
    assert all(tcpd.values()), tcpd             # tcpd names both (glibc as described)
    assert wrap["lookup"] == tcpd


#: HOSTS and a PTR name in inet_aton form (numeric to libwrap: paranoid)
EXPAND_HOSTS = HOSTS + "127.0.1.18\t127.0.274\n"
EXPAND_CLIENTS = {"alpha": "127.0.1.1", "nobody": "127.0.1.4", "sly": "127.0.1.6",
                  "long130": "127.0.1.10", "inet_aton": "127.0.1.18", "bare": "127.0.1.30"}
TWIST = "twist /bin/echo h=%h c=%c n=%n h2=%h"
#: rules that make libwrap look the client's (or the server's) name up while
#: matching -- or not -- then expand it, or log it
EXPAND_RULES = {
    "x-domain": (f"x-domain: .lab.test 127.0.1.: {TWIST}", ""),       # a name pattern first
    "x-addr": (f"x-addr: 127.0.1. .lab.test: {TWIST}", ""),          # the address matches first
    "x-prior": (f"x-prior: nomatch.example\nx-prior: ALL: {TWIST}", ""),  # an earlier name rule
    "x-known": (f"x-known: KNOWN UNKNOWN PARANOID: {TWIST}", ""),
    "x-server": ("x-server@LOCAL: ALL: twist /bin/echo H=%H s=%s N=%N H2=%H c=%c", ""),
    "x-log": ("x-log: .lab.test", "x-log: ALL"),                    # only the log line shows it
}


def test_names_looked_up_while_matching_expand_as_tcpd(workdir, wrap_bin, sink):
    """tcpd looks a name up once, when a rule needs it, and from then on
    %h, %c, %H, %s and its "connect from" / "refused connect from" / "twist"
    lines show it (spec A.9: "only if it was already looked up").  The
    sidecar makes those lookups for acl-wrap, and tells it which (DECIDE flag
    NAMES): the output of every twist and every such log line must be
    tcpd's, byte for byte -- after a name rule, an address rule that matched
    before the name was needed, an earlier rule that did not match, a
    server-side rule, and for paranoid, unknown, too long, inet_aton-form
    and empty names."""
    allow, deny = rule_files(EXPAND_RULES)
    hosts_file = workdir / "expand.hosts"
    hosts_file.write_text(EXPAND_HOSTS)
    servers = workdir / "servers"
    servers.mkdir(exist_ok=True)

    def run(exe: str, env: dict[str, str], refusal: str) -> dict:
        got = {}
        for name in EXPAND_RULES:
            server = harness.write_exe(servers / name, "#!/bin/sh\necho READY\n")
            for client, src in EXPAND_CLIENTS.items():
                argv = harness.ns_command(workdir, str(server), exe, hosts=EXPAND_HOSTS,
                                          allow=allow, deny=deny, log_sock=sink.path,
                                          host_conf=HOST_CONF)
                data, lines = session(argv, src, sink, env, refusal)
                said = tuple(t for t in lines if re.match(r"(refused )?connect from |twist ", t))
                got[name, client] = (data, said)
        return got

    tcpd = run(TCPD, PATH_ENV, "refused connect from")
    side = start_sidecar(workdir / "sidecar-expand", allow, deny, f'hosts_file = "{hosts_file}"')
    try:
        wrap = run(str(wrap_bin), dict(PATH_ENV, ACL_WRAP_SOCKET=side.query), "refused by acl")
    finally:
        side.stop()
    assert "Traceback" not in side.text(), side.text()
    differ = {k: (tcpd[k], wrap[k]) for k in tcpd if tcpd[k] != wrap[k]}
    assert not differ, "\n".join(f"{k}: tcpd {a}\n{' ' * len(str(k))}  acl  {b}"
                                  for k, (a, b) in differ.items())
    # the cases probe what they say
    assert tcpd["x-domain", "alpha"][0] == (b"h=alpha.lab.test c=alpha.lab.test "
                                            b"n=alpha.lab.test h2=alpha.lab.test\n")
    assert tcpd["x-addr", "alpha"][0].startswith(b"h=127.0.1.1 c=127.0.1.1 n=alpha.lab.test")
    assert tcpd["x-prior", "alpha"][0].startswith(b"h=alpha.lab.test ")
    assert tcpd["x-server", "alpha"][0].startswith(b"H=localhost s=x-server@localhost ")
    assert "connect from alpha.lab.test (127.0.1.1)" in tcpd["x-log", "alpha"][1]
    assert b"n=paranoid" in tcpd["x-known", "long130"][0]
    assert b"n=paranoid" in tcpd["x-known", "inet_aton"][0]
    # the empty name (an address alone on its line) is known, and shows the address
    assert tcpd["x-known", "bare"][0] == b"h=127.0.1.30 c=127.0.1.30 n= h2=127.0.1.30\n"
    assert tcpd["x-log", "bare"][1] == ("refused connect from 127.0.1.30 (127.0.1.30)",)


# -- mapped clients -------------------------------------------------------------------------
MAPPED_HOSTS = "127.0.0.1\tlocalhost\n127.0.0.5\tfive.lab.test\n"
MAPPED_ALLOW = ("ALL: 127.0.0.3: setenv RULE by address %a\n"
                "ALL: five.lab.test: setenv RULE by name %a\n")
MAPPED_DENY = "ALL: 127.0.0.2\n"
#: client -> (whether tcpd serves it, RULE as its server sees it)
MAPPED_EXPECT = {
    "127.0.0.2": (False, None),                             # hosts.deny
    "127.0.0.3": (True, "by address ::ffff:127.0.0.3"),     # hosts.allow, address
    "127.0.0.4": (True, None),                              # no rule: served
    "127.0.0.5": (True, "by name ::ffff:127.0.0.5"),        # hosts.allow, name
}


def children_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def listening_mapped(port: int) -> bool:
    """Is an IPv6 socket bound to ::ffff:127.0.0.1 listening on ``port``?"""
    want = f"0000000000000000FFFF00000100007F:{port:04X}"
    with open("/proc/net/tcp6") as f:
        return any(p[1] == want and p[3] == "0A" for p in map(str.split, f.readlines()[1:]))


def mapped_session(ss: subprocess.Popen, sink: harness.SyslogSink, src: str, port: int,
                   refusal: str) -> tuple[bool, dict[str, str]]:
    """Connect from ``src``: (served, the server's environment).  A refusal
    must be logged for ``src``; a refusing tcpd (the super-server's child,
    asleep for 5 s) is then killed by its PID."""
    seen = len(sink.messages)
    pattern = re.compile(r"\[(\d+)\]: " + re.escape(refusal) + r".*\b" + re.escape(src) + r"\b")

    def refusing_pid() -> int | None:
        for _, text in list(sink.messages)[seen:]:
            m = pattern.search(text)
            if m:
                return int(m.group(1))
        return None

    s = socket.socket()
    s.settimeout(0.05)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    data, closed, found = b"", False, None
    end = time.monotonic() + 10
    while b"READY\n" not in data and not closed and found is None and time.monotonic() < end:
        try:
            b = s.recv(65536)
        except TimeoutError:
            found = refusing_pid()
            continue
        except ConnectionResetError:
            b = b""
        closed = not b
        data += b
    s.close()
    if b"READY\n" in data:
        env, _ = harness.parse_report(data)
        return True, env
    end = time.monotonic() + 2      # acl-wrap closes first, then its line arrives
    while found is None and time.monotonic() < end:
        time.sleep(0.02)
        found = refusing_pid()
    assert data == b"" and found is not None, (src, data, sink.messages[seen:])
    if found in children_of(ss.pid):
        os.kill(found, signal.SIGKILL)
    return False, {}


def test_mapped_client_decides_as_ipv4(workdir, wrap_bin, sink):
    """An IPv4 client of a dual-stack IPv6 socket reaches the server as
    ``::ffff:a.b.c.d`` (spec A.6): tcpd matches it as the IPv4 address, and
    looks its name up as IPv4; so must the sidecar deciding for acl-wrap.

    The super-server is ``systemd-socket-activate --inetd -a`` listening on
    ``[::ffff:127.0.0.1]:PORT``: an AF_INET6 socket bound to the mapped
    loopback address, so IPv4 clients arrive mapped and nothing beyond
    loopback can connect (``[::]`` would be reachable from anywhere;
    tcpserver on 127.0.0.1, even with ``-6``, opens an AF_INET socket and no
    client is mapped).  It runs tcpd, or acl-wrap, with ``argv[0]`` = the
    echo server, in a namespace with the rules, MAPPED_HOSTS and a syslog
    sink; the sidecar is told MAPPED_HOSTS by hosts_file, in SIDECAR_NS.

    Both must give every client of MAPPED_EXPECT the same answer and the
    same RULE (tcpd's %a shows the client was mapped).  A sidecar that took
    ::ffff:127.0.0.2 for no IPv4 address would serve it, and would serve
    127.0.0.3 and 127.0.0.5 without RULE."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate is not installed")
    server = harness.write_exe(workdir / "echo-env", harness.ECHO_SERVER)
    hosts_file = workdir / "mapped.hosts"
    hosts_file.write_text(MAPPED_HOSTS)
    side = start_sidecar(workdir / "sidecar-mapped", MAPPED_ALLOW, MAPPED_DENY,
                         f'hosts_file = "{hosts_file}"')
    got: dict[str, dict[str, tuple[bool, str | None]]] = {}
    try:
        for prog, port in MAPPED_PORTS.items():
            exe = TCPD if prog == "tcpd" else str(wrap_bin)
            env = {} if prog == "tcpd" else {"ACL_WRAP_SOCKET": side.query}
            d = workdir / f"mapped-{prog}"
            d.mkdir()
            argv = ["systemd-socket-activate", "--inetd", "-a", "-l",
                    f"[::ffff:127.0.0.1]:{port}", *[f"-E{k}={v}" for k, v in env.items()],
                    "bash", "--norc", "--noprofile", "-c", 'exec -a "$0" "$@"', str(server), exe]
            argv = harness.ns_command(d, argv[0], argv[0], argv[1:], hosts=MAPPED_HOSTS,
                                      allow=MAPPED_ALLOW, deny=MAPPED_DENY, log_sock=sink.path,
                                      host_conf=HOST_CONF)
            require_free_ports([port])
            with open(d / "out", "wb") as out:
                ss = subprocess.Popen(argv, env=PATH_ENV, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
            try:
                end = time.monotonic() + 10
                while time.monotonic() < end and not live.listening_any(port):
                    assert ss.poll() is None, (d / "out").read_text()
                    time.sleep(0.05)
                # an IPv6 socket on the mapped loopback address, nothing wider
                assert listening_mapped(port) and not live.listening(port)
                got[prog] = {}
                for src in MAPPED_EXPECT:
                    served, env_seen = mapped_session(ss, sink, src, port,
                                                      "refused connect from")
                    got[prog][src] = (served, env_seen.get("RULE"))
            finally:
                # let the last servers finish first: orphans would outlive the test
                end = time.monotonic() + 5
                while children_of(ss.pid) and time.monotonic() < end:
                    time.sleep(0.02)
                stop_process(ss)
    finally:
        side.stop()
    assert "Traceback" not in side.text(), side.text()
    assert got["tcpd"] == MAPPED_EXPECT          # the cases probe what they say
    assert got["acl-wrap"] == got["tcpd"]
