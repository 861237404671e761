"""Client names in ``acl serve``: a caller that sends no name (acl-wrap never
does) gets the decision libwrap makes after its own lookups.

The live server answers from ``[names] hosts_file`` (no DNS); the real
``tcpdmatch -d`` answers from the same hosts file bind-mounted over
/etc/hosts (tests/tcpw/tcpdmatch.py).  Generated hosts.allow/hosts.deny
pairs (tests/tcpw/gen.py: host names, ``.domain``, KNOWN, UNKNOWN,
PARANOID, LOCAL, globs, EXCEPT...) are loaded by admin reloads, and every
query whose client is an address in socket form is asked of both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from acl.client import Client
from acl.compile.tcpw import load_hosts_access
from acl.model import Request, Verdict
from acl.resolve import HostsFileBackend
from tests.tcpw import gen
from tests.tcpw.tcpdmatch import build_shim, run_batch, unavailable

from .conftest import connect, start_server

SEEDS = range(30_000, 30_030)
WORD = {Verdict.ALLOW: "granted", Verdict.DENY: "denied", Verdict.DELEGATE: "delegated"}


def _socket_form(text: str) -> bool:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, text)) == text
        except OSError:
            continue
    return False


HOSTS = HostsFileBackend(text=gen.HOSTS)


def _named(addr: str) -> bool:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(fam, addr)
        except OSError:
            continue
        if fam == socket.AF_INET6 and packed[:12] == bytes(10) + b"\xff\xff":
            fam, packed = socket.AF_INET, packed[12:]
        return HOSTS.reverse(fam, packed) is not None
    return False


def _policy(d: Path, case_dir: str, *, source: str = "", watch: bool = False,
            deadline: float = 1.5) -> None:
    """A policy answering names from ``d/hosts``: one hosts_access source over
    ``case_dir``'s files, unless ``source`` gives other [[source]] tables;
    ``deadline`` is ``[names] deadline`` (0: a request waits for its names)."""
    source = source or f"""[[source]]
type = "hosts_access"
allow = "{case_dir}/hosts.allow"
deny = "{case_dir}/hosts.deny"
services = ["*"]
"""
    (d / "policy.toml").write_text(f"""
[sockets]
query = "query.sock"
admin = "admin.sock"
mode = "0600"
admin_uids = [{os.getuid()}]

[names]
hosts_file = "hosts"
deadline = {deadline}

