"""The capability sets the units grant are the ones ``acl serve`` needs.

``setpriv`` (util-linux) applies a unit's ``CapabilityBoundingSet=`` /
``AmbientCapabilities=`` and ``NoNewPrivileges=`` to a real ``acl serve``,
inside a network namespace the test makes (``unshare --net``) so the NFQUEUE
it binds is private:

* acl.service's empty set: the sidecar on Unix sockets runs;
* acl-nfqueue.service's set (CAP_NET_ADMIN only): the NFQUEUE front door
  binds its queue and the sidecar comes up;
* the empty set with an ``[nfqueue]`` policy: binding the queue is refused
  (EPERM), so CAP_NET_ADMIN is needed, not merely granted.

Under setpriv the process stays uid 0, so those show the capabilities, not
the user switch.  ``[run] user`` is shown live: acl serve started as root
with ``user = "nobody"`` and ``[nfqueue]`` keeps CAP_NET_ADMIN alone across
the switch (it already imported what it runs, so Python living under /root
does not matter), its NFQUEUE door lets an allowed client in and keeps a
denied one out, and when the capability cannot be kept it refuses to start
(111) instead of leaving every queued connection hanging.  A door that has
lost the capability logs the refused verdicts (tests/deploy/nfq_refused.py).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import stop_process

from .conftest import DEPLOY, ROOT, acl_entry_point
from .netns import CLIENT_ADDRS, SERVER_ADDR, Netns, link

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("unshare") is None,
                       reason="util-linux setpriv/unshare not installed"),
]


def caps_of(unit: str) -> list[str]:
    text = (DEPLOY / "systemd" / unit).read_text()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    assert ambient == bounding and re.search(r"^NoNewPrivileges=yes$", text, re.M)
    return [c.removeprefix("CAP_").lower() for c in bounding]


#: The [nfqueue] body of the capability tests (the queue is bound, the port never used).
NFQ_TABLE = 'queues = [7]\nports = { 27303 = "beta" }\n'


def policy(tmp_path, nfqueue: str = "", run: str = "", allow: str = "beta: ALL\n",
           deny: str = "") -> Path:
    """hosts_access for service beta, then an ``[nfqueue]`` and a ``[run]`` body."""
    (tmp_path / "hosts.allow").write_text(allow)
    (tmp_path / "hosts.deny").write_text(deny)
    text = textwrap.dedent("""\
        [sockets]
        query = "query.sock"
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["beta"]
        """)
    if nfqueue:
        text += "[nfqueue]\n" + nfqueue
    text += "[run]\nwatch = false\n" + run
    (tmp_path / "policy.toml").write_text(text)
    return tmp_path / "policy.toml"


def run_with_caps(tmp_path, caps: list[str], nfqueue: bool) -> tuple[str, int | None]:
    """Start acl serve under the capability set; its log once ready (or its exit)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace and set capabilities")
    keep = "".join(f",+{c}" for c in caps)
    argv = ["unshare", "--net", "setpriv", "--no-new-privs", f"--bounding-set=-all{keep}",
            f"--inh-caps=-all{keep}", f"--ambient-caps=-all{keep}",
            acl_entry_point(), "serve", "--config", str(policy(tmp_path, NFQ_TABLE if nfqueue else ""))]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and proc.poll() is None:
            if "acl serve: ready" in log.read_text():
                break
            time.sleep(0.1)
        code = proc.poll()
    finally:
        stop_process(proc)
    return log.read_text(), code


def test_acl_service_needs_no_capability(tmp_path):
    assert caps_of("acl.service") == []
    text, code = run_with_caps(tmp_path, [], nfqueue=False)
    assert code is None and "acl serve: ready" in text, text


def test_nfqueue_service_capability_suffices(tmp_path):
    caps = caps_of("acl-nfqueue.service")
    assert caps == ["net_admin"]
    text, code = run_with_caps(tmp_path, caps, nfqueue=True)
    assert code is None, text
    assert "acl serve: nfqueue on queues 7" in text and "acl serve: ready" in text, text


def test_nfqueue_needs_that_capability(tmp_path):
    text, code = run_with_caps(tmp_path, [], nfqueue=True)
    assert code == 111, text
    assert "cannot bind NFQUEUE 7: Operation not permitted" in text, text


# -- [run] user with [nfqueue], live ------------------------------------------

#: Inside the test's own network namespaces, where nothing else listens.
NFQ_PORT = 27501
QUEUE = 7
RULES_SCRIPT = DEPLOY / "nfqueue" / "acl-nfqueue-rules"
ALLOWED, DENIED = CLIENT_ADDRS
#: One connection to SERVER:PORT from each source address; prints
#: {source: connected?}.
CONNECT = """
import json, socket, sys
server, port = sys.argv[1], int(sys.argv[2])
out = {}
for src in sys.argv[3:]:
    c = socket.socket()
    c.settimeout(3)
    c.bind((src, 0))
    try:
        c.connect((server, port))
        out[src] = True
    except OSError:
        out[src] = False
    c.close()
print(json.dumps(out))
"""
LISTEN = ("import socket, sys, time; s = socket.create_server((sys.argv[1], int(sys.argv[2]))); "
          "print('up', flush=True); time.sleep(120)")


