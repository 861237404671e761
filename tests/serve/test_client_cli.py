"""acl.client (blocking and asyncio), ``acl query``, ``acl serve`` on the
shipped example, and the policy file's errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types

import pytest

from acl.client import AsyncClient, Client
from acl.errors import PolicyError
from acl.model import Reason, Request, Verdict
from acl.policy import EXAMPLE, load_policy
from acl.wire import binary as wb

from .conftest import policy_toml, start_server, wait_for
from .test_client_robust import StandIn
from .test_server import admin


def test_asyncio_client_pipelines_from_many_tasks(served):
    async def main():
        async with await AsyncClient.connect(served.query) as c:
            assert await c.ping() == "compiled"
            many = await asyncio.gather(*[c.decide("sshd", f"192.0.2.{i}") for i in range(1, 200)],
                                        c.decide_many([Request("smtpd", "192.0.2.66")] * 50))
            single, batch = many[:-1], many[-1]
            assert all(d.allowed for d in single)
            assert all(d.reason is Reason.TCPRULES for d in batch)
            d = await c.decide("echo-stream", "127.0.0.1", lease=True)
            assert d.lease and await c.release(d.lease) is True
            assert await c.release(d.lease) is False

    asyncio.run(main())


def test_blocking_client_and_query_cli(served):
    with Client(served.query) as c:
        d = c.decide(Request("smtpd", "127.0.0.1", 5555, "127.0.0.1", 25))
        assert d.env == (("RELAYCLIENT", ""),)
    run = [sys.executable, "-m", "acl", "query", "--socket", served.query]
    ok = subprocess.run(run + ["smtpd", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("allow smtpd 127.0.0.1: ok") and "env RELAYCLIENT=" in ok.stdout
    no = subprocess.run(run + ["sshd", "203.0.113.1"], capture_output=True, text=True, timeout=30)
    assert no.returncode == 1 and no.stdout.startswith("deny sshd 203.0.113.1: libwrap")
    assert "hosts.deny:1" in no.stdout
    bad = subprocess.run(run + ["sshd", "not-an-address"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 100 and "fatal" in bad.stderr
    gone = subprocess.run([sys.executable, "-m", "acl", "query", "--socket",
                           served.query + ".nope", "sshd", "192.0.2.1"],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 111
    adm = subprocess.run([sys.executable, "-m", "acl", "query", "--admin", served.admin, "dump"],
                         capture_output=True, text=True, timeout=30)
    assert adm.returncode == 0 and '"hosts_access"' in adm.stdout


def test_query_prints_every_part_of_a_decision():
    """``acl query``'s text: the rule, env sets and unsets (``-NAME``, the
    wire's unset op), options with and without a value, the lease id."""
    from acl.cli.query import format_decision
    from acl.model import Decision, Location, Reason, Verdict

    d = Decision(Verdict.ALLOW, Reason.OK, Location("/etc/acl/rules", 3),
                 env=(("RELAYCLIENT", ""), ("TCPREMOTEINFO", None)),
                 options=(("umask", "022"), ("keepalive", "")), lease=7)
    assert format_decision("smtpd", "192.0.2.1", d).splitlines() == [
        "allow smtpd 192.0.2.1: ok", "  rule /etc/acl/rules:3", "  env RELAYCLIENT=",
        "  env -TCPREMOTEINFO", "  option umask 022", "  option keepalive", "  lease 7"]


