/* The binary protocol, version 1 (docs/protocol.md), client side.
 *
 * Frame: u32 length (bytes after this field, 8..65532; a DECISION up to
 * 1 MiB - 4, for long tcprules environments), u8 version (1), u8 type,
 * u16 flags, u32 request_id, payload.  Little-endian throughout.
 *
 * acl-wrap sends one DECIDE (0x01, flags LEASE = bit 0 and SEAL = bit 3)
 * and reads exactly one frame back.  SEAL because this connection crosses
 * exec into the server and everything it forks (a login shell, say): once
 * the sidecar has answered, the connection takes nothing but RELEASE of its
 * own lease, so whoever inherits it cannot ask for other addresses' slots.
 * A sidecar older than SEAL refuses the flag (ERROR 3) and the fail mode
 * applies: acl-wrap and the sidecar are upgraded together.  Under a UCSPI
 * server that named the client (struct names: TCPREMOTEHOST / TCPREMOTEINFO
 * of this connection) the DECIDE also has flag UCSPI (bit 1), the host in
 * host_len and, when TCPREMOTEINFO is set (even to ""), flag INFO (bit 2)
 * and the info in user_len; without either name neither flag is sent
 * (host_len = user_len = 0 means the same to the sidecar).  Every DECIDE
 * has flag NAMES (bit 4): the DECISION then says, in a section after its
 * options, which of the client's and the server's names the rules made
 * the sidecar look up, and what they were -- tcpd's %h/%c/%H/%s and its
 * "connect from" line show a name looked up while matching (main.c).  A
 * DECISION without that section (flag NAMES clear) means nothing was looked
 * up.  Anything other
 * than a well-formed DECISION (0x81) echoing our
 * request id -- an ERROR (0xFF) frame, a short read, a bad length, a count
 * that runs past the payload, trailing bytes, a NUL inside a name -- is
 * "the sidecar is not usable", and the caller applies its fail mode.  No
 * byte of a reply is trusted before its bounds are checked.
 *
 * The whole exchange (connect, write, read) runs under one deadline.  The
 * socket is opened close-on-exec; main.c clears that flag only right before
 * it execs the real server, so spawned shell commands never inherit it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "wrap.h"

#define T_DECIDE 0x01
#define T_DECISION 0x81
#define T_ERROR 0xFF
#define FLAG_LEASE 0x0001
#define FLAG_UCSPI 0x0002
#define FLAG_INFO 0x0004
#define FLAG_SEAL 0x0008
#define FLAG_NAMES 0x0010           /* DECIDE: tell us the names deciding looked up */
#define REPLY_NAMES 0x0001          /* DECISION: ... and here they are */
#define FRAME_MAX 65536             /* whole frame, length field included */
#define DECISION_MAX (1 << 20)      /* a DECISION frame, the same way */
#define ITEMS_MAX 4096

static void put16(unsigned char *p, unsigned v) { p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; }

static void put32(unsigned char *p, uint32_t v)
{
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

static unsigned get16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }

static uint32_t get32(const unsigned char *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }

