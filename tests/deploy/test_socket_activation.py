"""acl.service's sockets reach ``acl serve`` as systemd would pass them.

No systemd runs here, so systemd's own ``systemd-socket-activate`` plays the
manager's part: it listens on the sockets named by the shipped units
(``Sockets=`` of acl.service, ``ListenStream=`` and ``FileDescriptorName=``
of each socket unit; paths moved under the test's tmp dir, the metrics port
into the area's range), passes them as LISTEN_FDS/LISTEN_FDNAMES, and runs
ExecStart's command line on the first connection.  A NOTIFY_SOCKET made by
the test receives what ``Type=notify`` waits for, and ExecReload's SIGHUP
must produce RELOADING=1 then READY=1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from acl.model import Request, Verdict
from tests.conftest import stop_process

from .conftest import DEPLOY, acl_entry_point, free_ports
from .sidecar import Client, scrape, wait_for

pytestmark = pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                                reason="systemd-socket-activate not installed")


def directive(text: str, key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", text, re.M)
    assert m, key
    return m.group(1).strip()


def passed_env() -> list[str]:
    """systemd-socket-activate hands the program only the variables it is
    given: pass PYTHONPATH on, so the acl under test is the one that runs."""
    path = os.environ.get("PYTHONPATH")
    return ["-E", f"PYTHONPATH={path}"] if path else []


def postfix_ask(path, client: str) -> str:
    """One policy delegation request, as smtpd sends it; the action line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"request=smtpd_access_policy\nprotocol_state=RCPT\n"
                  f"client_address={client}\nclient_name=unknown\n\n".encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()[0]


