# cython: language_level=3
"""Compiled prefix core: IPv4/IPv6 prefix tables answering two disciplines.

Its API is ``acl/_core_py.py``'s, name for name and error for error; that twin's
module docstring is the contract and the oracle.  Rules of this file:

* A table holds prefixes of ONE family.  Entries are (network, length, value),
  value a rule index 0 .. MAX_VALUE.  Host bits set past ``length`` are a
  ValueError (the core never masks).  A prefix given twice keeps its lowest
  value.
* first match = the lowest value among all prefixes covering an address (TCP
  Wrappers' file order); most specific = the value of the longest covering
  prefix (xinetd, tcprules).  -1 when nothing covers.
* IPv4-mapped IPv6 addresses: the table is family-strict.  ``::ffff:a.b.c.d``
  is an IPv6 address, it is never looked up in an IPv4 table and matches only
  IPv6 prefixes that cover it (``::ffff:0:0/96``, ``::/0``...).  Mapping a
  client to IPv4 is the rule language's decision (``unmap_v4``).
* Addresses: str, int, packed bytes (4/16, network order) and ipaddress
  objects.  The common forms are parsed here without a Python call (a
  branch-free dotted-quad reader in ``textaddr.h``, a hex-group IPv6 reader,
  inet_pton for the other IPv6 spellings); anything else, and every invalid
  input, goes to the twin's ``parse_address`` so both cores accept and reject
  exactly the same things with the same messages.  The single lookups are
  one-argument builtin methods (METH_O, ``binding=False``: CPython calls them
  by its own fast path, with no keyword parsing and no function object of
  Cython's in between); the twin's are positional-only.  Their answer int is
  the table's kept one, rewritten in place, whenever no caller still holds
  it (``answer.h``): allocating and freeing an int was ~110 of a call's
  ~450 instructions.

Data structure (one per table, built once, immutable):

* The sorted, de-duplicated entries (networks, lengths, values as parallel C
  arrays) answer exact / covering / covered_by / entries by binary search.
* A leaf-pushed multibit trie answers lookups.  Every leaf carries a Pair
  (first, specific) valid for every address below it, so one walk serves
  both disciplines.  Nodes are compressed as in Poptrie (Asai & Ohara,
  SIGCOMM 2015): a 64-bit ``vector`` marks slots that have a child, a
  64-bit ``leafvec`` marks where a run of equal leaves starts, children and
  leaves of one node are stored contiguously, and popcount turns a slot
  number into an array index.  A node is one 64-byte cache line that also
  holds its first three leaves, so a walk ending at a node with few leaves
  (most, in routing tables) reads one line less.
* Dense IPv6 tables (tor-geoipdb: many short ranges down to /64 and
  beyond) are walks of many serial cache misses.  Their tries are ``wide``:
  ``WideNode``s of two adjacent lines, fetched together, each resolving one
  byte of the address (four 64-bit words per bit vector, with the counts
  before each word, as the top level's words carry) and holding six
  leaves.  On the geoip v6 bench set a lookup reads 3.34 nodes and 0.55
  lines of leaves past the top level, where 6-bit Nodes read 4.19 and 0.46.
* Where the two disciplines agree at every leaf -- no prefix lies inside
  another of higher value: disjoint ranges (tor-geoipdb, blocklists), or
  values that fall as prefixes get longer -- a leaf is one int32 instead of
  a Pair (``Trie.leaf_shift``): the leaves array halves, and each node keeps
  twice as many leaves in its own lines (a Node 7 after its skip's answer,
  a WideNode 12), so fewer walks read the leaves array at all (geoip v6:
  0.37 lines a lookup instead of 0.55; geoip v4: 0.35 instead of 0.54).
  The build makes Pairs; ``leaves_agree`` then decides, and
  ``leaves_to_values`` rewrites the leaves in one pass.  Walks take the
  storage as two constants (``leaf_shift``, ``near``): single walks branch
  once per call on it, batch walks have a compiled variant for each.
* The top level is one node of 2**dp slots (dp = 18 for tables of 4096+
  prefixes, 22 if they are path-compressed, 16 if wide, 8 for smaller ones) compressed
  the same way, its bit vectors cut into ``TopWord``s that carry the counts
  before them: at 18 bits, 96 KiB that stay cached, where Poptrie's direct
  array of 2**18 indexes is 1 MiB that a random lookup mostly misses (at
  22, 1.5 MiB, of which a sparse table's lookups touch the words of the few
  slots in use).  A slot's top
  node (the first nodes, in slot order) is then one cache miss away, not
  two.  Below, Nodes consume 6 bits (the last one fewer), WideNodes 8.
* Path compression, for tables where it pays (``bare_paths_pay``: sparse
  ones, such as IPv6 routing tables, where most prefixes sit alone at the end
  of a long path): a node first skips up to 32 bits that every prefix below
  it shares, compared in one step (``skip``, ``skipval``); an address that
  differs there gets the Pair covering the node.  A lone /48 under a top slot is
  then one node, not five.  Dense tables are built without, and their batch
  walks skip the check.
* Lones (``pack_lone_tops``; not in wide tries): a top node that holds one
  prefix alone -- most of a routing table's: an IPv6 /48 under its 22-bit
  slot, an IPv4 /24 under its 18-bit one -- answers with 16 bytes: the
  prefix's bits below the top level (up to 31, ended by a marker bit), its
  value, and the Pair covering the slot.  Four share the cache line such a
  node took alone, so a random lookup's line is more often one a recent
  lookup brought in:

  ========================  ==============  ==============
  bench set                 routing v6      routing v4
  ========================  ==============  ==============
  top nodes become Lones    29,060/38,874   49,230/68,549
  nodes' MiB                3.25 -> 1.99    4.65 -> 2.48
  node lines the bench's    17,402 ->       15,337 ->
  20,000 lookups touch      14,696          13,629
  ========================  ==============  ==============

  A Lone's slot has its bit set in both of its TopWord's vectors (a
  combination no other slot uses), and a word's Lones end where its top
  nodes start.  Tries with few (geoip v4: 30 of 21,380) are built without,
  since the batch walk's Lone work costs every lane (LONES_PAY_FROM).
* Every lookup is the same inline steps on C structs and C integers -- the
  top word (``top_node_of`` or ``top_leaf_at``), then per
  node ``skip_differs``, ``slot_of`` and ``has_child``,
  ending with ``child_of`` or ``leaf_of`` (in a wide trie ``wide_has_child``,
  ``wide_child_of``, ``wide_leaf_of``, the slot being the address's next
  byte) -- ``noexcept nogil``, never
  allocating; the batch walk takes them without a branch (whether a random
  address goes on to a child is a coin toss a branch predictor loses).
  ``trie_find`` chains them for one address, and the per-address methods
  are thin wrappers around it (parse, call, return an int).  The batch
  methods run the same steps for LANES addresses at a time over a packed
  buffer, in one nogil loop with no Python object per address.
* Build (``build_trie``): sort the entries by (network, length) -- then every
  entry that overlaps an earlier one lies inside it -- and paint each node's
  slots in that order: ``specific`` is overwritten, ``first`` keeps the
  minimum.  Slots holding longer prefixes recurse with their painted Pair as
  the inherited default; a compressed node starts below the bits its
  entries share, up to its shortest entry.  Linear in entries plus nodes
  after the sort.
  Arrays of 1 MiB or more then move to fresh 2 MiB-aligned mappings advised
  for transparent huge pages (fewer TLB misses on random lookups).
* Built once.  ``_setup`` claims the table (``family``), the sort and build
  run without the GIL, and ``_finish`` sets ``bits`` last: ``bits`` is the
  built mark, the one field a lookup already tests to pick its walk, so a
  table never built, still being built by another thread, or whose build
  failed raises ``ValueError`` at no cost to the lookups of a built one.  A
  second ``__init__`` is a ``RuntimeError`` (already built / being built);
  a failed build (``MemoryError``: "out of memory", or "too large" past
  MAX_INDEX nodes or leaves) frees what it made (``_clear``) and leaves the
  table as never built.
"""

cimport cython
from cpython.array cimport array, clone
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from posix.stdlib cimport posix_memalign
from libc.string cimport memchr, memcpy, memset

import ipaddress

from acl import _core_py as _py

from acl._core_py import MAX_VALUE, unmap_v4

cdef str OUT_OF_MEMORY = "out of memory building the prefix table"
cdef object check_int32 = _py._check_int32

__all__ = ["PrefixTable", "parse_address", "unmap_v4", "MAX_VALUE"]

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<sys/socket.h>":
    int AF_INET
    int AF_INET6

cdef extern from "<endian.h>" nogil:
    uint32_t be32toh(uint32_t)
    uint64_t be64toh(uint64_t)

cdef extern from "Python.h":
    # A compact ASCII str keeps its characters, then a NUL, right after its
    # header: read them in place (no call, no error path).
    bint PyUnicode_IS_COMPACT_ASCII(object)
    const char *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

cdef extern from *:
    # acl_select(first, a, b): ``a`` if first (1) else ``b``, without a
    # branch (whether a walk goes on is a coin toss a branch predictor
    # loses).  GCC turns a plain ternary into a branch here, which made
    # batches ~30% slower, and the mask form ((a & m) | (b & ~m)) costs
    # three instructions more than a cmov on every step: with the cmov,
    # batches gained 5-15% on the bench sets.
    """
    static inline const void *acl_select(uint32_t first, const void *a, const void *b)
    {
    #if defined(__x86_64__) && defined(__GNUC__)
        const void *r = b;
        __asm__("test %1, %1\\n\\tcmovne %2, %0" : "+r"(r) : "r"(first), "r"(a) : "cc");
        return r;
    #else
        size_t mask = (size_t)0 - (size_t)(first != 0);
        return (const void *)(((size_t)a & mask) | ((size_t)b & ~mask));
    #endif
    }
    """
    const void *acl_select(uint32_t first, const void *a, const void *b) nogil
    int popcount64 "__builtin_popcountll"(unsigned long long) nogil
    int ctz64 "__builtin_ctzll"(unsigned long long) nogil
    int clz64 "__builtin_clzll"(unsigned long long) nogil
    int clz32 "__builtin_clz"(unsigned int) nogil
    int ctz32 "__builtin_ctz"(unsigned int) nogil

ctypedef fused addr_t:
    uint32_t
    acl_u128

cdef object IPv4Address = ipaddress.IPv4Address
cdef object IPv6Address = ipaddress.IPv6Address
cdef array INT_ARRAY = array("i")
cdef uint64_t LOW64 = 0xFFFFFFFFFFFFFFFF

