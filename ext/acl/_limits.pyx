# cython: language_level=3
"""Limits core: xinetd's cps, max_load, access_times, instances, per_source,
plus per-source token buckets, over a bounded source table.

The rules are the twin's (``acl/_limits_py.py`` docstring); this file must
answer exactly as the twin does.  In short:

* check order (spec C.6, parent side): cps -> max_load -> access_times ->
  instances -> per_source, then the token bucket; reason codes equal
  ``acl.model.Reason``.
* cps (spec C.7): fixed window of ``cps_max`` whole seconds, averaged from
  its start with integer division; a trip refuses and closes the service for
  ``cps_wait`` seconds; reactivation does not reset the counters, a reload
  (``configure``) does, unless told the configuration was not read again.
* the source table is set-associative: ``WAYS`` (2) entries per 64-byte group
  (one cache line: a check reads one line), the group picked by a hash keyed
  with a per-process secret (``key``), eviction of the bucket entry with the
  oldest arrival time, leases pinned; a lease whose group is pinned full
  goes to the exact, bounded overflow area (linear probing, backward-shift
  deletion); when that is full too, per_source fails closed.
* service records live in chunks of 256, allocated the first time a slot in
  them is touched (with the GIL, never in the batch loop), so the cap
  (``MAX_SERVICES``) costs nothing until used; ``retire`` frees slots.
* token buckets are GCRA over integer nanoseconds (see the twin).
* the clock is an argument; nothing here reads time, allocates on the check
  path, or holds the GIL inside the batch loop.
* every value is checked against its C field before anything changes
  (``validate``, the ``now`` of a check; the twin's rules say the bounds), so
  no cast here is out of range, and a call this file refuses the twin
  refuses with the same exception (and message, for ValueError).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Index
from libc.math cimport floor, INFINITY
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import heapq
import operator
import os
import socket

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)
    int MADV_HUGEPAGE

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct tm:
        int tm_min
        int tm_hour
    tm *localtime_r(const time_t *timep, tm *result)

cdef extern from *:
    """
    #define ACL_PREFETCH(p) __builtin_prefetch((const void *)(p), 1, 1)
    static inline uint64_t acl_load_be64(const unsigned char *p) {
        return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40)
             | ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16)
             | ((uint64_t)p[6] << 8) | (uint64_t)p[7];
    }
    """
    void ACL_PREFETCH(const void *p) noexcept nogil
    uint64_t acl_load_be64(const unsigned char *p) noexcept nogil


cdef inline int _int_at(const unsigned char *p, Py_ssize_t i) noexcept nogil:
    """The i-th int of a caller's buffer, which need not be aligned for
    ints (a memoryview slice of bytes): memcpy, one plain load on x86."""
    cdef int v
    memcpy(&v, p + 4 * i, 4)
    return v

__all__ = [
    "LimitState", "pack_source",
    "OK", "TIME", "SERVICE_LIMIT", "PER_SOURCE_LIMIT", "LOAD", "CPS", "RATE",
    "UNLIMITED", "WAYS", "ENTRY_BYTES", "MAX_SERVICES", "MAX_LIMITS_KEY", "MAX_NOW",
    "MAX_BUCKET_NS",
]

OK = 0
TIME = 2
SERVICE_LIMIT = 3
PER_SOURCE_LIMIT = 4
LOAD = 5
CPS = 6
RATE = 9
UNLIMITED = -1
WAYS = 2
ENTRY_BYTES = sizeof(Entry)
MAX_SERVICES = 32768
MAX_LIMITS_KEY = (1 << 128) - 1
MAX_NOW = float(1 << 32)          # |now| (s): now in ns, plus a bucket, fits int64
MAX_BUCKET_NS = 1 << 62           # a bucket's interval + tolerance (ns)
DEF C_MAX_NOW = 4294967296.0
_INT32_MAX = (1 << 31) - 1
MAX_SOURCES = 1 << 30             # the most entries a table may be asked for
_UINT32_MAX = (1 << 32) - 1
# this process's hash key (each twin draws its own; a ``key`` argument wins)
_PROCESS_KEY = int.from_bytes(os.urandom(16), "big")

cdef enum:
    C_WAYS = 2
    PREFETCH_AHEAD = 32
    CHUNK_SHIFT = 8
    CHUNK = 256
cdef uint32_t USED = 1u << 31
cdef uint32_t KIND_BUCKET = 1u << 30
cdef uint64_t V4MAPPED_TOP = 0xFFFF
cdef uint32_t SLOT_BITS = 0x7FFF


def pack_source(addr):
    """A client address as the 16 bytes the core keys on (IPv4 -> mapped)."""
    if isinstance(addr, (bytes, bytearray, memoryview)):
        raw = bytes(addr)
        if len(raw) == 4:
            return b"\0" * 10 + b"\xff\xff" + raw
        if len(raw) == 16:
            return raw
        raise ValueError(f"packed source must be 4 or 16 bytes, got {len(raw)}")
    if not isinstance(addr, str):
        if type(addr).__name__ in ("IPv4Address", "IPv6Address"):
            addr = str(addr)
        else:
            raise TypeError(f"cannot use {type(addr).__name__} as a source address")
    try:
        if ":" in addr:
            return socket.inet_pton(socket.AF_INET6, addr)
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, addr)
    except OSError as exc:
        raise ValueError(f"not a numeric address: {addr!r}") from exc


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef inline uint64_t _hash(uint64_t hi, uint64_t lo, uint32_t tag, uint64_t k0,
                           uint64_t k1) noexcept nogil:
    # keyed: without (k0, k1) colliding addresses cannot be worked out offline
    return _mix(hi ^ k1 ^ _mix(lo ^ k0 ^ (<uint64_t>tag * <uint64_t>0x9E3779B97F4A7C15)))


cdef inline Service *_svc_at(Service **chunks, int s) noexcept nogil:
    return &chunks[s >> CHUNK_SHIFT][s & (CHUNK - 1)]


cdef void _default_service(Service *sv) noexcept nogil:
    memset(sv, 0, sizeof(Service))
    sv.cps_max = 50
    sv.cps_wait = 10
    sv.instances = -1
    sv.per_source = -1


def _gcra(rate, burst):
    """(emission interval, tolerance) in ns for a rate and burst (the twin's)."""
    if rate <= 0:
        return 0, 0
    t_ns = max(1, int(round(1e9 / rate)))
    return t_ns, int((burst - 1.0) * t_ns)


cdef int _check_now(double now) except -1:
    # the twin's _check_now: "in range" so that NaN fails it too
    if not (-C_MAX_NOW <= now <= C_MAX_NOW):
        raise ValueError(f"now must be a finite time within {MAX_NOW:.0f} s of the epoch, "
                         f"got {now!r}")
    return 0


cdef int _local_minute(double now) noexcept nogil:
    cdef time_t t = <time_t>floor(now)
    cdef tm result
    if localtime_r(&t, &result) == NULL:
        return 0
    return result.tm_hour * 60 + result.tm_min


cdef class LimitState:
    """Limit state for every service of a policy; see the module rules."""

    def __cinit__(self, max_sources=65536, v6_prefix=64, max_services=MAX_SERVICES,
                  key=None):
        # untyped, so that a value out of range is the twin's ValueError,
        # not an OverflowError of the conversion
        cdef uint64_t groups = 1
        cdef void *mem = NULL
        cdef size_t nbytes
        cdef int c_prefix
        cdef uint64_t c_sources
        cdef int c_services
        if max_services < 1 or max_services > MAX_SERVICES:
            raise ValueError(f"max_services must be 1..{MAX_SERVICES}")
        if v6_prefix < 0 or v6_prefix > 128:
            raise ValueError("v6_prefix must be 0..128")
        if not C_WAYS <= max_sources <= MAX_SOURCES:
            raise ValueError(f"max_sources must be {C_WAYS}..{MAX_SOURCES}")
        if key is None:
            key = _PROCESS_KEY
        if not 0 <= key <= MAX_LIMITS_KEY:
            raise ValueError("key must be 0 .. 2**128-1")
        c_prefix, c_sources, c_services = v6_prefix, max_sources, max_services
        self._k0 = <uint64_t>(key & 0xFFFFFFFFFFFFFFFF)
        self._k1 = <uint64_t>(key >> 64)
        while groups * C_WAYS < c_sources:
            groups <<= 1
        nbytes = groups * C_WAYS * sizeof(Entry)
        # 2 MiB alignment + MADV_HUGEPAGE: random lookups in a big table are
        # dominated by TLB misses on 4 KiB pages (a hint; failure is harmless)
        if posix_memalign(&mem, 2 << 20 if nbytes >= (2 << 20) else 64, nbytes) != 0:
            raise MemoryError()
        if nbytes >= (2 << 20):
            madvise(mem, nbytes, MADV_HUGEPAGE)
        memset(mem, 0, nbytes)
        self._table = <Entry *>mem
        self._gmask = groups - 1
        self.capacity = <int>(groups * C_WAYS)
        self.v6_prefix = c_prefix
        self.max_services = c_services
        if c_prefix >= 128:
            self._pmask_hi = <uint64_t>-1
            self._pmask_lo = <uint64_t>-1
        elif c_prefix > 64:
            self._pmask_hi = <uint64_t>-1
            self._pmask_lo = (((<uint64_t>1) << (c_prefix - 64)) - 1) << (128 - c_prefix)
        elif c_prefix == 64:
            self._pmask_hi = <uint64_t>-1
            self._pmask_lo = 0
        elif c_prefix == 0:
            self._pmask_hi = 0
            self._pmask_lo = 0
        else:
            self._pmask_hi = (((<uint64_t>1) << c_prefix) - 1) << (64 - c_prefix)
            self._pmask_lo = 0
        self.overflow_capacity = max(16, self.capacity // 16)
        cdef uint64_t osize = 1
        while osize < 2 * <uint64_t>self.overflow_capacity:
            osize <<= 1
        self._ovf = <Entry *>calloc(osize, sizeof(Entry))
        if self._ovf == NULL:
            raise MemoryError()
        self._omask = osize - 1
        self._free = []
        self._names = {}
        self.extra = {}
        self._leases = {}
        self._next_lease = 1

    def __dealloc__(self):
        cdef int c
        free(self._table)
        free(self._ovf)
        for c in range(MAX_SERVICES >> CHUNK_SHIFT):
            free(self._chunks[c])

    # -- services -------------------------------------------------------
    def slot(self, name):
        """The slot of service ``name``, allocated on first use."""
        if not isinstance(name, str):
            raise TypeError(f"a service name is a str, not {type(name).__name__}")
        s = self._names.get(name)
        if s is None:
            if self._free:
                s = heapq.heappop(self._free)
            elif self._top < self.max_services:
                s = self._top
                self._top += 1
            else:
                raise ValueError(f"more than {self.max_services} services")
            self._check_slot(s)
            self._names[name] = s
        return s

    def slots(self):
        return dict(self._names)

    cdef void _reset(self, int s) noexcept:
        _default_service(_svc_at(self._chunks, s))

    def retire(self, keep):
        """Free the slots of every name not in ``keep`` that holds no lease
        (a slot with leases waits for a later call); the names freed."""
        gone = [n for n, s in self._names.items()
                if n not in keep and _svc_at(self._chunks, <int>s).active == 0]
        if not gone:
            return gone
        cdef unsigned char dead[32768]
        memset(dead, 0, sizeof(dead))
        for n in gone:
            s = self._names.pop(n)
            dead[<int>s] = 1
            self._reset(<int>s)
            heapq.heappush(self._free, s)
        cdef uint64_t i
        cdef uint32_t t
        for i in range(<uint64_t>self.capacity):       # their token buckets go too
            t = self._table[i].tag
            if t and dead[t & SLOT_BITS]:
                self._table[i].tag = 0
                self._table[i].value = 0
                self.tracked_sources -= 1
        i = 0
        while i <= self._omask:
            t = self._ovf[i].tag
            if t and dead[t & SLOT_BITS]:
                self._odelete(<int>i)          # shifts a later entry into i
            else:
                i += 1
        return gone

    def configure(self, slot_arg, cps_max=50, cps_wait=10, instances=UNLIMITED,
                  per_source=UNLIMITED, max_load=0.0, times=None, rate=0.0, burst=0.0,
                  restart_window=True):
        """Set a service's limits.  Its leases, token buckets and cps
        switch-off are kept; its cps window restarts unless
        ``restart_window`` is false (module docstring)."""
        cdef int slot = self._slot(slot_arg)
        self.validate(cps_max, cps_wait, instances, per_source, max_load, times, rate, burst)
        t_ns, tau_ns = _gcra(rate, burst)
        cdef uint64_t bits[23]
        cdef int m
        memset(bits, 0, sizeof(bits))
        if times is not None:
            for start, end in times:
                for m in range(start, end + 1):
                    bits[m >> 6] |= (<uint64_t>1) << (m & 63)
        cdef Service *sv = _svc_at(self._chunks, slot)
        sv.cps_max = <uint32_t>int(cps_max)
        sv.cps_wait = <uint32_t>int(cps_wait)
        # xinetd keeps a service's cps count and window start in its
        # configuration, which a reload replaces with the one just read: the
        # window restarts (a service switched off stays off until off_until)
        if restart_window:
            sv.count = 0
            sv.window = 0
        sv.instances = int(instances)
        sv.per_source = int(per_source)
        sv.max_load = float(max_load)
        sv.has_times = times is not None
        for m in range(23):
            sv.times[m] = bits[m]
        sv.t_ns = t_ns
        sv.tau_ns = tau_ns

    @staticmethod
    def validate(cps_max=50, cps_wait=10, instances=UNLIMITED, per_source=UNLIMITED,
                 max_load=0.0, times=None, rate=0.0, burst=0.0):
        """Raise ValueError when :meth:`configure` would; change nothing.  A
        negative ``max_load`` is allowed: xinetd then refuses for load always."""
        # written as "in range" tests, so that NaN fails them too
        if not (0 <= cps_max <= _UINT32_MAX and 0 <= cps_wait <= _UINT32_MAX):
            raise ValueError("cps values must be 0..2**32-1")
        if not (-1 <= instances <= _INT32_MAX and -1 <= per_source <= _INT32_MAX):
            raise ValueError("instances/per_source must be 0..2**31-1, or -1 for UNLIMITED")
        float(max_load)                     # any float, as xinetd's sscanf("%f")
        if not (0 <= rate < INFINITY and 0 <= burst < INFINITY):
            raise ValueError("rate and burst must be finite and not negative")
        if rate > 0:
            if burst < 1:
                raise ValueError("a rate needs a burst of at least 1")
            # the float test first: 1e9 / rate may not even fit an int
            if (burst if burst > 1 else 1) * (1e9 / rate) > MAX_BUCKET_NS or sum(
                    _gcra(rate, burst)) > MAX_BUCKET_NS:
                raise ValueError("burst / rate must be at most 2**62 ns (a bucket that "
                                 "fills in under 146 years)")
        for start, end in times or ():
            if not (0 <= operator.index(start) <= operator.index(end) < 1440):
                raise ValueError(f"bad time interval {start}-{end}")

    cdef int _slot(self, object arg) except -1:
        """A slot number from the caller, checked as the twin checks it: any
        integer (``operator.index``: TypeError otherwise), ValueError when out
        of range -- never C's OverflowError or a float cut to an int."""
        cdef int overflow = 0
        cdef object s = PyNumber_Index(arg)       # operator.index, called in C
        cdef long long v = PyLong_AsLongLongAndOverflow(s, &overflow)
        if overflow or not 0 <= v < self.max_services:
            raise ValueError(f"slot {s} out of range")
        self._check_slot(<int>v)
        return <int>v

    cdef int _check_slot(self, int slot) except -1:
        cdef int c, k
        cdef Service *chunk
        if slot < 0 or slot >= self.max_services:
            raise ValueError(f"slot {slot} out of range")
        c = slot >> CHUNK_SHIFT
        if self._chunks[c] == NULL:
            chunk = <Service *>calloc(CHUNK, sizeof(Service))
            if chunk == NULL:
                raise MemoryError()
            for k in range(CHUNK):
                _default_service(&chunk[k])
            self._chunks[c] = chunk
        return 0

    # -- the table ------------------------------------------------------
    cdef int _find(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil:
        cdef uint64_t base = (_hash(hi, lo, tag, self._k0, self._k1) & self._gmask) * C_WAYS
        cdef uint64_t i
        cdef Entry *e
        for i in range(base, base + C_WAYS):
            e = &self._table[i]
            if e.tag == tag and e.hi == hi and e.lo == lo:
                return <int>i
        return -1

    cdef int _insert(self, uint64_t hi, uint64_t lo, uint32_t tag,
                     int64_t now_ns) noexcept nogil:
        cdef uint64_t base = (_hash(hi, lo, tag, self._k0, self._k1) & self._gmask) * C_WAYS
        cdef int64_t victim = -1
        cdef uint64_t i
        cdef uint32_t t
        for i in range(base, base + C_WAYS):
            t = self._table[i].tag
            if t == 0:
                victim = <int64_t>i
                break
            if (t & KIND_BUCKET) and (
                    victim < 0 or self._table[i].last < self._table[victim].last):
                victim = <int64_t>i
        if victim < 0:
            return -1
        cdef Entry *e = &self._table[victim]
        if e.tag:
            self.evictions += 1
        else:
            self.tracked_sources += 1
        e.hi = hi
        e.lo = lo
        e.tag = tag
        e.last = now_ns
        e.value = 0
        return <int>victim

    cdef bint _pinned(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil:
        """True when the key's group has no empty and no bucket entry."""
        cdef uint64_t base = (_hash(hi, lo, tag, self._k0, self._k1) & self._gmask) * C_WAYS
        cdef uint64_t i
        for i in range(base, base + C_WAYS):
            if self._table[i].tag == 0 or (self._table[i].tag & KIND_BUCKET):
                return False
        return True

    # -- the overflow area (leases whose group is pinned full) ------------
    cdef int _ofind(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil:
        if self.overflow_entries == 0:
            return -1
        cdef uint64_t i = (_hash(hi, lo, tag, self._k0, self._k1) >> 32) & self._omask
        cdef Entry *e
        while True:
            e = &self._ovf[i]
            if e.tag == 0:
                return -1
            if e.tag == tag and e.hi == hi and e.lo == lo:
                return <int>i
            i = (i + 1) & self._omask

    cdef int _oinsert(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil:
        if self.overflow_entries >= self.overflow_capacity:
            return -1
        cdef uint64_t i = (_hash(hi, lo, tag, self._k0, self._k1) >> 32) & self._omask
        while self._ovf[i].tag != 0:
            i = (i + 1) & self._omask
        self._ovf[i].hi = hi
        self._ovf[i].lo = lo
        self._ovf[i].tag = tag
        self._ovf[i].value = 0
        self._ovf[i].last = 0
        self.overflow_entries += 1
        return <int>i

    cdef void _odelete(self, int at) noexcept nogil:
        # backward-shift deletion: every entry after the hole that may live
        # there (its home is not cyclically in (hole, j]) moves back.
        cdef uint64_t hole = <uint64_t>at, j = <uint64_t>at, home
        cdef Entry *e
        while True:
            j = (j + 1) & self._omask
            e = &self._ovf[j]
            if e.tag == 0:
                break
            home = (_hash(e.hi, e.lo, e.tag, self._k0, self._k1) >> 32) & self._omask
            if hole <= j:
                if hole < home <= j:
                    continue
            elif home > hole or home <= j:
                continue
            self._ovf[hole] = e[0]
            hole = j
        self._ovf[hole].tag = 0
        self._ovf[hole].value = 0
        self.overflow_entries -= 1

    # -- checks ---------------------------------------------------------
    cdef int _check(self, int s, uint64_t hi, uint64_t lo, double now,
                    int64_t now_ns, double load, int minute) noexcept nogil:
        cdef Service *sv = _svc_at(self._chunks, s)
        cdef int64_t now_s, diff, tat
        cdef int i
        cdef bint full
        cdef uint64_t bhi, blo
        cdef uint32_t tag
        cdef Entry *e
        # a. cps (C.7); while "the socket is closed" nothing is counted.
        if now < sv.off_until:
            return 6
        if sv.cps_max != 0:
            now_s = <int64_t>floor(now)
            diff = now_s - sv.window
            if sv.count == 0:
                sv.count = 1
                sv.window = now_s
            elif diff < <int64_t>sv.cps_max:
                sv.count += 1
                if diff == 0:
                    diff = 1
                # a negative diff (the clock stepped back) never trips: xinetd
                # maps only 0 to 1, and its signed division gives <= 0
                if diff > 0 and sv.count // <uint64_t>diff > sv.cps_max:
                    sv.off_until = now + sv.cps_wait
                    sv.cps_trips += 1
                    return 6
            else:
                sv.window = now_s
                sv.count = 1
        # b. max_load: refused when the 1-minute load >= max_load.
        if sv.max_load != 0.0 and load >= sv.max_load:
            return 5
        # c. access_times: local minute inside an inclusive interval.
        if sv.has_times and not ((sv.times[minute >> 6] >> (minute & 63)) & 1):
            return 2
        # d. instances: live leases of the service.
        if sv.instances >= 0 and sv.active >= sv.instances:
            return 3
        # e. per_source: live leases of the service from this address.
        # a source holds at most the service's live leases: below the limit
        # there, no source can be at it, and the table need not be read.
        # When the overflow area is full, a source that holds nothing and
        # whose group is pinned could not be counted: refused (fail closed).
        full = self.overflow_entries >= self.overflow_capacity
        if sv.per_source >= 0 and (sv.active >= sv.per_source or full):
            tag = USED | <uint32_t>s
            i = self._find(hi, lo, tag)
            if i >= 0:
                if self._table[i].value >= <uint32_t>sv.per_source:
                    return 4
            else:
                i = self._ofind(hi, lo, tag)
                if i >= 0:
                    if self._ovf[i].value >= <uint32_t>sv.per_source:
                        return 4
                elif sv.per_source == 0:         # refused anyway: not the area's doing
                    return 4
                elif full and self._pinned(hi, lo, tag):
                    self.overflow_full += 1
                    return 4
        # token bucket (not in xinetd) as GCRA: the entry keeps the bucket's
        # "theoretical arrival time"; a request fits when it is at most tau
        # (= (burst - 1) intervals) ahead of now.
        if sv.t_ns > 0:
            if hi == 0 and (lo >> 32) == V4MAPPED_TOP:
                bhi = hi
                blo = lo
            else:
                bhi = hi & self._pmask_hi
                blo = lo & self._pmask_lo
            tag = USED | KIND_BUCKET | <uint32_t>s
            i = self._find(bhi, blo, tag)
            if i < 0:
                i = self._insert(bhi, blo, tag, now_ns)
                if i < 0:
                    return 0
            e = &self._table[i]
            tat = e.last if e.last > now_ns else now_ns
            if tat - now_ns > sv.tau_ns:
                return 9
            e.last = tat + sv.t_ns
        return 0

    def check(self, slot_arg, const unsigned char[::1] source, double now, double load=0.0,
              int minute=-1):
        """One connection attempt at ``now``; a reason code (``OK`` = 0)."""
        cdef int slot = self._slot(slot_arg)
        if source.shape[0] != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        _check_now(now)
        if minute < 0:
            minute = _local_minute(now)
        elif minute >= 1440:
            raise ValueError("minute must be 0..1439")
        cdef int r = self._check(slot, acl_load_be64(&source[0]), acl_load_be64(&source[8]),
                                 now, <int64_t>(now * 1000000000.0), load, minute)
        _svc_at(self._chunks, slot).refusals[r] += 1
        return r

    def check_batch(self, sources, slots, double now, double load, out, int minute=-1):
        """Check ``n`` requests: ``sources`` n*16 bytes, ``slots`` int32[n];
        writes a reason code per request into ``out`` (uint8[n]); returns the
        number of requests granted."""
        cdef Py_buffer src_buf, slot_buf, out_buf
        PyObject_GetBuffer(sources, &src_buf, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(slots, &slot_buf, PyBUF_SIMPLE)
            try:
                try:
                    PyObject_GetBuffer(out, &out_buf, PyBUF_SIMPLE | PyBUF_WRITABLE)
                except BufferError:
                    raise TypeError("out must be a writable buffer") from None
                try:
                    return self._batch(<const unsigned char *>src_buf.buf, src_buf.len,
                                       <const unsigned char *>slot_buf.buf, slot_buf.len,
                                       <unsigned char *>out_buf.buf, out_buf.len,
                                       now, load, minute)
                finally:
                    PyBuffer_Release(&out_buf)
            finally:
                PyBuffer_Release(&slot_buf)
        finally:
            PyBuffer_Release(&src_buf)

    cdef Py_ssize_t _batch(self, const unsigned char *src, Py_ssize_t src_len,
                           const unsigned char *sl, Py_ssize_t sl_len, unsigned char *res,
                           Py_ssize_t res_len, double now, double load,
                           int minute) except -1:
        cdef Py_ssize_t n = sl_len // 4
        cdef Py_ssize_t i, j, blk, end, granted = 0
        cdef int r, s
        cdef Entry *e
        cdef int64_t now_ns
        cdef uint64_t hi, lo
        cdef Service *sv
        if sl_len % 4 or src_len != 16 * n or res_len < n:
            raise ValueError("sources must hold 16 bytes per slot and out one byte per slot")
        for i in range(n):
            self._check_slot(_int_at(sl, i))
        _check_now(now)                     # before the cast: NaN in C is undefined
        now_ns = <int64_t>(now * 1000000000.0)
        if minute < 0:
            minute = _local_minute(now)
        elif minute >= 1440:
            raise ValueError("minute must be 0..1439")
        with nogil:
            # Blocks of PREFETCH_AHEAD: first ask for every group the block
            # will touch (so the misses overlap), then run the checks.
            blk = 0
            while blk < n:
                end = blk + PREFETCH_AHEAD if blk + PREFETCH_AHEAD < n else n
                for j in range(blk, end):
                    s = _int_at(sl, j)
                    sv = _svc_at(self._chunks, s)
                    hi = acl_load_be64(&src[16 * j])
                    lo = acl_load_be64(&src[16 * j + 8])
                    if sv.per_source >= 0 and sv.active >= sv.per_source:
                        ACL_PREFETCH(&self._table[
                            (_hash(hi, lo, USED | <uint32_t>s, self._k0, self._k1)
                             & self._gmask) * C_WAYS])
                    if sv.t_ns > 0:
                        if not (hi == 0 and (lo >> 32) == V4MAPPED_TOP):
                            hi = hi & self._pmask_hi
                            lo = lo & self._pmask_lo
                        e = &self._table[
                            (_hash(hi, lo, USED | KIND_BUCKET | <uint32_t>s, self._k0,
                                   self._k1) & self._gmask) * C_WAYS]
                        ACL_PREFETCH(e)
                for i in range(blk, end):
                    s = _int_at(sl, i)
                    r = self._check(s, acl_load_be64(&src[16 * i]),
                                    acl_load_be64(&src[16 * i + 8]), now, now_ns, load, minute)
                    _svc_at(self._chunks, s).refusals[r] += 1
                    res[i] = <uint8_t>r
                    if r == 0:
                        granted += 1
                blk = end
        return granted

    def cps_active(self, slot_arg, double now):
        """False while a cps trip keeps the service "closed"."""
        cdef int slot = self._slot(slot_arg)
        return not now < _svc_at(self._chunks, slot).off_until

    def cps_state(self, slot_arg):
        """(count, window_start, off_until) of the service's cps counter."""
        cdef int slot = self._slot(slot_arg)
        sv = _svc_at(self._chunks, slot)
        return int(sv.count), int(sv.window), float(sv.off_until)

    # -- leases ---------------------------------------------------------
    def take_lease(self, slot_arg, const unsigned char[::1] source):
        """Count a granted connection toward instances and per_source."""
        cdef int slot = self._slot(slot_arg)
        if source.shape[0] != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        cdef uint64_t hi = acl_load_be64(&source[0])
        cdef uint64_t lo = acl_load_be64(&source[8])
        cdef uint32_t tag = USED | <uint32_t>slot
        cdef int i = self._find(hi, lo, tag)
        cdef int o = -1
        if i < 0:
            o = self._ofind(hi, lo, tag)
            if o < 0:
                i = self._insert(hi, lo, tag, 0)
        tracked = True
        if i >= 0:
            self._table[i].value += 1
        else:
            if o < 0:
                o = self._oinsert(hi, lo, tag)
                if o >= 0:
                    self.lease_overflows += 1
            if o >= 0:
                self._ovf[o].value += 1
            else:
                tracked = False             # counted for instances only
                self.overflow_full += 1
        _svc_at(self._chunks, slot).active += 1
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = (slot, hi, lo, tracked)
        return lease

    def release(self, lease):
        """Give a lease back; False when it is unknown (or released twice)."""
        rec = self._leases.pop(lease, None)
        if rec is None:
            return False
        slot, hi, lo, tracked = rec
        _svc_at(self._chunks, <int>slot).active -= 1
        cdef int i
        cdef uint32_t tag = USED | <uint32_t>slot
        if tracked:
            i = self._find(hi, lo, tag)
            if i >= 0:
                self._table[i].value -= 1
                if self._table[i].value == 0:
                    self._table[i].tag = 0
                    self.tracked_sources -= 1
            else:
                i = self._ofind(hi, lo, tag)
                if i >= 0:
                    self._ovf[i].value -= 1
                    if self._ovf[i].value == 0:
                        self._odelete(i)
        return True

    def held(self, slot_arg, const unsigned char[::1] source):
        """Live leases of ``slot`` from ``source`` (what per_source compares)."""
        cdef int slot = self._slot(slot_arg)
        if source.shape[0] != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        cdef uint64_t hi = acl_load_be64(&source[0])
        cdef uint64_t lo = acl_load_be64(&source[8])
        cdef uint32_t tag = USED | <uint32_t>slot
        cdef int i = self._find(hi, lo, tag)
        if i >= 0:
            return int(self._table[i].value)
        i = self._ofind(hi, lo, tag)
        return int(self._ovf[i].value) if i >= 0 else 0

    # -- counters for the metrics collector --------------------------------
    def active_leases(self, slot_arg):
        cdef int slot = self._slot(slot_arg)
        return int(_svc_at(self._chunks, slot).active)

    def refusals(self, slot_arg, int reason):
        """Checks of ``slot`` that ended with ``reason`` (``OK`` counts grants)."""
        cdef int slot = self._slot(slot_arg)
        if reason < 0 or reason >= 10:
            raise ValueError("reason must be 0..9")
        return int(_svc_at(self._chunks, slot).refusals[reason])

    def cps_trips(self, slot_arg):
        cdef int slot = self._slot(slot_arg)
        return int(_svc_at(self._chunks, slot).cps_trips)

    @property
    def memory_bytes(self):
        """Bytes of the source table (what a flood of sources can fill)."""
        return self.capacity * sizeof(Entry)

    @property
    def leases_outstanding(self):
        return len(self._leases)
