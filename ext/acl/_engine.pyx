# cython: language_level=3
"""The engine's batch path: a read buffer of binary frames in, replies out.

Rules of this file (docs/protocol.md, acl/engine.py, acl/fastpath.py):

* ``BatchPlan.run(buf, pos, now)`` walks the frames in ``buf[pos:]`` in
  loops that let the GIL go for reads of ``RUN_NOGIL_BYTES`` or more.  A
  frame it can answer -- a version 1 DECIDE without flags (any flag: LEASE,
  UCSPI, INFO, SEAL), for a service of the plan, from a client whose address decides
  the service's layers (the plan's range tables) -- is decoded, decided
  (per-source token bucket, then xinetd's parent checks, then a range
  lookup) and encoded into the reply buffer.  Pass A (nogil) decodes, looks
  up and spends tokens; the frames of xinetd services that passed the bucket
  go, in frame order, through ONE ``LimitState.check_batch`` call of the
  limits core (cps, access_times, instances, per_source -- the same calls
  the Python path makes one by one, so the same counting); pass B (nogil)
  lets a limits refusal replace the address answer and encodes.  At the
  first frame it cannot answer it stops and returns that frame's offset
  with status 1: Python decides that one frame (acl.wire and
  Engine.decide) and calls ``run`` again, so replies keep the request order.
  Status 0: everything complete was answered (``pos`` is where an incomplete
  frame starts); status 2: the reply buffer is full, or the pass holds
  ``MAXF`` (4,096) frames, the size of its scratch arrays -- call again.
* The plan never decides differently from the Python path: a range's action
  is the encoded Decision the Python layers give for every address of the
  range, and anything a range table cannot know (a lease, a mapped IPv4
  client, a host or user name that is not ASCII, an unknown service, an
  action of -1) goes to Python.  So does an answer whose DECISION frame
  would pass 64 KiB (acl/fastpath.py leaves it out; ``__init__`` refuses
  one): the reply buffer is sized for 64 answers of the largest action, and
  Python sends the big ones or answers ERROR 6.  The order inside a
  frame's decision is the engine's: rate first, then the layers; the
  lookup is done before the bucket so a frame sent to Python has not spent
  a token.
* ``SourceTable`` is the compiled twin of ``acl._engine_py.SourceTable``
  (same hash, same probing, same eviction, same float arithmetic, the same
  refusals of out-of-range input).  A slot is empty while its ``tokens`` is
  negative: ``take`` refuses the ``now``/``rate``/``burst`` (NaN, infinite,
  negative) that could make a live bucket's tokens NaN or negative, and the
  plan's rate and burst come from a policy that refused them already.
* Counters are plain C integers read by the engine at scrape time.
"""

from array import array

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.math cimport INFINITY
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

__all__ = ["SourceTable", "BatchPlan", "source_key", "ranges4", "PROBES", "LATENCY_BOUNDS",
           "MAX_NOW"]

PROBES = 8
MAX_NOW = float(1 << 32)          # the largest |now| (s) take accepts (the twin's)
DEF C_MAX_NOW = 4294967296.0
DEF C_PROBES = 8
DEF NLAT = 14
DEF MAXF = 4096                   # frames per pass (the limits scratch arrays)
DEF RUN_NOGIL_BYTES = 65536       # run() lets the GIL go for reads this long or longer
cdef double[NLAT] _BOUNDS = [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4,
                             5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0]
LATENCY_BOUNDS = tuple(_BOUNDS[i] for i in range(NLAT))
cdef unsigned char _MAPPED[12]
memset(_MAPPED, 0, 10)
_MAPPED[10] = 0xFF
_MAPPED[11] = 0xFF


