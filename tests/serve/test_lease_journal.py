"""The lease store without systemd (acl/serve/leasestore.py): the journal's
format, what a crash at any store leaves of it, damaged journals, the fd
store's names among passed sockets (a name passed twice too), ``[run]
keep_leases``, adoption at start over real connections -- the journal
passed written on, or a new one stored beside it -- and sends that never
block, with a datagram socket standing in for systemd's notify socket (the
live store: tests/deploy/test_lease_store_live.py).
"""

from __future__ import annotations

import array
import asyncio
import os
import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl.engine import Engine
from acl.errors import PolicyError
from acl.model import Request
from acl.policy import load_policy
from acl.serve import lease_journal as lj
from acl.serve import leasestore as ls
from acl.serve import systemd
from acl.serve.conn import BinaryConnection
from acl.serve.server import Server
from acl.wire import binary as wb

REQUESTS = [
    Request("echo", "127.0.0.8", 40000, "127.0.0.1", 7, lease=True),
    Request("echo", "::ffff:192.0.2.9", 1, "::1", 65535, lease=True),
    Request("sshd", "2001:db8::1", 0, None, 0, lease=True),
    Request("caf\xe9-\u2603", "10.0.0.1", 5, "10.0.0.2", 22, lease=True),
    Request("s" * 255, "192.0.2.1", 2, None, 0, lease=True),
]


def fresh(keep: int = 8, generation: int = 1) -> lj.Journal:
    return lj.Journal(bytearray(lj.journal_size(2 * keep)), keep, generation)


def contents(j: lj.Journal) -> lj.Contents:
    return lj.read_journal(bytes(j.buf))


def test_records_read_back_as_written():
    j = fresh(generation=7)
    assert j.add_connection(5, 0) and j.add_connection(9, 1)
    for i, r in enumerate(REQUESTS):
        assert j.add_lease(5 if i % 2 else 9, 100 + i, r)
    j.set_state(5, 2)
    got = contents(j)
    assert got.generation == 7 and got.bad == 0
    assert got.conns == {5: 2, 9: 1}
    assert got.leases == {100 + i: (5 if i % 2 else 9, r) for i, r in enumerate(REQUESTS)}


def test_dropping_frees_records_and_a_connection_takes_its_leases_along():
    j = fresh(keep=2)
    assert j.add_connection(1, 0) and j.add_connection(2, 0)
    assert not j.add_connection(3, 0)                  # keep = 2 connections
    assert j.add_lease(1, 10, REQUESTS[0]) and j.add_lease(1, 11, REQUESTS[1])
    assert not j.add_lease(2, 12, REQUESTS[2])         # and 2 leases
    j.drop_lease(10)
    assert j.add_lease(2, 12, REQUESTS[2])
    j.drop_connection(1)
    got = contents(j)
    assert got.conns == {2: 0} and set(got.leases) == {12}
    assert j.add_connection(3, 1) and j.add_lease(3, 13, REQUESTS[3])
    assert set(contents(j).leases) == {12, 13}
    assert not j.add_lease(99, 14, REQUESTS[0])        # no such connection


def test_a_lease_that_does_not_fit_a_record_is_not_kept():
    j = fresh()
    j.add_connection(1, 0)
    assert not j.add_lease(1, 2, Request("echo", "host.example", lease=True))
    assert not j.add_lease(1, 3, Request("s" * 256, "127.0.0.1", lease=True))
    assert not j.add_lease(1, 4, Request("", "127.0.0.1", lease=True))
    assert contents(j).leases == {}


