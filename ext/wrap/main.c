/* acl-wrap: ask the acl sidecar, then become the real server or refuse.
 *
 * Two ways to call it (docs/acl-wrap.md):
 *
 *   tcpd mode      argv[0] is the real server, exactly as tcpd is used:
 *                  xinetd `server = .../acl-wrap` + NAMEINARGS +
 *                  `server_args = /usr/sbin/in.echod -x`, or systemd's
 *                  `ExecStart=@.../acl-wrap /usr/sbin/in.echod`.  As in
 *                  tcpd: an absolute argv[0] is run as it is and cut to its
 *                  basename, which is the service name and the server's
 *                  argv[0]; any other argv[0] -- `in.echod` or `sub/in.echod`
 *                  alike -- is run as ACL_WRAP_DAEMON_DIR/argv[0] (default
 *                  /usr/sbin, tcpd's REAL_DAEMON_DIR) and is, whole, the
 *                  service name and the server's argv[0].  Never relative to
 *                  our cwd: a super-server's cwd is no configuration.
 *                  Settings come from the environment.
 *   explicit mode  basename(argv[0]) is "acl-wrap":
 *                  acl-wrap [-s socket] [-n service] [-t ms] [-o|-c] server [args]
 *                  (inetd.conf, tcpserver, systemd ExecStart).  The service
 *                  name is -n, else basename(server); server is found on the
 *                  PATH acl-wrap was started with -- never on a PATH the
 *                  rule's environment sets, which is the server's (as
 *                  tcpserver's pathexec: its own PATH searches, the rule's
 *                  is passed on).
 *
 * Settings: -s / ACL_WRAP_SOCKET (default /run/acl/query.sock),
 * -n / ACL_WRAP_SERVICE, -t / ACL_WRAP_TIMEOUT in milliseconds (default
 * 2000), -o / -c / ACL_WRAP_FAIL=open|closed (default closed).  Options win
 * over the environment.
 *
 * The order of things, and why:
 * 1. Read both endpoints from fd 0 (peer.c).  Nothing else about the client
 *    is known: we look no name up unless a % expansion asks for one -- but
 *    a name the sidecar looked up while deciding (DECIDE flag NAMES, as
 *    tcpd looks one up while matching) is taken as looked up: %h, %c, %H,
 *    %s and the log lines then show it, and %n does not look again.
 * 2. One DECIDE with LEASE and SEAL on a fresh connection to the sidecar,
 *    under the timeout (proto.c); SEAL: after its answer that connection,
 *    which the server and its children inherit, only releases its lease.  Under a UCSPI server that described this very
 *    connection (ucspi_described), the names it computed with the flags the
 *    admin chose -- TCPREMOTEHOST (-h/-H, -p), TCPREMOTEINFO (-r/-R) -- go
 *    with it, flagged UCSPI: they are what `tcpserver -x` would look up, and
 *    the sidecar gives them to tcprules rules only (never taken for a
 *    verified name).  Unreachable, too slow, or an answer that is not a
 *    well-formed DECISION: fail closed (refuse, exit 111) or, if so
 *    configured, fail open (run the server with no lease); both are logged.
 * 3. Refused: run the rule's options except twist (banners reach the
 *    client, spawn runs), log "refused connect from" as tcpd does, drop a
 *    refused datagram, exit 1.
 * 4. Granted: UCSPI variables (PROTO, TCPREMOTEIP, ...) -- unless a UCSPI
 *    server (tcpserver) already set them for this very connection: then
 *    the server sees them as that server set them (tcpserver -6 says TCP6
 *    and ::ffff:a.b.c.d, and that is not ours to rewrite) -- then the
 *    tcprules environment in rule order (an empty name, tcprules `="x"`,
 *    puts "=x" in the environment as tcpserver's pathexec does), then the
 *    options in rule order
 *    (twist replaces us there), log "connect from", and exec the real
 *    server with the sidecar connection still open (FD_CLOEXEC cleared), so
 *    the lease is held exactly as long as the server -- and its children
 *    -- live.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "wrap.h"

#define DEFAULT_SOCKET "/run/acl/query.sock"
#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_DAEMON_DIR "/usr/sbin"
#define REQUEST_ID 1

int wrap_log_facility = LOG_DAEMON;

static const char *base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Usage problems go to syslog, and to stderr only when stderr is not a
 * socket (under inetd it is the client's connection). */