{source}
[run]
watch = {"true" if watch else "false"}
""")


def _reload(live) -> bool:
    """True when the server took the new files; False when a ``/file``
    pattern file they name does not exist (acl serve refuses such a policy,
    where libwrap would read the pattern as matching nothing)."""
    with connect(live.admin, 60) as s:
        s.sendall(b"reload\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "admin closed without an answer"
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok") and "cannot read" in reply.get("error", ""):
        return False
    assert reply.get("ok"), reply
    return True


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_served_names_agree_with_tcpdmatch(tmp_path):
    shim = build_shim(tmp_path)
    (tmp_path / "hosts").write_text(gen.HOSTS)
    (tmp_path / "empty").mkdir()
    for name in ("hosts.allow", "hosts.deny"):
        (tmp_path / "empty" / name).write_text("")
    _policy(tmp_path, "empty")
    live = start_server(tmp_path, tmp_path / "policy.toml")
    asked = by_name = 0
    bad = []
    try:
        for seed in SEEDS:
            workdir = tmp_path / f"case{seed}"
            g = gen.Gen(seed, str(workdir))
            case = g.case(g.r.randint(1, 12), g.r.randint(1, 12), 170)
            workdir.mkdir()
            for path, body in case.files.items():
                Path(path).write_text(body, encoding="latin-1")
            for name, body in (("hosts.allow", case.allow), ("hosts.deny", case.deny)):
                # a missing file is an empty one to libwrap; acl serve wants it there
                (workdir / name).write_bytes(body or b"")
            # tcpdmatch never looks a numeric client up (spec A.10): it is
            # asked by name -- then it resolves the name and double-checks
            # the address, as tcpd does -- and acl serve by that address.
            # Addresses without a name are asked of both as they are.
            queries, addrs = [], []
            for d, c in case.queries:
                if "@" in d or "@" in c or d.startswith("/"):
                    continue            # (tcpdmatch's own daemon@host and /path forms)
                if c in gen.NAMES:
                    fwd = HOSTS.forward(c, 0)
                    if fwd is None or len(fwd[1]) != 1:
                        continue
                    fam, packed = fwd[1][0]
                    queries.append((d, c))
                    addrs.append(socket.inet_ntop(fam, packed))
                elif _socket_form(c) and not _named(c):
                    queries.append((d, c))
                    addrs.append(c)
            if not queries:
                continue
            _policy(tmp_path, workdir.name)
            if not _reload(live):
                continue
            real = run_batch(workdir, shim, case.allow, case.deny, gen.HOSTS, queries)
            with Client(live.query) as c:
                served = c.decide_many([Request(d, a) for (d, _), a in zip(queries, addrs, strict=True)])
            # what the same files decide when no name is ever known
            nameless, _ = load_hosts_access(str(workdir / "hosts.allow"),
                                            str(workdir / "hosts.deny"))
            # rules with options: tcpdmatch runs them dry (spec A.10), tcpd
            # and acl serve for real, so their answers may rightly differ
            with_options = {(os.path.basename(r.path), r.line) for r in nameless.rules
                            if r.options_text is not None}
            for (d, _), a, got, ans in zip(queries, addrs, served, real, strict=True):
                if ans.matched and ans.matched[0] in with_options:
                    continue
                asked += 1
                where = (os.path.basename(got.location.path), got.location.line) \
                    if got.location is not None else None
                if (WORD[got.verdict],) != ans.verdicts or \
                        (ans.matched and where != ans.matched[0]):
                    bad.append(f"seed {seed}: {d} {a}: served {WORD[got.verdict]} {where} "
                               f"!= tcpdmatch {ans.verdicts} {ans.matched}\n"
                               f"allow={case.allow!r}\ndeny={case.deny!r}")
                if nameless.check(Request(d, a), 0.0).verdict != got.verdict:
                    by_name += 1
    finally:
        live.stop()
    assert not bad, "\n".join(bad[:5])
    assert asked >= 1500, asked
    # the names mattered: without them these decisions would differ
    assert by_name >= 10, by_name


def test_a_slow_lookup_holds_only_its_own_connection(tmp_path):
    """A lookup runs off the event loop: while one connection waits for a
    name (a hosts file of 400,000 lines makes each lookup slow, with no DNS),
    another connection is answered, and the waiting connection's pipelined
    requests still come back in order."""
    lines = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} h{i}.example.net" for i in range(400_000)]
    lines.append("192.0.2.77 slow.example.org")
    (tmp_path / "hosts").write_text("\n".join(lines) + "\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "hosts.allow").write_text("sshd: .example.org\nfast: 192.0.2.0/24\n")
    (tmp_path / "rules" / "hosts.deny").write_text("ALL: ALL\n")
    # no deadline: on a loaded machine a 400,000-line lookup outlasted the
    # default 1.5 s, and the request was decided as "unknown" (denied)
    _policy(tmp_path, "rules", deadline=0)
    live = start_server(tmp_path, tmp_path / "policy.toml")
    try:
        from acl.wire import binary as wb

        from .conftest import read_replies

        slow = connect(live.query)
        # two requests in one write: the first needs a name, the second not
        slow.sendall(wb.encode_decide(1, Request("sshd", "192.0.2.77"))
                     + wb.encode_decide(2, Request("fast", "192.0.2.5")))
        with Client(live.query) as other:
            d = other.decide("fast", "192.0.2.6")        # answered meanwhile
            assert d.allowed
        slow.setblocking(False)
        try:
            early = slow.recv(65536)
        except BlockingIOError:
            early = b""
        # nothing came back yet on the waiting connection, not even #2
        assert early == b"", early
        slow.setblocking(True)
        slow.settimeout(120)
        replies = read_replies(slow, 2)
        assert [r.request_id for r in replies] == [1, 2]
        assert replies[0].decision.allowed and str(replies[0].decision.location).endswith(
            "hosts.allow:1")
        assert replies[1].decision.allowed
        slow.close()
    finally:
        live.stop()


XINETD_NAMES = """\
service named
{
	id		= named-stream
	type		= UNLISTED
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	server		= /bin/cat
	port		= 24990
	bind		= 127.0.0.1
	only_from	= .lab.test solo.other.test 127.0.5.0/24
	no_access	= bad.lab.test
}
"""
XINETD_HOSTS = """\
127.0.1.1 one.lab.test
127.0.1.2 bad.lab.test
127.0.1.3 solo.other.test
127.0.1.4 Two.LAB.test
127.0.1.5 lab.test
::1 ip6-localhost
::ffff:127.0.1.6 mapped.lab.test
"""


def test_served_xinetd_names_agree_with_acl_match(tmp_path):
    """xinetd's host and ``.domain`` entries read the client's reverse name
    (spec C.4, no forward check).  The live server, looking names up itself
    from ``[names] hosts_file``, decides as ``acl match --xinetd --hosts``
    with the same file -- the matcher the live-xinetd differential tests hold
    to the real xinetd -- and the names change decisions."""
    (tmp_path / "hosts").write_text(XINETD_HOSTS)
    (tmp_path / "xinetd.conf").write_text(XINETD_NAMES)
    _policy(tmp_path, "", source='[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    clients = [f"127.0.1.{i}" for i in range(1, 9)] + ["127.0.5.9", "127.0.6.1"]
    live = start_server(tmp_path, tmp_path / "policy.toml")
    try:
        with Client(live.query) as c:
            served = c.decide_many([Request("named-stream", a) for a in clients])
    finally:
        live.stop()
    batch = "".join(f"named-stream {a}\n" for a in clients)
    out = subprocess.run([sys.executable, "-m", "acl", "match", "--xinetd",
                          str(tmp_path / "xinetd.conf"), "--hosts", str(tmp_path / "hosts"),
                          "--batch"], input=batch, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    words = [line.split()[0] for line in out.stdout.splitlines()]
    assert words == [("allow" if d.allowed else "deny") for d in served], (words, served)
    # by name: one.lab.test and Two.LAB.test in, bad.lab.test out, lab.test not a match
    assert [d.allowed for d in served[:5]] == [True, False, True, True, False]


def test_an_edited_hosts_file_is_read_again(tmp_path):
    """``[names] hosts_file`` is watched like a rule file: editing it reloads
    the policy with a fresh name cache, so a renamed client is decided by
    its new name (bounded wait for the once-a-second watcher)."""
    import time

    from .conftest import wait_for

    (tmp_path / "hosts").write_text("127.0.1.1 a.other.test\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "hosts.allow").write_text("sshd: .lab.test\n")
    (tmp_path / "rules" / "hosts.deny").write_text("ALL: ALL\n")
    _policy(tmp_path, "rules", watch=True)
    live = start_server(tmp_path, tmp_path / "policy.toml")
    try:
        with Client(live.query) as c:
            assert not c.decide("sshd", "127.0.1.1").allowed      # a.other.test
            time.sleep(1.1)                 # a new mtime second for the watcher
            (tmp_path / "hosts").write_text("127.0.1.1 a.lab.test\n")
            wait_for(lambda: c.decide("sshd", "127.0.1.1").allowed, 15, "the new name")
    finally:
        live.stop()
