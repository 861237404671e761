"""cffi builder (out-of-line, API mode) for ``acl._nfq``: libnetfilter_queue.

Rules of this file:

* The library is found by ``pkg-config libnetfilter_queue``; setup.py lists
  this builder in ``cffi_modules`` only when pkg-config finds it.
* Setup (open, bind a queue, copy mode, queue length, flags) goes through the
  library's classic API; it acks each step, so errors come back as ``errno``.
* The hot path is ours, in C, so that one system call moves many packets:
  ``acl_nfq_recv`` reads up to ``max`` netlink datagrams with one
  ``recvmmsg(2)``, walks each message's attributes itself (``acl_nfq_attrs``:
  the four it reads, with the length checks ``nfq_nlmsg_parse`` makes; the
  library's callback walk was 3.8% of acl's perf samples answering a full
  queue) and writes
  fixed-stride records (id, hw protocol, lengths, mark, the first ``range``
  bytes of the packet) that Python unpacks from one buffer.
* ``acl_nfq_verdict`` answers the whole last batch in **one** ``sendmsg``:
  individual NFQNL_MSG_VERDICT messages for the packets whose verdict is not
  the batch's most common one, then a single NFQNL_MSG_VERDICT_BATCH for the
  rest (the kernel applies a batch verdict to every queued id <= the one
  given; ids reach us in order, so those are exactly the packets we read).
* A packet may be *held* (waiting for a client name lookup, off the loop):
  it gets no verdict with its batch and one of its own later
  (``acl_nfq_verdict_one``).  While any is held, no batch verdict may reach
  its id, so the packets from the oldest held id on are answered one by one.
  The messages are built with the library's ``nfq_nlmsg_*`` helpers.
* Nothing here allocates per packet; the context owns every buffer.
* The door's batch path (acl_door_frames, acl_door_apply) is safe for any
  input: every buffer comes with its length, every request id is checked
  against the batch it answers, and a bad record or answer gets a defined
  result (the rules above those functions).
* A gap in the ids of one queue is a packet the kernel could not hand us
  (socket buffer full): it then dropped it, or accepted it with fail-open.
  Ids are serial numbers that wrap at 2^32 (the kernel's ``nfq_id_after``),
  and a freshly bound queue numbers from 1: ids before the first one read
  are gaps too.
"""

from __future__ import annotations

import runpy
import shlex
import subprocess
from pathlib import Path

from cffi import FFI

# One declaration for cffi's cdef and for the C source.
FLOW_STRUCT = """\
struct acl_flow {
    uint8_t family;
    uint8_t proto;
    uint8_t tcp_flags;
    uint16_t sport;
    uint16_t dport;
    uint8_t src[16];
    uint8_t dst[16];
};
"""

CDEF = r"""
#define NF_DROP ...
#define NF_ACCEPT ...
#define NF_REPEAT ...
#define NFQA_CFG_F_FAIL_OPEN ...
#define NFQNL_COPY_PACKET ...
#define ACL_NFQ_REC_HEADER ...
#define ACL_V_DROP ...
#define ACL_V_ACCEPT ...
#define ACL_V_REJECT ...
#define ACL_V_HOLD ...

struct acl_nfq;

struct acl_nfq *acl_nfq_open(uint16_t queue, uint32_t range, uint32_t maxlen,
                             uint32_t flags, int rcvbuf, int batch, int *err);
void acl_nfq_close(struct acl_nfq *q);
int acl_nfq_fd(struct acl_nfq *q);
int acl_nfq_recv(struct acl_nfq *q);
int acl_nfq_verdict(struct acl_nfq *q, const uint8_t *verdicts, int n, uint32_t mark,
                    int64_t held_from);
int acl_nfq_verdict_one(struct acl_nfq *q, uint32_t id, uint8_t code, uint32_t mark);
int acl_nfq_verdict_all(struct acl_nfq *q, uint32_t verdict);
uint8_t *acl_nfq_records(struct acl_nfq *q);
int acl_nfq_stride(struct acl_nfq *q);
int acl_nfq_pending(struct acl_nfq *q);
uint64_t acl_nfq_gaps(struct acl_nfq *q);
uint64_t acl_nfq_nlerrors(struct acl_nfq *q);
int acl_nfq_last_nlerror(struct acl_nfq *q);
int acl_nfq_attrs_probe(const uint8_t *msg, uint32_t len, int32_t *out);

@FLOW@
int acl_pkt_decode(const uint8_t *buf, uint32_t len, uint32_t wire, struct acl_flow *out);

struct acl_door;
struct acl_door *acl_door_new(int batch, int nservices);
void acl_door_free(struct acl_door *d);
int acl_door_set_service(struct acl_door *d, int idx, const char *name, int len);
int acl_door_map_port(struct acl_door *d, int port, int idx);
int acl_door_map_addr_port(struct acl_door *d, const uint8_t *addr, int alen, int port, int idx);
int acl_door_frames(struct acl_door *d, const uint8_t *recs, size_t recs_len, int n, int stride,
                    uint8_t *verdicts, int nverdicts, uint8_t malformed, int reject_mark,
                    uint32_t mark);
uint8_t *acl_door_frame_buf(struct acl_door *d);
int acl_door_frame_len(struct acl_door *d);
int acl_door_record_of(struct acl_door *d, int rid);
int acl_door_apply(struct acl_door *d, const uint8_t *replies, size_t len, uint8_t *verdicts,
                   int nverdicts, uint8_t deny);
uint64_t *acl_door_counts(struct acl_door *d);
uint64_t *acl_door_errors(struct acl_door *d);
uint64_t acl_door_unmapped(struct acl_door *d);
uint64_t acl_door_looped(struct acl_door *d);
uint64_t acl_door_bad_replies(struct acl_door *d);
"""