static uint64_t get64(const unsigned char *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static int wire_family(const struct endpoint *e)
{
    if (!e->known)
        return 0;
    return e->family == AF_INET ? 4 : 6;
}

size_t encode_decide(unsigned char *buf, size_t cap, const struct conn *c,
                     uint32_t request_id, int lease, const struct names *n)
{
    size_t slen = strlen(c->daemon), o = 12, alen, need;
    size_t hlen = n && n->host ? strlen(n->host) : 0, ulen = n && n->info ? strlen(n->info) : 0;
    int cf = wire_family(&c->client), sf = wire_family(&c->server);
    unsigned flags = lease ? FLAG_LEASE | FLAG_SEAL : 0;   /* the lease's connection crosses exec */

    flags |= FLAG_NAMES;

    if (slen < 1 || slen > 255 || cf == 0 || hlen > 255 || ulen > 255)
        return 0;
    if (n && (n->host || n->info))
        flags |= FLAG_UCSPI | (n->info ? FLAG_INFO : 0);
    alen = cf == 4 ? 4 : 16;
    need = 12 + 10 + alen + (sf == 0 ? 0 : sf == 4 ? 4 : 16) + slen + hlen + ulen;
    if (need > cap)
        return 0;
    put32(buf, (uint32_t)(need - 4));
    buf[4] = 1;
    buf[5] = T_DECIDE;
    put16(buf + 6, flags);
    put32(buf + 8, request_id);
    buf[o++] = (unsigned char)cf;
    buf[o++] = (unsigned char)sf;
    put16(buf + o, c->client.port);
    o += 2;
    put16(buf + o, sf ? c->server.port : 0);
    o += 2;
    buf[o++] = (unsigned char)slen;
    buf[o++] = (unsigned char)hlen;     /* 0: no name known (the sidecar looks) */
    buf[o++] = (unsigned char)ulen;     /* 0: no ident, or "" with FLAG_INFO */
    buf[o++] = 0;       /* reserved */
    memcpy(buf + o, c->client.addr, alen);
    o += alen;
    if (sf) {
        memcpy(buf + o, c->server.addr, sf == 4 ? 4 : 16);
        o += sf == 4 ? 4 : 16;
    }
    memcpy(buf + o, c->daemon, slen);
    o += slen;
    if (hlen)
        memcpy(buf + o, n->host, hlen);
    o += hlen;
    if (ulen)
        memcpy(buf + o, n->info, ulen);
    return o + ulen;
}

/* A bounded reader over the payload. */
struct cursor {
    const unsigned char *p, *end;
};

static int take(struct cursor *c, size_t n, const unsigned char **out)
{
    if ((size_t)(c->end - c->p) < n)
        return -1;
    *out = c->p;
    c->p += n;
    return 0;
}

static char *copy_text(const unsigned char *s, size_t n)
{
    char *t;
    if (memchr(s, 0, n))
        return NULL;    /* a NUL cannot travel in an env var or a command */
    t = malloc(n + 1);
    if (t) {
        memcpy(t, s, n);
        t[n] = 0;
    }
    return t;
}

/* Everything a decision holds, freed; *d zeroed (decode_decision on a
 * failure: what it had copied half way). */
void free_decision(struct decision *d)
{
    size_t i;
    for (i = 0; d->env && i < d->env_count; i++) {
        free(d->env[i].name);
        free(d->env[i].value);
    }
    for (i = 0; d->options && i < d->option_count; i++) {
        free(d->options[i].name);
        free(d->options[i].value);
    }
    free(d->env);
    free(d->options);
    free(d->location);
    free(d->client_name);
    free(d->server_name);
    memset(d, 0, sizeof *d);
}

int decode_decision(const unsigned char *frame, size_t len, uint32_t request_id,
                    struct decision *d, char *err, size_t errlen)
{
    struct cursor c;
    const unsigned char *h, *s;
    size_t i;

    memset(d, 0, sizeof *d);
    if (len < 12 || get32(frame) != len - 4 || len > DECISION_MAX ||
        (len > FRAME_MAX && frame[5] != T_DECISION)) {
        snprintf(err, errlen, "bad frame length");
        return -1;
    }
    if (frame[4] != 1) {
        snprintf(err, errlen, "reply has protocol version %u", frame[4]);
        return -1;
    }
    if (get32(frame + 8) != request_id && frame[5] != T_ERROR) {
        snprintf(err, errlen, "reply to request %u, not %u", get32(frame + 8), request_id);
        return -1;
    }
    c.p = frame + 12;
    c.end = frame + len;
    if (frame[5] == T_ERROR) {
        unsigned code = 0, tl = 0;
        if (take(&c, 4, &h) == 0) {
            code = get16(h);
            tl = get16(h + 2);
        }
        if (tl > (size_t)(c.end - c.p))
            tl = (unsigned)(c.end - c.p);
        snprintf(err, errlen, "sidecar error %u: %.*s", code, (int)tl, (const char *)c.p);
        /* the text is the sidecar's: keep only printable bytes in our log */
        for (char *q = err; *q; q++)
            if ((unsigned char)*q < 0x20 || (unsigned char)*q == 0x7f)
                *q = '?';
        return -1;
    }
    if (frame[5] != T_DECISION) {
        snprintf(err, errlen, "reply of unexpected type 0x%02x", frame[5]);
        return -1;
    }
    if (take(&c, 16, &h) < 0)
        goto malformed;
    d->verdict = h[0];
    d->reason = h[1];
    d->lease = get64(h + 4);
    d->env_count = get16(h + 12);
    d->option_count = get16(h + 14);
    if (d->verdict > VERDICT_DELEGATE || d->env_count > ITEMS_MAX || d->option_count > ITEMS_MAX)
        goto malformed;
    if (take(&c, get16(h + 2), &s) < 0 || !(d->location = copy_text(s, get16(h + 2))))
        goto malformed;
    d->env = calloc(d->env_count + 1, sizeof *d->env);
    d->options = calloc(d->option_count + 1, sizeof *d->options);
    if (!d->env || !d->options)
        goto malformed;
    for (i = 0; i < d->env_count; i++) {
        unsigned nl, vl;
        if (take(&c, 5, &h) < 0)
            goto malformed;
        d->env[i].op = h[0];
        nl = get16(h + 1);
        vl = get16(h + 3);
        /* an empty name is tcprules' `="x"`: set only (main.c apply_env) */
        if (h[0] > 1 || (nl == 0 && h[0] != 0) || take(&c, nl, &s) < 0 ||
            !(d->env[i].name = copy_text(s, nl)))
            goto malformed;
        if (strchr(d->env[i].name, '='))
            goto malformed;
        if (take(&c, vl, &s) < 0 || !(d->env[i].value = copy_text(s, vl)))
            goto malformed;
    }
    for (i = 0; i < d->option_count; i++) {
        unsigned nl, vl;
        if (take(&c, 4, &h) < 0)
            goto malformed;
        nl = get16(h);
        vl = get16(h + 2);
        if (nl == 0 || take(&c, nl, &s) < 0 || !(d->options[i].name = copy_text(s, nl)))
            goto malformed;
        if (take(&c, vl, &s) < 0 || !(d->options[i].value = copy_text(s, vl)))
            goto malformed;
    }
    if (get16(frame + 6) & ~REPLY_NAMES)
        goto malformed;
    if (get16(frame + 6) & REPLY_NAMES) {
        unsigned which, k, nl;
        if (take(&c, 1, &h) < 0 || (which = h[0]) > 3)
            goto malformed;
        for (k = 0; k < 2; k++) {
            char **name = k == 0 ? &d->client_name : &d->server_name;
            if (take(&c, 2, &h) < 0)
                goto malformed;
            nl = get16(h);
            if (!(which & (1u << k))) {
                if (nl)
                    goto malformed;
                continue;
            }
            /* "unknown", "paranoid", the name -- or "" (an address alone
             * on a hosts line: docs/protocol.md) */
            if (nl >= NAME_MAX_LEN || take(&c, nl, &s) < 0 ||
                !(*name = copy_text(s, nl)))
                goto malformed;
        }
    }
    if (c.p != c.end)
        goto malformed;
    return 0;
malformed:
    free_decision(d);
    snprintf(err, errlen, "malformed DECISION payload");
    return -1;
}

const char *reason_text(int reason)
{
    static const char *names[] = {
        "ok", "address", "time", "service_limit", "per_source_limit", "load",
        "connections per second", "libwrap", "tcprules", "rate", "unknown_service", "error",
    };
    if (reason >= 0 && (size_t)reason < sizeof names / sizeof names[0])
        return names[reason];
    return "unknown reason";
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on fd until the deadline; 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, long deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        long left = deadline - now_ms();
        int r;
        if (left <= 0)
            return 0;
        r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        return r > 0;
    }
}

