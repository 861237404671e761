"""The sans-IO codecs: round trips, any split of the input, and the fuzz
invariant "events or a clean error, never an exception"."""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl.errors import ProtocolError
from acl.model import Decision, Location, Reason, Request, Verdict
from acl.wire import binary as wb
from acl.wire import postfix as wp

v4 = st.ip_addresses(v=4).map(str)
# as a socket prints it (inet_ntop): a v4-mapped address ends in a dotted quad
v6 = st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed))
name = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=40)
requests = st.builds(
    Request,
    service=name,
    client=v4 | v6,
    client_port=st.integers(0, 65535),
    server=st.none() | v4 | v6,
    server_port=st.integers(0, 65535),
    host=st.none() | name,
    user=st.none() | name,
    lease=st.booleans(),
    ucspi_names=st.booleans(),
)
decisions = st.builds(
    Decision,
    verdict=st.sampled_from(list(Verdict)),
    reason=st.sampled_from(list(Reason)),
    location=st.none() | st.builds(Location, st.text(min_size=1, max_size=30).filter(
        lambda t: ":" not in t), st.integers(1, 10**6)),
    env=st.lists(st.tuples(name, st.none() | st.text(max_size=30)), max_size=4).map(tuple),
    options=st.lists(st.tuples(name, st.text(max_size=30)), max_size=4).map(tuple),
    lease=st.integers(0, 2**64 - 1),
)


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), requests), min_size=1, max_size=20))
def test_decide_frames_round_trip_whole_and_byte_by_byte(items):
    blob = b"".join(wb.encode_decide(rid, r) for rid, r in items)
    whole = wb.BinaryDecoder().feed(blob)
    dec = wb.BinaryDecoder()
    split = [e for i in range(len(blob)) for e in dec.feed(blob[i:i + 1])]
    want = [wb.Decide(rid, r) for rid, r in items]
    assert whole == want
    assert split == want
    assert dec.buffered() == 0


@settings(deadline=None)
@given(decisions, st.integers(0, 2**32 - 1))
def test_decision_round_trip(d, rid):
    (rep,) = wb.ReplyDecoder().feed(wb.encode_decision(rid, d))
    assert rep.request_id == rid and rep.type == wb.T_DECISION
    assert rep.decision == d


def test_release_ping_and_replies():
    dec = wb.BinaryDecoder()
    ev = dec.feed(wb.encode_release(7, 2**64 - 1) + wb.encode_ping(8))
    assert ev == [wb.Release(7, 2**64 - 1), wb.Ping(8)]
    reps = wb.ReplyDecoder().feed(wb.encode_released(7, True) + wb.encode_released(9, False)
                                  + wb.encode_pong(8, True) + wb.encode_error(3, wb.E_TYPE))
    assert [(r.type, r.request_id) for r in reps] == [(0x82, 7), (0x82, 9), (0x83, 8), (0xFF, 3)]
    assert reps[0].released is True and reps[1].released is False and reps[2].core == 1
    assert reps[3].code == wb.E_TYPE and reps[3].text == "unknown type"


def test_decide_payload_layout_is_the_documented_one():
    r = Request("sshd", "192.0.2.1", 1234, "198.51.100.2", 22, "h", "u", lease=True)
    f = wb.encode_decide(0x01020304, r)
    length, ver, typ, flags, rid = struct.unpack_from("<IBBHI", f)
    assert (length, ver, typ, flags, rid) == (len(f) - 4, 1, 1, 1, 0x01020304)
    p = f[12:]
    assert p[:10] == bytes([4, 4]) + struct.pack("<HH", 1234, 22) + bytes([4, 1, 1, 0])
    assert p[10:14] == bytes([192, 0, 2, 1]) and p[14:18] == bytes([198, 51, 100, 2])
    assert p[18:] == b"sshdhu"


