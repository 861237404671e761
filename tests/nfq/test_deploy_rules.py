"""deploy/nfqueue/acl-nfqueue-rules: the rules it writes load, and delete leaves nothing.

Run inside a network namespace made here (tests/nfq/netns.py rules).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess

import pytest

from .netns import ROOT, run

SCRIPT = ROOT / "deploy" / "nfqueue" / "acl-nfqueue-rules"
SETTINGS = {"ACL_NFQ_QUEUES": "3", "ACL_NFQ_TCP": "22,5432", "ACL_NFQ_UDP": "53",
            "ACL_NFQ_REJECT_MARK": "0xac1"}

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not shutil.which("iptables"):
    pytest.skip("needs root and iptables", allow_module_level=True)


@pytest.fixture
def netns():
    name = f"acltest-nfq-{os.getpid()}-rules"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def script(ns, backend, action, **extra):
    env = {**os.environ, **SETTINGS, **extra}
    return run("ip", "netns", "exec", ns, "sh", str(SCRIPT), backend, action, env=env,
               check=False)


def saved(ns, tool, table="filter"):
    return run("ip", "netns", "exec", ns, tool, "-t", table, "-S").stdout


def everything(ns):
    return {(tool, table): saved(ns, tool, table)
            for tool in ("iptables", "ip6tables") for table in ("filter", "security")}


@pytest.mark.parametrize("tool", ["iptables", "ip6tables"])
def test_iptables_rules_queue_only_new_connections_with_bypass_and_delete_cleanly(netns, tool):
    before = saved(netns, tool)
    out = script(netns, "iptables", "add")
    assert out.returncode == 0, out.stderr
    rules = saved(netns, tool)
    queue = [r for r in rules.splitlines() if "NFQUEUE" in r]
    assert len(queue) == 2
    for r in queue:
        assert "--queue-bypass" in r and "--ctstate NEW" in r and "--queue-num 3" in r
        assert "-m connmark ! --mark 0x10000000/0x10000000" in r
    assert any("--tcp-flags FIN,SYN,RST,ACK SYN" in r and "22,5432" in r for r in queue)
    reject = [r for r in rules.splitlines() if "REJECT" in r]
    assert any("tcp-reset" in r for r in reject)
    # the mark rules come before the queue rules in the chain
    chain = [r for r in rules.splitlines() if r.startswith("-A ACL_NFQ")]
    assert max(i for i, r in enumerate(chain) if "-m mark" in r) < min(
        i for i, r in enumerate(chain) if "NFQUEUE" in r)
    assert "-A INPUT -j ACL_NFQ" in rules.splitlines()
    # the flows let in get the "seen" bit after the filter table
    seen = saved(netns, tool, "security").splitlines()
    assert "-A INPUT -j ACL_NFQ_SEEN" in seen
    marks = [r for r in seen if "CONNMARK" in r]
    assert len(marks) == 2 and all("--ctstate NEW" in r for r in marks)
    assert script(netns, "iptables", "delete").returncode == 0
    assert saved(netns, tool) == before
    assert "ACL_NFQ" not in saved(netns, tool, "security")


def test_long_port_lists_are_split_and_a_second_add_changes_nothing(netns):
    # multiport takes 15 slots (a range counts two): 20 ports and a range
    # need two rules per protocol family.
    ports = ",".join(str(p) for p in range(1000, 1020)) + ",2000:2100"
    out = script(netns, "iptables", "add", ACL_NFQ_TCP=ports)
    assert out.returncode == 0, out.stderr
    after = everything(netns)
    for (_tool, table), rules in after.items():
        if table != "filter":
            continue
        tcp = [r for r in rules.splitlines() if "NFQUEUE" in r and "-p tcp" in r]
        assert len(tcp) == 2
        listed = ",".join(r.split("--dports ")[1].split()[0] for r in tcp)
        assert listed == ports
    again = script(netns, "iptables", "add", ACL_NFQ_TCP=ports)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert everything(netns) == after
    assert script(netns, "iptables", "delete").returncode == 0


def test_a_rule_the_kernel_refuses_leaves_nothing_behind(netns):
    before = everything(netns)
    out = script(netns, "iptables", "add", ACL_NFQ_UDP="53,70000")
    assert out.returncode != 0
    assert everything(netns) == before


def test_queue_balance_for_several_queues(netns):
    out = script(netns, "iptables", "print", ACL_NFQ_QUEUES="0:3")
    assert "--queue-balance 0:3 --queue-cpu-fanout --queue-bypass" in out.stdout


def _kernel_has_nft_queue() -> bool | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return None
    return "CONFIG_NFT_QUEUE=y" in config or "CONFIG_NFT_QUEUE=m" in config


def test_nft_rules_parse_and_load_where_the_kernel_has_nft_queue(netns):
    if not shutil.which("nft"):
        pytest.skip("nft not installed")
    text = script(netns, "nft", "print").stdout
    assert "queue num 3 bypass" in text and "ct state new" in text
    out = run("ip", "netns", "exec", netns, "nft", "-c", "-f", "-", input=text, check=False)
    if _kernel_has_nft_queue() is False:
        # This kernel lacks nft_queue: everything parses, only the kernel
        # refuses the queue statements.
        errors = [line for line in out.stderr.splitlines() if "Error" in line]
        assert errors and all("Could not process rule" in e for e in errors), out.stderr
        assert out.stderr.count("queue num") == len(errors)
        # the same rules, matches and all, with the queue statement swapped
        without = text.replace("queue num 3 bypass", "accept")
        assert "queue num" not in without
        out = run("ip", "netns", "exec", netns, "nft", "-c", "-f", "-", input=without,
                  check=False)
    assert out.returncode == 0, out.stderr
