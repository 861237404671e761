"""acl-wrap against a scripted stand-in sidecar, handed connections the way
inetd hands them (fds 0-2 = the accepted socket).

What the real ``acl serve`` cannot be made to do on demand -- answer with a
chosen decision, garbage, an ERROR frame, or not at all -- is scripted here;
the live tests (test_live.py) use the real sidecar for allow/deny/env/
per_source.  Requests are decoded by the project's codec (acl.wire.binary),
so the C encoder is checked against it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import socket
import struct
import subprocess
import time

import pytest

from acl.model import Reason, Verdict
from acl.wire import binary
from tests.wrap import harness
from tests.wrap.conftest import needs_root

PATH_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def echo_server(short_tmp):
    return harness.write_exe(short_tmp / "echo-env", harness.ECHO_SERVER)


@pytest.fixture
def sidecar(short_tmp):
    made = []

    def make(respond):
        s = harness.FakeSidecar(short_tmp / f"side{len(made)}.sock", respond)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def always(frame):
    return lambda ev: frame if isinstance(ev, binary.Decide) else None


def wrap(wrap_bin, sock, *server, opts=()):
    return [str(wrap_bin), "-s", str(sock), *opts, *server]


# -- grant ------------------------------------------------------------------------
def test_grant_sends_decide_with_lease_and_applies_env(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(
        1, env=[("RULEVAR", "from tcprules"), ("GONE", None)],
        options=[("setenv", "FOO bar baz %a"), ("keepalive", "")], lease=77)))
    env = dict(PATH_ENV, GONE="still here", ACL_WRAP_TIMEOUT="3000")
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server), opts=["-n", "echo"]),
                        "127.0.0.5", port, env=env)
    report = h.read_until(b"READY\n")
    got, fds = harness.parse_report(report)
    # the request, as the sidecar's own codec reads it
    (req,) = side.requests
    r = req.request
    assert (r.service, r.client, r.server, r.server_port, r.lease) == (
        "echo", "127.0.0.5", "127.0.0.1", port, True)
    assert r.client_port == h.client.getsockname()[1]
    assert (r.host, r.user) == (None, None)
    # UCSPI variables, tcprules env in order, hosts_options setenv
    assert got["PROTO"] == "TCP"
    assert got["TCPREMOTEIP"] == "127.0.0.5"
    assert got["TCPREMOTEPORT"] == str(h.client.getsockname()[1])
    assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("127.0.0.1", str(port))
    assert got["TCP6REMOTEIP"] == "::ffff:127.0.0.5"
    assert got["RULEVAR"] == "from tcprules"
    assert "GONE" not in got
    assert got["FOO"] == "bar baz 127.0.0.5"
    assert "ACL_WRAP_TIMEOUT" not in got          # our settings are not passed on
    # the lease: its socket crossed exec, and the server's life is its life
    assert got["ACL_LEASE_ID"] == "77"
    assert fds[int(got["ACL_LEASE_FD"])].startswith("socket:")
    # ... in blocking mode, as any inherited descriptor (docs/acl-wrap.md):
    # a server that reads its RELEASED with read(2) must not get EAGAIN.
    # (Not close-on-exec either: the line above found it after the exec.)
    flags = harness.parse_fd_flags(report)[int(got["ACL_LEASE_FD"])]
    assert not flags & os.O_NONBLOCK, oct(flags)
    side.wait_open(1)
    h.client.sendall(b"ping\n")
    assert h.client.recv(100) == b"ping\n"
    assert side.open == 1
    assert h.finish() == 0
    side.wait_open(0)
    assert side.closed == 1


def test_no_lease_means_no_sidecar_socket_in_the_server(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(1, lease=0)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.5", port,
                        env=PATH_ENV)
    got, fds = harness.parse_report(h.read_until(b"READY\n"))
    assert "ACL_LEASE_FD" not in got
    assert not [t for t in fds.values() if t.startswith("socket:")][2:]  # only fds 0-2
    side.wait_open(0)
    h.finish()


def test_tcpd_mode_service_from_argv0(wrap_bin, sidecar, echo_server, port, short_tmp):
    side = sidecar(always(harness.decision(1)))
    env = dict(PATH_ENV, ACL_WRAP_SOCKET=side.path, ACL_WRAP_DAEMON_DIR=str(short_tmp))
    # relative argv[0]: looked up in ACL_WRAP_DAEMON_DIR, like tcpd's REAL_DAEMON_DIR
    h = harness.Handoff([echo_server.name], "127.0.0.5", port, env=env,
                        executable=str(wrap_bin))
    assert b"READY" in h.read_until(b"READY\n")
    h.finish()
    # absolute argv[0]
    h = harness.Handoff([str(echo_server), "x"], "127.0.0.5", port, env=env,
                        executable=str(wrap_bin))
    assert b"READY" in h.read_until(b"READY\n")
    h.finish()
    assert [ev.request.service for ev in side.requests] == ["echo-env", "echo-env"]
    # ACL_WRAP_SERVICE names the service when argv[0] cannot (xinetd env =)
    env["ACL_WRAP_SERVICE"] = "echo"
    h = harness.Handoff([str(echo_server)], "127.0.0.5", port, env=env,
                        executable=str(wrap_bin))
    got, _ = harness.parse_report(h.read_until(b"READY\n"))
    h.finish()
    assert side.requests[-1].request.service == "echo"
    assert "ACL_WRAP_SERVICE" not in got


def test_ipv6_client(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(1)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "::1", port,
                        env=PATH_ENV, family=socket.AF_INET6, listen="::1")
    got, _ = harness.parse_report(h.read_until(b"READY\n"))
    h.finish()
    r = side.requests[0].request
    assert (r.client, r.server) == ("::1", "::1")
    assert (got["PROTO"], got["TCPREMOTEIP"], got["TCPLOCALIP"]) == ("TCP6", "::1", "::1")


def test_v4_client_of_a_v6_socket_is_sent_mapped(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(1)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.9", port,
                        env=PATH_ENV, family=socket.AF_INET6, listen="::")
    got, _ = harness.parse_report(h.read_until(b"READY\n"))
    h.finish()
    r = side.requests[0].request
    # docs/protocol.md: "exactly as the accepting socket saw it"
    assert ipaddress.ip_address(r.client) == ipaddress.ip_address("::ffff:127.0.0.9")
    # tcpserver's variables convert mapped addresses to IPv4 (spec B.4)
    assert (got["PROTO"], got["TCPREMOTEIP"], got["TCP6REMOTEIP"]) == (
        "TCP", "127.0.0.9", "::ffff:127.0.0.9")


def test_ucspi_variables_of_another_connection_are_replaced(wrap_bin, sidecar, echo_server,
                                                            port):
    """Variables a UCSPI server set for *this* connection are left alone
    (test_live.py, under tcpserver); ones inherited from elsewhere -- other
    ports -- are not a description, and acl-wrap sets its own."""
    side = sidecar(always(harness.decision(1)))
    stale = {"PROTO": "TCP6", "TCPREMOTEIP": "::ffff:10.1.2.3", "TCPREMOTEPORT": "1",
             "TCPLOCALIP": "::ffff:10.1.2.4", "TCPLOCALPORT": str(port),
             "TCPREMOTEHOST": "stale.example", "TCPREMOTEINFO": "stale",
             "TCPLOCALHOST": "stale.local", "TCP6REMOTEHOST": "stale6.example"}
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.13", port,
                        env=dict(PATH_ENV, **stale))
    got, _ = harness.parse_report(h.read_until(b"READY\n"))
    cport = h.client.getsockname()[1]
    h.finish()
    assert (got["PROTO"], got["TCPREMOTEIP"], got["TCPREMOTEPORT"], got["TCPLOCALIP"]) == (
        "TCP", "127.0.0.13", str(cport), "127.0.0.1")
    # names we did not look up are unset, as tcpserver -H -R -l 0 leaves them
    # (it unsets what it has no value for); the stale ones must not pass
    assert not {"TCPREMOTEHOST", "TCPREMOTEINFO", "TCPLOCALHOST", "TCP6REMOTEHOST"} & set(got)


# A stand-in UCSPI server: describes the connection on fd 0 in tcpserver's
# variables (SHIM_IP, SHIM_RPORT, SHIM_LPORT, when set, claim another client
# address, client port or local port), then execs.
UCSPI_SHIM = """#!/usr/bin/python3
import os, socket, sys
s = socket.socket(fileno=0)
peer, me = s.getpeername(), s.getsockname()
s.detach()
os.environ.update(PROTO="TCP", TCPREMOTEIP=os.environ.pop("SHIM_IP", peer[0]),
                  TCPREMOTEPORT=os.environ.pop("SHIM_RPORT", str(peer[1])),
                  TCPLOCALPORT=os.environ.pop("SHIM_LPORT", str(me[1])))