class Recording:
    """A buffer that records every store into it (the journal only stores
    by slice or index assignment)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.ops: list = []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value) -> None:
        self.ops.append((key, value))
        self.data[key] = value


def _apply(size: int, ops) -> bytes:
    data = bytearray(size)
    for key, value in ops:
        data[key] = value
    return bytes(data)


def _state(c: lj.Contents):
    return c.conns, c.leases, c.bad


def _between(got, before, after) -> bool:
    """``got`` holds what ``before`` and ``after`` share, and each other
    record it holds is as one of them has it (no torn, no made-up record)."""
    for g, b, a in zip(got[:2], before[:2], after[:2], strict=True):
        for k in b.keys() & a.keys():
            if b[k] == a[k] and g.get(k) != b[k]:
                return False
        if any(v not in (b.get(k), a.get(k)) for k, v in g.items()):
            return False
    return got[2] == 0


def test_a_crash_at_any_store_leaves_the_journal_before_or_after_the_change():
    """Replay every prefix of the stores a run of changes made: each reads
    as the journal before the change under way, after it, or part way --
    records of it dropped or written, never a torn or different record (a
    record is valid last, invalid first)."""
    rng = random.Random(24)
    buf = Recording(lj.journal_size(2 * 6))
    j = lj.Journal(buf, 6, 1)
    states = [_state(lj.read_journal(bytes(buf.data)))]
    marks = [len(buf.ops)]
    conns: list[int] = []
    leases: dict[int, int] = {}
    next_id = 1
    for _ in range(120):
        op = rng.random()
        if op < 0.3 and len(conns) < 6:
            conns.append(next_id)
            j.add_connection(next_id, rng.choice((0, 1)))
        elif op < 0.6 and conns and len(leases) < 6:
            c = rng.choice(conns)
            leases[next_id] = c
            j.add_lease(c, next_id, rng.choice(REQUESTS))
        elif op < 0.75 and leases:
            lease = rng.choice(sorted(leases))
            del leases[lease]
            j.drop_lease(lease)
        elif op < 0.85 and conns:
            c = conns.pop(rng.randrange(len(conns)))
            leases = {k: v for k, v in leases.items() if v != c}
            j.drop_connection(c)
        elif conns:
            j.set_state(rng.choice(conns), rng.choice((1, 2)))
        next_id += 1
        states.append(_state(lj.read_journal(bytes(buf.data))))
        marks.append(len(buf.ops))
    size = len(buf)
    for n in range(1, len(states)):
        before, after = states[n - 1], states[n]
        for k in range(marks[n - 1], marks[n] + 1):
            got = _state(lj.read_journal(_apply(size, buf.ops[:k])))
            assert _between(got, before, after), (n, k, got, before, after)
    assert all(s[2] == 0 for s in states)


def test_a_damaged_record_is_dropped_and_counted_never_read_as_another():
    j = fresh()
    j.add_connection(1, 1)
    for i, r in enumerate(REQUESTS):
        j.add_lease(1, 10 + i, r)
    good = contents(j)
    rng = random.Random(7)
    for _ in range(400):
        data = bytearray(j.buf)
        rec = rng.randrange(1 + len(REQUESTS))
        at = lj.HEADER + rec * lj.RECORD + rng.choice([1, 2, 3, 4, *range(8, lj.RECORD)])
        data[at] ^= rng.randrange(1, 256)
        got = lj.read_journal(bytes(data))
        kept = {k: v for k, v in got.leases.items()}
        # every record read is one that was written, unchanged
        assert all(good.leases.get(k) == v for k, v in kept.items())
        assert all(good.conns.get(k) in (v, None) for k, v in got.conns.items())
        lost = (len(good.leases) - len(kept)) + (len(good.conns) - len(got.conns))
        assert lost == got.bad <= 1


def test_a_record_whose_kind_byte_changed_is_dropped_never_read_as_the_other_kind():
    """The CRC is seeded with the kind (lease_journal.py's layout): a record
    whose kind byte changed is bad, never read as the other kind -- a lease
    record that precedes its sealed connection's record (records are
    reused lowest first) must not make that connection read as open."""
    j = fresh(keep=4)
    j.add_connection(1, 0)                 # record 0
    j.add_connection(2, 1)                 # record 1: sealed
    j.drop_connection(1)                   # record 0 free again
    j.add_lease(2, 20, R1)                 # record 0: before its connection
    j.add_lease(2, 21, R2)                 # record 2
    good = contents(j)
    assert good.conns == {2: 1} and set(good.leases) == {20, 21}
    for i, kind in ((0, lj.KIND_CONN), (2, lj.KIND_CONN), (1, lj.KIND_LEASE)):
        data = bytearray(j.buf)
        data[lj.HEADER + i * lj.RECORD + 1] = kind
        got = lj.read_journal(bytes(data))
        assert got.bad == 1, (i, got)
        assert got.conns == ({} if i == 1 else good.conns), (i, got)
        assert got.leases == {k: v for k, v in good.leases.items()
                              if k != {0: 20, 2: 21}.get(i)}, (i, got)


def test_of_a_lease_id_written_twice_the_first_record_is_read():
    """read_journal: of a repeated id, the first record -- the other is bad
    (what a crash of a reopen part way can leave: acl never writes one)."""
    j = fresh(keep=4)
    j.add_connection(5, 0)
    j.add_lease(5, 6, R1)
    j.add_connection(7, 1)
    j._write(lj.KIND_LEASE, 0, 7, 6, R2)   # a second valid record for lease 6
    j._write(lj.KIND_CONN, 0, 5)           # and for connection 5, open
    got = contents(j)
    assert got.leases == {6: (5, R1)} and got.conns == {5: 0, 7: 1} and got.bad == 2


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:10], "shorter than its header"),
    (lambda b: b"X" + b[1:], "no journal header"),
    (lambda b: b[:8] + (2).to_bytes(4, "little") + b[12:], "version 2"),
    (lambda b: b[:lj.HEADER + 100], "shorter than 16 records"),
])
def test_a_journal_whose_header_does_not_read_is_refused_whole(damage, message):
    j = fresh()
    j.add_connection(1, 0)
    with pytest.raises(lj.JournalError, match=message):
        lj.read_journal(damage(bytes(j.buf)))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=lj.HEADER + 4 * lj.RECORD), st.integers(0, 4))
def test_garbage_reads_as_a_journal_error_or_as_dropped_records(junk, capacity):
    """Parse it or raise JournalError, never anything else; a valid header
    over garbage records yields only records that check."""
    head = lj._HEAD.pack(lj.MAGIC, lj.VERSION, lj.RECORD, capacity, 1)
    for data in (junk, head + junk[len(head):]):
        try:
            got = lj.read_journal(data)
        except lj.JournalError:
            continue
        assert got.bad + len(got.conns) + len(got.leases) <= capacity


# -- names of passed descriptors ----------------------------------------------
def test_the_stores_names_are_set_apart_from_socket_roles():
    socks, stored = systemd.split_stored(
        ["acl-lease-conn-12", "query", "acl-lease-journal-3", "admin"], 4)
    assert socks == [(4, "query"), (6, "admin")]
    assert stored == [("acl-lease-conn-12", 3), ("acl-lease-journal-3", 5)]
    assert systemd._roles(["query", "admin"], 2, [4, 6]) == ["query", "admin"]


def test_a_store_name_passed_twice_does_not_refuse_the_start():
    """systemd passes whatever it was given under a name, twice if it was
    given it twice: both go to the store's side (open_store chooses), none
    is taken for a socket -- which would refuse the start (a name that is
    no role)."""
    given = ["acl-lease-conn-5", "query", "acl-lease-conn-5", "acl-lease-journal-2",
             "acl-lease-journal-2"]
    socks, stored = systemd.split_stored(given, 5)
    assert socks == [(4, "query")]
    assert systemd._roles([n for _, n in socks], 1, [4]) == ["query"]
    assert stored == [("acl-lease-conn-5", 3), ("acl-lease-conn-5", 5),
                      ("acl-lease-journal-2", 6), ("acl-lease-journal-2", 7)]


@pytest.mark.parametrize("name", ["acl-lease-conn-1.socket", "acl-lease-conn-", "acl-leases",
                                  "acl-lease-other-1", "acl-lease-conn-1x"])
def test_a_unit_name_is_no_store_name_and_still_refused(name):
    socks, stored = systemd.split_stored(["query", name], 2)
    assert stored == []
    with pytest.raises(systemd.PassedSocketError, match=f"fd 4 is named '{name}'"):
        systemd._roles([n for _, n in socks], len(socks), [fd for fd, _ in socks])


# -- [run] keep_leases ----------------------------------------------------------
@pytest.mark.parametrize("value, error", [
    ("8", None), ("0", None), ("65536", None),
    ("-1", "run.keep_leases: must be 0 .. 65536"),
    ("65537", "run.keep_leases: must be 0 .. 65536"),
    ('"8"', "run.keep_leases: expected int"),
    ("true", "run.keep_leases: expected int"),
])
def test_keep_leases_is_checked_where_it_is_written(tmp_path, value, error):
    (tmp_path / "policy.toml").write_text(f"[run]\nwatch = false\nkeep_leases = {value}\n")
    if error is None:
        assert load_policy(tmp_path / "policy.toml").run.keep_leases == int(value)
        return
    with pytest.raises(PolicyError, match=rf"policy.toml:3:15: {error}"):
        load_policy(tmp_path / "policy.toml")


# -- adoption at start ------------------------------------------------------------
XINETD = "".join(f"{line}\n" for line in (
    "service echo", "{", "type = UNLISTED", "port = 7", "socket_type = stream",
    "protocol = tcp", "wait = no", "user = root", "server = /bin/cat", "instances = 2",
    "per_source = 1", "}"))


class FakeManager:
    """The notify socket's other end: what systemd would be told and given."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.env = {"NOTIFY_SOCKET": str(path)}

    def messages(self) -> list[tuple[str, list[int]]]:
        out = []
        while True:
            try:
                msg, anc, _flags, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64))
            except BlockingIOError:
                return out
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            out.append((msg.decode(), list(fds)))

    def close(self) -> None:
        self.sock.close()


