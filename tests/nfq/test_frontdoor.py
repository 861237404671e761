"""The NFQUEUE front door without a kernel: records in, verdict codes out.

The engine is the real one (tests/nfq/policies.py); packets are built by the
codec's builder and laid out exactly as ``acl._nfq`` lays out a batch.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import nfq
from acl.errors import PolicyError
from acl.serve import nfqueue as door_module
from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor
from acl.wire.packet import UDP, build
from tests.conftest import SLOW
from tests.doc_metrics import metrics_table

from .policies import engine_denying

#: ACL_SLOW=1 runs five times the examples.
SCALE = 5 if SLOW else 1

ROOT = Path(__file__).resolve().parents[2]
STRIDE = 16 + 128


def records(packets, marks=None):
    """Lay packets out as acl._nfq's fixed-stride batch records."""
    out = bytearray()
    for i, pkt in enumerate(packets):
        cap = pkt[:128]
        mark = marks[i] if marks else 0
        out += nfq.RECORD.pack(i + 1, 0x0800, len(cap), mark, len(pkt)) + cap
        out += bytes(STRIDE - nfq.RECORD_HEADER - len(cap))
    return bytes(out)


def door(reject="drop", rate=0.0, burst=0.0, **extra):
    table = {"queues": [7], "ports": {"22": "sshd", "7": "echo", "10.9.9.9:2222": "sshd"},
             "reject": reject, **extra}
    engine = engine_denying(["10.66.0.0/16", "fd00:66::/32"], rate=rate, burst=burst)
    return NfqueueFrontDoor(engine, NfqueueConfig.from_table(table), clock=lambda: 1000.0)


def test_denied_sources_drop_allowed_accept_unmapped_accept():
    d = door()
    pkts = [build("10.66.1.1", "10.9.9.9", 40000, 22), build("10.5.1.1", "10.9.9.9", 40001, 22),
            build("fd00:66::1", "fd00::9", 40002, 7, UDP), build("fd00:5::1", "fd00::9", 1, 7, UDP),
            build("10.66.1.1", "10.9.9.9", 40003, 8080)]
    codes = d.decide_records(7, records(pkts), len(pkts), STRIDE)
    assert list(codes) == [nfq.DROP, nfq.ACCEPT, nfq.DROP, nfq.ACCEPT, nfq.ACCEPT]
    assert d.packets == {7: 5}
    assert d.unmapped == 1
    assert d.verdicts == {("sshd", "deny", "address"): 1, ("sshd", "allow", "ok"): 1,
                          ("echo", "deny", "address"): 1, ("echo", "allow", "ok"): 1}


def test_reset_mode_answers_reject_and_a_marked_packet_coming_back_is_dropped():
    d = door(reject="reset")
    pkts = [build("10.66.1.1", "10.9.9.9", 1, 22), build("10.66.1.1", "10.9.9.9", 1, 22)]
    codes = d.decide_records(7, records(pkts, marks=[0, d.config.reject_mark]), 2, STRIDE)
    assert list(codes) == [nfq.REJECT, nfq.DROP]
    assert d.looped == 1


def test_address_specific_port_names_its_service():
    d = door()
    assert d.service_for(bytes([10, 9, 9, 9]), 2222) == "sshd"
    assert d.service_for(bytes([10, 9, 9, 8]), 2222) is None
    assert d.service_for(bytes([10, 9, 9, 8]), 22) == "sshd"


def test_per_source_rate_limit_trips_and_recovers():
    now = [1000.0]
    d = door(rate=1.0, burst=2.0)
    d.clock = lambda: now[0]
    pkts = [build("10.5.5.5", "10.9.9.9", 40000 + i, 22) for i in range(4)]
    assert list(d.decide_records(7, records(pkts), 4, STRIDE)) == [1, 1, 0, 0]
    assert d.verdicts[("sshd", "deny", "rate")] == 2
    now[0] += 1.0
    assert list(d.decide_records(7, records(pkts[:2]), 2, STRIDE)) == [1, 0]


