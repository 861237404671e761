/* hosts_options carried by a DECISION (spec A.8), executed here -- the
 * sidecar never runs anything.
 *
 * Rules:
 * - Options run in the order the rule lists them.  The sidecar has already
 *   applied `allow`/`deny` to the verdict and rejected rules with option
 *   errors; an option name this program does not know is still an error,
 *   and an error refuses the connection (tcpd: "any error denies").
 * - `spawn cmd`: %-expand, fork `/bin/sh -c cmd` with stdin/stdout/stderr
 *   on /dev/null and no other descriptor, wait for it; the verdict stands.
 * - `twist cmd`: %-expand, put the client socket on fds 0-2 and replace
 *   this process by `/bin/sh -c cmd`.  The lease descriptor goes along, so
 *   a twisted command holds its slot like a real server.  On a refusal
 *   twist is not run (the sidecar said no; nothing replaces the refusal).
 * - `setenv name value`: value %-expanded, internal blanks kept.
 * - `banners /dir`: copy /dir/<daemon> to the client, each line
 *   %-expanded, LF sent as CRLF; a missing file is ignored.  Not on UDP.
 * - `severity [facility.]level` changes the priority of the verdict line.
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

#define CMD_MAX 4096

static const char *skip_blank(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static int has_value(const struct item *o) { return *skip_blank(o->value) != 0; }

static int parse_int(const char *s, int base, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, base);
    end = (char *)skip_blank(end);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
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
    char path[4096], line[CMD_MAX], out[CMD_MAX + 2];
    FILE *f;

    if (c->dgram)
        return 0;
    if (strchr(c->daemon, '/')) {
        syslog(LOG_WARNING, "warning: banners: daemon name contains '/'");
        return 0;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, c->daemon) >= sizeof path)
        return 0;
    f = fopen(path, "re");
    if (!f) {
        if (errno != ENOENT)
            syslog(LOG_WARNING, "warning: banners: %s: %m", path);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        size_t n;
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        if (percent_expand(c, line, out, sizeof out - 2) < 0) {
            fclose(f);
            return -1;
        }
        n = strlen(out);
        if (nl) {
            out[n++] = '\r';
            out[n++] = '\n';
        }
        if (send(0, out, n, MSG_NOSIGNAL) < 0)
            break;                  /* the client went away; the verdict stands */
    }
    fclose(f);
    return 0;
}

static int set_env(struct conn *c, const char *value)
{
    char buf[CMD_MAX], name[256];
    const char *v = skip_blank(value), *end;
    size_t n;

    if (percent_expand(c, v, buf, sizeof buf) < 0)
        return -1;
    v = buf;
    end = v + strcspn(v, " \t");
    n = (size_t)(end - v);
    if (n == 0 || n >= sizeof name)
        return -1;
    memcpy(name, v, n);
    name[n] = 0;
    if (strchr(name, '='))
        return -1;
    v = skip_blank(end);
    n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    {
        char val[CMD_MAX];
        memcpy(val, v, n);
        val[n] = 0;
        return setenv(name, val, 1);
    }
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
    st->log_priority = facility | level;
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
    syslog(st->log_priority, "twist %s to %s", endpoint_info(&st->conn->client), cmd);
    dup2(0, 1);
    dup2(0, 2);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    syslog(LOG_ERR, "error: twist: cannot execute /bin/sh: %m");
    _exit(EXIT_TEMPORARY);
}

int run_options(struct run_state *st, const struct decision *d)
{
    size_t i;
    char cmd[CMD_MAX];
    struct conn *c = st->conn;

    for (i = 0; i < d->option_count; i++) {
        const struct item *o = &d->options[i];
        const char *name = o->name, *value = skip_blank(o->value);
        long n;

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
            if (parse_int(value, 10, 0, 1000000, &n) < 0)
                goto bad;
            l.l_onoff = n != 0;
            l.l_linger = (int)n;
            if (!c->dgram)
                setsockopt(0, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        } else if (strcasecmp(name, "nice") == 0) {
            n = 10;
            if (*value && parse_int(value, 10, -40, 40, &n) < 0)
                goto bad;
            errno = 0;
            if (nice((int)n) == -1 && errno)
                syslog(LOG_WARNING, "warning: nice %ld: %m", n);
        } else if (strcasecmp(name, "umask") == 0) {
            if (parse_int(value, 8, 0, 0777, &n) < 0)
                goto bad;
            umask((mode_t)n);
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
