"""The cdb reader and writer: round trips, other readers, hostile files.

Invariant for the reader, in one sentence: whatever the bytes, loading either
gives the same answers as djb's lookup or raises CdbError -- never another
exception, never an endless loop.
"""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import cdblib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import acl
from acl.cdb import HEADER_SIZE, CdbError, CdbReader, cdb_hash, make_cdb
from acl.compile.tcprules import layer_from_cdb, load_tcprules, looks_like_cdb
from acl.model import Request

from .gen import Pools, colliding_keys, random_rules
from .real import check_many, check_many_raw, need_tools, parse_check, run_tcprules

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
    # A table inside the header: its slots would be header words.  djb's
    # lookup reads them (the file is in bounds); no cdb_make writes that, and
    # the loader refuses it with the other tables that are not where a
    # table can be.
    for pos, slots in [(8 * i, 1), (0, 2), (HEADER_SIZE - 8, 1)]:
        blob = bytearray(base)
        _table(blob, i, pos, slots)
        with pytest.raises(CdbError, match="outside"):
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


def test_full_table_load_is_linear_and_answers_as_find():
    """A hand-made table with no empty slot holding 128 keys of one hash in
    reverse order: each find() walks round the table to its key, the load
    reads each slot and record a bounded number of times -- and agrees."""
    keys, h = colliding_keys(7)
    recs = [(k, b"+N=%d\0" % i) for i, k in enumerate(keys)]
    blob = bytearray(make_cdb(recs))
    pos, slots = HEADER_SIZE, []
    for k, d in recs:
        slots.append(struct.pack("<II", h, pos))
        pos += 8 + len(k) + len(d)
    blob[pos:] = b"".join(reversed(slots))
    for i in range(256):
        _table(blob, i, pos, len(slots) if i == h & 255 else 0)
    reader = CdbReader(bytes(blob))
    mapping = reader.mapping()
    assert reader.reads <= 4 * len(keys)
    finds = CdbReader(bytes(blob))
    assert mapping == {k: finds.find(k) for k in keys} == dict(recs)
    assert finds.reads > len(keys) ** 2 / 4          # what one find() per key costs


@need_tools
def test_colliding_keys_load_in_linear_reads(tmp_path):
    """2**10 distinct keys with one djb hash, built by the real tcprules:
    find() walks their shared probe run, so one find() per key was quadratic.
    The load reads each slot and record a bounded number of times, and still
    answers as tcprulescheck does: first duplicate wins, a colliding key that
    is absent is absent."""
    keys, _h = colliding_keys(10)
    r = random.Random(1)
    absent = set(r.sample(keys, 24))
    present = [k for k in keys if k not in absent]
    dups = r.sample(present, 24)
    text = b"".join(k + b':allow,N="%d"\n' % i for i, k in enumerate(present))
    text += b"".join(k + b":deny\n" for k in dups)
    real = run_tcprules(text)
    assert real.status == "ok", real.stderr
    records = len(present) + len(dups)

    reader = CdbReader(real.cdb)
    mapping = reader.mapping()
    assert len(mapping) == len(present)
    # validate + mapping: 2 slots per record, each table slot read twice and
    # each record header twice; one find() per key would be ~records**2 / 4.
    assert reader.reads <= 8 * records

    path = tmp_path / "coll.cdb"
    path.write_bytes(real.cdb)
    layer = load_tcprules(path)
    sample = r.sample(present, 24) + dups[:12] + sorted(absent)[:12]
    outs = check_many(os.fspath(path), [(k.decode(), None, None) for k in sample])
    for k, out in zip(sample, outs, strict=True):
        key, deny, env = parse_check(out)
        data = mapping.get(k)
        if key is None:
            assert k in absent and data is None
            continue
        assert key == k and data is not None
        assert deny is False
        assert data == b"+" + env[0] + b"\0"
        assert layer.data_for(k.decode()) == data


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mapping_is_find_for_hand_made_tables(data):
    """Tables no cdb_make writes -- slots in any order, runs and empty slots
    anywhere, full tables, duplicate and wrong-hash slots, slots that carry
    another record's hash (of this table or another one: a key that is a
    prefix of the record's, "a" against "aa", must not match it): the
    one-walk mapping still equals find() for every key a slot names."""
    recs = data.draw(st.lists(st.tuples(st.sampled_from([b"", b"a", b"aa", b"b", b"ab"]),
                                        st.binary(min_size=1, max_size=2)),
                              min_size=1, max_size=10))
    blob = bytearray(make_cdb(recs))
    where, pos = [], HEADER_SIZE
    for k, d in recs:
        where.append(pos)
        pos += 8 + len(k) + len(d)
    tables = {cdb_hash(k) & 255 for k, _d in recs}
    for i in range(256):
        _table(blob, i, len(blob), 0)
    for i in sorted(tables):
        records = st.integers(0, len(recs) - 1)
        # (record, its hash as "own", "wrong" or another record's, that record)
        slots = data.draw(st.lists(st.none() | st.tuples(records, st.sampled_from(
            ["own", "wrong", "other"]), records), min_size=1, max_size=8))
        _table(blob, i, len(blob), len(slots))
        for slot in slots:
            if slot is None:
                blob += struct.pack("<II", 0, 0)
                continue
            r, kind, other = slot
            h = cdb_hash(recs[other if kind == "other" else r][0])
            blob += struct.pack("<II", h ^ (kind == "wrong") << 8, where[r])
    reader = CdbReader(bytes(blob))
    found = {k: reader.find(k) for k, _d in recs}
    assert reader.mapping() == {k: v for k, v in found.items() if v is not None}