# Tables with at least this many prefixes get a top level of 2**18 slots
# (96 KiB of words); smaller ones 2**8 (96 bytes), so small rule sets stay small.
cdef Py_ssize_t BIG_TABLE = 4096
# The top nodes of a big table sit below its first 18 bits, as Poptrie's
# top array does: an IPv4 /24 ends in its top node, an IPv6 /48 four nodes
# below it (one, alone in a path-compressed table).  Measured against 16 on
# the bench sets, before and after path compression.
cdef int BIG_DP = 18
# Big path-compressed tables (sparse ones) take 22 (1.5 MiB of top words,
# of which lookups touch the words of the slots in use).  On the IPv6
# routing bench set at 20 bits, 47% of lookups went through a top node
# holding two or three unrelated /48s, two nodes deep; at 22, 22% (mean
# cache lines past the top level 1.41 -> 1.10).  Against 20: batches +11-15%,
# single calls +15-30%; 21 was half way, 24 no better for single calls and
# worse for batches (A/Bs in one process).  It costs that set 1.2 MB (5.6
# -> 6.8 MB) and a 1M-prefix IPv6 build 0.04 s.  20 had beaten 18 by 20%
# on batches.  On the dense sets 20 was no better than 18: geoip v4 single
# calls 8-10% slower, routing v4 and geoip v6 within noise (and 21 or 24
# for dense IPv6 tables, tried later, within noise on geoip v6).
cdef int SPARSE_DP = 22
# Big wide tries (dense IPv6 tables) take 16.  A wide trie's top bits must
# be a multiple of 8 (16 here, 8 for small tables): every node then resolves
# one byte of the address, and a /32 ends in the second node, a /48 in the
# fourth, a /64 in the sixth.  Against 18 bits (wide nodes at 18, 26, ...:
# as many steps to a /48), on the geoip v6 bench set: single calls within
# noise in two one-process A/Bs (text 9.8 / 9.6x and 9.4 / 9.6x pytricia,
# packed 13.5 / 12.3x and 12.2 / 12.0x), top words 24 KiB instead of 96,
# the table 23.0 MB instead of 27.3.
cdef int WIDE_DP = 16

cdef enum:
    # The most bits one node skips (Node.skipval is 32 bits wide); a longer
    # bare path takes a node with one child every MAX_SKIP + 6 bits.
    MAX_SKIP = 32
    # Leaves a node keeps in its own cache line (Node.near[1..3]).
    NEAR_LEAVES = 3
    # Path compression pays when one entry in BARE_SHARE ends a bare path
    # (see bare_paths_pay).
    BARE_SHARE = 8
    # Node and leaf indexes are uint32_t; arrays stop growing at this many.
    MAX_INDEX = 0x7FFFFFFF
    # What a failed build step returns (build_trie and the steps it calls):
    # malloc said no, or the trie would pass MAX_INDEX nodes or leaves.
    NO_MEMORY = -1
    TOO_LARGE = -2
    # Leaves a wide node keeps in its own lines (WideNode.near).
    WIDE_NEAR_LEAVES = 6
    # The same, in a trie of int32_t leaves (Trie.leaf_shift): a Node's
    # near area holds the skip's answer and 7 leaves, a WideNode's 12.
    NEAR_VALUES = 7
    WIDE_NEAR_VALUES = 12


cdef inline size_t node_size(const Trie *t) noexcept nogil:
    """Bytes of one of ``t``'s nodes: a Node, or a WideNode in a wide trie."""
    return sizeof(WideNode) if t.wide else sizeof(Node)


cdef inline int node_stride(const Trie *t) noexcept nogil:
    """Address bits a node below the top level resolves, but the last of a
    path (after its skip, in a compressed trie)."""
    return 8 if t.wide else 6


cdef inline WideNode *wide_nodes(const Trie *t) noexcept nogil:
    """``t``'s nodes, in a wide trie."""
    return <WideNode *>t.nodes


cdef inline size_t leaf_bytes(const Trie *t) noexcept nogil:
    """Bytes of one of ``t``'s leaves: a Pair, or one int32_t."""
    return (<size_t>1) << t.leaf_shift


cdef inline uint32_t near_count(int leaf_shift, bint wide) noexcept nogil:
    """Leaves a node keeps in its own lines, for a way of storing leaves
    (Trie.leaf_shift) and a kind of node.  The walks call it with constant
    arguments, so it folds away."""
    if leaf_shift == 3:
        return WIDE_NEAR_LEAVES if wide else NEAR_LEAVES
    return WIDE_NEAR_VALUES if wide else NEAR_VALUES


cdef inline uint32_t near_leaves(const Trie *t) noexcept nogil:
    """Leaves each of ``t``'s nodes keeps in its own lines."""
    return near_count(t.leaf_shift, t.wide)


# -- addresses ----------------------------------------------------------

cdef inline acl_u128 load128(const unsigned char *p) noexcept nogil:
    cdef uint64_t hi, lo
    memcpy(&hi, p, 8)
    memcpy(&lo, p + 8, 8)
    return ((<acl_u128>be64toh(hi)) << 64) | be64toh(lo)


cdef inline acl_u128 int_to_u128(object x):
    return ((<acl_u128>(<uint64_t>(x >> 64))) << 64) | <uint64_t>(x & LOW64)


cdef inline object u128_to_int(acl_u128 x):
    return ((<object>(<uint64_t>(x >> 64))) << 64) | <object>(<uint64_t>x)


cdef extern from "answer.h":
    # A new reference to the int ``v``, rewriting the table's kept one when
    # no one else holds it (see the header's rules).
    object answer_int "acl_answer_int"(PyObject **cache, int32_t v)
    bint ACL_ANSWER_REUSES

# Whether single lookups on this build hand their answer ints out again
# (CPython 3.11-3.14 with a GIL); the tests check it where it should be.
ANSWER_REUSES = ACL_ANSWER_REUSES


cdef extern from "textaddr.h" nogil:
    # The strict dotted quad, host order, and IPv6 of hex groups with at most
    # one "::" (0: someone else judges); see the header for their rules.
    bint dotted_quad "acl_dotted_quad"(const char *s, size_t n, uint32_t *out)
    bint hex_groups "acl_hex_groups"(const char *s, size_t n, acl_u128 *out)
    void acl_textaddr_init()

acl_textaddr_init()     # the readers' tables, once, before any lookup


cdef inline int parse4(object addr, uint32_t *out) except -1:
    """``addr`` as a host-order IPv4 address.  Inline, for the single
    lookups: text and packed bytes are read here, everything else (and every
    text this cannot read) in ``parse4_other``."""
    cdef uint32_t raw
    if type(addr) is str:
        if PyUnicode_IS_COMPACT_ASCII(addr) and dotted_quad(
                PyUnicode_DATA(addr), <size_t>PyUnicode_GET_LENGTH(addr), out):
            return 0
    elif type(addr) is bytes:
        if PyBytes_GET_SIZE(addr) == 4:
            memcpy(&raw, PyBytes_AS_STRING(addr), 4)
            out[0] = be32toh(raw)
            return 0
    return parse4_other(addr, out)


cdef int parse4_other(object addr, uint32_t *out) except -1:
    """parse4's other cases: ints, IPv4Address, and the twin for the rest."""
    cdef object t = type(addr)
    if t is int:
        if 0 <= addr <= 0xFFFFFFFF:
            out[0] = <uint32_t>addr
            return 0
    elif t is IPv4Address:
        out[0] = <uint32_t>addr._ip
        return 0
    out[0] = <uint32_t>_py.parse_address(addr, 4)
    return 0


cdef inline int parse6(object addr, acl_u128 *out) except -1:
    """``addr`` as an IPv6 address.  Inline, for the single lookups, as
    parse4 is: text of hex groups and packed bytes are read here,
    everything else in ``parse6_other``."""
    if type(addr) is str:
        if PyUnicode_IS_COMPACT_ASCII(addr) and hex_groups(
                PyUnicode_DATA(addr), <size_t>PyUnicode_GET_LENGTH(addr), out):
            return 0
    elif type(addr) is bytes:
        if PyBytes_GET_SIZE(addr) == 16:
            out[0] = load128(<const unsigned char *>PyBytes_AS_STRING(addr))
            return 0
    return parse6_other(addr, out)


cdef int parse6_other(object addr, acl_u128 *out) except -1:
    """parse6's other cases: texts with an embedded IPv4 address (inet_pton),
    ints, IPv6Address, and the twin for the rest (it decides all odd
    cases)."""
    cdef Py_ssize_t size
    cdef const char *s
    cdef char buf[48]
    cdef unsigned char raw[16]
    cdef object t = type(addr)
    if t is str:
        if PyUnicode_IS_COMPACT_ASCII(addr):
            s = PyUnicode_DATA(addr)
            size = PyUnicode_GET_LENGTH(addr)
            if 2 <= size <= 45 and memchr(s, 0, size) == NULL:
                memcpy(buf, s, size)
                buf[size] = 0
                if inet_pton(AF_INET6, buf, raw) == 1:
                    out[0] = load128(raw)
                    return 0
    elif t is int:
        if 0 <= addr and not (addr >> 128):
            out[0] = int_to_u128(addr)
            return 0
    elif t is IPv6Address:
        out[0] = int_to_u128(addr._ip)
        return 0
    out[0] = int_to_u128(_py.parse_address(addr, 6))
    return 0


def parse_address(addr, family):
    """Return ``addr`` as an int of the given family, or raise ValueError."""
    cdef uint32_t a4
    cdef acl_u128 a6
    if type(family) is int and family == 4:
        parse4(addr, &a4)
        return a4
    if type(family) is int and family == 6:
        parse6(addr, &a6)
        return u128_to_int(a6)
    return _py.parse_address(addr, family)


cdef inline addr_t prefix_mask(addr_t zero, int length) noexcept nogil:
    """The netmask of ``length`` bits in the type of ``zero``."""
    cdef addr_t ones = ~zero
    if length == 0:
        return zero
    if addr_t is uint32_t:
        return ones << (32 - length)
    else:
        return ones << (128 - length)


# -- lookup: the hot path ----------------------------------------------
#
# A walk reads its address through a 128-bit window (hi, lo) that shifts left
# as bits are used, so the next unread bit is always hi's top bit.  A node
# uses at most MAX_SKIP + 6 bits, so its skipped bits and its slot number are
# shifts of hi alone, and IPv4 walks are the same code (the address is hi's
# top 32 bits, lo stays 0).  No step needs to know its depth: each node
# carries its own skip and stride.

cdef inline void window_shift(uint64_t *hi, uint64_t *lo, int n) noexcept nogil:
    """Drop the window's first ``n`` (1..63) bits."""
    hi[0] = (hi[0] << n) | (lo[0] >> (64 - n))
    lo[0] <<= n


cdef inline uint32_t skip_differs(const Node *nd, uint64_t hi) noexcept nogil:
    """1 if the window's first ``nd.skip`` bits are not the node's ``skipval``
    (0 when it skips nothing: two shifts, since a shift by 64 is undefined)."""
    return ((hi >> 1) >> (63 - nd.skip)) != nd.skipval


cdef inline uint32_t slot_of(const Node *nd, uint64_t hi) noexcept nogil:
    """The slot of node ``nd`` that the window ``hi`` at the node falls in:
    the ``stride`` bits after the skipped ones."""
    return <uint32_t>((hi << nd.skip) >> (64 - nd.stride))


cdef inline uint32_t has_child(const Node *nd, uint32_t v) noexcept nogil:
    """1 if slot ``v`` of ``nd`` descends into a child, 0 if it is a leaf."""
    return <uint32_t>((nd.vector >> v) & 1)


cdef inline uint64_t upto(uint32_t v) noexcept nogil:
    """Bits 0..v (v = 0..63) set: the slots up to and including slot v."""
    return ((<uint64_t>2) << v) - 1


cdef inline uint32_t child_of(const Node *nd, uint32_t v) noexcept nogil:
    """Index in t.nodes of slot ``v``'s child (junk if the slot is a leaf)."""
    return nd.base1 + <uint32_t>popcount64(nd.vector & upto(v)) - 1