def test_units_sockets_drive_acl_serve(tmp_path):
    (port,) = free_ports("socket_activation", 1)
    service = (DEPLOY / "systemd" / "acl.service").read_text()
    listens, names = [], []
    # Sockets= and the optional Postfix socket (passed through its Service=).
    for unit in [*directive(service, "Sockets").split(), "acl-policy.socket"]:
        text = (DEPLOY / "systemd" / unit).read_text()
        assert directive(text, "Service") == "acl.service"
        where = directive(text, "ListenStream")
        where = (where.replace("/run/acl/", f"{tmp_path}/")
                 .replace("/var/spool/postfix/acl/", f"{tmp_path}/")
                 .replace("127.0.0.1:9464", f"127.0.0.1:{port}"))
        listens += ["-l", where]
        names.append(directive(text, "FileDescriptorName"))
    assert names == ["query", "admin", "metrics", "policy"]

    # The policy names other paths and no metrics address: whatever answers
    # below was passed in by the "manager", not bound by acl.
    (tmp_path / "hosts.allow").write_text("alpha, smtpd: 127.0.0.0/255.0.0.0\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    config = tmp_path / "policy.toml"
    config.write_text(textwrap.dedent("""\
        [sockets]
        query = "not-this-query.sock"
        admin = "not-this-admin.sock"
        policy = "not-this-policy.sock"
        admin_uids = [UID]
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["alpha", "smtpd"]
        [run]
        watch = false
        """).replace("UID", str(os.getuid())))
    exec_start = directive(service, "ExecStart").split()
    assert exec_start[:2] == ["/usr/local/bin/acl", "serve"]
    argv = [acl_entry_point(), *exec_start[1:]]
    argv[argv.index("/etc/acl/policy.toml")] = str(config)

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    log = open(tmp_path / "activate.log", "wb")
    proc = subprocess.Popen(["systemd-socket-activate", *listens, "--fdname=" + ":".join(names),
                             "-E", f"NOTIFY_SOCKET={tmp_path / 'notify'}", *passed_env(),
                             *argv],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (tmp_path / "admin.sock").exists(), 10, proc=proc)
        # First connection (a scrape) starts the sidecar; it says READY=1.
        body = wait_for(lambda: scrape(port, 2.0), 20, proc=proc)
        assert "acl_core_info" in body
        assert notify.recv(4096) == b"READY=1"
        client = Client(tmp_path / "query.sock")
        try:
            (reply,) = client.decide_many([Request("alpha", "127.0.0.1")])
            assert reply.decision.verdict is Verdict.ALLOW
        finally:
            client.close()
        admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        admin.connect(str(tmp_path / "admin.sock"))
        admin.close()
        # Postfix's question on the passed policy socket (policy_service "smtpd").
        assert postfix_ask(tmp_path / "policy.sock", "127.0.0.1") == "action=DUNNO"
        assert postfix_ask(tmp_path / "policy.sock", "192.0.2.1").startswith("action=REJECT ")
        for name in ("query", "admin", "policy"):
            assert not (tmp_path / f"not-this-{name}.sock").exists()
        # ExecReload= ("!": as root, which admin_uids serves; here the
        # test's own uid) over the passed admin socket: it returns after
        # RELOADING=1 and READY=1, and says so
        reload = directive(service, "ExecReload")
        assert reload.startswith("!/usr/local/bin/acl reload ")
        argv = [acl_entry_point(), *reload.split()[1:]]
        argv[argv.index("/run/acl/admin.sock")] = str(tmp_path / "admin.sock")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith("acl reload: reloaded in "), out
        got = notify.recv(4096).decode()
        assert got.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"
        # SIGHUP, as a logrotate hook or an older unit sends it, reloads too
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"
    finally:
        notify.close()
        stop_process(proc)
        log.close()
    text = (tmp_path / "activate.log").read_text()
    for name in names:
        assert re.search(rf"acl serve: {name} on fd:\d+ \(systemd\)", text), text


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare not installed")
def test_a_socket_it_cannot_bind_is_named_with_its_path(tmp_path):
    """What acl.service without acl-policy.socket did: the policy socket's
    directory is read-only (as ProtectSystem=strict makes /run and /var), the
    other sockets are passed.  The fatal line names the socket and its path."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "hosts.allow").write_text("smtpd: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("")
    config = tmp_path / "policy.toml"
    config.write_text(textwrap.dedent(f"""\
        [sockets]
        query = "{run}/query.sock"
        policy = "{run}/policy.sock"
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        [run]
        watch = false
        """))
    script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && "
              f"exec systemd-socket-activate -l {tmp_path}/q.sock --fdname=query "
              f"{shlex.join(passed_env())} {acl_entry_point()} serve --config {config}")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = _output_of_first_start(proc, tmp_path / "q.sock")
    assert proc.returncode == 111, out
    assert (f"acl serve: fatal: cannot listen: policy socket {run}/policy.sock: "
            "Read-only file system (under systemd, let a socket unit make it and pass it "
            "as FileDescriptorName=policy") in out, out


def _output_of_first_start(proc: subprocess.Popen, listen: Path) -> str:
    """Connect to ``listen`` once it exists (which starts ``acl serve``) and
    return what the run printed by the time it exits (it is stopped anyway)."""
    try:
        wait_for(listen.exists, 10, proc=proc)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(listen))
            out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    return out


def _activate(tmp_path, listens: list[str], fdnames: str | None, config) -> subprocess.Popen:
    """systemd-socket-activate listening on ``listens``, naming them
    ``fdnames`` (None: no --fdname, so no LISTEN_FDNAMES at all), running
    ``acl serve --config`` on the first connection."""
    names = [f"--fdname={fdnames}"] if fdnames is not None else []
    return subprocess.Popen(["systemd-socket-activate", *listens, *names, *passed_env(),
                             acl_entry_point(), "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _config(tmp_path):
    (tmp_path / "hosts.allow").write_text("smtpd: 127.0.0.1\nsshd: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    config = tmp_path / "policy.toml"
    config.write_text(textwrap.dedent("""\
        [sockets]
        query = "not-this-query.sock"
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        [run]
        watch = false
        """))
    return config


def test_a_passed_socket_with_a_name_acl_does_not_know_is_refused(tmp_path):
    """The audit's unit acl-metrics-remote.socket without FileDescriptorName=
    (systemd names the fd after the unit): it used to become the Postfix
    policy socket, on TCP.  Now the start is refused, naming it."""
    (port,) = free_ports("socket_activation", 1)
    proc = _activate(tmp_path, ["-l", f"{tmp_path}/q.sock", "-l", f"{tmp_path}/a.sock",
                                "-l", f"127.0.0.1:{port}"],
                     "query:admin:acl-metrics-remote.socket", _config(tmp_path))
    out = _output_of_first_start(proc, tmp_path / "q.sock")
    assert proc.returncode == 100, out
    assert ("acl serve: fatal: passed socket fd 5 is named 'acl-metrics-remote.socket', "
            "not one of query, policy, admin, metrics: set FileDescriptorName=") in out, out
    assert " on fd:" not in out                    # nothing was served
    assert not (tmp_path / "not-this-query.sock").exists()


def test_sockets_passed_without_names_take_the_documented_order(tmp_path):
    """No LISTEN_FDNAMES at all (systemd-socket-activate without --fdname):
    query, policy, admin, metrics in turn (docs/configuration.md)."""
    proc = _activate(tmp_path, ["-l", f"{tmp_path}/q.sock", "-l", f"{tmp_path}/p.sock"],
                     None, _config(tmp_path))
    try:
        wait_for(lambda: (tmp_path / "p.sock").exists(), 10, proc=proc)
        assert postfix_ask(tmp_path / "p.sock", "127.0.0.1") == "action=DUNNO"
        client = Client(tmp_path / "q.sock")
        try:
            (reply,) = client.decide_many([Request("sshd", "127.0.0.1")])
            assert reply.decision.verdict is Verdict.ALLOW
        finally:
            client.close()
    finally:
        stop_process(proc)
        out = proc.stdout.read()
    assert re.search(r"acl serve: query on fd:3 \(systemd\)", out), out
    assert re.search(r"acl serve: policy on fd:4 \(systemd\)", out), out
    assert not (tmp_path / "not-this-query.sock").exists()
