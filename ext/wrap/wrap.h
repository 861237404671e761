/* acl-wrap: a tcpd for the acl sidecar.  Declarations shared by its files.
 *
 *   main.c     argv (tcpd mode and explicit mode), configuration, the
 *              grant / deny / fail-open / fail-closed flow, syslog, exec
 *   peer.c     the two endpoints of the connection on fd 0 (TCP or UDP,
 *              IPv4 or IPv6), their text forms, verified host names
 *   proto.c    the binary protocol of docs/protocol.md: DECIDE out,
 *              DECISION / ERROR in, all under one deadline
 *   expand.c   tcpd's % expansions, with the unsafe-character replacement
 *   options.c  hosts_options the decision carries: setenv, banners, spawn,
 *              twist, severity, keepalive, linger, nice, umask
 *
 * The program never writes diagnostics to stdout/stderr once it runs under
 * a super-server: those are the client's socket under inetd and xinetd.
 * Everything goes to syslog, as tcpd does.
 */
#ifndef ACL_WRAP_H
#define ACL_WRAP_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Exit codes (djb manners): refused, bad usage, temporary failure. */
#define EXIT_REFUSED 1
#define EXIT_USAGE 100
#define EXIT_TEMPORARY 111

#define NAME_MAX_LEN 1025            /* NI_MAXHOST */
/* The longest host name libwrap keeps (tcpd.h STRING_LENGTH 128, less the NUL). */
#define WRAP_NAME_LIMIT 127

/* One end of the connection handed to us on fd 0. */
struct endpoint {
    int known;                      /* 0: the address could not be read */
    struct sockaddr_storage sa;     /* as the socket reported it */
    socklen_t salen;
    int family;                     /* AF_INET or AF_INET6 (mapped v4 stays 6) */
    unsigned char addr[16];         /* network byte order, 4 bytes used for v4 */
    unsigned port;
    char text[64];                  /* numeric form, "::ffff:a.b.c.d" kept; "unknown" */
    int looked_up;                  /* the name below has been computed */
    char name[NAME_MAX_LEN];        /* verified name ("" too), "unknown" or "paranoid" */
};

struct conn {
    int dgram;                      /* fd 0 is a datagram socket */
    struct endpoint client, server;
    const char *daemon;             /* service name sent to the sidecar, %d */
};

/* What a UCSPI server (tcpserver) named this connection's client: its
 * TCPREMOTEHOST and TCPREMOTEINFO, NULL when unset (main.c ucspi_names). */
struct names {
    const char *host;
    const char *info;               /* "" is set-but-empty (an ident ERROR) */
};

/* One environment or option item of a DECISION, NUL-terminated copies. */
struct item {
    int op;                         /* env: 0 set, 1 unset; options: unused */
    char *name;
    char *value;
};

struct decision {
    int verdict;                    /* 0 deny, 1 allow, 2 delegate */
    int reason;                     /* acl.model.Reason number */
    char *location;                 /* "path:line" or "" */
    uint64_t lease;
    size_t env_count, option_count;
    struct item *env, *options;
    char *client_name;              /* names deciding looked up (verified, "unknown", */
    char *server_name;              /* "paranoid"); NULL: not looked up */
};

enum { VERDICT_DENY = 0, VERDICT_ALLOW = 1, VERDICT_DELEGATE = 2 };

/* peer.c */
#define READ_LISTENING (-2)          /* read_endpoints: fd 0 is a listening socket */
#define LISTENING_PAUSE_S 5          /* tcpd's pause before it exits on a refusal */
int read_endpoints(int fd, struct conn *c, int timeout_ms, char *err, size_t errlen);
void consume_datagram(int fd);
void ucspi_ip(const struct endpoint *e, int v6form, char *out, size_t outlen);
int endpoint_is(const struct endpoint *e, const char *text);
const char *endpoint_name(struct endpoint *e);
const char *endpoint_info(struct endpoint *e);
void endpoint_set_name(struct endpoint *e, const char *name);

/* proto.c */
size_t encode_decide(unsigned char *buf, size_t cap, const struct conn *c,
                     uint32_t request_id, int lease, const struct names *n);
/* 0 and *d filled (its strings are copies), or -1, err set and *d empty */
int decode_decision(const unsigned char *frame, size_t len, uint32_t request_id,
                    struct decision *d, char *err, size_t errlen);
void free_decision(struct decision *d);
int ask_sidecar(const char *path, int timeout_ms, const unsigned char *req, size_t reqlen,
                unsigned char **reply, size_t *replylen, int *fd_out,
                char *err, size_t errlen);
const char *reason_text(int reason);

/* expand.c */
int percent_expand(struct conn *c, const char *in, char *out, size_t cap);

/* options.c */
struct run_state {
    struct conn *conn;
    int granted;                    /* 0: the decision refused (twist is skipped) */
    int lease_fd;                   /* -1: no lease to carry across exec */
    uint64_t lease;
    int log_priority;               /* facility | level for the verdict line */
    int deny_priority;              /* ... for the twist line: tcpd's deny_severity */
};
int run_options(struct run_state *st, const struct decision *d);
void carry_lease(int lease_fd, uint64_t lease);

/* main.c */
extern int wrap_log_facility;

#endif