CDEF = CDEF.replace("@FLOW@\n", FLOW_STRUCT)

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

/* record = u32 id | u16 hw_protocol | u16 caplen | u32 mark | u32 origlen | data */
#define ACL_NFQ_REC_HEADER 16
/* per-packet verdict codes given by Python */
#define ACL_V_DROP 0
#define ACL_V_ACCEPT 1
#define ACL_V_REJECT 2     /* NF_REPEAT with the reject mark: a REJECT rule answers */
#define ACL_V_HOLD 3       /* no verdict now: acl_nfq_verdict_one answers it later */

#define ACL_NFQ_SLOT_EXTRA 512   /* netlink + nfqueue attribute overhead per datagram */
#define ACL_NFQ_VERDICT_MSG 64   /* bytes one verdict message takes, mark included */

struct acl_nfq {
    struct nfq_handle *h;
    struct nfq_q_handle *qh;
    int fd;
    uint16_t queue;
    uint32_t range;
    int batch;
    int stride;
    int slot;
    int pending;             /* packets of the last batch still without verdict */
    uint32_t last_id;        /* latest id seen, as a serial number (0 before the first) */
    int seen;                /* a packet was read (last_id 0 is an id after a wrap too) */
    uint64_t gaps;           /* ids never delivered to us */
    uint64_t nlerrors;       /* NLMSG_ERROR replies (a verdict the kernel refused) */
    int last_nlerror;
    unsigned char *rx;       /* batch * slot bytes: raw datagrams */
    struct mmsghdr *msgs;
    struct iovec *iov;
    unsigned char *recs;     /* batch * stride bytes: records for Python */
    uint32_t *ids;           /* batch ids, in arrival order */
    char *tx;                /* verdict messages */
};

static int acl_nfq_dummy_cb(struct nfq_q_handle *qh, struct nfgenmsg *m,
                            struct nfq_data *d, void *data)
{
    (void)qh; (void)m; (void)d; (void)data;
    return 0;
}

void acl_nfq_close(struct acl_nfq *q)
{
    if (q == NULL)
        return;
    if (q->qh != NULL)
        nfq_destroy_queue(q->qh);
    if (q->h != NULL)
        nfq_close(q->h);
    free(q->rx); free(q->msgs); free(q->iov); free(q->recs); free(q->ids); free(q->tx);
    free(q);
}

