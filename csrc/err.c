/* err.c - filling the sk_err record (see sk.h). */
#include "sk.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Contract: pure, no allocation; err may be NULL. */
int sk_err_set(sk_err *err, sk_errcode code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        goto done;
    err->code = code;
    err->sys_errno = 0;
    err->syscall = NULL;
    err->detail = 0;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
done:
    return SK_ERR;
}

/* Contract: pure, no allocation; err may be NULL.  strerror_r (GNU flavour)
 * is used because strerror is not thread-safe and the core runs without the
 * GIL. */
int sk_err_sys(sk_err *err, const char *syscall, int e)
{
    char tmp[96];
    const char *s;

    if (err == NULL)
        goto done;
    s = strerror_r(e, tmp, sizeof(tmp));
    err->code = (e == ECONNRESET || e == EPIPE) ? SK_E_RESET : SK_E_SYS;
    err->sys_errno = e;
    err->syscall = syscall;
    err->detail = 0;
    snprintf(err->msg, sizeof(err->msg), "%s: %s", syscall, s);
done:
    return SK_ERR;
}

/* Contract: pure. */
void sk_err_clear(sk_err *err)
{
    if (err == NULL)
        return;
    err->code = SK_E_NONE;
    err->sys_errno = 0;
    err->syscall = NULL;
    err->detail = 0;
    err->msg[0] = '\0';
}
