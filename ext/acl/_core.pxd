# cython: language_level=3
# C declarations of the prefix core; behaviour and its rules live in _core.pyx.
# Other modules may cimport PrefixTable and call find4/find6 without the GIL.
# This file is published: change it only by adding -- for what other modules
# use (PrefixTable, find4/find6, Pair).  Node, WideNode, TopWord, Lone and Trie are the
# trie's own layout, read only by _core.pyx (and by bench probes built with
# it); their fields may change, as base0 did when nodes took in their first
# three leaves, Trie.top when the top level became words, Trie.wide when
# dense IPv6 tables took WideNodes, Trie.leaf_shift when tries whose
# two disciplines agree everywhere took int32_t leaves, TopWord when
# lone prefixes under the top level of path-compressed tries took Lones, and
# Trie.lones when dense tries took them too.

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from cpython.object cimport PyObject

cdef extern from *:
    """
    typedef unsigned __int128 acl_u128;
    """
    # Really 128 bits wide (GCC/Clang); Cython only needs "an unsigned integer"
    # to emit plain C operators.  Never let Cython convert it to or from a
    # Python int: split it into two uint64_t halves instead.
    ctypedef unsigned long long acl_u128

cdef struct Pair:
    int32_t first       # lowest value among prefixes covering the leaf, -1 if none
    int32_t specific    # value of the longest prefix covering the leaf, -1 if none

cdef struct Node:
    # 64 bytes, one cache line (the nodes array is 64-byte aligned).
    uint64_t vector     # bit s set: slot s descends into a child node
    uint64_t leafvec    # bit s set: slot s is a leaf starting a new run of equal leaves
    uint32_t base0      # index in Trie.leaves of this node's 4th leaf (the first 3: near)
    uint32_t base1      # index in Trie.nodes of this node's first child
    # Path compression: the `skip` (0..32) address bits that every prefix below
    # this node shares, checked before its slots; an address that differs
    # there gets near[0], the Pair covering the whole node.
    uint32_t skipval
    uint8_t skip
    uint8_t stride      # address bits this node's slots resolve, after the skip (1..6)
    uint8_t spare1
    uint8_t spare2
    # near[0]: the skip's answer; near[1..3]: the node's first 3 leaves (as
    # int32_t leaves: [0] the skip's answer, [1..7] the first 7; Trie.leaf_shift)
    Pair near[4]

cdef struct WideNode:
    # 128 bytes, two adjacent cache lines fetched together (the array is
    # 128-byte aligned): the nodes of dense IPv6 tables (Trie.wide).  Each
    # resolves one byte of the address (256 slots; the top level's bits are
    # a multiple of 8), so a /48 lies four node steps below the top, where
    # 6-bit Nodes took five.  No skip: a wide trie is never path-compressed.
    uint64_t vector[4]      # bit b of word w: slot 64w + b descends into a child node
    uint64_t leafvec[4]     # bit b of word w: slot 64w + b starts a new run of equal leaves
    uint32_t base0          # index in Trie.leaves of this node's 7th leaf (the first 6: near)
    uint32_t base1          # index in the nodes of this node's first child
    uint8_t children_before[4]  # [w]: children of the slots before word w ([0] = 0)
    uint8_t runs_before[4]      # [w]: leaf runs started in the slots before word w
    Pair near[6]            # the node's first 6 leaves (int32_t leaves: 12; Trie.leaf_shift)

cdef struct TopWord:
    # 64 slots of the top level, a node of 2**dp slots (Trie.dp bits): its
    # bit vectors in words, with the counts before each word.  A slot whose
    # bits are set in both vectors holds a Lone (Trie.lones).
    uint64_t vector         # bit b: slot 64w + b has a top node (or a Lone)
    uint64_t leafvec        # bit b: slot 64w + b is a leaf starting a new run of equal leaves
    # Index in Trie.nodes of this word's first top node: each word's Lones
    # (in slot order, four to a Node's place) end there, then its top nodes
    # follow, in slot order.
    uint32_t nodes_before
    uint32_t leaves_before  # runs started in the slots before this word

