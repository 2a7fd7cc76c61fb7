/*
 * promise.h - a one-shot result slot, settled without a lock by one thread
 * and waited on by any number of others (Linux futex).
 *
 * A promise starts PENDING and is settled exactly once: DONE (a payload,
 * copied in with sk_promise_set_payload before settling), FAILED (a failure
 * code) or CANCELLED.  Settling is one compare-and-swap on the state word,
 * so a settle racing a cancel is safe: exactly one of them wins.  Waiters
 * sleep on the state word with FUTEX_WAIT; a settler wakes them only when
 * one announced itself (SK_P_WAITING), so settling a promise nobody waits on
 * costs no syscall.
 *
 * SK_P_NOTIFY is a flag the owner may set while the promise is pending
 * (sk_promise_mark): it stays set after settling, so whoever settles sees
 * that the owner asked to be told (the binding uses it for Python
 * callbacks).
 *
 * Payloads up to SK_PROMISE_INLINE bytes live inside the promise; longer
 * ones are malloc'd and freed by sk_promise_release.  No Python.
 */
#ifndef SK_PROMISE_H
#define SK_PROMISE_H

#include <stddef.h>
#include <stdint.h>

#include "atomic.h"
#include "heap.h"
#include "sk.h"
#include "wait.h"

/* state word: the state in the low two bits, flags above */
#define SK_P_PENDING 0u
#define SK_P_DONE 1u
#define SK_P_FAILED 2u
#define SK_P_CANCELLED 3u
#define SK_P_STATE 3u    /* mask */
#define SK_P_WAITING 4u  /* a thread sleeps (or is about to) on the word */
#define SK_P_NOTIFY 8u   /* the owner wants to hear about the settle */

/* failure codes (SK_P_FAILED) */
enum {
    SK_PF_NONE = 0,
    SK_PF_TIMEOUT = 1, /* no reply before the deadline */
    SK_PF_NOMEM = 2,   /* the reply came but could not be stored */
    SK_PF_OWNER = 3,   /* failed by the owner (it keeps the details) */
    SK_PF_OUT_OF_STEP = 4, /* no reply before the deadline, on plain
                              framing, while a late reply to an earlier
                              request was dropped (corr.h) */
    SK_PF_REMOTE = 5,  /* an error reply: the payload is the peer's error text */
};

#define SK_PROMISE_INLINE 128

typedef struct sk_promise {
    uint32_t state;      /* atomic: SK_P_* state | flags (the futex word) */
    uint32_t prev;       /* the state word the last settle replaced (settler only) */
    int fail;            /* SK_PF_* once FAILED */
    uint64_t id;         /* correlation id (corr.h) */
    uint64_t late_mark;  /* the table's late count when added (corr.h) */
    sk_heap_node deadline; /* in the table's deadline heap (corr.h): key =
                              monotonic ns (SK_NO_DEADLINE: none), tie = id */
    struct sk_promise *next; /* list link for whoever holds it (corr.h) */
    unsigned char *data; /* payload: `small` or malloc'd */
    size_t len;
    unsigned char small[SK_PROMISE_INLINE];
} sk_promise;

/* A pending promise with no payload.  No allocation. */
void sk_promise_init(sk_promise *p);

/* Free a malloc'd payload.  Nobody may use p concurrently. */
void sk_promise_release(sk_promise *p);

/* Copy the payload in (before settling DONE; only the settler calls it).
 * SK_OK, or SK_ERR when a long payload cannot be allocated. */
int sk_promise_set_payload(sk_promise *p, const void *data, size_t len);

/* The state word (acquire: a settled promise's payload is visible). */
static inline uint32_t sk_promise_word(const sk_promise *p)
{
    return SK_LOAD(&p->state);
}

/* Contract: any thread; the state (SK_P_*) without the flags. */
static inline unsigned sk_promise_state(const sk_promise *p)
{
    return sk_promise_word(p) & SK_P_STATE;
}

/* Settle a pending promise as `final` (SK_P_DONE or SK_P_FAILED, with
 * `fail` for the latter).  Returns 1 and keeps the replaced word in
 * p->prev, or 0 when it was already settled (cancelled).  Does not wake the
 * waiters: call sk_promise_wake when p->prev has SK_P_WAITING (after
 * releasing any lock, to keep the woken thread from running into it). */
int sk_promise_settle(sk_promise *p, unsigned final, int fail);

/* Wake every thread waiting on p.  Any thread; spurious wakes are
 * harmless to sk_promise_wait. */
void sk_promise_wake(sk_promise *p);

/* Cancel a pending promise and wake its waiters.  1 if it was pending, 0 if
 * it was already settled. */
int sk_promise_cancel(sk_promise *p);

/* Set `flag` (SK_P_NOTIFY) while pending: 1 if set (or already set) while
 * pending, 0 if the promise is already settled. */
int sk_promise_mark(sk_promise *p, uint32_t flag);

/* Wait until p is settled or the deadline passes: SK_OK, SK_TIMEOUT, or
 * SK_INTR when intr->check (called on EINTR and every intr->slice_ms)
 * asks to stop.  No GIL needed; p must stay alive meanwhile. */
int sk_promise_wait(sk_promise *p, int64_t deadline, const sk_intr *intr);

#endif /* SK_PROMISE_H */
