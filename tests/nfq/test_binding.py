"""acl.nfq.Queue (the cffi binding's Python layer) against the kernel.

In a network namespace made here: loopback only, one iptables rule queueing
UDP to one port.  Batches are bounded by ``batch``; verdicts per packet in one
message; the kernel's counters read back; errors are OSError.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from . import netns

pytestmark = pytest.mark.root
WHY = netns.available()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

QUEUE = 48
PORT = 26200


@pytest.fixture
def ns():
    name = f"acltest-nfq-{os.getpid()}-bind"
    netns.run("ip", "netns", "add", name)
    try:
        netns.run("ip", "-n", name, "link", "set", "lo", "up")
        netns.run("ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-p", "udp",
                  "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE),
                  "--queue-bypass")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def test_queue_reads_in_batches_answers_per_packet_and_reports(ns):
    out = netns.run("ip", "netns", "exec", ns, sys.executable, "-m", "tests.nfq.netns_tools",
                    "binding", "--queue", str(QUEUE), "--port", str(PORT), cwd=netns.ROOT)
    r = json.loads(out.stdout)
    assert r["second_bind"] in (errno.EBUSY, errno.EEXIST, errno.EPERM)
    assert (r["first_batch"], r["second_batch"], r["third_batch"]) == (8, 4, 0)
    assert r["ids"] == list(range(1, 9))
    assert r["keys"] == [["127.0.0.1", PORT, 17]]
    # first batch: even positions accepted, odd dropped; second batch all accepted
    assert r["delivered"] == ["d00", "d02", "d04", "d06", "d08", "d09", "d10", "d11"]
    assert r["stats"] == [QUEUE, 0, 64, 12]
    assert r["gaps"] == 0 and r["nlerrors"] == 0
    assert r["closed"] and r["unbound"]


def test_binding_without_the_library_is_enosys(monkeypatch):
    from acl import nfq

    monkeypatch.setattr(nfq, "AVAILABLE", False)
    with pytest.raises(OSError) as e:
        nfq.Queue(1)
    assert e.value.errno == errno.ENOSYS