def test_ucspi_names_flag_layout_and_round_trip():
    """DECIDE flag UCSPI (bit 1): host and user are TCPREMOTEHOST and
    TCPREMOTEINFO; flag INFO (bit 2) says TCPREMOTEINFO is set, even empty."""
    r = Request("smtpd", "192.0.2.1", 1234, None, 0, "h.example.com", "", lease=True,
                ucspi_names=True)
    f = wb.encode_decide(9, r)
    assert struct.unpack_from("<H", f, 6)[0] == wb.F_LEASE | wb.F_UCSPI | wb.F_INFO == 7
    assert f[12 + 7:12 + 9] == bytes([13, 0])            # host_len, user_len
    assert f.endswith(b"smtpdh.example.com")
    cases = [r, Request("smtpd", "192.0.2.1", host=None, user=None, ucspi_names=True),
             Request("smtpd", "::1", host=None, user="joe", ucspi_names=True),
             Request("smtpd", "::1", host="h", user=None, ucspi_names=True)]
    blob = b"".join(wb.encode_decide(i, c) for i, c in enumerate(cases))
    assert wb.BinaryDecoder().feed(blob) == [wb.Decide(i, c) for i, c in enumerate(cases)]
    # names without the flag: an empty user cannot be said, and is none
    plain = wb.BinaryDecoder().feed(wb.encode_decide(1, Request("s", "192.0.2.1", user="")))
    assert plain[0].request.user is None and plain[0].request.ucspi_names is False


def test_seal_flag_layout_and_round_trip():
    """DECIDE flag SEAL (bit 3) travels as asked, decodes to ``Decide.seal``,
    and goes with the other flags (acl-wrap sends it with LEASE)."""
    r = Request("echo", "127.0.0.5", lease=True)
    f = wb.encode_decide(7, r, seal=True)
    assert struct.unpack_from("<H", f, 6)[0] == wb.F_LEASE | wb.F_SEAL == 9
    u = Request("smtpd", "::1", host="h", user="", ucspi_names=True, lease=True)
    blob = f + wb.encode_decide(8, u, seal=True) + wb.encode_decide(9, r)
    assert wb.BinaryDecoder().feed(blob) == [wb.Decide(7, r, True), wb.Decide(8, u, True),
                                             wb.Decide(9, r, False)]
    assert struct.unpack_from("<H", wb.encode_decide(8, u, seal=True), 6)[0] == 15


def test_names_flag_and_the_decision_names_section():
    """DECIDE flag NAMES (bit 4) decodes to ``Decide.names``; the DECISION
    answering it has its own flag NAMES and a section after the options: u8
    which (bit 0 client, bit 1 server), then u16 length and bytes of each
    name.  Without the flag the DECISION is byte for byte what it was."""
    r = Request("sshd", "192.0.2.1", lease=True)
    f = wb.encode_decide(5, r, seal=True, names=True)
    assert struct.unpack_from("<H", f, 6)[0] == wb.F_LEASE | wb.F_SEAL | wb.F_NAMES == 0x19
    assert wb.BinaryDecoder().feed(f) == [wb.Decide(5, r, True, True)]
    d = Decision(Verdict.DELEGATE, Reason.OK, Location("/etc/hosts.allow", 3),
                 options=(("twist", "echo %h"),), client_name="alpha.lab.test")
    plain = wb.encode_decision(5, d)
    named = wb.encode_decision(5, d, names=True)
    assert plain == wb.encode_decision(5, replace(d, client_name=None))
    assert struct.unpack_from("<H", named, 6)[0] == wb.R_NAMES
    assert named[12:] == plain[12:] + b"\x01\x0e\x00alpha.lab.test\x00\x00"
    (got,) = wb.ReplyDecoder().feed(named)
    assert got.decision == d
    both = replace(d, client_name="paranoid", server_name="localhost")
    assert wb.ReplyDecoder().feed(wb.encode_decision(6, both, names=True))[0].decision == both
    none = replace(d, client_name=None)
    assert wb.encode_decision(7, none, names=True)[-5:] == b"\x00\x00\x00\x00\x00"
    assert wb.ReplyDecoder().feed(wb.encode_decision(7, none, names=True))[0].decision == none
    # the plain reply read as if it had the section: malformed
    with pytest.raises(ProtocolError):
        wb.ReplyDecoder().feed(plain[:6] + struct.pack("<H", wb.R_NAMES) + plain[8:])


