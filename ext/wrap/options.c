/* hosts_options carried by a DECISION (spec A.8), executed here -- the
 * sidecar never runs anything.
 *
 * Rules:
 * - Options run in the order the rule lists them.  The sidecar has already
 *   applied `allow`/`deny` to the verdict and rejected rules with option
 *   errors; an option name this program does not know is still an error,
 *   and an error refuses the connection (tcpd: "any error denies").
 * - Buffer sizes and number syntax are tcpd's (Debian 7.6.q on glibc), no
 *   tighter and no looser: a value expands into TCPD_BUFSIZ bytes (at most
 *   TCPD_BUFSIZ - 2 fit, expand.c); numbers are read as sscanf "%d%c"
 *   ("%o%c" for umask) reads them -- one number and nothing after it, any
 *   int, nice(2) and the kernel clamping what they must.  A rule tcpd takes
 *   is taken here, and one tcpd refuses is refused
 *   (tests/wrap/test_vs_tcpd.py asks tcpd).
 * - `spawn cmd`: %-expand, fork `/bin/sh -c cmd` with stdin/stdout/stderr
 *   on /dev/null and no other descriptor, wait for it; the verdict stands.
 * - `twist cmd`: %-expand, put the client socket on fds 0-2 and replace
 *   this process by `/bin/sh -c cmd`.  The lease descriptor goes along, so
 *   a twisted command holds its slot like a real server.  On a refusal
 *   twist is not run (the sidecar said no; nothing replaces the refusal).
 * - `setenv name value`: "name value" %-expanded as a whole, trimmed, then
 *   split at its first blank; both parts trimmed, internal blanks kept.  An
 *   empty name or one with `=` is an error (setenv(3) says EINVAL).
 * - `banners /dir`: copy /dir/<daemon> to the client, %-expanded, LF sent
 *   as CRLF; a missing file is ignored.  Not on UDP.  Read as tcpd reads it:
 *   in pieces of at most TCPD_BUFSIZ - 2 bytes, each ending at a LF or
 *   there, whose LF becomes CRLF before the piece is expanded on its own
 *   into 2 * TCPD_BUFSIZ bytes.  So a % cut by a piece boundary stays text,
 *   and the CRLF counts toward the limit.
 * - `severity [facility.]level` changes the priority of the verdict line
 *   and of a later twist line.  tcpd logs "twist HOST to CMD" at the
 *   priority of its refusals (warning) even on a grant, and severity sets
 *   both of its priorities.
 * - `keepalive`, `linger secs`, `nice [n]`, `umask octal` act on this
 *   process or the client socket and so reach the real server.
 * - `rfc931`, `user`, `group`: accepted and ignored (no ident lookups;
 *   Debian's tcpd does nothing for user/group either, spec A.8).
 * - `aclexec` would change the *decision*, which is the sidecar's job; it
 *   is refused here rather than half-done.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "wrap.h"

/* glibc's BUFSIZ, which sizes tcpd's buffers; spelled out because other
 * C libraries have other BUFSIZs (musl: 1024), and the limits are tcpd's. */
#define TCPD_BUFSIZ 8192