os.execv(sys.argv[1], sys.argv[1:])
"""
LONG = "x" * 256


@pytest.mark.parametrize("names, sent", [
    ({"TCPREMOTEHOST": "h.example.com", "TCPREMOTEINFO": ""}, ("h.example.com", "", True)),
    ({"TCPREMOTEHOST": "h.example.com"}, ("h.example.com", None, True)),
    ({"TCPREMOTEINFO": "joe"}, (None, "joe", True)),
    ({}, (None, None, False)),                                      # -H -R: nothing to send
    ({"TCPREMOTEHOST": ""}, (None, None, False)),
    ({"TCPREMOTEHOST": LONG, "TCPREMOTEINFO": "joe"}, (None, "joe", True)),
    ({"TCPREMOTEHOST": "h", "TCPREMOTEINFO": LONG}, ("h", None, True)),
    ({"TCPREMOTEHOST": "h", "TCPREMOTEINFO": "joe", "SHIM_IP": "127.0.0.99"},
     (None, None, False)),                                          # another connection's
    ({"TCPREMOTEHOST": "h", "TCPREMOTEINFO": "joe", "SHIM_RPORT": "1"}, (None, None, False)),
    ({"TCPREMOTEHOST": "h", "TCPREMOTEINFO": "joe", "SHIM_LPORT": "1"}, (None, None, False)),
], ids=["host+empty-info", "host", "info", "none", "empty-host", "long-host", "long-info",
        "other-client", "other-client-port", "other-local-port"])
def test_ucspi_names_of_this_connection_are_sent_flagged(wrap_bin, sidecar, echo_server, port,
                                                          short_tmp, names, sent):
    """Under a UCSPI server that described this connection, TCPREMOTEHOST and
    TCPREMOTEINFO go in the DECIDE with flag UCSPI (INFO when TCPREMOTEINFO
    is set, even empty); never a name of another connection, nor one the
    protocol's 255 bytes cannot carry."""
    side = sidecar(always(harness.decision(1)))
    shim = harness.write_exe(short_tmp / "ucspi-shim", UCSPI_SHIM)
    h = harness.Handoff([str(shim), *wrap(wrap_bin, side.path, str(echo_server))], "127.0.0.13",
                        port, env=dict(PATH_ENV, **names))
    got, _ = harness.parse_report(h.read_until(b"READY\n"))
    h.finish()
    (req,) = side.requests
    r = req.request
    assert (r.host, r.user, r.ucspi_names) == sent
    flags = struct.unpack_from("<H", side.raw[0], 6)[0]
    assert flags == binary.F_LEASE | binary.F_SEAL | binary.F_NAMES | (
        binary.F_UCSPI if sent[2] else 0) | (binary.F_INFO if sent[1] is not None else 0)
    assert got["TCPREMOTEIP"] == "127.0.0.13"


