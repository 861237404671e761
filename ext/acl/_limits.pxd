# Declarations of the limits core; behaviour is in _limits.pyx, rules at its top.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef struct Entry:
    uint64_t hi           # source (or bucket network), first 8 bytes
    uint64_t lo           # last 8 bytes
    int64_t last          # bucket: theoretical arrival time (GCRA, ns)
    uint32_t value        # lease entry: live leases
    uint32_t tag          # 0 = empty; USED | kind | slot


cdef struct Service:
    uint32_t cps_max      # cps first value; 0 = off
    uint32_t cps_wait     # cps second value (seconds the service stays off)
    uint64_t count        # cps connections in the current window
    int64_t window        # cps window start, whole seconds
    double off_until      # refused without counting until then
    int instances         # -1 = UNLIMITED
    int per_source        # -1 = UNLIMITED
    double max_load       # 0 = off
    int has_times         # access_times given
    int64_t t_ns          # bucket: ns between tokens (1e9 / rate); 0 = off
    int64_t tau_ns        # bucket: (burst - 1) * t_ns
    int64_t active        # live leases
    uint64_t cps_trips    # deactivations
    uint64_t refusals[10]  # checks by reason code (index 0 = granted)
    uint64_t times[23]    # access_times bitmap, one bit per minute of the day


cdef class LimitState:
    cdef Entry *_table           # groups * WAYS entries, 64-byte aligned
    cdef uint64_t _gmask         # groups - 1
    cdef uint64_t _k0, _k1       # the hash key (per process unless given)
    cdef Service *_chunks[128]   # service records, 256 a chunk, made on first use
    cdef Entry *_ovf             # overflow area: linear probing, 2 x capacity slots
    cdef uint64_t _omask         # its size - 1
    cdef readonly int overflow_capacity  # sources it may hold
    cdef readonly int64_t overflow_entries
    cdef readonly uint64_t overflow_full  # refusals/untracked leases: even it was full
    cdef list _free              # freed slots (a heap: lowest reused first)
    cdef int _top                # slots ever handed out by slot()
    cdef readonly int capacity   # entries in the table
    cdef readonly int v6_prefix  # bucket aggregation of IPv6 sources
    cdef readonly int max_services
    cdef uint64_t _pmask_hi      # v6_prefix as masks over hi / lo
    cdef uint64_t _pmask_lo
    cdef readonly uint64_t evictions
    cdef readonly int64_t tracked_sources
    cdef readonly uint64_t lease_overflows
    cdef dict _names             # service name -> slot
    cdef public dict extra       # layer state that must survive reloads (sensor list)
    cdef dict _leases            # lease id -> (slot, hi, lo, tracked)
    cdef uint64_t _next_lease

    cdef int _slot(self, object arg) except -1
    cdef int _check_slot(self, int slot) except -1
    cdef void _reset(self, int s) noexcept
    cdef int _ofind(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil
    cdef int _oinsert(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil
    cdef void _odelete(self, int i) noexcept nogil
    cdef bint _pinned(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil
    cdef Py_ssize_t _batch(self, const unsigned char *src, Py_ssize_t src_len,
                           const unsigned char *sl, Py_ssize_t sl_len, unsigned char *res,
                           Py_ssize_t res_len, double now, double load,
                           int minute) except -1
    cdef int _find(self, uint64_t hi, uint64_t lo, uint32_t tag) noexcept nogil
    cdef int _insert(self, uint64_t hi, uint64_t lo, uint32_t tag,
                     int64_t now_ns) noexcept nogil
    cdef int _check(self, int s, uint64_t hi, uint64_t lo, double now,
                    int64_t now_ns, double load, int minute) noexcept nogil
