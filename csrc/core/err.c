/* err.c - filling the sk_err record (see sk.h). */
#include "sk.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Contract: pure, no allocation.  buf holds a NUL-terminated message that
 * vsnprintf cut to cap - 1 bytes when len >= cap. */
void sk_err_fit(char *buf, size_t cap, size_t len)
{
    size_t cut, i;

    if (len < cap || cap < 8)
        goto done; /* it fitted (or there is no room to say more) */
    cut = cap - 4; /* room for "..." and the NUL */
    /* the last space at or before cut, unless that throws away more than
     * half the message: then an overlong word is cut where it has to be */
    for (i = cut; i > cap / 2; i--) {
        if (buf[i] == ' ') {
            cut = i;
            /* "...", not " ..." or ";..." after a clause */
            while (cut > 0 && strchr(" ,;:", buf[cut - 1]) != NULL)
                cut--;
            goto put;
        }
    }
    while (cut > 0 && ((unsigned char)buf[cut] & 0xC0) == 0x80)
        cut--; /* never split a UTF-8 sequence */
put:
    memcpy(buf + cut, "...", 4);
done:
    return;
}

/* Contract: pure, no allocation; err may be NULL. */
int sk_err_set(sk_err *err, sk_errcode code, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err == NULL)
        goto done;
    err->code = code;
    err->sys_errno = 0;
    err->syscall = NULL;
    err->detail = 0;
    va_start(ap, fmt);
    n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    if (n < 0) /* an encoding error: keep what was written */
        err->msg[sizeof(err->msg) - 1] = '\0';
    else
        sk_err_fit(err->msg, sizeof(err->msg), (size_t)n);
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
    int n;

    if (err == NULL)
        goto done;
    s = strerror_r(e, tmp, sizeof(tmp));
    err->code = (e == ECONNRESET || e == EPIPE) ? SK_E_RESET : SK_E_SYS;
    err->sys_errno = e;
    err->syscall = syscall;
    err->detail = 0;
    n = snprintf(err->msg, sizeof(err->msg), "%s: %s", syscall, s);
    if (n >= 0)
        sk_err_fit(err->msg, sizeof(err->msg), (size_t)n);
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
