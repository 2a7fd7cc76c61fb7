/*
 * corr.h - the correlation table of asynchronous requests: id -> promise.
 *
 * A request registers its promise (promise.h) with sk_corr_add, which gives
 * it the next id and, with a deadline, a place in a min-heap of deadlines.
 * The receive side hands each reply to sk_corr_reply, which takes the
 * promise out, copies the payload in and settles it; a reply whose id is
 * not pending is dropped and counted: `late` when its request timed out
 * (the last SK_CORR_EXPIRED_KEEP expired ids are remembered), `unknown`
 * otherwise (a stranger, or a second reply).  sk_corr_expire fails every
 * promise whose deadline passed.  So a reply is never handed to another
 * request, and a request settles once.
 *
 * In-order tables (sk_corr_init_in_order), for plain framing, where no id
 * travels on the wire: ids are still handed out by sk_corr_add, which the
 * caller must call in the order the requests go on the wire (under its send
 * lock), and the n-th reply frame is the reply of id n: sk_corr_reply_next
 * takes the next one.  This is the late-reply rule of the synchronous
 * request (io.h: `owed`), for many requests in flight: a reply whose
 * request timed out is dropped and counted late, never handed to a later
 * request.  If the peer drops a request without answering it, every later
 * reply lands one place early; that cannot be detected from a plain frame,
 * but a request that times out after a late reply was dropped during its
 * wait is failed with SK_PF_OUT_OF_STEP instead of SK_PF_TIMEOUT, so the
 * caller can say that replies are arriving behind their requests.
 *
 * Promises taken out and settled are handed to the caller, who owns them
 * from then on (the binding keeps them in a list until it can release its
 * Python references with the GIL).
 *
 * Locking: the table has one mutex, `mu`; every function below except
 * init/free must be called with it held, or by an owner that serialises
 * every access itself (the binding's CorrelationBook: the GIL).  No
 * allocation on the reply path except for payloads longer than
 * SK_PROMISE_INLINE; no Python; no syscalls.
 */
#ifndef SK_CORR_H
#define SK_CORR_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "heap.h"
#include "promise.h"
#include "sk.h"

#define SK_CORR_ID_MASK SK_ID_MASK /* ids use 62 bits; the top two are flags (frame.h) */
#define SK_CORR_EXPIRED_KEEP 65536      /* expired ids remembered for `late` */

/* A FIFO list of promises linked through their `next`. */
typedef struct sk_plist {
    sk_promise *head;
    sk_promise **tail; /* &head when empty */
    size_t n;
} sk_plist;

/* Contract: no allocation; the list's owner holds its lock, if any
 * (the same for push and splice below). */
static inline void sk_plist_init(sk_plist *l)
{
    l->head = NULL;
    l->tail = &l->head;
    l->n = 0;
}

static inline void sk_plist_push(sk_plist *l, sk_promise *p)
{
    p->next = NULL;
    *l->tail = p;
    l->tail = &p->next;
    l->n++;
}

/* Move every promise of src to the end of dst; src becomes empty. */
static inline void sk_plist_splice(sk_plist *dst, sk_plist *src)
{
    if (src->head == NULL)
        return;
    *dst->tail = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    sk_plist_init(src);
}

typedef struct sk_corr {
    pthread_mutex_t mu;
    /* id -> promise, or the expired mark: open addressing, linear probing,
     * key 0 = empty slot (ids are never 0) */
    uint64_t *keys;
    void **vals;
    size_t cap;           /* power of two, or 0 before the first add */
    size_t used;          /* slots holding a key */
    size_t peak;          /* most keys held since the last shrink check */
    size_t erases;        /* erases since then (a check every cap/4) */
    /* deadline min-heap of pending promises (their p->deadline nodes) */
    sk_heap heap;
    /* ids of expired requests, oldest first (a ring) */
    uint64_t *ring;
    size_t ring_cap, ring_head, ring_len;
    uint64_t next_id;
    int in_order;         /* plain framing: replies are matched by position */
    uint64_t next_reply;  /* in-order: the id the next reply frame answers */
    size_t pending;       /* promises in the table */
    /* counters */
    uint64_t replies, unknown, late, timeouts;
    uint64_t remote_errors; /* replies with SK_ID_ERROR (among `replies`) */
    uint64_t duplicate;     /* second replies to an answered request (among
                               `unknown`: 0 < id < next_id, not remembered) */
} sk_corr;

/* What a reply is to the table (sk_corr_lookup, sk_corr_match). */
enum {
    SK_CORR_NONE = 0,      /* in-order: no reply is owed, so the frame is
                              not a reply (nothing counted) */
    SK_CORR_DELIVER = 1,   /* its request is pending */
    SK_CORR_LATE = 2,      /* its request timed out or was abandoned (and
                              is still remembered) */
    SK_CORR_DUPLICATE = 3, /* its request was answered already */
    SK_CORR_STRAY = 4,     /* no request had this id */
};