struct acl_nfq *acl_nfq_open(uint16_t queue, uint32_t range, uint32_t maxlen,
                             uint32_t flags, int rcvbuf, int batch, int *err)
{
    struct acl_nfq *q = calloc(1, sizeof(*q));
    int i;
    if (q == NULL) { *err = ENOMEM; return NULL; }
    if (batch < 1) batch = 1;
    if (range < 64) range = 64;
    if (range > 65535) range = 65535;
    q->queue = queue;
    q->range = range;
    q->batch = batch;
    q->stride = (ACL_NFQ_REC_HEADER + (int)range + 7) & ~7;
    q->slot = ((int)range + ACL_NFQ_SLOT_EXTRA + 7) & ~7;   /* 8-aligned: headers read in place */
    q->rx = malloc((size_t)batch * q->slot);
    q->msgs = calloc(batch, sizeof(struct mmsghdr));
    q->iov = calloc(batch, sizeof(struct iovec));
    q->recs = calloc(batch, q->stride);
    q->ids = calloc(batch, sizeof(uint32_t));
    q->tx = malloc((size_t)(batch + 1) * ACL_NFQ_VERDICT_MSG);
    if (!q->rx || !q->msgs || !q->iov || !q->recs || !q->ids || !q->tx) {
        *err = ENOMEM; acl_nfq_close(q); return NULL;
    }
    for (i = 0; i < batch; i++) {
        q->iov[i].iov_base = q->rx + (size_t)i * q->slot;
        q->iov[i].iov_len = q->slot;
        q->msgs[i].msg_hdr.msg_iov = &q->iov[i];
        q->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    errno = 0;
    q->h = nfq_open();
    if (q->h == NULL) goto fail;
    q->qh = nfq_create_queue(q->h, queue, acl_nfq_dummy_cb, NULL);
    if (q->qh == NULL) goto fail;
    if (nfq_set_mode(q->qh, NFQNL_COPY_PACKET, range) < 0) goto fail;
    if (maxlen && nfq_set_queue_maxlen(q->qh, maxlen) < 0) goto fail;
    /* flags: set exactly the ones asked, clear the others we know */
    if (nfq_set_queue_flags(q->qh, NFQA_CFG_F_FAIL_OPEN, flags & NFQA_CFG_F_FAIL_OPEN) < 0)
        goto fail;
    q->fd = nfq_fd(q->h);
    if (rcvbuf > 0) {
        /* FORCE needs CAP_NET_ADMIN (which binding a queue needs anyway);
           fall back to the rmem_max-capped option. */
        if (setsockopt(q->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
            setsockopt(q->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    }
    return q;
fail:
    *err = errno ? errno : EIO;
    acl_nfq_close(q);
    return NULL;
}

int acl_nfq_fd(struct acl_nfq *q) { return q->fd; }
uint8_t *acl_nfq_records(struct acl_nfq *q) { return q->recs; }
int acl_nfq_stride(struct acl_nfq *q) { return q->stride; }
int acl_nfq_pending(struct acl_nfq *q) { return q->pending; }
uint64_t acl_nfq_gaps(struct acl_nfq *q) { return q->gaps; }
uint64_t acl_nfq_nlerrors(struct acl_nfq *q) { return q->nlerrors; }
int acl_nfq_last_nlerror(struct acl_nfq *q) { return q->last_nlerror; }

static void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* The attributes of one NFQNL_MSG_PACKET message that acl reads, found as
   nfq_nlmsg_parse finds them (libmnl's mnl_attr_parse and the library's
   checks): the walk starts after the nfgenmsg header and stops quietly at an
   attribute shorter than its header or running past the message; a type is
   its low 14 bits; the packet header must be exactly its (packed, 7-byte)
   struct, a mark or cap_len exactly 4 bytes, or the message is refused (-1).
   Two differences, neither reached by what the kernel sends: attributes acl
   does not read are not checked, and the walk ends at the message's stated
   length where the library rounds it up to 4 (and would read bytes past it)
   -- the kernel's one unpadded attribute, the payload, is its last, so both
   walks end with it. */
struct acl_nfq_pkt {
    const struct nfqnl_msg_packet_hdr *hdr;
    const unsigned char *payload;
    uint32_t payload_len;
    const unsigned char *cap_len;
    const unsigned char *mark;
};

static int acl_nfq_attrs(const struct nlmsghdr *nlh, struct acl_nfq_pkt *p)
{
    const unsigned char *at, *end = (const unsigned char *)nlh + nlh->nlmsg_len;
    memset(p, 0, sizeof(*p));
    if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg)))
        return 0;                               /* no attributes: not a packet */
    at = (const unsigned char *)NLMSG_DATA(nlh) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
    while (end - at >= (ptrdiff_t)NLA_HDRLEN) {
        struct nlattr a;
        uint32_t len;
        memcpy(&a, at, sizeof(a));
        if (a.nla_len < NLA_HDRLEN || a.nla_len > end - at)
            break;
        len = a.nla_len - NLA_HDRLEN;
        switch (a.nla_type & NLA_TYPE_MASK) {
        case NFQA_PACKET_HDR:
            if (len != sizeof(struct nfqnl_msg_packet_hdr)) return -1;
            p->hdr = (const struct nfqnl_msg_packet_hdr *)(at + NLA_HDRLEN);
            break;
        case NFQA_PAYLOAD:
            p->payload = at + NLA_HDRLEN;
            p->payload_len = len;
            break;
        case NFQA_CAP_LEN:
            if (len != 4) return -1;
            p->cap_len = at + NLA_HDRLEN;
            break;
        case NFQA_MARK:
            if (len != 4) return -1;
            p->mark = at + NLA_HDRLEN;
            break;
        default:
            break;
        }
        at += NLA_ALIGN(a.nla_len);
    }
    return 0;
}

/* acl_nfq_attrs on the bytes of one message, for tests (the differential
   against the library's nfq_nlmsg_parse).  out[0..5): offsets in msg of the
   packet header, the payload, the cap_len and the mark data (-1: absent) and
   the payload's length.  Returns acl_nfq_attrs's answer, or -2 when len does
   not hold the message its header describes. */
int acl_nfq_attrs_probe(const uint8_t *msg, uint32_t len, int32_t *out)
{
    struct nlmsghdr h;
    struct acl_nfq_pkt p;
    int r, i;
    for (i = 0; i < 5; i++) out[i] = -1;
    if (len < sizeof(h)) return -2;
    memcpy(&h, msg, sizeof(h));
    if (h.nlmsg_len < sizeof(h) || h.nlmsg_len > len || ((uintptr_t)msg & 3) != 0) return -2;
    r = acl_nfq_attrs((const struct nlmsghdr *)msg, &p);
    if (p.hdr) out[0] = (int32_t)((const uint8_t *)p.hdr - msg);
    if (p.payload) { out[1] = (int32_t)(p.payload - msg); out[4] = (int32_t)p.payload_len; }
    if (p.cap_len) out[2] = (int32_t)(p.cap_len - msg);
    if (p.mark) out[3] = (int32_t)(p.mark - msg);
    return r;
}

/* Read up to `batch` datagrams without blocking; return packets recorded,
   or -errno (-EAGAIN: nothing to read; -ENOBUFS: the socket overflowed). */
int acl_nfq_recv(struct acl_nfq *q)
{
    int got, i, n = 0;
    got = recvmmsg(q->fd, q->msgs, q->batch, MSG_DONTWAIT, NULL);
    if (got < 0)
        return -errno;
    for (i = 0; i < got; i++) {
        const unsigned char *base = q->rx + (size_t)i * q->slot;
        int left = (int)q->msgs[i].msg_len;
        const struct nlmsghdr *nlh = (const struct nlmsghdr *)base;
        while (left >= (int)sizeof(struct nlmsghdr) && nlh->nlmsg_len >= sizeof(struct nlmsghdr)
               && (int)nlh->nlmsg_len <= left) {
            if (nlh->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = (const struct nlmsgerr *)NLMSG_DATA(nlh);
                if (nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)) && e->error != 0) {
                    q->nlerrors++;
                    q->last_nlerror = -e->error;
                }
            } else if (nlh->nlmsg_type == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)
                       && n < q->batch) {
                struct acl_nfq_pkt pkt;
                if (acl_nfq_attrs(nlh, &pkt) == 0 && pkt.hdr != NULL) {
                    unsigned char *rec = q->recs + (size_t)n * q->stride;
                    uint32_t id = ntohl(pkt.hdr->packet_id);
                    uint32_t caplen = 0, origlen = 0, mark = 0;
                    int32_t step;
                    if (pkt.payload != NULL) {
                        caplen = pkt.payload_len;
                        if (caplen > q->range) caplen = q->range;
                        memcpy(rec + ACL_NFQ_REC_HEADER, pkt.payload, caplen);
                    }
                    origlen = caplen;
                    if (pkt.cap_len != NULL) {
                        uint32_t v;
                        memcpy(&v, pkt.cap_len, 4);
                        origlen = ntohl(v);
                    }
                    if (pkt.mark != NULL) {
                        uint32_t v;
                        memcpy(&v, pkt.mark, 4);
                        mark = ntohl(v);
                    }
                    /* serial numbers, as the kernel compares them: a freshly
                       bound queue counts from 1, and after 2^32 - 1 comes 0 */
                    step = (int32_t)(id - q->last_id);
                    if (step > 1)
                        q->gaps += (uint32_t)step - 1;
                    if (step > 0)
                        q->last_id = id;
                    put32(rec, id);
                    put16(rec + 4, ntohs(pkt.hdr->hw_protocol));
                    put16(rec + 6, (uint16_t)caplen);
                    put32(rec + 8, mark);
                    put32(rec + 12, origlen);
                    q->ids[n++] = id;
                }
            }
            left -= NLMSG_ALIGN(nlh->nlmsg_len);
            nlh = (const struct nlmsghdr *)((const char *)nlh + NLMSG_ALIGN(nlh->nlmsg_len));
        }
    }
    q->pending = n;
    if (n > 0)
        q->seen = 1;
    return n;
}

