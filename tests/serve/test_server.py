"""``acl serve`` end to end over real Unix sockets (a subprocess per test
group): both protocols, pipelining, leases released on disconnect, bad input
that never disturbs other clients, a client that never reads, many clients,
admin access by SO_PEERCRED, life cycle (SIGTERM, socket mode)."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from acl.client import Client
from acl.model import Reason, Request, Verdict
from acl.wire import binary as wb

from .conftest import (
    connect,
    policy_toml,
    read_replies,
    read_until_closed,
    start_server,
    wait_for,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    srv = start_server(d, policy_toml(d))
    try:
        yield srv
    finally:
        srv.stop()


def admin(path: str, command: str) -> dict:
    with connect(path, 30) as s:
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def test_binary_decisions_with_reasons_locations_env(live):
    try:
        import uvloop  # noqa: F401
        assert "(compiled core, uvloop loop)" in live.text()
    except ImportError:
        assert "(compiled core, asyncio loop)" in live.text()
    with Client(live.query) as c:
        assert c.ping() == "compiled"
        d = c.decide("sshd", "192.0.2.9")
        assert (d.verdict, d.reason) == (Verdict.ALLOW, Reason.OK)
        assert str(d.location).endswith("hosts.allow:1")
        d = c.decide("sshd", "203.0.113.9")
        assert (d.verdict, d.reason) == (Verdict.DENY, Reason.LIBWRAP)
        assert str(d.location).endswith("hosts.deny:1")
        d = c.decide("smtpd", "127.0.0.1")
        assert d.allowed and d.env == (("RELAYCLIENT", ""),)
        d = c.decide("smtpd", "192.0.2.66")
        assert (d.verdict, d.reason) == (Verdict.DENY, Reason.TCPRULES)
        d = c.decide("smtpd", "192.0.2.5")
        assert d.allowed and d.env == (("GREETDELAY", "5"),)
        d = c.decide("echo-stream", "198.51.100.1")
        assert (d.verdict, d.reason) == (Verdict.DENY, Reason.ADDRESS)


def test_pipelined_batch_answers_in_order_in_one_write(live):
    rng = random.Random(6)
    reqs = [Request(rng.choice(["sshd", "smtpd"]), f"192.0.{rng.randrange(2, 4)}.{i % 250}")
            for i in range(3000)]
    with Client(live.query) as c:
        got = c.decide_many(reqs)
        one = [c.decide(r) for r in reqs[:200]]
    assert got[:200] == one
    assert [d.allowed for d in got] == [
        r.client.startswith("192.0.2.") and (r.service, r.client) != ("smtpd", "192.0.2.66")
        for r in reqs]
    # request ids are echoed, replies come in request order
    s = connect(live.query)
    ids = [rng.randrange(2**32) for _ in range(500)]
    s.sendall(b"".join(wb.encode_decide(i, Request("sshd", "192.0.2.1")) for i in ids))
    assert [r.request_id for r in read_replies(s, 500)] == ids
    s.close()


def test_postfix_text_protocol(live):
    s = connect(live.policy)
    s.sendall(b"request=smtpd_access_policy\nclient_address=192.0.2.66\nclient_name=unknown\n\n"
              b"request=smtpd_access_policy\nclient_address=127.0.0.1\n\n"
              b"client_address=203.0.113.4\nservice=sshd\n\n")
    data = b""
    while data.count(b"\n\n") < 3:
        data += s.recv(4096)
    replies = data.split(b"\n\n")[:3]
    assert replies[0].startswith(b"action=REJECT ") and b"tcprules" in replies[0]
    assert replies[1] == b"action=DUNNO"
    assert replies[2].startswith(b"action=REJECT ") and b"libwrap" in replies[2]
    # a bad request is answered and the connection goes on
    s.sendall(b"client_address=bogus\n\nclient_address=127.0.0.1\n\n")
    data = b""
    while data.count(b"\n\n") < 2:
        data += s.recv(4096)
    assert data.startswith(b"action=DEFER_IF_PERMIT acl: bad policy request")
    assert data.endswith(b"action=DUNNO\n\n")
    # a request= acl does not know is never granted, and the connection goes on
    s.sendall(b"request=junk_policy\nclient_address=127.0.0.1\n\n"
              b"request=smtpd_access_policy\nclient_address=127.0.0.1\n\n")
    data = b""
    while data.count(b"\n\n") < 2:
        data += s.recv(4096)
    assert data == (b"action=DEFER_IF_PERMIT acl: bad policy request: request='junk_policy' "
                    b"is not smtpd_access_policy\n\naction=DUNNO\n\n")
    s.close()


def test_mapped_clients_are_decided_as_their_ipv4_address(live):
    """An IPv4 client of an IPv6 socket arrives as ``::ffff:a.b.c.d`` (binary:
    family 6; Postfix: that text).  hosts_access and tcprules (tcpserver's
    default) decide it as the IPv4 address (spec A.6, B.4), on both
    protocols -- the decoders once wrote it ``::ffff:7f00:1``, which no IPv4
    rule matched."""
    rng = random.Random(11)
    clients = ["127.0.0.1", "127.0.0.2", "192.0.2.66", "192.0.2.5", "192.0.3.1",
               "203.0.113.9"] + [f"192.0.{rng.randrange(1, 4)}.{rng.randrange(256)}"
                                 for _ in range(60)]
    with Client(live.query) as c:
        for service in ("sshd", "smtpd"):
            plain = c.decide_many([Request(service, a) for a in clients])
            mapped = c.decide_many([Request(service, "::ffff:" + a) for a in clients])
            assert [(d.verdict, d.reason, d.location, d.env) for d in mapped] == \
                [(d.verdict, d.reason, d.location, d.env) for d in plain], service
        assert c.decide("sshd", "::ffff:127.0.0.1").allowed
        assert not c.decide("smtpd", "::ffff:192.0.2.66").allowed
    s = connect(live.policy)
    s.sendall(b"request=smtpd_access_policy\nclient_address=::ffff:192.0.2.66\n\n"
              b"request=smtpd_access_policy\nclient_address=::FFFF:127.0.0.1\n\n")
    data = b""
    while data.count(b"\n\n") < 2:
        data += s.recv(4096)
    replies = data.split(b"\n\n")[:2]
    assert replies[0].startswith(b"action=REJECT ") and b"tcprules" in replies[0]
    assert replies[1] == b"action=DUNNO"
    s.close()


def test_leases_released_by_message_and_on_disconnect(live):
    # echo-stream: per_source = 2, instances = 3
    a = Client(live.query)
    l1 = a.decide("echo-stream", "127.0.0.5", lease=True)
    l2 = a.decide("echo-stream", "127.0.0.5", lease=True)
    assert l1.allowed and l2.allowed and l1.lease and l2.lease and l1.lease != l2.lease
    third = a.decide("echo-stream", "127.0.0.5", lease=True)
    assert (third.verdict, third.reason) == (Verdict.DENY, Reason.PER_SOURCE_LIMIT)
    # another connection cannot release a lease it did not take
    b = Client(live.query)
    assert b.release(l1.lease) is False
    l3 = b.decide("echo-stream", "127.0.0.6", lease=True)
    assert l3.allowed
    full = b.decide("echo-stream", "127.0.0.7", lease=True)
    assert (full.verdict, full.reason) == (Verdict.DENY, Reason.SERVICE_LIMIT)
    assert a.release(l1.lease) is True and a.release(l1.lease) is False
    assert b.decide("echo-stream", "127.0.0.7", lease=True).allowed
    # closing a connection gives its leases back
    a.close()
    b.close()
    wait_for(lambda: admin(live.admin, "stats")["leases"].get("echo-stream", 0) == 0, 15,
             "leases released on disconnect")
    with Client(live.query) as c:
        assert c.decide("echo-stream", "127.0.0.5", lease=True).allowed
        assert c.decide("echo-stream", "127.0.0.5", lease=True).allowed
    wait_for(lambda: admin(live.admin, "stats")["leases"].get("echo-stream", 0) == 0, 15,
             "leases released on disconnect")


def _frames_bad():
    yield wb.frame(0x77, 11)                                   # unknown type
    f = bytearray(wb.encode_ping(12))
    f[4] = 2
    yield bytes(f)                                             # version 2
    yield wb.frame(wb.T_DECIDE, 13, b"\x04\x00" + b"\x00" * 30)   # malformed payload
    yield wb.frame(wb.T_RELEASE, 14, b"\x01")                  # short RELEASE


def test_bad_frames_get_errors_and_connection_goes_on(live):
    s = connect(live.query)
    s.sendall(b"".join(_frames_bad()) + wb.encode_ping(15))
    reps = read_replies(s, 5)
    assert [(r.type, r.request_id, r.code) for r in reps] == [
        (0xFF, 11, wb.E_TYPE), (0xFF, 12, wb.E_VERSION), (0xFF, 13, wb.E_PAYLOAD),
        (0xFF, 14, wb.E_PAYLOAD), (0x83, 15, None)]
    s.close()


@pytest.mark.parametrize("head", [struct.pack("<I", 3), struct.pack("<I", 65533),
                                  struct.pack("<I", 0xFFFFFFFF)])
def test_unskippable_frames_get_error_then_close(live, head):
    witness = Client(live.query)
    s = connect(live.query)
    s.sendall(wb.encode_ping(1) + head + b"\x01\x01" + b"\x00" * 64)
    data = read_until_closed(s)
    reps = wb.ReplyDecoder().feed(data)
    assert [(r.type, r.request_id) for r in reps] == [(0x83, 1), (0xFF, 0)]
    assert reps[1].code == wb.E_SIZE
    assert witness.decide("sshd", "192.0.2.1").allowed      # nobody else noticed
    witness.close()


def test_truncated_and_random_input_never_disturbs_others(live):
    rng = random.Random(66)
    witness = Client(live.query)
    for i in range(60):
        s = connect(live.query)
        if i % 3 == 0:
            full = wb.encode_decide(1, Request("sshd", "192.0.2.1"))
            s.sendall(full[:rng.randrange(1, len(full))])   # truncated, then hang up
        elif i % 3 == 1:
            s.sendall(rng.randbytes(rng.randrange(1, 3000)))
        else:
            body = rng.randbytes(rng.randrange(0, 200))
            s.sendall(struct.pack("<IBBHI", 8 + len(body), 1, rng.choice([1, 2, 3]),
                                  rng.randrange(2), i) + body)
        s.close()
        assert witness.decide("sshd", "192.0.2.1").allowed
    witness.close()
    assert admin(live.admin, "stats")["protocol_errors"]


def test_client_that_never_reads_is_not_buffered_without_bound(live):
    s = connect(live.query, timeout=0.5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = wb.encode_decide(1, Request("sshd", "192.0.2.1"))
    batch = frame * 2000
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 20 and sent < 500 * len(batch):
            sent += s.send(batch)
    except (TimeoutError, BlockingIOError):
        pass
    # the server stopped reading from us long before we sent 500 batches
    assert sent < 500 * len(batch)
    replies_held = sent // len(frame) * 28      # what answering everything would hold
    with open(f"/proc/{live.proc.pid}/status") as f:
        rss_kb = int(next(ln for ln in f if ln.startswith("VmRSS")).split()[1])
    assert rss_kb * 1024 < 400 * 2**20
    with Client(live.query) as other:                    # still serving others
        assert other.decide("sshd", "192.0.2.1").allowed
    s.close()
    assert replies_held > 0


@pytest.fixture
def low_nofile_server(tmp_path):
    """A server started with a soft RLIMIT_NOFILE of 1024: it must raise its own."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 5200:
        pytest.skip("the hard RLIMIT_NOFILE is below 5200")

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    srv = start_server(tmp_path, policy_toml(tmp_path), preexec=low)
    try:
        yield srv
    finally:
        srv.stop()


