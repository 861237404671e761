"""The policies of the mixed isolation test (test_isolation_mixed.py): two
good versions, A and B, that answer some requests differently in each rule
language, the broken files a reload must refuse, the requests good clients
ask, and the oracle that says what each version answers them.

Rules of this file:

* All three rule languages and the limits take part: xinetd (only_from,
  per_source/instances leases, cps) for ``echo-stream``, ``cpsd`` and
  ``bad-leases``; tcprules (with environment) for ``smtpd``; hosts_access
  for every service (xinetd's through their libwrap names).
* A and B differ in each language: hosts.allow (which network ``sshd``
  allows), tcprules (``192.0.2.66`` denied or allowed with a variable, a
  different ``GREETDELAY``, ``10.`` denied) and xinetd (``echo-stream``'s
  only_from).  Limits are the same in both, so leases and cps state carry
  over a reload unchanged.
* ``[names] lookup = false``: no request, however garbled, makes the
  sidecar ask a resolver (the tests talk only to loopback).  ``watch =
  false``: every reload is one the test asked for, after it wrote every file
  of a version -- a watcher could read half a switch.
* The oracle decides each good request on a fresh in-process engine over the
  same files at the same paths (locations name them), without leases or
  limits in play: ``answers(request)`` is what A and what B answer.  Which
  requests may also meet a limit is the caller's business (cps: ``cpsd``;
  per_source: leases).
"""

from __future__ import annotations

import random
from pathlib import Path

from acl.engine import Engine
from acl.model import Decision, Request
from acl.wire import postfix as wp

XINETD = """\
defaults
{{
	instances	= 50
}}

service echo
{{
	id		= echo-stream
	type		= INTERNAL
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	flags		= IPv4
	only_from	= 127.0.0.0/8 {echo_net}
	per_source	= 2
	instances	= 40
	cps		= 0 0
}}

service cpsd
{{
	type		= UNLISTED
	socket_type	= stream
	protocol	= tcp
	port		= 2001
	wait		= no
	user		= root
	server		= /bin/true
	libwrap		= cpsd
	flags		= IPv4
	only_from	= 127.0.0.0/8
	cps		= 20 1
}}

service bad-leases
{{
	type		= UNLISTED
	socket_type	= stream
	protocol	= tcp
	port		= 2002
	wait		= no
	user		= root
	server		= /bin/true
	libwrap		= badlease
	flags		= IPv4
	only_from	= 127.0.0.0/8
	per_source	= 4
	instances	= UNLIMITED
	cps		= 0 0
}}
"""

VERSIONS = {
    "A": {
        "hosts.allow": ("sshd: 127.0.0.1 [::1] 192.0.2.0/255.255.255.0\n"
                        "smtpd: ALL\necho: ALL\ncpsd: ALL\nbadlease: ALL\n"),
        "tcp.smtpd": ('127.0.0.1:allow,RELAYCLIENT=""\n192.0.2.66:deny\n'
                      '192.0.2.:allow,GREETDELAY="5"\n:allow\n'),
        "xinetd.conf": XINETD.format(echo_net="192.0.2.0/24"),
    },
    "B": {
        "hosts.allow": ("sshd: 127.0.0.1 [::1] 198.51.100.0/255.255.255.0\n"
                        "smtpd: ALL\necho: ALL\ncpsd: ALL\nbadlease: ALL\n"),
        "tcp.smtpd": ('127.0.0.1:allow,RELAYCLIENT=""\n192.0.2.66:allow,SEEN="b"\n'
                      '192.0.2.:allow,GREETDELAY="7"\n10.:deny\n:allow\n'),
        "xinetd.conf": XINETD.format(echo_net="203.0.113.0/24"),
    },
}

HOSTS_DENY = "ALL: ALL\n"

POLICY_TOML = """\
[sockets]
query = "query.sock"
policy = "policy.sock"
policy_service = "smtpd"
admin = "admin.sock"
mode = "0666"
admin_uids = [0]

[metrics]
listen = "{metrics}"

[names]
lookup = false

[[source]]
type = "xinetd"
file = "xinetd.conf"

[[source]]
type = "tcprules"
file = "tcp.smtpd"
services = ["smtpd"]

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]

[run]
watch = false
"""

#: Files a reload must refuse, each with what the refusal names: (file,
#: text, the "file:line:column" start of the error).  Each replaces one file
#: of the running version; the next good reload writes every file again.
BROKEN = [
    ("tcp.smtpd", '127.0.0.1:allow\n192.0.2.66 deny\n', "tcp.smtpd:2:1:"),
    ("policy.toml", "[sockets\nquery = 1\n", "policy.toml:1:"),
    ("policy.toml", None, "policy.toml:"),       # the good file with an unknown key
]

