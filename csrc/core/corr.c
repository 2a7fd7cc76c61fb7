/* corr.c - correlation table of asynchronous requests (see corr.h). */
#include "corr.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "sys.h"

#define SK_CORR_MIN_CAP 64

/* The value of an expired id's slot: not a promise. */
static char sk_corr_expired_mark;
#define SK_EXPIRED ((void *)&sk_corr_expired_mark)

/* Fibonacci hashing: consecutive ids spread over the whole table. */
static inline size_t sk_corr_home(const sk_corr *t, uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ULL) >> 32) & (t->cap - 1);
}

/* Slot of id, or of the empty slot where it would go.  t->cap > 0. */
static size_t sk_corr_find(const sk_corr *t, uint64_t id)
{
    size_t i = sk_corr_home(t, id);

    while (t->keys[i] != 0 && t->keys[i] != id)
        i = (i + 1) & (t->cap - 1);
    return i;
}

/* Rebuild the map with `cap` slots (a power of two > used).  SK_OK or
 * SK_ERR (out of memory; the map is unchanged). */
static int sk_corr_resize(sk_corr *t, size_t cap)
{
    uint64_t *keys = sk_calloc(cap, sizeof(*keys)), *okeys = t->keys;
    void **vals = sk_calloc(cap, sizeof(*vals)), **ovals = t->vals;
    size_t i, j, ocap = t->cap;
    int rc = SK_ERR;

    if (keys == NULL || vals == NULL) {
        free(keys);
        free(vals);
        goto error;
    }
    t->keys = keys;
    t->vals = vals;
    t->cap = cap;
    for (i = 0; i < ocap; i++) {
        if (okeys[i] == 0)
            continue;
        j = sk_corr_find(t, okeys[i]);
        keys[j] = okeys[i];
        vals[j] = ovals[i];
    }
    free(okeys);
    free(ovals);
    rc = SK_OK;
error:
    return rc;
}

/* Insert id -> val (id absent).  SK_OK or SK_ERR (out of memory). */
static int sk_corr_put(sk_corr *t, uint64_t id, void *val)
{
    size_t i;
    int rc = SK_ERR;

    if ((t->used + 1) * 2 > t->cap &&
        sk_corr_resize(t, t->cap ? t->cap * 2 : SK_CORR_MIN_CAP) != SK_OK)
        goto error;
    i = sk_corr_find(t, id);
    t->keys[i] = id;
    t->vals[i] = val;
    t->used++;
    if (t->used > t->peak)
        t->peak = t->used;
    rc = SK_OK;
error:
    return rc;
}

/* Empty slot i, shifting later entries of its cluster back so that every
 * key stays reachable from its home slot without tombstones. */
static void sk_corr_erase(sk_corr *t, size_t i)
{
    size_t mask = t->cap - 1, j = i, k;

    for (;;) {
        j = (j + 1) & mask;
        if (t->keys[j] == 0)
            break;
        k = sk_corr_home(t, t->keys[j]);
        /* the entry at j may move to i unless its home lies in (i, j] */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        t->keys[i] = t->keys[j];
        t->vals[i] = t->vals[j];
        i = j;
    }
    t->keys[i] = 0;
    t->vals[i] = NULL;
    t->used--;
    /* Shrink by the most keys held over a window of cap/4 erases, not by
     * the keys held now: pipelined traffic drains the table to ~0 between
     * bursts, and shrinking there rebuilt it four times per 100 requests
     * (64 -> 256 -> 64; ~360 instructions per request, aio rr-64x100).
     * After a window whose peak used under 1/8 of the slots, the table
     * takes the size that peak needs (best effort: fine if that fails).
     * O(1) per erase but for the rebuild. */
    if (++t->erases >= t->cap / 4) {
        size_t want = t->cap;

        while (want > SK_CORR_MIN_CAP && t->peak * 8 < want)
            want /= 2;
        if (want < t->cap)
            sk_corr_resize(t, want);
        t->erases = 0;
        t->peak = t->used;
    }
}

/* ------------------------------------------------------ expired ids */

/* Remember that id expired, forgetting the oldest one beyond
 * SK_CORR_EXPIRED_KEEP.  Best effort: out of memory, id is not remembered
 * (its late reply will count as unknown). */
