"""A small Pythonic layer over ``acl._nfq`` (cffi, libnetfilter_queue).

Rules of this module:

* Every failure is an :class:`OSError` with the kernel's errno; when the
  binding was not built (no libnetfilter_queue at build time), opening a
  queue raises ``OSError(ENOSYS)`` and :data:`AVAILABLE` is False.
* One :class:`Queue` is one netlink socket bound to one queue number.  Its
  ``fileno()`` goes on an event loop; :meth:`Queue.recv` never blocks.
* Reading is in batches: one ``recvmmsg`` moves up to ``batch`` packets into
  fixed-stride records (``RECORD``: id, hw protocol, captured length, mark,
  wire length, then the captured bytes).  :meth:`Queue.records` hands them to
  Python as one ``bytes`` so the caller unpacks without a call per field.
* Answering is in batches too: :meth:`Queue.verdict` takes one verdict code
  per record of the last batch (:data:`DROP`, :data:`ACCEPT`, :data:`REJECT`)
  and sends them in a single ``sendmsg`` (see ``ext/nfq_build.py``).
  :data:`REJECT` is ``NF_REPEAT`` with a mark, for a firewall REJECT rule to
  answer (docs/nfqueue.md).  :data:`HOLD` leaves a packet unanswered; the
  caller answers it later with :meth:`Queue.verdict_one`, and until then
  passes the oldest held id to every :meth:`Queue.verdict` (a batch verdict
  must not reach it: see ``ext/nfq_build.py``).
* ``fail_open`` sets ``NFQA_CFG_F_FAIL_OPEN``: when the queue or our socket
  is full the kernel accepts the packet instead of dropping it.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

try:
    # only this package's own build (acl.core's rules: never another acl
    # tree's binding that the import system happens to offer)
    from acl.core import own_extension

    _binding = own_extension("acl._nfq")
    ffi, lib = _binding.ffi, _binding.lib
except ImportError:  # built without libnetfilter_queue
    ffi = lib = None

AVAILABLE = lib is not None

#: Verdict codes, one byte per packet of a batch.
DROP = 0
ACCEPT = 1
REJECT = 2
#: No verdict with the batch: the packet is held and answered later by
#: :meth:`Queue.verdict_one` (a client name being looked up).
HOLD = 3

#: Record header: id, hw_protocol, caplen, mark, wire length (native order).
RECORD = struct.Struct("=IHHII")
RECORD_HEADER = RECORD.size

#: Where the kernel reports queues of the caller's network namespace.
PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The kernel's counters for one queue (``/proc/net/netfilter/nfnetlink_queue``)."""

    queue: int
    portid: int
    queue_total: int         # packets waiting for a verdict now
    copy_mode: int
    copy_range: int
    queue_dropped: int       # dropped because the queue was full (no fail-open)
    user_dropped: int        # dropped because netlink could not deliver (no fail-open)
    id_sequence: int         # last packet id given