# A leaf step takes how ``t`` stores its leaves as two arguments: ``shift``
# (t.leaf_shift) and ``near`` (near_count), passed as constants: the single
# walk branches once on t.leaf_shift, the batch walk has a compiled variant
# for each (reading them from the trie in its inner loop cost IPv4 batches
# 5-10%).

cdef inline const Pair *leaf_of(const Trie *t, const Node *nd, uint32_t v, int shift,
                                uint32_t near) noexcept nogil:
    """The leaf of slot ``v`` of ``nd`` (junk if the slot has a child): one of
    the node's first ``near`` leaves, in its own cache line, or a later one
    in t.leaves.  Picked without a branch, in integer arithmetic, since the
    unused address may lie outside both arrays."""
    cdef uint32_t i = <uint32_t>popcount64(nd.leafvec & upto(v)) - 1
    cdef size_t inside = <size_t>&nd.near[0] + ((<size_t>i + 1) << shift)
    cdef size_t outside = <size_t>t.leaves + (<size_t>(nd.base0 + i - near) << shift)
    return <const Pair *>acl_select(i < near, <const void *>inside, <const void *>outside)


# A top slot is a leaf (its bit in leafvec alone), a top node (in vector
# alone) or a Lone (in both; Trie.lones).  With ``lones`` each count masks
# out the other kinds; the batch walks of the tries that have none pass a
# constant False, and the masks fold away (they cost geoip v4 batches
# 5-10%).

cdef inline uint64_t top_nodes(const TopWord *w, bint lones) noexcept nogil:
    """Bit b set: slot 64w + b has a top node (not a Lone)."""
    return w.vector & ~w.leafvec if lones else w.vector


cdef inline uint64_t top_lones(const TopWord *w) noexcept nogil:
    """Bit b set: slot 64w + b holds a Lone."""
    return w.vector & w.leafvec


cdef inline uint32_t top_node_of(const TopWord *w, uint32_t b, bint lones) noexcept nogil:
    """Index in t.nodes of the top node of slot ``b`` of word ``w`` (junk if
    the slot is a leaf or a Lone): the word's top nodes, in slot order."""
    return w.nodes_before + <uint32_t>popcount64(top_nodes(w, lones) & upto(b)) - 1


cdef inline size_t top_leaf_at(const Trie *t, const TopWord *w, uint32_t b, int shift,
                               bint lones) noexcept nogil:
    """Address of the leaf of slot ``b`` of word ``w`` (junk if the slot has a
    top node: integer arithmetic, since it may then lie outside t.leaves)."""
    cdef uint64_t runs = w.leafvec & ~w.vector if lones else w.leafvec
    return <size_t>t.leaves + (<size_t>(t.top_leaves + w.leaves_before
                                        + <uint32_t>popcount64(runs & upto(b)) - 1)
                               << shift)


cdef inline uint32_t lone_places(uint32_t lones) noexcept nogil:
    """Node places that a word's ``lones`` Lones take before its top nodes."""
    return (lones + 3) // 4


cdef inline const Lone *lone_of(const Trie *t, const TopWord *w, uint32_t b) noexcept nogil:
    """The Lone of slot ``b`` of word ``w`` (junk if the slot is anything
    else): the word's Lones end where its first top node starts, in slot
    order, so slot b's is as many Lones back as the word has from slot b
    on -- one popcount, not two."""
    return <const Lone *>(<size_t>&t.nodes[w.nodes_before]
                          - <size_t>popcount64(top_lones(w) >> b) * sizeof(Lone))


cdef inline int32_t lone_value(const Lone *p, uint64_t hi, uint32_t value_index) noexcept nogil:
    """What Lone ``p`` answers for the window ``hi`` below the top level, in
    one discipline (``value_index`` 1: specific, 0: first, as a leaf's
    int32_t is read): its prefix painted over what covers the slot
    (paint(), as the build does: the value, and the lower of the two
    firsts, -1 being none), or just what covers the slot.  The key's lowest
    set bit marks where its prefix ends; shifted down to it, the window's
    bits agree with the key's when at most that marker bit differs.  Picked
    without a branch: inside or outside is a coin toss.  The batch walks
    read one discipline (their Lone lanes are most lanes in routing
    tables), the single walk both (lone_answer)."""
    cdef int32_t lower, inside = -<int32_t>((((<uint32_t>(hi >> 32)) ^ p.key) >> ctz32(p.key)) <= 1)
    if value_index:
        return (p.value & inside) | (p.outside.specific & ~inside)
    lower = <int32_t>min(<uint32_t>p.value, <uint32_t>p.outside.first)
    return (lower & inside) | (p.outside.first & ~inside)


cdef inline Pair lone_answer(const Lone *p, uint64_t hi) noexcept nogil:
    """Both disciplines' lone_value (the compiler shares their inside test)."""
    cdef Pair answer
    answer.first = lone_value(p, hi, 0)
    answer.specific = lone_value(p, hi, 1)
    return answer


# A wide node's steps: those of a Node, on the word of its 4 that holds the
# slot, plus the count of the words before.

cdef inline uint32_t wide_has_child(const WideNode *nd, uint32_t v) noexcept nogil:
    """1 if slot ``v`` (0..255) of ``nd`` descends into a child, 0 if it is a leaf."""
    return <uint32_t>((nd.vector[v >> 6] >> (v & 63)) & 1)


cdef inline uint32_t wide_child_of(const WideNode *nd, uint32_t v) noexcept nogil:
    """Index in the nodes of slot ``v``'s child (junk if the slot is a leaf)."""
    return (nd.base1 + nd.children_before[v >> 6]
            + <uint32_t>popcount64(nd.vector[v >> 6] & upto(v & 63)) - 1)


cdef inline const Pair *wide_leaf_of(const Trie *t, const WideNode *nd, uint32_t v, int shift,
                                     uint32_t near) noexcept nogil:
    """The leaf of slot ``v`` of ``nd`` (junk if the slot has a child): one of
    the node's first ``near`` leaves, or a later one in t.leaves; as
    leaf_of.  A run may start in an earlier word: then the word's popcount
    is 0 and the count before it names that run."""
    cdef uint32_t i = (nd.runs_before[v >> 6]
                       + <uint32_t>popcount64(nd.leafvec[v >> 6] & upto(v & 63)) - 1)
    cdef size_t inside = <size_t>&nd.near[0] + (<size_t>i << shift)
    cdef size_t outside = <size_t>t.leaves + (<size_t>(nd.base0 + i - near) << shift)
    return <const Pair *>acl_select(i < near, <const void *>inside, <const void *>outside)


cdef inline const Pair *wide_walk(const Trie *t, const WideNode *nd, uint64_t hi,
                                  uint64_t lo, int leaf_shift) noexcept nogil:
    """trie_walk's node steps in a wide trie, from ``nd`` (the window starts
    there): each node's slot is the window's next byte."""
    cdef uint32_t v
    while True:
        v = <uint32_t>(hi >> 56)
        if not wide_has_child(nd, v):
            return wide_leaf_of(t, nd, v, leaf_shift, near_count(leaf_shift, True))
        window_shift(&hi, &lo, 8)
        nd = &wide_nodes(t)[wide_child_of(nd, v)]


cdef inline Pair trie_find(const Trie *t, uint64_t hi, uint64_t lo) noexcept nogil:
    """Both values for the address (hi, lo): trie_walk, compiled for each
    way of storing leaves (a branch every call on one table takes alike).
    The lookup methods inline both copies only under setup.py's raised
    GCC inlining limits (CORE_INLINE_FLAGS); under the defaults they call
    them, ~8-25 instructions more a lookup.  (One walk reading the way
    from the trie inlines under the defaults, but costs ~16 more.)"""
    cdef Pair both
    if t.leaf_shift == 3:
        return trie_walk(t, hi, lo, 3, &both)[0]
    both.first = (<const int32_t *>trie_walk(t, hi, lo, 2, &both))[0]
    both.specific = both.first
    return both


cdef inline const Pair *trie_walk(const Trie *t, uint64_t hi, uint64_t lo, int leaf_shift,
                                  Pair *own) noexcept nogil:
    """The leaf for the address (hi, lo): its top slot's leaf, or node steps
    to a leaf -- or, for a Lone's slot, ``own`` holding the Lone's answer
    (in a trie of int32_t leaves its first is the value).  An address that
    differs from a node's skipped bits lies beside every prefix below the
    node: its answer is the node's near[0]."""
    cdef uint32_t s = <uint32_t>(hi >> (64 - t.dp))
    cdef const TopWord *w = &t.top[s >> 6]
    cdef uint32_t v = s & 63
    cdef const Node *nd
    if not (w.vector >> v) & 1:
        return <const Pair *>top_leaf_at(t, w, v, leaf_shift, True)
    window_shift(&hi, &lo, t.dp)
    if (w.leafvec >> v) & 1:       # with the vector bit, checked above: a Lone
        own[0] = lone_answer(lone_of(t, w, v), hi)
        return own
    if t.wide:
        return wide_walk(t, &wide_nodes(t)[top_node_of(w, v, True)], hi, lo, leaf_shift)
    nd = &t.nodes[top_node_of(w, v, True)]
    while True:
        if skip_differs(nd, hi):
            return &nd.near[0]
        v = slot_of(nd, hi)
        if not has_child(nd, v):
            return leaf_of(t, nd, v, leaf_shift, near_count(leaf_shift, False))
        window_shift(&hi, &lo, nd.skip + nd.stride)
        nd = &t.nodes[child_of(nd, v)]


cdef inline Pair find_v4(const Trie *t, uint32_t a) noexcept nogil:
    return trie_find(t, (<uint64_t>a) << 32, 0)


cdef inline Pair find_v6(const Trie *t, acl_u128 a) noexcept nogil:
    return trie_find(t, <uint64_t>(a >> 64), <uint64_t>a)


# Batch lookups keep LANES independent walks in flight so that their cache
# misses overlap instead of queueing: LANES addresses at a time walk level by
# level (group prefetching), every step prefetching what its lane reads at
# the next level.  On this machine that beat refilling each lane as soon as
# its walk ends (AMAC, Kocberber et al., VLDB 2015) for IPv6 too, once the
# level loop stopped branching on each lane's state (1.3-1.7x on the IPv6
# bench sets), and 64 lanes beat 32 for IPv6 and tied for IPv4 (bench/prefix-history.md,
# second session).
cdef enum:
    LANES = 64


cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *) nogil


cdef inline void prefetch_wide(const void *p) noexcept nogil:
    """Prefetch a wide node's two lines (or a leaf's line, and the next)."""
    prefetch(p)
    prefetch(<const char *>p + 64)


cdef inline void load_window(const unsigned char *p, addr_t zero, uint64_t *hi,
                             uint64_t *lo) noexcept nogil:
    """The packed address at p (network order) as a walk's window."""
    cdef uint32_t raw
    if addr_t is uint32_t:
        memcpy(&raw, p, 4)
        hi[0] = (<uint64_t>be32toh(raw)) << 32
        lo[0] = 0
    else:
        memcpy(hi, p, 8)
        memcpy(lo, p + 8, 8)
        hi[0] = be64toh(hi[0])
        lo[0] = be64toh(lo[0])


