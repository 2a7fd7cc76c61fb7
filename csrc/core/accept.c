/* accept.c - accepting on a listener threads may share: a long wait in
 * accept4 itself, a short one in poll (see accept.h). */
#include "accept.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "atomic.h"
#include "clock.h"
#include "thread.h"

enum { SK_ACC_POLL, SK_ACC_BLOCK };

/* Contract: see accept.h. */
int sk_acceptor_init(sk_acceptor *a, int fd, sk_err *err)
{
    int fl, rc;

    memset(a, 0, sizeof(*a));
    a->fd = fd;
    a->timeo_ns = -1; /* unknown until set */
    pthread_mutex_init(&a->mu, NULL);
    rc = sk_cond_init_monotonic(&a->idle, err);
    /* a flag we cannot read counts as blocking: the poll path then makes
     * the listener non-blocking before its first accept4 */
    fl = fcntl(fd, F_GETFL);
    a->blocking = fl < 0 || !(fl & O_NONBLOCK);
    return rc;
}

/* Contract: caller holds a->mu.  O_NONBLOCK on (nonblock) or off; 0, or
 * -1 with errno set (fcntl). */
static int sk_acceptor_set_nonblock(sk_acceptor *a, int nonblock)
{
    int fl = fcntl(a->fd, F_GETFL), rc = -1;

    if (fl < 0)
        goto done;
    fl = nonblock ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
    if (fcntl(a->fd, F_SETFL, fl) != 0)
        goto done;
    a->blocking = !nonblock;
    rc = 0;
done:
    return rc;
}

/* Contract: caller holds a->mu.  Make the listener ready for an accept4
 * that waits in the kernel and may not outlast `left` ns (< 0: no limit):
 * blocking, and SO_RCVTIMEO at most left - SK_ACCEPT_SLACK_NS.  The
 * timeout set is 7/8 of what this wait allows; it is lowered when too long
 * for this wait (safe for everyone: a waiter wakes early and takes again)
 * and raised only when nobody is about to block on it.  SK_OK, or SK_ERR
 * (a syscall failed: poll instead). */
