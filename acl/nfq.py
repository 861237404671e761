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
  answer (docs/nfqueue.md).
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
    from acl._nfq import ffi, lib
except ImportError:  # built without libnetfilter_queue
    ffi = lib = None

AVAILABLE = lib is not None

#: Verdict codes, one byte per packet of a batch.
DROP = 0
ACCEPT = 1
REJECT = 2

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
    """All queues bound in this network namespace, by number ({} if none)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
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

    def records(self, n: int) -> bytes:
        """The last batch's ``n`` records as one buffer, ``stride`` bytes each."""
        return ffi.buffer(self._records, n * self.stride)[:]

    def iter_records(self, n: int) -> Iterator[tuple[int, int, int, int, bytes]]:
        """``(id, hw_protocol, mark, wire_length, packet bytes)`` per packet (slow path)."""
        raw = self.records(n)
        for i in range(n):
            at = i * self.stride
            pid, hw, caplen, mark, wire = RECORD.unpack_from(raw, at)
            yield pid, hw, mark, wire, raw[at + RECORD_HEADER: at + RECORD_HEADER + caplen]

    def verdict(self, verdicts, mark: int = 0) -> None:
        """Answer the last batch: ``verdicts[i]`` (a byte code) for its i-th packet."""
        self._check()
        n = len(verdicts)
        rc = lib.acl_nfq_verdict(self._h, ffi.from_buffer(bytes(verdicts) if isinstance(
            verdicts, list) else verdicts), n, mark)
        if rc < 0:
            raise _oserror(-rc, f"NFQUEUE {self.num}: verdict")

    def accept_all(self) -> None:
        """Accept every packet read and not yet answered."""
        self._check()
        rc = lib.acl_nfq_verdict_all(self._h, lib.NF_ACCEPT)
        if rc < 0:
            raise _oserror(-rc, f"NFQUEUE {self.num}: verdict")

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
            ffi.release(h)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