def test_five_thousand_concurrent_clients(low_nofile_server):
    live = low_nofile_server
    want = 5000 + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip("cannot raise RLIMIT_NOFILE to 5200")
    socks = []
    try:
        for _ in range(5000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(live.query)
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendall(wb.encode_decide(i, Request("sshd", "192.0.2.1" if i % 2 else
                                                  "203.0.113.1")))
        ok = 0
        for i, s in enumerate(socks):
            (rep,) = read_replies(s, 1)
            assert rep.request_id == i
            ok += rep.decision.allowed == bool(i % 2)
        assert ok == 5000
        assert admin(live.admin, "stats")["clients"]["binary"] >= 5000
    finally:
        for s in socks:
            s.close()


def test_admin_stats_dump_and_peer_credentials(live):
    st = admin(live.admin, "stats")
    assert st["ok"] and st["core"] == "compiled"
    dump = admin(live.admin, "dump")
    assert [s["type"] for s in dump["policy"]["sources"]] == ["xinetd", "tcprules", "hosts_access"]
    assert admin(live.admin, "frobnicate")["ok"] is False


def test_admin_answers_pipelined_commands_in_command_order(live):
    """reload (slow: a worker thread) then stats then a bogus command, in one
    write: three answers, in that order."""
    with connect(live.admin, 30) as s:
        s.sendall(b"reload\nstats\nbogus\n")
        data = b""
        while data.count(b"\n") < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    answers = [json.loads(line) for line in data.splitlines()]
    assert answers[0]["ok"] is True and "seconds" in answers[0]
    assert answers[1]["ok"] is True and answers[1]["core"] == "compiled"
    assert answers[2] == {"ok": False, "cause": "command",
                          "error": "unknown command 'bogus' (reload, stats, dump)"}


def test_admin_refuses_uids_not_named(tmp_path):
    """uid 65534 is not in admin_uids = [0]: refused by SO_PEERCRED."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    import shutil
    import tempfile

    public = tempfile.mkdtemp(prefix="acl-serve-admin-", dir="/tmp")
    try:
        os.chmod(public, 0o755)
        cfg = policy_toml(tmp_path)
        cfg.write_text(cfg.read_text().replace('admin = "admin.sock"',
                                               f'admin = "{public}/admin.sock"'))
        srv = start_server(tmp_path, cfg)
        try:
            code = ("import socket,os,sys\n"
                    "os.setgid(65534); os.setuid(65534)\n"
                    "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                    "print(s.recv(4096).decode())\n"
                    "try:\n    s.sendall(b'reload\\n'); extra = s.recv(4096)\n"
                    "except OSError:\n    extra = b''\n"
                    "assert extra == b'', extra\n")
            out = subprocess.run([sys.executable, "-c", code, f"{public}/admin.sock"],
                                 capture_output=True, text=True, timeout=30)
            reply = json.loads(out.stdout)
            assert reply["ok"] is False and "uid 65534" in reply["error"]
            assert admin(f"{public}/admin.sock", "stats")["reloads"]["success"] == 0
        finally:
            srv.stop()
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_query_socket_mode_and_sigterm_cleanup(tmp_path):
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace('mode = "0666"', 'mode = "0640"\ngroup = "nogroup"'))
    srv = start_server(tmp_path, cfg)
    try:
        st = os.stat(srv.query)
        assert stat.S_IMODE(st.st_mode) == 0o640
        import grp

        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
        c = Client(srv.query)
        assert c.decide("sshd", "192.0.2.1").allowed
        assert srv.stop(signal.SIGTERM) == 0
        assert not os.path.exists(srv.query) and not os.path.exists(srv.admin)
        with pytest.raises((ConnectionError, OSError)):
            c.decide("sshd", "192.0.2.1")
        assert "stopped" in srv.text()
    finally:
        srv.stop()


def test_pure_twin_refused_unless_allowed(tmp_path):
    cfg = policy_toml(tmp_path)
    env = dict(os.environ, ACL_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 100 and "--allow-pure" in out.stderr
    # also the one server on asyncio's own loop (the others run on uvloop when installed)
    srv = start_server(tmp_path, cfg, env={"ACL_NO_EXTENSIONS": "1", "ACL_NO_UVLOOP": "1"},
                       args=["--allow-pure"])
    try:
        assert "(pure core, asyncio loop)" in srv.text()
        with Client(srv.query) as c:
            assert c.ping() == "pure"
            assert c.decide("sshd", "192.0.2.1").allowed
            assert c.decide("echo-stream", "127.0.0.1", lease=True).lease
        assert admin(srv.admin, "stats")["core"] == "pure"
        wait_for(lambda: admin(srv.admin, "stats")["leases"] == {"echo-stream": 0}, 15,
                 "lease released on disconnect")
    finally:
        srv.stop()