@settings(max_examples=50 * SCALE, deadline=None)
@given(st.lists(st.binary(max_size=140), min_size=1, max_size=20), st.sampled_from(["drop", "accept"]))
def test_fuzz_malformed_packets_get_the_default_verdict_and_are_counted(blobs, malformed):
    """Garbage in a batch: each undecodable packet counted, given the default, no crash."""
    d = door(malformed=malformed)
    good = build("10.5.5.5", "10.9.9.9", 40000, 22)
    pkts = [*blobs, good]
    codes = d.decide_records(7, records(pkts), len(pkts), STRIDE)
    assert codes[-1] == nfq.ACCEPT
    from acl.wire.packet import PacketError, decode
    bad = 0
    for blob, code in zip(blobs, codes, strict=False):
        try:
            decode(blob[:128], wire_length=len(blob))
        except PacketError:
            bad += 1
            assert code == (nfq.DROP if malformed == "drop" else nfq.ACCEPT)
    assert d.decode_errors == bad
    assert sum(d.decode_error_codes.values()) == bad


class ExplodingEngine:
    """An engine whose batch call fails and whose single call fails for one client."""

    def __init__(self, real):
        self.real = real

    def decide_many(self, requests, now):
        raise RuntimeError("batch path broken")

    def decide(self, request, now):
        if request.client == "10.7.7.7":
            raise RuntimeError("this one is broken")
        return self.real.decide(request, now)


def test_engine_failures_fall_back_one_by_one_and_never_stop_the_door():
    d = door()
    d.engine = ExplodingEngine(d.engine)
    pkts = [build("10.7.7.7", "10.9.9.9", 1, 22), build("10.5.5.5", "10.9.9.9", 1, 22)]
    assert list(d.decide_records(7, records(pkts), 2, STRIDE)) == [nfq.DROP, nfq.ACCEPT]
    assert d.engine_errors == 1
    assert d.verdicts[("sshd", "deny", "error")] == 1


@pytest.mark.parametrize(("table", "message"), [
    ({"ports": {}}, "ports must map"),
    ({"ports": {"0": "x"}}, "out of range"),
    ({"ports": {"ssh": "x"}}, "not a number"),
    ({"ports": {"fd00::1:22": "x"}}, r"\[ADDR\]:PORT"),
    ({"ports": {"10.0.0.300:22": "x"}}, "not a numeric address"),
    ({"ports": {"22": "x"}, "queues": [70000]}, "queues"),
    ({"ports": {"22": "x"}, "reject": "icmp"}, "reject must be"),
    ({"ports": {"22": "x"}, "bogus": 1}, "unknown key 'bogus'"),
    ({"ports": {"22": "x"}, "copy_range": 10}, "copy_range"),
])
def test_bad_configuration_is_a_policy_error_naming_the_key(table, message):
    with pytest.raises(PolicyError, match=message):
        NfqueueConfig.from_table(table, path="p.toml")


def test_ipv6_address_ports_are_bracketed():
    cfg = NfqueueConfig.from_table({"ports": {"[fd00::1]:22": "sshd", "53": "dns"}})
    assert cfg.addr_ports == {(bytes.fromhex("fd00" + "00" * 13 + "01"), 22): "sshd"}
    assert cfg.ports == {53: "dns"}


def test_metric_families_are_the_documented_names():
    d = door()
    pkts = [build("10.66.1.1", "10.9.9.9", 1, 22), b"\x00garbage"]
    d.decide_records(7, records(pkts), 2, STRIDE)
    fams = {f.name: f for f in d.metric_families()}
    documented = {name for name in metrics_table() if name.startswith("acl_nfqueue_")}
    exported = {n + ("_total" if f.type == "counter" else "") for n, f in fams.items()}
    assert exported == documented
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("acl_nfqueue_packets_total", (("queue", "7"),))] == 2
    assert samples[("acl_nfqueue_decode_errors_total", ())] == 1
    assert samples[("acl_nfqueue_verdicts_total",
                    (("reason", "address"), ("service", "sshd"), ("verdict", "deny")))] == 1
    assert samples[("acl_nfqueue_batch_size_count", ())] == 1
    assert samples[("acl_nfqueue_batch_size_sum", ())] == 2