static int read_full(int fd, unsigned char *buf, size_t n, long deadline, char *err, size_t errlen)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0) {
            snprintf(err, errlen, "sidecar closed the connection");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            snprintf(err, errlen, "read from sidecar: %s", strerror(errno));
            return -1;
        }
        if (wait_fd(fd, POLLIN, deadline) <= 0) {
            snprintf(err, errlen, "sidecar did not answer in time");
            return -1;
        }
    }
    return 0;
}

int ask_sidecar(const char *path, int timeout_ms, const unsigned char *req, size_t reqlen,
                unsigned char **reply, size_t *replylen, int *fd_out,
                char *err, size_t errlen)
{
    long deadline = now_ms() + timeout_ms;
    struct sockaddr_un sun;
    unsigned char head[4];
    size_t sent = 0, len;
    unsigned char *buf;
    int fd;

    *fd_out = -1;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    if (fd < 3) {
        /* a super-server left 0-2 partly closed: keep the lease clear of
         * the descriptors twist and the server use for the client */
        int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        close(fd);
        if (high < 0) {
            snprintf(err, errlen, "fcntl: %s", strerror(errno));
            return -1;
        }
        fd = high;
    }
    while (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && now_ms() < deadline) {
            /* the sidecar's backlog is full: a Unix socket connect cannot
             * be completed asynchronously, so retry until the deadline */
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        snprintf(err, errlen, "connect %s: %s", path,
                 errno == EAGAIN ? "sidecar backlog full until the deadline" : strerror(errno));
        close(fd);
        return -1;
    }
    while (sent < reqlen) {
        ssize_t w = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
            wait_fd(fd, POLLOUT, deadline) > 0)
            continue;
        snprintf(err, errlen, "write to sidecar: %s",
                 w < 0 && errno != EAGAIN ? strerror(errno) : "timed out");
        close(fd);
        return -1;
    }
    if (read_full(fd, head, 4, deadline, err, errlen) < 0) {
        close(fd);
        return -1;
    }
    len = get32(head);
    if (len < 8 || len > DECISION_MAX - 4) {   /* decode_decision checks the type's bound */
        snprintf(err, errlen, "reply frame length %zu out of range", len);
        close(fd);
        return -1;
    }
    buf = malloc(len + 4);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return -1;
    }
    memcpy(buf, head, 4);
    if (read_full(fd, buf + 4, len, deadline, err, errlen) < 0) {
        free(buf);
        close(fd);
        return -1;
    }
    *reply = buf;
    *replylen = len + 4;
    *fd_out = fd;
    return 0;
}