def source_key(packed, ipv6_prefix=64):
    """4 or 16 packed bytes -> the 16-byte source key (twin: _engine_py)."""
    cdef bytes raw = bytes(packed)
    cdef unsigned char key[16]
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError("ipv6_prefix must be 0..128")
    if len(raw) == 4:
        memcpy(key, _MAPPED, 12)
        memcpy(key + 12, <const unsigned char *>raw, 4)
        return PyBytes_FromStringAndSize(<char *>key, 16)
    if len(raw) != 16:
        raise ValueError("packed address must be 4 or 16 bytes")
    memcpy(key, <const unsigned char *>raw, 16)
    if memcmp(key, _MAPPED, 12) != 0:
        _mask(key, <int>ipv6_prefix)
    return PyBytes_FromStringAndSize(<char *>key, 16)


cdef inline void _mask(unsigned char *key, int prefix) noexcept nogil:
    cdef int i
    cdef int bits
    if prefix >= 128:
        return
    for i in range(16):
        bits = prefix - 8 * i
        if bits >= 8:
            continue
        if bits <= 0:
            key[i] = 0
        else:
            key[i] &= <unsigned char>(0xFF << (8 - bits))


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline uint64_t _be64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline double _now_mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class SourceTable:
    """Bounded per-source token buckets (rules: acl/_engine_py.py)."""

    def __cinit__(self, Py_ssize_t capacity):
        cdef Py_ssize_t cap = 16
        cdef Py_ssize_t i
        # the twin's refusals: past 2**62 its table of 2**63 slots is an
        # OverflowError, and one no memory holds a MemoryError (here the
        # doubling would overflow, and cap * sizeof(Slot) wrap to a small
        # allocation that the loop below then writes past)
        if capacity > (<Py_ssize_t>1 << 62):
            raise OverflowError("cannot fit 'int' into an index-sized integer")
        while cap < capacity:
            cap <<= 1
        if <size_t>cap > PY_SSIZE_T_MAX // sizeof(Slot):
            raise MemoryError()
        self.capacity = cap
        self._slots = <Slot *>malloc(cap * sizeof(Slot))
        if self._slots == NULL:
            raise MemoryError()
        for i in range(cap):
            self._slots[i].hi = 0
            self._slots[i].lo = 0
            self._slots[i].tokens = -1.0
            self._slots[i].last = 0.0

    def __dealloc__(self):
        free(self._slots)

    def take(self, key, double now, double rate, double burst):
        """One request from source ``key`` (16 bytes): True if it may pass."""
        cdef bytes raw = bytes(key)
        if len(raw) != 16:
            raise ValueError("source key must be 16 bytes")
        # the twin's _check_take ("in range" tests: NaN fails them too)
        if not (-C_MAX_NOW <= now <= C_MAX_NOW):
            raise ValueError(f"now must be a finite time within {MAX_NOW:.0f} s of the epoch, "
                             f"got {now!r}")
        if not (0 <= rate < INFINITY and 0 <= burst < INFINITY):
            raise ValueError("rate and burst must be finite and not negative")
        return self._take(<const unsigned char *>raw, now, rate, burst)

    cdef bint _take(self, const unsigned char *key, double now, double rate,
                    double burst) noexcept nogil:
        cdef uint64_t mask = <uint64_t>self.capacity - 1
        cdef uint64_t hi = _be64(key)
        cdef uint64_t lo = _be64(key + 8)
        cdef uint64_t h = _mix(hi ^ _mix(lo))
        cdef Slot *slots = self._slots
        cdef Slot *sl
        cdef Py_ssize_t slot = -1
        cdef Py_ssize_t free_slot = -1
        cdef Py_ssize_t oldest = -1
        cdef Py_ssize_t j
        cdef int i
        cdef double elapsed, tokens
        if burst <= 0:
            burst = rate if rate > 1.0 else 1.0
        for i in range(C_PROBES):
            j = <Py_ssize_t>((h + <uint64_t>i) & mask)
            sl = &slots[j]
            if sl.tokens >= 0:
                if sl.hi == hi and sl.lo == lo:
                    slot = j
                    break
                if oldest < 0 or sl.last < slots[oldest].last:
                    oldest = j
            elif free_slot < 0:
                free_slot = j
        if slot < 0:
            if free_slot >= 0:
                slot = free_slot
                self.tracked += 1
            else:
                slot = oldest
                self.evictions += 1
            sl = &slots[slot]
            sl.hi = hi
            sl.lo = lo
            sl.tokens = burst
            sl.last = now
        else:
            sl = &slots[slot]
            elapsed = now - sl.last
            if elapsed > 0:
                tokens = sl.tokens + elapsed * rate
                sl.tokens = tokens if tokens < burst else burst
                sl.last = now
            elif elapsed < 0:
                # the clock stepped back: refill from the new time on (no
                # refill now, and no lock-out for the length of the step)
                sl.last = now
        if sl.tokens >= 1.0:
            sl.tokens -= 1.0
            return True
        return False


