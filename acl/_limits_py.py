"""Pure-Python twin of the limits core (``ext/acl/_limits.pyx``).

It is the oracle in tests and the fallback when nothing native is built; its
API *is* the compiled core's API, and both must give the same answers for the
same calls (same integers, same evictions).

Theory of operation (spec C.6, C.7, C.8; ARCHITECTURE.md "Limits"):

* A :class:`LimitState` holds the limit state of every service: it outlives
  a policy reload (the layer is rebuilt around the same state), so leases,
  token buckets and a cps switch-off survive.  Services are *slots*
  (``slot(name)``) configured with :meth:`LimitState.configure`; a reload
  reconfigures a slot and restarts its cps window, as a reload of xinetd
  does (its count and window start live in the service's configuration,
  which the reload replaces: seen live, tests/xinetd/test_live_limits.py),
  unless the caller says the configuration was not read again
  (``restart_window=False``: acl/compile/xinetd.py).
* :meth:`check` applies, in xinetd's parent order, **cps -> max_load ->
  access_times -> instances -> per_source**, then the per-source token bucket
  (not in xinetd), and returns a reason code (``OK`` = 0; the other codes
  equal ``acl.model.Reason``).  It counts the connection for cps exactly as
  xinetd does, whatever later layers decide; it takes no lease.
* cps (C.7): ``count``/``window_start`` in whole seconds; ``count == 0`` opens
  a window; inside a window of ``cps_max`` seconds ``count += 1`` and the
  service trips when ``count // elapsed > cps_max``, an ``elapsed`` of 0
  counting as 1 and a negative one (the clock stepped back) never tripping,
  as in xinetd's ``svc_allowed``; past the window
  it restarts at 1.  A trip refuses the connection and "closes the socket"
  for ``cps_wait`` real seconds (every check in that time is refused without
  being counted); reactivation does *not* reset the counters (a reload
  does).  ``cps_max == 0`` is off.
* instances / per_source count live **leases** (:meth:`take_lease`,
  :meth:`release`).  -1 means UNLIMITED; 0 refuses everything.
* Services come and go: :meth:`retire` (called when a new policy is swapped
  in) frees the slots of names the policy no longer has -- except a slot
  that still holds leases, which is freed by a later ``retire`` once they
  are released, so a lease of a gone service never touches a reused slot.
  A freed slot is reset (counters, cps window, buckets) and reused lowest
  first.  At most ``max_services`` names (:data:`MAX_SERVICES`) are live.
* Sources are 16-byte addresses (IPv4 as ``::ffff:a.b.c.d``, see
  :func:`pack_source`), so one client compares equal in either family.
* Per-source state (lease counts, token buckets) lives in one bounded,
  set-associative open-addressing table: ``groups`` x ``WAYS`` (2) entries,
  the group chosen by a 64-bit hash keyed with a per-process random secret
  (``key``; tests pass a fixed one), so addresses that share a group cannot
  be computed offline; a group is one 64-byte cache line, so a
  check costs one line (4 ways measured 2-3x slower with 1M sources).  A
  full group evicts its *bucket* entry with the oldest arrival time (the
  fullest bucket; entries holding leases are pinned) and counts an eviction.
* A lease whose group is pinned full goes to the **overflow area**, an exact
  map of at most ``overflow_capacity`` (``capacity // 16``, at least 16)
  sources (``lease_overflows`` counts them), so per_source and instances stay
  exact as in xinetd.  When even that is full, a service with per_source
  refuses a source it could not count (``PER_SOURCE_LIMIT``, fail closed;
  ``overflow_full`` counts the refusals and the leases of other services
  counted for instances only).
* Token buckets are kept as GCRA (one "theoretical arrival time" per bucket,
  integer nanoseconds), the exact equivalent of a bucket of ``burst`` tokens
  refilled at ``rate`` per second, so both twins compute bit-identical
  results; the bucket key of an IPv6 source is its ``v6_prefix`` network
  (IPv4 sources are never aggregated).
* Every value is checked against the C type that holds it before anything
  changes (:meth:`validate`, the ``now`` of a check), so the compiled core
  never casts an out-of-range number (undefined in C) and both twins refuse
  the same calls with the same exception: ``ValueError`` with the same
  message for a value out of range, ``TypeError`` for a wrong type.
  cps values are uint32, instances/per_source int32; a bucket's interval and
  tolerance are int64 nanoseconds, bounded so that ``now`` in ns plus both
  cannot overflow: ``rate`` is 0 or positive, ``burst / rate`` (the time a
  bucket takes to fill) at most ``MAX_BUCKET_NS``; ``now`` is finite and at
  most ``MAX_NOW`` seconds from the epoch either way (year 2106).
  ``max_load`` is any float, as xinetd's ``sscanf("%f")`` takes it (NaN
  never refuses, as in xinetd).
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import operator
import os
import socket
import time

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

WAYS = 2                 # entries per group (one 64-byte cache line in C)
ENTRY_BYTES = 32         # hi, lo, last (bucket TAT, ns), value (leases), tag
MAX_SERVICES = 32768     # slot number lives in 15 bits of the tag
_NREASONS = 10
_M64 = (1 << 64) - 1
_USED = 1 << 31
_KIND_BUCKET = 1 << 30
_V4MAPPED_HI = 0x0000000000000000
_V4MAPPED_LO_TOP = 0x0000FFFF
_SLOT_BITS = 0x7FFF
MAX_LIMITS_KEY = (1 << 128) - 1
#: the largest ``now`` (seconds, either side of the epoch) a check takes
MAX_NOW = float(1 << 32)
#: the longest a bucket may take to fill (interval + tolerance), in ns
MAX_BUCKET_NS = 1 << 62
_INT32_MAX = (1 << 31) - 1
#: the most entries a source table may be asked for (its capacity is an int)
MAX_SOURCES = 1 << 30
_UINT32_MAX = (1 << 32) - 1
#: this process's hash key (each twin draws its own; a ``key`` argument wins)
_PROCESS_KEY = int.from_bytes(os.urandom(16), "big")


def pack_source(addr) -> bytes:
    """A client address as the 16 bytes the core keys on (IPv4 -> mapped)."""
    if isinstance(addr, (bytes, bytearray, memoryview)):
        raw = bytes(addr)
        if len(raw) == 4:
            return b"\0" * 10 + b"\xff\xff" + raw
        if len(raw) == 16:
            return raw
        raise ValueError(f"packed source must be 4 or 16 bytes, got {len(raw)}")
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = str(addr)
    if not isinstance(addr, str):
        raise TypeError(f"cannot use {type(addr).__name__} as a source address")
    try:
        if ":" in addr:
            return socket.inet_pton(socket.AF_INET6, addr)
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, addr)
    except OSError as exc:
        raise ValueError(f"not a numeric address: {addr!r}") from exc


def _mix(x: int) -> int:
    # splitmix64 finalizer; the C core uses the same constants.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(hi: int, lo: int, tag: int, k0: int = 0, k1: int = 0) -> int:
    # keyed: without (k0, k1) colliding addresses cannot be worked out offline
    return _mix(hi ^ k1 ^ _mix(lo ^ k0 ^ ((tag * 0x9E3779B97F4A7C15) & _M64)))


def _check_now(now: float) -> float:
    """``now`` as a float, or ValueError when it is not a finite time within
    ``MAX_NOW`` seconds of the epoch (NaN included)."""
    now = float(now)
    if not -MAX_NOW <= now <= MAX_NOW:
        raise ValueError(f"now must be a finite time within {MAX_NOW:.0f} s of the epoch, "
                         f"got {now!r}")
    return now


def _gcra(rate: float, burst: float) -> tuple[int, int]:
    """(emission interval, tolerance) in nanoseconds for a rate and burst."""
    if rate <= 0:
        return 0, 0
    t_ns = max(1, int(round(1e9 / rate)))
    return t_ns, int((burst - 1.0) * t_ns)


def _local_minute(now: float) -> int:
    tm = time.localtime(int(math.floor(now)))
    return tm.tm_hour * 60 + tm.tm_min


class LimitState:
    """Limit state for every service of a policy; see the module rules."""

    def __init__(self, max_sources: int = 65536, v6_prefix: int = 64,
                 max_services: int = MAX_SERVICES, key: int | None = None):
        if not 1 <= max_services <= MAX_SERVICES:
            raise ValueError(f"max_services must be 1..{MAX_SERVICES}")
        if not 0 <= v6_prefix <= 128:
            raise ValueError("v6_prefix must be 0..128")
        if not WAYS <= max_sources <= MAX_SOURCES:
            raise ValueError(f"max_sources must be {WAYS}..{MAX_SOURCES}")
        if key is None:
            key = _PROCESS_KEY
        if not 0 <= key <= MAX_LIMITS_KEY:
            raise ValueError("key must be 0 .. 2**128-1")
        self._k0, self._k1 = key & _M64, key >> 64
        groups = 1
        while groups * WAYS < max_sources:
            groups <<= 1
        self._groups = groups
        self.capacity = groups * WAYS
        self.v6_prefix = v6_prefix
        self.max_services = max_services
        n = self.capacity
        self._hi = [0] * n
        self._lo = [0] * n
        self._last = [0] * n
        self._val = [0] * n
        self._tag = [0] * n
        self._names: dict[str, int] = {}
        self._free: list[int] = []          # freed slots (a heap: lowest reused first)
        self._top = 0                       # slots ever handed out by slot()
        #: layer state that must survive reloads (the xinetd sensor list)
        self.extra: dict = {}
        # service records grow with the highest slot touched (the compiled
        # core allocates them in chunks the same way)
        self._cps_max: list[int] = []
        self._cps_wait: list[int] = []
        self._count: list[int] = []
        self._window: list[int] = []
        self._off_until: list[float] = []
        self._cps_trips: list[int] = []
        self._instances: list[int] = []
        self._per_source: list[int] = []
        self._max_load: list[float] = []
        self._times: list[bytearray | None] = []
        self._t_ns: list[int] = []
        self._tau_ns: list[int] = []
        self._active: list[int] = []
        self._refusals: list[list[int]] = []
        self._leases: dict[int, tuple[int, int, int, bool]] = {}
        self._next_lease = 1
        self.evictions = 0
        self.tracked_sources = 0
        self.lease_overflows = 0
        self.overflow_full = 0
        #: the overflow area: (tag, hi, lo) -> live leases, exact and bounded
        self._ovf: dict[tuple[int, int, int], int] = {}
        self.overflow_capacity = max(16, self.capacity // 16)

    @property
    def overflow_entries(self) -> int:
        """Sources whose leases are counted in the overflow area now."""
        return len(self._ovf)

    def _grow(self, upto: int) -> None:
        while len(self._cps_max) <= upto:
            self._cps_max.append(50)
            self._cps_wait.append(10)
            self._count.append(0)
            self._window.append(0)
            self._off_until.append(0.0)
            self._cps_trips.append(0)
            self._instances.append(UNLIMITED)
            self._per_source.append(UNLIMITED)
            self._max_load.append(0.0)
            self._times.append(None)
            self._t_ns.append(0)
            self._tau_ns.append(0)
            self._active.append(0)
            self._refusals.append([0] * _NREASONS)

    def _reset(self, s: int) -> None:
        self._cps_max[s], self._cps_wait[s], self._count[s], self._window[s] = 50, 10, 0, 0
        self._off_until[s], self._cps_trips[s] = 0.0, 0
        self._instances[s] = self._per_source[s] = UNLIMITED
        self._max_load[s], self._times[s], self._t_ns[s], self._tau_ns[s] = 0.0, None, 0, 0
        self._active[s] = 0
        self._refusals[s] = [0] * _NREASONS

    # -- services -------------------------------------------------------
    def slot(self, name: str) -> int:
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

    def slots(self) -> dict[str, int]:
        return dict(self._names)

    def retire(self, keep) -> list[str]:
        """Free the slots of every name not in ``keep`` that holds no lease
        (a slot with leases waits for a later call); the names freed."""
        gone = [n for n, s in self._names.items() if n not in keep and self._active[s] == 0]
        if not gone:
            return gone
        dead = set()
        for n in gone:
            s = self._names.pop(n)
            dead.add(s)
            self._reset(s)
            heapq.heappush(self._free, s)
        for i, t in enumerate(self._tag):       # their token buckets go too
            if t and t & _SLOT_BITS in dead:
                self._tag[i] = 0
                self._val[i] = 0
                self.tracked_sources -= 1
        for k in [k for k in self._ovf if k[0] & _SLOT_BITS in dead]:
            del self._ovf[k]
        return gone

    def configure(self, slot: int, cps_max: int = 50, cps_wait: int = 10,
                  instances: int = UNLIMITED, per_source: int = UNLIMITED,
                  max_load: float = 0.0, times=None, rate: float = 0.0,
                  burst: float = 0.0, restart_window: bool = True) -> None:
        """Set a service's limits.  Its leases, token buckets and cps
        switch-off are kept; its cps window restarts unless
        ``restart_window`` is false (module docstring)."""
        self._check_slot(slot)
        self.validate(cps_max, cps_wait, instances, per_source, max_load, times, rate, burst)
        t_ns, tau_ns = _gcra(rate, burst)
        bitmap = None
        if times is not None:
            bitmap = bytearray(1440)
            for start, end in times:
                for m in range(start, end + 1):
                    bitmap[m] = 1
        self._cps_max[slot] = int(cps_max)
        self._cps_wait[slot] = int(cps_wait)
        # xinetd keeps a service's cps count and window start in its
        # configuration, which a reload replaces with the one just read: the
        # window restarts (a service switched off stays off until off_until)
        if restart_window:
            self._count[slot] = 0
            self._window[slot] = 0
        self._instances[slot] = int(instances)
        self._per_source[slot] = int(per_source)
        self._max_load[slot] = float(max_load)
        self._times[slot] = bitmap
        self._t_ns[slot] = t_ns
        self._tau_ns[slot] = tau_ns

    @staticmethod
    def validate(cps_max: int = 50, cps_wait: int = 10, instances: int = UNLIMITED,
                 per_source: int = UNLIMITED, max_load: float = 0.0, times=None,
                 rate: float = 0.0, burst: float = 0.0) -> None:
        """Raise ValueError when :meth:`configure` would; change nothing.  A
        negative ``max_load`` is allowed: xinetd then refuses for load always."""
        # written as "in range" tests, so that NaN fails them too
        if not (0 <= cps_max <= _UINT32_MAX and 0 <= cps_wait <= _UINT32_MAX):
            raise ValueError("cps values must be 0..2**32-1")
        if not (-1 <= instances <= _INT32_MAX and -1 <= per_source <= _INT32_MAX):
            raise ValueError("instances/per_source must be 0..2**31-1, or -1 for UNLIMITED")
        float(max_load)                     # any float, as xinetd's sscanf("%f")
        if not (0 <= rate < math.inf and 0 <= burst < math.inf):
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

    def _check_slot(self, slot: int) -> None:
        if not 0 <= operator.index(slot) < self.max_services:
            raise ValueError(f"slot {slot} out of range")
        if slot >= len(self._cps_max):
            self._grow(slot)

    # -- the table ------------------------------------------------------
    def _find(self, hi: int, lo: int, tag: int) -> int:
        base = (_hash(hi, lo, tag, self._k0, self._k1) & (self._groups - 1)) * WAYS
        for i in range(base, base + WAYS):
            if self._tag[i] == tag and self._hi[i] == hi and self._lo[i] == lo:
                return i
        return -1

    def _insert(self, hi: int, lo: int, tag: int, now_ns: int) -> int:
        """Index of a fresh entry for the key, evicting if needed; -1 if pinned full."""
        base = (_hash(hi, lo, tag, self._k0, self._k1) & (self._groups - 1)) * WAYS
        victim = -1
        for i in range(base, base + WAYS):
            t = self._tag[i]
            if t == 0:
                victim = i
                break
            if t & _KIND_BUCKET and (victim < 0 or self._last[i] < self._last[victim]):
                victim = i
        if victim < 0:
            return -1
        if self._tag[victim]:
            self.evictions += 1
        else:
            self.tracked_sources += 1
        self._hi[victim] = hi
        self._lo[victim] = lo
        self._tag[victim] = tag
        self._last[victim] = now_ns
        self._val[victim] = 0
        return victim

    def _pinned(self, hi: int, lo: int, tag: int) -> bool:
        """True when the key's group has no empty and no bucket entry."""
        base = (_hash(hi, lo, tag, self._k0, self._k1) & (self._groups - 1)) * WAYS
        return all(self._tag[i] and not self._tag[i] & _KIND_BUCKET
                   for i in range(base, base + WAYS))

    def _held(self, hi: int, lo: int, tag: int) -> int:
        i = self._find(hi, lo, tag)
        if i >= 0:
            return self._val[i]
        return self._ovf.get((tag, hi, lo), 0) if self._ovf else 0

    def _bucket_key(self, hi: int, lo: int) -> tuple[int, int]:
        if hi == 0 and (lo >> 32) == _V4MAPPED_LO_TOP:
            return hi, lo
        p = self.v6_prefix
        if p >= 128:
            return hi, lo
        if p <= 64:
            return hi & (((1 << p) - 1) << (64 - p)), 0
        return hi, lo & (((1 << (p - 64)) - 1) << (128 - p))

    # -- checks ---------------------------------------------------------
    def check(self, slot: int, source: bytes, now: float, load: float = 0.0,
              minute: int = -1) -> int:
        """One connection attempt at ``now``; a reason code (``OK`` = 0)."""
        self._check_slot(slot)
        raw = bytes(source)
        if len(raw) != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        now = _check_now(now)
        if minute < 0:
            minute = _local_minute(now)
        elif minute >= 1440:
            raise ValueError("minute must be 0..1439")
        hi = int.from_bytes(raw[:8], "big")
        lo = int.from_bytes(raw[8:], "big")
        r = self._check(slot, hi, lo, now, int(now * 1000000000.0), load, minute)
        self._refusals[slot][r] += 1
        return r

    def check_batch(self, sources, slots, now: float, load: float, out, minute: int = -1) -> int:
        """Check ``n`` requests: ``sources`` n*16 bytes, ``slots`` int32[n];
        writes a reason code per request into ``out`` (uint8[n]); returns the
        number of requests granted."""
        src = memoryview(sources).cast("B")
        sl = memoryview(slots).cast("B")
        if len(sl) % 4:
            raise ValueError("sources must hold 16 bytes per slot and out one byte per slot")
        sl = sl.cast("i")
        res = memoryview(out).cast("B")
        if res.readonly:
            raise TypeError("out must be a writable buffer")
        n = len(sl)
        if len(src) != 16 * n or len(res) < n:
            raise ValueError("sources must hold 16 bytes per slot and out one byte per slot")
        for i in range(n):
            self._check_slot(sl[i])
        now = _check_now(now)
        if minute < 0:
            minute = _local_minute(now)
        elif minute >= 1440:
            raise ValueError("minute must be 0..1439")
        now_ns = int(now * 1000000000.0)
        granted = 0
        for i in range(n):
            hi = int.from_bytes(src[16 * i:16 * i + 8], "big")
            lo = int.from_bytes(src[16 * i + 8:16 * i + 16], "big")
            r = self._check(sl[i], hi, lo, now, now_ns, load, minute)
            self._refusals[sl[i]][r] += 1
            res[i] = r
            granted += r == OK
        return granted

    def _check(self, s: int, hi: int, lo: int, now: float, now_ns: int, load: float,
               minute: int) -> int:
        # a. cps (C.7); while "the socket is closed" nothing is counted.
        if now < self._off_until[s]:
            return CPS
        cmax = self._cps_max[s]
        if cmax != 0:
            now_s = int(math.floor(now))
            diff = now_s - self._window[s]
            if self._count[s] == 0:
                self._count[s] = 1
                self._window[s] = now_s
            elif diff < cmax:
                self._count[s] += 1
                if diff == 0:
                    diff = 1
                # a negative diff (the clock stepped back) never trips: xinetd
                # maps only 0 to 1, and its signed division gives <= 0
                if diff > 0 and self._count[s] // diff > cmax:
                    self._off_until[s] = now + self._cps_wait[s]
                    self._cps_trips[s] += 1
                    return CPS
            else:
                self._window[s] = now_s
                self._count[s] = 1
        # b. max_load: refused when the 1-minute load >= max_load.
        ml = self._max_load[s]
        if ml != 0.0 and load >= ml:
            return LOAD
        # c. access_times: local minute inside an inclusive interval.
        bm = self._times[s]
        if bm is not None and not bm[minute]:
            return TIME
        # d. instances: live leases of the service.
        lim = self._instances[s]
        if lim >= 0 and self._active[s] >= lim:
            return SERVICE_LIMIT
        # e. per_source: live leases of the service from this address.
        lim = self._per_source[s]
        # a source holds at most the service's live leases: below the limit
        # there, no source can be at it, and the table need not be read.
        # When the overflow area is full, a source that holds nothing and
        # whose group is pinned could not be counted: refused (fail closed).
        full = len(self._ovf) >= self.overflow_capacity
        if lim >= 0 and (self._active[s] >= lim or full):
            tag = _USED | s
            i = self._find(hi, lo, tag)
            if i >= 0:
                held = self._val[i]
            else:
                held = self._ovf.get((tag, hi, lo), -1) if self._ovf else -1
                if held < 0:
                    if lim > 0 and full and self._pinned(hi, lo, tag):
                        self.overflow_full += 1         # (per_source = 0 refuses anyway)
                        return PER_SOURCE_LIMIT
                    held = 0
            if held >= lim:
                return PER_SOURCE_LIMIT
        # token bucket (not in xinetd) as GCRA: the entry keeps the bucket's
        # "theoretical arrival time"; a request fits when it is at most tau
        # (= (burst - 1) intervals) ahead of now.
        t_ns = self._t_ns[s]
        if t_ns > 0:
            bhi, blo = self._bucket_key(hi, lo)
            tag = _USED | _KIND_BUCKET | s
            i = self._find(bhi, blo, tag)
            if i < 0:
                i = self._insert(bhi, blo, tag, now_ns)
                if i < 0:
                    return OK           # every way holds leases: not rate limited
            tat = self._last[i] if self._last[i] > now_ns else now_ns
            if tat - now_ns > self._tau_ns[s]:
                return RATE
            self._last[i] = tat + t_ns
        return OK

    def cps_active(self, slot: int, now: float) -> bool:
        """False while a cps trip keeps the service "closed"."""
        self._check_slot(slot)
        return not now < self._off_until[slot]

    def cps_state(self, slot: int) -> tuple[int, int, float]:
        """(count, window_start, off_until) of the service's cps counter."""
        self._check_slot(slot)
        return self._count[slot], self._window[slot], self._off_until[slot]

    # -- leases ---------------------------------------------------------
    def take_lease(self, slot: int, source: bytes) -> int:
        """Count a granted connection toward instances and per_source."""
        self._check_slot(slot)
        raw = bytes(source)
        if len(raw) != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        hi = int.from_bytes(raw[:8], "big")
        lo = int.from_bytes(raw[8:], "big")
        tag = _USED | slot
        i = self._find(hi, lo, tag)
        okey = (tag, hi, lo)
        if i < 0 and okey not in self._ovf:
            i = self._insert(hi, lo, tag, 0)
        tracked = True
        if i >= 0:
            self._val[i] += 1
        elif okey in self._ovf:
            self._ovf[okey] += 1
        elif len(self._ovf) < self.overflow_capacity:
            self._ovf[okey] = 1
            self.lease_overflows += 1
        else:
            tracked = False                 # counted for instances only
            self.overflow_full += 1
        self._active[slot] += 1
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = (slot, hi, lo, tracked)
        return lease

    def release(self, lease: int) -> bool:
        """Give a lease back; False when it is unknown (or released twice)."""
        rec = self._leases.pop(lease, None)
        if rec is None:
            return False
        slot, hi, lo, tracked = rec
        self._active[slot] -= 1
        if tracked:
            tag = _USED | slot
            i = self._find(hi, lo, tag)
            if i >= 0:
                self._val[i] -= 1
                if self._val[i] <= 0:
                    self._tag[i] = 0
                    self._val[i] = 0
                    self.tracked_sources -= 1
            elif (tag, hi, lo) in self._ovf:
                self._ovf[tag, hi, lo] -= 1
                if self._ovf[tag, hi, lo] <= 0:
                    del self._ovf[tag, hi, lo]
        return True

    def held(self, slot: int, source: bytes) -> int:
        """Live leases of ``slot`` from ``source`` (what per_source compares)."""
        self._check_slot(slot)
        raw = bytes(source)
        if len(raw) != 16:
            raise ValueError("source must be 16 bytes (see pack_source)")
        return self._held(int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"),
                          _USED | slot)

    # -- counters for the metrics collector --------------------------------
    def active_leases(self, slot: int) -> int:
        self._check_slot(slot)
        return self._active[slot]

    def refusals(self, slot: int, reason: int) -> int:
        """Checks of ``slot`` that ended with ``reason`` (``OK`` counts grants)."""
        self._check_slot(slot)
        if not 0 <= reason < _NREASONS:
            raise ValueError(f"reason must be 0..{_NREASONS - 1}")
        return self._refusals[slot][reason]

    def cps_trips(self, slot: int) -> int:
        self._check_slot(slot)
        return self._cps_trips[slot]

    @property
    def memory_bytes(self) -> int:
        """Bytes of the source table (what a flood of sources can fill)."""
        return self.capacity * ENTRY_BYTES

    @property
    def leases_outstanding(self) -> int:
        return len(self._leases)