@pytest.mark.parametrize("reply", [
    b"\xff\xff\xff\xff" + b"x" * 8,                           # a length no frame has
    wb.frame(0x44, 1),                                         # a type no reply has
    wb.frame(wb.T_DECISION, 1, b"\x01\x00\x09\x00" + b"\x00" * 12),  # location past the end
])
def test_query_on_a_bad_reply_says_fatal_and_exits_111(tmp_path, reply):
    """A reply that is not a frame is 'the sidecar is not usable' (111), never
    a traceback and never 1 (which means denied)."""
    def one_reply(conn, events):
        events(1)
        conn.sendall(reply)

    side = StandIn(str(tmp_path / "bad.sock"), one_reply)
    try:
        out = subprocess.run([sys.executable, "-m", "acl", "query", "--socket", side.path,
                              "smtpd", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    finally:
        side.close()
    assert out.returncode == 111, out.stderr
    assert out.stderr.startswith(f"acl query: fatal: {side.path}: server sent ")
    assert "Traceback" not in out.stderr


def test_admin_prints_the_refusal_even_when_its_command_cannot_be_sent(tmp_path, monkeypatch,
                                                                       capsys):
    """The admin socket answers a uid it does not serve and closes at once
    (docs/protocol.md).  A command written after that close fails (EPIPE);
    ``acl query --admin`` must still print the answer, not 'Broken pipe'."""
    from acl.cli import adminsock, query

    refusal = {"ok": False, "error": "uid 65534 gid 65534 is not allowed on the admin socket"}
    path = str(tmp_path / "admin.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    ls.settimeout(30)
    closed = threading.Event()

    def refuse():
        conn, _ = ls.accept()
        conn.sendall(json.dumps(refusal).encode() + b"\n")
        conn.close()
        closed.set()

    class LateSocket(socket.socket):
        """Sends only once the server has answered and closed: the order
        that makes the send fail, every time."""

        def sendall(self, data, *args):
            assert closed.wait(30)
            return super().sendall(data, *args)

    monkeypatch.setattr(adminsock, "socket", types.SimpleNamespace(
        socket=LateSocket, AF_UNIX=socket.AF_UNIX, SOCK_STREAM=socket.SOCK_STREAM))
    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    try:
        rc = query.admin(path, "stats")
    finally:
        t.join(15)
        ls.close()
    out, err = capsys.readouterr()
    assert rc == 111 and err == ""
    assert json.loads(out) == refusal


def _admin_stand_in(tmp_path, serve):
    """A listening admin path whose one connection ``serve(conn)`` handles
    on a thread; returns (path, finish)."""
    path = str(tmp_path / "admin.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    ls.settimeout(30)

    def run():
        conn, _ = ls.accept()
        with conn:
            serve(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def finish():
        t.join(15)
        ls.close()
    return path, finish


def test_admin_answer_in_pieces_is_read_to_its_newline(tmp_path):
    """A long answer (``dump`` of a large policy) comes in several reads:
    all of them up to the newline are the answer."""
    from acl.cli import adminsock

    answer = {"ok": True, "dump": "x" * 200_000}
    data = json.dumps(answer).encode() + b"\n"

    def slowly(conn):
        conn.recv(64)
        for i in range(0, len(data), 50_000):
            conn.sendall(data[i:i + 50_000])
            time.sleep(0.05)

    path, finish = _admin_stand_in(tmp_path, slowly)
    try:
        assert adminsock.exchange(path, "dump", 30) == answer
    finally:
        finish()


def test_admin_command_refused_unanswered_says_why(tmp_path, monkeypatch):
    """The server closed before the command was sent and said nothing: the
    failed send is the reason given ("cannot reach"), not "is it the admin
    socket?" (which would send the user looking at the wrong path)."""
    from acl.cli import adminsock

    closed = threading.Event()

    def close_at_once(conn):
        conn.close()
        closed.set()

    class LateSocket(socket.socket):
        def sendall(self, data, *args):
            assert closed.wait(30)
            return super().sendall(data, *args)

    monkeypatch.setattr(adminsock, "socket", types.SimpleNamespace(
        socket=LateSocket, AF_UNIX=socket.AF_UNIX, SOCK_STREAM=socket.SOCK_STREAM))
    path, finish = _admin_stand_in(tmp_path, close_at_once)
    try:
        with pytest.raises(adminsock.NoAnswer, match=f"cannot reach {path}: .*(pipe|reset)"):
            adminsock.exchange(path, "stats", 30)
    finally:
        finish()


def test_serve_with_no_config_runs_the_shipped_example(tmp_path):
    # systemd's RuntimeDirectory= (RUNTIME_DIRECTORY) wins over the login's
    # XDG_RUNTIME_DIR
    (tmp_path / "xdg").mkdir(mode=0o700)
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "acl", "serve", "--metrics", ""],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "ready" in log.read_text() or proc.poll() is not None, 30, "ready")
        text = log.read_text()
        query = str(tmp_path / "acl" / "query.sock")
        assert f"query on {query}" in text
        assert "metrics on" not in text         # --metrics '': the example's endpoint is off
        line = next(ln for ln in text.splitlines() if "try: " in ln)
        cmd = line.split("try: ", 1)[1].split()
        assert cmd[:4] == ["acl", "query", "--socket", query]
        out = subprocess.run([sys.executable, "-m", "acl", *cmd[1:]], capture_output=True,
                             text=True, timeout=30, env=env)
        assert out.returncode == 0 and out.stdout.startswith("allow sshd 192.0.2.10")
    finally:
        proc.terminate()
        proc.wait(15)


def test_example_policy_uses_only_documentation_and_loopback_addresses():
    import ipaddress
    import re

    doc = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24",
                                              "203.0.113.0/24", "2001:db8::/32",
                                              "127.0.0.0/8", "::1/128")]
    for f in EXAMPLE.parent.iterdir():
        for m in re.finditer(r"\b\d+\.\d+\.\d+\.\d+\b|\b[0-9a-f]*:[0-9a-f:]*:[0-9a-f]*\b",
                             f.read_text()):
            text = m.group(0)
            if m.start() and f.read_text()[m.start() - 1] == "/":
                continue                                   # a netmask
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if ip == ipaddress.ip_address("0.0.0.0") or str(ip) == "::":
                continue
            assert any(ip in n for n in doc), (f.name, text)
    p = load_policy(None)
    assert [s.kind for s in p.sources] == ["xinetd", "tcprules", "hosts_access"]
    assert p.diagnostics == []


@pytest.mark.parametrize("toml, message", [
    ("[bogus]\n", "bogus: unknown section"),
    ("[[source]]\ntype = 'frob'\n", "unknown source type 'frob'"),
    ("[[source]]\ntype = 'tcprules'\n", "source[0].file: a file name is required"),
    ("[[source]]\ntype = 'tcprules'\nfile = 'nope'\n", "cannot read"),
    ("[limits]\nsources = 'many'\n", "limits.sources: expected int"),
    ("[limits]\nipv6_prefix = 200\n", "limits.ipv6_prefix"),
    ("[sockets]\nmode = 'rw'\n", "sockets.mode"),
    ("[sockets\n", "policy.toml:1:9: Expected ']' at the end of a table declaration"),
])
def test_policy_errors_name_the_file_and_key(tmp_path, toml, message):
    p = tmp_path / "policy.toml"
    p.write_text(toml)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert str(p) in str(exc.value) and message in str(exc.value)


def test_bad_rule_file_at_start_is_a_clear_fatal(tmp_path):
    from .conftest import policy_toml

    cfg = policy_toml(tmp_path)
    (tmp_path / "tcp.smtpd").write_text("1.2.3.4:allow\n1.2.3.5:frob\n")
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100
    assert f"acl serve: fatal: {tmp_path}/tcp.smtpd:2:" in out.stderr


def test_check_shows_the_warnings_of_a_policy_that_loads(tmp_path):
    """A line libwrap skips is no fatal error: the policy loads, and
    ``--check`` (as a start) says where the skipped line is."""
    cfg = policy_toml(tmp_path)
    (tmp_path / "hosts.allow").write_text("sshd 10.0.0.1\nsshd: 127.0.0.1\n")
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (f'acl serve: {tmp_path}/hosts.allow:1:1: missing ":" separator: line ignored'
            in out.stderr.splitlines()), out.stderr


def test_engine_order_and_unknown_service(tmp_path):
    from acl.engine import Engine

    from .conftest import policy_toml

    eng = Engine(load_policy(policy_toml(tmp_path)))
    # xinetd refuses first (address), tcprules before hosts_access
    d = eng.decide(Request("echo-stream", "198.51.100.1"), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DENY, Reason.ADDRESS)
    d = eng.decide(Request("smtpd", "192.0.2.66"), 1.0)
    assert d.reason is Reason.TCPRULES
    # tcprules grants, then hosts_access decides; the grant carries the env
    d = eng.decide(Request("smtpd", "192.0.2.9"), 1.0)
    assert d.allowed and d.env == (("GREETDELAY", "5"),) and str(d.location).endswith(
        "hosts.allow:2")
    d = eng.decide(Request("smtpd", "203.0.113.9"), 1.0)
    assert d.reason is Reason.LIBWRAP
    # xinetd's libwrap name is what hosts_access sees (INTERNAL echo -> "echo")
    d = eng.decide(Request("echo-stream", "127.0.0.1"), 1.0)
    assert d.allowed and str(d.location).endswith("hosts.allow:3")
    empty = Engine(load_policy(_only_tcprules(tmp_path)))
    d = empty.decide(Request("nosuch", "192.0.2.1"), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DENY, Reason.UNKNOWN_SERVICE)
    assert empty.counters()["decisions"] == {("_unknown", 0, 10): 1}


def _only_tcprules(tmp_path):
    p = tmp_path / "only.toml"
    p.write_text('[[source]]\ntype = "tcprules"\nfile = "tcp.smtpd"\nservices = ["smtpd"]\n')
    return p


def test_rate_limit_per_source(tmp_path):
    from acl.engine import Engine

    from .conftest import policy_toml

    eng = Engine(load_policy(policy_toml(tmp_path, rate=1.0, burst=2.0)))
    got = [eng.decide(Request("sshd", "192.0.2.1"), 100.0).reason for _ in range(3)]
    assert got == [Reason.OK, Reason.OK, Reason.RATE]
    assert eng.decide(Request("sshd", "192.0.2.2"), 100.0).allowed      # another source
    assert eng.decide(Request("sshd", "192.0.2.1"), 101.0).allowed      # one token later
    assert eng.counters()["limit_trips"] == {("sshd", "rate"): 1}


def test_broken_cdb_is_a_policy_error_naming_the_source(tmp_path):
    (tmp_path / "rules.cdb").write_bytes(b"\x00" * 100)
    p = tmp_path / "policy.toml"
    p.write_text('[[source]]\ntype = "tcprules"\nfile = "rules.cdb"\nservices = ["smtpd"]\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert f"{p}:1:1: source[0]: CdbError" in str(exc.value)


def test_reload_keeps_layers_whose_files_did_not_change(tmp_path):
    from acl.engine import Engine

    from .conftest import policy_toml

    cfg = policy_toml(tmp_path)
    (tmp_path / "hosts.allow").write_text("sshd: " + str(tmp_path / "nets") + "\n"
                                          + (tmp_path / "hosts.allow").read_text())
    (tmp_path / "nets").write_text("198.51.100.0/255.255.255.0\n")
    eng = Engine(load_policy(cfg))
    kinds = {s.kind: s for s in eng.policy.sources}
    assert tmp_path / "nets" in kinds["hosts_access"].files        # watched too
    plan = eng.plan
    eng.reload()
    again = {s.kind: s for s in eng.policy.sources}
    assert again["hosts_access"].layer is kinds["hosts_access"].layer
    assert again["tcprules"].layer is kinds["tcprules"].layer
    assert again["xinetd"].layer is not kinds["xinetd"].layer      # rebuilt around its state
    assert again["xinetd"].state is kinds["xinetd"].state
    assert eng.plan is not plan
    # a file a pattern names changes: that layer is read again
    assert eng.decide(Request("sshd", "198.51.100.7"), 1.0).allowed
    (tmp_path / "nets").write_text("203.0.113.0/255.255.255.0\n")
    eng.reload()
    assert eng.policy.sources[2].layer is not again["hosts_access"].layer
    assert not eng.decide(Request("sshd", "198.51.100.7"), 1.0).allowed
    assert eng.decide(Request("sshd", "203.0.113.7"), 1.0).allowed


def test_reload_reuses_the_plan_when_nothing_it_uses_changed(tmp_path):
    from acl.engine import Engine

    (tmp_path / "a").write_text("sshd: 192.0.2.0/255.255.255.0\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[source]]\ntype = "hosts_access"\nallow = "a"\ndeny = "d"\n'
                   'services = ["sshd"]\n')
    eng = Engine(load_policy(cfg))
    plan = eng.plan
    from acl.wire import binary as wb

    eng.plan.run(wb.encode_decide(1, Request("sshd", "192.0.2.1")) * 3, 0, 1.0)
    eng.reload()
    assert eng.plan is plan
    assert eng.counters()["decisions"] == {("sshd", 1, 0): 3}
    (tmp_path / "a").write_text("sshd: 198.51.100.0/255.255.255.0\n")
    eng.reload()
    assert eng.plan is not plan
    assert eng.counters()["decisions"] == {("sshd", 1, 0): 3}      # folded, not lost
    assert not eng.decide(Request("sshd", "192.0.2.1"), 1.0).allowed


def test_reload_rebuilds_only_the_services_whose_layers_changed(tmp_path):
    from acl.engine import Engine

    (tmp_path / "a").write_text("sshd, smtpd: 192.0.2.0/255.255.255.0\n")
    (tmp_path / "d").write_text("ALL: ALL\n")
    (tmp_path / "r").write_text("192.0.2.66:deny\n:allow\n")
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[source]]\ntype = "hosts_access"\nallow = "a"\ndeny = "d"\n'
                   'services = ["sshd", "smtpd"]\n'
                   '[[source]]\ntype = "tcprules"\nfile = "r"\nservices = ["smtpd"]\n')
    eng = Engine(load_policy(cfg))
    sshd, smtpd = eng._plan_cache["sshd"][1], eng._plan_cache["smtpd"][1]
    (tmp_path / "r").write_text("192.0.2.67:deny\n:allow\n")
    eng.reload()
    assert eng._plan_cache["sshd"][1] is sshd            # kept: its layer did not change
    assert eng._plan_cache["smtpd"][1] is not smtpd      # rebuilt: tcprules changed
    from acl.wire import binary as wb

    blob = b"".join(wb.encode_decide(i, Request(s, c)) for i, (s, c) in enumerate(
        [("sshd", "192.0.2.66"), ("smtpd", "192.0.2.66"), ("smtpd", "192.0.2.67"),
         ("sshd", "198.51.100.1")]))
    pos, out, status = eng.plan.run(blob, 0, 1.0)
    assert status == 0 and eng.plan.residual == 0
    assert [r.decision.allowed for r in wb.ReplyDecoder().feed(out)] == [True, True, False, False]


