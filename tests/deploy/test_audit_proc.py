"""acl.audit's /proc/net parsing and socket-owner mapping.

Three oracles: the kernel's own text format (generated tables, encoded the
way the kernel prints them), the live tables with listeners this test opens
on 127.0.0.1 and ::1, and iproute2's ``ss``, which reads the same sockets
over netlink.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl import audit

from .conftest import free_ports

# -- the kernel's format, generated -----------------------------------------


def kernel_hex(addr: str, byteorder: str) -> str:
    """Encode an address as tcp4_seq_show/tcp6_seq_show print it: %08X words."""
    raw = socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
    fmt = "<I" if byteorder == "little" else ">I"
    return "".join(f"{struct.unpack(fmt, raw[i:i + 4])[0]:08X}" for i in range(0, len(raw), 4))


def canon(addr: str) -> str:
    """The address as inet_ntop spells it (hypothesis may give another spelling)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.inet_ntop(fam, socket.inet_pton(fam, addr))


HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
          "retrnsmt   uid  timeout inode\n")


def kernel_line(i, local, port, remote, rport, state, uid, inode, byteorder):
    return (f"{i:4d}: {kernel_hex(local, byteorder)}:{port:04X} "
            f"{kernel_hex(remote, byteorder)}:{rport:04X} {state:02X} "
            f"00000000:00000000 00:00000000 00000000 {uid:5d}        0 {inode} 1 "
            f"0000000000000000 100 0 0 10 0\n")


v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 65535)


def rows(addr):
    return st.lists(st.tuples(addr, port, addr, port, st.integers(1, 12),
                              st.integers(0, 2**31), st.integers(0, 2**40)), max_size=20)


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from([4, 6]), data=st.data(),
       byteorder=st.sampled_from(["little", "big"]), proto=st.sampled_from(["tcp", "udp"]))
def test_generated_tables_parse_back(family, data, byteorder, proto):
    table = data.draw(rows(v4 if family == 4 else v6))
    text = HEADER + "".join(kernel_line(i, *r, byteorder) for i, r in enumerate(table))
    got = audit.parse_proc_net(text, proto, family, byteorder)
    want = [audit.SocketEntry(proto, family, canon(r[0]), r[1], canon(r[2]), *r[3:])
            for r in table]
    assert got == want
    for e in got:
        if proto == "tcp":
            assert e.listening == (e.state == 0x0A)
        else:
            assert e.listening == (e.state == 0x07 and e.remote_port == 0
                                   and e.remote in ("0.0.0.0", "::"))


def test_known_words_in_both_byte_orders():
    assert audit.decode_address("0100007F", 4, "little") == "127.0.0.1"
    assert audit.decode_address("7F000001", 4, "big") == "127.0.0.1"
    assert audit.decode_address("00000000000000000000000001000000", 6, "little") == "::1"
    assert audit.decode_address("0000000000000000FFFF00000100007F", 6, "little") == \
        "::ffff:127.0.0.1"


@pytest.mark.parametrize("line", [
    "   0: 0100007F:1F90 00000000:0000 0A",                       # too few columns
    "   0: 0100007F1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",         # no colon
    "   0: 0100007:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",         # 7 hex digits
    "   0: 0100007F:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 1",        # state not hex
    "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 inode",    # inode not a number
    "   x 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",         # no "sl:"
])
def test_bad_lines_are_format_errors_naming_the_line(line):
    with pytest.raises(audit.ProcFormatError, match=r"^line 3: "):
        audit.parse_proc_net(HEADER + "\n" + line + "\n", "tcp", 4)


# -- the live tables ---------------------------------------------------------


@pytest.fixture
def own_sockets():
    """TCP listeners and bound UDP sockets on 127.0.0.1 and ::1, plus decoys."""
    ports = free_ports("audit_proc", 4)
    opened = []
    try:
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            t = socket.socket(fam, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, ports[0]))
            t.listen(4)
            u = socket.socket(fam, socket.SOCK_DGRAM)
            u.bind((host, ports[1]))
            opened += [("tcp", host, ports[0], t), ("udp", host, ports[1], u)]
        # Decoys that are not listening: a bound-only TCP socket, a connected
        # TCP pair, a connected UDP socket.
        bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bound.bind(("127.0.0.1", ports[2]))
        client = socket.create_connection(("127.0.0.1", ports[0]), timeout=5)
        server, _ = opened[0][3].accept()
        cu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cu.bind(("127.0.0.1", ports[3]))
        cu.connect(("127.0.0.1", ports[1]))
        decoys = [bound, client, server, cu]
        yield opened, decoys
    finally:
        for *_, s in opened:
            s.close()
        for s in locals().get("decoys", []):
            s.close()


