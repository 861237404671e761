/* Test helper, preloaded into tcpdmatch: Debian 12 builds libwrap with
 * _FORTIFY_SOURCE, so its log calls reach the __syslog_chk entry points and
 * bypass tcpdmatch's own logger.  Send every syslog call to stderr so the
 * "matched:" lines and the warnings become visible to the tests. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

void openlog(const char *ident, int option, int facility)
{
    (void)ident; (void)option; (void)facility;
}

void closelog(void) {}

void vsyslog(int priority, const char *format, va_list ap)
{
    (void)priority;
    vfprintf(stderr, format, ap);
    fputc('\n', stderr);
}

void syslog(int priority, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    vsyslog(priority, format, ap);
    va_end(ap);
}

void __syslog_chk(int priority, int flag, const char *format, ...)
{
    va_list ap;
    (void)flag;
    va_start(ap, format);
    vsyslog(priority, format, ap);
    va_end(ap);
}

void __vsyslog_chk(int priority, int flag, const char *format, va_list ap)
{
    (void)flag;
    vsyslog(priority, format, ap);
}
