/*
 * worker.h - the receive worker of the asynchronous duplex: a thread that
 * owns a connection's receive side, writes its write-behind queue, waits,
 * decodes and settles replies in the request table (corr.h) without any
 * language runtime, and hands the rest to its owner through two callbacks.
 *
 * Each pass of sk_worker_run:
 *   1. sk_worker_flush: announce the sleep (SK_W_SLEEP), write the queue
 *      without waiting (POLLOUT while it stays stuck);
 *   2. under c->recv_mu: wait (socket, eventfd kick, POLLOUT, the table's
 *      next deadline, at most SK_WORKER_SLICE_NS) and take a batch of up to
 *      SK_WORKER_BATCH frames (only the first may read the socket, so the
 *      frames' views stay valid until recv_mu is released);
 *   3. settle the batch's replies and the expired requests in the table
 *      (t->mu), wake their waiters after unlocking, move the settled
 *      promises nobody asked to hear about to `retired`;
 *   4. if the owner has nothing to do (no message, no promise to notify, no
 *      error, no stop, few retired promises), release recv_mu and go on;
 *   5. else: SK_W_PY (request senders now write for themselves), a best
 *      effort write of the queue, ops->take with recv_mu held (copy the
 *      messages out of the frames), release recv_mu, ops->run (deliver in
 *      arrival order, notify, release `retired`); ops->run returning nonzero
 *      ends the loop, and then sk_worker_run touches neither w nor the
 *      batch again (the owner may free them).
 *
 * The binding (binding/conn.c) adapts the callbacks: take the GIL, build
 * Python objects, call Python.  No Python here, no allocation.
 *
 * Locks: c->send_mu (only ever trylocked here), c->recv_mu, t->mu; never
 * two at once except recv_mu then t->mu.
 */
#ifndef SK_WORKER_H
#define SK_WORKER_H

#include <stdint.h>

#include "corr.h"
#include "frame.h"
#include "io.h"
#include "promise.h"
#include "sk.h"

#define SK_WORKER_BATCH 1024
#define SK_WORKER_SLICE_NS 50000000LL /* looks at ops->stop this often */
#define SK_WORKER_RETRY_NS 2000000LL  /* send lock busy: look again this soon */
#define SK_WORKER_RETIRED_MAX 4096    /* retired promises kept before the
                                         owner is asked to release them */

/* what the worker is doing (sk_worker.wphase) */
enum {
    SK_W_BUSY = 0,  /* in C: it writes the queue before it sleeps */
    SK_W_SLEEP = 1, /* in poll (or about to be): kick the eventfd */
    SK_W_PY = 2,    /* in its owner's code, maybe for long: write yourself */
};

typedef struct sk_worker {
    sk_conn *c;
    sk_corr *t;         /* the request table (set before sk_worker_run) */
    int efd;            /* eventfd that wakes the worker; -1: none */
    int wphase;         /* atomic: SK_W_* */
    int wb_failed;      /* the worker's write failed (under c->send_mu) */
    int64_t wake_at;    /* the sleeping worker's latest wake-up (t->mu) */
    sk_plist retired;   /* settled promises the owner still references
                           (t->mu); the owner releases them */
} sk_worker;

/* One pass's batch, as ops->take and ops->run see it. */
typedef struct sk_worker_batch {
    sk_frame fr[SK_WORKER_BATCH];
    sk_promise *note[SK_WORKER_BATCH]; /* frame i settled it; its owner
                                          asked to hear (SK_P_NOTIFY) */
    unsigned char ismsg[SK_WORKER_BATCH]; /* frame i is not a reply */
    int n, nmsg, nnote;
    sk_plist notex;     /* expired promises with SK_P_NOTIFY */
    int fatal;          /* the receive side failed for good: see err */
    int closed;         /* ... because the connection was closed */
    int timed_out;      /* the wait ended on its deadline */
    int stop;           /* ops->stop said so */
    sk_err err;
} sk_worker_batch;

typedef struct sk_worker_ops {
    /* any thread, no lock held: stop at the next pass */
    int (*stop)(void *ctx);
    /* c->recv_mu held: copy out what must outlive the frames' views */
    void (*take)(void *ctx, sk_worker_batch *b);
    /* no lock held: hand over the batch, then set w->wphase back to
     * SK_W_BUSY; nonzero ends sk_worker_run */
    int (*run)(void *ctx, sk_worker_batch *b);
} sk_worker_ops;

/* Contract: no allocation, no syscall.  An idle worker of connection c
 * (efd -1, table NULL). */
void sk_worker_init(sk_worker *w, sk_conn *c);

/* Contract: any thread, no lock held.  Make the eventfd if there is none.
 * SK_OK, or SK_ERR naming eventfd. */
int sk_worker_open_wake(sk_worker *w, sk_err *err);

/* Contract: the worker thread is not running (or is ending and no longer
 * reads efd).  Close the eventfd, if any. */
void sk_worker_close_wake(sk_worker *w);

/* Contract: any thread; the caller keeps efd open meanwhile (the binding:
 * the GIL).  Wake the worker if it sleeps, so that it writes the queue;
 * `force`: wake it whatever it does (a stop request). */
void sk_worker_kick(sk_worker *w, int force);

/* Contract: no lock held.  Write the queue if the send lock is free;
 * `note`: a failure sets wb_failed (the next send raises it). */
void sk_worker_flush_now(sk_worker *w, int note);

/* Contract: the worker thread, no lock held; b is its scratch (large:
 * keep it off small stacks).  Runs passes until ops->run returns
 * nonzero. */
void sk_worker_run(sk_worker *w, const sk_worker_ops *ops, void *ctx,
                   sk_worker_batch *b);

#endif /* SK_WORKER_H */