def fill_notify_queue(link: systemd.FdStoreLink, fd: int, most: int = 5000) -> int:
    """Store ``fd`` under new names until a send says False: how many were
    sent.  The tests of systemd not reading need its queue full, and how
    many datagrams fill it is the kernel's to say -- net.unix.max_dgram_qlen
    (the kernel's 10 in a fresh network namespace, the 512 of systemd's
    sysctl.d on a host) or the sender's buffer, whichever comes first -- so
    they send until refused rather than a count of their own; ``most``
    bounds the loop.  A send refused because the link broke is no full
    queue: that fails here."""
    for i in range(most):
        if not link.store(f"acl-lease-conn-{i}", fd):
            assert not link.broken, "the notify socket broke: not a full queue"
            return i
    pytest.fail(f"systemd's queue never filled ({most} sends taken)")


@pytest.fixture
def engine(tmp_path):
    (tmp_path / "xinetd.conf").write_text(XINETD)
    (tmp_path / "policy.toml").write_text(
        '[run]\nwatch = false\n[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    return lambda: Engine(load_policy(tmp_path / "policy.toml"), batch=False)


def _journal_fd(entries, keep: int = 8, generation: int = 4) -> int:
    """A journal memfd as acl makes one (sealed at its size) holding what
    ``entries`` describe: [(conn, state, [(lease, request)])]."""
    fd, mapping = ls._new_journal(keep, generation)
    j = lj.Journal(mapping, keep, generation)
    for conn, state, leases in entries:
        j.add_connection(conn, state)
        for lease, request in leases:
            j.add_lease(conn, lease, request)
    mapping.close()
    return fd


def _read_fd(fd: int) -> lj.Contents:
    return lj.read_journal(os.pread(fd, os.fstat(fd).st_size, 0))


def test_adoption_counts_live_connections_leases_and_drops_the_rest(tmp_path, engine):
    """A live stored connection with its record is adopted with its state
    and leases (counted again: instances 2 is full); one whose client left,
    one without a record, and a lease record without its connection are
    dropped and removed from the store; the journal systemd passed is
    written on (the dropped records cleared, nothing stored or removed:
    systemd has no room for another); new lease ids continue past every id
    seen."""
    mgr = FakeManager(tmp_path / "notify")
    live, live_peer = socket.socketpair()
    gone, gone_peer = socket.socketpair()
    norec, norec_peer = socket.socketpair()
    gone_peer.close()
    r1 = Request("echo", "127.0.0.8", 1, "127.0.0.1", 7, lease=True)
    r2 = Request("echo", "127.0.0.9", 1, "127.0.0.1", 7, lease=True)
    jfd = _journal_fd([(5, 1, [(5, r1), (6, r2)]), (7, 0, [(7, r1)]), (30, 0, [(31, r2)])])
    mine = os.dup(jfd)
    stored = [("acl-lease-conn-5", live.detach()), ("acl-lease-conn-7", gone.detach()),
              ("acl-lease-conn-40", norec.detach()), ("acl-lease-journal-4", jfd)]
    eng = engine()
    logged: list[str] = []
    try:
        store, adopted = ls.open_store(8, stored, eng, logged.append, mgr.env)
        assert [(a.number, a.state, a.leases) for a in adopted] == [(5, 1, {5, 6})]
        assert eng.leases_active == 2
        assert eng.decide(Request("echo", "127.0.0.10", lease=True), 1e9).reason.name == \
            "SERVICE_LIMIT"
        assert eng.release(6) and eng.decide(Request("echo", "127.0.0.10", lease=True),
                                             1e9).lease == 41
        msgs = mgr.messages()
        texts = [m for m, _ in msgs]
        assert sorted(texts) == ["FDSTOREREMOVE=1\nFDNAME=acl-lease-conn-40",
                                 "FDSTOREREMOVE=1\nFDNAME=acl-lease-conn-7"]
        got = _read_fd(mine)
        assert got.generation == 4 and got.bad == 0 and got.conns == {5: 1}
        assert got.leases == {5: (5, r1), 6: (5, r2)}
        # what the running acl writes goes into it
        store.journal.add_lease(5, 41, r2)
        assert set(_read_fd(mine).leases) == {5, 6, 41}
        assert store.stats()["dropped_records"] == 2          # lease 7's and 31's
        assert store.closed_at_start == 2
        assert any("(journal acl-lease-journal-4, written on)" in s for s in logged)
        # and as Prometheus reads it (docs/metrics.md)
        server = Server(eng, compiled=False, log_fn=logged.append)
        server.lease_store = store
        body = server.metrics_body()[0].decode()
        for line in ('acl_lease_store_adopted{kind="connections"} 1.0',
                     'acl_lease_store_adopted{kind="leases"} 2.0',
                     'acl_lease_store_kept{kind="connections"} 1.0',
                     # 3: lease 6 was released in the engine alone, not by its connection
                     'acl_lease_store_kept{kind="leases"} 3.0',
                     "acl_lease_store_dropped_records 2.0", "acl_lease_store_unkept_total 0.0"):
            assert line in body, line
        assert any("kept connection 7 closed: its client had closed it" in s for s in logged)
        assert any("kept connection 40 closed: no record of it in the journal" in s
                   for s in logged)
        # the adopted socket is the very connection
        adopted[0].sock.sendall(b"x")
        assert live_peer.recv(1) == b"x"
        norec_peer.settimeout(5)
        assert norec_peer.recv(1) == b""                      # closed: its client sees it
    finally:
        for a in locals().get("adopted", []):
            a.sock.close()
        for s in (live_peer, norec_peer):
            s.close()
        os.close(mine)
        mgr.close()


def test_an_unusable_journal_closes_every_kept_connection(tmp_path, engine):
    mgr = FakeManager(tmp_path / "notify")
    a, peer = socket.socketpair()
    fd = os.memfd_create("junk")
    os.write(fd, os.urandom(lj.HEADER + lj.RECORD))
    logged: list[str] = []
    eng = engine()
    try:
        store, adopted = ls.open_store(8, [("acl-lease-conn-3", a.detach()),
                                           ("acl-lease-journal-9", fd)], eng, logged.append,
                                       mgr.env)
        assert adopted == [] and eng.leases_active == 0
        assert any("journal acl-lease-journal-9 is unusable: no journal header" in s
                   for s in logged)
        assert store.journal.generation == 10                 # past the unusable one
        assert peer.recv(1) == b""                            # its client sees the end
        for _, fds in mgr.messages():
            for f in fds:
                os.close(f)
    finally:
        peer.close()
        mgr.close()


@pytest.mark.parametrize("keep, env", [(0, {"NOTIFY_SOCKET": "x"}), (8, {})])
def test_off_the_store_closes_what_systemd_passed(tmp_path, engine, keep, env):
    a, peer = socket.socketpair()
    logged: list[str] = []
    try:
        store, adopted = ls.open_store(keep, [("acl-lease-conn-3", a.detach())], engine(),
                                       logged.append, env)
        assert store is None and adopted == []
        assert peer.recv(1) == b""
        assert any("1 descriptors systemd kept were closed" in s for s in logged)
    finally:
        peer.close()


def test_acl_serve_without_systemd_says_it_keeps_nothing_and_a_reload_waits(tmp_path):
    """keep_leases without NOTIFY_SOCKET: one line, and serving as before; a
    reload that changes the value says it waits for the next start."""
    from tests.serve.conftest import policy_toml
    from tests.serve.test_server import admin
    from tests.sidecar import start_server

    cfg = policy_toml(tmp_path, run="keep_leases = 4")
    srv = start_server(tmp_path, cfg, env={"NOTIFY_SOCKET": ""})
    try:
        assert "[run] keep_leases: not run by systemd (no NOTIFY_SOCKET)" in srv.text()
        assert admin(srv.admin, "stats")["lease_store"] is None
        cfg.write_text(cfg.read_text().replace("keep_leases = 4", "keep_leases = 9"))
        assert admin(srv.admin, "reload")["ok"] is True
        assert ("[run] keep_leases = 9 takes effect at the next start (running with 4)"
                in srv.text())
    finally:
        srv.stop()


# -- the hand-over at a stop ---------------------------------------------------------
def _stored_names(mgr: FakeManager, kind: str) -> list[str]:
    """The names ``kind`` (FDSTORE, FDSTOREREMOVE) was sent for; the
    descriptors the fake manager was given are closed."""
    out = []
    for text, fds in mgr.messages():
        for fd in fds:
            os.close(fd)
        if text.startswith(f"{kind}=1\nFDNAME="):
            out.append(text.split("FDNAME=", 1)[1])
    return out


def test_a_kept_connection_closing_when_the_stop_begins_leaves_the_store(tmp_path, engine):
    """A kept connection whose close is under way at the stop (a frame with
    a bad length answered, the replies before it still being written) is
    not handed over even when its close completes within the hand-over: it
    leaves systemd's store -- else systemd's copy keeps the connection open
    past acl's close, its client never sees the end, and the next start
    adopts it with its leases."""
    mgr = FakeManager(tmp_path / "notify")
    logged: list[str] = []
    eng = engine()
    server = Server(eng, compiled=False, log_fn=logged.append)
    server.lease_store = ls.LeaseStore(systemd.FdStoreLink(mgr.env),
                                       fresh(keep=8, generation=1), logged.append)
    client, theirs = socket.socketpair()
    # a small send buffer: the replies back up in the transport at once
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def scenario():
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        theirs.setblocking(False)
        _, c = await loop.connect_accepted_socket(lambda: BinaryConnection(server),
                                                  sock=theirs)
        await loop.sock_sendall(client, wb.encode_decide(
            1, Request("echo", "127.0.0.8", lease=True)))
        dec = wb.ReplyDecoder()
        got = dec.feed(await asyncio.wait_for(loop.sock_recv(client, 4096), 10))
        assert got[0].decision.lease == 1 and c.kept == 1
        assert _stored_names(mgr, "FDSTORE") == ["acl-lease-conn-1"]
        # pings the client does not read yet, then a frame with a bad length
        await loop.sock_sendall(client, b"".join(wb.encode_ping(i) for i in range(2000))
                                + struct.pack("<I", 2) + bytes(8))
        for _ in range(1000):
            if c.transport.is_closing():
                break
            await asyncio.sleep(0.01)
        assert c.transport.is_closing() and c in server._conns   # ERROR not written yet
        handing = asyncio.ensure_future(server._hand_over(bound=5.0))
        # now the client reads: the close completes within the hand-over
        for _ in range(5000):
            try:
                data = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
            except (TimeoutError, ConnectionResetError):
                break
            if not data or any(r.type == wb.T_ERROR for r in dec.feed(data)):
                break
        await asyncio.wait_for(handing, 10)

    try:
        asyncio.run(scenario())
        assert _stored_names(mgr, "FDSTOREREMOVE") == ["acl-lease-conn-1"]
        assert server.lease_store.journal.conns == {}
        assert any("0 connections handed over to systemd, 1 closed: 1 being closed already"
                   in s for s in logged), logged
    finally:
        client.close()
        theirs.close()
        mgr.close()


def test_a_start_whose_new_journal_cannot_be_made_keeps_nothing_half_done(
        tmp_path, engine, monkeypatch):
    """No memory for the new journal (the one system call that can fail
    after the stored descriptors are read): acl serves without the store,
    every stored connection closed once and out of the store, no lease
    counted -- nothing adopted then dropped, no descriptor closed twice."""
    mgr = FakeManager(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", mgr.env["NOTIFY_SOCKET"])

    def no_memory(keep, generation):
        raise OSError(12, "Cannot allocate memory")

    live, live_peer = socket.socketpair()
    gone, gone_peer = socket.socketpair()
    gone_peer.close()
    r1 = Request("echo", "127.0.0.8", 1, "127.0.0.1", 7, lease=True)
    # kept with keep_leases = 2: too small for 8, so a new journal is needed
    stored = [("acl-lease-conn-5", live.detach()), ("acl-lease-conn-7", gone.detach()),
              ("acl-lease-journal-4", _journal_fd([(5, 0, [(5, r1)]), (7, 0, [])], keep=2))]
    monkeypatch.setattr(ls, "_new_journal", no_memory)
    engine()                                   # writes the policy
    toml = tmp_path / "policy.toml"
    toml.write_text(toml.read_text().replace("[run]\n", "[run]\nkeep_leases = 8\n"))
    eng = Engine(load_policy(toml), batch=False)
    logged: list[str] = []
    server = Server(eng, compiled=False, log_fn=logged.append)
    try:
        server._open_store(stored)
        assert server.lease_store is None and server._adopted == []
        assert eng.leases_active == 0
        assert any("lease store: cannot start it" in s for s in logged)
        live_peer.settimeout(5)
        assert live_peer.recv(1) == b""                      # closed: its client sees it
        assert sorted(_stored_names(mgr, "FDSTOREREMOVE")) == [
            "acl-lease-conn-5", "acl-lease-conn-7", "acl-lease-journal-4"]
    finally:
        live_peer.close()
        mgr.close()


# -- the journal systemd passed: written on, or kept until its successor is seen --------
R1 = Request("echo", "127.0.0.8", 1, "127.0.0.1", 7, lease=True)
R2 = Request("echo", "127.0.0.9", 1, "127.0.0.1", 7, lease=True)


def _close_given(mgr: FakeManager) -> list[str]:
    """The texts the fake manager was sent, in order; descriptors closed."""
    out = []
    for text, fds in mgr.messages():
        for fd in fds:
            os.close(fd)
        out.append(text)
    return out


class RecordingBuffer(bytearray):
    """A bytearray that records its stores (and still has the buffer protocol)."""

    def __init__(self, data) -> None:
        super().__init__(data)
        self.ops: list = []

    def __setitem__(self, key, value) -> None:
        self.ops.append((key, value))
        super().__setitem__(key, value)


def test_reopen_keeps_what_was_adopted_in_place_and_only_clears_the_rest():
    """Journal.reopen: the records of the connections and leases given stay
    where they are, byte for byte; every other record -- another
    connection's, a lease of no kept connection, a repeated id, a damaged
    one -- is cleared by its valid byte alone (a crash part way leaves
    records the next start drops again); freed records are used again."""
    j = fresh(keep=4, generation=3)
    j.add_connection(5, 1)
    j.add_lease(5, 6, R1)
    j.add_connection(7, 0)
    j.add_lease(7, 8, R2)
    j.add_lease(5, 9, R2)
    data = RecordingBuffer(j.buf)
    data[lj.HEADER + 3 * lj.RECORD + 40] ^= 0xFF        # lease 8's record: damaged
    data.ops.clear()
    before = bytes(data)
    r = lj.Journal.reopen(data, 4, [5], {6: 5, 9: 5, 8: 7})
    assert r.generation == 3 and r.capacity == 8
    assert set(r.conns) == {5} and set(r.leases) == {6, 9} and r.by_conn == {5: {6, 9}}
    assert all(isinstance(k, int) and v == 0 and (k - lj.HEADER) % lj.RECORD == 0
               for k, v in data.ops), data.ops
    for i in (0, 1, 4):                                  # kept: untouched
        off = lj.HEADER + i * lj.RECORD
        assert data[off:off + lj.RECORD] == before[off:off + lj.RECORD]
    got = lj.read_journal(bytes(data))
    assert got.conns == {5: 1} and got.leases == {6: (5, R1), 9: (5, R2)} and got.bad == 0
    assert r.add_connection(11, 0) and r.add_lease(11, 12, R1)
    assert set(lj.read_journal(bytes(data)).leases) == {6, 9, 12}
    with pytest.raises(lj.JournalError, match="fewer than 2 x 5"):
        lj.Journal.reopen(bytearray(data), 5, [5], {})


def test_a_changed_keep_leases_stores_a_new_journal_and_keeps_the_old_one_stored(
        tmp_path, engine):
    """The journal passed has no room for keep_leases = 32: a new one is
    stored, and the one read stays in the store (systemd says nothing back:
    if it closed the new one, the next start still has the old).  The start
    that is passed both writes on in the new one and removes the old."""
    mgr = FakeManager(tmp_path / "notify")
    live, live_peer = socket.socketpair()
    logged: list[str] = []
    try:
        sock = live.detach()
        store, adopted = ls.open_store(
            32, [("acl-lease-conn-5", sock), ("acl-lease-journal-4", _journal_fd([(5, 1, [(5, R1)])]))],
            engine(), logged.append, mgr.env)
        msgs = mgr.messages()
        assert [m for m, _ in msgs] == ["FDSTORE=1\nFDNAME=acl-lease-journal-5"]
        assert any("acl-lease-journal-4 stays there until a start is passed "
                   "acl-lease-journal-5" in s for s in logged), logged
        new = msgs[0][1][0]
        assert _read_fd(new).conns == {5: 1} and store.journal.generation == 5
        # the next start, passed both (and the connection, adopted again)
        old = _journal_fd([(5, 1, [(5, R1)])])
        eng = engine()
        store2, adopted2 = ls.open_store(
            32, [("acl-lease-conn-5", os.dup(adopted[0].sock.fileno())),
                 ("acl-lease-journal-5", new), ("acl-lease-journal-4", old)],
            eng, logged.append, mgr.env)
        assert _close_given(mgr) == ["FDSTOREREMOVE=1\nFDNAME=acl-lease-journal-4"]
        assert [(a.number, a.leases) for a in adopted2] == [(5, {5})]
        assert store2.journal.generation == 5 and eng.leases_active == 1
        for a in adopted2:
            a.sock.close()
    finally:
        for a in locals().get("adopted", []):
            a.sock.close()
        live_peer.close()
        mgr.close()


def test_a_connection_name_passed_twice_keeps_the_first_open_one(tmp_path, engine):
    """acl-lease-conn-5 passed three times (a closed one first): the first
    still open is adopted, the other open one closed (its client sees the
    end), and the name is removed and the kept one stored again under it."""
    mgr = FakeManager(tmp_path / "notify")
    gone, gone_peer = socket.socketpair()
    gone_peer.close()
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    logged: list[str] = []
    stored = [("acl-lease-conn-5", gone.detach()), ("acl-lease-conn-5", first.detach()),
              ("acl-lease-conn-5", second.detach()),
              ("acl-lease-journal-4", _journal_fd([(5, 0, [(5, R1)])]))]
    try:
        store, adopted = ls.open_store(8, stored, engine(), logged.append, mgr.env)
        assert [(a.number, a.leases) for a in adopted] == [(5, {5})]
        adopted[0].sock.sendall(b"x")
        first_peer.settimeout(5)
        assert first_peer.recv(1) == b"x"                   # the first open one
        second_peer.settimeout(5)
        assert second_peer.recv(1) == b""                   # closed
        msgs = mgr.messages()
        assert [m for m, _ in msgs] == ["FDSTOREREMOVE=1\nFDNAME=acl-lease-conn-5",
                                        "FDSTORE=1\nFDNAME=acl-lease-conn-5"]
        given = socket.socket(fileno=msgs[1][1][0])         # systemd's copy: the kept one
        given.sendall(b"y")
        assert first_peer.recv(1) == b"y"
        given.close()
        assert any("acl-lease-conn-5 was passed 3 times: one is kept, 2 closed" in s
                   for s in logged), logged
    finally:
        for a in locals().get("adopted", []):
            a.sock.close()
        first_peer.close()
        second_peer.close()
        mgr.close()


def test_a_journal_name_passed_twice_uses_the_one_that_reads(tmp_path, engine):
    """acl-lease-journal-4 passed twice, garbage first: the one that reads is
    used -- not written on in place (a remove would take both): a new journal
    is stored and the name stays until a start is passed that one."""
    mgr = FakeManager(tmp_path / "notify")
    live, live_peer = socket.socketpair()
    junk = os.memfd_create("junk")
    os.write(junk, os.urandom(lj.HEADER + 16 * lj.RECORD))
    logged: list[str] = []
    try:
        store, adopted = ls.open_store(
            8, [("acl-lease-conn-5", live.detach()), ("acl-lease-journal-4", junk),
                ("acl-lease-journal-4", _journal_fd([(5, 0, [(5, R1)])]))],
            engine(), logged.append, mgr.env)
        assert [(a.number, a.leases) for a in adopted] == [(5, {5})]
        assert _close_given(mgr) == ["FDSTORE=1\nFDNAME=acl-lease-journal-5"]
        assert any("journal acl-lease-journal-4 is unusable" in s for s in logged)
    finally:
        for a in locals().get("adopted", []):
            a.sock.close()
        live_peer.close()
        mgr.close()


def test_a_connection_systemd_did_not_take_leaves_no_record(tmp_path):
    """keep(): when the store's message cannot be sent (systemd's queue
    full), the connection is not kept -- and takes no room in the journal:
    with keep_leases = 1, the next connection is kept once there is room."""
    mgr = FakeManager(tmp_path / "notify")
    link = systemd.FdStoreLink(mgr.env)
    store = ls.LeaseStore(link, fresh(keep=1), lambda _msg: None)
    r, w = os.pipe()
    try:
        fill_notify_queue(link, r)
        assert not store.keep(9001, r, 0)
        assert store.stats()["connections"] == 0 and not store.add_lease(0, 9001, R1)
        _close_given(mgr)                  # systemd reads: room again
        assert store.keep(9002, r, 1)
        assert store.add_lease(9002, 9002, R1)
        assert store.stats()["connections"] == 1 and store.stats()["unkept"] == 1
        assert contents(store.journal).conns == {9002: 1}
    finally:
        os.close(r)
        os.close(w)
        _close_given(mgr)
        mgr.close()
        link.close()


def test_a_full_notify_socket_never_blocks_a_send(tmp_path):
    """systemd not reading (its queue full): a store or a remove says False
    at once, or after the wait it is given -- never blocks (the event loop
    calls them)."""
    import threading
    import time

    mgr = FakeManager(tmp_path / "notify")
    link = systemd.FdStoreLink(mgr.env)
    results: list = []

    def flood():                 # in a thread: a send that blocks cannot hang the test
        r, w = os.pipe()
        try:
            results.append(fill_notify_queue(link, r))       # stores, the last refused
            results.append(link.remove("acl-lease-conn-0"))  # and a remove, refused too
        finally:
            os.close(r)
            os.close(w)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    t.join(20)
    try:
        assert not t.is_alive(), "a send blocked on systemd's full queue"
        assert len(results) == 2 and results[0] > 0 and results[1] is False, results
        t0 = time.monotonic()
        assert link.remove("acl-lease-conn-1", 0.3) is False
        assert 0.25 < time.monotonic() - t0 < 5
        _close_given(mgr)                         # systemd reads: room again
        assert link.remove("acl-lease-conn-1") is True
    finally:
        mgr.close()                               # a send still blocked fails now
        t.join(10)
        link.close()