def test_made_up_service_names_do_not_grow_the_metrics(tmp_path):
    """Under ``services = ["*"]`` every name is decided (by the ALL rules),
    but only the names the policy itself writes become label values -- a
    daemon named only by a rule the prefix tables cannot hold included: a
    client sending 5,000 invented names adds one series, ``_unknown``, and
    the policy remembers the layers of at most 4,096 service names."""
    from acl.engine import Engine

    from .conftest import policy_toml

    cfg = policy_toml(tmp_path)
    with open(tmp_path / "hosts.allow", "a") as f:
        f.write("imapd: .lab.test\nALL: 198.51.100.77\n")     # a residual rule; a grant for all
    eng = Engine(load_policy(cfg))
    named = {"sshd", "smtpd", "echo", "echo-stream", "imapd"}
    assert eng.policy.named_services() >= named
    for i in range(5000):
        d = eng.decide(Request(f"made-up-{i}", "192.0.2.9"), 1.0)
        assert (d.verdict, d.reason) == (Verdict.DENY, Reason.LIBWRAP)   # hosts.deny ALL: ALL
    held = eng.decide(Request("made-up-lease", "198.51.100.77", lease=True), 1.0)
    assert held.allowed and held.lease
    for service in named:
        eng.decide(Request(service, "192.0.2.9"), 1.0)
    c = eng.counters()
    labels = {k[0] for k in c["decisions"]}
    assert labels == named | {"_unknown"}, labels
    assert c["decisions"][("_unknown", int(Verdict.DENY), int(Reason.LIBWRAP))] == 5000
    assert c["leases"] == {"_unknown": 1}
    assert len(eng.policy._cache) <= 4096          # Policy.layers_for's memo