/* Set up an empty table (no allocation).  SK_OK or SK_ERR (the mutex). */
int sk_corr_init(sk_corr *t, sk_err *err);

/* The same, for an in-order table (plain framing). */
int sk_corr_init_in_order(sk_corr *t, sk_err *err);

/* Free the storage and the mutex.  The promises still in the table are
 * not touched: take them out first (sk_corr_take_all). */
void sk_corr_free(sk_corr *t);

/* Register pending promise p with the next id (p->id) and deadline
 * (SK_NO_DEADLINE: none).  SK_OK, or SK_ERR (SK_E_NOMEM; p not added). */
int sk_corr_add(sk_corr *t, sk_promise *p, int64_t deadline, sk_err *err);

/* What a reply with this id (flag bits allowed) would be: SK_CORR_DELIVER
 * (*p = the pending promise), SK_CORR_LATE, SK_CORR_DUPLICATE or
 * SK_CORR_STRAY (*p = NULL).  Nothing changes, nothing is counted. */
int sk_corr_lookup(const sk_corr *t, uint64_t id, sk_promise **p);

/* A reply with this id (flag bits allowed) arrived: count it by its
 * outcome (*outcome = sk_corr_lookup's) and, when its request is pending,
 * take the promise out and return it, unsettled, the caller's from now on.
 * NULL for every other outcome.  sk_corr_reply is this plus the payload and
 * the settle; a driver that keeps its own futures (the binding's
 * CorrelationBook) calls this one. */
sk_promise *sk_corr_match(sk_corr *t, uint64_t id, int *outcome);

/* A reply (the id's flag bits may be set) with its payload arrived: take
 * its promise out, store the payload and settle it DONE, or, when the id
 * has SK_ID_ERROR (the peer's handler failed), FAILED with SK_PF_REMOTE
 * and the error text as the payload.  Returns the promise, now the
 * caller's (also when it had been cancelled: then p->prev is 0, as nobody
 * is to be woken or told), or NULL when the id is not pending (counted
 * late or unknown; the payload is dropped).  A payload that cannot be
 * stored fails the promise with SK_PF_NOMEM instead. */
sk_promise *sk_corr_reply(sk_corr *t, uint64_t id, const void *data,
                          size_t len);

/* In-order tables: is a reply owed (a request sent and not yet answered,
 * pending or timed out)?  A frame that arrives while none is owed is not a
 * reply. */
static inline int sk_corr_owed(const sk_corr *t)
{
    return t->next_reply != t->next_id;
}

/* In-order tables, sk_corr_owed: a reply frame arrived; it answers the
 * oldest unanswered request.  Returns that request's id and counts it
 * answered (the caller passes the id to sk_corr_match). */
uint64_t sk_corr_advance(sk_corr *t);

/* In-order tables: a reply frame arrived while sk_corr_owed: it answers
 * the oldest unanswered request.  As sk_corr_reply for that id. */
sk_promise *sk_corr_reply_next(sk_corr *t, const void *data, size_t len);

/* In-order tables: request p (registered by the last sk_corr_add) could
 * not be sent at all: take it out and give its id back, so that the next
 * request's reply is not taken for its.  If it was sent in part (it will
 * be completed, so its reply will come), call sk_corr_abandon instead.
 * Returns 1 if p was still registered (taken out), 0 if not. */
int sk_corr_unsend(sk_corr *t, sk_promise *p);

/* Take p out as if it had timed out (its reply, when it comes, is dropped
 * and counted late), without settling it.  Returns 1 if p was still
 * registered, 0 if not. */
int sk_corr_abandon(sk_corr *t, sk_promise *p);

/* Fail (SK_PF_TIMEOUT; in-order tables: SK_PF_TIMEOUT, or SK_PF_OUT_OF_STEP
 * when a late reply was dropped since the promise was added) every promise whose deadline is <= now, remember
 * its id, and append it to *out (p->prev as for sk_corr_reply).  Returns
 * how many expired. */
size_t sk_corr_expire(sk_corr *t, int64_t now, sk_plist *out);

/* The earliest deadline of a pending promise, or SK_NO_DEADLINE. */
int64_t sk_corr_next_deadline(const sk_corr *t);

/* Take p out if it is still registered (not settled by the table).
 * Returns 1 if it was, 0 if not. */
int sk_corr_remove(sk_corr *t, sk_promise *p);

/* Take every pending promise out, unsettled, onto *out (in no particular
 * order); the table stays usable. */
void sk_corr_take_all(sk_corr *t, sk_plist *out);

#endif /* SK_CORR_H */