static int acl_nfq_send(struct acl_nfq *q, size_t len)
{
    struct sockaddr_nl kernel;
    ssize_t sent;
    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    do {
        sent = sendto(q->fd, q->tx, len, 0, (struct sockaddr *)&kernel, sizeof(kernel));
    } while (sent < 0 && errno == EINTR);
    return sent < 0 ? -errno : 0;
}

static size_t acl_nfq_put(struct acl_nfq *q, size_t at, int type, uint32_t id,
                          uint32_t verdict, uint32_t mark, int with_mark)
{
    struct nlmsghdr *nlh = nfq_nlmsg_put(q->tx + at, type, q->queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, (int)verdict);
    if (with_mark)
        nfq_nlmsg_verdict_put_mark(nlh, mark);
    return at + NLMSG_ALIGN(nlh->nlmsg_len);
}

static uint32_t acl_nf_verdict(uint8_t code)
{
    return code == ACL_V_ACCEPT ? NF_ACCEPT : code == ACL_V_REJECT ? NF_REPEAT : NF_DROP;
}

/* Answer the n packets of the last batch (verdicts[i] for the i-th record);
   one sendto.  A packet coded ACL_V_HOLD gets no verdict now.  held_from is
   the oldest id still held (this batch's or an earlier one's; -1: none): the
   batch verdict, which the kernel applies to every queued id up to its own,
   must stay before it, so packets from there on are answered one by one.
   Ids are serial numbers that wrap at 2^32, compared as the kernel does.
   Returns 0 or -errno. */