static void sk_corr_remember(sk_corr *t, uint64_t id)
{
    size_t i;

    if (t->ring_len == t->ring_cap && t->ring_cap < SK_CORR_EXPIRED_KEEP) {
        size_t cap = t->ring_cap ? t->ring_cap * 2 : SK_CORR_MIN_CAP;
        uint64_t *r = sk_malloc(cap * sizeof(*r));
        if (r != NULL) {
            for (i = 0; i < t->ring_len; i++)
                r[i] = t->ring[(t->ring_head + i) % t->ring_cap];
            free(t->ring);
            t->ring = r;
            t->ring_cap = cap;
            t->ring_head = 0;
        }
    }
    if (t->ring_cap == 0)
        goto done;
    if (t->ring_len == t->ring_cap) { /* full: forget the oldest */
        uint64_t old = t->ring[t->ring_head];
        t->ring_head = (t->ring_head + 1) % t->ring_cap;
        t->ring_len--;
        i = sk_corr_find(t, old);
        if (t->keys[i] == old && t->vals[i] == SK_EXPIRED)
            sk_corr_erase(t, i);
    }
    if (sk_corr_put(t, id, SK_EXPIRED) != SK_OK)
        goto done;
    t->ring[(t->ring_head + t->ring_len) % t->ring_cap] = id;
    t->ring_len++;
done:
    return;
}

/* ------------------------------------------------------------- public */

/* Contract: no allocation. */
int sk_corr_init(sk_corr *t, sk_err *err)
{
    int r, rc = SK_OK;

    memset(t, 0, sizeof(*t));
    sk_heap_init(&t->heap);
    t->next_id = 1;
    r = pthread_mutex_init(&t->mu, NULL);
    if (r != 0)
        rc = sk_err_sys(err, "pthread_mutex_init", r);
    return rc;
}

/* Contract: no allocation. */
int sk_corr_init_in_order(sk_corr *t, sk_err *err)
{
    int rc = sk_corr_init(t, err);

    if (rc == SK_OK) {
        t->in_order = 1;
        t->next_reply = t->next_id;
    }
    return rc;
}

/* Contract: nobody holds or waits for mu. */
void sk_corr_free(sk_corr *t)
{
    free(t->keys);
    free(t->vals);
    sk_heap_free(&t->heap);
    free(t->ring);
    pthread_mutex_destroy(&t->mu);
    memset(t, 0, sizeof(*t));
}

/* Contract: mu held. */
int sk_corr_add(sk_corr *t, sk_promise *p, int64_t deadline, sk_err *err)
{
    uint64_t id = t->next_id++ & SK_CORR_ID_MASK;
    int rc = SK_ERR;

    if (SK_UNLIKELY(id == 0)) /* wrapped after 2**63 requests: 0 is "empty" */
        id = t->next_id++ & SK_CORR_ID_MASK;
    p->id = id;
    p->late_mark = t->late;
    sk_heap_node_init(&p->deadline);
    p->deadline.key = deadline;
    p->deadline.tie = id; /* equal deadlines expire in id order */
    if (sk_corr_put(t, id, p) != SK_OK)
        goto nomem;
    if (deadline != SK_NO_DEADLINE && sk_heap_push(&t->heap, &p->deadline) != SK_OK) {
        sk_corr_erase(t, sk_corr_find(t, id));
        goto nomem;
    }
    t->pending++;
    rc = SK_OK;
    goto done;
nomem:
    rc = sk_err_set(err, SK_E_NOMEM, "out of memory registering a request");
done:
    return rc;
}

/* Contract: mu held; p is the caller's once appended. */
static void sk_corr_detach(sk_corr *t, sk_promise *p, size_t slot)
{
    sk_corr_erase(t, slot);
    sk_heap_remove(&t->heap, &p->deadline);
    t->pending--;
}

/* Contract: mu held; no change.  sk_corr_lookup, with the slot of a
 * pending promise in *slot. */
static int sk_corr_classify(const sk_corr *t, uint64_t id, sk_promise **p,
                            size_t *slot)
{
    int outcome = SK_CORR_STRAY;
    size_t i;

    *p = NULL;
    id &= SK_CORR_ID_MASK;
    if (id == 0)
        goto done;
    if (t->cap > 0) {
        i = sk_corr_find(t, id);
        if (t->keys[i] == id) {
            if (t->vals[i] == SK_EXPIRED) {
                outcome = SK_CORR_LATE;
            } else {
                *p = t->vals[i];
                *slot = i;
                outcome = SK_CORR_DELIVER;
            }
            goto done;
        }
    }
    if (id < (t->next_id & SK_CORR_ID_MASK))
        outcome = SK_CORR_DUPLICATE;
done:
    return outcome;
}

/* Contract: mu held; no change. */
int sk_corr_lookup(const sk_corr *t, uint64_t id, sk_promise **p)
{
    size_t slot;

    return sk_corr_classify(t, id, p, &slot);
}