def live_nfqueue_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, iptables and an NFQUEUE")
    from acl import nfq
    if not nfq.AVAILABLE:
        pytest.skip("acl built without libnetfilter_queue: no NFQUEUE front door")
    if shutil.which("iptables") is None or shutil.which("nsenter") is None:
        pytest.skip("iptables/nsenter not installed")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")


def run_user_policy(tmp_path):
    return policy(tmp_path, nfqueue=f'queues = [{QUEUE}]\nports = {{ {NFQ_PORT} = "beta" }}\n',
                  run='user = "nobody"\n', allow=f"beta: {ALLOWED}\n", deny="beta: ALL\n")


def start_in(ns: Netns, argv: list[str], log) -> tuple[subprocess.Popen, str, int | None]:
    """Start ``argv`` in ``ns``; its log once ready (or its exit)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(ns.cmd(*argv), stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + 20
    while time.monotonic() < end and proc.poll() is None:
        if "acl serve: ready" in log.read_text():
            break
        time.sleep(0.1)
    return proc, log.read_text(), proc.poll()


def add_rules(ns: Netns) -> None:
    env = dict(os.environ, ACL_NFQ_QUEUES=str(QUEUE), ACL_NFQ_TCP=str(NFQ_PORT))
    subprocess.run(ns.cmd("sh", str(RULES_SCRIPT), "iptables", "add"), env=env, check=True,
                   capture_output=True, timeout=30)


def listen_in(ns: Netns) -> subprocess.Popen:
    proc = subprocess.Popen(ns.cmd(sys.executable, "-c", LISTEN, SERVER_ADDR, str(NFQ_PORT)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def status_fields(pid: int) -> dict[str, str]:
    text = open(f"/proc/{pid}/status").read()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.mark.live
def test_run_user_keeps_only_net_admin_and_the_door_answers(tmp_path):
    live_nfqueue_skip()
    config = run_user_policy(tmp_path)
    srv, cli = Netns(), Netns()
    procs = []
    try:
        link(srv, cli)
        proc, text, code = start_in(srv, [acl_entry_point(), "serve", "--config", str(config)],
                                    tmp_path / "serve.log")
        procs.append(proc)
        assert code is None and "acl serve: ready" in text, text
        add_rules(srv)
        procs.append(listen_in(srv))
        out = cli.run(sys.executable, "-c", CONNECT, SERVER_ADDR, str(NFQ_PORT), ALLOWED, DENIED)
        got = json.loads(out.stdout)
        st = status_fields(proc.pid)
    finally:
        for p in procs:
            stop_process(p)
        cli.close()
        srv.close()
    text = (tmp_path / "serve.log").read_text()
    assert got == {ALLOWED: True, DENIED: False}, text
    nobody = pwd.getpwnam("nobody").pw_uid
    assert st["Uid"].split() == [str(nobody)] * 4
    net_admin = f"{1 << 12:016x}"
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == (net_admin,) * 3, st
    assert (st["CapInh"], st["CapAmb"]) == ("0" * 16,) * 2, st
    assert "keeping CAP_NET_ADMIN only" in text and "refused" not in text, text


@pytest.mark.live
def test_run_user_refuses_to_start_when_the_capability_cannot_be_kept(tmp_path):
    """keep_caps locked off (setpriv): no silent hang, a fatal start naming the capability."""
    live_nfqueue_skip()
    if shutil.which("setpriv") is None:
        pytest.skip("util-linux setpriv not installed")
    config = run_user_policy(tmp_path)
    ns = Netns()
    proc = None
    try:
        proc, text, code = start_in(ns, ["setpriv", "--securebits", "+keep_caps_locked",
                                         acl_entry_point(), "serve", "--config", str(config)],
                                    tmp_path / "serve.log")
    finally:
        if proc is not None:
            stop_process(proc)
        ns.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 111, text
    assert ("acl serve: fatal: [run] user 'nobody': cannot keep CAP_NET_ADMIN across the "
            "user change") in text, text
    assert "ready" not in text


@pytest.mark.live
def test_a_door_without_the_capability_logs_the_refused_verdicts(tmp_path):
    live_nfqueue_skip()
    srv, cli = Netns(), Netns()
    door = None
    try:
        link(srv, cli)
        add_rules(srv)
        door = subprocess.Popen(srv.cmd(sys.executable, "-m", "tests.deploy.nfq_refused",
                                        "--dir", str(tmp_path), "--queue", str(QUEUE),
                                        "--addr", SERVER_ADDR, "--port", str(NFQ_PORT),
                                        "--seconds", "5"),
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert door.stdout.readline().strip() == "ready"
        out = cli.run(sys.executable, "-c", CONNECT, SERVER_ADDR, str(NFQ_PORT), ALLOWED)
        assert json.loads(out.stdout) == {ALLOWED: False}
        got = json.loads(door.stdout.readline())
        door.wait(timeout=30)
    finally:
        if door is not None:
            stop_process(door)
        cli.close()
        srv.close()
    # Logged (the first at once), naming the errno; and counted.
    assert got["logged"], got
    assert got["logged"][0].startswith(f"nfqueue {QUEUE}: the kernel refused "), got
    assert "last: Operation not permitted" in got["logged"][0], got
    assert got["refused"] >= 1, got