def test_a_sidecar_without_ucspi_or_seal_refuses_the_flags_and_acl_wrap_fails_closed(
        wrap_bin, sidecar, echo_server, port, short_tmp):
    """A sidecar older than flag UCSPI answers ERROR 3 to it (acl.wire.binary
    did, for any bit but LEASE): acl-wrap then fails closed, or open when
    told -- it never runs the server on names that were not judged.  One
    older than SEAL, which acl-wrap always sends, does the same to every
    request: with or without names, closed by default, open when told."""
    def old(ev):
        if ev.request.ucspi_names or ev.seal:
            return binary.encode_error(ev.request_id, binary.E_PAYLOAD, "unknown DECIDE flags")
        return harness.decision(1)

    side = sidecar(old)
    shim = harness.write_exe(short_tmp / "ucspi-shim", UCSPI_SHIM)
    argv = [str(shim), *wrap(wrap_bin, side.path, str(echo_server))]
    for env in (dict(PATH_ENV, TCPREMOTEHOST="h.example.com"), PATH_ENV):   # named, or not
        h = harness.Handoff(argv, "127.0.0.13", port, env=env)
        assert h.read_all() == b""
        assert h.finish() == 111
        h = harness.Handoff(argv, "127.0.0.13", port, env=dict(env, ACL_WRAP_FAIL="open"))
        assert b"READY" in h.read_until(b"READY\n")
        h.finish()