static void complain(const char *fmt, const char *arg)
{
    struct stat st;
    syslog(LOG_ERR, fmt, arg);
    if (fstat(2, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "acl-wrap: fatal: ");
        fprintf(stderr, fmt, arg);
        fputc('\n', stderr);
    }
}

static void usage(const char *why)
{
    complain("%s", why);
    complain("%s", "usage: acl-wrap [-s socket] [-n service] [-t ms] [-o|-c] server [args...]");
    exit(EXIT_USAGE);
}

static int parse_timeout(const char *s)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 600000)
        return -1;
    return (int)v;
}

static int parse_fail(const char *s)
{
    if (strcmp(s, "open") == 0)
        return 1;
    if (strcmp(s, "closed") == 0)
        return 0;
    return -1;
}

/* Did a UCSPI server set PROTO and the variables for *this* connection?
 * tcpserver always sets PROTO (TCP, or TCP6 for an IPv6 socket),
 * TCPREMOTEIP and TCPREMOTEPORT / TCPLOCALPORT.  The client's address and
 * the ports must be this connection's, so variables inherited from
 * elsewhere (a super-server started from a tcpserver session) are not taken
 * for a description. */
static int ucspi_described(const struct conn *c)
{
    const char *p = c->dgram ? "UDP" : "TCP", *proto = getenv("PROTO"), *v;
    char name[32], port[16];

    if (!proto || strncmp(proto, p, 3) != 0 || (proto[3] && strcmp(proto + 3, "6") != 0))
        return 0;
    snprintf(name, sizeof name, "%sREMOTEPORT", p);
    snprintf(port, sizeof port, "%u", c->client.port);
    if (!(v = getenv(name)) || strcmp(v, port) != 0)
        return 0;
    snprintf(name, sizeof name, "%sREMOTEIP", p);
    if (!(v = getenv(name)) || !endpoint_is(&c->client, v))
        return 0;
    if (c->server.known) {
        snprintf(name, sizeof name, "%sLOCALPORT", p);
        snprintf(port, sizeof port, "%u", c->server.port);
        if (!(v = getenv(name)) || strcmp(v, port) != 0)
            return 0;
    }
    return 1;
}

/* The client's names as the UCSPI server that described this connection
 * set them: TCPREMOTEHOST (unset or empty: none) and TCPREMOTEINFO (unset:
 * none; empty: an ident ERROR reply, which `@ip` rules match).  One longer
 * than the protocol's 255 bytes is left out and logged: a longer DNS name
 * cannot be, and a remote identd (the client's own) that sends one could
 * as well have sent any other name. */
static void ucspi_names(const struct conn *c, struct names *n)
{
    const char *p = c->dgram ? "UDP" : "TCP";
    char name[32];

    n->host = n->info = NULL;
    if (!ucspi_described(c))
        return;
    snprintf(name, sizeof name, "%sREMOTEHOST", p);
    n->host = getenv(name);
    if (n->host && !*n->host)
        n->host = NULL;
    snprintf(name, sizeof name, "%sREMOTEINFO", p);
    n->info = getenv(name);
    if (n->host && strlen(n->host) > 255) {
        syslog(LOG_WARNING, "warning: %sREMOTEHOST longer than 255 bytes: not sent", p);
        n->host = NULL;
    }
    if (n->info && strlen(n->info) > 255) {
        syslog(LOG_WARNING, "warning: %sREMOTEINFO longer than 255 bytes: not sent", p);
        n->info = NULL;
    }
}

