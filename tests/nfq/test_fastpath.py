"""The compiled batch path of the NFQUEUE front door, held to the Python path.

* The C packet codec in acl._nfq (``decode_c``) says exactly what
  acl.wire.packet.decode_raw says, for any bytes (fuzzed).
* ``decide_fast`` (C decode -> DECIDE frames -> the engine's compiled
  BatchPlan -> verdicts) gives the verdicts and the counters that
  ``decide_records`` (Python codec -> Request -> engine.decide_many) gives,
  on generated batches and a real hosts.allow/hosts.deny policy, record
  headers with any lengths included.
* The door's C batch functions (``acl_door_frames``, ``acl_door_apply``)
  are called directly with generated bad input -- any numbers, records cut
  short, lengths past the buffer, strides shorter than a record, replies
  with wrong ids, verdicts and lengths -- each buffer ending where an
  unreadable page begins: they answer as a Python model of
  ext/nfq_build.py's rules says, and touch nothing past their buffers.
  Under tests/sanitize the same run is checked by ASan and UBSan.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import struct

import pytest
from hypothesis import event, given, settings
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


def edge_packet(rng: random.Random) -> tuple[bytes, int | None]:
    """A packet whose every field the codecs check is set, now and then, to a
    value at or past its edge: IHL, total and payload lengths, fragment bits
    and offsets, IPv6 extension chains (up to 10, any kind, any length), TCP
    data offset, UDP length; cut short or not, with a wire length or not."""
    v6 = rng.random() < 0.5
    src, dst = ("fd00::5", "fd00::9") if v6 else ("10.1.2.3", "10.9.9.9")
    proto = rng.choice([TCP, UDP])
    pkt = bytearray(build(src, dst, rng.randrange(65536), rng.randrange(65536), proto,
                          rng.randbytes(rng.randrange(0, 24))))
    if v6:
        chain, nxt = b"", proto
        for _ in range(rng.choice([0, 0, 1, 2, 3, 7, 8, 9, 10])):
            kind = rng.choice([0, 43, 60, 44, 51])
            if kind == 44:
                frag = rng.choice([0, 0, 1, 8, 9, 0xFFF8, 0xFFF9])       # offset << 3 | M
                head = bytes([nxt, 0]) + frag.to_bytes(2, "big") + bytes(4)
            elif kind == 51:
                n = rng.choice([0, 1, 2, 4])
                head = bytes([nxt, n]) + bytes((n + 2) * 4 - 2)
            else:
                n = rng.choice([0, 0, 1, 3])
                head = bytes([nxt, n]) + bytes((n + 1) * 8 - 2)
            chain, nxt = head + chain, kind
        body = bytes(pkt[40:])
        pkt = bytearray(pkt[:40] + chain + body)
        pkt[6] = nxt if rng.random() < 0.9 else rng.choice([0, 1, 58, 59, 255])
        plen = len(pkt) - 40
        pkt[4:6] = rng.choice([plen, plen, plen - 1, plen + 1, 0, 65535, 8]).to_bytes(2, "big")
        l4 = 40 + len(chain)
    else:
        ihl = rng.choice([5, 5, 5, 6, 0, 1, 4, 15])
        pkt = bytearray(pkt[:20] + bytes(max(0, ihl - 5) * 4) + pkt[20:])
        pkt[0] = 0x40 | ihl
        total = len(pkt)
        pkt[2:4] = rng.choice([total, total, total - 1, total + 1, 0, 19, 20, ihl * 4, 65535]
                              ).to_bytes(2, "big")
        pkt[6:8] = rng.choice([0, 0x4000, 0x2000, 0x0001, 0x1000, 0x1FFF, 0x2001, 0x8000, 0x6000]
                              ).to_bytes(2, "big")
        if rng.random() < 0.1:
            pkt[9] = rng.choice([0, 1, 44, 58, 255])
        l4 = max(ihl, 5) * 4
    if proto == TCP and rng.random() < 0.5 and len(pkt) > l4 + 12:
        pkt[l4 + 12] = rng.randrange(16) << 4
    elif proto == UDP and rng.random() < 0.5 and len(pkt) > l4 + 5:
        pkt[l4 + 4:l4 + 6] = rng.choice([0, 1, 7, 8, 9, 65535]).to_bytes(2, "big")
    if rng.random() < 0.2:
        pkt = pkt[:rng.randrange(len(pkt) + 1)]
    wire = rng.choice([None, None, len(pkt), len(pkt) + rng.randrange(1, 40),
                       max(0, len(pkt) - 1)])
    return bytes(pkt), wire


def test_c_codec_equals_python_codec_on_header_fields_at_their_edges():
    rng = random.Random(20261124)
    outcomes = set()
    for _ in range(3000 * SCALE):
        pkt, wire = edge_packet(rng)
        py, c = both(pkt, wire)
        assert py == c, (pkt.hex(), wire)
        outcomes.add(py if isinstance(py, str) else "ok")
    # the generator reaches every answer but "version" (the fuzz tests' part)
    assert outcomes == {"ok", "truncated", "header", "length", "fragment", "protocol"}, outcomes


# Prefix-only rules, so the engine builds a compiled plan for both services;
# grants with options too: a twist (verdict delegate: accepted, docs/nfqueue.md)
# and a spawn the plan answers, and one whose % expansion leaves it to Python.
ALLOW = "echo: 10.1.0.0/255.255.0.0, [fd00:1::]/32\n" \
        "sshd: 10.200.0.0/255.255.0.0, [fd00:2::]/32, 10.1.2.0/255.255.255.0\n" \
        "ALL: 10.3.0.0/255.255.0.0 : twist /bin/echo go away\n" \
        "echo: 10.4.0.0/255.255.0.0 : spawn /bin/true\n" \
        "sshd: 10.5.0.0/255.255.0.0 : spawn /bin/echo %a\n"
DENY = "sshd: 10.66.0.0/255.255.0.0\nALL: ALL\n"


def make_door(tmp_path, name, rate=3.0, **nfq_extra):
    d = tmp_path / name
    d.mkdir()
    extra = "".join(f'{k} = "{v}"\n' for k, v in nfq_extra.items())
    policy = write_policy(d, ALLOW, DENY, rate=rate, burst=4.0 if rate else 0.0, nfqueue=(
        '[nfqueue]\nqueues = [5]\nports = { 22 = "sshd", 7 = "echo", "10.9.9.9:8080" = "echo" }\n'
        + extra))
    from acl.engine import Engine

    engine = Engine.from_path(policy)
    cfg = NfqueueConfig.from_table(engine.policy.nfqueue, policy)
    return NfqueueFrontDoor(engine, cfg, clock=lambda: 5000.0)


addresses = st.one_of(
    st.sampled_from(["10.1.1.1", "10.1.2.7", "10.66.3.3", "10.200.0.1", "fd00:1::1",
                     "fd00:2::1", "::ffff:10.1.1.1", "10.3.3.3", "10.4.4.4", "10.5.5.5"]),
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


def test_an_address_port_names_only_packets_of_its_own_family(tmp_path):
    # "10.9.9.9:8080" = "echo": an IPv6 packet to [a09:909::]:8080 (the same
    # first bytes, then zeros) is to no mapped port, on both paths
    fast, slow = make_door(tmp_path, "fast"), make_door(tmp_path, "slow")
    plan = fast.engine.plan
    if plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    pkts = [build("fd00:66::1", "a09:909::", 4000, 8080), build("10.66.0.1", "10.9.9.9", 4000, 8080)]
    raw = records(pkts)
    assert fast.decide_fast(5, raw, 2, STRIDE, plan) == slow.decide_records(5, raw, 2, STRIDE) \
        == bytearray([nfq.ACCEPT, nfq.DROP])
    assert fast.unmapped == slow.unmapped == 1


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
    # An IPv4-mapped source in an IPv6 header: the plan leaves it to Python,
    # whose request names it as the Unix sockets' doors do (::ffff:10.1.1.1,
    # inet_ntop's form): the IPv4 rule for echo covers it
    pkts = [build("10.1.1.1", "10.9.9.9", 1, 7), build("::ffff:10.1.1.1", "fd00::9", 2, 7),
            build("10.66.0.1", "10.9.9.9", 3, 22)]
    got = fast.decide_fast(5, records(pkts), 3, STRIDE, fast.engine.plan)
    assert got == slow.decide_records(5, records(pkts), 3, STRIDE)
    assert list(got) == [nfq.ACCEPT, nfq.ACCEPT, nfq.DROP]
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
    import random

    from tests.guard_pages import GuardedPages

    rng = random.Random(21)
    door = nfq.DoorBatch(8, ["echo"], {7: "echo"}, {})
    lib, ffi = nfq.lib, nfq.ffi
    # a batch of 5 to answer, 4 of them sent to the plan (request ids 0..3)
    n_batch = 5
    batch = [build(f"10.1.1.{i}", "10.9.9.9", 1000 + i, 7 if i < 4 else 9) for i in range(5)]
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
            # the reply reader: DECISION-like frames, damaged, and any bytes,
            # for a fresh batch each time (an answered packet takes no more)
            door.frames(records(batch), n_batch, STRIDE, bytearray(n_batch), 0, False, 0)
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
            verdicts = verdict_guard.at_end(bytes(n_batch))
            rc = lib.acl_door_apply(door._d, ffi.from_buffer(rview), len(replies),
                                    ffi.from_buffer(verdicts), n_batch, 2)
            assert rc >= 0 or rc == -errno.EINVAL, rc
            del rview, verdicts


# -- the door's C batch functions on any input ---------------------------------
# Models of ext/nfq_build.py's rules (above acl_door_frames): what each call
# must answer, byte for byte; the C functions are called directly, every
# buffer ending where an unreadable page begins.

HEADER = nfq.RECORD_HEADER
SENTINEL = 0xEE            # a verdict byte no call may write
DOOR_BATCH = 6
DOOR_PORTS = {7: "echo", 22: "sshd"}
DOOR_ADDR_PORTS = {(bytes([10, 9, 9, 9]), 8080): "sshd"}
MARK = 0xAC1


def new_door():
    return nfq.DoorBatch(DOOR_BATCH, ["echo", "sshd"], DOOR_PORTS, DOOR_ADDR_PORTS)


@pytest.fixture(scope="module")
def guards():
    from types import SimpleNamespace

    from tests.guard_pages import GuardedPages

    with GuardedPages(1) as recs, GuardedPages(1) as verdicts, GuardedPages(1) as replies:
        yield SimpleNamespace(records=recs, verdicts=verdicts, replies=replies)


def model_frames(buf: bytes, n: int, stride: int, nverdicts: int, malformed: int,
                 reject_mark: bool):
    """acl_door_frames by its rules: (rc, verdicts of the n records,
    {request id: service} sent to the plan, {decode error: count})."""
    if (n < 0 or n > DOOR_BATCH or n > nverdicts or stride < HEADER or n * stride > len(buf)
            or malformed > nfq.REJECT):
        return -errno.EINVAL, None, {}, {}
    verdicts, waiting, errors = bytearray(), {}, {}
    for i in range(n):
        at = i * stride
        _pid, _hw, caplen, mark, wire = nfq.RECORD.unpack_from(buf, at)
        if reject_mark and mark == MARK:
            verdicts.append(nfq.DROP)
            continue
        try:
            if caplen > stride - HEADER:
                raise PacketError("truncated", "past the record")
            _f, _src, dst, _sport, dport, _p, _fl = decode_raw(buf, at + HEADER, caplen, wire)
        except PacketError as exc:
            errors[exc.code] = errors.get(exc.code, 0) + 1
            verdicts.append(malformed)
            continue
        service = DOOR_ADDR_PORTS.get((dst, dport)) or DOOR_PORTS.get(dport)
        if service is None:
            verdicts.append(nfq.ACCEPT)
            continue
        waiting[i] = service
        verdicts.append(malformed)
    return len(waiting), bytes(verdicts), waiting, errors


def model_apply(replies: bytes, n: int, nverdicts: int, deny: int, waiting: dict,
                verdicts: bytearray, counts: dict):
    """acl_door_apply by its rules: (rc, bad frames, answers applied, even
    when rc is an error); updates ``waiting``,
    ``verdicts`` and ``counts`` as the C side must."""
    if nverdicts < n or deny > nfq.REJECT:
        return -errno.EINVAL, 0, 0
    at = applied = bad = 0
    while at < len(replies):
        if len(replies) - at < 14:
            return -errno.EINVAL, bad, applied
        flen = int.from_bytes(replies[at:at + 4], "little")
        if flen < 10 or flen > len(replies) - at - 4:
            return -errno.EINVAL, bad, applied
        rid = int.from_bytes(replies[at + 8:at + 12], "little")
        verdict, reason = replies[at + 12], replies[at + 13]
        if (replies[at + 4] != 1 or replies[at + 5] != 0x81 or rid not in waiting
                or verdict > 2 or reason >= nfq.N_REASONS):
            bad += 1
        else:
            verdicts[rid] = deny if verdict == 0 else nfq.ACCEPT
            key = (waiting.pop(rid), verdict, reason)
            counts[key] = counts.get(key, 0) + 1
            applied += 1
        at += 4 + flen
    return applied, bad, applied


def decide_frames(frames: bytes) -> dict[int, str]:
    """{request id: service} of a buffer of DECIDE frames."""
    out, at = {}, 0
    while at < len(frames):
        length = int.from_bytes(frames[at:at + 4], "little")
        alen = 4 if frames[at + 12] == 4 else 16
        name = frames[at + 22 + 2 * alen: at + 22 + 2 * alen + frames[at + 18]].decode()
        out[int.from_bytes(frames[at + 8:at + 12], "little")] = name
        at += 4 + length
    assert at == len(frames)
    return out


door_packets = st.tuples(
    st.sampled_from(["10.1.1.1", "fd00::5"]), st.sampled_from([7, 22, 8080, 9]),
    st.sampled_from([TCP, UDP])).map(
    lambda t: build(t[0], "10.9.9.9" if "." in t[0] else "fd00::9", 1234, t[1], t[2]))
huge = st.sampled_from([-2**31, -1, 2**16, 2**30, 2**31 - 1])


def usually(right, wrong):
    """``right`` three times in four, else ``wrong``: most calls get far
    enough to decode and answer, and every check is still reached."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: right if ok else wrong)