def test_ucspi_names_are_read_as_the_tcprules_keys_are():
    """A remote identd's bytes need not be UTF-8: read with surrogateescape
    (the tcprules layer's reading of its keys), never an error."""
    r = Request("smtpd", "192.0.2.1", user="caf\udce9", ucspi_names=True)
    f = wb.encode_decide(3, r)
    assert f.endswith(b"caf\xe9")
    assert wb.BinaryDecoder().feed(f) == [wb.Decide(3, r)]
    # without the flag such bytes are still a malformed payload
    bad = bytearray(f)
    bad[6] = wb.F_LEASE
    (ev,) = wb.BinaryDecoder().feed(bytes(bad))
    assert isinstance(ev, wb.BadFrame) and ev.code == wb.E_PAYLOAD


@pytest.mark.parametrize("flags, why", [
    (wb.F_INFO, "INFO without UCSPI"),
    (wb.F_UCSPI, "a user without INFO"),
    (0x0020, "an unknown bit: what a sidecar without UCSPI answers for bit 1"),
])
def test_bad_decide_flags_are_errors(flags, why):
    f = bytearray(wb.encode_decide(4, Request("smtpd", "192.0.2.1", user="joe")))
    f[6:8] = struct.pack("<H", flags)
    (ev,) = wb.BinaryDecoder().feed(bytes(f))
    assert isinstance(ev, wb.BadFrame) and (ev.request_id, ev.code) == (4, wb.E_PAYLOAD), why


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1), requests, st.sampled_from(["reserved", "client_family",
                                                             "server_family", "service_len"]),
       st.integers(0, 255))
def test_a_decide_fixed_field_out_of_its_range_is_a_bad_frame(rid, r, field, value):
    """docs/protocol.md DECIDE: reserved 0, client_family 4 or 6,
    server_family 0, 4 or 6, service_len 1..255.  Any other value is a
    malformed payload answered with the frame's id (not a fatal one: the
    next frame is read), whatever the rest of the frame says."""
    at, ok = {"reserved": (9, {0}), "client_family": (0, {4, 6}),
              "server_family": (1, {0, 4, 6}), "service_len": (6, set(range(1, 256)))}[field]
    if value in ok:
        value = 0 if field == "service_len" else 1 + value % 3 if field == "reserved" else 5
    f = bytearray(wb.encode_decide(rid, r))
    f[12 + at] = value
    ev = wb.BinaryDecoder().feed(bytes(f) + wb.encode_ping(rid ^ 1))
    assert [(type(e), e.request_id) for e in ev] == [(wb.BadFrame, rid), (wb.Ping, rid ^ 1)]
    assert (ev[0].code, ev[0].fatal) == (wb.E_PAYLOAD, False)


def test_bad_frames_are_errors_with_their_id_and_decoding_goes_on():
    good = wb.encode_ping(1)
    bad_version = bytearray(wb.encode_ping(2))
    bad_version[4] = 9
    bad_type = wb.frame(0x44, 3)
    bad_payload = wb.frame(wb.T_DECIDE, 4, b"\x05" + b"\x00" * 20)
    bad_flags = wb.frame(wb.T_PING, 5, flags=0x8000)
    ev = wb.BinaryDecoder().feed(bytes(bad_version) + bad_type + bad_payload + bad_flags + good)
    assert [(type(e).__name__, e.request_id, getattr(e, "code", None)) for e in ev] == [
        ("BadFrame", 2, wb.E_VERSION), ("BadFrame", 3, wb.E_TYPE),
        ("BadFrame", 4, wb.E_PAYLOAD), ("BadFrame", 5, wb.E_PAYLOAD), ("Ping", 1, None)]
    assert not any(e.fatal for e in ev if isinstance(e, wb.BadFrame))


