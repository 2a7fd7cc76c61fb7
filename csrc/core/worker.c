/* worker.c - the receive worker loop of the asynchronous duplex (see
 * worker.h). */
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "atomic.h"
#include "clock.h"

/* Contract: no allocation, no syscall. */
void sk_worker_init(sk_worker *w, sk_conn *c)
{
    w->c = c;
    w->t = NULL;
    w->efd = -1;
    w->wphase = SK_W_BUSY;
    w->wb_failed = 0;
    w->wake_at = 0;
    sk_plist_init(&w->retired);
}

/* Contract: see worker.h. */
int sk_worker_open_wake(sk_worker *w, sk_err *err)
{
    int rc = SK_OK;

    if (w->efd < 0) {
        w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->efd < 0)
            rc = sk_err_sys(err, "eventfd", errno);
    }
    return rc;
}

/* Contract: see worker.h. */
void sk_worker_close_wake(sk_worker *w)
{
    if (w->efd >= 0)
        close(w->efd);
    w->efd = -1;
}

/* Contract: see worker.h. */
void sk_worker_kick(sk_worker *w, int force)
{
    uint64_t one = 1;

    if (w->efd < 0)
        goto done;
    if (force ||
        (SK_LOAD(&w->wphase) == SK_W_SLEEP &&
         __atomic_exchange_n(&w->wphase, SK_W_BUSY, __ATOMIC_SEQ_CST) ==
             SK_W_SLEEP)) {
        if (write(w->efd, &one, sizeof(one)) < 0) {
            /* EAGAIN: the counter is full, so the worker is woken anyway */
        }
    }
done:
    return;
}

/* Contract: see worker.h. */
void sk_worker_flush_now(sk_worker *w, int note)
{
    sk_err err;

    if (w->c->fd < 0 || pthread_mutex_trylock(&w->c->send_mu) != 0)
        goto done;
    if (w->c->fd >= 0 && !w->wb_failed && sk_conn_queued(w->c) > 0 &&
        sk_conn_flush(w->c, 0, NULL, &err) == SK_ERR && note)
        w->wb_failed = 1;
    pthread_mutex_unlock(&w->c->send_mu);
done:
    return;
}

/* Contract: the worker thread, no lock held.  Before the worker sleeps:
 * announce it (SK_W_SLEEP), then write the queue without waiting.  An
 * enqueuer that takes the send lock after us sees the announcement and
 * kicks; one before us had its bytes written here.  Returns POLLOUT while
 * bytes remain (the socket is full), 0, or -1 when another thread holds
 * the send lock (it writes the queue before its own frames, but a
 * heartbeat may leave bytes: look again soon). */
static int sk_worker_flush(sk_worker *w)
{
    sk_err err;
    int r = 0;

    __atomic_store_n(&w->wphase, SK_W_SLEEP, __ATOMIC_SEQ_CST);
    if (pthread_mutex_trylock(&w->c->send_mu) != 0) {
        r = -1;
        goto done;
    }
    if (w->c->fd >= 0 && !w->wb_failed && sk_conn_queued(w->c) > 0) {
        if (sk_conn_flush(w->c, 0, NULL, &err) == SK_ERR)
            w->wb_failed = 1; /* the next send raises it; receive goes on */
        else if (sk_conn_queued(w->c) > 0)
            r = POLLOUT;
    }
    pthread_mutex_unlock(&w->c->send_mu);
done:
    return r;
}

/* Contract: the worker thread, c->recv_mu held.  Wait for frames, a kick,
 * POLLOUT (out_ev > 0) or the next request deadline, then take a batch
 * into b (b->n frames; b->fatal with b->err when the receive side failed). */
static void sk_worker_wait(sk_worker *w, sk_worker_batch *b, int out_ev)
{
    int64_t now, wake_at, dl;
    int rc;

    b->n = 0;
    b->closed = w->c->fd < 0; /* closed while the owner ran: stop */
    if (b->closed) {
        rc = SK_ERR;
        goto done;
    }
    now = sk_now_ns();
    wake_at = now + (out_ev < 0 ? SK_WORKER_RETRY_NS : SK_WORKER_SLICE_NS);
    pthread_mutex_lock(&w->t->mu);
    dl = sk_corr_next_deadline(w->t);
    if (dl != SK_NO_DEADLINE && dl < wake_at)
        wake_at = dl;
    w->wake_at = wake_at;
    pthread_mutex_unlock(&w->t->mu);
    rc = sk_conn_recv_wake(w->c, wake_at, w->efd,
                           (short)(out_ev > 0 ? out_ev : 0), &b->fr[0],
                           &b->err);
    if (rc == SK_OK) {
        b->n = 1;
        while (b->n < SK_WORKER_BATCH &&
               sk_conn_recv_buffered(w->c, &b->fr[b->n], &b->err) == SK_OK)
            b->n++;
    }
done:
    b->fatal = rc == SK_ERR;
    b->timed_out = rc == SK_TIMEOUT;
}