def maybe(sane: bool, right, wrong):
    """``right`` when ``sane``, else either."""
    return right if sane else st.one_of(right, wrong)


@st.composite
def record_buffers(draw):
    """(records, the stride they are laid out at, how many): headers with
    any captured and wire lengths, packets and any bytes, cut anywhere."""
    layout = draw(usually(st.just(STRIDE), st.sampled_from([HEADER, HEADER + 20, HEADER + 60])))
    out = bytearray()
    pkts = draw(st.lists(usually(door_packets, st.binary(max_size=70)),
                         min_size=draw(usually(st.just(1), st.just(0))),
                         max_size=draw(usually(st.just(DOOR_BATCH), st.just(DOOR_BATCH + 2)))))
    for pkt in pkts:
        cap = pkt[:layout - HEADER]
        caplen = draw(usually(st.just(len(cap)), st.integers(0, 65535)))
        wire = draw(usually(st.just(len(pkt)), st.integers(0, 2**32 - 1)))
        out += nfq.RECORD.pack(draw(st.integers(0, 2**32 - 1)), 0x0800, caplen,
                               draw(st.sampled_from([0, MARK])), wire)
        out += cap + bytes(layout - HEADER - len(cap))
    if draw(usually(st.just(False), st.just(True))):
        out = out[:draw(st.integers(0, len(out)))]
    return bytes(out), layout, len(pkts)