def test_oversized_and_undersized_frames_are_fatal():
    for length in (0, 7, 65533, 2**32 - 1):
        dec = wb.BinaryDecoder()
        ev = dec.feed(struct.pack("<I", length) + b"x" * 20 + wb.encode_ping(1))
        assert ev == [wb.BadFrame(0, wb.E_SIZE, wb.ERROR_TEXT[wb.E_SIZE], fatal=True)]
        assert dec.dead and dec.feed(wb.encode_ping(2)) == []
    # the largest legal frame is still read
    big = wb.frame(wb.T_DECIDE, 1, b"\x00" * (65536 - 12))
    (ev,) = wb.BinaryDecoder().feed(big)
    assert isinstance(ev, wb.BadFrame) and ev.code == wb.E_PAYLOAD and not ev.fatal


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_random_bytes_never_raise_and_split_does_not_matter(blob, step):
    whole = wb.BinaryDecoder().feed(blob)
    dec = wb.BinaryDecoder()
    parts = [e for i in range(0, len(blob), step) for e in dec.feed(blob[i:i + step])]
    assert whole == parts
    assert all(isinstance(e, (wb.Decide, wb.Release, wb.Ping, wb.BadFrame)) for e in whole)


def _mangled_replies(rng_bytes: bytes, good: bytes) -> bytes:
    """``good`` with some payload bytes replaced (a header stays readable)."""
    b = bytearray(good)
    for i in range(0, len(rng_bytes) - 1, 2):
        b[12 + rng_bytes[i] % (len(b) - 12)] = rng_bytes[i + 1]
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.binary(min_size=2, max_size=12), decisions)
def test_reply_decoder_gives_replies_or_protocol_error_never_anything_else(blob, noise, d):
    """The client's invariant: a server's bytes are replies, or ProtocolError."""
    for data in (blob, _mangled_replies(noise, wb.encode_decision(1, d)),
                 _mangled_replies(noise, wb.encode_error(2, wb.E_TYPE)),
                 struct.pack("<I", len(blob) + 8) + b"\x01\x81\x00\x00\x01\x00\x00\x00" + blob):
        try:
            reps = wb.ReplyDecoder().feed(data)
        except ProtocolError:
            continue
        assert all(isinstance(r, wb.Reply) for r in reps)


def test_reply_decoder_refuses_truncated_and_overlong_decisions():
    d = Decision(Verdict.ALLOW, Reason.OK, Location("/x/tcp.smtpd", 1), (("A", "abc"),))
    good = wb.encode_decision(1, d)
    short = struct.pack("<I", len(good) - 5) + good[4:-1]      # the value loses a byte
    long = struct.pack("<I", len(good) - 3) + good[4:] + b"\x00"
    for bad in (short, long, b"\x03\x00\x00\x00abc", wb.frame(0x44, 1),
                wb.frame(wb.T_ERROR, 1, b"\x01")):
        with pytest.raises(ProtocolError):
            wb.ReplyDecoder().feed(bad)


