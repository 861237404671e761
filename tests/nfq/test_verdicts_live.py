"""What the kernel does with each packet acl.nfq answers: held to the codes given.

``acl_nfq_verdict`` answers a batch in one message: the minority verdicts one
by one, then one NFQNL_MSG_VERDICT_BATCH that the kernel applies to every
queued id up to its own -- never up to an id still held for a name lookup,
which gets its own verdict later (``acl_nfq_verdict_one``); REJECT is
NF_REPEAT with a mark, for the firewall's REJECT rule.  Here a real queue in
a namespace made by the test gets generated batches of IPv4 and IPv6
datagrams, random codes (DROP, ACCEPT, REJECT, HOLD), held packets answered
later in random order and the rest by ``verdict_all``.  The rules accept a
packet that comes back with the REJECT mark, and each receiver reads the
mark its datagrams arrived with: so for every packet the test knows whether
the kernel dropped it, accepted it, or accepted it as REJECTed.  After each
verdict the kernel's own queue length must equal the packets held (a batch
verdict that reached a held id, or a REJECT without its mark that queued the
packet again, shows there at once).  The records are checked against what
was sent: id, hw protocol, mark, wire and captured length, ports.

And the ids acl never saw -- a socket too small for a burst -- are the
packets the kernel says it could not hand over (its user_dropped counter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SLOW

from . import netns

pytestmark = pytest.mark.root
WHY = netns.available()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

QUEUE = 49
PORT = 26210             # and PORT + 1, whose packets are marked before the queue
OVERFLOW_QUEUE, OVERFLOW_PORT = 51, 26212
MARK, PREMARK = 0xAC1, 0x5EED
#: ACL_SLOW=1 runs more seeds.
SEEDS = range(12) if SLOW else range(3)


@pytest.fixture(scope="module")
def ns():
    name = f"acltest-nfq-{os.getpid()}-verdicts"
    netns.run("ip", "netns", "add", name)
    try:
        netns.run("ip", "-n", name, "link", "set", "lo", "up")
        for tool in ("iptables", "ip6tables"):
            def rule(*args, tool=tool):
                netns.run("ip", "netns", "exec", name, tool, *args)
            rule("-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", str(PORT + 1),
                 "-j", "MARK", "--set-mark", str(PREMARK))
            rule("-A", "INPUT", "-p", "udp", "--dport", f"{PORT}:{PORT + 1}", "-m", "mark",
                 "--mark", str(MARK), "-j", "ACCEPT")
            rule("-A", "INPUT", "-p", "udp", "--dport", f"{PORT}:{PORT + 1}", "-j", "NFQUEUE",
                 "--queue-num", str(QUEUE))
        netns.run("ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-p", "udp", "--dport",
                  str(OVERFLOW_PORT), "-j", "NFQUEUE", "--queue-num", str(OVERFLOW_QUEUE))
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_packet_gets_the_verdict_it_was_given(ns, seed):
    out = netns.run("ip", "netns", "exec", ns, sys.executable, "-m", "tests.nfq.netns_tools",
                    "verdicts", "--queue", str(QUEUE), "--port", str(PORT), "--seed", str(seed),
                    "--mark", str(MARK), "--premark", str(PREMARK), cwd=netns.ROOT, timeout=60)
    r = json.loads(out.stdout)
    assert r["problems"] == []
    want = []
    for code, premarked in zip(r["given"], r["premarked"], strict=True):
        want.append({0: "drop", 1: f"accept {PREMARK if premarked else 0:#x}",
                     2: f"accept {MARK:#x}"}[code])
    assert r["outcome"] == want, list(zip(r["given"], r["outcome"], want, strict=True))
    # the kernel's queue held exactly the packets acl held (or had not read yet)
    assert [[what, held] for what, _q, held in r["queue_lengths"]] == \
        [[what, q] for what, q, _h in r["queue_lengths"]]
    assert r["requeued"] == 0 and r["gaps"] == 0 and r["nlerrors"] == 0


def test_ids_the_kernel_could_not_hand_over_are_the_gaps_it_counts(ns):
    # fail-closed, so the kernel counts each packet its netlink send lost
    out = netns.run("ip", "netns", "exec", ns, sys.executable, "-m", "tests.nfq.netns_tools",
                    "overflow", "--queue", str(OVERFLOW_QUEUE), "--port", str(OVERFLOW_PORT),
                    "--count", "40", cwd=netns.ROOT, timeout=60)
    r = json.loads(out.stdout)
    assert r["user_dropped"] > 0 and r["overruns"] > 0, r       # the socket did overflow
    assert r["gaps"] == r["user_dropped"], r
    assert len(r["read"]) + r["gaps"] == r["id_sequence"] == 41, r
    assert r["read"] == sorted(r["read"]) and r["waiting"] == 0, r