#: What good clients ask: every service of the policy (and one it lacks),
#: addresses each version answers alike and differently, IPv6, a UCSPI
#: name (the Python path), ports and a server address.
GOOD_REQUESTS = [
    *(Request("sshd", a) for a in ("127.0.0.1", "::1", "192.0.2.9", "198.51.100.9",
                                   "203.0.113.9", "10.9.9.9", "2001:db8::5")),
    *(Request("smtpd", a) for a in ("127.0.0.1", "192.0.2.66", "192.0.2.5", "10.1.2.3",
                                    "203.0.113.7")),
    Request("smtpd", "192.0.2.5", 4567, "192.0.2.1", 25),
    Request("smtpd", "192.0.2.66", host="mx.example.org", user="", ucspi_names=True),
    *(Request("echo-stream", a) for a in ("127.0.0.3", "192.0.2.3", "203.0.113.3",
                                          "10.0.0.3")),
    Request("nosuch", "127.0.0.1"),
]
#: What the Postfix door's good clients send as client_address (service smtpd).
POSTFIX_CLIENTS = ["127.0.0.1", "192.0.2.66", "192.0.2.5", "10.1.2.3", "203.0.113.7"]
#: Requests bad clients may embed: services without limits (a bad client
#: must not take the slots or the cps budget good clients count on).
BAD_SAFE_REQUESTS = [r for r in GOOD_REQUESTS if r.service in ("sshd", "smtpd", "nosuch")]


def postfix_request(rng: random.Random, client: bytes, *, drop: bytes = b"",
                    add: tuple[bytes, ...] = (), crlf: bool = False) -> bytes:
    """One policy request as smtpd sends it (attributes in any order, 8-bit
    ones acl does not read among them), without ``drop``, with ``add``."""
    attrs = [b"request=smtpd_access_policy", b"protocol_state=RCPT",
             b"client_address=" + client, b"client_port=%d" % rng.randrange(1024, 1100),
             b"instance=%x.%x.0" % (rng.getrandbits(16), rng.getrandbits(16)),
             b"sender=caf\xe9@example.org", b"recipient=r\xff@example.net",
             b"helo_name=mx.example.org"]
    attrs = [a for a in attrs if not drop or not a.startswith(drop + b"=")] + list(add)
    rng.shuffle(attrs)
    eol = b"\r\n" if crlf else b"\n"
    return b"".join(a + eol for a in attrs) + eol


def write_version(d: Path, name: str, metrics: str) -> Path:
    """Every file of version ``name`` (and the good policy.toml) into ``d``."""
    for fname, text in VERSIONS[name].items():
        _replace(d / fname, text)
    _replace(d / "hosts.deny", HOSTS_DENY)
    cfg = d / "policy.toml"
    _replace(cfg, POLICY_TOML.format(metrics=metrics))
    return cfg


def write_broken(d: Path, which: int, metrics: str) -> str:
    """Break one file of the running version; the error's expected start."""
    fname, text, where = BROKEN[which % len(BROKEN)]
    if text is None:
        text = POLICY_TOML.format(metrics=metrics).replace("[run]\n", "[run]\nusr = \"acl\"\n")
    _replace(d / fname, text)
    return where


def _replace(path: Path, text: str) -> None:
    # a whole file at once: nothing reads a half-written one
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def key(d: Decision) -> tuple:
    """What a decision says, leases and looked-up names aside."""
    return (d.verdict, d.reason, str(d.location) if d.location else "", d.env, d.options)


class Oracle:
    """What versions A and B answer the good requests (module rules)."""

    def __init__(self, d: Path, metrics: str) -> None:
        self.expected: dict[str, dict[Request, Decision]] = {}
        for name in VERSIONS:
            engine = Engine.from_path(write_version(d, name, metrics))
            self.expected[name] = {r: engine.decide(r, 1000.0)
                                   for r in GOOD_REQUESTS + self._extra()}
        self._postfix = {c: {wp.encode(d) for d in self.answers(Request("smtpd", c)).values()}
                         for c in POSTFIX_CLIENTS}

    @staticmethod
    def _extra() -> list[Request]:
        return [Request("echo-stream", f"127.0.0.{20 + i}") for i in range(4)] + \
            [Request("cpsd", "127.0.0.1")]

    def answers(self, request: Request) -> dict[str, Decision]:
        plain = Request(request.service, request.client, request.client_port, request.server,
                        request.server_port, request.host, request.user, False,
                        request.ucspi_names)
        return {v: self.expected[v][plain] for v in self.expected}

    def check(self, request: Request, got: Decision) -> str | None:
        """None when ``got`` is what A or B answers ``request``, else why not."""
        want = self.answers(request)
        if key(got) in {key(d) for d in want.values()}:
            return None
        return f"{request}: got {got}, want A {want['A']} or B {want['B']}"

    def postfix_replies(self, client: str) -> set[bytes]:
        """The Postfix door's replies for ``client`` (service smtpd)."""
        return self._postfix[client]

    def differing(self) -> list[Request]:
        """The good requests A and B answer differently."""
        return [r for r in GOOD_REQUESTS
                if key(self.expected["A"][r]) != key(self.expected["B"][r])]