def test_empty_env_name_is_set_as_tcpserver_sets_it(wrap_bin, sidecar, echo_server, port):
    """tcprules `="x"` (an empty name): "=x" in the server's environment, as
    tcpserver's pathexec puts it (test_live_env_vs_tcpserver.py); only a set
    can have an empty name -- an unset of one is a malformed decision."""
    side = sidecar(always(harness.decision(1, env=[("", "x"), ("Z", "z")])))
    h = harness.Handoff(wrap(wrap_bin, side.path, "/usr/bin/env"), "127.0.0.5", port,
                        env=PATH_ENV)
    lines = h.read_all().split(b"\n")
    assert h.finish() == 0
    assert b"=x" in lines and b"Z=z" in lines
    side = sidecar(always(harness.decision(1, env=[("", None)])))
    h = harness.Handoff(wrap(wrap_bin, side.path, "/usr/bin/env"), "127.0.0.5", port,
                        env=PATH_ENV)
    assert h.read_all() == b""
    assert h.finish() == 111


def test_udp_grant_and_refusal(wrap_bin, sidecar, short_tmp, port):
    server = harness.write_exe(short_tmp / "udp-srv", harness.UDP_SERVER)
    side = sidecar(always(harness.decision(1, lease=5)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(server), opts=["-n", "echo-udp"]),
                        "127.0.0.10", port, env=PATH_ENV, dgram=True, payload=b"hello")
    reply, _ = h.client.recvfrom(4096)
    cport = h.client.getsockname()[1]
    assert h.finish() == 0
    assert reply.startswith(b"GOT hello PROTO=UDP UDPREMOTEIP=127.0.0.10 ")
    assert b"ACL_LEASE_ID=5" in reply
    r = side.requests[0].request
    assert (r.service, r.client, r.client_port) == ("echo-udp", "127.0.0.10", cport)
    # refused: the datagram is consumed, nothing answers
    side2 = sidecar(always(harness.decision(0, Reason.ADDRESS)))
    h = harness.Handoff(wrap(wrap_bin, side2.path, str(server)), "127.0.0.11", port,
                        env=PATH_ENV, dgram=True, payload=b"hello")
    assert h.proc.wait(10) == 1
    with pytest.raises(BlockingIOError):
        h.listener.recv(10, socket.MSG_DONTWAIT)
    h.finish()


