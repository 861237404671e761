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

The process stays uid 0 (Python lives under /root here), so this shows the
capabilities, not the user switch; ``User=acl`` is shown by the daemontools
test's setuidgid where the machine allows it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time

import pytest

from tests.conftest import stop_process

from .conftest import DEPLOY, acl_entry_point

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


def policy(tmp_path, nfqueue: bool):
    (tmp_path / "hosts.allow").write_text("beta: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    text = textwrap.dedent("""\
        [sockets]
        query = "query.sock"
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["beta"]
        [run]
        watch = false
        """)
    if nfqueue:
        text += '[nfqueue]\nqueues = [7]\nports = { 27303 = "beta" }\n'
    (tmp_path / "policy.toml").write_text(text)
    return tmp_path / "policy.toml"


def run_with_caps(tmp_path, caps: list[str], nfqueue: bool) -> tuple[str, int | None]:
    """Start acl serve under the capability set; its log once ready (or its exit)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace and set capabilities")
    keep = "".join(f",+{c}" for c in caps)
    argv = ["unshare", "--net", "setpriv", "--no-new-privs", f"--bounding-set=-all{keep}",
            f"--inh-caps=-all{keep}", f"--ambient-caps=-all{keep}",
            acl_entry_point(), "serve", "--config", str(policy(tmp_path, nfqueue))]
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