@settings(max_examples=600 * SCALE, deadline=None)
@given(record_buffers(), st.data())
def test_door_frames_answers_any_records_and_numbers_by_its_rules(guards, recs, data):
    buf, layout, count = recs
    # half the calls give the numbers that fit; the others any of them wrong
    sane = data.draw(st.booleans(), "sane")
    n = data.draw(maybe(sane, st.just(count), st.one_of(st.integers(-2, DOOR_BATCH + 2), huge)),
                  "n")
    stride = data.draw(maybe(sane, st.just(layout), st.one_of(st.integers(-2, 2 * STRIDE), huge)),
                       "stride")
    size = data.draw(maybe(sane, st.just(max(n, 0)), st.integers(0, DOOR_BATCH + 2)),
                     "verdict bytes")
    if size > DOOR_BATCH + 2:
        size = DOOR_BATCH + 2     # (a huge n: the buffer stays small)
    nverdicts = data.draw(maybe(sane, st.just(size), st.integers(-2**31, -1)), "nverdicts")
    malformed = data.draw(maybe(sane, st.sampled_from([nfq.DROP, nfq.ACCEPT]),
                                st.integers(0, 255)), "malformed")
    reject_mark = data.draw(st.booleans(), "reject_mark")
    door = new_door()
    lib, ffi = nfq.lib, nfq.ffi
    rview = guards.records.at_end(buf)
    vview = guards.verdicts.at_end(bytes([SENTINEL]) * size)
    rc = lib.acl_door_frames(door._d, ffi.from_buffer(rview), len(buf), n, stride,
                             ffi.from_buffer(vview), nverdicts, malformed, reject_mark, MARK)
    want_rc, want_verdicts, waiting, errors = model_frames(buf, n, stride, nverdicts,
                                                           malformed, reject_mark)
    got = bytes(vview)
    del rview, vview
    assert rc == want_rc
    event("refused" if rc < 0 else f"{rc} frames, {len(errors)} kinds of decode error")
    if rc < 0:
        assert got == bytes([SENTINEL]) * size
        assert lib.acl_door_frame_len(door._d) == 0
        assert lib.acl_door_record_of(door._d, 0) == -1
        return
    assert got == want_verdicts + bytes([SENTINEL]) * (size - n)
    frames = bytes(ffi.buffer(lib.acl_door_frame_buf(door._d), lib.acl_door_frame_len(door._d)))
    assert decide_frames(frames) == waiting
    assert door.errors() == errors
    assert [lib.acl_door_record_of(door._d, r) for r in (-1, 0, n - 1, n)] == [
        -1, 0 if n else -1, n - 1 if n else -1, -1]