cdef struct Lone:
    # 16 bytes: a top slot whose subtree is one prefix (an IPv6 /48 alone
    # under its top slot, an IPv4 /24), in place of the Node that would
    # hold it, four to a cache line.
    uint32_t key        # the prefix's bits below the top level, then a 1 bit, left-aligned
    int32_t value       # its value
    Pair outside        # what covers the slot: the answer outside the prefix

cdef struct Trie:
    TopWord *top        # 2**dp / 64 words
    # Top nodes first: word by word, its Lones (four to a Node's place)
    # then its top nodes, each in slot order; the children of a node are
    # contiguous.
    # WideNodes, cast, in a wide trie.
    Node *nodes
    Pair *leaves        # every leaf; the leaves of one node are contiguous
    uint32_t top_leaves  # index in leaves of the top level's first leaf
    uint32_t n_nodes    # nodes in use
    uint32_t n_leaves   # leaves in use
    uint32_t cap_nodes  # nodes allocated
    uint32_t cap_leaves  # leaves allocated
    int dp              # address bits that pick a top node
    int bits            # address width: 32 or 128
    uint32_t mapped     # which of nodes/leaves live in their own mmap (huge pages)
    uint8_t compressed  # nodes skip the bits their whole subtree shares (Node.skip)
    uint8_t wide        # the nodes are WideNodes (dense IPv6 tables)
    uint8_t lones       # some top slots hold Lones (pack_lone_tops)
    # How a leaf is stored: log2 of its bytes.  3: a Pair, in general.  2:
    # one int32_t, in a trie where every leaf's first equals its specific
    # (no prefix lies inside another of higher value: tor-geoipdb's ranges,
    # blocklists); there `leaves` holds int32_t values, the near leaves of a
    # Node / WideNode are int32_t too (7 after the skip's answer / 12), and
    # a leaf pointer points at one int32_t, both disciplines' value.
    uint8_t leaf_shift

# One entry while a table is being built (sorted, then split into columns).
cdef struct E4:
    uint32_t net        # network, host order
    int32_t value       # rule index
    uint8_t length      # prefix length

cdef struct E6:
    acl_u128 net        # network
    int32_t value       # rule index
    uint8_t length      # prefix length


cdef class PrefixTable:
    cdef readonly int family    # 4 or 6 from the start of a build (0 before, and after one fails)
    # 32 or 128, set only when a build has succeeded: 0 while the table is
    # being built, never built, or its build failed.  The one field lookups
    # test, so none of them ever walks a trie that is not all there.
    cdef int bits
    cdef Trie trie              # leaf-pushed compressed trie answering both disciplines
    cdef Py_ssize_t n           # distinct prefixes held
    cdef uint32_t *nets4        # sorted networks (IPv4 tables; NULL otherwise)
    cdef acl_u128 *nets6        # sorted networks (IPv6 tables; NULL otherwise)
    cdef uint8_t *lens          # prefix lengths, parallel to the networks
    cdef int32_t *vals          # values (rule indexes), parallel to the networks
    cdef uint64_t present[3]    # bit L set: some prefix has length L (0..128)
    cdef PyObject *answer       # the int single lookups hand out again (answer.h)

    # The leaf for an address: .first and .specific, -1 when nothing covers.
    # IPv4 tables only / IPv6 tables only (hi, lo: the address's two halves).
    # By value since the ninth session (a trie of int32_t leaves has no
    # Pair to point at); no other module called them yet.
    cdef Pair find4(self, uint32_t addr) noexcept nogil
    cdef Pair find6(self, uint64_t hi, uint64_t lo) noexcept nogil

    # Private to _core.pyx.
    cdef int _setup(self, int family) except -1
    cdef int _take4(self, E4 *e, Py_ssize_t count) except -1
    cdef int _take6(self, E6 *e, Py_ssize_t count) except -1
    cdef int _alloc_columns(self, Py_ssize_t m) except -1
    cdef int _finish(self, int rc) except -1
    cdef int _built(self) except -1
    cdef int _prefix(self, network, length, uint32_t *a4, acl_u128 *a6) except -1
    cdef list _rows(self, Py_ssize_t lo, Py_ssize_t hi)
    cdef object _batch(self, object packed, object out, bint specific)
    cdef void _clear(self) noexcept   # last: the vtable slots above keep their places
