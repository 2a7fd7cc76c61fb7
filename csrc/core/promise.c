/* promise.c - one-shot result slot with futex waits (see promise.h). */
#include "promise.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "sys.h"

/* Contract: no allocation.  Every field but the inline payload room is
 * set (that is written before it is read: len is 0); clearing the whole
 * promise was ~70 instructions per aio request. */
void sk_promise_init(sk_promise *p)
{
    p->state = 0;
    p->prev = 0;
    p->fail = 0;
    p->id = 0;
    p->late_mark = 0;
    sk_heap_node_init(&p->deadline);
    p->deadline.key = SK_NO_DEADLINE;
    p->next = NULL;
    p->data = p->small;
    p->len = 0;
}

/* Contract: frees what sk_promise_set_payload allocated. */
void sk_promise_release(sk_promise *p)
{
    if (p->data != p->small)
        free(p->data);
    p->data = p->small;
    p->len = 0;
}

/* Contract: only the thread entitled to settle p calls it, before the
 * settle publishes the payload. */
int sk_promise_set_payload(sk_promise *p, const void *data, size_t len)
{
    unsigned char *dst = p->small;
    int rc = SK_ERR;

    if (len > SK_PROMISE_INLINE) {
        dst = sk_malloc(len);
        if (dst == NULL)
            goto error;
    }
    if (len)
        memcpy(dst, data, len);
    sk_promise_release(p);
    p->data = dst;
    p->len = len;
    rc = SK_OK;
error:
    return rc;
}

/* Contract: any thread; the payload and fail code written before are
 * published by the release of the compare-and-swap. */
int sk_promise_settle(sk_promise *p, unsigned final, int fail)
{
    uint32_t w = SK_LOAD_RELAXED(&p->state);
    int won = 0;

    p->fail = fail;
    do {
        if ((w & SK_P_STATE) != SK_P_PENDING)
            goto done;
    } while (!SK_CAS(&p->state, &w, (w & SK_P_NOTIFY) | final, SK_RELAXED));
    p->prev = w;
    won = 1;
done:
    return won;
}

/* Contract: any thread, no lock held needed. */
void sk_promise_wake(sk_promise *p)
{
    syscall(SYS_futex, &p->state, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Contract: any thread. */
int sk_promise_cancel(sk_promise *p)
{
    int won = sk_promise_settle(p, SK_P_CANCELLED, SK_PF_NONE);

    if (won && (p->prev & SK_P_WAITING))
        sk_promise_wake(p);
    return won;
}

/* Contract: any thread. */
int sk_promise_mark(sk_promise *p, uint32_t flag)
{
    uint32_t w = SK_LOAD(&p->state);
    int set = 0;

    do {
        if ((w & SK_P_STATE) != SK_P_PENDING)
            goto done;
        if (w & flag)
            break;
    } while (!SK_CAS(&p->state, &w, w | flag, SK_ACQUIRE));
    set = 1;
done:
    return set;
}

/* Contract: no GIL needed; intr->check is called on EINTR and every
 * intr->slice_ms.  The deadline is absolute and monotonic: a wake-up, real
 * or spurious, never extends the wait. */
int sk_promise_wait(sk_promise *p, int64_t deadline, const sk_intr *intr)
{
    struct timespec ts, *tsp;
    int64_t slice_ns = -1, left;
    uint32_t w;
    long r;
    int rc;

    if (sk_intr_slice_ms(intr) > 0)
        slice_ns = (int64_t)sk_intr_slice_ms(intr) * 1000000;
    for (;;) {
        w = SK_LOAD(&p->state);
        if ((w & SK_P_STATE) != SK_P_PENDING) {
            rc = SK_OK;
            goto done;
        }
        left = slice_ns;
        if (deadline != SK_NO_DEADLINE) {
            left = deadline - sk_now_ns();
            if (left <= 0) {
                rc = SK_TIMEOUT;
                goto done;
            }
            if (slice_ns >= 0 && slice_ns < left)
                left = slice_ns;
        }
        if (!(w & SK_P_WAITING)) {
            if (!SK_CAS(&p->state, &w, w | SK_P_WAITING, SK_ACQUIRE))
                continue; /* settled or flagged meanwhile: look again */
            w |= SK_P_WAITING;
        }
        tsp = NULL;
        if (left >= 0) {
            ts.tv_sec = left / 1000000000;
            ts.tv_nsec = left % 1000000000;
            tsp = &ts;
        }
        /* sleeps only while the word still equals w (pending, waiting) */
        r = syscall(SYS_futex, &p->state, FUTEX_WAIT_PRIVATE, w, tsp, NULL, 0);
        if (r == 0 || errno == EAGAIN)
            continue;
        if (errno == EINTR || errno == ETIMEDOUT) {
            /* a signal, or a slice elapsed: let the owner run handlers */
            if (sk_intr_fire(intr)) {
                rc = SK_INTR;
                goto done;
            }
            continue;
        }
        /* EFAULT/EINVAL cannot happen for a live, aligned word: poll it */
        ts.tv_sec = 0;
        ts.tv_nsec = 1000000;
        nanosleep(&ts, NULL);
    }
done:
    return rc;
}
