/*
 * clock.h - monotonic time and deadlines.
 *
 * A deadline is an absolute CLOCK_MONOTONIC time in nanoseconds, computed once
 * per operation; SK_NO_DEADLINE (-1) means wait forever.  Poll timeouts are
 * recomputed from the deadline after every wake-up, so an EINTR or a spurious
 * wake-up never extends the operation.
 */
#ifndef SK_CLOCK_H
#define SK_CLOCK_H

#include <stdint.h>
#include <time.h>

#include "atomic.h"

#define SK_NO_DEADLINE ((int64_t)-1)

/* The clock seam: NULL (always, outside tests) reads CLOCK_MONOTONIC.  The
 * C runner points it at a fake clock (tests/c/test_hub.c) so that timers
 * and dead-peer decisions can be driven step by step; set it before
 * creating the objects that read it and reset it after freeing them. */
typedef int64_t (*sk_clock_fn)(void);
extern sk_clock_fn sk_clock_hook; /* sys.c */

/* Now, in ns on CLOCK_MONOTONIC (or the clock seam's).  Thread-safe, no
 * GIL needed. */
static inline int64_t sk_now_ns(void)
{
    sk_clock_fn fake = SK_LOAD_RELAXED(&sk_clock_hook);
    struct timespec ts;
    int64_t now;

    if (__builtin_expect(fake != NULL, 0)) {
        now = fake();
    } else {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    return now;
}

/* Deadline for a timeout in seconds; a negative timeout means none.
 * A timeout of 0 yields a deadline of now (poll once, do not wait). */
static inline int64_t sk_deadline_after(double seconds)
{
    int64_t deadline = SK_NO_DEADLINE;

    /* over ~285 years: treat as forever, avoid overflow */
    if (seconds >= 0 && seconds <= 9.0e9)
        deadline = sk_now_ns() + (int64_t)(seconds * 1e9);
    return deadline;
}

/* Milliseconds left until deadline for poll(), rounded up, capped at cap_ms
 * (cap_ms < 0: no cap).  Returns -1 for no deadline and no cap, 0 if passed. */
static inline int sk_poll_ms(int64_t deadline, int cap_ms)
{
    int64_t left;
    int ms = cap_ms;

    if (deadline == SK_NO_DEADLINE)
        goto done;
    left = deadline - sk_now_ns();
    if (left <= 0) {
        ms = 0;
        goto done;
    }
    left = (left + 999999) / 1000000;
    ms = left > 0x7fffffff ? 0x7fffffff : (int)left;
    if (cap_ms >= 0 && ms > cap_ms)
        ms = cap_ms;
done:
    return ms;
}

#endif /* SK_CLOCK_H */