@st.composite
def reply_buffers(draw, n: int):
    """DECISION frames for a batch of ``n`` -- right and wrong ids,
    verdicts, reasons, versions and types -- frames too short or too long
    for their buffer, any bytes; cut anywhere."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["decision"] * 12 + ["short", "long", "bytes"]))
        if kind == "decision":
            rid = draw(usually(st.integers(0, max(n - 1, 0)),
                               st.one_of(st.integers(0, n + 1), st.integers(0, 2**32 - 1))))
            # wrong verdicts and reasons: any byte, and those just past the last right one
            payload = bytes([draw(usually(st.integers(0, 2), st.sampled_from([3, 4, 255])
                                          | st.integers(0, 255))),
                             draw(usually(st.integers(0, 11), st.sampled_from([15, 16, 17, 255])
                                          | st.integers(0, 255)))])
            payload += draw(st.binary(max_size=24))
            version = draw(usually(st.just(1), st.integers(0, 255)))
            kind_byte = draw(usually(st.just(0x81), st.integers(0, 255)))
            out += struct.pack("<IBBHI", 8 + len(payload), version, kind_byte, 0, rid) + payload
        elif kind == "short":
            out += struct.pack("<I", draw(st.integers(0, 9))) + draw(st.binary(min_size=10,
                                                                               max_size=20))
        elif kind == "long":
            out += struct.pack("<I", draw(st.integers(10, 2**32 - 1))) + draw(st.binary(
                min_size=10, max_size=40))
        else:
            out += draw(st.binary(max_size=30))
    if draw(usually(st.just(False), st.just(True))):
        out = out[:draw(st.integers(0, len(out)))]
    return bytes(out)


@settings(max_examples=500 * SCALE, deadline=None)
@given(st.lists(door_packets, max_size=DOOR_BATCH), st.sampled_from([nfq.DROP, nfq.ACCEPT]),
       st.data())
def test_door_apply_answers_any_replies_by_its_rules(guards, pkts, malformed, data):
    n = len(pkts)
    door = new_door()
    lib, ffi = nfq.lib, nfq.ffi
    current = bytearray(n)
    frames, _count = door.frames(records(pkts), n, STRIDE, current, malformed, False, 0)
    waiting = decide_frames(bytes(frames))
    counts: dict = {}
    # a second reply answers the same batch: what the first answered is taken no more
    for _ in range(data.draw(st.integers(1, 2), "rounds")):
        replies = data.draw(reply_buffers(n), "replies")
        sane = data.draw(st.booleans(), "sane")
        size = data.draw(maybe(sane, st.just(n), st.integers(0, n + 2)), "verdict bytes")
        nverdicts = data.draw(maybe(sane, st.just(size), st.integers(-2**31, -1)), "nverdicts")
        deny = data.draw(maybe(sane, st.sampled_from([nfq.DROP, nfq.REJECT]),
                               st.integers(0, 255)), "deny")
        before = bytes(current[:size]) + bytes([SENTINEL]) * (size - n)
        rview = guards.replies.at_end(replies)
        vview = guards.verdicts.at_end(before)
        bad = door.bad_replies
        rc = lib.acl_door_apply(door._d, ffi.from_buffer(rview), len(replies),
                                ffi.from_buffer(vview), nverdicts, deny)
        got = bytes(vview)
        del rview, vview
        want_rc, want_bad, applied = model_apply(replies, n, nverdicts, deny, waiting, current,
                                                 counts)
        assert rc == want_rc
        event(f"{applied} applied, {want_bad} bad" + (", then refused" if rc < 0 else ""))
        assert door.bad_replies - bad == want_bad
        assert got == (before if size < n else bytes(current) + bytes([SENTINEL]) * (size - n))
    assert door.counts() == {(svc, v, r): c for (svc, v, r), c in counts.items()}


def test_door_batch_refuses_numbers_that_do_not_fit_its_buffers():
    door = new_door()
    raw = records([build("10.1.1.1", "10.9.9.9", 1, 7)] * 2)
    for n, stride, verdicts in [(3, STRIDE, 3), (2, STRIDE + 1, 2), (2, STRIDE, 1),
                                (-1, STRIDE, 2), (2, HEADER - 1, 2), (DOOR_BATCH + 1, 1, 99)]:
        with pytest.raises(ValueError, match="does not fit"):
            door.frames(raw, n, stride, bytearray(verdicts), nfq.DROP, False, 0)
    with pytest.raises(ValueError):
        door.frames(raw, 2, STRIDE, bytearray(2), nfq.HOLD, False, 0)
    door.frames(raw, 2, STRIDE, bytearray(2), nfq.DROP, False, 0)
    with pytest.raises(ValueError):
        door.apply(b"", bytearray(1), nfq.DROP)          # fewer verdicts than the batch
    with pytest.raises(ValueError):
        door.apply(b"\x0a\0\0\0" + bytes(9), bytearray(2), nfq.DROP)   # ends in a frame
    with pytest.raises(ValueError, match="at most"):
        nfq.DoorBatch(1, [f"s{i}" for i in range(nfq.MAX_SERVICES + 1)], {}, {})


@pytest.fixture(scope="module")
def door_pair(tmp_path_factory):
    """A fast and a slow door for a whole run of examples: without a rate,
    what they answer depends on no earlier example.  (Not a pair per
    example: an engine holds some 32 MiB that is not given back when it
    goes, and hundreds of them -- Hypothesis shrinking a failure under
    ASan -- once ran the machine out of memory.)"""
    tmp = tmp_path_factory.mktemp("pair")
    fast, slow = make_door(tmp, "fast", rate=0.0), make_door(tmp, "slow", rate=0.0)
    if fast.engine.plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    return fast, slow


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.lists(st.tuples(packets, st.integers(0, 65535), st.integers(0, 2**32 - 1),
                          st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_both_paths_agree_on_record_headers_with_any_lengths(door_pair, recs):
    """Captured lengths past the record (the kernel never says one) are a
    truncated packet on both paths; wire lengths of any size too."""
    fast, slow = door_pair
    raw = bytearray()
    for pkt, caplen, wire, keep_caplen, keep_wire in recs:
        cap = pkt[:STRIDE - HEADER]
        raw += nfq.RECORD.pack(1, 0x0800, len(cap) if keep_caplen else caplen, 0,
                               len(pkt) if keep_wire else wire)
        raw += cap + bytes(STRIDE - HEADER - len(cap))
    raw = bytes(raw)
    got = fast.decide_fast(5, raw, len(recs), STRIDE, fast.engine.plan)
    assert got == slow.decide_records(5, raw, len(recs), STRIDE)
    assert fast.verdicts == slow.verdicts
    assert fast.decode_error_codes == slow.decode_error_codes


class ForgetfulPlan:
    """A stand-in for the engine's plan whose replies answer the wrong
    packets: request ids shifted by ``shift``, and nothing for the last."""

    def __init__(self, shift: int):
        self.shift = shift

    def run(self, view, pos, now):
        out, at = bytearray(), pos
        frames = []
        while at < len(view):
            length = int.from_bytes(view[at:at + 4], "little")
            frames.append(int.from_bytes(view[at + 8:at + 12], "little"))
            at += 4 + length
        for rid in frames[:-1]:
            out += struct.pack("<IBBHIBB", 10, 1, 0x81, 0, rid + self.shift, 1, 0)
        return at, bytes(out), 0


@pytest.mark.parametrize("malformed", ["drop", "accept"])
def test_a_packet_the_plan_answers_badly_gets_the_malformed_verdict(tmp_path, malformed):
    door = make_door(tmp_path, "d", malformed=malformed)
    code = nfq.DROP if malformed == "drop" else nfq.ACCEPT
    pkts = [build(f"10.1.1.{i}", "10.9.9.9", 1000 + i, 7) for i in range(4)]
    pkts.append(build("10.1.1.9", "10.9.9.9", 1, 9999))          # unmapped: accepted here
    # the answers of ids 0..2 come as ids 1..3 ("allow"): packet 0 has none and
    # keeps the fail-safe verdict; then answers for ids 7..9, which name none
    got = door.decide_fast(5, records(pkts), 5, STRIDE, ForgetfulPlan(1))
    assert list(got) == [code, nfq.ACCEPT, nfq.ACCEPT, nfq.ACCEPT, nfq.ACCEPT]
    assert door.internal_errors == 0            # ids 1..3 were each waiting once
    got = door.decide_fast(5, records(pkts), 5, STRIDE, ForgetfulPlan(7))
    assert list(got) == [code, code, code, code, nfq.ACCEPT]
    assert door.internal_errors == 3            # ids 7..9: no packet of the batch


class ShortQueue:
    """A queue whose record buffer is shorter than the batch it reports."""

    num = 5
    stride = STRIDE

    def __init__(self, raw: bytes, n: int):
        self.raw, self.n = raw, n

    def record_pointer(self):
        return self.raw

    def records(self, n):
        return self.raw


@pytest.mark.parametrize("malformed", ["drop", "accept"])
def test_a_batch_past_its_record_buffer_gets_the_malformed_verdict(tmp_path, malformed):
    door = make_door(tmp_path, "d", malformed=malformed)
    if door.engine.plan is None:
        pytest.skip("the engine has no compiled batch plan (pure engine)")
    code = nfq.DROP if malformed == "drop" else nfq.ACCEPT
    raw = records([build("10.1.1.1", "10.9.9.9", 1, 7)] * 3)
    got = door._decide_batch(ShortQueue(raw[:-1], 3), 3)
    assert list(got) == [code] * 3
    assert door.internal_errors == 1
