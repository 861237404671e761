"""The compiled batch path of the NFQUEUE front door, held to the Python path.

* The C packet codec in acl._nfq (``decode_c``) says exactly what
  acl.wire.packet.decode_raw says, for any bytes (fuzzed).
* ``decide_fast`` (C decode -> DECIDE frames -> the engine's compiled
  BatchPlan -> verdicts) gives the verdicts and the counters that
  ``decide_records`` (Python codec -> Request -> engine.decide_many) gives,
  on generated batches and a real hosts.allow/hosts.deny policy.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import nfq
from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor
from acl.wire.packet import TCP, UDP, PacketError, build, decode_raw
from tests.conftest import SLOW

from .policies import write_policy
from .test_frontdoor import STRIDE, records
from .test_packet import ext_headers, with_extensions

#: ACL_SLOW=1 runs five times the examples.
SCALE = 5 if SLOW else 1

if not nfq.AVAILABLE:
    pytest.skip("acl._nfq not built", allow_module_level=True)


def both(data: bytes, wire=None):
    out = []
    for fn in (decode_raw, nfq.decode_c):
        try:
            out.append(fn(data, wire_length=wire) if fn is nfq.decode_c
                       else fn(data, 0, len(data), wire))
        except PacketError as exc:
            out.append(exc.code)
    return out


@settings(max_examples=800 * SCALE, deadline=None)
@given(st.binary(max_size=120), st.one_of(st.none(), st.integers(0, 70000)))
def test_c_codec_equals_python_codec_on_any_bytes(data, wire):
    py, c = both(data, wire)
    assert py == c


@settings(max_examples=250 * SCALE, deadline=None)
@given(st.sampled_from(["10.1.2.3", "fd00::5"]), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from([TCP, UDP]), ext_headers, st.data())
def test_c_codec_equals_python_codec_on_cut_and_mutated_packets(src, sport, dport, proto, exts,
                                                                data):
    dst = "10.9.9.9" if "." in src else "fd00::9"
    pkt = build(src, dst, sport, dport, proto, b"p" * 5)
    if ":" in src:
        pkt = with_extensions(pkt, exts)
    cut = data.draw(st.integers(0, len(pkt)))
    assert both(pkt[:cut])[0] == both(pkt[:cut])[1]
    assert both(pkt[:cut], len(pkt))[0] == both(pkt[:cut], len(pkt))[1]
    mutated = bytearray(pkt)
    for at, value in data.draw(st.lists(st.tuples(st.integers(0, len(pkt) - 1),
                                                  st.integers(0, 255)), max_size=4)):
        mutated[at] = value
    py, c = both(bytes(mutated))
    assert py == c


# Prefix-only rules, so the engine builds a compiled plan for both services.
ALLOW = "echo: 10.1.0.0/255.255.0.0, [fd00:1::]/32\n" \
        "sshd: 10.200.0.0/255.255.0.0, [fd00:2::]/32, 10.1.2.0/255.255.255.0\n"
DENY = "sshd: 10.66.0.0/255.255.0.0\nALL: ALL\n"


def make_door(tmp_path, name, **nfq_extra):
    d = tmp_path / name
    d.mkdir()
    extra = "".join(f'{k} = "{v}"\n' for k, v in nfq_extra.items())
    policy = write_policy(d, ALLOW, DENY, rate=3.0, burst=4.0, nfqueue=(
        '[nfqueue]\nqueues = [5]\nports = { 22 = "sshd", 7 = "echo", "10.9.9.9:8080" = "echo" }\n'
        + extra))
    from acl.engine import Engine

    engine = Engine.from_path(policy)
    cfg = NfqueueConfig.from_table(engine.policy.nfqueue, policy)
    return NfqueueFrontDoor(engine, cfg, clock=lambda: 5000.0)


addresses = st.one_of(
    st.sampled_from(["10.1.1.1", "10.1.2.7", "10.66.3.3", "10.200.0.1", "fd00:1::1",
                     "fd00:2::1", "::ffff:10.1.1.1"]),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))))
packets = st.one_of(
    st.tuples(addresses, st.sampled_from([22, 7, 8080, 9999]), st.sampled_from([TCP, UDP])).map(
        lambda t: build(t[0], "fd00::9" if ":" in t[0] else "10.9.9.9", 40000, t[1], t[2])),
    st.binary(max_size=60))


@settings(max_examples=30 * SCALE, deadline=None)
@given(st.lists(st.lists(packets, min_size=1, max_size=40), min_size=1, max_size=4),
       st.sampled_from(["drop", "reset"]))
def test_fast_path_decides_as_the_python_path(tmp_path_factory, batches, reject):
    tmp = tmp_path_factory.mktemp("fp")
    fast = make_door(tmp, "fast", reject=reject)
    slow = make_door(tmp, "slow", reject=reject)
    plan = fast.engine.plan
    if plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    for batch in batches:
        raw = records(batch)
        got = fast.decide_fast(5, raw, len(batch), STRIDE, plan)
        want = slow.decide_records(5, raw, len(batch), STRIDE)
        assert got == want
    assert fast.verdicts == slow.verdicts
    assert fast.decode_error_codes == slow.decode_error_codes
    assert fast.unmapped == slow.unmapped
    assert fast.packets == slow.packets


def test_fast_path_answers_most_packets_in_c(tmp_path):
    door = make_door(tmp_path, "d")
    plan = door.engine.plan
    if plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    pkts = [build(f"10.1.{i % 4}.9", "10.9.9.9", 1000 + i, 7) for i in range(200)]
    door.decide_fast(5, records(pkts), len(pkts), STRIDE, plan)
    assert door.residual == 0
    assert sum(door.verdicts.values()) == 200


def test_a_frame_the_plan_cannot_answer_is_decided_by_the_engine(tmp_path):
    fast = make_door(tmp_path, "fast")
    slow = make_door(tmp_path, "slow")
    if fast.engine.plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    # An IPv4-mapped source in an IPv6 header: the plan leaves it to Python.
    pkts = [build("10.1.1.1", "10.9.9.9", 1, 7), build("::ffff:10.1.1.1", "fd00::9", 2, 7),
            build("10.66.0.1", "10.9.9.9", 3, 22)]
    got = fast.decide_fast(5, records(pkts), 3, STRIDE, fast.engine.plan)
    assert got == slow.decide_records(5, records(pkts), 3, STRIDE)
    assert fast.residual == 1
    assert fast.verdicts == slow.verdicts


def test_c_codec_and_door_read_nothing_past_their_buffers():
    """The C codec on any bytes, and the door's reply reader on any bytes,
    each buffer ending where an unreadable page begins (a read past it
    crashes the test without ASan): the codec answers as decode_raw does;
    the reply reader takes frames or refuses, writing only the verdicts of
    records of its batch (request id < batch), in a verdict buffer that
    ends at a page too.  (Its replies come from the engine's plan, which
    echoes the door's own request ids; here they are any bytes.)"""
    import errno
    import random
    import struct

    from tests.guard_pages import GuardedPages

    rng = random.Random(21)
    door = nfq.DoorBatch(8, ["echo"], {7: "echo"}, {})
    lib, ffi = nfq.lib, nfq.ffi
    with GuardedPages(2) as guard, GuardedPages(1) as verdict_guard:
        for i in range(3000 * SCALE):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(90)))
            if i % 2:
                src = rng.choice(["10.1.2.3", "fd00::5"])
                pkt = build(src, "10.9.9.9" if "." in src else "fd00::9", rng.randrange(65536),
                            rng.randrange(65536), rng.choice([TCP, UDP]), b"p" * rng.randrange(8))
                data = bytearray(pkt[:rng.randrange(len(pkt) + 1)])
                for _ in range(rng.randrange(3)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            view = guard.at_end(data)
            wire = rng.choice([len(data), len(data) + rng.randrange(100)])
            out = ffi.new("struct acl_flow *")
            rc = lib.acl_pkt_decode(ffi.from_buffer(view), len(data), wire, out)
            try:
                want = decode_raw(data, 0, len(data), wire)
            except PacketError as exc:
                want = exc.code
            if rc:
                assert nfq.C_ERROR_CODES[rc - 1] == want, data
            else:
                alen = 4 if out.family == 4 else 16
                assert (out.family, bytes(out.src)[:alen], bytes(out.dst)[:alen], out.sport,
                        out.dport, out.proto, out.tcp_flags) == want, data
            del view
            # the reply reader: DECISION-like frames, damaged, and any bytes
            replies = bytearray()
            for _ in range(rng.randrange(4)):
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(2, 20)))
                replies += struct.pack("<IBBHI", 8 + len(payload), 1, 0x81, 0, rng.randrange(12))
                replies += payload
            if replies and rng.random() < 0.5:
                replies[rng.randrange(len(replies))] = rng.randrange(256)
            replies = bytes(replies[:rng.randrange(len(replies) + 1)])
            if rng.random() < 0.2:
                replies = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            rview = guard.at_end(replies)
            verdicts = verdict_guard.at_end(bytes(8))
            rc = lib.acl_door_apply(door._d, ffi.from_buffer(rview), len(replies),
                                    ffi.from_buffer(verdicts), 2)
            assert rc >= 0 or rc == -errno.EINVAL, rc
            del rview, verdicts