# Four compiled variants of the batch walk (a fused tag type): tables built
# without path compression skip the skip check, which is most of a dense
# table's per-step cost, and wide tries step through WideNodes.  Of those
# without, the ones with Lones (Trie.lones) have their own: the Lone work in
# the top step cost geoip v4's batches, which have none, 25%.  Compressed
# tries are taken to have Lones.
cdef struct Plain:
    char unused

cdef struct PlainLones:
    char unused

cdef struct Skipping:
    char unused

cdef struct Wide:
    char unused

ctypedef fused walk_t:
    Plain
    PlainLones
    Skipping
    Wide

# And two for how leaves are stored (Trie.leaf_shift), as constants.
cdef struct PairLeaves:
    char unused

cdef struct ValueLeaves:
    char unused

ctypedef fused leaves_t:
    PairLeaves
    ValueLeaves


cdef void batch_group(const Trie *t, const unsigned char *p, int32_t *o, Py_ssize_t n,
                      bint specific, addr_t zero, walk_t kind, leaves_t stored) noexcept nogil:
    """o[i] = the first or specific value for the i-th packed address of p:
    LANES addresses at a time, level by level, prefetching each level's reads.
    Each level visits only the lanes still at a node, listed in ``walk``; the
    list is rebuilt without a branch (append always, advance by the step's
    bit), so lanes of mixed depths cost no mispredictions (measured: on the
    tor-geoipdb IPv4 table, skipping finished lanes with an ``if`` made the
    walk 2x slower than on the same addresses grouped by depth)."""
    cdef uint64_t hi[LANES]
    cdef uint64_t lo[LANES]
    cdef uint32_t cur[LANES]
    cdef const Pair *res[LANES]
    cdef uint8_t walk[LANES]
    # Lanes whose top slot is a Lone (listed in lonely; res[j] points at
    # the Lone): answered last, by which time their prefetched Lones have
    # arrived.
    cdef uint8_t lonely[LANES]
    cdef Py_ssize_t lone_lanes
    cdef Py_ssize_t base, m, j, q, walking, still
    cdef int step, used, d, k, shift, dp = t.dp, width = t.bits
    cdef uint32_t v, mask, at_node, differ, is_lone
    cdef int leaf_shift = 3 if leaves_t is PairLeaves else 2
    cdef uint32_t near = near_count(leaf_shift, walk_t is Wide)
    cdef bint lones = walk_t is PlainLones or walk_t is Skipping       # a constant
    cdef int stride = 8 if walk_t is Wide else 6        # node_stride(t), as a constant
    # Which int32_t of a leaf to read: a Pair's second for `specific`.
    cdef uint32_t value_index = 1 if leaves_t is PairLeaves and specific else 0
    cdef uint64_t h
    cdef const Node *nd
    cdef const WideNode *wn
    cdef const TopWord *w
    if addr_t is uint32_t:
        step = 4
    else:
        step = 16
    base = 0
    while base < n:
        m = n - base
        if m > LANES:
            m = LANES
        walking = 0
        lone_lanes = 0
        for j in range(m):
            # The top words (a few KiB to 96 KiB) stay cached: read, not prefetched.
            load_window(p + (base + j) * step, zero, &hi[j], &lo[j])
            v = <uint32_t>(hi[j] >> (64 - dp))
            w = &t.top[v >> 6]
            v &= 63
            at_node = <uint32_t>(top_nodes(w, lones) >> v) & 1
            cur[j] = top_node_of(w, v, lones)
            res[j] = <const Pair *>top_leaf_at(t, w, v, leaf_shift, lones)
            if walk_t is Wide:
                prefetch_wide(acl_select(at_node, &wide_nodes(t)[cur[j]], res[j]))
            else:
                if lones:
                    is_lone = <uint32_t>(top_lones(w) >> v) & 1
                    res[j] = <const Pair *>acl_select(is_lone, lone_of(t, w, v), res[j])
                    lonely[lone_lanes] = <uint8_t>j
                    lone_lanes += is_lone
                prefetch(acl_select(at_node, &t.nodes[cur[j]], res[j]))
            window_shift(&hi[j], &lo[j], dp)
            walk[walking] = <uint8_t>j
            walking += at_node
        d = dp
        while walking:
            if walk_t is not Skipping:
                # Without skips the lanes stay in step: this level's stride
                # is every node's, and the window need not move (its bits
                # d - dp .. d - dp + k are this level's slot).  With skips
                # each lane's node says what it uses.
                k = width - d
                if k > stride:
                    k = stride
                d += k
                shift = 128 - (d - dp)
                mask = (<uint32_t>1 << k) - 1
            still = 0
            for q in range(walking):
                j = walk[q]
                if walk_t is not Wide:
                    nd = &t.nodes[cur[j]]
                h = hi[j]
                if walk_t is Skipping:
                    # trie_find's steps without its branches: a lane whose
                    # skipped bits differ stops at the node's near[0].
                    differ = skip_differs(nd, h)
                    v = slot_of(nd, h)
                    at_node = has_child(nd, v) & (differ ^ 1)
                    res[j] = <const Pair *>acl_select(differ, &nd.near[0],
                                                      leaf_of(t, nd, v, leaf_shift, near))
                    used = nd.skip + nd.stride
                    if addr_t is uint32_t:
                        hi[j] = h << used
                    else:
                        hi[j] = (h << used) | (lo[j] >> (64 - used))
                        lo[j] <<= used
                else:
                    if addr_t is uint32_t:
                        v = <uint32_t>(h >> (shift - 64)) & mask
                    else:
                        v = <uint32_t>(((<acl_u128>h << 64) | lo[j]) >> shift) & mask
                if walk_t is Wide:
                    wn = &wide_nodes(t)[cur[j]]
                    at_node = wide_has_child(wn, v)
                    res[j] = wide_leaf_of(t, wn, v, leaf_shift, near)
                    cur[j] = wide_child_of(wn, v)
                    prefetch_wide(acl_select(at_node, &wide_nodes(t)[cur[j]], res[j]))
                else:
                    if walk_t is Plain or walk_t is PlainLones:
                        at_node = has_child(nd, v)
                        res[j] = leaf_of(t, nd, v, leaf_shift, near)
                    cur[j] = child_of(nd, v)
                    prefetch(acl_select(at_node, &t.nodes[cur[j]], res[j]))
                walk[still] = <uint8_t>j
                still += at_node
            walking = still
        for j in range(m):
            o[base + j] = (<const int32_t *>res[j])[value_index]
        for q in range(lone_lanes if lones else 0):    # over the junk just read from their Lones
            j = lonely[q]
            o[base + j] = lone_value(<const Lone *>res[j], hi[j], value_index)
        base += m


cdef void batch_walk(const Trie *t, const unsigned char *p, int32_t *o, Py_ssize_t n,
                     bint specific, addr_t zero) noexcept nogil:
    """batch_group, in the variant for how ``t`` was built."""
    cdef PairLeaves pairs
    cdef ValueLeaves values
    pairs.unused = 0
    values.unused = 0
    if t.leaf_shift == 3:
        batch_nodes(t, p, o, n, specific, zero, pairs)
    else:
        batch_nodes(t, p, o, n, specific, zero, values)


cdef void batch_nodes(const Trie *t, const unsigned char *p, int32_t *o, Py_ssize_t n,
                      bint specific, addr_t zero, leaves_t stored) noexcept nogil:
    """batch_walk, for the kind of nodes ``t`` has."""
    cdef Plain plain
    cdef PlainLones plain_lones
    cdef Skipping skipping
    cdef Wide wide
    plain.unused = 0
    plain_lones.unused = 0
    skipping.unused = 0
    wide.unused = 0
    if t.compressed:
        batch_group(t, p, o, n, specific, zero, skipping, stored)
    elif t.wide:
        batch_group(t, p, o, n, specific, zero, wide, stored)
    elif t.lones:
        batch_group(t, p, o, n, specific, zero, plain_lones, stored)
    else:
        batch_group(t, p, o, n, specific, zero, plain, stored)


# -- build ----------------------------------------------------------------

cdef inline uint32_t net_bits(addr_t a, int d, int n) noexcept nogil:
    """The ``n`` (0..MAX_SKIP) bits of ``a`` from bit ``d`` on, as an integer;
    0 for n = 0.  Needs 0 < d and d + n <= the address width."""
    if addr_t is uint32_t:
        return <uint32_t>((<uint64_t>a >> (32 - d - n)) & (((<uint64_t>1) << n) - 1))
    else:
        return <uint32_t>(<uint64_t>(a >> (128 - d - n)) & (((<uint64_t>1) << n) - 1))


cdef inline int common_bits(addr_t x, addr_t y) noexcept nogil:
    """How many leading bits ``x`` and ``y`` share."""
    cdef uint64_t hi, lo
    if addr_t is uint32_t:
        return 32 if x == y else clz32(x ^ y)
    else:
        hi = <uint64_t>((x ^ y) >> 64)
        lo = <uint64_t>(x ^ y)
        if hi:
            return clz64(hi)
        return 128 if lo == 0 else 64 + clz64(lo)


cdef inline void paint(Pair *p, int32_t value) noexcept nogil:
    # Entries arrive sorted, so a later overlapping entry is a longer one.
    p.specific = value
    if p.first < 0 or value < p.first:
        p.first = value


cdef inline bint same(Pair a, Pair b) noexcept nogil:
    return a.first == b.first and a.specific == b.specific


cdef int grow_nodes(Trie *t, uint32_t extra) noexcept nogil:
    cdef uint64_t cap
    cdef Node *p
    if <uint64_t>t.n_nodes + extra > t.cap_nodes:
        cap = max(<uint64_t>t.cap_nodes * 2, <uint64_t>t.n_nodes + extra, 64)
        if cap > MAX_INDEX:
            return TOO_LARGE
        # realloc while building (it can grow in place); the finished array
        # is moved to aligned memory (``_finish``).
        p = <Node *>realloc(t.nodes, cap * node_size(t))
        if p == NULL:
            return NO_MEMORY
        t.nodes = p
        t.cap_nodes = <uint32_t>cap
    return 0


cdef int aligned_nodes(Trie *t, uint32_t cap) noexcept nogil:
    """Move the nodes to an array of ``cap`` (>= n_nodes) aligned to their
    size, so that each node is one cache line, or one aligned pair of lines
    (realloc only promises 16 bytes)."""
    cdef void *p
    if posix_memalign(&p, node_size(t), <size_t>cap * node_size(t)) != 0:
        return -1
    if t.n_nodes:
        memcpy(p, t.nodes, <size_t>t.n_nodes * node_size(t))
    free(t.nodes)
    t.nodes = <Node *>p
    t.cap_nodes = cap
    return 0


cdef int add_leaf(Trie *t, Pair leaf) noexcept nogil:
    cdef uint64_t cap
    cdef Pair *p
    if t.n_leaves == t.cap_leaves:
        cap = max(<uint64_t>t.cap_leaves * 2, 64)
        if cap > MAX_INDEX:
            return TOO_LARGE
        p = <Pair *>realloc(t.leaves, cap * sizeof(Pair))
        if p == NULL:
            return NO_MEMORY
        t.leaves = p
        t.cap_leaves = <uint32_t>cap
    t.leaves[t.n_leaves] = leaf
    t.n_leaves += 1
    return 0