def test_overlapping_records_are_an_error():
    """Slots pointing into each other's records would make the load hash the
    same bytes again and again (quadratic); cdb_make never writes that."""
    n = 400
    body = struct.pack("<II", 0, 0) * (n + 4)      # filler records read as (0, 0)
    rpos = HEADER_SIZE
    blob = bytearray(HEADER_SIZE) + struct.pack("<II", 8 * n, 0) + body
    slots = b"".join(struct.pack("<II", 1 | (s << 8), rpos + 8 * (s % 2))
                     for s in range(2))
    tpos = len(blob)
    blob += slots
    _table(blob, 1, tpos, 2)
    with pytest.raises(CdbError, match="overlaps"):
        CdbReader(bytes(blob)).mapping()
    # by a single byte: a record whose header starts on the last byte of the
    # one before (key b"\0", 9 bytes in all, then a record of empty key and data)
    first, second = HEADER_SIZE, HEADER_SIZE + 8
    blob = bytearray(HEADER_SIZE) + struct.pack("<II", 1, 0) + b"\0" + bytes(7)
    tpos = len(blob)
    blob += struct.pack("<II", cdb_hash(b"\0"), first) + struct.pack("<II", cdb_hash(b""), second)
    for i in range(256):
        _table(blob, i, tpos, 0)
    _table(blob, cdb_hash(b"\0") & 255, tpos, 1)
    _table(blob, cdb_hash(b"") & 255, tpos + 8, 1)
    with pytest.raises(CdbError, match="overlaps"):
        CdbReader(bytes(blob)).mapping()


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
    # a record header that starts 1 to 7 bytes before the end: cdb_read fails
    # on it, and so does find(), with CdbError (not a short read)
    for back in range(1, 8):
        cut = bytearray(blob)
        for s in range(2):
            if struct.unpack_from("<II", cut, tpos + 8 * s)[1]:
                struct.pack_into("<II", cut, tpos + 8 * s, h, len(cut) - back)
        with pytest.raises(CdbError):
            CdbReader(bytes(cut)).find(b"1.2.3.4")


def test_a_full_table_wraps_to_the_first_duplicate():
    """A table with no empty slot, a key's two records in its first two
    slots and its probe starting at the last slot: cdb_find wraps round and
    answers the first of the two, and so does the one-walk mapping."""
    key, slots = next((k, n) for k in (b"k%d" % i for i in range(100))
                      for n in range(3, 9) if (cdb_hash(k) >> 8) % n == n - 1)
    h = cdb_hash(key)
    recs = [(key, b"first"), (key, b"second")] + [(b"-", b"x")] * (slots - 2)
    blob = bytearray(make_cdb(recs))
    where, pos = [], HEADER_SIZE
    for k, d in recs:
        where.append(pos)
        pos += 8 + len(k) + len(d)
    for i in range(256):
        _table(blob, i, pos, 0)
    _table(blob, h & 255, len(blob), slots)
    blob += struct.pack("<II", h, where[0]) + struct.pack("<II", h, where[1])
    blob += b"".join(struct.pack("<II", h ^ 1 << 8, where[n]) for n in range(2, slots))
    assert CdbReader(bytes(blob)).find(key) == b"first"
    assert CdbReader(bytes(blob)).mapping() == {key: b"first"}


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


@need_tools
def test_cut_cdb_without_cdb_name_is_a_broken_cdb(tmp_path):
    """Every cut of a tcprules-built cdb from 16 bytes on that tcprulescheck
    cannot read is refused as a cdb (CdbError), whatever its name -- never
    read as rules text.  (Under 16 bytes there is no header chain to go by.)"""
    real = run_tcprules(b"".join(b"10.%d.:allow,N=\"%d\"\n" % (i, i) for i in range(40))
                        + b"127.0.0.2:allow\n:deny\n")
    assert real.status == "ok"
    cuts = sorted(set(range(16, 2048, 97)) | set(range(2048, len(real.cdb), 7)))
    paths = []
    for n in cuts:
        p = tmp_path / f"cut{n}"
        p.write_bytes(real.cdb[:n])
        paths.append(p)
    outs = check_many_raw([os.fspath(p) for p in paths], "127.0.0.2")
    refused = 0
    for p, (code, out) in zip(paths, outs, strict=True):
        if code == 0:
            continue                      # tcprulescheck's probes missed the cut
        assert b"protocol error" in out, out
        refused += 1
        with pytest.raises(CdbError):
            load_tcprules(p)
    assert refused > len(cuts) / 2


def test_rules_text_is_never_taken_for_a_cdb(tmp_path):
    """Generated rules files and the example load as text, however long."""
    for seed in range(300):
        rnd = random.Random(seed)
        text, _n = random_rules(rnd, Pools(rnd), lines=rnd.choice([3, 40, 200]))
        assert not looks_like_cdb("rules", text), text[:80]
    example = Path(acl.__file__).parent / "examples" / "tcp.smtpd"
    assert not looks_like_cdb("tcp.smtpd", example.read_bytes())
    for n in range(0, 60, 7):
        assert looks_like_cdb("rules", make_cdb([(b"k%d" % i, b"D\0") for i in range(n)]))