int acl_nfq_verdict(struct acl_nfq *q, const uint8_t *verdicts, int n, uint32_t mark,
                    int64_t held_from)
{
    int count[3] = {0, 0, 0};
    int i, major = 0;
    uint32_t major_id = 0;
    int have_major = 0;
    size_t at = 0;
    if (n > q->pending) n = q->pending;
    if (n <= 0) return 0;
    for (i = 0; i < n; i++) {
        uint8_t c = verdicts[i] > ACL_V_HOLD ? ACL_V_DROP : verdicts[i];
        if (c != ACL_V_HOLD) count[c]++;
    }
    for (i = 1; i < 3; i++)
        if (count[i] > count[major]) major = i;
    for (i = 0; i < n; i++) {
        uint8_t c = verdicts[i] > ACL_V_HOLD ? ACL_V_DROP : verdicts[i];
        if (c == ACL_V_HOLD) continue;
        /* ids are serial numbers (they wrap at 2^32): "before" as the kernel says it */
        if (c == major && (held_from < 0 || (int32_t)(q->ids[i] - (uint32_t)held_from) < 0)) {
            major_id = q->ids[i];          /* records are in arrival order: the latest */
            have_major = 1;
            continue;
        }
        at = acl_nfq_put(q, at, NFQNL_MSG_VERDICT, q->ids[i], acl_nf_verdict(c), mark,
                         c == ACL_V_REJECT);
    }
    if (have_major)
        at = acl_nfq_put(q, at, NFQNL_MSG_VERDICT_BATCH, major_id,
                         acl_nf_verdict((uint8_t)major), mark, major == ACL_V_REJECT);
    q->pending = 0;
    return at ? acl_nfq_send(q, at) : 0;
}

/* The verdict of one held packet, by id.  Returns 0 or -errno. */
int acl_nfq_verdict_one(struct acl_nfq *q, uint32_t id, uint8_t code, uint32_t mark)
{
    uint8_t c = code > ACL_V_REJECT ? ACL_V_DROP : code;
    size_t at = acl_nfq_put(q, 0, NFQNL_MSG_VERDICT, id, acl_nf_verdict(c), mark,
                            c == ACL_V_REJECT);
    return acl_nfq_send(q, at);
}

/* ---- the packet codec: the C twin of acl/wire/packet.py's decode_raw ----
   Same checks in the same order, so both give the same key or the same
   error code (1 truncated, 2 version, 3 header, 4 length, 5 fragment,
   6 protocol: ERROR_CODES order + 1).  tests/nfq/test_fastpath.py holds
   them to it on fuzzed bytes. */
@FLOW@

#define E_TRUNCATED 1
#define E_VERSION 2
#define E_HEADER 3
#define E_LENGTH 4
#define E_FRAGMENT 5
#define E_PROTOCOL 6
#define ACL_MAX_EXTENSIONS 8