/* Contract: the worker thread, c->recv_mu held, t->mu not held.  Settle
 * the batch's replies and the expired requests without any runtime, wake
 * their waiters, sort the settled promises: those whose owner asked to
 * hear into b->note / b->notex, the others onto w->retired.  Returns how
 * many promises are retired now. */
static size_t sk_worker_settle(sk_worker *w, sk_worker_batch *b)
{
    sk_promise *wake[SK_WORKER_BATCH];
    sk_plist expired, plain;
    sk_corr *t = w->t;
    sk_promise *p, *next;
    size_t nretired;
    int64_t now, dl;
    int i, nwake = 0;

    sk_plist_init(&expired);
    sk_plist_init(&plain);
    sk_plist_init(&b->notex);
    b->nmsg = b->nnote = 0;
    pthread_mutex_lock(&t->mu);
    for (i = 0; i < b->n; i++) {
        b->note[i] = NULL;
        if (t->in_order) /* plain framing: a frame is a reply when owed */
            b->ismsg[i] = !sk_corr_owed(t);
        else
            b->ismsg[i] = !(b->fr[i].has_id && (b->fr[i].id & SK_ID_REPLY));
        if (b->ismsg[i]) {
            b->nmsg++;
            continue;
        }
        p = t->in_order
                ? sk_corr_reply_next(t, b->fr[i].data, b->fr[i].len)
                : sk_corr_reply(t, b->fr[i].id, b->fr[i].data, b->fr[i].len);
        if (p == NULL)
            continue; /* late or unknown: counted, dropped */
        if (p->prev & SK_P_WAITING)
            wake[nwake++] = p;
        if (p->prev & SK_P_NOTIFY) {
            b->note[i] = p;
            b->nnote++;
        } else {
            sk_plist_push(&plain, p);
        }
    }
    dl = sk_corr_next_deadline(t);
    if (dl != SK_NO_DEADLINE && dl <= (now = sk_now_ns()))
        sk_corr_expire(t, now, &expired);
    pthread_mutex_unlock(&t->mu);
    /* wake after unlocking, so that the woken do not run into the lock */
    for (i = 0; i < nwake; i++)
        sk_promise_wake(wake[i]);
    for (p = expired.head; p != NULL; p = next) {
        next = p->next;
        if (p->prev & SK_P_WAITING)
            sk_promise_wake(p);
        if (p->prev & SK_P_NOTIFY)
            sk_plist_push(&b->notex, p);
        else
            sk_plist_push(&plain, p);
    }
    pthread_mutex_lock(&t->mu);
    sk_plist_splice(&w->retired, &plain);
    nretired = w->retired.n;
    pthread_mutex_unlock(&t->mu);
    return nretired;
}

/* Contract: see worker.h.  One pass per iteration: flush, wait, settle;
 * the owner's callbacks only when it has something to do. */
void sk_worker_run(sk_worker *w, const sk_worker_ops *ops, void *ctx,
                   sk_worker_batch *b)
{
    size_t nretired;
    int out_ev;

    for (;;) {
        out_ev = sk_worker_flush(w);
        pthread_mutex_lock(&w->c->recv_mu);
        sk_worker_wait(w, b, out_ev);
        SK_STORE(&w->wphase, SK_W_BUSY);
        nretired = sk_worker_settle(w, b);
        b->stop = ops->stop(ctx);
        if (!b->nmsg && !b->nnote && !b->notex.n && !b->fatal && !b->stop &&
            nretired < SK_WORKER_RETIRED_MAX && !(b->timed_out && nretired)) {
            pthread_mutex_unlock(&w->c->recv_mu);
            continue;
        }
        /* the owner's work, which may take long (a callback, a full
         * queue): from now on request senders write their own requests,
         * and what was queued before is written here first (best effort:
         * a sender that holds the send lock writes the queue before its
         * own frames) */
        __atomic_store_n(&w->wphase, SK_W_PY, __ATOMIC_SEQ_CST);
        sk_worker_flush_now(w, 1);
        ops->take(ctx, b);
        pthread_mutex_unlock(&w->c->recv_mu);
        if (ops->run(ctx, b))
            break; /* w and b may be gone */
    }
}
