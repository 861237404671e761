"""The cdb reader and writer: round trips, other readers, hostile files.

Invariant for the reader, in one sentence: whatever the bytes, loading either
gives the same answers as djb's lookup or raises CdbError -- never another
exception, never an endless loop.
"""

from __future__ import annotations

import struct
import time

import cdblib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl.cdb import HEADER_SIZE, CdbError, CdbReader, cdb_hash, make_cdb
from acl.compile.tcprules import layer_from_cdb, load_tcprules
from acl.model import Request

from .real import need_tools, run_tcprules

keys = st.binary(max_size=12)
records = st.lists(st.tuples(st.sampled_from([b"", b"a", b"1.2.", b"k"]) | keys,
                             st.binary(max_size=20)), max_size=40)


def test_hash_is_djbs():
    # h = ((h << 5) + h) ^ c from 5381, 32-bit
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"a") == ((5381 * 33) & 0xFFFFFFFF) ^ ord("a")


def test_empty_cdb_layout():
    blob = make_cdb([])
    assert len(blob) == HEADER_SIZE
    # every empty table points at the end of the (empty) record area
    assert all(struct.unpack_from("<II", blob, 8 * i) == (HEADER_SIZE, 0) for i in range(256))


@settings(max_examples=300, deadline=None)
@given(records)
def test_round_trip_first_duplicate_wins(recs):
    blob = make_cdb(recs)
    reader = CdbReader(blob)
    reader.validate()
    assert reader.records() == recs
    first = {}
    for k, v in recs:
        first.setdefault(k, v)
    assert reader.mapping() == first
    for k, v in first.items():
        assert reader.find(k) == v
    assert reader.find(b"\xffnot-there\xff") is None or b"\xffnot-there\xff" in first


@settings(max_examples=200, deadline=None)
@given(records)
def test_pure_cdb_reads_our_files(recs):
    """pure-cdb (an independent reader) sees the same first values."""
    blob = make_cdb(recs)
    other = cdblib.Reader(blob)
    ours = CdbReader(blob)
    for k, _v in recs:
        assert other.get(k) == ours.find(k)
    assert [tuple(x) for x in other.iteritems()] == recs


@need_tools
def test_writer_matches_tcprules_on_odd_bytes():
    """Keys and values with NUL, high bytes, quotes: still byte-identical."""
    text = (b'\x00\xff:allow,A="\x00x",B=\x01\x02\x01\n'
            b'#c\n\n \t:deny,\xc3\xa9=|v|\n'
            b'9.9.9.9:allow,X=""\n9.9.9.9:deny')
    real = run_tcprules(text)
    assert real.status == "ok"
    from acl.parse.tcprules import parse_tcprules, rules_to_records
    recs = [(k, d) for k, d, _ in rules_to_records(parse_tcprules(text))]
    assert make_cdb(recs) == real.cdb


def _sample_blob() -> bytes:
    recs = [(f"10.0.{i}.".encode(), b"D\0") for i in range(30)]
    recs += [(b"1.2.3.4", b"+A=x\0"), (b"", b"D\0"), (b"=h.example.com", b"")]
    return make_cdb(recs)


def test_every_truncation_is_an_error():
    blob = _sample_blob()
    for n in range(len(blob)):
        with pytest.raises(CdbError):
            layer_from_cdb(blob[:n], "t.cdb")


def _bounded(fn):
    t = time.monotonic()
    try:
        return fn()
    finally:
        assert time.monotonic() - t < 5, "reader took too long (loop not bounded?)"


def _table(blob: bytearray, i: int, pos: int, slots: int) -> None:
    struct.pack_into("<II", blob, 8 * i, pos, slots)


def test_hostile_tables_are_errors_not_hangs():
    key = b"1.2.3.4"
    h = cdb_hash(key)
    i = h & 255
    base = bytearray(make_cdb([(key, b"")]))
    for pos, slots in [(0xFFFFFFF0, 1), (HEADER_SIZE, 2**29 + 1), (HEADER_SIZE, 0xFFFFFFFF),
                       (len(base), 1), (len(base) - 4, 1)]:
        blob = bytearray(base)
        _table(blob, i, pos, slots)
        r = CdbReader(bytes(blob))
        with pytest.raises(CdbError):
            _bounded(lambda r=r: r.find(key))
        with pytest.raises(CdbError):
            _bounded(lambda blob=blob: layer_from_cdb(bytes(blob)))


def test_full_table_of_wrong_hashes_terminates():
    """Every slot full, no hash matches: the probe stops after `slots` tries."""
    n = 5000
    slots = b"".join(struct.pack("<II", 1, HEADER_SIZE) for _ in range(n))
    blob = bytearray(HEADER_SIZE) + struct.pack("<II", 1, 0) + b"x" + slots
    tpos = HEADER_SIZE + 9
    for i in range(256):
        _table(blob, i, tpos, n)
    r = CdbReader(bytes(blob))
    assert _bounded(lambda: r.find(b"anything")) is None
    assert _bounded(lambda: layer_from_cdb(bytes(blob))).check(Request("s", "1.2.3.4"), 0).allowed


def test_slot_pointing_outside_is_an_error():
    blob = bytearray(make_cdb([(b"1.2.3.4", b"D\0")]))
    h = cdb_hash(b"1.2.3.4")
    tpos, _n = struct.unpack_from("<II", blob, 8 * (h & 255))
    for s in range(2):
        if struct.unpack_from("<II", blob, tpos + 8 * s)[1]:
            struct.pack_into("<II", blob, tpos + 8 * s, h, len(blob) + 100)
    with pytest.raises(CdbError):
        layer_from_cdb(bytes(blob))
    with pytest.raises(CdbError):
        CdbReader(bytes(blob)).find(b"1.2.3.4")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_cdb_is_answered_or_refused(data):
    """Random byte edits and truncations of a real-looking cdb."""
    blob = bytearray(_sample_blob())
    for _ in range(data.draw(st.integers(0, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    blob = bytes(blob)
    reader = CdbReader(blob)
    probes = [b"1.2.3.4", b"", b"10.0.7.", b"=h.example.com", data.draw(st.binary(max_size=8))]
    try:
        layer = _bounded(lambda: layer_from_cdb(blob, "m.cdb"))
    except CdbError:
        for k in probes:
            try:
                _bounded(lambda k=k: reader.find(k))
            except CdbError:
                pass
        return
    # a file that validated never fails a lookup, and agrees with find()
    for k in probes:
        found = reader.find(k)
        assert layer.data_for(k.decode("utf-8", "surrogateescape")) == found
    layer.check(Request("s", "10.0.7.9", host="h.example.com", user="joe"), 0.0)


def test_loader_detects_cdb_by_content(tmp_path):
    blob = make_cdb([(b"1.2.3.4", b"D\0")])
    p = tmp_path / "rules"          # no .cdb extension
    p.write_bytes(blob)
    assert not load_tcprules(p).check(Request("s", "1.2.3.4"), 0).allowed
    t = tmp_path / "rules.txt"
    t.write_bytes(b"1.2.3.4:deny\n")
    assert not load_tcprules(t).check(Request("s", "1.2.3.4"), 0).allowed