/* Contract: mu held; the returned promise is the caller's. */
sk_promise *sk_corr_match(sk_corr *t, uint64_t id, int *outcome)
{
    sk_promise *p;
    size_t slot = 0;

    *outcome = sk_corr_classify(t, id, &p, &slot);
    switch (*outcome) {
    case SK_CORR_DELIVER:
        sk_corr_detach(t, p, slot);
        t->replies++;
        if (id & SK_ID_ERROR)
            t->remote_errors++;
        break;
    case SK_CORR_LATE:
        t->late++;
        break;
    case SK_CORR_DUPLICATE:
        t->duplicate++;
        t->unknown++; /* the threaded duplex's "unknown" includes them */
        break;
    default:
        t->unknown++;
        break;
    }
    return p;
}

/* Contract: mu held; the payload is copied (it is the caller's). */
sk_promise *sk_corr_reply(sk_corr *t, uint64_t id, const void *data,
                          size_t len)
{
    int remote = (id & SK_ID_ERROR) != 0, outcome;
    sk_promise *p = sk_corr_match(t, id, &outcome);

    if (p == NULL)
        goto done;
    if (sk_promise_state(p) != SK_P_PENDING) {
        p->prev = 0; /* cancelled: nothing to store, nobody to wake */
    } else if (sk_promise_set_payload(p, data, len) != SK_OK) {
        if (!sk_promise_settle(p, SK_P_FAILED, SK_PF_NOMEM))
            p->prev = 0;
    } else if (!sk_promise_settle(p, remote ? SK_P_FAILED : SK_P_DONE,
                                  remote ? SK_PF_REMOTE : SK_PF_NONE)) {
        p->prev = 0;
    }
done:
    return p;
}

/* Contract: mu held; in-order table with sk_corr_owed(t). */
uint64_t sk_corr_advance(sk_corr *t)
{
    uint64_t id = t->next_reply++ & SK_CORR_ID_MASK;

    if (SK_UNLIKELY(id == 0)) /* sk_corr_add skipped it too */
        id = t->next_reply++ & SK_CORR_ID_MASK;
    return id;
}

/* Contract: mu held; in-order table with sk_corr_owed(t). */
sk_promise *sk_corr_reply_next(sk_corr *t, const void *data, size_t len)
{
    return sk_corr_reply(t, sk_corr_advance(t), data, len);
}

/* Contract: mu held; the caller still holds the send lock it held for
 * sk_corr_add, so no later id was handed out. */
int sk_corr_unsend(sk_corr *t, sk_promise *p)
{
    int taken = sk_corr_remove(t, p);

    if (taken && t->in_order && p->id + 1 == t->next_id)
        t->next_id--;
    return taken;
}

/* Contract: mu held. */
int sk_corr_abandon(sk_corr *t, sk_promise *p)
{
    int taken = sk_corr_remove(t, p);

    if (taken)
        sk_corr_remember(t, p->id);
    return taken;
}

/* Contract: mu held. */
size_t sk_corr_expire(sk_corr *t, int64_t now, sk_plist *out)
{
    sk_heap_node *top;
    sk_promise *p;
    size_t n = 0;
    int fail;

    while ((top = sk_heap_top(&t->heap)) != NULL && top->key <= now) {
        p = SK_HEAP_ENTRY(top, sk_promise, deadline);
        sk_corr_detach(t, p, sk_corr_find(t, p->id));
        sk_corr_remember(t, p->id);
        t->timeouts++;
        fail = t->in_order && t->late > p->late_mark ? SK_PF_OUT_OF_STEP
                                                     : SK_PF_TIMEOUT;
        if (!sk_promise_settle(p, SK_P_FAILED, fail))
            p->prev = 0;
        sk_plist_push(out, p);
        n++;
    }
    return n;
}

/* Contract: mu held. */
int64_t sk_corr_next_deadline(const sk_corr *t)
{
    const sk_heap_node *top = sk_heap_top(&t->heap);

    return top != NULL ? top->key : SK_NO_DEADLINE;
}

/* Contract: mu held. */
int sk_corr_remove(sk_corr *t, sk_promise *p)
{
    size_t i;
    int taken = 0;

    if (t->cap == 0)
        goto done;
    i = sk_corr_find(t, p->id);
    if (t->keys[i] != p->id || t->vals[i] != p)
        goto done;
    sk_corr_detach(t, p, i);
    taken = 1;
done:
    return taken;
}

/* Contract: mu held. */
void sk_corr_take_all(sk_corr *t, sk_plist *out)
{
    sk_plist taken;
    sk_promise *p, *next;
    size_t i;

    sk_plist_init(&taken);
    for (i = 0; i < t->cap; i++)
        if (t->keys[i] != 0 && t->vals[i] != SK_EXPIRED)
            sk_plist_push(&taken, t->vals[i]);
    /* erasing shifts entries around: find each again */
    for (p = taken.head; p != NULL; p = next) {
        next = p->next;
        sk_corr_detach(t, p, sk_corr_find(t, p->id));
    }
    sk_plist_splice(out, &taken);
}