int acl_pkt_decode(const uint8_t *b, uint32_t len, uint32_t wire, struct acl_flow *out)
{
    uint32_t at, end;
    unsigned proto;
    if (wire < len) wire = len;
    if (len < 1) return E_TRUNCATED;
    if ((b[0] >> 4) == 4) {
        uint32_t ihl, total;
        if (len < 20) return E_TRUNCATED;
        ihl = (b[0] & 0x0F) * 4u;
        if (ihl < 20) return E_HEADER;
        total = ((uint32_t)b[2] << 8) | b[3];
        if (total < ihl) return E_LENGTH;
        if (total > wire) return E_LENGTH;
        if ((((uint32_t)b[6] << 8) | b[7]) & 0x1FFF) return E_FRAGMENT;
        proto = b[9];
        out->family = 4;
        memset(out->src, 0, 16); memset(out->dst, 0, 16);
        memcpy(out->src, b + 12, 4);
        memcpy(out->dst, b + 16, 4);
        at = ihl; end = total;
    } else if ((b[0] >> 4) == 6) {
        int i;
        if (len < 40) return E_TRUNCATED;
        end = 40 + (((uint32_t)b[4] << 8) | b[5]);
        if (end > wire) return E_LENGTH;
        proto = b[6];
        out->family = 6;
        memcpy(out->src, b + 8, 16);
        memcpy(out->dst, b + 24, 16);
        at = 40;
        for (i = 0; i < ACL_MAX_EXTENSIONS; i++) {
            unsigned nxt;
            uint32_t size;
            if (proto == 0 || proto == 43 || proto == 60) {
                if (len < at + 2) return E_TRUNCATED;
                nxt = b[at]; size = (b[at + 1] + 1u) * 8u;
            } else if (proto == 44) {
                if (len < at + 8) return E_TRUNCATED;
                nxt = b[at]; size = 8;
                if (((((uint32_t)b[at + 2] << 8) | b[at + 3]) >> 3) != 0) return E_FRAGMENT;
            } else if (proto == 51) {
                if (len < at + 2) return E_TRUNCATED;
                nxt = b[at]; size = (b[at + 1] + 2u) * 4u;
            } else {
                break;
            }
            if (at + size > end) return E_LENGTH;
            proto = nxt; at += size;
        }
        if (i == ACL_MAX_EXTENSIONS) return E_HEADER;
    } else {
        return E_VERSION;
    }
    if (proto == 6) {
        if (len < at + 14) return E_TRUNCATED;
        if (end < at + 20) return E_LENGTH;
        if ((b[at + 12] >> 4) < 5) return E_HEADER;
        out->tcp_flags = b[at + 13];
    } else if (proto == 17) {
        if (len < at + 8) return E_TRUNCATED;
        if (end < at + 8) return E_LENGTH;
        if (((((uint32_t)b[at + 4]) << 8) | b[at + 5]) < 8) return E_HEADER;
        out->tcp_flags = 0;
    } else {
        return E_PROTOCOL;
    }
    out->proto = (uint8_t)proto;
    out->sport = (uint16_t)((b[at] << 8) | b[at + 1]);
    out->dport = (uint16_t)((b[at + 2] << 8) | b[at + 3]);
    return 0;
}

/* ---- the door's batch path: records -> DECIDE frames -> verdicts ----
   acl_door_frames decodes each record, maps its port (and address) to a
   service, and writes one binary-protocol DECIDE frame (docs/protocol.md)
   per packet to decide, request id = record index; the engine's compiled
   BatchPlan answers them.  Packets not to decide get their verdict here.
   acl_door_apply turns DECISION frames back into verdict codes and counts
   (service, verdict, reason).

   Both are safe for any bytes and any numbers, at the cost of a compare per
   call or per record (never per byte):
   * Every buffer comes with its length, and nothing is read or written past
     it.  A call whose numbers do not fit its buffers -- n < 0, n past the
     door's batch or past the verdicts, a stride shorter than a record
     header, n records past the records' bytes, a verdict code other than
     DROP, ACCEPT or REJECT -- changes nothing and returns -EINVAL; the
     caller then gives the whole batch its malformed verdict
     (acl/serve/nfqueue.py).
   * A record whose captured length passes its stride holds fewer bytes
     than it says: decode error 1 (truncated), as for a packet cut short
     (the Python path says the same).
   * A packet sent to the engine has the malformed verdict until its answer
     comes: a packet whose answer is missing or bad keeps that fail-safe
     verdict, as on the Python path.  acl_door_apply takes an answer only
     for a packet of the last acl_door_frames batch that was sent and is
     not answered yet, with a verdict and a reason it knows.  Any other
     whole frame is skipped and counted (acl_door_bad_replies).  Replies
     that end inside a frame, or a frame too short for a verdict and a
     reason, cannot be read on: -EINVAL, the frames before it applied. */
#define ACL_NREASONS 16
#define ACL_FRAME_MAX (12 + 10 + 32 + 255)
#define ACL_DECISION_MIN 10      /* frame length of a DECISION up to its reason */

struct acl_addr_port { uint8_t alen; uint8_t addr[16]; uint16_t port; int idx; };

struct acl_door {
    int batch;
    int nservices;
    char (*names)[256];
    uint8_t *name_len;
    int16_t *port_svc;            /* 65536 entries, -1: unmapped */
    struct acl_addr_port *ap;
    int nap, cap_ap;
    uint8_t *frames;
    int frame_len;
    int n;                        /* records of the last acl_door_frames batch */
    int16_t *svc_of;              /* per record of it: the service of a packet
                                     waiting for its answer, else -1 */
    uint64_t *counts;             /* nservices * 3 * ACL_NREASONS */
    uint64_t errors[8];
    uint64_t unmapped, looped, bad_replies;
};

void acl_door_free(struct acl_door *d)
{
    if (d == NULL) return;
    free(d->names); free(d->name_len); free(d->port_svc); free(d->ap); free(d->frames);
    free(d->svc_of); free(d->counts); free(d);
}

