"""``acl reload`` against a live ``acl serve``: it returns once the new
policy answers, exits 100 with ``file:line:column`` when the policy does not
load (the running one stays), 111 when no sidecar answers, and, for a policy
that names no admin socket, checks the policy and signals the pid it is
given -- never signalling one that does not load.

The servers watch no file (``watch = false``): every reload here is the one
``acl reload`` asked for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from acl.client import Client
from acl.model import Request, Verdict
from tests.conftest import stop_process

from .conftest import connect, policy_toml, start_server, wait_for

#: the clients each round allows a random part of (sshd; hosts.deny is ALL: ALL)
CLIENTS = [f"198.51.100.{i}" for i in range(1, 41)]
ROUNDS = 6
FILLER_LINES = 20_000


def acl_reload(*args, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acl", "reload", *args],
                          capture_output=True, text=True, timeout=timeout)


def policy(d: Path, *, admin: bool = True, admin_uids: str | None = None) -> Path:
    p = policy_toml(d, admin_uids=admin_uids or f"[{os.getuid()}]")
    text = p.read_text().replace("watch = true", "watch = false")
    if not admin:
        text = text.replace('admin = "admin.sock"\n', "")
    p.write_text(text)
    return p


#: hosts.allow lines for none of CLIENTS, so that each reload takes a while
#: (tens of microseconds a line: docs/operator-guide.md): a query sent
#: while it still runs gets the old policy's answer -- what a reload that
#: returned early would show
FILLER = "".join(f"sshd: 10.{i >> 8 & 255}.{i & 255}.1\n" for i in range(FILLER_LINES))


def allow_only(d: Path, allowed: set[str]) -> None:
    """hosts.allow: FILLER, then sshd for ``allowed`` (loopback when none),
    one address a line."""
    lines = [f"sshd: {a}\n" for a in sorted(allowed)] or ["sshd: 127.0.0.1\n"]
    (d / "hosts.allow").write_text(FILLER + "".join(lines))


def verdicts(srv) -> set[str]:
    with Client(srv.query, timeout=20) as c:
        ds = c.decide_many([Request("sshd", a) for a in CLIENTS])
    return {a for a, d in zip(CLIENTS, ds, strict=True) if d.verdict is Verdict.ALLOW}


def test_reload_returns_once_the_new_policy_answers(tmp_path):
    """Generated rounds: each allows another random part of CLIENTS; the
    first query after ``acl reload`` exits 0 -- no waiting, no retry --
    gets every client's verdict from the new file (the oracle: the set
    written).  Both ways of naming the socket: --admin, and --config."""
    config = policy(tmp_path)
    srv = start_server(tmp_path, config)
    rng = random.Random(2025)
    try:
        for n in range(ROUNDS):
            allowed = set(rng.sample(CLIENTS, rng.randrange(len(CLIENTS) + 1)))
            allow_only(tmp_path, allowed)
            how = ["--admin", srv.admin] if n % 2 else ["--config", str(config)]
            out = acl_reload(*how)
            assert out.returncode == 0, out
            assert out.stdout.startswith("acl reload: reloaded in "), out.stdout
            assert verdicts(srv) == allowed, n
        assert srv.text().count("reloaded (admin)") == ROUNDS
        # a file libwrap reads past a bad line: loaded, and the warning shown
        (tmp_path / "hosts.allow").write_text("sshd 10.0.0.1\nsshd: 127.0.0.1\n")
        out = acl_reload("--admin", srv.admin)
        assert out.returncode == 0, out
        assert 'hosts.allow:1:1: missing ":" separator: line ignored' in out.stderr, out.stderr
    finally:
        srv.stop()


def test_a_policy_that_does_not_load_is_exit_100_and_the_old_one_answers(tmp_path):
    srv = start_server(tmp_path, policy(tmp_path))
    try:
        allow_only(tmp_path, {CLIENTS[0]})
        assert acl_reload("--admin", srv.admin).returncode == 0
        rules = tmp_path / "tcp.smtpd"
        rules.write_text("1.2.3.4:allow\n1.2.3.5:frob\n")
        allow_only(tmp_path, set(CLIENTS))         # not read: the reload fails whole
        out = acl_reload("--admin", srv.admin)
        assert out.returncode == 100, out
        assert out.stderr.startswith(f"acl reload: fatal: {rules}:2:"), out.stderr
        assert out.stderr.endswith("; the running policy stays\n"), out.stderr
        assert out.stdout == ""
        assert verdicts(srv) == {CLIENTS[0]}
        assert f"reload (admin) failed, keeping the running policy: {rules}:2:" in srv.text()
        # the TOML itself broken: its own file:line:column, and nothing asked
        config = tmp_path / "policy.toml"
        good = config.read_text()
        config.write_text(good.replace("[sockets]", "[sockets", 1))
        out = acl_reload("--config", str(config))
        assert out.returncode == 100, out
        assert out.stderr.startswith(f"acl reload: fatal: {config}:2:"), out.stderr
        config.write_text(good)
        assert srv.proc.poll() is None and verdicts(srv) == {CLIENTS[0]}
    finally:
        srv.stop()


def test_no_sidecar_or_no_answer_is_111(tmp_path):
    srv = start_server(tmp_path, policy(tmp_path, admin_uids="[4242]"))
    try:
        # a uid the server does not serve: its refusal, and 111
        out = acl_reload("--admin", srv.admin)
        assert out.returncode == 111, out
        assert "is not allowed on the admin socket" in out.stderr, out.stderr
        # the query socket speaks another protocol
        out = acl_reload("--admin", srv.query, "--timeout", "2")
        assert out.returncode == 111, out
        assert "is it the admin socket?" in out.stderr, out.stderr
    finally:
        srv.stop()
    out = acl_reload("--admin", srv.admin)
    assert out.returncode == 111 and f"cannot reach {srv.admin}" in out.stderr, out


def test_a_reload_that_gave_up_in_the_backlog_is_not_run_later(tmp_path):
    """``acl reload`` whose connection waits in the admin socket's backlog
    (the server stopped by SIGSTOP here; out of descriptors, or a loop held
    up, in life) times out: exit 111, "no answer".  Before, once the server
    went on, it read that connection's ``reload`` and ran it, unseen: a
    reload the user was told had no answer.  A client still waiting is
    served (the control)."""
    srv = start_server(tmp_path, policy(tmp_path))
    waiting = None
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            out = acl_reload("--admin", srv.admin, "--timeout", "1")
            assert out.returncode == 111, out
            # what the silence says: not "is it the admin socket?"
            assert out.stderr == (f"acl reload: fatal: {srv.admin}: no answer within 1 s: the "
                                  "command was not read (the sidecar takes no connection now: "
                                  "stopped, or out of descriptors?)\n"), out.stderr
            waiting = connect(srv.admin, 30)
            waiting.sendall(b"reload\n")
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        answer = json.loads(waiting.makefile("rb").readline())
        assert answer["ok"] is True, answer
        wait_for(lambda: "not run" in srv.text() or srv.text().count("reloaded (admin)") > 1,
                 15, "the first connection's command to be dealt with")
        log = srv.text()
        assert "admin: 'reload' not run: its client had closed the connection" in log, log
        assert log.count("reloaded (admin)") == 1, log
    finally:
        if waiting is not None:
            waiting.close()
        srv.stop()


def test_usage_errors_are_100():
    for args in (["--pid", "123"], ["--admin", "a", "--config", "b"], ["--timeout", "0"],
                 ["--config", "p.toml", "--pid", "1"], ["--admin", "x" * 200]):
        out = acl_reload(*args)
        assert out.returncode == 100, (args, out)
        assert "fatal" in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_without_an_admin_socket_the_policy_is_checked_then_signalled(tmp_path):
    """No [sockets] admin: nothing can answer, so ``--pid`` is signalled --
    but only with a policy that loads.  The stand-in pid (``sleep``) shows
    that no SIGHUP was sent for a broken one: SIGHUP would kill it."""
    config = policy(tmp_path, admin=False)
    srv = start_server(tmp_path, config)
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        out = acl_reload("--config", str(config))
        assert out.returncode == 100 and "names no admin socket" in out.stderr, out
        rules = tmp_path / "tcp.smtpd"
        good = rules.read_text()
        rules.write_text("1.2.3.4:allow\n1.2.3.5:frob\n")
        out = acl_reload("--config", str(config), "--pid", str(stand_in.pid))
        assert out.returncode == 100, out
        assert out.stderr.startswith(f"acl reload: fatal: {rules}:2:"), out.stderr
        assert "nothing sent, the running policy stays" in out.stderr
        assert stand_in.poll() is None, "a policy that does not load was signalled"
        rules.write_text(good)
        allow_only(tmp_path, set(CLIENTS[:3]))
        out = acl_reload("--config", str(config), "--pid", str(srv.proc.pid))
        assert out.returncode == 0, out
        assert "warning" in out.stderr and f"sent SIGHUP to pid {srv.proc.pid}" in out.stderr
        wait_for(lambda: "reloaded (SIGHUP)" in srv.text(), 20, "the SIGHUP reload")
        assert verdicts(srv) == set(CLIENTS[:3])
    finally:
        stop_process(stand_in, signal.SIGKILL)
        srv.stop()


def test_pid_1_is_never_signalled(tmp_path, monkeypatch, capsys):
    """``--pid 1`` (an empty $MAINPID read as 1, a typo) with a policy that
    loads and names no admin socket: a usage error, and no signal is sent
    -- SIGHUP to init would reload the whole system's manager.  In this
    process, with os.kill replaced: nothing may reach the real pid 1."""
    from acl.cli import reload

    config = policy(tmp_path, admin=False)
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert reload.main(["--config", str(config), "--pid", "1"]) == 100
    assert sent == [] and "--pid 1: not a process acl could be" in capsys.readouterr().err
