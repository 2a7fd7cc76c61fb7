/* wait.c - sk_wait: one fd, one deadline, an interrupt check (wait.h). */
#include "wait.h"

#include <errno.h>
#include <poll.h>

/* Contract: no GIL needed; intr->check is called on EINTR and every
 * intr->slice_ms.  Returns SK_OK also for POLLERR/POLLHUP so the caller's
 * next syscall reports the real error. */
int sk_wait(int fd, short events, int64_t deadline, const sk_intr *intr,
            sk_err *err)
{
    short revents;

    return sk_wait_revents(fd, events, deadline, intr, &revents, err);
}

/* Contract: as sk_wait; *revents gets what poll() reported. */
int sk_wait_revents(int fd, short events, int64_t deadline,
                    const sk_intr *intr, short *revents, sk_err *err)
{
    struct pollfd p;
    int cap = sk_intr_slice_ms(intr), n, rc;

    *revents = 0;
    for (;;) {
        p.fd = fd;
        p.events = events;
        p.revents = 0;
        n = poll(&p, 1, sk_poll_ms(deadline, cap));
        if (n > 0) {
            if (p.revents & POLLNVAL) {
                rc = sk_err_sys(err, "poll", EBADF);
                goto done;
            }
            *revents = p.revents;
            rc = SK_OK;
            goto done;
        }
        if (n == 0) {
            if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline) {
                rc = SK_TIMEOUT;
                goto done;
            }
        } else if (errno != EINTR) {
            rc = sk_err_sys(err, "poll", errno);
            goto done;
        }
        /* EINTR or a slice elapsed: let the owner run signal handlers */
        if (sk_intr_fire(intr)) {
            rc = SK_INTR;
            goto done;
        }
    }
done:
    return rc;
}