def test_error_codes_are_the_documented_ones():
    """docs/protocol.md's ERROR table has a row for every code acl.wire.binary
    knows, and says which one the server never sends (backpressure instead)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    table = doc.split("### ERROR codes", 1)[1].split("\n## ", 1)[0]
    rows = {int(code): text for code, text in re.findall(r"^\| (\d+) \| (.+) \|$", table, re.M)}
    assert set(rows) == set(wb.ERROR_TEXT)
    assert "never sent" in rows[wb.E_OVERLOAD]
    assert [c for c, text in rows.items() if "never sent" in text] == [wb.E_OVERLOAD]


# -- Postfix --------------------------------------------------------------------
def pf(**attrs) -> bytes:
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"


def test_postfix_requests_and_replies():
    blob = (pf(request="smtpd_access_policy", protocol_state="RCPT", client_address="192.0.2.7",
               client_name="mail.example.org", client_port="4567", server_address="127.0.0.1",
               server_port="25")
            + pf(client_address="2001:db8::1", client_name="unknown", reverse_client_name="x.test",
                 service="submission"))
    dec = wp.PostfixDecoder("smtpd")
    got = dec.feed(blob)
    assert got == [
        wp.Asked(Request("smtpd", "192.0.2.7", 4567, "127.0.0.1", 25, "mail.example.org"),
                 "RCPT"),
        wp.Asked(Request("submission", "2001:db8::1", 0, None, 0, None)),
    ]
    split = wp.PostfixDecoder("smtpd")
    assert [r for i in range(len(blob)) for r in split.feed(blob[i:i + 1])] == got
    crlf = wp.PostfixDecoder().feed(blob.replace(b"\n", b"\r\n"))
    assert crlf == got
    # an address in brackets, and a v4-mapped one in the form the accepting
    # socket (and so the binary door) gives it: ``ipaddress`` before Python
    # 3.13 writes ::ffff:c000:207, which no IPv4 rule would match
    odd = wp.PostfixDecoder("smtpd").feed(pf(client_address="::ffff:192.0.2.7",
                                             server_address="[::ffff:127.0.0.1]")
                                          + pf(client_address="[2001:DB8::1]"))
    assert [a.request for a in odd] == [
        Request("smtpd", "::ffff:192.0.2.7", 0, "::ffff:127.0.0.1", 0),
        Request("smtpd", "2001:db8::1")]
    assert wp.encode(Decision(Verdict.ALLOW)) == b"action=DUNNO\n\n"
    assert wp.encode(Decision(Verdict.DENY, Reason.LIBWRAP, Location("/x/hosts.deny", 3))) == \
        b"action=REJECT Access denied: libwrap (hosts.deny:3)\n\n"
    assert wp.encode(Decision(Verdict.DENY, Reason.RATE)).startswith(b"action=DEFER_IF_PERMIT ")


def test_postfix_bad_requests():
    dec = wp.PostfixDecoder()
    got = dec.feed(pf(client_address="not-an-ip") + b"garbage line\nclient_address=1.2.3.4\n\n"
                   + b"=no name\nclient_address=1.2.3.4\n\n" + pf(client_address="192.0.2.1"))
    assert [type(g).__name__ for g in got] == ["BadRequest", "BadRequest", "BadRequest", "Asked"]
    assert got[2].text == "attribute line without a name: b'=no name'"
    assert not any(getattr(g, "fatal", False) for g in got)
    dec = wp.PostfixDecoder()
    got = dec.feed(b"client_address=" + b"1" * 5000)
    assert len(got) == 1 and got[0].fatal and dec.dead and dec.buffered() == 0
    dec = wp.PostfixDecoder()
    got = dec.feed(b"a=b\n" * 300)
    assert got[-1].fatal
    reply = wp.encode_error(got[-1])
    assert reply.startswith(b"action=DEFER_IF_PERMIT") and reply.endswith(b"\n\n")


def test_postfix_request_other_than_smtpd_access_policy_is_a_bad_request():
    """docs/protocol.md: ``request`` absent or smtpd_access_policy is decided;
    any other value is answered as a bad request and the connection goes on."""
    dec = wp.PostfixDecoder()
    got = dec.feed(pf(request="smtpd_access_policy", client_address="192.0.2.1")
                   + pf(request="junk_policy", client_address="192.0.2.1")
                   + pf(request="", client_address="192.0.2.1")
                   + pf(client_address="192.0.2.1"))
    assert [type(g).__name__ for g in got] == ["Asked", "BadRequest", "BadRequest", "Asked"]
    assert not got[1].fatal and not dec.dead
    assert wp.encode_error(got[1]) == (b"action=DEFER_IF_PERMIT acl: bad policy request: "
                                       b"request='junk_policy' is not smtpd_access_policy\n\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_postfix_random_bytes_never_raise(blob, step):
    whole = wp.PostfixDecoder().feed(blob)
    dec = wp.PostfixDecoder()
    parts = [e for i in range(0, len(blob), step) for e in dec.feed(blob[i:i + step])]
    assert whole == parts