@pytest.mark.parametrize("toml, message", [
    ('[metrics]\nlisten = "localhost"\n', "metrics.listen: expected ADDRESS:PORT"),
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen: expected ADDRESS:PORT"),
    ('[sockets]\ngroup = "no-such-group-acl"\n', "sockets.group: no such user or group"),
    ('[run]\nuser = "no-such-user-acl"\n', "run.user: no such user or group"),
    ('[run]\ngroup = "no-such-group-acl"\n', "run.group: no such user or group"),
])
def test_impossible_settings_are_refused_at_load_and_by_check(tmp_path, toml, message):
    """What cannot work is said at load time (and by ``acl serve --check``),
    with exit 100, not found at bind time with a traceback or a 111."""
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert message in str(exc.value)
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(p), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100 and message in out.stderr, out
    assert "Traceback" not in out.stderr


def test_an_empty_socket_override_turns_that_socket_off(tmp_path):
    """``--admin ''`` / ``--policy-socket ''`` (as ``--metrics ''``): the
    policy file's socket is not made -- not a path made of the empty string."""
    srv = start_server(tmp_path, policy_toml(tmp_path), args=["--admin", "", "--policy-socket", ""])
    try:
        text = srv.text()
        assert "query on " in text and "admin on " not in text and "policy on " not in text, text
        assert not (tmp_path / "admin.sock").exists() and not (tmp_path / "policy.sock").exists()
    finally:
        srv.stop()