def test_live_listeners_found_with_this_process_as_owner(own_sockets):
    opened, decoys = own_sockets
    found = audit.read_listeners()
    by_inode = {lis.entry.inode: lis for lis in found}
    me = os.getpid()
    for proto, host, port_, s in opened:
        inode = os.fstat(s.fileno()).st_ino
        lis = by_inode.get(inode)
        assert lis is not None, f"{proto} {host}:{port_} not found"
        assert (lis.proto, lis.address, lis.port) == (proto, host, port_)
        assert lis.entry.uid == os.getuid()
        assert me in [p.pid for p in lis.owners]
        mine = next(p for p in lis.owners if p.pid == me)
        assert mine.name and mine.name in open(f"/proc/{me}/comm").read()
    for s in decoys:
        assert os.fstat(s.fileno()).st_ino not in by_inode


def test_forked_child_is_a_second_owner(own_sockets):
    opened, _ = own_sockets
    listener = opened[0][3]
    inode = os.fstat(listener.fileno()).st_ino
    # A child that inherits the listening fd, as a pre-forking server's
    # workers do; it waits on a pipe so the test decides when it ends.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        owners = audit.read_socket_owners()
        assert {os.getpid(), pid} <= {p.pid for p in owners[inode]}
    finally:
        os.close(w)
        os.waitpid(pid, 0)


_SS_LINE = re.compile(r"^(tcp|udp)\s+\S+\s+\d+\s+\d+\s+(\S+):(\d+|\*)\s+\S+.*\bino:(\d+)")
_SS_PID = re.compile(r"pid=(\d+)")


def _ss(owners: dict | None = None) -> set[tuple[str, str, int, int]]:
    """ss's listening sockets; ``owners`` (if given) gets inode -> PIDs from -p."""
    out = subprocess.run(["ss", "-H", "-l", "-t", "-u", "-n", "-e", "-p"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    got = set()
    for line in out.splitlines():
        m = _SS_LINE.match(line)
        if not m:
            continue
        proto, addr, port_, inode = m.groups()
        addr = addr.strip("[]").split("%")[0]
        addr = {"*": "0.0.0.0"}.get(addr, addr)
        got.add((proto, addr, int(port_), int(inode)))
        if owners is not None:
            owners[int(inode)] = {int(p) for p in _SS_PID.findall(line)}
    return got


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
def test_same_listeners_as_ss(own_sockets):
    """Differential: every socket ss lists as listening, we list, and only those.

    Other tests may open and close sockets meanwhile, so the comparison is
    between ss snapshots taken before and after ours: what both ss runs saw
    must be in ours; what we saw must be in one of them.
    """
    for _attempt in range(5):
        ss_owners: dict[int, set[int]] = {}
        before = _ss(ss_owners)
        found = audit.read_listeners()
        ours = {(lis.proto, lis.address, lis.port, lis.entry.inode) for lis in found}
        after = _ss()
        if (before & after) <= ours and ours <= (before | after):
            break
        time.sleep(0.2)
    # Our own listeners are stable, so they must be in all three.
    opened, _ = own_sockets
    for proto, host, port_, s in opened:
        key = (proto, host, port_, os.fstat(s.fileno()).st_ino)
        assert key in before and key in ours and key in after
    assert (before & after) <= ours, (before & after) - ours
    assert ours <= (before | after), ours - (before | after)
    # Owners: for our own sockets, the same PIDs as ss -p names.
    by_inode = {lis.entry.inode: lis for lis in found}
    for *_, s in opened:
        inode = os.fstat(s.fileno()).st_ino
        assert {p.pid for p in by_inode[inode].owners} == ss_owners[inode] == {os.getpid()}