# -- refusals, options ---------------------------------------------------------------
def test_refusal_banner_spawn_and_syslog(wrap_bin, sidecar, echo_server, port, short_tmp):
    needs_root()
    banners = short_tmp / "banners"
    banners.mkdir()
    (banners / "echo").write_text("Go away %a from %d\nbye\n")
    spawned = short_tmp / "spawned"
    side = sidecar(always(harness.decision(
        0, Reason.LIBWRAP, ("/etc/hosts.deny", 3),
        options=[("spawn", f"echo spawned %a %d > {spawned}"), ("banners", str(banners)),
                 ("twist", "/bin/echo never")])))
    sink = harness.SyslogSink(short_tmp / "log.sock")
    try:
        argv = harness.ns_command(short_tmp, str(wrap_bin), str(wrap_bin),
                                  ["-s", side.path, "-n", "echo", str(echo_server)],
                                  log_sock=sink.path)
        h = harness.Handoff(argv, "127.0.0.6", port, env=PATH_ENV)
        data = h.read_all()
        assert h.finish() == 1
        assert data == b"Go away 127.0.0.6 from echo\r\nbye\r\n"   # no READY, no twist
        assert spawned.read_text() == "spawned 127.0.0.6 echo\n"
        pri, text = sink.wait_for("refused connect from")
        # tcpd's line, facility daemon, level warning (Debian tcpd does the same)
        assert pri == 3 * 8 + 4
        m = re.search(r" (\S+)\[(\d+)\]: (.*)$", text)
        assert m and m.group(1) == "echo"
        assert m.group(3) == "refused connect from 127.0.0.6 (127.0.0.6)"
        _, why = sink.wait_for("refused by acl")
        assert why.endswith("refused by acl: libwrap at /etc/hosts.deny:3")
    finally:
        sink.close()


def test_grant_logs_like_tcpd_and_severity_option(wrap_bin, sidecar, echo_server, port,
                                                  short_tmp):
    needs_root()
    side = sidecar(always(harness.decision(1, options=[("severity", "local3.notice")])))
    sink = harness.SyslogSink(short_tmp / "log.sock")
    try:
        argv = harness.ns_command(short_tmp, str(wrap_bin), str(wrap_bin),
                                  ["-s", side.path, "-n", "echo", str(echo_server)],
                                  log_sock=sink.path)
        h = harness.Handoff(argv, "127.0.0.12", port, env=PATH_ENV)
        assert b"READY" in h.read_until(b"READY\n")
        h.finish()
        pri, text = sink.wait_for("connect from")
        assert pri == 19 * 8 + 5                       # local3.notice
        assert text.endswith("connect from 127.0.0.12 (127.0.0.12)")
    finally:
        sink.close()


def test_twist_replaces_the_server_and_keeps_the_lease(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(
        2, options=[("twist", "echo twisted %a %d lease=$ACL_LEASE_ID; sleep 0.3")], lease=9)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server), opts=["-n", "svc"]),
                        "127.0.0.8", port, env=PATH_ENV)
    side.wait_open(1)
    assert h.read_all() == b"twisted 127.0.0.8 svc lease=9\n"
    assert h.finish() == 0
    side.wait_open(0)


@pytest.mark.parametrize("names, out", [
    (("far.example", None), b"h=far.example c=far.example n=far.example H=127.0.0.1 "
                            b"s=svc@127.0.0.1 N=localhost H2=localhost"),
    (("paranoid", "loopy.example"), b"h=127.0.0.8 c=127.0.0.8 n=paranoid H=loopy.example "
                                    b"s=svc@loopy.example N=loopy.example H2=loopy.example"),
    (("unknown", None), b"h=127.0.0.8 c=127.0.0.8 n=unknown H=127.0.0.1 "
                        b"s=svc@127.0.0.1 N=localhost H2=localhost"),
    (None, b"h=127.0.0.8 c=127.0.0.8 n=localhost H=127.0.0.1 "      # nothing looked up:
           b"s=svc@127.0.0.1 N=localhost H2=localhost"),            # our own %n lookup
    (("", ""), b"h=127.0.0.8 c=127.0.0.8 n= H=127.0.0.1 "           # the empty name: the
               b"s=svc@127.0.0.1 N= H2=127.0.0.1"),                 # address, as libwrap
], ids=["client", "paranoid+server", "unknown", "none", "empty"])
def test_names_the_decision_looked_up_count_as_looked_up(wrap_bin, sidecar, echo_server, port,
                                                        short_tmp, names, out):
    """The DECISION's names section (DECIDE flag NAMES) says which names the
    sidecar's rules looked up: %h, %c, %H, %s then show them as tcpd shows a
    name looked up while matching -- "unknown", "paranoid" and the empty
    name (an address alone on a hosts line) as the address -- and %n/%N do
    not look again.  Run in a mount namespace whose
    /etc/hosts names 127.0.0.8 and 127.0.0.1 localhost, so a lookup of our
    own would say so."""
    needs_root()
    side = sidecar(always(harness.decision(2, options=[(
        "twist", "/bin/echo h=%h c=%c n=%n H=%H s=%s N=%N H2=%H")], names=names)))
    argv = harness.ns_command(short_tmp, str(echo_server), str(wrap_bin),
                              hosts="127.0.0.1 localhost\n127.0.0.8 localhost\n")
    h = harness.Handoff(argv, "127.0.0.8", port, env=dict(PATH_ENV, ACL_WRAP_SOCKET=side.path,
                                                          ACL_WRAP_SERVICE="svc"))
    assert h.read_all() == out + b"\n"
    h.finish()