def test_bad_metrics_override_is_a_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--metrics", "nonsense", "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100 and "--metrics: expected ADDRESS:PORT" in out.stderr, out


@pytest.mark.parametrize("flag, value", [("--port", "99999"), ("--port", "-1"),
                                         ("--server-port", "70000")])
def test_query_port_out_of_range_is_a_usage_error(flag, value):
    out = subprocess.run([sys.executable, "-m", "acl", "query", "--socket", "/nonexistent.sock",
                          flag, value, "sshd", "192.0.2.1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100, out
    assert "a port is 0 .. 65535" in out.stderr and "Traceback" not in out.stderr


def _query(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "acl", "query", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_admin_exit_status_tells_bad_input_from_failure(tmp_path):
    """acl.cli's rules: 100 bad input -- a command the server does not take,
    a reload refused because the policy does not load -- and 111 only for
    not reaching or not being answered by the sidecar."""
    from .conftest import policy_toml, start_server

    srv = start_server(tmp_path, policy_toml(tmp_path, admin_uids=f"[{os.getuid()}]"))
    try:
        for words in (["relaod"], ["stats", "extra", "words"], ["dump", "x"]):
            out = _query("--admin", srv.admin, *words)
            assert out.returncode == 100, out
            assert "--admin takes one command: reload | stats | dump" in out.stderr
        # the server itself refuses a command line with words it does not take
        assert admin(srv.admin, "stats extra") == {
            "ok": False, "cause": "command", "error": "stats takes no arguments, got 'extra'"}
        assert admin(srv.admin, "bogus") == {
            "ok": False, "cause": "command",
            "error": "unknown command 'bogus' (reload, stats, dump)"}
        rules = tmp_path / "tcp.smtpd"
        good = rules.read_text()
        rules.write_text("1.2.3.4:allow\n1.2.3.5:frob\n")
        out = _query("--admin", srv.admin, "reload")
        assert out.returncode == 100, out
        reply = json.loads(out.stdout)
        assert reply["cause"] == "policy" and f"{rules}:2:" in reply["error"]
        rules.write_text(good)
        assert _query("--admin", srv.admin, "RELOAD").returncode == 0
    finally:
        srv.stop()
    gone = _query("--admin", srv.admin, "stats")
    assert gone.returncode == 111 and "cannot reach" in gone.stderr


def test_query_names_the_socket_it_could_not_use(served, tmp_path):
    """The policy (Postfix) socket waits for a line that never comes: after
    --timeout, say which socket acl query expected.  An empty ACL_SOCKET is
    the default socket, as an unset one is; a path no Unix socket can have
    is bad input."""
    out = _query("--socket", served.policy, "--timeout", "0.5", "sshd", "127.0.0.1", timeout=30)
    assert out.returncode == 111, out
    assert out.stderr == (f"acl query: fatal: {served.policy}: no answer in the binary "
                          f"protocol within 0.5 s: is it the query socket?\n")
    from acl.cli.query import DEFAULT_SOCKET

    if not os.path.exists(DEFAULT_SOCKET):
        env = dict(os.environ, ACL_SOCKET="")
        out = _query("sshd", "127.0.0.1", env=env)
        assert out.returncode == 111 and out.stderr.startswith(
            f"acl query: fatal: {DEFAULT_SOCKET}: "), out
    long = str(tmp_path / ("x" * 120))
    for args in (["--socket", long, "sshd", "127.0.0.1"], ["--admin", long, "stats"]):
        out = _query(*args)
        assert out.returncode == 100, out
        assert "a Unix socket path is at most 107 bytes, this one is" in out.stderr
    assert _query("--timeout", "0", "sshd", "127.0.0.1").returncode == 100
