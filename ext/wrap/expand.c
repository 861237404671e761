/* tcpd's % expansions (spec A.9), for spawn, twist, setenv and banners.
 *
 * Rules:
 * - Left to right and lazy: %n looks the client name up; %h gives that name
 *   only if a lookup already happened and the name is known, else the
 *   address.  So `%h %n` and `%n %h` differ, as they do in tcpd.  A lookup
 *   the sidecar made while deciding (the DECISION's names section, main.c)
 *   has "already happened", as tcpd's own lookup while matching has.
 * - Every *expanded value* has each byte outside A-Za-z0-9 and !@%-_=+:,./
 *   replaced by `_`.  That is what keeps a client-controlled host name such
 *   as `x;rm${IFS}-rf` from reaching /bin/sh as shell syntax: after the
 *   replacement, no quote, blank, `;`, `$`, backquote, `|`, `&`, `<`, `>`,
 *   `(`, `)`, `*`, `?`, `[`, `~`, `#` or newline can come from the client.
 *   The literal text around the expansions is the operator's rule text.
 * - An unknown %x logs a warning and expands to nothing; a `%` at the very
 *   end is kept as it is.
 * - `cap` is the buffer's size, and at most cap - 2 bytes of result fit,
 *   one fewer than the buffer could hold: that is tcpd's limit, and rules
 *   are written against tcpd's limits.  A longer result is an error that
 *   refuses the connection (tcpd ends without running the server): a
 *   cut-down command is never run.
 * - %u is "unknown": acl-wrap does no RFC 931 (ident) lookups.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "wrap.h"

static const char OK_CHARS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@%-_=+:,./";

/* "user@host" when the user is known (never: no ident), else the host info. */
static const char *client_info(struct conn *c)
{
    return endpoint_info(&c->client);
}

/* "daemon@host" info; just the daemon when the server host is unknown. */
static const char *server_info(struct conn *c, char *buf, size_t len)
{
    const char *host = endpoint_info(&c->server);
    if (strcmp(host, "unknown") == 0)
        return c->daemon;
    snprintf(buf, len, "%s@%s", c->daemon, host);
    return buf;
}

int percent_expand(struct conn *c, const char *in, char *out, size_t cap)
{
    size_t o = 0;
    char tmp[NAME_MAX_LEN + 320];

    if (cap < 2)
        return -1;
    out[0] = 0;
    while (*in) {
        const char *val;
        size_t vlen, i;
        int sanitize = 1;

        if (in[0] == '%' && in[1] != 0) {
            char k = in[1];
            in += 2;
            switch (k) {
            case 'a': val = c->client.text; break;
            case 'A': val = c->server.text; break;
            case 'h': val = endpoint_info(&c->client); break;
            case 'H': val = endpoint_info(&c->server); break;
            case 'n': val = endpoint_name(&c->client); break;
            case 'N': val = endpoint_name(&c->server); break;
            case 'c': val = client_info(c); break;
            case 's': val = server_info(c, tmp, sizeof tmp); break;
            case 'd': val = c->daemon; break;
            case 'u': val = "unknown"; break;
            case 'p': snprintf(tmp, sizeof tmp, "%ld", (long)getpid()); val = tmp; break;
            case 'r':
                if (c->client.known) snprintf(tmp, sizeof tmp, "%u", c->client.port);
                else snprintf(tmp, sizeof tmp, "unknown");
                val = tmp;
                break;
            case 'R':
                if (c->server.known) snprintf(tmp, sizeof tmp, "%u", c->server.port);
                else snprintf(tmp, sizeof tmp, "unknown");
                val = tmp;
                break;
            case '%': val = "%"; break;
            default:
                syslog(LOG_WARNING, "warning: unrecognized %%%c", k);
                val = "";
                break;
            }
        } else {
            val = in++;
            vlen = 1;
            sanitize = 0;
            goto append;
        }
        vlen = strlen(val);
    append:
        if (o + vlen > cap - 2) {
            syslog(LOG_WARNING, "warning: percent expansion too long: %.30s...", out);
            return -1;
        }
        for (i = 0; i < vlen; i++) {
            char ch = val[i];
            out[o++] = (sanitize && !strchr(OK_CHARS, ch)) ? '_' : ch;
        }
        out[o] = 0;
    }
    out[o] = 0;
    return 0;
}