def test_a_bad_names_section_fails_closed(wrap_bin, sidecar, echo_server, port):
    """A names section that is not well-formed -- an unknown flag bit, a name
    marked "not looked up" that has bytes, a name cut short, bytes after it
    -- is a malformed DECISION: fail closed.  (An empty looked-up name is
    well-formed: test_names_the_decision_looked_up_count_as_looked_up.)"""
    good = harness.decision(1, names=("a.example", None))
    body = bytearray(good[12:])
    bad = [
        binary.frame(binary.T_DECISION, 1, bytes(body), flags=binary.R_NAMES | 0x0002),
        binary.frame(binary.T_DECISION, 1, bytes(body[:-14]) + b"\x00\x01\x00x\x00\x00",
                     flags=binary.R_NAMES),
        binary.frame(binary.T_DECISION, 1, bytes(body[:-14]) + b"\x01\x05\x00ab\x00\x00",
                     flags=binary.R_NAMES),
        binary.frame(binary.T_DECISION, 1, bytes(body) + b"!", flags=binary.R_NAMES),
        binary.frame(binary.T_DECISION, 1, bytes(body), flags=0),   # a section nobody announced
    ]
    for reply in bad:
        side = sidecar(always(reply))
        h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.8", port,
                            env=PATH_ENV)
        assert h.read_all() == b""
        assert h.finish() == 111


def test_delegate_without_twist_is_refused(wrap_bin, sidecar, echo_server, port):
    side = sidecar(always(harness.decision(2)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.8", port,
                        env=PATH_ENV)
    assert h.read_all() == b""
    assert h.finish() == 1


@pytest.mark.parametrize("option", [("aclexec", "/bin/true"), ("frobnicate", ""),
                                    ("umask", "999"), ("severity", "nosuch"),
                                    ("setenv", "")])
def test_option_errors_refuse(wrap_bin, sidecar, echo_server, port, option):
    side = sidecar(always(harness.decision(1, options=[option])))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.8", port,
                        env=PATH_ENV)
    assert h.read_all() == b""
    assert h.finish() == 1


# -- the sidecar missing, silent, or talking nonsense -------------------------------
def test_unreachable_fails_closed_by_default_and_open_when_asked(wrap_bin, echo_server, port,
                                                                 short_tmp):
    needs_root()
    sink = harness.SyslogSink(short_tmp / "log.sock")
    try:
        missing = short_tmp / "nobody-here.sock"
        argv = harness.ns_command(short_tmp, str(wrap_bin), str(wrap_bin),
                                  ["-s", str(missing), "-n", "echo", str(echo_server)],
                                  log_sock=sink.path)
        h = harness.Handoff(argv, "127.0.0.5", port, env=PATH_ENV)
        assert h.read_all() == b""
        assert h.finish() == 111
        _, text = sink.wait_for("failing closed")
        assert str(missing) in text
        env = dict(PATH_ENV, ACL_WRAP_FAIL="open")
        h = harness.Handoff(argv, "127.0.0.5", port, env=env)
        got, fds = harness.parse_report(h.read_until(b"READY\n"))
        assert h.finish() == 0
        assert got["TCPREMOTEIP"] == "127.0.0.5" and "ACL_LEASE_FD" not in got
        sink.wait_for("failing open")
        # -c on the command line beats ACL_WRAP_FAIL=open in the environment
        argv_c = argv[:-1] + ["-c", argv[-1]]
        h = harness.Handoff(argv_c, "127.0.0.5", port, env=env)
        assert h.read_all() == b""
        assert h.finish() == 111
    finally:
        sink.close()