static const char *skip_blank(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static int has_value(const struct item *o) { return *skip_blank(o->value) != 0; }

/* One number and nothing after it, as tcpd reads option values. */
static int scan_int(const char *s, int *out)
{
    char junk;
    return sscanf(s, "%d%c", out, &junk) == 1 ? 0 : -1;
}

/* isspace() trimmed at both ends, in place (tcpd trims option values so). */
static char *trim(char *s)
{
    char *end;
    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    *end = 0;
    return s;
}

static void close_from(int lowfd)
{
    long max;
    int fd;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (close_range((unsigned)lowfd, ~0U, 0) == 0)
        return;
#endif
    max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (fd = lowfd; fd < max; fd++)
        close(fd);
}

static int do_spawn(struct conn *c, const char *cmd)
{
    struct sigaction dfl, old;
    pid_t pid;
    int status;

    /* A super-server may leave SIGCHLD ignored; then wait() would not see
     * our child.  Restore the caller's disposition afterwards. */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, &old);
    pid = fork();
    if (pid < 0) {
        syslog(LOG_ERR, "error: spawn: fork: %m");
        sigaction(SIGCHLD, &old, NULL);
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        close_from(3);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    (void)c;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    sigaction(SIGCHLD, &old, NULL);
    return 0;
}

static int do_banners(struct conn *c, const char *dir)
{
    char path[TCPD_BUFSIZ], line[TCPD_BUFSIZ], out[2 * TCPD_BUFSIZ];
    FILE *f;

    if (c->dgram)
        return 0;
    /* The daemon name may hold '/' (a relative argv[0] in tcpd mode, or
     * -n): tcpd joins it to the directory as it is, and so do we.  It
     * comes from the admin's configuration, never from the client. */
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, c->daemon) >= sizeof path)
        return 0;
    f = fopen(path, "re");
    if (!f) {
        if (errno != ENOENT)
            syslog(LOG_WARNING, "warning: banners: %s: %m", path);
        return 0;
    }
    /* pieces of at most sizeof line - 2 bytes: room for the CR */
    while (fgets(line, sizeof line - 1, f)) {
        char *nl = strchr(line, '\n');
        if (nl)
            strcpy(nl, "\r\n");
        if (percent_expand(c, line, out, sizeof out) < 0) {
            fclose(f);
            return -1;
        }
        if (send(0, out, strlen(out), MSG_NOSIGNAL) < 0)
            break;                  /* the client went away; the verdict stands */
    }
    fclose(f);
    return 0;
}

static int set_env(struct conn *c, const char *value)
{
    char buf[TCPD_BUFSIZ], *name, *val;

    if (percent_expand(c, value, buf, sizeof buf) < 0)
        return -1;
    name = trim(buf);
    val = name + strcspn(name, " \t\r\n");
    if (*val)
        *val++ = 0;
    return setenv(trim(name), trim(val), 1);   /* EINVAL: empty name, '=' */
}

static const struct { const char *name; int value; } LEVELS[] = {
    {"emerg", LOG_EMERG}, {"alert", LOG_ALERT}, {"crit", LOG_CRIT}, {"err", LOG_ERR},
    {"warning", LOG_WARNING}, {"notice", LOG_NOTICE}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
}, FACILITIES[] = {
    {"auth", LOG_AUTH}, {"authpriv", LOG_AUTHPRIV}, {"cron", LOG_CRON}, {"daemon", LOG_DAEMON},
    {"kern", LOG_KERN}, {"lpr", LOG_LPR}, {"mail", LOG_MAIL}, {"news", LOG_NEWS},
    {"syslog", LOG_SYSLOG}, {"user", LOG_USER}, {"uucp", LOG_UUCP}, {"local0", LOG_LOCAL0},
    {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},
    {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
    {"local7", LOG_LOCAL7},
};

static int lookup_name(const char *s, size_t n, int levels, int *out)
{
    size_t i, count = levels ? sizeof LEVELS / sizeof LEVELS[0]
                             : sizeof FACILITIES / sizeof FACILITIES[0];
    for (i = 0; i < count; i++) {
        const char *name = levels ? LEVELS[i].name : FACILITIES[i].name;
        if (strlen(name) == n && strncasecmp(name, s, n) == 0) {
            *out = levels ? LEVELS[i].value : FACILITIES[i].value;
            return 0;
        }
    }
    return -1;
}

static int set_severity(struct run_state *st, const char *value)
{
    const char *v = skip_blank(value), *dot = strchr(v, '.');
    size_t n = strlen(v);
    int level, facility = wrap_log_facility;

    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (dot && (size_t)(dot - v) < n) {
        if (lookup_name(v, (size_t)(dot - v), 0, &facility) < 0)
            return -1;
        n -= (size_t)(dot - v) + 1;
        v = dot + 1;
    }
    if (lookup_name(v, n, 1, &level) < 0)
        return -1;
    st->log_priority = st->deny_priority = facility | level;
    return 0;
}

void carry_lease(int lease_fd, uint64_t lease)
{
    char buf[32];
    int flags;
    if (lease_fd < 0)
        return;
    /* The lease lives as long as this descriptor: let it cross exec, in
     * blocking mode as any inherited descriptor should be. */
    flags = fcntl(lease_fd, F_GETFL);
    if (flags >= 0)
        fcntl(lease_fd, F_SETFL, flags & ~O_NONBLOCK);
    fcntl(lease_fd, F_SETFD, 0);
    snprintf(buf, sizeof buf, "%d", lease_fd);
    setenv("ACL_LEASE_FD", buf, 1);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)lease);
    setenv("ACL_LEASE_ID", buf, 1);
}

