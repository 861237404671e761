"""The real sidecar (``acl serve``) and the policy the live tests give it,
plus the deploy/ stanzas with their documented substitutions.

The policy (one service, ``echo``, all three rule languages):

* xinetd: ``only_from = 127.0.0.0/8``, ``no_access = 127.0.0.66``,
  ``per_source = 2`` -> 127.0.0.66 refused (address), a third connection
  from one source refused (per_source_limit) while two stay open.
* tcprules: ``127.0.0.4:deny`` and ``127.:allow,RULEVAR="..."``.
* hosts.allow ``hostile: ALL: spawn ...: twist ...`` with %n, for the
  shell-metacharacter host name test; ``bannered: ALL: banners DIR: deny``
  for the refusal banner; ``echo-udp`` for the UDP test.
* hosts.allow (``libwrap = echo`` names the daemon; else it would be the
  server's basename, spec C.10) ``echo: ALL EXCEPT 127.0.0.5: setenv HAVAR ...``; hosts.deny
  ``ALL: ALL`` -> 127.0.0.5 refused (libwrap), the others get HAVAR.

Deploy stanzas are valid files as shipped (docs/acl-wrap.md).  Tests change
exactly these values, each of which must occur in the file: the port (7),
the acl-wrap path (/usr/local/bin/acl-wrap) and the real server
(/bin/cat); the sidecar socket comes from the environment
(ACL_WRAP_SOCKET), never by editing the file.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import require_free_ports, stop_process
from tests.sidecar import Live, start_server
from tests.wrap.harness import ROOT, SyslogSink, ns_command

DEPLOY = ROOT / "deploy"
SHIPPED_PORT = "7"
SHIPPED_WRAP = "/usr/local/bin/acl-wrap"
SHIPPED_SERVER = "/bin/cat"

XINETD_CONF = """\
service echo
{
	type		= UNLISTED
	port		= 7
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	server		= /bin/cat
	libwrap		= echo
	only_from	= 127.0.0.0/8
	no_access	= 127.0.0.66
	per_source	= 2
	instances	= 50
	cps		= 10000 1
}
"""

RULES = """\
127.0.0.4:deny
127.:allow,RULEVAR="tcprules says hi"
:allow
"""

HOSTS_ALLOW = """\
echo: ALL EXCEPT 127.0.0.5: setenv HAVAR from hosts.allow for %a
hostile: ALL: spawn echo spawned %n > {dir}/spawned: twist /bin/echo twisted n=%n h=%h
echo-udp: 127.0.0.2: setenv HAVAR udp %a
bannered: ALL: banners {dir}/banners: deny
"""
HOSTS_DENY = "ALL: ALL\n"

#: (source address, expected outcome) for the allow/deny checks.
ALLOWED = ["127.0.0.2", "127.0.0.3"]
DENIED = {"127.0.0.66": "address (xinetd no_access)", "127.0.0.4": "tcprules deny",
          "127.0.0.5": "hosts.deny"}


def write_policy(d: Path) -> Path:
    (d / "xinetd.conf").write_text(XINETD_CONF)
    (d / "rules.txt").write_text(RULES)
    (d / "hosts.allow").write_text(HOSTS_ALLOW.format(dir=d))
    (d / "banners").mkdir(exist_ok=True)
    (d / "banners" / "bannered").write_text("Not for you, %a.\nSee %d policy.\n")
    (d / "hosts.deny").write_text(HOSTS_DENY)
    toml = d / "policy.toml"
    toml.write_text(f"""\
[sockets]
query = "{d}/query.sock"
admin = "{d}/admin.sock"
mode = "0666"
admin_uids = [0]

[metrics]
listen = ""

[limits]
sources = 4096
rate = 0
burst = 0

[[source]]
type = "xinetd"
file = "xinetd.conf"

[[source]]
type = "tcprules"
file = "rules.txt"
services = ["echo"]

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]

[run]
watch = false
""")
    return toml


class Sidecar:
    """``acl serve --config policy.toml`` as a child process (tests/sidecar.py)."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.config = write_policy(d)
        self.sock = d / "query.sock"
        self.live: Live | None = None

    def start(self) -> Sidecar:
        # --allow-pure: these tests are about acl-wrap; the compiled core is
        # used whenever it is there (and tests/run requires it anyway)
        self.live = start_server(self.dir, self.config, args=("--allow-pure",))
        return self

    def log_text(self) -> str:
        return (self.dir / "serve.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def deploy_text(relpath: str, *, port: int, wrap: Path, server: Path) -> str:
    """A deploy/ stanza with the documented substitutions applied."""
    text = (DEPLOY / relpath).read_text()
    for old, new in ((SHIPPED_WRAP, str(wrap)), (SHIPPED_SERVER, str(server))):
        assert old in text, f"deploy/{relpath} no longer mentions {old}"
        text = text.replace(old, new)
    return text


def env_for(sock: Path, **extra) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "ACL_WRAP_SOCKET": str(sock)}
    env.update(extra)
    return env