@pytest.mark.parametrize("mode,expect", [("-c", 111), ("-o", 0)])
def test_too_slow_sidecar_hits_the_timeout(wrap_bin, sidecar, echo_server, port, mode, expect):
    side = sidecar(lambda ev: 1.5)            # reads the request, answers nothing for 1.5 s
    t0 = time.monotonic()
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server), opts=["-t", "300", mode]),
                        "127.0.0.5", port, env=PATH_ENV)
    data = h.read_until(b"READY\n") if expect == 0 else h.read_all()
    took = time.monotonic() - t0
    assert h.finish() == expect
    assert (b"READY" in data) == (expect == 0)
    assert took < 4.0, "acl-wrap waited for the sidecar instead of giving up"
    assert len(side.requests) == 1


def _garbage_cases(seed: int, n: int) -> list[bytes]:
    """Generated bad replies: random bytes, bad headers, ERROR frames, valid
    DECISIONs truncated, extended, or with a wrong id/version/type."""
    rnd = random.Random(seed)
    good = harness.decision(1, env=[("A", "b")], options=[("setenv", "X y")], lease=3)
    cases = [
        b"", b"\x00", struct.pack("<I", 4) + b"\x01\x81\x00\x00",
        struct.pack("<I", 70000) + b"\x01" * 20,
        binary.encode_error(1, 3, "malformed payload"),
        binary.encode_error(0, 4),
        binary.frame(binary.T_PONG, 1, b"\x01"),
        binary.frame(binary.T_DECISION, 2, good[12:]),      # someone else's id
        good[:4] + b"\x02" + good[5:],                      # version 2
        good[:-1], good + b"\x00",
        struct.pack("<I", len(good) - 4 + 1) + good[4:] + b"!",  # trailing byte
        binary.frame(binary.T_DECISION, 1, b"\x07" + good[13:]),  # verdict 7
        binary.frame(binary.T_DECISION, 1, good[12:24] + b"\xff\xff" + good[26:]),
    ]
    for _ in range(n):
        kind = rnd.randrange(3)
        if kind == 0:
            cases.append(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
        elif kind == 1:
            body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
            cases.append(binary.frame(binary.T_DECISION, 1, body))
        else:
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 4)):
                i = rnd.randrange(12, len(b))
                b[i] = rnd.randrange(256)
            cases.append(bytes(b))
    return cases


def structural_decision(reply: bytes) -> int | None:
    """Oracle written from docs/protocol.md alone: the verdict of the first
    frame if it is a well-formed DECISION for request 1, else None.  Reason
    numbers are not checked (new ones may be appended)."""
    if len(reply) < 4:
        return None
    (length,) = struct.unpack_from("<I", reply)
    if not 8 <= length <= (1 << 20) - 4 or len(reply) < 4 + length:
        return None
    f = reply[:4 + length]
    version, ftype, _flags, rid = struct.unpack_from("<BBHI", f, 4)
    if (version, ftype, rid) != (1, 0x81, 1) or len(f) < 28:
        return None
    verdict, _reason, loc_len, _lease, n_env, n_opt = struct.unpack_from("<BBHQHH", f, 12)
    pos = 28 + loc_len
    if verdict > 2 or pos > len(f) or b"\0" in f[28:pos]:
        return None
    for _ in range(n_env):
        if pos + 5 > len(f):
            return None
        op, nl, vl = struct.unpack_from("<BHH", f, pos)
        name, value = f[pos + 5:pos + 5 + nl], f[pos + 5 + nl:pos + 5 + nl + vl]
        pos += 5 + nl + vl
        if op > 1 or not name or b"=" in name or b"\0" in name + value or pos > len(f):
            return None
    for _ in range(n_opt):
        if pos + 4 > len(f):
            return None
        nl, vl = struct.unpack_from("<HH", f, pos)
        name, value = f[pos + 4:pos + 4 + nl], f[pos + 4 + nl:pos + 4 + nl + vl]
        pos += 4 + nl + vl
        if not name or b"\0" in name + value or pos > len(f):
            return None
    return verdict if pos == len(f) else None