static void do_twist(struct run_state *st, const char *cmd)
{
    carry_lease(st->lease_fd, st->lease);
    syslog(st->deny_priority, "twist %s to %s", endpoint_info(&st->conn->client), cmd);
    dup2(0, 1);
    dup2(0, 2);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    syslog(LOG_ERR, "error: twist: cannot execute /bin/sh: %m");
    _exit(EXIT_TEMPORARY);
}

int run_options(struct run_state *st, const struct decision *d)
{
    size_t i;
    char cmd[TCPD_BUFSIZ];
    struct conn *c = st->conn;

    for (i = 0; i < d->option_count; i++) {
        const struct item *o = &d->options[i];
        const char *name = o->name, *value = skip_blank(o->value);
        int n;
        unsigned mask;
        char junk;

        if (strcasecmp(name, "spawn") == 0 || strcasecmp(name, "twist") == 0) {
            if (!has_value(o) || percent_expand(c, value, cmd, sizeof cmd) < 0)
                goto bad;
            if (tolower((unsigned char)name[0]) == 's') {
                if (do_spawn(c, cmd) < 0)
                    goto bad;
            } else if (st->granted) {
                do_twist(st, cmd);
            } else {
                syslog(LOG_WARNING, "warning: twist not run on a refused connection");
            }
        } else if (strcasecmp(name, "setenv") == 0) {
            if (set_env(c, value) < 0)
                goto bad;
        } else if (strcasecmp(name, "banners") == 0) {
            if (!has_value(o) || do_banners(c, value) < 0)
                goto bad;
        } else if (strcasecmp(name, "severity") == 0) {
            if (set_severity(st, value) < 0)
                goto bad;
        } else if (strcasecmp(name, "keepalive") == 0) {
            int on = 1;
            if (!c->dgram)
                setsockopt(0, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        } else if (strcasecmp(name, "linger") == 0) {
            struct linger l;
            if (scan_int(value, &n) < 0 || n < 0)
                goto bad;
            l.l_onoff = n != 0;
            l.l_linger = n;
            if (!c->dgram)
                setsockopt(0, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        } else if (strcasecmp(name, "nice") == 0) {
            n = 10;
            if (*value && scan_int(value, &n) < 0)
                goto bad;
            errno = 0;
            if (nice(n) == -1 && errno)
                syslog(LOG_WARNING, "warning: nice %d: %m", n);
        } else if (strcasecmp(name, "umask") == 0) {
            if (sscanf(value, "%o%c", &mask, &junk) != 1 || (mask & 0777) != mask)
                goto bad;
            umask((mode_t)mask);
        } else if (strcasecmp(name, "rfc931") == 0 || strcasecmp(name, "user") == 0 ||
                   strcasecmp(name, "group") == 0 || strcasecmp(name, "allow") == 0 ||
                   strcasecmp(name, "deny") == 0) {
            continue;   /* see the rules at the top */
        } else {
            syslog(LOG_ERR, "error: option %s is not supported by acl-wrap", name);
            return -1;
        }
        continue;
    bad:
        syslog(LOG_ERR, "error: bad option: %s %s", name, value);
        return -1;
    }
    return 0;
}