cdef struct Slots:
    # One node's slots while build_node fills it: one per depth, in an array
    # build_trie allocates (256 slots of a wide node are 8 KiB, too much for
    # every frame of a deep recursion's stack).
    Pair slot[256]          # the Pair each leaf slot gets
    size_t gstart[256]      # entries [gstart, gend) lie below a child slot
    size_t gend[256]
    Pair runs[256]          # the node's leaves: one per run of equal slots
    uint64_t vector[4]      # bit b of word w: slot 64w + b has a child
    uint64_t leafvec[4]     # bit b of word w: slot 64w + b starts a run


cdef int build_node(Trie *t, Slots *f, uint32_t idx, int d, const addr_t *nets,
                    const uint8_t *lens, const int32_t *vals, size_t lo, size_t hi,
                    Pair inherited) noexcept nogil:
    """Fill node ``idx`` at depth ``d`` from entries [lo, hi): all longer than
    ``d`` and inside this node.  ``inherited``: the Pair of its parent slot.
    ``f``: this depth's Slots (its children use f + 1).  0, or NO_MEMORY or
    TOO_LARGE."""
    cdef int width, k, nslots, length, shift, skip, near, w, rc
    cdef uint32_t s, j, end, base0, base1, c, nruns
    cdef uint64_t rest
    cdef size_t i, g
    cdef Pair last
    cdef bint have_last = False, painted = False
    cdef Node *nd
    cdef WideNode *wn
    if addr_t is uint32_t:
        width = 32
    else:
        width = 128
    # Path compression: the bits every entry shares, up to the shortest
    # entry's length, are checked once instead of walked six at a time.  The
    # shortest entry is the first whenever it is that short: a prefix covering
    # all the shared bits holds the lowest network of the group (sorted order).
    skip = 0
    if t.compressed:
        skip = common_bits(nets[lo], nets[hi - 1])
        if skip > lens[lo] - 1:
            skip = lens[lo] - 1
        skip -= d
        if skip > MAX_SKIP:
            skip = MAX_SKIP
    if not t.wide:
        t.nodes[idx].skip = <uint8_t>skip
        t.nodes[idx].skipval = net_bits(nets[lo], d, skip)
        # What an address that differs in the skipped bits gets: what covers
        # this whole node.
        t.nodes[idx].near[0] = inherited
    d += skip
    k = width - d
    if k > node_stride(t):
        k = node_stride(t)
    nslots = 1 << k
    shift = width - d - k
    for j in range(4):
        f.vector[j] = 0
        f.leafvec[j] = 0
    i = lo
    while i < hi:
        length = lens[i]
        s = (<uint32_t>(nets[i] >> shift)) & <uint32_t>(nslots - 1)
        if length <= d + k:
            if not painted:
                # Slots are filled on the first paint: a node on a bare path
                # (only longer prefixes below it) never touches them.
                for j in range(<uint32_t>nslots):
                    f.slot[j] = inherited
                painted = True
            end = s + (<uint32_t>1 << (d + k - length))
            for j in range(s, end):
                paint(&f.slot[j], vals[i])
            i += 1
        else:
            # Every entry after it in this slot is longer too (sorted order).
            g = i + 1
            while g < hi and ((<uint32_t>(nets[g] >> shift)) & <uint32_t>(nslots - 1)) == s:
                g += 1
            f.vector[s >> 6] |= (<uint64_t>1) << (s & 63)
            f.gstart[s] = i
            f.gend[s] = g
            i = g
    nruns = 0
    if not painted:
        # Every leaf slot holds `inherited`: one run, from the first of them.
        j = 0
        while j < <uint32_t>nslots and (f.vector[j >> 6] >> (j & 63)) & 1:
            j += 1
        if j < <uint32_t>nslots:
            f.leafvec[j >> 6] = (<uint64_t>1) << (j & 63)
            f.runs[0] = inherited
            nruns = 1
    else:
        for j in range(<uint32_t>nslots):
            if (f.vector[j >> 6] >> (j & 63)) & 1:
                continue
            if not have_last or not same(f.slot[j], last):
                f.leafvec[j >> 6] |= (<uint64_t>1) << (j & 63)
                f.runs[nruns] = f.slot[j]
                nruns += 1
                last = f.slot[j]
                have_last = True
    # A node keeps its first leaves in its own cache line(s): a walk that
    # ends there reads one line less (most walks, in routing tables, where a
    # node rarely has more).
    near = near_count(3, t.wide)     # the build makes Pairs (see leaves_to_values)
    base0 = t.n_leaves
    for j in range(<uint32_t>near, nruns):
        rc = add_leaf(t, f.runs[j])
        if rc < 0:
            return rc
    c = 0
    for j in range(4):
        c += <uint32_t>popcount64(f.vector[j])
    rc = grow_nodes(t, c)
    if rc < 0:
        return rc
    base1 = t.n_nodes
    t.n_nodes += c
    if t.wide:
        wn = &wide_nodes(t)[idx]
        c = 0
        nruns = 0
        for j in range(4):
            wn.vector[j] = f.vector[j]
            wn.leafvec[j] = f.leafvec[j]
            wn.children_before[j] = <uint8_t>c
            wn.runs_before[j] = <uint8_t>nruns
            c += <uint32_t>popcount64(f.vector[j])
            nruns += <uint32_t>popcount64(f.leafvec[j])
        wn.base0 = base0
        wn.base1 = base1
        for j in range(min(nruns, <uint32_t>near)):
            wn.near[j] = f.runs[j]
    else:
        nd = &t.nodes[idx]
        nd.vector = f.vector[0]
        nd.leafvec = f.leafvec[0]
        nd.base0 = base0
        nd.base1 = base1
        nd.stride = <uint8_t>k
        for j in range(min(nruns, <uint32_t>near)):
            nd.near[1 + j] = f.runs[j]
    c = 0
    for w in range(4):
        rest = f.vector[w]
        while rest:
            j = <uint32_t>(64 * w + ctz64(rest))
            rest &= rest - 1
            rc = build_node(t, f + 1, base1 + c, d + k, nets, lens, vals, f.gstart[j], f.gend[j],
                            f.slot[j] if painted else inherited)
            if rc < 0:
                return rc
            c += 1
    return 0


cdef bint bare_paths_pay(const addr_t *nets, const uint8_t *lens, size_t n, int dp) noexcept nogil:
    """Whether path compression pays for these sorted entries: when at least
    one in BARE_SHARE ends a bare path (no other entry beside it) of more
    than one node's bits below the top level.  Skipping costs every node
    step a check, which batch walks feel on dense tables (tor-geoipdb: no
    entry qualifies, and the check made batches ~20% slower); on sparse
    ones (IPv6 routing: 84% qualify) it removes half the node steps.  An
    entry's closest neighbours in sorted order are the ones it shares the
    most bits with, so one pass over adjacent pairs finds each bare path."""
    cdef size_t i, bare = 0
    cdef int alone, c
    for i in range(n):
        alone = dp
        if i > 0:
            c = common_bits(nets[i - 1], nets[i]) + 1
            if c > alone:
                alone = c
        if i + 1 < n:
            c = common_bits(nets[i], nets[i + 1]) + 1
            if c > alone:
                alone = c
        bare += lens[i] - alone > 6
    return bare * BARE_SHARE >= n and bare > 0