def test_garbage_never_crashes_and_fails_closed(wrap_bin, sidecar, echo_server, port):
    """Every generated reply ends in a clean decision or in fail-closed --
    never a signal, never the server run on a reply that is not a grant."""
    current = [b""]
    side = sidecar(lambda ev: current[0] or None)
    for i, reply in enumerate(_garbage_cases(seed=7, n=45)):
        current[0] = reply
        h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server), opts=["-t", "1000"]),
                            "127.0.0.5", port, env=PATH_ENV)
        h.client.settimeout(5)
        try:
            first = h.client.recv(4096)
        except TimeoutError:
            first = b"<timeout>"
        rc = h.finish()
        verdict = structural_decision(reply)
        legit = verdict is not None
        if first.startswith(b"ENV "):
            # the server ran (it may die of SIGPIPE when we hang up: not ours)
            assert legit and verdict != Verdict.DENY, (i, reply)
        else:
            assert rc >= 0, f"case {i} {reply!r}: killed by signal {-rc}"
            assert rc in (1, 111), (i, reply, rc)
            if not legit:
                assert rc == 111, (i, reply, rc)
        side.wait_open(0)


# -- usage ---------------------------------------------------------------------------
def test_stdin_not_a_socket_is_a_usage_error(wrap_bin, echo_server):
    res = subprocess.run([str(wrap_bin), "-s", "/nonexistent", str(echo_server)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    assert res.returncode == 100
    assert "not a socket" in res.stderr


def test_listening_socket_is_refused_after_a_pause(wrap_bin, echo_server, port):
    """A stream service with wait = yes hands over the listening socket.
    There is no client to ask about; acl-wrap says so and pauses before it
    exits (as tcpd pauses on a refusal), so the super-server, which starts
    it again while the connection stays queued, does not spin."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", port))
        lsock.listen(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            proc = subprocess.Popen([str(wrap_bin), "-s", "/nonexistent", str(echo_server)],
                                    stdin=lsock.fileno(), stderr=subprocess.PIPE, text=True)
            try:
                with pytest.raises(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)        # still pausing
                _, err = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert proc.returncode == 100
    assert "listening socket (a stream service with wait = yes)" in err


@pytest.mark.parametrize("args", [[], ["-t", "0", "x"], ["-t", "abc", "x"], ["-q", "x"],
                                  ["-n", "a" * 300, "x"]])
def test_bad_arguments(wrap_bin, args):
    res = subprocess.run([str(wrap_bin), *args], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 100, res
    assert res.stderr.startswith("acl-wrap: fatal: ")


def test_empty_argv0_names_the_xinetd_trap(wrap_bin):
    """xinetd with NAMEINARGS after server_args runs us with argv[0] = ""."""
    res = subprocess.run([""], executable=str(wrap_bin), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 100
    assert "put flags before server_args" in res.stderr


def test_spawn_gets_neither_client_nor_lease(wrap_bin, sidecar, echo_server, port, short_tmp):
    out = short_tmp / "fds"
    side = sidecar(always(harness.decision(1, options=[
        ("spawn", f'for f in /proc/$$/fd/*; do readlink "$f"; done > {out}')], lease=4)))
    h = harness.Handoff(wrap(wrap_bin, side.path, str(echo_server)), "127.0.0.13", port,
                        env=PATH_ENV)
    got, fds = harness.parse_report(h.read_until(b"READY\n"))
    h.finish()
    targets = out.read_text().split()
    assert "socket:" not in out.read_text(), targets       # no client, no sidecar
    assert targets[0] == targets[2] == "/dev/null"          # stdin, stderr (stdout is > out)
    assert got["ACL_LEASE_ID"] == "4"                        # while the server has the lease
