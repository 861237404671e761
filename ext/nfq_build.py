"""cffi builder (out-of-line, API mode) for ``acl._nfq``: libnetfilter_queue.

Rules of this file:

* The library is found by ``pkg-config libnetfilter_queue``; setup.py lists
  this builder in ``cffi_modules`` only when pkg-config finds it.
* Setup (open, bind a queue, copy mode, queue length, flags) goes through the
  library's classic API; it acks each step, so errors come back as ``errno``.
* The hot path is ours, in C, so that one system call moves many packets:
  ``acl_nfq_recv`` reads up to ``max`` netlink datagrams with one
  ``recvmmsg(2)``, parses each with the library's ``nfq_nlmsg_parse`` and
  writes fixed-stride records (id, hw protocol, lengths, mark, the first
  ``range`` bytes of the packet) that Python unpacks from one buffer.
* ``acl_nfq_verdict`` answers the whole last batch in **one** ``sendmsg``:
  individual NFQNL_MSG_VERDICT messages for the packets whose verdict is not
  the batch's most common one, then a single NFQNL_MSG_VERDICT_BATCH for the
  rest (the kernel applies a batch verdict to every queued id <= the one
  given; ids reach us in order, so those are exactly the packets we read).
  The messages are built with the library's ``nfq_nlmsg_*`` helpers.
* Nothing here allocates per packet; the context owns every buffer.
* A gap in the ids of one queue is a packet the kernel could not hand us
  (socket buffer full): it then dropped it, or accepted it with fail-open.
"""

from __future__ import annotations

import shlex
import subprocess

from cffi import FFI

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

struct acl_nfq;

struct acl_nfq *acl_nfq_open(uint16_t queue, uint32_t range, uint32_t maxlen,
                             uint32_t flags, int rcvbuf, int batch, int *err);
void acl_nfq_close(struct acl_nfq *q);
int acl_nfq_fd(struct acl_nfq *q);
int acl_nfq_recv(struct acl_nfq *q);
int acl_nfq_verdict(struct acl_nfq *q, const uint8_t *verdicts, int n, uint32_t mark);
int acl_nfq_verdict_all(struct acl_nfq *q, uint32_t verdict);
unsigned char *acl_nfq_records(struct acl_nfq *q);
int acl_nfq_stride(struct acl_nfq *q);
int acl_nfq_pending(struct acl_nfq *q);
uint64_t acl_nfq_gaps(struct acl_nfq *q);
uint64_t acl_nfq_nlerrors(struct acl_nfq *q);
int acl_nfq_last_nlerror(struct acl_nfq *q);
"""

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
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
    uint32_t last_id;        /* highest id seen (0: none yet) */
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
    q->slot = (int)range + ACL_NFQ_SLOT_EXTRA;
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
unsigned char *acl_nfq_records(struct acl_nfq *q) { return q->recs; }
int acl_nfq_stride(struct acl_nfq *q) { return q->stride; }
int acl_nfq_pending(struct acl_nfq *q) { return q->pending; }
uint64_t acl_nfq_gaps(struct acl_nfq *q) { return q->gaps; }
uint64_t acl_nfq_nlerrors(struct acl_nfq *q) { return q->nlerrors; }
int acl_nfq_last_nlerror(struct acl_nfq *q) { return q->last_nlerror; }

static void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Read up to `batch` datagrams without blocking; return packets recorded,
   or -errno (-EAGAIN: nothing to read; -ENOBUFS: the socket overflowed). */
int acl_nfq_recv(struct acl_nfq *q)
{
    struct nlattr *attr[NFQA_MAX + 1];
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
                memset(attr, 0, sizeof(attr));
                if (nfq_nlmsg_parse(nlh, attr) >= 0 && attr[NFQA_PACKET_HDR] != NULL) {
                    const struct nfqnl_msg_packet_hdr *ph =
                        (const struct nfqnl_msg_packet_hdr *)((const char *)attr[NFQA_PACKET_HDR] + NLA_HDRLEN);
                    unsigned char *rec = q->recs + (size_t)n * q->stride;
                    uint32_t id = ntohl(ph->packet_id);
                    uint32_t caplen = 0, origlen = 0, mark = 0;
                    if (attr[NFQA_PAYLOAD] != NULL) {
                        caplen = attr[NFQA_PAYLOAD]->nla_len - NLA_HDRLEN;
                        if (caplen > q->range) caplen = q->range;
                        memcpy(rec + ACL_NFQ_REC_HEADER,
                               (const char *)attr[NFQA_PAYLOAD] + NLA_HDRLEN, caplen);
                    }
                    origlen = caplen;
                    if (attr[NFQA_CAP_LEN] != NULL) {
                        uint32_t v;
                        memcpy(&v, (const char *)attr[NFQA_CAP_LEN] + NLA_HDRLEN, 4);
                        origlen = ntohl(v);
                    }
                    if (attr[NFQA_MARK] != NULL) {
                        uint32_t v;
                        memcpy(&v, (const char *)attr[NFQA_MARK] + NLA_HDRLEN, 4);
                        mark = ntohl(v);
                    }
                    if (q->last_id != 0 && id > q->last_id + 1)
                        q->gaps += id - q->last_id - 1;
                    if (id > q->last_id)
                        q->last_id = id;
                    put32(rec, id);
                    put16(rec + 4, ntohs(ph->hw_protocol));
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
   one sendto.  Returns 0 or -errno. */
int acl_nfq_verdict(struct acl_nfq *q, const uint8_t *verdicts, int n, uint32_t mark)
{
    int count[3] = {0, 0, 0};
    int i, major = 0;
    uint32_t major_id = 0;
    size_t at = 0;
    if (n > q->pending) n = q->pending;
    if (n <= 0) return 0;
    for (i = 0; i < n; i++) {
        uint8_t c = verdicts[i] > ACL_V_REJECT ? ACL_V_DROP : verdicts[i];
        count[c]++;
    }
    for (i = 1; i < 3; i++)
        if (count[i] > count[major]) major = i;
    for (i = 0; i < n; i++) {
        uint8_t c = verdicts[i] > ACL_V_REJECT ? ACL_V_DROP : verdicts[i];
        if (c == major) {
            if (q->ids[i] > major_id) major_id = q->ids[i];
            continue;
        }
        at = acl_nfq_put(q, at, NFQNL_MSG_VERDICT, q->ids[i], acl_nf_verdict(c), mark,
                         c == ACL_V_REJECT);
    }
    at = acl_nfq_put(q, at, NFQNL_MSG_VERDICT_BATCH, major_id, acl_nf_verdict((uint8_t)major),
                     mark, major == ACL_V_REJECT);
    q->pending = 0;
    return acl_nfq_send(q, at);
}

/* One verdict for every packet read so far (used on shutdown and errors). */
int acl_nfq_verdict_all(struct acl_nfq *q, uint32_t verdict)
{
    size_t at;
    if (q->last_id == 0) return 0;
    at = acl_nfq_put(q, 0, NFQNL_MSG_VERDICT_BATCH, q->last_id, verdict, 0, 0);
    q->pending = 0;
    return acl_nfq_send(q, at);
}
"""


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
    ffi.set_source(
        "acl._nfq",
        SOURCE,
        include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
        extra_compile_args=["-O2", *[f for f in cflags if not f.startswith("-I")]],
        libraries=[f[2:] for f in libs if f.startswith("-l")],
        library_dirs=[f[2:] for f in libs if f.startswith("-L")],
    )
    return ffi


ffibuilder = _builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
