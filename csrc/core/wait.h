/*
 * wait.h - waiting with a deadline and an interrupt check: the one
 * definition of sk_intr, and sk_wait (one fd, poll).
 *
 * Every blocking call of the core takes one absolute monotonic deadline
 * (clock.h) and, optionally, an sk_intr.  While it waits, on EINTR and at
 * least every intr->slice_ms, it calls intr->check; if that returns
 * nonzero the call stops with SK_INTR.  The binding's check takes the GIL
 * and runs Python's signal handlers, so Ctrl-C interrupts a wait promptly
 * even with no deadline; a check is never called with a core lock held.
 *
 * No Python; no GIL needed.
 */
#ifndef SK_WAIT_H
#define SK_WAIT_H

#include <stdint.h>

#include "clock.h"
#include "sk.h"

typedef struct sk_intr {
    int (*check)(void *ctx); /* nonzero: stop with SK_INTR */
    void *ctx;
    int slice_ms; /* longest single wait when check is set (<=0: no cap) */
} sk_intr;

/* Contract: pure.  The longest single wait in ms that intr allows, or -1
 * (no periodic check: wait for the event or the deadline). */
static inline int sk_intr_slice_ms(const sk_intr *intr)
{
    return intr != NULL && intr->check != NULL && intr->slice_ms > 0
               ? intr->slice_ms
               : -1;
}

/* Contract: pure.  When a wait that begins at `now` must wake at the
 * latest: deadline, or earlier for intr's next periodic check. */
static inline int64_t sk_intr_until(const sk_intr *intr, int64_t now,
                                    int64_t deadline)
{
    int slice = sk_intr_slice_ms(intr);
    int64_t t = now + (int64_t)slice * 1000000LL;

    if (slice < 0 || (deadline != SK_NO_DEADLINE && deadline <= t))
        t = deadline;
    return t;
}

/* Contract: calls intr->check (it may take the GIL): the caller holds no
 * core lock.  Nonzero: stop with SK_INTR. */
static inline int sk_intr_fire(const sk_intr *intr)
{
    return intr != NULL && intr->check != NULL && intr->check(intr->ctx);
}

/* Wait until fd is ready for `events` (POLLIN/POLLOUT) or the deadline.
 * SK_OK (ready or error condition pending), SK_TIMEOUT, SK_INTR, SK_ERR
 * (err names "poll"). */
int sk_wait(int fd, short events, int64_t deadline, const sk_intr *intr,
            sk_err *err);

/* sk_wait that also tells which events poll() reported (*revents: POLLOUT,
 * POLLERR, POLLHUP...; 0 unless SK_OK). */
int sk_wait_revents(int fd, short events, int64_t deadline,
                    const sk_intr *intr, short *revents, sk_err *err);

#endif /* SK_WAIT_H */