def is_root() -> bool:
    return os.geteuid() == 0


# -- the super-servers, each started from its deploy/ stanza -------------------------
KINDS = ["xinetd", "inetd", "tcpserver", "systemd"]
INETD = "/opt/acl-peers/openbsd-inetd/usr/sbin/inetd"


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port?  (/proc, no probe connection.)"""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == want and parts[3] == "0A":
                return True
    return False


def listening_any(port: int) -> bool:
    """Is something listening on ``port``, IPv4 or IPv6 (mapped included)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1].endswith(f":{port:04X}") and parts[3] == "0A":
                    return True
    return False


def _unit_value(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if line.startswith(key + "=")]


class SuperServer:
    """One super-server serving the deploy/ echo stanza on 127.0.0.1:port."""

    def __init__(self, kind: str, d: Path, port: int, wrap: Path, server: Path,
                 env: dict[str, str]) -> None:
        self.kind, self.dir, self.port = kind, d, port
        self.wrap, self.server, self.env = wrap, server, env
        self.proc: subprocess.Popen | None = None
        #: what acl-wrap (and the super-server) sent to syslog
        self.sink = SyslogSink(d / "log.sock")

    def argv(self) -> list[str]:
        sub = {"port": self.port, "wrap": self.wrap, "server": self.server}
        p = str(self.port)
        if self.kind == "xinetd":
            text = deploy_text("xinetd.d/acl-echo", **sub)
            assert "\tport\t\t= 7\n" in text
            conf = self.dir / "xinetd.conf"
            conf.write_text(text.replace("\tport\t\t= 7\n", f"\tport\t\t= {p}\n"))
            return ["xinetd", "-dontfork", "-f", str(conf), "-pidfile",
                    str(self.dir / "xinetd.pid"), "-filelog", str(self.dir / "xinetd.log")]
        if self.kind == "inetd":
            text = deploy_text("inetd.conf", **sub)
            assert "\n127.0.0.1:7\t" in text
            conf = self.dir / "inetd.conf"
            conf.write_text(text.replace("\n127.0.0.1:7\t", f"\n127.0.0.1:{p}\t"))
            return [INETD, "-d", str(conf)]   # no -E: its environment laundering stays on
        if self.kind == "tcpserver":
            text = deploy_text("tcpserver/run", **sub)
            assert " 127.0.0.1 7 " in text
            run = self.dir / "run"
            run.write_text(text.replace(" 127.0.0.1 7 ", f" 127.0.0.1 {p} "))
            return ["sh", str(run)]
        if self.kind == "systemd":
            sock = (DEPLOY / "systemd" / "acl-wrap.socket").read_text()
            unit = deploy_text("systemd/acl-wrap@.service", **sub)
            (listen,) = _unit_value(sock, "ListenStream")
            assert listen == "127.0.0.1:7" and _unit_value(sock, "Accept") == ["yes"]
            assert _unit_value(unit, "StandardInput") == ["socket"]
            (exec_start,) = _unit_value(unit, "ExecStart")
            # Environment= of the unit, except what the test itself sets
            envs = [e for e in _unit_value(unit, "Environment")
                    if e.split("=", 1)[0] not in self.env]
            return ["systemd-socket-activate", "--inetd", "-a", "-l", f"127.0.0.1:{p}",
                    *[f"-E{e}" for e in envs], *[f"-E{k}={v}" for k, v in self.env.items()],
                    *exec_start.split()]
        raise ValueError(self.kind)

    def start(self) -> SuperServer:
        # a port another test run holds would pass the wait below at once
        require_free_ports([self.port])
        self.log = open(self.dir / f"{self.kind}.out", "ab")
        argv = self.argv()
        # private mount namespace: /dev/log is self.sink (harness.ns_command)
        argv = ns_command(self.dir, argv[0], argv[0], argv[1:], log_sock=self.sink.path)
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + 15
        while time.monotonic() < end and not listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: " + self.output())
            time.sleep(0.05)
        if not listening(self.port):
            raise RuntimeError(f"{self.kind} is not listening: " + self.output())
        return self

    def output(self) -> str:
        return (self.dir / f"{self.kind}.out").read_text(errors="replace")

    def syslog(self) -> str:
        return "\n".join(text for _, text in self.sink.messages)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        self.sink.close()
        end = time.monotonic() + 5
        while time.monotonic() < end and listening(self.port):
            time.sleep(0.05)
