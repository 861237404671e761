# Declarations of the engine's batch path; behaviour and rules in _engine.pyx.
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef struct SvcPlan:
    const unsigned char *name     # service name bytes (owned by a Python bytes)
    int name_len
    const uint32_t *v4_starts     # sorted range starts covering 0 .. 2**32-1
    const int32_t *v4_actions     # action per range; -1 = residual (Python decides)
    Py_ssize_t n4
    const uint64_t *v6_hi         # sorted range starts, high 64 bits
    const uint64_t *v6_lo         # ... low 64 bits
    const int32_t *v6_actions
    Py_ssize_t n6
    int rate_on                   # apply the per-source token bucket first
    int32_t rate_action           # action of a refusal by rate
    double rate                   # tokens per second
    double burst                  # bucket size
    int flags                     # 1: a host name needs Python; 2: a remote user does
    int32_t act_base              # the range tables hold actions relative to this
    int limit_slot                # slot in the xinetd LimitState; -1: no xinetd limits
    int32_t limit_actions[10]     # action per limits reason code (0 unused)


cdef struct ActionC:
    Py_ssize_t off                # DECISION payload in the blob
    Py_ssize_t size


cdef struct Slot:                 # 32 bytes: two per cache line
    uint64_t hi                   # source key, first 8 bytes (big-endian)
    uint64_t lo                   # ... last 8 bytes
    double tokens                 # bucket contents; < 0: the slot is empty
    double last                   # when the bucket was last refilled


cdef class SourceTable:
    cdef Slot *_slots             # capacity slots
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t tracked
    cdef readonly unsigned long long evictions

    cdef bint _take(self, const unsigned char *key, double now, double rate,
                    double burst) noexcept nogil


cdef class BatchPlan:
    cdef SvcPlan *_svc            # one per service the plan can decide
    cdef int _nsvc
    cdef ActionC *_act            # one per distinct (service, decision)
    cdef int _nact
    cdef const unsigned char *_blob   # every action's encoded payload
    cdef Py_ssize_t _max_action   # largest payload
    cdef uint64_t *_counts        # decisions per action
    cdef list _keep               # the Python buffers the pointers point into
    cdef list _labels             # per action: (service, verdict, reason)
    cdef SourceTable _sources
    cdef int _v6_prefix
    cdef unsigned char *_out      # reply buffer, reused between runs
    cdef Py_ssize_t _out_cap
    cdef uint64_t _lat[15]        # latency histogram (engine.LATENCY_BUCKETS + Inf)
    cdef double _lat_sum
    cdef readonly uint64_t residual   # frames handed back to Python
    cdef object _limits           # the xinetd layer's LimitState (check_batch), or None
    cdef Py_ssize_t *_fr_off      # pass A -> pass B: frame offsets in the buffer
    cdef int32_t *_fr_act         # ... their actions before the limits
    cdef int *_fr_svc             # ... their service
    cdef int *_fr_lim             # ... index of their limits check, -1: none
    cdef object _lim_src          # bytearray: 16-byte sources of the limits checks
    cdef object _lim_slot         # array('i'): their LimitState slots
    cdef object _lim_out          # bytearray: their reason codes
    cdef unsigned char *_lsrc_p   # the three above as C pointers, taken once: they are
    cdef int *_lslot_p            # never resized, and a typed view per run() cost a
    cdef unsigned char *_lout_p   # round trip ~0.3 us (tests: bench_serve sequential)

    cdef int _scan(self, const unsigned char *buf, Py_ssize_t n, Py_ssize_t *ppos,
                   double now, Py_ssize_t *pnf, Py_ssize_t *pnl,
                   unsigned char *lsrc, int *lslot) noexcept nogil
    cdef Py_ssize_t _emit(self, const unsigned char *buf, Py_ssize_t nf,
                          const unsigned char *lout) noexcept nogil