def read_queue_stats(path: str = PROC_QUEUES) -> dict[int, QueueStats]:
    """All queues bound in this network namespace, by number ({} if none).
    PermissionError when the caller may not read the file (it is root's,
    0440): see :class:`QueueStatsFile`."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    return parse_queue_stats(text)


class QueueStatsFile:
    """The kernel's queue counters, from a file opened once and read again.

    The file is root's and mode 0440, and /proc checks that when it is opened,
    not when it is read: ``acl serve`` opens it while still root (before
    ``[run] user`` takes effect) and so keeps reading it afterwards.  A process
    that never was root (systemd ``User=`` with ambient CAP_NET_ADMIN) cannot:
    :meth:`read` then returns None and :attr:`error` says why.  It is opened
    once a queue is bound, which loads nfnetlink_queue and so makes the file:
    a file missing then is hidden (systemd's ``ProcSubset=pid``, as in
    acl-nfqueue.service, hides /proc/net) and counts as unreadable too, never
    as "no queue" with counters of 0.
    """

    def __init__(self, path: str = PROC_QUEUES):
        self.path = path
        self.error: OSError | None = None
        self._f = None
        self._open()

    def _open(self) -> None:
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 (kept open on purpose)
            self.error = None
        except OSError as exc:                # FileNotFoundError too: the class rules
            self._f = None
            self.error = exc

    def read(self) -> dict[int, QueueStats] | None:
        if self._f is None:
            self._open()
            if self._f is None:
                return None
        self._f.seek(0)
        return parse_queue_stats(self._f.read().decode("ascii", "replace"))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def parse_queue_stats(text: str) -> dict[int, QueueStats]:
    stats = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            n = [int(x) for x in fields[:8]]
        except ValueError:
            continue
        stats[n[0]] = QueueStats(*n)
    return stats


class Queue:
    """One bound NFQUEUE queue; see the module rules."""

    def __init__(self, num: int, *, copy_range: int = 128, maxlen: int = 4096,
                 fail_open: bool = True, rcvbuf: int = 8 << 20, batch: int = 256):
        if not AVAILABLE:
            raise _oserror(errno.ENOSYS, "acl._nfq (libnetfilter_queue binding) is not built")
        if not 0 <= num <= 65535:
            raise ValueError(f"queue number {num} out of range 0..65535")
        err = ffi.new("int *")
        flags = lib.NFQA_CFG_F_FAIL_OPEN if fail_open else 0
        handle = lib.acl_nfq_open(num, copy_range, maxlen, flags, rcvbuf, batch, err)
        if handle == ffi.NULL:
            raise _oserror(err[0], f"cannot bind NFQUEUE {num}")
        self._h = ffi.gc(handle, lib.acl_nfq_close)
        self.num = num
        self.batch = batch
        self.fail_open = fail_open
        self.stride = lib.acl_nfq_stride(handle)
        self._records = lib.acl_nfq_records(handle)
        # (acl_nfq_open makes room for at least one packet)
        self._record_buffer = ffi.buffer(self._records, max(batch, 1) * self.stride)
        #: ENOBUFS seen: the socket overflowed and the kernel lost packets.
        self.overruns = 0

    def fileno(self) -> int:
        self._check()
        return lib.acl_nfq_fd(self._h)

    def _check(self) -> None:
        if self._h is None:
            raise _oserror(errno.EBADF, f"NFQUEUE {self.num} is closed")

    def recv(self) -> int:
        """Read one batch without blocking; return how many packets (0: none now)."""
        self._check()
        for _ in range(2):
            n = lib.acl_nfq_recv(self._h)
            if n >= 0:
                return n
            if -n in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            if -n == errno.ENOBUFS:
                # Counted, then read on: the error is reported once, data follows.
                self.overruns += 1
                continue
            if -n == errno.EINTR:
                continue
            raise _oserror(-n, f"NFQUEUE {self.num}: recv")
        return 0

    def record_pointer(self):
        """The C buffer of the last batch's records, ``batch * stride`` bytes
        (its contents valid until the next recv; the buffer, while the queue
        is open)."""
        self._check()
        return self._record_buffer

    def records(self, n: int) -> bytes:
        """The last batch's ``n`` records as one buffer, ``stride`` bytes each."""
        self._check()
        return ffi.buffer(self._records, n * self.stride)[:]

    def iter_records(self, n: int) -> Iterator[tuple[int, int, int, int, bytes]]:
        """``(id, hw_protocol, mark, wire_length, packet bytes)`` per packet (slow path)."""
        raw = self.records(n)
        for i in range(n):
            at = i * self.stride
            pid, hw, caplen, mark, wire = RECORD.unpack_from(raw, at)
            yield pid, hw, mark, wire, raw[at + RECORD_HEADER: at + RECORD_HEADER + caplen]

    def verdict(self, verdicts, mark: int = 0, held_from: int = -1) -> None:
        """Answer the last batch: ``verdicts[i]`` (a byte code) for its i-th
        packet.  ``held_from``: the oldest packet id still held (-1: none)."""
        self._check()
        n = len(verdicts)
        rc = lib.acl_nfq_verdict(self._h, ffi.from_buffer(bytes(verdicts) if isinstance(
            verdicts, list) else verdicts), n, mark, held_from)
        if rc < 0:
            raise _oserror(-rc, f"NFQUEUE {self.num}: verdict")

    def verdict_one(self, packet_id: int, code: int, mark: int = 0) -> None:
        """Answer one held packet by its id."""
        self._check()
        rc = lib.acl_nfq_verdict_one(self._h, packet_id, code, mark)
        if rc < 0:
            raise _oserror(-rc, f"NFQUEUE {self.num}: verdict")

    def accept_all(self) -> None:
        """Accept every packet read and not yet answered."""
        self.verdict_all(ACCEPT)

    def verdict_all(self, code: int) -> None:
        """One verdict code for every packet read and not yet answered."""
        self._check()
        rc = lib.acl_nfq_verdict_all(self._h, lib.NF_ACCEPT if code == ACCEPT else lib.NF_DROP)
        if rc < 0:
            raise _oserror(-rc, f"NFQUEUE {self.num}: verdict")

    @property
    def last_netlink_error(self) -> int:
        """The errno of the last verdict the kernel refused (0: none)."""
        return 0 if self._h is None else int(lib.acl_nfq_last_nlerror(self._h))

    @property
    def gaps(self) -> int:
        """Packet ids we never received: lost in netlink (dropped, or failed open)."""
        return 0 if self._h is None else int(lib.acl_nfq_gaps(self._h))

    @property
    def netlink_errors(self) -> int:
        """Verdicts the kernel refused (NLMSG_ERROR replies)."""
        return 0 if self._h is None else int(lib.acl_nfq_nlerrors(self._h))

    def stats(self) -> QueueStats | None:
        """The kernel's counters for this queue, or None when it is not bound."""
        return read_queue_stats().get(self.num)

    def close(self) -> None:
        """Unbind; the kernel drops packets still waiting for a verdict."""
        if self._h is not None:
            h, self._h = self._h, None
            # the record buffer is the handle's memory: nothing may reach it now
            self._record_buffer = self._records = None
            ffi.release(h)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the compiled batch path's pieces (used by acl.serve.nfqueue) ------------

