/* The two endpoints of the connection on fd 0, and what tcpd derives from
 * them.
 *
 * Rules:
 * - Stream sockets: getpeername/getsockname.  Datagram sockets (inetd's
 *   `wait` UDP services hand over the unconnected listening socket): the
 *   peer is the sender of the first queued datagram, read with MSG_PEEK so
 *   the real server still receives it (tcpd does the same).
 * - A listening stream socket (a `wait = yes` stream service) has no client:
 *   READ_LISTENING.  tcpd judges such a start as client "unknown"; the
 *   sidecar's protocol carries addresses only, so we refuse it, and main()
 *   pauses first so the super-server does not restart us in a tight loop.
 * - The client address is kept exactly as the socket saw it: an IPv4 client
 *   of an IPv6 socket stays ::ffff:a.b.c.d (docs/protocol.md, DECIDE).
 * - Host names (spec A.6) are looked up only when a % expansion asks for
 *   them: PTR -> name; no PTR -> "unknown"; a numeric PTR name, a failing
 *   forward lookup, a canonical name that differs (ignoring case) and is not
 *   "localhost", or an address missing from the forward answer ->
 *   "paranoid".  A v4-mapped address is looked up as IPv4.  As libwrap's
 *   sock_hostname: the PTR name is first cut to 127 bytes (its host_info
 *   name is a STRING_LENGTH = 128 byte buffer) and every check reads the
 *   cut name; "numeric" is what getaddrinfo(AI_NUMERICHOST) accepts for the
 *   client's family, which takes inet_aton forms such as 127.0.274 too.
 *   An address alone on a hosts line has the PTR name "" (glibc), which
 *   getaddrinfo("") finds back: the verified name is "", and %h, %c, %H,
 *   %s and the log lines show the address for it, as libwrap's
 *   eval_hostinfo reads an empty name as "not looked up".
 * - UCSPI text forms (spec B.4): IPv4 dotted; IPv6 lower-case hex without
 *   leading zeros, the longest run of zero groups compressed even when it is
 *   one group long (first run wins a tie), ::ffff:a.b.c.d printed dotted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wrap.h"

static const unsigned char MAPPED_PREFIX[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int is_mapped(const struct endpoint *e)
{
    return e->family == AF_INET6 && memcmp(e->addr, MAPPED_PREFIX, 12) == 0;
}

static void fill(struct endpoint *e, const struct sockaddr_storage *sa, socklen_t len)
{
    memset(e, 0, sizeof *e);
    memcpy(&e->sa, sa, len);
    e->salen = len;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        e->family = AF_INET;
        memcpy(e->addr, &in->sin_addr, 4);
        e->port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        e->family = AF_INET6;
        memcpy(e->addr, &in6->sin6_addr, 16);
        e->port = ntohs(in6->sin6_port);
    }
    if (!inet_ntop(e->family, e->addr, e->text, sizeof e->text))
        snprintf(e->text, sizeof e->text, "unknown");
    e->known = 1;
}

static int internet(const struct sockaddr_storage *sa)
{
    return sa->ss_family == AF_INET || sa->ss_family == AF_INET6;
}

static void unknown(struct endpoint *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->text, sizeof e->text, "unknown");
}

int read_endpoints(int fd, struct conn *c, int timeout_ms, char *err, size_t errlen)
{
    int type = 0;
    socklen_t tl = sizeof type;
    struct sockaddr_storage sa;
    socklen_t len;

    unknown(&c->client);
    unknown(&c->server);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0) {
        snprintf(err, errlen, "standard input is not a socket: %s", strerror(errno));
        return -1;
    }
    c->dgram = type == SOCK_DGRAM;
    if (type != SOCK_STREAM && type != SOCK_DGRAM) {
        snprintf(err, errlen, "standard input is neither a stream nor a datagram socket");
        return -1;
    }
    len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0) {
        int listening = 0;
        socklen_t ll = sizeof listening;
        if (!c->dgram && errno == ENOTCONN &&
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) == 0 && listening) {
            snprintf(err, errlen, "standard input is a listening socket (a stream service "
                     "with wait = yes): there is no client to judge; use wait = no");
            return READ_LISTENING;
        }
        if (!c->dgram || errno != ENOTCONN) {
            snprintf(err, errlen, "cannot read the peer address: %s", strerror(errno));
            return -1;
        }
        /* Unconnected UDP socket: the sender of the next datagram. */
        for (;;) {
            unsigned char one;
            struct pollfd p = {fd, POLLIN, 0};
            len = sizeof sa;
            if (recvfrom(fd, &one, 1, MSG_PEEK | MSG_DONTWAIT, (struct sockaddr *)&sa, &len) >= 0)
                break;
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                snprintf(err, errlen, "cannot peek at the datagram: %s", strerror(errno));
                return -1;
            }
            if (poll(&p, 1, timeout_ms) <= 0) {
                snprintf(err, errlen, "no datagram to read the peer from");
                return -1;
            }
        }
    }
    if (!internet(&sa)) {
        snprintf(err, errlen, "standard input is not an internet socket");
        return -1;
    }
    fill(&c->client, &sa, len);
    len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && internet(&sa))
        fill(&c->server, &sa, len);
    return 0;
}