def test_kernel_counters_that_cannot_be_read_are_left_out_and_logged_once(caplog):
    d = door()
    d._stats_file = nfq.QueueStatsFile("/")      # a directory: open() fails as for EACCES
    assert d._stats_file.read() is None and d._stats_file.error is not None
    with caplog.at_level("WARNING", logger="acl.serve.nfqueue"):
        for _ in range(3):
            fams = {f.name: f for f in d.metric_families()}
    assert fams["acl_nfqueue_waiting"].samples == []
    # the kernel's drop count is unknown, not 0 (a 0 would hide drops: docs/nfqueue.md)
    assert fams["acl_nfqueue_queue_drops"].samples == []
    assert [s.value for s in fams["acl_nfqueue_queue_maxlen"].samples] == [4096]
    warned = [r for r in caplog.records if "queue counters are left out" in r.getMessage()]
    assert len(warned) == 1


def test_a_stats_file_missing_once_a_queue_is_bound_is_unreadable_not_empty(tmp_path):
    """Opened after binding, the kernel's file exists unless /proc hides it
    (systemd's ProcSubset=pid, acl-nfqueue.service): its counters are then
    unknown -- left out and logged -- never all 0."""
    missing = nfq.QueueStatsFile(str(tmp_path / "nfnetlink_queue"))
    assert missing.read() is None and isinstance(missing.error, FileNotFoundError)
    d = door()
    d._stats_file = missing
    assert d.queue_counters()[7]["queue_drops"] is None
    (tmp_path / "nfnetlink_queue").write_text("  7  123     2 2   128     0     4       45  1\n")
    assert missing.read()[7].queue_dropped == 0 and missing.error is None   # appeared: read


def test_the_stats_file_opened_as_root_is_still_read_after_the_uid_changes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the point is what happens after leaving it")
    # The kernel's file is root's, mode 0440; a stand-in with the same mode.
    path = tmp_path / "nfnetlink_queue"
    path.write_text("  7  123     2 2   128     0     0       45  1\n")
    path.chmod(0o440)
    tmp_path.chmod(0o755)
    code = (f"import os; from acl import nfq; kept = nfq.QueueStatsFile({str(path)!r}); "
            "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534); "
            f"fresh = nfq.QueueStatsFile({str(path)!r}); "
            "print(kept.read()[7].queue_total, fresh.read(), type(fresh.error).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["2", "None", "PermissionError"], out.stderr


class RefusingQueue:
    """What a bound queue reports once the kernel refuses its verdicts."""

    num = 7

    def __init__(self):
        self.netlink_errors = 0
        self.last_netlink_error = 0

    def recv(self):
        return 0


def test_refused_verdicts_are_counted_and_logged_at_most_every_few_seconds(caplog):
    d = door()
    q = RefusingQueue()
    clock = [1000.0]
    d.monotonic = lambda: clock[0]
    with caplog.at_level("ERROR", logger="acl.serve.nfqueue"):
        for _ in range(5):
            q.netlink_errors += 3
            q.last_netlink_error = errno.EPERM
            d._on_readable(q)
            clock[0] += door_module.WARN_EVERY / 2
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3, logged            # at 0, WARN_EVERY and 2 * WARN_EVERY
    assert "refused 3 verdict(s) (3 in all; last: Operation not permitted)" in logged[0]
    assert "refused 6 verdict(s) (9 in all" in logged[1]


class UnsendableQueue:
    """A queue whose batch verdict cannot be sent (say ENOBUFS)."""

    num = 7
    stride = STRIDE
    netlink_errors = last_netlink_error = 0

    def __init__(self, raw: bytes, n: int):
        self.raw, self.n = raw, n
        self.answered_all: list[int] = []

    def recv(self):
        n, self.n = self.n, 0
        return n

    def records(self, n):
        return self.raw

    def record_pointer(self):
        return self.raw

    def verdict(self, verdicts, mark=0, held_from=-1):
        raise OSError(errno.ENOBUFS, "NFQUEUE 7: verdict: No buffer space available")

    def verdict_all(self, code):
        self.answered_all.append(code)


@pytest.mark.parametrize("malformed", ["drop", "accept"])
def test_a_batch_whose_verdict_cannot_be_sent_is_answered_by_default_at_once(malformed):
    # Left unanswered, it would get the next batch verdict's answer.
    d = door(malformed=malformed)
    pkts = [build("10.66.1.1", "10.9.9.9", 1, 22), build("10.5.1.1", "10.9.9.9", 2, 22)]
    q = UnsendableQueue(records(pkts), 2)
    d._on_readable(q)
    assert q.answered_all == [nfq.DROP if malformed == "drop" else nfq.ACCEPT]
    assert d.io_errors == 1