static int sk_acceptor_arm(sk_acceptor *a, int64_t left)
{
    int64_t t = a->timeo_ns, want = 0;
    struct timeval tv;
    int set, rc = SK_ERR;

    if (!a->blocking && sk_acceptor_set_nonblock(a, 0) != 0)
        goto done;
    if (left < 0) {
        set = t != 0 && a->waiters == 0; /* forever, when nobody relies on less */
    } else {
        want = (left - SK_ACCEPT_SLACK_NS) / 8 * 7;
        if (t <= 0 || t > left - SK_ACCEPT_SLACK_NS)
            set = 1; /* none, unknown (first use) or too long: lower it */
        else
            set = t < want / 2 && a->waiters == 0; /* fewer early wake-ups */
    }
    if (set) {
        tv.tv_sec = (time_t)(want / 1000000000LL);
        tv.tv_usec = (suseconds_t)(want % 1000000000LL / 1000);
        if (setsockopt(a->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)
            goto done;
        a->timeo_ns = want;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: takes and gives back a->mu.  Choose this turn's mode (block
 * in accept4 when `left` allows it, the clock is the real one, nobody
 * polls, and the listener could be armed; else poll) and count the caller
 * in.  SK_OK with *mode and *lfd, or SK_ERR: closed (SK_E_CLOSED), or the
 * listener could not be made non-blocking (fcntl). */
static int sk_acceptor_enter(sk_acceptor *a, int64_t left, int *mode, int *lfd,
                             sk_err *err)
{
    int rc = SK_OK;

    pthread_mutex_lock(&a->mu);
    if (a->closing || a->fd < 0) {
        rc = sk_err_set(err, SK_E_CLOSED,
                        "accept: the listener was closed; listen again");
        goto done;
    }
    *lfd = a->fd;
    if ((left < 0 || left >= SK_ACCEPT_BLOCK_MIN_NS) && a->pollers == 0 &&
        SK_LOAD_RELAXED(&sk_clock_hook) == NULL &&
        sk_acceptor_arm(a, left) == SK_OK) {
        a->waiters++;
        *mode = SK_ACC_BLOCK;
        goto done;
    }
    /* a poller's accept4 must not block: threads that chose to block and
     * have not entered accept4 yet get EAGAIN and choose again */
    if (a->blocking && sk_acceptor_set_nonblock(a, 1) != 0) {
        rc = sk_err_sys(err, "fcntl", errno);
        goto done;
    }
    a->pollers++;
    *mode = SK_ACC_POLL;
done:
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* Contract: takes and gives back a->mu.  Count the caller out of `mode`.
 * block_eagain: its blocking accept4, begun at `began`, said EAGAIN; well
 * before the timeout set means something made the listener non-blocking:
 * set it again next turn.  Returns nonzero if the acceptor is closing. */
static int sk_acceptor_leave(sk_acceptor *a, int mode, int block_eagain,
                             int64_t began)
{
    int closing;

    pthread_mutex_lock(&a->mu);
    if (mode == SK_ACC_BLOCK)
        a->waiters--;
    else
        a->pollers--;
    if (block_eagain &&
        (a->timeo_ns <= 0 || sk_now_ns() - began < a->timeo_ns / 2))
        a->blocking = 0;
    closing = a->closing;
    if (closing && a->waiters + a->pollers == 0)
        pthread_cond_broadcast(&a->idle);
    pthread_mutex_unlock(&a->mu);
    return closing;
}

/* Contract: see accept.h.  One turn: enter (mode), one accept4 (and, on
 * the poll path when nothing is queued, one poll), leave; then the
 * decision with no lock held (intr->check may take the GIL). */
int sk_acceptor_accept(sk_acceptor *a, int64_t deadline, const sk_intr *intr,
                       int *fd_out, sk_err *err)
{
    const char *call;
    struct pollfd p;
    int64_t now, until;
    int mode = SK_ACC_POLL, lfd = -1, fd, e, n, rc;

    for (;;) {
        now = sk_now_ns();
        until = sk_intr_until(intr, now, deadline);
        rc = sk_acceptor_enter(a,
                               until == SK_NO_DEADLINE ? -1
                               : until > now           ? until - now
                                                       : 0,
                               &mode, &lfd, err);
        if (rc != SK_OK)
            goto done;
        call = "accept4";
        e = 0;
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            e = errno;
            if (mode == SK_ACC_POLL && (e == EAGAIN || e == EWOULDBLOCK)) {
                p.fd = lfd;
                p.events = POLLIN;
                p.revents = 0;
                n = poll(&p, 1, sk_poll_ms(until, -1));
                /* ready: 0 (take again); nothing by `until`: as EAGAIN */
                e = n > 0 ? 0 : n == 0 ? EAGAIN : errno;
                if (n < 0)
                    call = "poll";
            }
        }
        if (sk_acceptor_leave(a, mode,
                              fd < 0 && mode == SK_ACC_BLOCK &&
                                  (e == EAGAIN || e == EWOULDBLOCK),
                              now)) {
            if (fd >= 0)
                close(fd); /* closing: the caller asked for no more */
            rc = sk_err_set(err, SK_E_CLOSED,
                            "accept: the listener was closed; listen again");
            goto done;
        }
        if (fd >= 0) {
            *fd_out = fd; /* TCP_NODELAY: inherited from the listener */
            rc = SK_OK;
            goto done;
        }
        if (e == 0 || e == ECONNABORTED) /* readable, or one reset in the queue */
            continue;
        if (e == EINTR) {
            if (sk_intr_fire(intr)) {
                rc = SK_INTR;
                goto done;
            }
            continue;
        }
        if (e == EAGAIN || e == EWOULDBLOCK) { /* the wait's bound passed */
            if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline) {
                rc = SK_TIMEOUT;
                goto done;
            }
            if (sk_intr_fire(intr)) {
                rc = SK_INTR;
                goto done;
            }
            continue;
        }
        rc = sk_err_sys(err, call, e);
        goto done;
    }
done:
    return rc;
}

/* Contract: see accept.h. */
int sk_acceptor_close(sk_acceptor *a, sk_err *err)
{
    struct timespec ts;
    int64_t until;
    int rc = SK_OK;

    pthread_mutex_lock(&a->mu);
    if (a->closing || a->fd < 0)
        goto done;
    a->closing = 1;
    /* a listener shut down fails accept4 (EINVAL) and polls as POLLHUP:
     * every thread in either comes out at once */
    shutdown(a->fd, SHUT_RDWR);
    until = sk_now_ns() + SK_ACCEPT_CLOSE_WAIT_NS;
    ts.tv_sec = (time_t)(until / 1000000000LL);
    ts.tv_nsec = (long)(until % 1000000000LL);
    while (a->waiters + a->pollers > 0 && sk_now_ns() < until)
        (void)pthread_cond_timedwait(&a->idle, &a->mu, &ts);
    if (close(a->fd) != 0 && errno != EINTR)
        rc = sk_err_sys(err, "close", errno);
    a->fd = -1;
done:
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* Contract: see accept.h. */
void sk_acceptor_release(sk_acceptor *a)
{
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    pthread_cond_destroy(&a->idle);
    pthread_mutex_destroy(&a->mu);
}