/* One environment item of the decision.  An empty name (tcprules `="x"`)
 * cannot go through setenv; tcpserver's pathexec puts "=x" in the server's
 * environment, replacing an entry that starts with '=', and so does putenv. */
static void apply_env(const struct item *e)
{
    char *s;
    if (*e->name) {
        if (e->op == 0)
            setenv(e->name, e->value, 1);
        else
            unsetenv(e->name);
        return;
    }
    if (e->op == 0 && asprintf(&s, "=%s", e->value) >= 0)
        putenv(s);                      /* environ keeps s: not freed */
}

/* Exec the server: the final environment is the server's, but a name
 * without '/' is searched on the PATH we were started with (`path`, NULL if
 * unset), not on a PATH the rule set -- as tcpserver's pathexec does.
 * execvpe searches the caller's PATH, not envp's (execvpe(3)). */
static void exec_server(const char *file, char **argv, int search, const char *path)
{
    size_t n = 0;
    char **envp;

    if (!search) {
        execv(file, argv);
        return;
    }
    while (environ[n])
        n++;
    if (!(envp = malloc((n + 1) * sizeof *envp)))
        return;
    memcpy(envp, environ, (n + 1) * sizeof *envp);
    if (path)
        setenv("PATH", path, 1);
    else
        unsetenv("PATH");
    execvpe(file, argv, envp);
    {
        int saved = errno;      /* the caller logs why exec failed */
        free(envp);
        errno = saved;
    }
}

/* The UCSPI variables, as tcpserver would set them -- unless it did. */
static void set_ucspi_env(const struct conn *c)
{
    const struct endpoint *cl = &c->client;
    int v6 = cl->family == AF_INET6 &&
             !(cl->addr[10] == 0xff && cl->addr[11] == 0xff &&
               memcmp(cl->addr, "\0\0\0\0\0\0\0\0\0\0", 10) == 0);
    const char *p = c->dgram ? "UDP" : "TCP";
    char name[32], val[64];
    int six;

    if (ucspi_described(c))
        return;
    snprintf(val, sizeof val, "%s%s", p, v6 ? "6" : "");
    setenv("PROTO", val, 1);
    for (six = 0; six < 2; six++) {
        const char *pre = six ? "6" : "";
        ucspi_ip(&c->client, six, val, sizeof val);
        snprintf(name, sizeof name, "%s%sREMOTEIP", p, pre);
        setenv(name, val, 1);
        snprintf(name, sizeof name, "%s%sREMOTEPORT", p, pre);
        snprintf(val, sizeof val, "%u", c->client.port);
        setenv(name, val, 1);
        /* no lookups here: names inherited from another connection go, as
         * tcpserver unsets what it has no value for */
        snprintf(name, sizeof name, "%s%sREMOTEHOST", p, pre);
        unsetenv(name);
        snprintf(name, sizeof name, "%s%sREMOTEINFO", p, pre);
        unsetenv(name);
        snprintf(name, sizeof name, "%s%sLOCALHOST", p, pre);
        unsetenv(name);
        if (c->server.known) {
            ucspi_ip(&c->server, six, val, sizeof val);
            snprintf(name, sizeof name, "%s%sLOCALIP", p, pre);
            setenv(name, val, 1);
            snprintf(name, sizeof name, "%s%sLOCALPORT", p, pre);
            snprintf(val, sizeof val, "%u", c->server.port);
            setenv(name, val, 1);
        }
    }
}

static void forget_settings(void)
{
    unsetenv("ACL_WRAP_SOCKET");
    unsetenv("ACL_WRAP_SERVICE");
    unsetenv("ACL_WRAP_TIMEOUT");
    unsetenv("ACL_WRAP_FAIL");
    unsetenv("ACL_WRAP_DAEMON_DIR");
}