cdef int build_trie(Trie *t, const addr_t *nets, const uint8_t *lens, const int32_t *vals,
                    size_t n, int dp) noexcept nogil:
    """Build ``t`` from sorted, de-duplicated entries: 0, or NO_MEMORY or
    TOO_LARGE (``t`` then holds what it had allocated; trie_free frees it).

    The top level is one wide node of 2**dp slots, built like the others:
    slots are painted with the entries of at most dp bits, a slot holding
    longer entries gets a top node (the first nodes, in slot order), and
    each run of equal painted leaves is one leaf.  Its bit vectors are cut
    into TopWords with the counts before each word, so that a slot's node or
    leaf index is a count plus a popcount."""
    cdef int width, length
    cdef uint32_t ntop, s, j, end, top_nodes = 0, nodes_before = 0, leaves_before = 0
    cdef size_t i, g
    cdef Pair *painted
    cdef uint8_t *child
    cdef Pair last
    cdef bint have_last = False
    cdef TopWord *w
    cdef Slots *frames
    cdef int rc = NO_MEMORY
    if addr_t is uint32_t:
        width = 32
    else:
        width = 128
    t.leaf_shift = 3        # Pairs while building; leaves_to_values may change that
    t.compressed = bare_paths_pay(nets, lens, n, dp)
    if t.compressed and dp == BIG_DP:
        dp = SPARSE_DP
    # Dense IPv6 tables take wide nodes; dense IPv4 ones keep 6-bit Nodes
    # (their walks are one or two nodes deep already).
    t.wide = width == 128 and not t.compressed
    t.lones = False     # pack_lone_tops may change that
    if t.wide and dp == BIG_DP:
        dp = WIDE_DP
    ntop = (<uint32_t>1) << dp
    t.dp = dp
    t.bits = width
    t.top = <TopWord *>calloc(ntop >> 6, sizeof(TopWord))
    painted = <Pair *>malloc(ntop * sizeof(Pair))
    child = <uint8_t *>calloc(ntop, 1)
    # One Slots per node depth: every node consumes at least node_stride(t)
    # bits but a path's last.
    frames = <Slots *>malloc(((width - dp) // node_stride(t) + 2) * sizeof(Slots))
    if t.top == NULL or painted == NULL or child == NULL or frames == NULL:
        free(painted)
        free(child)
        free(frames)
        return NO_MEMORY
    for j in range(ntop):
        painted[j].first = -1
        painted[j].specific = -1
    # The top nodes come first, in slot order: count the slots holding
    # longer entries, so that the top nodes' children are added after them.
    for i in range(n):
        if lens[i] > dp:
            s = <uint32_t>(nets[i] >> (width - dp))
            top_nodes += not child[s]
            child[s] = 1
    rc = grow_nodes(t, top_nodes)
    if rc < 0:
        free(painted)
        free(child)
        free(frames)
        return rc
    t.n_nodes = top_nodes
    top_nodes = 0
    i = 0
    while i < n:
        length = lens[i]
        s = <uint32_t>(nets[i] >> (width - dp))
        if length <= dp:
            end = s + (<uint32_t>1 << (dp - length))
            for j in range(s, end):
                paint(&painted[j], vals[i])
            i += 1
        else:
            # All covering entries are painted already: recurse right away.
            g = i + 1
            while g < n and <uint32_t>(nets[g] >> (width - dp)) == s:
                g += 1
            rc = build_node(t, frames, top_nodes, dp, nets, lens, vals, i, g, painted[s])
            if rc < 0:
                break
            top_nodes += 1
            i = g
    else:
        rc = 0
        t.top_leaves = t.n_leaves
        for j in range(ntop):
            w = &t.top[j >> 6]
            if (j & 63) == 0:
                w.nodes_before = nodes_before
                w.leaves_before = leaves_before
            if child[j]:
                w.vector |= (<uint64_t>1) << (j & 63)
                nodes_before += 1
            elif not have_last or not same(painted[j], last):
                rc = add_leaf(t, painted[j])
                if rc < 0:
                    break
                w.leafvec |= (<uint64_t>1) << (j & 63)
                leaves_before += 1
                last = painted[j]
                have_last = True
    free(painted)
    free(child)
    free(frames)
    if rc == 0 and leaves_agree(t):
        rc = leaves_to_values(t)
    if rc == 0 and not t.wide:
        rc = pack_lone_tops(t)
    return rc


cdef inline uint32_t node_runs(const Trie *t, uint32_t e) noexcept nogil:
    """How many leaves (runs) node ``e`` has."""
    cdef const WideNode *wn
    if t.wide:
        wn = &wide_nodes(t)[e]
        return <uint32_t>(popcount64(wn.leafvec[0]) + popcount64(wn.leafvec[1])
                          + popcount64(wn.leafvec[2]) + popcount64(wn.leafvec[3]))
    return <uint32_t>popcount64(t.nodes[e].leafvec)


cdef inline Pair *near_pairs(const Trie *t, uint32_t e) noexcept nogil:
    """Node ``e``'s near leaves, as the build leaves them: Pairs (a Node's
    after its skip's answer)."""
    if t.wide:
        return &wide_nodes(t)[e].near[0]
    return &t.nodes[e].near[1]


cdef bint leaves_agree(const Trie *t) noexcept nogil:
    """Whether every leaf of a freshly built ``t`` has first == specific:
    no prefix lies inside another of higher value (disjoint ranges, as in
    tor-geoipdb or a blocklist, always qualify).  Then one int32_t per leaf
    answers both disciplines."""
    cdef uint32_t e, j, near
    cdef const Pair *p
    for j in range(t.n_leaves):
        if t.leaves[j].first != t.leaves[j].specific:
            return False
    for e in range(t.n_nodes):
        if not t.wide and t.nodes[e].near[0].first != t.nodes[e].near[0].specific:
            return False
        p = near_pairs(t, e)
        near = min(node_runs(t, e), near_leaves(t))
        for j in range(near):
            if p[j].first != p[j].specific:
                return False
    return True


cdef int leaves_to_values(Trie *t) noexcept nogil:
    """Store ``t``'s leaves as one int32_t each (leaves_agree(t) holds): the
    leaves array halves, and each node keeps more leaves in its own lines
    (NEAR_VALUES / WIDE_NEAR_VALUES, twice its Pairs' count, bar a Node's
    skip answer), so fewer walks read the leaves array at all.  Node by
    node, its runs are gathered from its near Pairs and its block of the
    old array, the first ones written back into its near area as int32_t,
    the rest appended to the new array; then the top level's block.  -1
    when out of memory (``t`` is then unchanged)."""
    cdef int32_t *values = <int32_t *>malloc(max(<size_t>t.n_leaves, 1) * sizeof(int32_t))
    cdef int32_t runs[256]
    cdef int32_t *near32
    cdef const Pair *pairs
    cdef uint32_t e, j, nruns, n = 0, old_near = near_leaves(t), near, top_leaves
    if values == NULL:
        return -1
    near = near_count(2, t.wide)
    for e in range(t.n_nodes):
        nruns = node_runs(t, e)
        pairs = near_pairs(t, e)
        for j in range(nruns):
            if j < old_near:
                runs[j] = pairs[j].first
            elif t.wide:
                runs[j] = t.leaves[wide_nodes(t)[e].base0 + j - old_near].first
            else:
                runs[j] = t.leaves[t.nodes[e].base0 + j - old_near].first
        if t.wide:
            near32 = <int32_t *>&wide_nodes(t)[e].near[0]
            wide_nodes(t)[e].base0 = n
        else:
            # near32[0], the skip's answer, is in place already: it is the
            # first int32_t of the Pair it was.
            near32 = <int32_t *>&t.nodes[e].near[0] + 1
            t.nodes[e].base0 = n
        for j in range(nruns):
            if j < near:
                near32[j] = runs[j]
            else:
                values[n] = runs[j]
                n += 1
    top_leaves = n
    for j in range(t.top_leaves, t.n_leaves):
        values[n] = t.leaves[j].first
        n += 1
    free(t.leaves)
    t.leaves = <Pair *>values
    t.n_leaves = t.cap_leaves = n
    t.top_leaves = top_leaves
    t.leaf_shift = 2
    return 0


cdef bint lone_from(const Trie *t, const Node *nd, Lone *lone) noexcept nogil:
    """Whether Node ``nd``, a top node, answers as a Lone does (then fill
    ``lone``): no children, and its runs what covers it (its skip's answer)
    but for one aligned block of its slots, that painted with one value --
    two runs, or three with the block between -- and at most 31 bits from
    the top level to the block's end."""
    cdef Pair outside, inside, painted
    cdef Pair runs[3]
    cdef const int32_t *near32
    cdef uint32_t start, end, size, prefix_bits, slots = (<uint32_t>1) << nd.stride
    cdef uint64_t later = nd.leafvec & (nd.leafvec - 1)     # the runs after the first
    cdef int block_bits, length, i, nruns = popcount64(nd.leafvec)
    if nd.vector or nruns < 2 or nruns > 3:
        return False
    if t.leaf_shift == 3:
        outside = nd.near[0]
        for i in range(nruns):
            runs[i] = nd.near[1 + i]
    else:
        near32 = <const int32_t *>&nd.near[0]
        outside.first = outside.specific = near32[0]
        for i in range(nruns):
            runs[i].first = runs[i].specific = near32[1 + i]
    if same(runs[0], outside):
        # [outside, block] or [outside, block, outside]
        if nruns == 3 and not same(runs[2], outside):
            return False
        inside = runs[1]
        start = <uint32_t>ctz64(later)
        end = <uint32_t>ctz64(later & (later - 1)) if nruns == 3 else slots
    elif nruns == 2 and same(runs[1], outside):
        inside = runs[0]
        start = 0
        end = <uint32_t>ctz64(later)
    else:
        return False
    size = end - start
    if size & (size - 1) or start % size:
        return False
    block_bits = ctz32(size)
    length = nd.skip + nd.stride - block_bits
    painted = outside
    paint(&painted, inside.specific)
    if length > 31 or not same(painted, inside):
        return False
    # The prefix's bits below the top level: the skipped ones, then the
    # block's place among the slots; then the marker bit.
    prefix_bits = (nd.skipval << (nd.stride - block_bits)) | (start >> block_bits)
    lone.key = ((prefix_bits << 1) | 1) << (31 - length)
    lone.value = inside.specific
    lone.outside = outside
    return True


# Lones pay for the batch walk's Lone work (13 instructions a lookup on
# routing v4, 93 -> 106 by callgrind; its batches 9-15% slower) only where
# many lookups end at one: they are built when at least 1 in LONES_PAY_FROM
# top nodes becomes one (routing v4: 49,230 of 68,549; routing v6: 29,060
# of 38,874; geoip v4 would get 30 of 21,380).
cdef enum:
    LONES_PAY_FROM = 4


cdef int pack_lone_tops(Trie *t) noexcept nogil:
    """Put a Lone in place of each top node that answers as one (lone_from):
    in a routing table, most top nodes hold one prefix each (an IPv6 /48,
    an IPv4 /24), and four Lones share the cache line each of them took
    alone (the bench sets' lookups touch 11-16% fewer node lines).  Each
    word's Lones, in slot order, end where its top nodes (in slot order)
    start, four to a Node's place (lone_of); the other nodes keep their
    order, moved by the change in the top nodes' room.  Left undone unless
    a quarter of the top nodes would be Lones (LONES_PAY_FROM).  -1 when
    out of memory (``t`` is then unchanged)."""
    cdef uint32_t words = ((<uint32_t>1) << t.dp) >> 6, top_old = 0, top_new = 0, at, full, lones
    cdef uint32_t all_lones = 0
    cdef uint32_t i, k, e, n
    cdef uint64_t rest
    cdef Lone lone
    cdef Lone *packed
    cdef Node *nodes
    cdef TopWord *w
    cdef uint8_t *is_lone = <uint8_t *>calloc(max(<size_t>t.n_nodes, 1), 1)
    if is_lone == NULL:
        return -1
    for i in range(words):
        w = &t.top[i]
        full = lones = 0
        for e in range(top_old, top_old + <uint32_t>popcount64(w.vector)):
            # Decided here, filled in place below (lone_from again).
            is_lone[e] = lone_from(t, &t.nodes[e], &lone)
            lones += is_lone[e]
            full += not is_lone[e]
        top_old += <uint32_t>popcount64(w.vector)
        top_new += full + lone_places(lones)
        all_lones += lones
    if all_lones == 0 or all_lones < top_old // LONES_PAY_FROM:
        free(is_lone)
        return 0
    n = top_new + t.n_nodes - top_old
    nodes = <Node *>calloc(n, sizeof(Node))
    if nodes == NULL:
        free(is_lone)
        return -1
    e = at = 0
    for i in range(words):
        w = &t.top[i]
        lones = 0
        for k in range(e, e + <uint32_t>popcount64(w.vector)):
            lones += is_lone[k]
        at += lone_places(lones)
        w.nodes_before = at
        packed = <Lone *>&nodes[at] - lones
        rest = w.vector
        while rest:
            if is_lone[e]:
                lone_from(t, &t.nodes[e], packed)
                packed += 1
                w.leafvec |= rest & (~rest + 1)
            else:
                nodes[at] = t.nodes[e]
                nodes[at].base1 += top_new - top_old    # unsigned: wraps when the room shrank
                at += 1
            e += 1
            rest &= rest - 1
    for e in range(top_old, t.n_nodes):
        nodes[top_new + e - top_old] = t.nodes[e]
        nodes[top_new + e - top_old].base1 += top_new - top_old
    free(is_lone)
    release(t.nodes, <size_t>t.cap_nodes * sizeof(Node), t.mapped, MAPPED_NODES)
    t.mapped &= ~MAPPED_NODES
    t.nodes = nodes
    t.n_nodes = t.cap_nodes = n
    t.lones = True
    return 0


cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE

cdef enum:
    HUGE_PAGE = 2 << 20         # x86-64 and arm64 transparent huge pages
    HUGE_FROM = 1 << 20         # arrays this big move to huge pages
    MAPPED_NODES = 1            # bits of Trie.mapped
    MAPPED_LEAVES = 2


cdef size_t huge_size(size_t size) noexcept nogil:
    """Bytes actually held by an array of ``size`` bytes after on_huge_pages."""
    if size < HUGE_FROM:
        return size
    return (size + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE


cdef void *on_huge_pages(void *old, size_t size, uint32_t *mapped, uint32_t bit) noexcept nogil:
    """A copy of a large array on 2 MiB-aligned memory the kernel may back
    with huge pages: random lookups in a table of many MB otherwise miss the
    TLB at every level (in a VM each miss walks two page tables).  The memory
    is a fresh mapping, so the copy's first touch faults in huge pages; an
    aligned malloc may hand back heap pages already backed by 4 KiB ones
    (measured: the routing bench table got 2 of its 6 MiB as huge pages that
    way).  Sets ``bit`` in ``mapped`` (free with munmap); returns ``old``
    unchanged if small or on failure."""
    cdef size_t total = huge_size(size), head
    cdef char *raw
    cdef char *p
    if size < HUGE_FROM or old == NULL:
        return old
    raw = <char *>mmap(NULL, total + HUGE_PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void *>raw == MAP_FAILED:
        return old
    p = <char *>((<size_t>raw + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1))
    head = <size_t>(p - raw)
    if head:
        munmap(raw, head)
    if HUGE_PAGE - head:
        munmap(p + total, HUGE_PAGE - head)
    madvise(p, total, MADV_HUGEPAGE)    # advice only; failure is harmless
    memcpy(p, old, size)
    free(old)
    mapped[0] |= bit
    return p


cdef void release(void *p, size_t size, uint32_t mapped, uint32_t bit) noexcept nogil:
    if mapped & bit:
        munmap(p, huge_size(size))
    else:
        free(p)


cdef void trie_free(Trie *t) noexcept nogil:
    free(t.top)
    t.top = NULL
    release(t.nodes, <size_t>t.cap_nodes * node_size(t), t.mapped, MAPPED_NODES)
    release(t.leaves, <size_t>t.cap_leaves * leaf_bytes(t), t.mapped, MAPPED_LEAVES)
    t.nodes = NULL
    t.leaves = NULL
    t.mapped = 0


# -- entries: sort, de-duplicate, search -----------------------------------

cdef int cmp4(const void *pa, const void *pb) noexcept nogil:
    cdef const E4 *a = <const E4 *>pa
    cdef const E4 *b = <const E4 *>pb
    if a.net != b.net:
        return -1 if a.net < b.net else 1
    return <int>a.length - <int>b.length


cdef int cmp6(const void *pa, const void *pb) noexcept nogil:
    cdef const E6 *a = <const E6 *>pa
    cdef const E6 *b = <const E6 *>pb
    if a.net != b.net:
        return -1 if a.net < b.net else 1
    return <int>a.length - <int>b.length


cdef Py_ssize_t lower_bound(const addr_t *nets, const uint8_t *lens, Py_ssize_t n,
                            addr_t net, int length) noexcept nogil:
    """First index whose (network, length) is not below (net, length)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if nets[mid] < net or (nets[mid] == net and lens[mid] < length):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef Py_ssize_t upper_net(const addr_t *nets, Py_ssize_t n, addr_t net) noexcept nogil:
    """First index whose network is above ``net``."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if nets[mid] <= net:
            lo = mid + 1
        else:
            hi = mid
    return lo


# Kinds of the first bad entry found by the C loops of from_arrays.
cdef enum:
    BAD_NONE = 0
    BAD_LENGTH = 1
    BAD_VALUE = 2
    BAD_HOST = 3


cdef enum:
    MAX_VALUE_C = 2147483646   # == MAX_VALUE


cdef int check_entry(int bits, int length, int32_t value) noexcept nogil:
    if length > bits:
        return BAD_LENGTH
    if value < 0 or value > MAX_VALUE_C:
        return BAD_VALUE
    return BAD_NONE


cdef inline int32_t single_value(PrefixTable table, object addr, bint specific) except -2:
    """A single lookup's answer (first_match, most_specific; -1 for none,
    never -2): the address read inline, then one walk.  Inline, so that
    neither the parse nor a check of the table costs a call."""
    cdef uint32_t a4
    cdef acl_u128 a6
    cdef Pair leaf
    if table.bits == 32:
        parse4(addr, &a4)
        leaf = find_v4(&table.trie, a4)
    else:
        if table.bits != 128:
            table._built()      # raises (through the vtable: only off the hot path)
        parse6(addr, &a6)
        leaf = find_v6(&table.trie, a6)
    return leaf.specific if specific else leaf.first


cdef class PrefixTable:
    """Prefixes of one family, each with a rule index; see the module rules."""

    def __cinit__(self):
        self.family = 0
        self.bits = 0
        self.n = 0

    def __dealloc__(self):
        Py_XDECREF(self.answer)
        trie_free(&self.trie)
        free(self.nets4)
        free(self.nets6)
        free(self.lens)
        free(self.vals)

    def __init__(self, family, entries=()):
        cdef Py_ssize_t count, i
        cdef uint32_t a4
        cdef acl_u128 a6
        cdef E4 *e4 = NULL
        cdef E6 *e6 = NULL
        family = _py._check_family(family)
        bits = 32 if family == 4 else 128
        rows = []
        for net, length, value in _py._triples(entries):
            if family == 4:
                parse4(net, &a4)
                net = a4
            else:
                parse6(net, &a6)
                net = u128_to_int(a6)
            length = _py._check_length(length, family)
            value = _py._check_value(value)
            if _py._host_bits(net, length, bits):
                raise _py._host_bits_error(family, net, length)
            rows.append((net, length, value))
        count = len(rows)
        try:
            if family == 4:
                e4 = <E4 *>malloc(max(count, 1) * sizeof(E4))
                if e4 == NULL:
                    raise MemoryError(OUT_OF_MEMORY)
                for i in range(count):
                    e4[i].net = rows[i][0]
                    e4[i].length = rows[i][1]
                    e4[i].value = rows[i][2]
            else:
                e6 = <E6 *>malloc(max(count, 1) * sizeof(E6))
                if e6 == NULL:
                    raise MemoryError(OUT_OF_MEMORY)
                for i in range(count):
                    e6[i].net = int_to_u128(rows[i][0])
                    e6[i].length = rows[i][1]
                    e6[i].value = rows[i][2]
            self._setup(family)
            try:
                if family == 4:
                    self._take4(e4, count)
                else:
                    self._take6(e6, count)
            except BaseException:
                self._clear()       # never built: __init__ may be tried again
                raise
        finally:
            free(e4)
            free(e6)

    @classmethod
    def from_arrays(cls, family, networks, lengths, values):
        """Build from packed arrays: ``networks`` 4/16 bytes per entry (network
        order), ``lengths`` one byte per entry, ``values`` int32 per entry."""
        cdef PrefixTable table = cls.__new__(cls)
        cdef Py_buffer bn, bl, bv
        cdef Py_ssize_t count, i, bad_at = -1
        cdef int bad = BAD_NONE, width
        cdef const unsigned char *pn
        cdef const uint8_t *pl
        cdef const int32_t *pv
        cdef uint32_t raw
        cdef E4 *e4 = NULL
        cdef E6 *e6 = NULL
        family = _py._check_family(family)
        width = 4 if family == 4 else 16
        nets = memoryview(networks).cast("B")
        lens = memoryview(lengths).cast("B")
        vals = memoryview(values).cast("B").cast("i")
        count = len(lens)
        if len(nets) != count * width or len(vals) != count:
            raise ValueError("networks, lengths and values disagree in length")
        vals = vals.cast("B")
        table._setup(family)
        PyObject_GetBuffer(nets, &bn, PyBUF_SIMPLE)
        PyObject_GetBuffer(lens, &bl, PyBUF_SIMPLE)
        PyObject_GetBuffer(vals, &bv, PyBUF_SIMPLE)
        pn = <const unsigned char *>bn.buf
        pl = <const uint8_t *>bl.buf
        pv = <const int32_t *>bv.buf
        try:
            if family == 4:
                e4 = <E4 *>malloc(max(count, 1) * sizeof(E4))
                if e4 == NULL:
                    raise MemoryError(OUT_OF_MEMORY)
                with nogil:
                    for i in range(count):
                        memcpy(&raw, pn + 4 * i, 4)
                        e4[i].net = be32toh(raw)
                        e4[i].length = pl[i]
                        memcpy(&e4[i].value, pv + i, 4)
                        bad = check_entry(32, e4[i].length, e4[i].value)
                        if bad == BAD_NONE and e4[i].net & ~prefix_mask(<uint32_t>0, pl[i]):
                            bad = BAD_HOST
                        if bad != BAD_NONE:
                            bad_at = i
                            break
            else:
                e6 = <E6 *>malloc(max(count, 1) * sizeof(E6))
                if e6 == NULL:
                    raise MemoryError(OUT_OF_MEMORY)
                with nogil:
                    for i in range(count):
                        e6[i].net = load128(pn + 16 * i)
                        e6[i].length = pl[i]
                        memcpy(&e6[i].value, pv + i, 4)
                        bad = check_entry(128, e6[i].length, e6[i].value)
                        if bad == BAD_NONE and e6[i].net & ~prefix_mask(<acl_u128>0, pl[i]):
                            bad = BAD_HOST
                        if bad != BAD_NONE:
                            bad_at = i
                            break
            if bad_at >= 0:
                # Let the twin's checks word the error, for the same entry.
                if family == 4:
                    net, length, value = e4[bad_at].net, e4[bad_at].length, e4[bad_at].value
                else:
                    net, length, value = (u128_to_int(e6[bad_at].net), e6[bad_at].length,
                                          e6[bad_at].value)
                length = _py._check_length(length, family)
                _py._check_value(value)
                raise _py._host_bits_error(family, net, length)
            if family == 4:
                table._take4(e4, count)
            else:
                table._take6(e6, count)
        finally:
            PyBuffer_Release(&bn)
            PyBuffer_Release(&bl)
            PyBuffer_Release(&bv)
            free(e4)
            free(e6)
        return table

    cdef int _setup(self, int family) except -1:
        """Claim the table for a build (the GIL makes check and claim one
        step).  ``bits`` stays 0 until ``_finish``."""
        if self.bits:
            raise RuntimeError("PrefixTable is already built")
        if self.family:
            raise RuntimeError("PrefixTable is being built")
        self.family = family
        return 0

    cdef void _clear(self) noexcept:
        """After a failed build: free what it allocated and go back to the
        never-built state, so that ``__init__`` can run again."""
        trie_free(&self.trie)
        memset(&self.trie, 0, sizeof(Trie))
        free(self.nets4)
        free(self.nets6)
        free(self.lens)
        free(self.vals)
        self.nets4 = NULL
        self.nets6 = NULL
        self.lens = NULL
        self.vals = NULL
        memset(self.present, 0, sizeof(self.present))
        self.n = 0
        self.bits = 0
        self.family = 0

    cdef int _take4(self, E4 *e, Py_ssize_t count) except -1:
        """Sort and de-duplicate ``e`` (in place), keep it, build the trie."""
        cdef Py_ssize_t i, m = 0
        cdef int rc
        cdef bint ordered = True
        with nogil:
            for i in range(1, count):
                if cmp4(&e[i - 1], &e[i]) >= 0:
                    ordered = False
                    break
            if not ordered:
                qsort(e, count, sizeof(E4), cmp4)
            for i in range(count):
                if m and e[m - 1].net == e[i].net and e[m - 1].length == e[i].length:
                    if e[i].value < e[m - 1].value:
                        e[m - 1].value = e[i].value
                else:
                    e[m] = e[i]
                    m += 1
        self.nets4 = <uint32_t *>malloc(max(m, 1) * sizeof(uint32_t))
        self._alloc_columns(m)
        with nogil:
            for i in range(m):
                self.nets4[i] = e[i].net
                self.lens[i] = e[i].length
                self.vals[i] = e[i].value
                self.present[e[i].length >> 6] |= (<uint64_t>1) << (e[i].length & 63)
            rc = build_trie(&self.trie, self.nets4, self.lens, self.vals, m,
                            BIG_DP if m >= BIG_TABLE else 8)
        self.n = m
        return self._finish(rc)

    cdef int _take6(self, E6 *e, Py_ssize_t count) except -1:
        """Sort and de-duplicate ``e`` (in place), keep it, build the trie."""
        cdef Py_ssize_t i, m = 0
        cdef int rc
        cdef bint ordered = True
        with nogil:
            for i in range(1, count):
                if cmp6(&e[i - 1], &e[i]) >= 0:
                    ordered = False
                    break
            if not ordered:
                qsort(e, count, sizeof(E6), cmp6)
            for i in range(count):
                if m and e[m - 1].net == e[i].net and e[m - 1].length == e[i].length:
                    if e[i].value < e[m - 1].value:
                        e[m - 1].value = e[i].value
                else:
                    e[m] = e[i]
                    m += 1
        self.nets6 = <acl_u128 *>malloc(max(m, 1) * sizeof(acl_u128))
        self._alloc_columns(m)
        with nogil:
            for i in range(m):
                self.nets6[i] = e[i].net
                self.lens[i] = e[i].length
                self.vals[i] = e[i].value
                self.present[e[i].length >> 6] |= (<uint64_t>1) << (e[i].length & 63)
            rc = build_trie(&self.trie, self.nets6, self.lens, self.vals, m,
                            BIG_DP if m >= BIG_TABLE else 8)
        self.n = m
        return self._finish(rc)

    cdef int _alloc_columns(self, Py_ssize_t m) except -1:
        self.lens = <uint8_t *>malloc(max(m, 1))
        self.vals = <int32_t *>malloc(max(m, 1) * sizeof(int32_t))
        if self.lens == NULL or self.vals == NULL or (self.nets4 == NULL and self.nets6 == NULL):
            raise MemoryError(OUT_OF_MEMORY)
        return 0

    cdef int _finish(self, int rc) except -1:
        """Give back the slack of the growing arrays and mark the table
        built (``bits``, last); report a failed build."""
        cdef void *p
        if rc == TOO_LARGE:
            raise MemoryError("prefix table too large")
        if rc < 0:
            raise MemoryError(OUT_OF_MEMORY)
        # Nodes end on memory aligned to their size: a big array on its own huge
        # pages below, a small one copied here (either keeps the old array
        # if it fails: slower lookups, same answers).
        if <size_t>self.trie.n_nodes * node_size(&self.trie) >= HUGE_FROM:
            self.trie.cap_nodes = self.trie.n_nodes     # what on_huge_pages copies
        elif self.trie.n_nodes:
            aligned_nodes(&self.trie, self.trie.n_nodes)
        if self.trie.n_leaves < self.trie.cap_leaves:
            p = realloc(self.trie.leaves, self.trie.n_leaves * leaf_bytes(&self.trie))
            if p != NULL:
                self.trie.leaves = <Pair *>p
                self.trie.cap_leaves = self.trie.n_leaves
        self.trie.nodes = <Node *>on_huge_pages(
            self.trie.nodes, self.trie.cap_nodes * node_size(&self.trie), &self.trie.mapped,
            MAPPED_NODES)
        self.trie.leaves = <Pair *>on_huge_pages(
            self.trie.leaves, self.trie.cap_leaves * leaf_bytes(&self.trie), &self.trie.mapped,
            MAPPED_LEAVES)
        self.bits = self.trie.bits      # now lookups may walk it
        return 0

    # -- for other compiled modules ----------------------------------------
    cdef Pair find4(self, uint32_t addr) noexcept nogil:
        return find_v4(&self.trie, addr)

    cdef Pair find6(self, uint64_t hi, uint64_t lo) noexcept nogil:
        return trie_find(&self.trie, hi, lo)

    # -- size -----------------------------------------------------------------
    def __len__(self):
        return self.n

    @property
    def nbytes(self):
        """Bytes of C memory held: trie (top, nodes, leaves) and entry columns."""
        cdef size_t width = 4 if self.family == 4 else 16
        if not self.bits:
            return 0
        return (((<size_t>1) << self.trie.dp) // 64 * sizeof(TopWord)
                + huge_size(<size_t>self.trie.cap_nodes * node_size(&self.trie))
                + huge_size(<size_t>self.trie.cap_leaves * leaf_bytes(&self.trie))
                + <size_t>self.n * (width + sizeof(uint8_t) + sizeof(int32_t)))

    def __repr__(self):
        return f"<acl._core.PrefixTable IPv{self.family} {self.n} prefixes>"

    def __reduce_ex__(self, protocol):
        # The twin's rule (no pickle, no copy), in words of its own rather
        # than Cython's about __cinit__.
        raise TypeError(_py.NO_PICKLE)

    # -- single lookups -------------------------------------------------------
    @cython.binding(False)
    @cython.always_allow_keywords(False)
    def first_match(self, addr):
        return answer_int(&self.answer, single_value(self, addr, False))

    @cython.binding(False)
    @cython.always_allow_keywords(False)
    def most_specific(self, addr):
        return answer_int(&self.answer, single_value(self, addr, True))

    cdef int _built(self) except -1:
        if not self.bits:
            raise ValueError(_py.NOT_BUILT)
        return 0

    def exact(self, network, length):
        """The value of exactly ``network/length``, or -1."""
        cdef Py_ssize_t i
        cdef uint32_t a4
        cdef acl_u128 a6
        cdef int ln = self._prefix(network, length, &a4, &a6)
        if self.bits == 32:
            i = lower_bound(self.nets4, self.lens, self.n, a4, ln)
            if i < self.n and self.nets4[i] == a4 and self.lens[i] == ln:
                return self.vals[i]
        else:
            i = lower_bound(self.nets6, self.lens, self.n, a6, ln)
            if i < self.n and self.nets6[i] == a6 and self.lens[i] == ln:
                return self.vals[i]
        return -1

    cdef int _prefix(self, network, length, uint32_t *a4, acl_u128 *a6) except -1:
        """A query prefix, checked like an entry; returns its length."""
        self._built()
        if self.bits == 32:
            parse4(network, a4)
            net = a4[0]
        else:
            parse6(network, a6)
            net = u128_to_int(a6[0])
        length = _py._check_length(length, self.family)
        if _py._host_bits(net, length, self.bits):
            raise _py._host_bits_error(self.family, net, length)
        return length

    def covering(self, addr):
        """Every prefix covering ``addr``: ``(network, length, value)``, shortest first."""
        cdef uint32_t a4, m4
        cdef acl_u128 a6, m6
        cdef int ln
        cdef Py_ssize_t i
        out = []
        self._built()
        if self.bits == 32:
            parse4(addr, &a4)
        else:
            parse6(addr, &a6)
        for ln in range(self.bits + 1):
            if not (self.present[ln >> 6] >> (ln & 63)) & 1:
                continue
            if self.bits == 32:
                m4 = a4 & prefix_mask(<uint32_t>0, ln)
                i = lower_bound(self.nets4, self.lens, self.n, m4, ln)
                if i < self.n and self.nets4[i] == m4 and self.lens[i] == ln:
                    out.append((m4, ln, self.vals[i]))
            else:
                m6 = a6 & prefix_mask(<acl_u128>0, ln)
                i = lower_bound(self.nets6, self.lens, self.n, m6, ln)
                if i < self.n and self.nets6[i] == m6 and self.lens[i] == ln:
                    out.append((u128_to_int(m6), ln, self.vals[i]))
        return out

    def covered_by(self, network, length):
        """Every prefix inside ``network/length`` (itself included), sorted by
        (network, length)."""
        cdef uint32_t a4
        cdef acl_u128 a6
        cdef int ln = self._prefix(network, length, &a4, &a6)
        cdef Py_ssize_t lo, hi
        if self.bits == 32:
            lo = lower_bound(self.nets4, self.lens, self.n, a4, ln)
            hi = upper_net(self.nets4, self.n, a4 | ~prefix_mask(<uint32_t>0, ln))
        else:
            lo = lower_bound(self.nets6, self.lens, self.n, a6, ln)
            hi = upper_net(self.nets6, self.n, a6 | ~prefix_mask(<acl_u128>0, ln))
        return self._rows(lo, hi)

    def entries(self):
        """All entries, sorted by (network, length)."""
        self._built()
        return self._rows(0, self.n)

    cdef list _rows(self, Py_ssize_t lo, Py_ssize_t hi):
        cdef Py_ssize_t i
        if self.bits == 32:
            return [(self.nets4[i], self.lens[i], self.vals[i]) for i in range(lo, hi)]
        return [(u128_to_int(self.nets6[i]), self.lens[i], self.vals[i]) for i in range(lo, hi)]

    # -- batch lookups --------------------------------------------------------
    # The loop writes int32_t, so ``out`` must hold int32 items; the twin's
    # check, first, as the twin makes it.  Here, not in _batch: GCC compiles
    # the batch loops inlined into _batch differently as soon as its code
    # changes (measured: 1-2% slower batches).
    def first_match_batch(self, packed, out=None):
        if out is not None:
            check_int32(out)
        return self._batch(packed, out, False)

    def most_specific_batch(self, packed, out=None):
        if out is not None:
            check_int32(out)
        return self._batch(packed, out, True)

    cdef object _batch(self, object packed, object out, bint specific):
        cdef Py_ssize_t width, n
        cdef Py_buffer src, dst
        self._built()
        width = self.bits // 8
        raw = memoryview(packed).cast("B")
        if len(raw) % width:
            raise ValueError(f"packed buffer length is not a multiple of {width}")
        n = len(raw) // width
        if out is None:
            out = clone(INT_ARRAY, n, False)
        res = memoryview(out).cast("B")
        if len(res.cast("i")) < n:
            raise ValueError("output buffer too small")
        if res.readonly:
            raise TypeError("output buffer is read-only")
        PyObject_GetBuffer(raw, &src, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(res, &dst, PyBUF_WRITABLE)
            try:
                with nogil:
                    if width == 4:
                        batch_walk(&self.trie, <const unsigned char *>src.buf,
                                   <int32_t *>dst.buf, n, specific, <uint32_t>0)
                    else:
                        batch_walk(&self.trie, <const unsigned char *>src.buf,
                                   <int32_t *>dst.buf, n, specific, <acl_u128>0)
            finally:
                PyBuffer_Release(&dst)
        finally:
            PyBuffer_Release(&src)
        return out


def _trie_shape(PrefixTable table):
    """The compiled trie's shape, for tests and benchmarks (not API; the twin
    has no trie): its node and leaf counts, top level bits, whether it was
    built path-compressed, how many nodes skip bits, how many top slots are
    Lones, whether each node is one cache line, and how leaves are stored
    (8-byte Pairs or 4-byte values) and how many each node keeps in its own
    lines.  "nodes" counts Nodes / WideNodes, not the places Lones take."""
    cdef const Trie *t = &table.trie
    cdef uint32_t i, e, at = 0, nodes = 0, skipping = 0, lones = 0
    cdef uint64_t rest
    cdef size_t size = node_size(t)
    for i in range((<uint32_t>1 << t.dp) >> 6):
        lones += <uint32_t>popcount64(top_lones(&t.top[i]))
        rest = top_nodes(&t.top[i], True)
        at = t.top[i].nodes_before
        while rest:
            nodes += 1
            skipping += not t.wide and t.nodes[at].skip > 0
            at += 1
            rest &= rest - 1
    for e in range(at, t.n_nodes):
        nodes += 1
        skipping += not t.wide and t.nodes[e].skip > 0
    return {"nodes": nodes, "leaves": t.n_leaves, "top_bits": t.dp,
            "compressed": bool(t.compressed), "skipping_nodes": skipping, "lone_tops": lones,
            "wide": bool(t.wide), "node_bytes": size,
            "leaf_bytes": leaf_bytes(t), "near_leaves": near_leaves(t),
            "nodes_aligned": <size_t>t.nodes % size == 0}