void consume_datagram(int fd)
{
    unsigned char buf[1];
    /* A refused UDP request must not stay queued, or the super-server
     * would start us again for the same datagram at once. */
    (void)recv(fd, buf, sizeof buf, MSG_DONTWAIT);
}

static void ip6_ucspi(const unsigned char *a, char *out, size_t outlen)
{
    int best = -1, bestlen = 0, i, n = 0;
    size_t o = 0;

    if (memcmp(a, MAPPED_PREFIX, 12) == 0) {
        snprintf(out, outlen, "::ffff:%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
        return;
    }
    for (i = 0; i < 8; i++) {
        if (a[2 * i] == 0 && a[2 * i + 1] == 0) {
            int j = i;
            while (j < 8 && a[2 * j] == 0 && a[2 * j + 1] == 0)
                j++;
            if (j - i > bestlen) {
                best = i;
                bestlen = j - i;
            }
            i = j - 1;
        }
    }
    out[0] = 0;
    for (i = 0; i < 8 && o + 6 < outlen; i++) {
        if (i == best) {
            o += (size_t)snprintf(out + o, outlen - o, "%s", i == 0 ? "::" : ":");
            i += bestlen - 1;
            continue;
        }
        n = snprintf(out + o, outlen - o, "%x%s", (unsigned)(a[2 * i] << 8 | a[2 * i + 1]),
                     i < 7 ? ":" : "");
        o += (size_t)n;
    }
}

/* Is `text` (a UCSPI server's TCPREMOTEIP, either form) this endpoint's
 * address?  Compared as addresses, not as text; a "%scope" is ignored. */
int endpoint_is(const struct endpoint *e, const char *text)
{
    unsigned char a[16];
    char t[64];
    size_t n = strcspn(text, "%");

    if (!e->known || n >= sizeof t)
        return 0;
    memcpy(t, text, n);
    t[n] = 0;
    if (inet_pton(AF_INET, t, a) == 1) {
        if (e->family == AF_INET)
            return memcmp(e->addr, a, 4) == 0;
        return is_mapped(e) && memcmp(e->addr + 12, a, 4) == 0;
    }
    if (inet_pton(AF_INET6, t, a) != 1)
        return 0;
    if (e->family == AF_INET)
        return memcmp(a, MAPPED_PREFIX, 12) == 0 && memcmp(a + 12, e->addr, 4) == 0;
    return memcmp(e->addr, a, 16) == 0;
}

/* UCSPI text of an endpoint: v6form=0 gives TCPREMOTEIP (mapped -> dotted),
 * v6form=1 gives TCP6REMOTEIP (IPv4 -> ::ffff:a.b.c.d). */
void ucspi_ip(const struct endpoint *e, int v6form, char *out, size_t outlen)
{
    unsigned char m[16];
    const unsigned char *v4 = NULL;

    if (!e->known) {
        snprintf(out, outlen, "unknown");
        return;
    }
    if (e->family == AF_INET)
        v4 = e->addr;
    else if (is_mapped(e))
        v4 = e->addr + 12;
    if (v4 && !v6form) {
        snprintf(out, outlen, "%u.%u.%u.%u", v4[0], v4[1], v4[2], v4[3]);
        return;
    }
    if (v4) {
        memcpy(m, MAPPED_PREFIX, 12);
        memcpy(m + 12, v4, 4);
        ip6_ucspi(m, out, outlen);
        return;
    }
    ip6_ucspi(e->addr, out, outlen);
}

static int same_address(const struct endpoint *e, int fam, const unsigned char *a,
                        const struct sockaddr *sa)
{
    if (e->family == AF_INET || is_mapped(e)) {
        const unsigned char *mine = e->family == AF_INET ? e->addr : e->addr + 12;
        return fam == AF_INET && memcmp(mine, a, 4) == 0;
    }
    if (fam != AF_INET6 || memcmp(e->addr, a, 16) != 0)
        return 0;
    /* IPv6 scope id must match too (spec A.6). */
    return ((const struct sockaddr_in6 *)&e->sa)->sin6_scope_id ==
           ((const struct sockaddr_in6 *)sa)->sin6_scope_id;
}

static void look_up(struct endpoint *e)
{
    struct sockaddr_storage q;
    socklen_t qlen = e->salen;
    char host[NI_MAXHOST];
    struct addrinfo hints, *res = NULL, *r;
    int fam, found = 0;

    e->looked_up = 1;
    snprintf(e->name, sizeof e->name, "unknown");
    if (!e->known)
        return;
    memcpy(&q, &e->sa, e->salen);
    fam = e->family;
    if (is_mapped(e)) {       /* a v4-mapped address is looked up as IPv4 */
        struct sockaddr_in *in = (struct sockaddr_in *)&q;
        memset(&q, 0, sizeof q);
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, e->addr + 12, 4);
        qlen = sizeof *in;
        fam = AF_INET;
    }
    if (getnameinfo((struct sockaddr *)&q, qlen, host, sizeof host, NULL, 0, NI_NAMEREQD) != 0)
        return;                                   /* no PTR: unknown */
    host[WRAP_NAME_LIMIT] = 0;                    /* libwrap's 128-byte name buffer */
    snprintf(e->name, sizeof e->name, "paranoid");
    memset(&hints, 0, sizeof hints);
    hints.ai_family = fam;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, NULL, &hints, &res) == 0) {
        freeaddrinfo(res);                        /* numeric PTR name ("non-FQDN"), */
        return;                                   /* inet_aton forms (127.0.274) too */
    }
    res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = fam;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_CANONNAME;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return;                                   /* forward lookup fails */
    if (res->ai_canonname && strcasecmp(res->ai_canonname, host) != 0 &&
        strcasecmp(host, "localhost") != 0) {
        freeaddrinfo(res);
        return;                                   /* PTR points at an alias */
    }
    for (r = res; r && !found; r = r->ai_next) {
        if (r->ai_family == AF_INET)
            found = same_address(e, AF_INET,
                                 (unsigned char *)&((struct sockaddr_in *)r->ai_addr)->sin_addr,
                                 r->ai_addr);
        else if (r->ai_family == AF_INET6)
            found = same_address(e, AF_INET6,
                                 (unsigned char *)&((struct sockaddr_in6 *)r->ai_addr)->sin6_addr,
                                 r->ai_addr);
    }
    freeaddrinfo(res);
    if (found)
        snprintf(e->name, sizeof e->name, "%s", host);
}

/* A name the sidecar looked up while deciding: as if we had (tcpd looks a
 * name up once, and every later % expansion and log line shows it). */
void endpoint_set_name(struct endpoint *e, const char *name)
{
    if (!e->known)
        return;
    e->looked_up = 1;
    snprintf(e->name, sizeof e->name, "%s", name);
}

/* %n: forces the lookup. */
const char *endpoint_name(struct endpoint *e)
{
    if (!e->looked_up)
        look_up(e);
    return e->name;
}

/* %h: the name if it was already looked up and is known, else the address
 * (for the empty name too: see the rules above). */
const char *endpoint_info(struct endpoint *e)
{
    if (e->looked_up && e->name[0] && strcmp(e->name, "unknown") != 0 &&
        strcmp(e->name, "paranoid") != 0)
        return e->name;
    return e->text;
}