cdef inline uint32_t _le32(const unsigned char *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline bint _ascii(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 0x80:
            return False
    return True


cdef class BatchPlan:
    """Range tables and encoded answers for the address-decidable services."""

    def __cinit__(self):
        self._svc = NULL
        self._act = NULL
        self._counts = NULL
        self._out = NULL
        self._fr_off = NULL
        self._fr_act = NULL
        self._fr_svc = NULL
        self._fr_lim = NULL

    def __init__(self, list services, list actions, SourceTable sources not None,
                 int v6_prefix=64, limits=None):
        """``services``: (name bytes, v4 starts array('I'), v4 actions array('i'),
        v6 hi array('Q'), v6 lo array('Q'), v6 actions array('i'), rate, burst,
        rate action, flags, limits slot, {limits reason: action}, action base):
        the range tables' actions are relative to the base (so a service's
        tables can be kept from one plan to the next), the others absolute;
        ``actions``: (payload bytes, label).  Rate 0 = off; limits slot -1 = no
        xinetd limits; ``limits``: the LimitState those slots are in."""
        cdef int i, k
        cdef Py_ssize_t off = 0
        cdef const uint32_t[::1] v4s
        cdef const int32_t[::1] v4a
        cdef const uint64_t[::1] v6h
        cdef const uint64_t[::1] v6l
        cdef const int32_t[::1] v6a
        self._keep = []
        self._labels = []
        self._sources = sources
        self._v6_prefix = v6_prefix
        self._nsvc = len(services)
        self._nact = len(actions)
        self._svc = <SvcPlan *>calloc(max(self._nsvc, 1), sizeof(SvcPlan))
        self._act = <ActionC *>calloc(max(self._nact, 1), sizeof(ActionC))
        self._counts = <uint64_t *>calloc(max(self._nact, 1), sizeof(uint64_t))
        if not (self._svc and self._act and self._counts):
            raise MemoryError()
        blob = b"".join([a[0] for a in actions])
        self._keep.append(blob)
        self._blob = <const unsigned char *>(<bytes>blob)
        self._max_action = 0
        for i in range(self._nact):
            payload, label = actions[i]
            if len(payload) + 12 > 65536:
                raise ValueError("an action's DECISION frame passes 64 KiB (Python's to send)")
            self._act[i].off = off
            self._act[i].size = len(payload)
            off += len(payload)
            if len(payload) > self._max_action:
                self._max_action = len(payload)
            self._labels.append(tuple(label))
        for i in range(self._nsvc):
            (name, s4, a4, h6, l6, a6, rate, burst, rate_action, flags, limit_slot,
             limit_actions, act_base) = services[i]
            name = bytes(name)
            if not 1 <= len(name) <= 255:
                raise ValueError("service name must be 1..255 bytes")
            v4s = s4
            v4a = a4
            v6h = h6
            v6l = l6
            v6a = a6
            if v4s.shape[0] < 1 or v4s.shape[0] != v4a.shape[0] or v4s[0] != 0:
                raise ValueError("v4 ranges must start at 0 and match their actions")
            if (v6h.shape[0] < 1 or v6h.shape[0] != v6l.shape[0]
                    or v6h.shape[0] != v6a.shape[0] or v6h[0] != 0 or v6l[0] != 0):
                raise ValueError("v6 ranges must start at :: and match their actions")
            self._check_actions(v4a, act_base)
            self._check_actions(v6a, act_base)
            self._keep.extend([name, s4, a4, h6, l6, a6])
            self._svc[i].name = <const unsigned char *>(<bytes>name)
            self._svc[i].name_len = len(name)
            self._svc[i].v4_starts = &v4s[0]
            self._svc[i].v4_actions = &v4a[0]
            self._svc[i].n4 = v4s.shape[0]
            self._svc[i].v6_hi = &v6h[0]
            self._svc[i].v6_lo = &v6l[0]
            self._svc[i].v6_actions = &v6a[0]
            self._svc[i].n6 = v6h.shape[0]
            self._svc[i].rate_on = rate > 0
            self._svc[i].rate = rate
            self._svc[i].burst = burst
            self._svc[i].rate_action = rate_action
            self._svc[i].flags = flags
            self._svc[i].act_base = act_base
            self._svc[i].limit_slot = limit_slot
            for k in range(10):
                self._svc[i].limit_actions[k] = limit_actions.get(k, -1)
                if not -1 <= self._svc[i].limit_actions[k] < self._nact:
                    raise ValueError("limits action out of range")
            if limit_slot >= 0 and limits is None:
                raise ValueError("a limits slot needs a LimitState")
            if rate > 0 and not 0 <= rate_action < self._nact:
                raise ValueError("rate action out of range")
        self._out_cap = 1 << 18
        while self._out_cap < 64 * (self._max_action + 12):
            self._out_cap <<= 1
        self._out = <unsigned char *>malloc(self._out_cap)
        self._fr_off = <Py_ssize_t *>malloc(MAXF * sizeof(Py_ssize_t))
        self._fr_act = <int32_t *>malloc(MAXF * sizeof(int32_t))
        self._fr_svc = <int *>malloc(MAXF * sizeof(int))
        self._fr_lim = <int *>malloc(MAXF * sizeof(int))
        if not (self._out and self._fr_off and self._fr_act and self._fr_svc and self._fr_lim):
            raise MemoryError()
        self._limits = limits
        self._lim_src = bytearray(16 * MAXF)
        self._lim_slot = array("i", [0]) * MAXF
        self._lim_out = bytearray(MAXF)
        cdef unsigned char[::1] lsrc = self._lim_src
        cdef int[::1] lslot = self._lim_slot
        cdef unsigned char[::1] lout = self._lim_out
        self._lsrc_p = &lsrc[0]
        self._lslot_p = &lslot[0]
        self._lout_p = &lout[0]

    def _check_actions(self, const int32_t[::1] acts, int base):
        cdef Py_ssize_t k
        for k in range(acts.shape[0]):
            if acts[k] < -1 or (acts[k] >= 0 and not 0 <= base + acts[k] < self._nact):
                raise ValueError("action index out of range")

    def __dealloc__(self):
        free(self._svc)
        free(self._act)
        free(self._counts)
        free(self._out)
        free(self._fr_off)
        free(self._fr_act)
        free(self._fr_svc)
        free(self._fr_lim)

    @property
    def services(self):
        return [(<bytes>self._svc[i].name[:self._svc[i].name_len]).decode()
                for i in range(self._nsvc)]

    def counts(self):
        """Decisions made by this plan: {(service, verdict, reason): n}."""
        out = {}
        for i in range(self._nact):
            if self._counts[i]:
                k = self._labels[i]
                out[k] = out.get(k, 0) + self._counts[i]
        return out

    def latency(self):
        """(counts per bucket incl. +Inf, sum of seconds)."""
        return [self._lat[i] for i in range(NLAT + 1)], self._lat_sum

    def run(self, buf, Py_ssize_t pos, double now):
        """Answer the frames of ``buf[pos:]``: (next pos, replies, status).

        ``buf`` is any C-contiguous bytes-like object.  Its buffer is taken
        with PyBUF_SIMPLE (a typed memoryview's format checks cost more than
        the decision of one frame), and the GIL is let go only for reads of
        at least RUN_NOGIL_BYTES: for one frame the release and retake cost
        more than the scan."""
        cdef Py_buffer view
        cdef const unsigned char *data
        cdef Py_ssize_t n
        cdef Py_ssize_t w = 0
        cdef Py_ssize_t nf = 0
        cdef Py_ssize_t nl = 0
        cdef int status = 0
        cdef double t0, dt
        cdef int b
        cdef bint release
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            data = <const unsigned char *>view.buf
            n = view.len
            if pos < 0 or pos > n:
                raise ValueError("pos out of range")
            if n == pos:
                return pos, b"", 0
            release = n - pos >= RUN_NOGIL_BYTES
            t0 = _now_mono()
            if release:
                with nogil:
                    status = self._scan(data, n, &pos, now, &nf, &nl, self._lsrc_p,
                                        self._lslot_p)
            else:
                status = self._scan(data, n, &pos, now, &nf, &nl, self._lsrc_p, self._lslot_p)
            if nl:
                # xinetd's parent checks for the frames that reached them, in
                # frame order, in one call of the limits core
                self._limits.check_batch(memoryview(self._lim_src)[:16 * nl],
                                         memoryview(self._lim_slot)[:nl], now, 0.0,
                                         memoryview(self._lim_out)[:nl])
            if release:
                with nogil:
                    w = self._emit(data, nf, self._lout_p)
            else:
                w = self._emit(data, nf, self._lout_p)
            if nf:
                dt = (_now_mono() - t0) / nf
                b = 0
                while b < NLAT and dt > _BOUNDS[b]:
                    b += 1
                self._lat[b] += nf
                self._lat_sum += dt * nf
        finally:
            PyBuffer_Release(&view)
        if status == 1:
            self.residual += 1
        return pos, PyBytes_FromStringAndSize(<char *>self._out, w), status

    cdef int _scan(self, const unsigned char *buf, Py_ssize_t n, Py_ssize_t *ppos,
                   double now, Py_ssize_t *pnf, Py_ssize_t *pnl,
                   unsigned char *lsrc, int *lslot) noexcept nogil:
        """Pass A: decode and look up frames, spend rate tokens, queue the
        limits checks; stop at the first frame for Python (status 1), at an
        incomplete frame (0), or when the reply buffer would be full (2)."""
        cdef Py_ssize_t pos = ppos[0]
        cdef Py_ssize_t nf = 0
        cdef Py_ssize_t nl = 0
        cdef uint32_t length
        cdef const unsigned char *f
        cdef const unsigned char *p
        cdef Py_ssize_t plen, need, ca, sa
        cdef int cf, sf, slen, hlen, ulen, s, si, status
        cdef int32_t act
        cdef SvcPlan *sv
        cdef unsigned char key[16]
        cdef uint32_t a4
        cdef uint64_t ah, al
        cdef Py_ssize_t lo, hi, mid
        cdef Py_ssize_t room = self._out_cap // (self._max_action + 12)
        status = 0
        if room > MAXF:
            room = MAXF
        while True:
            if n - pos < 4:
                break
            f = buf + pos
            length = _le32(f)
            if length < 8 or length > 65532:
                status = 1
                break
            if n - pos < 4 + <Py_ssize_t>length:
                break
            # version 1, DECIDE, no flags (LEASE and unknown bits go to Python)
            if f[4] != 1 or f[5] != 0x01 or f[6] != 0 or f[7] != 0:
                status = 1
                break
            p = f + 12
            plen = length - 8
            if plen < 10:
                status = 1
                break
            cf = p[0]
            sf = p[1]
            slen = p[6]
            hlen = p[7]
            ulen = p[8]
            if cf == 4:
                ca = 4
            elif cf == 6:
                ca = 16
            else:
                status = 1
                break
            if sf == 0:
                sa = 0
            elif sf == 4:
                sa = 4
            elif sf == 6:
                sa = 16
            else:
                status = 1
                break
            need = 10 + ca + sa + slen + hlen + ulen
            if p[9] != 0 or slen == 0 or need != plen:
                status = 1
                break
            if not _ascii(p + 10 + ca + sa + slen, hlen + ulen):
                status = 1
                break
            sv = NULL
            si = -1
            for s in range(self._nsvc):
                if (self._svc[s].name_len == slen
                        and memcmp(self._svc[s].name, p + 10 + ca + sa, slen) == 0):
                    sv = &self._svc[s]
                    si = s
                    break
            if sv == NULL or (sv.flags & 1 and hlen) or (sv.flags & 2 and ulen):
                status = 1
                break
            # the range lookup: last start <= address
            if ca == 4:
                a4 = ((<uint32_t>p[10] << 24) | (<uint32_t>p[11] << 16)
                      | (<uint32_t>p[12] << 8) | p[13])
                lo = 0
                hi = sv.n4
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if sv.v4_starts[mid] <= a4:
                        lo = mid + 1
                    else:
                        hi = mid
                act = sv.v4_actions[lo - 1]
            else:
                if memcmp(p + 10, _MAPPED, 12) == 0:
                    status = 1
                    break
                ah = _be64(p + 10)
                al = _be64(p + 18)
                lo = 0
                hi = sv.n6
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if sv.v6_hi[mid] < ah or (sv.v6_hi[mid] == ah and sv.v6_lo[mid] <= al):
                        lo = mid + 1
                    else:
                        hi = mid
                act = sv.v6_actions[lo - 1]
            if act < 0:
                status = 1
                break
            act += sv.act_base
            if nf >= room:
                status = 2
                break
            # the engine's rate first, then xinetd's parent checks (pass B)
            self._fr_lim[nf] = -1
            if ca == 4:
                memcpy(key, _MAPPED, 12)
                memcpy(key + 12, p + 10, 4)
            else:
                memcpy(key, p + 10, 16)
            if sv.rate_on:
                if ca == 16:
                    _mask(key, self._v6_prefix)
                if not self._sources._take(key, now, sv.rate, sv.burst):
                    act = sv.rate_action
                elif sv.limit_slot >= 0:
                    if ca == 16:
                        memcpy(key, p + 10, 16)
                    self._fr_lim[nf] = <int>nl
            elif sv.limit_slot >= 0:
                self._fr_lim[nf] = <int>nl
            if self._fr_lim[nf] >= 0:
                memcpy(lsrc + 16 * nl, key, 16)
                lslot[nl] = sv.limit_slot
                nl += 1
            self._fr_off[nf] = pos
            self._fr_act[nf] = act
            self._fr_svc[nf] = si
            nf += 1
            pos += 4 + length
        ppos[0] = pos
        pnf[0] = nf
        pnl[0] = nl
        return status

    cdef Py_ssize_t _emit(self, const unsigned char *buf, Py_ssize_t nf,
                          const unsigned char *lout) noexcept nogil:
        """Pass B: the limits' answers replace the address answer; encode."""
        cdef Py_ssize_t i, w = 0
        cdef int32_t act
        cdef int j, r
        cdef uint32_t rlen
        cdef ActionC *ac
        cdef const unsigned char *f
        for i in range(nf):
            act = self._fr_act[i]
            j = self._fr_lim[i]
            if j >= 0:
                r = lout[j]
                if r != 0:
                    act = self._svc[self._fr_svc[i]].limit_actions[r if r < 10 else 0]
                    if act < 0:                  # a code we have no answer for
                        act = self._fr_act[i]
            ac = &self._act[act]
            f = buf + self._fr_off[i]
            # DECISION frame: length, version, type, flags, the request's id
            rlen = <uint32_t>(8 + ac.size)
            self._out[w] = rlen & 0xFF
            self._out[w + 1] = (rlen >> 8) & 0xFF
            self._out[w + 2] = (rlen >> 16) & 0xFF
            self._out[w + 3] = (rlen >> 24) & 0xFF
            self._out[w + 4] = 1
            self._out[w + 5] = 0x81
            self._out[w + 6] = 0
            self._out[w + 7] = 0
            memcpy(self._out + w + 8, f + 8, 4)
            memcpy(self._out + w + 12, self._blob + ac.off, ac.size)
            w += 12 + ac.size
            self._counts[act] += 1
        return w

    def grow(self, Py_ssize_t cap):
        """Make the reply buffer at least ``cap`` bytes."""
        cdef unsigned char *p
        if cap > self._out_cap:
            p = <unsigned char *>realloc(self._out, cap)
            if p == NULL:
                raise MemoryError()
            self._out = p
            self._out_cap = cap


# -- building range tables (acl/fastpath.py calls this for IPv4) -------------
cdef struct PEnt:
    uint64_t start
    uint64_t end
    int32_t length
    int32_t val


cdef int _cmp_pent(const void *a, const void *b) noexcept nogil:
    cdef const PEnt *x = <const PEnt *>a
    cdef const PEnt *y = <const PEnt *>b
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    if x.length != y.length:
        return -1 if x.length < y.length else 1
    if x.val != y.val:
        return -1 if x.val < y.val else 1
    return 0


cdef inline uint32_t _digit(const PEnt *e, int part) noexcept nogil:
    if part == 0:
        return <uint32_t>e.length
    if part == 1:
        return <uint32_t>(e.start & 0xFFFF)
    return <uint32_t>((e.start >> 16) & 0xFFFF)


cdef bint _radix_sort_pents(PEnt *a, Py_ssize_t n) noexcept nogil:
    """Sort ``a`` by (start, length) in three stable counting passes
    (length, then the low and the high 16 bits of start); False when out of
    memory.  The order among equal (start, length) does not matter to
    ranges4: duplicates take the lowest value whatever their order.  A
    million shuffled prefixes sort several times faster than with qsort."""
    cdef PEnt *tmp = <PEnt *>malloc(n * sizeof(PEnt))
    cdef Py_ssize_t *count = <Py_ssize_t *>malloc(65536 * sizeof(Py_ssize_t))
    cdef PEnt *src = a
    cdef PEnt *dst = tmp
    cdef PEnt *swap
    cdef Py_ssize_t i, total, c
    cdef int part
    cdef uint32_t d
    if tmp == NULL or count == NULL:
        free(tmp)
        free(count)
        return False
    for part in range(3):
        memset(count, 0, 65536 * sizeof(Py_ssize_t))
        for i in range(n):
            count[_digit(&src[i], part)] += 1
        total = 0
        for i in range(65536):
            c = count[i]
            count[i] = total
            total += c
        for i in range(n):
            d = _digit(&src[i], part)
            dst[count[d]] = src[i]
            count[d] += 1
        swap = src
        src = dst
        dst = swap
    if src != a:
        memcpy(a, src, n * sizeof(PEnt))
    free(count)
    free(tmp)
    return True


cdef inline void _push_range(uint64_t *os, int32_t *ov, Py_ssize_t *pm, uint64_t pos,
                             int32_t val) noexcept nogil:
    cdef Py_ssize_t m = pm[0]
    while m > 0 and os[m - 1] == pos:
        m -= 1
    if m == 0 or ov[m - 1] != val:
        os[m] = pos
        ov[m] = val
        m += 1
    pm[0] = m


def ranges4(const uint32_t[::1] nets, const unsigned char[::1] lens, const int32_t[::1] vals,
            bint first_match):
    """IPv4 prefixes -> disjoint ranges, as ``acl.fastpath.ranges`` computes
    them: (starts array('I'), values array('i')), value -1 where nothing
    covers; ``first_match``: the lowest covering value, else the value of the
    longest covering prefix (the lowest on a duplicate)."""
    from array import array

    cdef Py_ssize_t n = nets.shape[0]
    cdef Py_ssize_t i, m = 0, sp = 0
    cdef PEnt *ents
    cdef uint64_t *os
    cdef int32_t *ov
    cdef PEnt stack[34]
    cdef uint64_t top = 1ULL << 32
    cdef int32_t val
    cdef PEnt e
    cdef uint32_t[::1] out_s
    cdef int32_t[::1] out_v
    if lens.shape[0] != n or vals.shape[0] != n:
        raise ValueError("nets, lens and vals differ in length")
    for i in range(n):
        if lens[i] > 32:
            raise ValueError("IPv4 prefix length above 32")
    ents = <PEnt *>malloc((n + 1) * sizeof(PEnt))
    os = <uint64_t *>malloc((2 * n + 2) * sizeof(uint64_t))
    ov = <int32_t *>malloc((2 * n + 2) * sizeof(int32_t))
    if ents == NULL or os == NULL or ov == NULL:
        free(ents)
        free(os)
        free(ov)
        raise MemoryError()
    try:
        with nogil:
            for i in range(n):
                ents[i].start = nets[i]
                ents[i].end = <uint64_t>nets[i] | ((1ULL << (32 - lens[i])) - 1)
                ents[i].length = lens[i]
                ents[i].val = vals[i]
            for i in range(1, n):
                if _cmp_pent(&ents[i - 1], &ents[i]) > 0:
                    # files are often written in address order: sort only when not
                    if n < 4096 or not _radix_sort_pents(ents, n):
                        qsort(ents, n, sizeof(PEnt), _cmp_pent)
                    break
            os[0] = 0
            ov[0] = -1
            m = 1
            for i in range(n):
                e = ents[i]
                while sp > 0 and stack[sp - 1].end < e.start:
                    sp -= 1
                    if stack[sp].end + 1 < top:
                        _push_range(os, ov, &m, stack[sp].end + 1,
                                    stack[sp - 1].val if sp else -1)
                val = e.val
                if sp > 0:
                    if first_match or (stack[sp - 1].start == e.start
                                       and stack[sp - 1].end == e.end):
                        if stack[sp - 1].val < val:
                            val = stack[sp - 1].val
                if sp > 0 and stack[sp - 1].start == e.start and stack[sp - 1].end == e.end:
                    # the same prefix again (another rule names it): it takes
                    # the top's place, so the stack never holds more than one
                    # entry per length (34) however many rules repeat it
                    stack[sp - 1].val = val
                else:
                    e.val = val
                    stack[sp] = e
                    sp += 1
                _push_range(os, ov, &m, e.start, val)
            while sp > 0:
                sp -= 1
                if stack[sp].end + 1 < top:
                    _push_range(os, ov, &m, stack[sp].end + 1,
                                stack[sp - 1].val if sp else -1)
        starts = array("I", [0]) * m
        values = array("i", [0]) * m
        out_s = starts
        out_v = values
        with nogil:
            for i in range(m):
                out_s[i] = <uint32_t>os[i]
                out_v[i] = ov[i]
        return starts, values
    finally:
        free(ents)
        free(os)
        free(ov)


def remap_values(const int32_t[::1] values, const int32_t[::1] table):
    """``array('i')`` of ``table[v + 1]`` for each v of ``values`` (v >= -1):
    a range table's values turned into actions in one pass."""
    from array import array

    cdef Py_ssize_t i, n = values.shape[0], size = table.shape[0]
    cdef int32_t v
    for i in range(n):
        v = values[i]
        if v < -1 or v + 1 >= size:
            raise ValueError(f"value {v} has no entry in the table")
    out = array("i", [0]) * n
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(n):
            o[i] = table[values[i] + 1]
    return out