/* The settings from our environment that are used after it is cleared
 * (forget_settings): copies, kept until exec, so a static holds them. */
static struct {
    char *socket, *service, *daemon_dir, *path;
} started;

static char *copy_env(const char *name)
{
    const char *v = getenv(name);
    return v ? strdup(v) : NULL;
}

static void refuse(struct conn *c, int priority, int code)
{
    syslog(priority, "refused connect from %s (%s)", endpoint_info(&c->client), c->client.text);
    if (c->dgram)
        consume_datagram(0);
    exit(code);
}

int main(int argc, char **argv)
{
    const char *prog = argc > 0 ? base(argv[0]) : "acl-wrap";
    const char *env_timeout = getenv("ACL_WRAP_TIMEOUT"), *env_fail = getenv("ACL_WRAP_FAIL");
    const char *sock, *service, *dir, *path, *server_path;
    char **server_argv, pathbuf[4096], err[512];
    unsigned char req[1024], *reply = NULL;
    size_t reqlen, replylen = 0, i;
    int timeout_ms = DEFAULT_TIMEOUT_MS, fail_open = 0, search_path, lease_fd = -1, ok, rc;
    struct conn c;
    struct names names;
    struct decision d;
    struct run_state st;

    openlog("acl-wrap", LOG_PID, wrap_log_facility);
    /* Our settings are ours: read or copy them, then keep them from the
     * server, the twisted command and spawned commands alike. */
    if (env_timeout && *env_timeout && (timeout_ms = parse_timeout(env_timeout)) < 0)
        usage("ACL_WRAP_TIMEOUT must be milliseconds, 1..600000");
    if (env_fail && *env_fail && (fail_open = parse_fail(env_fail)) < 0)
        usage("ACL_WRAP_FAIL must be open or closed");
    started.socket = copy_env("ACL_WRAP_SOCKET");
    started.service = copy_env("ACL_WRAP_SERVICE");
    started.daemon_dir = copy_env("ACL_WRAP_DAEMON_DIR");
    started.path = copy_env("PATH");        /* the rule's PATH is not ours */
    forget_settings();
    sock = started.socket && *started.socket ? started.socket : DEFAULT_SOCKET;
    service = started.service;
    dir = started.daemon_dir;
    path = started.path;

    if (argc < 1)
        usage("no arguments at all");
    if (strcmp(prog, "acl-wrap") == 0) {
        int opt;
        opterr = 0;             /* our own message, not getopt's */
        while ((opt = getopt(argc, argv, "+s:n:t:och")) != -1) {
            switch (opt) {
            case 's': sock = optarg; break;
            case 'n': service = optarg; break;
            case 't':
                if ((timeout_ms = parse_timeout(optarg)) < 0)
                    usage("-t takes milliseconds, 1..600000");
                break;
            case 'o': fail_open = 1; break;
            case 'c': fail_open = 0; break;
            case 'h': usage("acl-wrap asks the acl sidecar, then runs server or refuses");
                break;
            default: usage("bad option");
            }
        }
        if (optind >= argc)
            usage("no server to run");
        server_path = argv[optind];
        server_argv = argv + optind;
        search_path = 1;
        if (!service || !*service)
            service = base(server_path);
    } else {
        if (!*prog)     /* xinetd: flags = NAMEINARGS must come before server_args */
            usage("empty argv[0]: no server to run (xinetd: put flags before server_args)");
        /* tcpd tells the two kinds apart by the first byte only */
        if (argv[0][0] == '/') {
            server_path = argv[0];
            argv[0] = (char *)prog;
        } else {
            if ((size_t)snprintf(pathbuf, sizeof pathbuf, "%s/%s",
                                 dir && *dir ? dir : DEFAULT_DAEMON_DIR, argv[0])
                >= sizeof pathbuf)
                usage("server path too long");
            server_path = pathbuf;
        }
        server_argv = argv;
        search_path = 0;
        if (!service || !*service)
            service = argv[0];
    }
    if (strlen(service) > 255)
        usage("service name longer than 255 bytes");
    c.daemon = service;
    closelog();
    openlog(service, LOG_PID, wrap_log_facility);

    rc = read_endpoints(0, &c, timeout_ms, err, sizeof err);
    if (rc < 0) {
        complain("%s", err);
        if (rc == READ_LISTENING)
            sleep(LISTENING_PAUSE_S);   /* the connection stays queued: slow the restarts */
        exit(EXIT_USAGE);
    }
    memset(&st, 0, sizeof st);
    st.conn = &c;
    st.lease_fd = -1;
    st.deny_priority = wrap_log_facility | LOG_WARNING;

    ucspi_names(&c, &names);
    reqlen = encode_decide(req, sizeof req, &c, REQUEST_ID, 1, &names);   /* LEASE, SEAL */
    ok = reqlen > 0 &&
         ask_sidecar(sock, timeout_ms, req, reqlen, &reply, &replylen, &lease_fd,
                     err, sizeof err) == 0 &&
         decode_decision(reply, replylen, REQUEST_ID, &d, err, sizeof err) == 0;
    free(reply);                /* the decision holds copies of what it needs */
    if (!ok) {
        if (reqlen == 0)
            snprintf(err, sizeof err, "cannot encode the request");
        if (lease_fd >= 0)
            close(lease_fd);
        if (!fail_open) {
            syslog(LOG_ERR, "error: cannot ask the sidecar at %s: %s; failing closed", sock, err);
            refuse(&c, wrap_log_facility | LOG_WARNING, EXIT_TEMPORARY);
        }
        syslog(LOG_WARNING, "warning: cannot ask the sidecar at %s: %s; failing open", sock, err);
        memset(&d, 0, sizeof d);
        d.verdict = VERDICT_ALLOW;
        d.location = "";
        lease_fd = -1;
    }
    /* names the rules made the sidecar look up count as looked up here:
     * tcpd's %h, %c, %H, %s and "connect from" show them */
    if (ok && d.client_name)
        endpoint_set_name(&c.client, d.client_name);
    if (ok && d.server_name)
        endpoint_set_name(&c.server, d.server_name);
    st.lease_fd = d.lease ? lease_fd : -1;
    st.lease = d.lease;
    if (!d.lease && lease_fd >= 0)
        close(lease_fd);       /* nothing held: do not hand the server a socket */

    if (d.verdict == VERDICT_DENY) {
        st.granted = 0;
        st.log_priority = wrap_log_facility | LOG_WARNING;
        (void)run_options(&st, &d);
        syslog(st.log_priority, "refused by acl: %s%s%s", reason_text(d.reason),
               *d.location ? " at " : "", d.location);
        refuse(&c, st.log_priority, EXIT_REFUSED);
    }

    st.granted = 1;
    st.log_priority = wrap_log_facility | LOG_INFO;
    set_ucspi_env(&c);
    for (i = 0; i < d.env_count; i++)
        apply_env(&d.env[i]);
    if (run_options(&st, &d) < 0)
        refuse(&c, wrap_log_facility | LOG_WARNING, EXIT_REFUSED);
    if (d.verdict == VERDICT_DELEGATE) {
        /* twist execs inside run_options; reaching here means it was absent */
        syslog(LOG_ERR, "error: decision says delegate but carries no twist");
        refuse(&c, wrap_log_facility | LOG_WARNING, EXIT_REFUSED);
    }
    syslog(st.log_priority, "connect from %s (%s)", endpoint_info(&c.client), c.client.text);
    carry_lease(st.lease_fd, st.lease);
    exec_server(server_path, server_argv, search_path, path);
    syslog(LOG_ERR, "error: cannot execute %s: %m", server_path);
    if (ok)
        free_decision(&d);
    return EXIT_TEMPORARY;
}