/* NULL when out of memory or for more services than an int16_t numbers. */
struct acl_door *acl_door_new(int batch, int nservices)
{
    struct acl_door *d;
    int i;
    if (nservices > INT16_MAX) return NULL;
    d = calloc(1, sizeof(*d));
    if (d == NULL) return NULL;
    if (batch < 1) batch = 1;
    if (nservices < 1) nservices = 1;
    d->batch = batch;
    d->nservices = nservices;
    d->names = calloc(nservices, 256);
    d->name_len = calloc(nservices, 1);
    d->port_svc = malloc(65536 * sizeof(int16_t));
    d->frames = malloc((size_t)batch * ACL_FRAME_MAX);
    d->svc_of = calloc(batch, sizeof(int16_t));
    d->counts = calloc((size_t)nservices * 3 * ACL_NREASONS, sizeof(uint64_t));
    if (!d->names || !d->name_len || !d->port_svc || !d->frames || !d->svc_of || !d->counts) {
        acl_door_free(d);
        return NULL;
    }
    for (i = 0; i < 65536; i++) d->port_svc[i] = -1;
    return d;
}

int acl_door_set_service(struct acl_door *d, int idx, const char *name, int len)
{
    if (idx < 0 || idx >= d->nservices || len < 1 || len > 255) return -EINVAL;
    memcpy(d->names[idx], name, len);
    d->name_len[idx] = (uint8_t)len;
    return 0;
}

int acl_door_map_port(struct acl_door *d, int port, int idx)
{
    if (port < 0 || port > 65535 || idx < 0 || idx >= d->nservices) return -EINVAL;
    d->port_svc[port] = (int16_t)idx;
    return 0;
}

int acl_door_map_addr_port(struct acl_door *d, const uint8_t *addr, int alen, int port, int idx)
{
    if ((alen != 4 && alen != 16) || port < 0 || port > 65535 || idx < 0 || idx >= d->nservices)
        return -EINVAL;
    if (d->nap == d->cap_ap) {
        int cap = d->cap_ap ? d->cap_ap * 2 : 8;
        struct acl_addr_port *p = realloc(d->ap, cap * sizeof(*p));
        if (p == NULL) return -ENOMEM;
        d->ap = p; d->cap_ap = cap;
    }
    memset(&d->ap[d->nap], 0, sizeof(d->ap[0]));
    d->ap[d->nap].alen = (uint8_t)alen;
    memcpy(d->ap[d->nap].addr, addr, alen);
    d->ap[d->nap].port = (uint16_t)port;
    d->ap[d->nap].idx = idx;
    d->nap++;
    return 0;
}

static int acl_door_service(struct acl_door *d, const struct acl_flow *f)
{
    int i, alen = f->family == 4 ? 4 : 16;
    for (i = 0; i < d->nap; i++)
        if (d->ap[i].port == f->dport && d->ap[i].alen == alen
            && memcmp(d->ap[i].addr, f->dst, alen) == 0)
            return d->ap[i].idx;
    return d->port_svc[f->dport];
}