#: acl_pkt_decode's error numbers, in acl.wire.packet.ERROR_CODES order.
C_ERROR_CODES = ("truncated", "version", "header", "length", "fragment", "protocol")
N_REASONS = 16
#: Services one DoorBatch can name (the C side numbers them in an int16_t).
MAX_SERVICES = 32767


def decode_c(buf, wire_length: int | None = None):
    """The C twin of :func:`acl.wire.packet.decode_raw` (tests hold them equal)."""
    from acl.wire.packet import PacketError

    if not AVAILABLE:
        raise _oserror(errno.ENOSYS, "acl._nfq is not built")
    data = bytes(buf)
    out = ffi.new("struct acl_flow *")
    rc = lib.acl_pkt_decode(data, len(data), len(data) if wire_length is None else
                            max(0, min(wire_length, 0xFFFFFFFF)), out)
    if rc:
        raise PacketError(C_ERROR_CODES[rc - 1], "rejected by the C codec")
    alen = 4 if out.family == 4 else 16
    return (out.family, bytes(out.src)[:alen], bytes(out.dst)[:alen], out.sport, out.dport,
            out.proto, out.tcp_flags)


class DoorBatch:
    """C state of a front door's batch path: port map, frame buffer, counters.

    Its calls hand the C functions every buffer with its length; numbers
    that do not fit them are a ValueError (ext/nfq_build.py's rules)."""

    def __init__(self, batch: int, services: list[str], ports: dict[int, str],
                 addr_ports: dict[tuple[bytes, int], str]):
        if not AVAILABLE:
            raise _oserror(errno.ENOSYS, "acl._nfq is not built")
        if len(services) > MAX_SERVICES:
            raise ValueError(f"{len(services)} services: at most {MAX_SERVICES}")
        handle = lib.acl_door_new(batch, len(services))
        if handle == ffi.NULL:
            raise MemoryError("acl_door_new")
        self._d = ffi.gc(handle, lib.acl_door_free)
        self.batch = batch
        self.services = list(services)
        index = {name: i for i, name in enumerate(self.services)}
        for i, name in enumerate(self.services):
            raw = name.encode()
            if lib.acl_door_set_service(self._d, i, raw, len(raw)) < 0:
                raise ValueError(f"service name {name!r} must be 1..255 bytes")
        for port, name in ports.items():
            lib.acl_door_map_port(self._d, port, index[name])
        for (addr, port), name in addr_ports.items():
            if lib.acl_door_map_addr_port(self._d, addr, len(addr), port, index[name]) < 0:
                raise ValueError(f"bad address/port {addr!r}:{port}")
        self._counts = lib.acl_door_counts(self._d)
        self._errors = lib.acl_door_errors(self._d)

    def frames(self, records, n: int, stride: int, verdicts: bytearray, malformed: int,
               reject_mark: bool, mark: int):
        """DECIDE frames for the packets to decide (a buffer) and how many.

        ``records``: a buffer (bytes, ffi.buffer...) of at least ``n * stride``
        bytes; ``verdicts``: at least ``n`` bytes, set for every record."""
        recs = ffi.from_buffer(records)
        count = lib.acl_door_frames(self._d, recs, len(recs), n, stride,
                                    ffi.from_buffer(verdicts), len(verdicts), malformed,
                                    1 if reject_mark else 0, mark)
        if count < 0:
            raise ValueError(f"a batch of {n} records, stride {stride}, does not fit "
                             f"{len(recs)} bytes, {len(verdicts)} verdicts, batch {self.batch}")
        return ffi.buffer(lib.acl_door_frame_buf(self._d), lib.acl_door_frame_len(self._d)), count

    def apply(self, replies: bytes, verdicts: bytearray, deny: int) -> int:
        """The plan's DECISION frames for the last :meth:`frames` batch, as
        verdict codes; how many were applied (frames that answer no waiting
        packet of the batch are skipped and counted: :attr:`bad_replies`)."""
        rc = lib.acl_door_apply(self._d, replies, len(replies), ffi.from_buffer(verdicts),
                                len(verdicts), deny)
        if rc < 0:
            raise ValueError("the engine's replies cannot be read as DECISION frames")
        return rc

    @property
    def bad_replies(self) -> int:
        """Frames of the plan's replies that answered no waiting packet."""
        return int(lib.acl_door_bad_replies(self._d))

    def counts(self) -> dict[tuple[str, int, int], int]:
        """{(service, verdict number, reason number): n} decided through the plan."""
        out = {}
        c = self._counts
        for s, name in enumerate(self.services):
            for v in range(3):
                base = (s * 3 + v) * N_REASONS
                for r in range(N_REASONS):
                    n = c[base + r]
                    if n:
                        out[(name, v, r)] = int(n)
        return out

    def errors(self) -> dict[str, int]:
        return {code: int(self._errors[i + 1]) for i, code in enumerate(C_ERROR_CODES)
                if self._errors[i + 1]}

    @property
    def unmapped(self) -> int:
        return int(lib.acl_door_unmapped(self._d))

    @property
    def looped(self) -> int:
        return int(lib.acl_door_looped(self._d))