static void le16(uint8_t *p, uint32_t v) { p[0] = v & 0xFF; p[1] = (v >> 8) & 0xFF; }
static void le32(uint8_t *p, uint32_t v) { le16(p, v & 0xFFFF); le16(p + 2, v >> 16); }
static uint32_t get_le32(const uint8_t *p)
{
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The n records of recs (recs_len bytes, stride apart) -> verdicts[0..n)
   and DECIDE frames (acl_door_frame_buf / _frame_len).  Returns the number
   of frames, or -EINVAL (the rules above). */
int acl_door_frames(struct acl_door *d, const uint8_t *recs, size_t recs_len, int n, int stride,
                    uint8_t *verdicts, int nverdicts, uint8_t malformed, int reject_mark,
                    uint32_t mark)
{
    int i, frames = 0;
    uint32_t room;
    size_t w = 0;
    d->n = 0;
    d->frame_len = 0;
    if (n < 0 || n > d->batch || n > nverdicts || stride < ACL_NFQ_REC_HEADER
        || (size_t)n * (size_t)stride > recs_len || malformed > ACL_V_REJECT)
        return -EINVAL;
    room = (uint32_t)(stride - ACL_NFQ_REC_HEADER);   /* packet bytes a record holds */
    for (i = 0; i < n; i++) {
        const uint8_t *rec = recs + (size_t)i * stride;
        uint16_t caplen;
        uint32_t pmark, wire;
        struct acl_flow f;
        int rc, svc, alen;
        uint8_t *fr;
        memcpy(&caplen, rec + 6, 2);
        memcpy(&pmark, rec + 8, 4);
        memcpy(&wire, rec + 12, 4);
        d->svc_of[i] = -1;
        verdicts[i] = ACL_V_DROP;
        if (reject_mark && pmark == mark) {   /* came back marked: no REJECT rule */
            d->looped++;
            continue;
        }
        rc = caplen > room ? E_TRUNCATED
                           : acl_pkt_decode(rec + ACL_NFQ_REC_HEADER, caplen, wire, &f);
        if (rc != 0) {
            d->errors[rc]++;
            verdicts[i] = malformed;
            continue;
        }
        svc = acl_door_service(d, &f);
        if (svc < 0) {
            d->unmapped++;
            verdicts[i] = ACL_V_ACCEPT;
            continue;
        }
        d->svc_of[i] = (int16_t)svc;
        verdicts[i] = malformed;              /* until its answer comes */
        alen = f.family == 4 ? 4 : 16;
        fr = d->frames + w;
        le32(fr, 8 + 10 + 2 * alen + d->name_len[svc]);
        fr[4] = 1; fr[5] = 0x01; fr[6] = 0; fr[7] = 0;
        le32(fr + 8, (uint32_t)i);
        fr[12] = f.family; fr[13] = f.family;
        le16(fr + 14, f.sport);
        le16(fr + 16, f.dport);
        fr[18] = d->name_len[svc]; fr[19] = 0; fr[20] = 0; fr[21] = 0;
        memcpy(fr + 22, f.src, alen);
        memcpy(fr + 22 + alen, f.dst, alen);
        memcpy(fr + 22 + 2 * alen, d->names[svc], d->name_len[svc]);
        w += 22 + 2 * alen + d->name_len[svc];
        frames++;
    }
    d->n = n;
    d->frame_len = (int)w;
    return frames;
}

uint8_t *acl_door_frame_buf(struct acl_door *d) { return d->frames; }
int acl_door_frame_len(struct acl_door *d) { return d->frame_len; }
/* The record a request id stands for, or -1 when it names none of the batch. */
int acl_door_record_of(struct acl_door *d, int rid) { return rid >= 0 && rid < d->n ? rid : -1; }
uint64_t *acl_door_counts(struct acl_door *d) { return d->counts; }
uint64_t *acl_door_errors(struct acl_door *d) { return d->errors; }
uint64_t acl_door_unmapped(struct acl_door *d) { return d->unmapped; }
uint64_t acl_door_looped(struct acl_door *d) { return d->looped; }
uint64_t acl_door_bad_replies(struct acl_door *d) { return d->bad_replies; }

/* DECISION frames (request id = record index) -> verdict codes + counts.
   Returns how many answers were applied, or -EINVAL (the rules above). */
int acl_door_apply(struct acl_door *d, const uint8_t *r, size_t len, uint8_t *verdicts,
                   int nverdicts, uint8_t deny)
{
    size_t at = 0;
    int applied = 0;
    if (nverdicts < d->n || deny > ACL_V_REJECT) return -EINVAL;
    while (at < len) {
        uint32_t flen, rid;
        uint8_t verdict, reason;
        int svc;
        if (len - at < 4 + ACL_DECISION_MIN) return -EINVAL;
        flen = get_le32(r + at);
        if (flen < ACL_DECISION_MIN || flen > len - at - 4) return -EINVAL;
        rid = get_le32(r + at + 8);
        verdict = r[at + 12];
        reason = r[at + 13];
        svc = rid < (uint32_t)d->n ? d->svc_of[rid] : -1;
        if (r[at + 4] != 1 || r[at + 5] != 0x81 || svc < 0 || verdict > 2
            || reason >= ACL_NREASONS) {
            d->bad_replies++;
        } else {
            verdicts[rid] = verdict == 0 ? deny : ACL_V_ACCEPT;
            d->counts[((size_t)svc * 3 + verdict) * ACL_NREASONS + reason]++;
            d->svc_of[rid] = -1;              /* answered: another answer is a bad one */
            applied++;
        }
        at += 4 + (size_t)flen;
    }
    return applied;
}

/* One verdict for every packet read so far (used on shutdown and errors). */
int acl_nfq_verdict_all(struct acl_nfq *q, uint32_t verdict)
{
    size_t at;
    if (!q->seen) return 0;
    at = acl_nfq_put(q, 0, NFQNL_MSG_VERDICT_BATCH, q->last_id, verdict, 0, 0);
    q->pending = 0;
    return acl_nfq_send(q, at);
}
"""
SOURCE = SOURCE.replace("@FLOW@\n", FLOW_STRUCT)


def _pkg_config(*args: str) -> list[str]:
    out = subprocess.run(
        ["pkg-config", *args, "libnetfilter_queue"], capture_output=True, text=True, check=True
    ).stdout
    return shlex.split(out)


def _builder() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    # setup.py's ACL_SANITIZE build, for this module too: ext/sanitizer.py's
    # list, run by its path (that file's rules; cffi runs this file by path)
    sanitize = runpy.run_path(str(Path(__file__).resolve().with_name("sanitizer.py")))["flags"]()
    ffi.set_source(
        "acl._nfq",
        SOURCE,
        include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
        extra_compile_args=["-O2", *[f for f in cflags if not f.startswith("-I")], *sanitize],
        extra_link_args=sanitize,
        libraries=[f[2:] for f in libs if f.startswith("-l")],
        library_dirs=[f[2:] for f in libs if f.startswith("-L")],
    )
    return ffi


ffibuilder = _builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
