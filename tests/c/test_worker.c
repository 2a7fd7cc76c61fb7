/* test_worker.c - the receive worker loop (worker.h) on a real socketpair,
 * with the callbacks written in C: replies settle their promises without
 * the owner, messages and promises that asked to be told reach the owner
 * in arrival order, expired requests are told, queued requests are
 * written, a stop request and the peer's close end the loop.  Threads are
 * joined, every wait is bounded, every fd is closed. */
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/atomic.h"
#include "core/clock.h"
#include "core/corr.h"
#include "core/frame.h"
#include "core/io.h"
#include "core/promise.h"
#include "core/worker.h"

/* What the owner's callbacks saw. */
typedef struct {
    sk_worker *w;
    int stop;            /* atomic: the test asks the worker to stop */
    int passes;          /* ops->run calls */
    char msgs[64];       /* the messages' payloads, concatenated */
    size_t msgs_len;
    int noted;           /* promises told (b->note and b->notex) */
    int noted_expired;
    int fatal_code;      /* b->err.code of the last pass, if fatal */
    int retired_freed;   /* promises taken off w->retired */
    int ended;           /* atomic: ops->run returned 1 */
} owner;

static sk_worker_batch batch;

/* Contract: any thread. */
static int own_stop(void *ctx)
{
    return SK_LOAD(&((owner *)ctx)->stop);
}

/* Contract: the worker thread, recv_mu held: copy the messages. */
static void own_take(void *ctx, sk_worker_batch *b)
{
    owner *o = ctx;
    int i;

    for (i = 0; i < b->n; i++) {
        if (!b->ismsg[i] || o->msgs_len + b->fr[i].len > sizeof(o->msgs))
            continue;
        memcpy(o->msgs + o->msgs_len, b->fr[i].data, b->fr[i].len);
        o->msgs_len += b->fr[i].len;
    }
    if (b->fatal)
        o->fatal_code = b->err.code;
}

/* Contract: the worker thread, no lock held. */
static int own_run(void *ctx, sk_worker_batch *b)
{
    owner *o = ctx;
    sk_promise *p;
    int i, done = b->fatal || b->stop;

    o->passes++;
    for (i = 0; i < b->n; i++)
        o->noted += b->note[i] != NULL;
    for (p = b->notex.head; p != NULL; p = p->next) {
        o->noted++;
        o->noted_expired++;
    }
    pthread_mutex_lock(&o->w->t->mu);
    o->retired_freed += (int)o->w->retired.n;
    sk_plist_init(&o->w->retired); /* the promises are the test's */
    pthread_mutex_unlock(&o->w->t->mu);
    SK_STORE(&o->w->wphase, SK_W_BUSY);
    if (done)
        SK_STORE(&o->ended, 1);
    return done;
}

static const sk_worker_ops own_ops = {own_stop, own_take, own_run};

typedef struct {
    sk_worker *w;
    owner *o;
} run_arg;

static void *run_thread(void *vp)
{
    run_arg *a = vp;

    sk_worker_run(a->w, &own_ops, a->o, &batch);
    return NULL;
}

/* A correlated frame (header 4) of payload s with id, into out. */
static size_t frame_of(const char *s, uint64_t id, int has_id,
                       unsigned char *out)
{
    sk_framing f = {4, 0, 1 << 20, SK_FRAMING_IDS};
    size_t n = strlen(s), h;

    h = has_id ? sk_encode_header_id(&f, n, id, out)
               : (sk_encode_header(&f, n, out), 4);
    memcpy(out + h, s, n);
    return h + n;
}

/* Wait (bounded) until *flag is nonzero. */
static int wait_flag(const int *flag, double seconds)
{
    int64_t deadline = real_now_ns() + (int64_t)(tmax(seconds) * 1e9);

    while (!SK_LOAD(flag) && real_now_ns() < deadline)
        sleep_ms(1);
    return SK_LOAD(flag);
}

/* Wait (bounded) until the owner saw n promises told. */
static int wait_noted(owner *o, sk_corr *t, int n, double seconds)
{
    int64_t deadline = real_now_ns() + (int64_t)(tmax(seconds) * 1e9);
    int got;

    for (;;) {
        pthread_mutex_lock(&t->mu); /* any lock orders the read */
        got = o->noted;
        pthread_mutex_unlock(&t->mu);
        if (got >= n || real_now_ns() >= deadline)
            break;
        sleep_ms(1);
    }
    return got;
}

/* A connection on a socketpair with its table and idle worker, and the
 * owner that sees the callbacks: set up, started, torn down. */
typedef struct {
    sk_conn c;
    sk_corr t;
    sk_worker w;
    owner o;
    run_arg a;
    pthread_t th;
    int fds[2];
} rig;

static void rig_up(rig *r)
{
    sk_framing f = {4, 0, 1 << 20, SK_FRAMING_IDS};
    sk_err err;

    memset(r, 0, sizeof(*r));
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                     r->fds) == 0);
    CHECK(sk_conn_init(&r->c, r->fds[0], &f, &err) == SK_OK);
    CHECK(sk_corr_init(&r->t, &err) == SK_OK);
    sk_worker_init(&r->w, &r->c);
    r->w.t = &r->t;
    CHECK(sk_worker_open_wake(&r->w, &err) == SK_OK && r->w.efd >= 0);
    r->o.w = &r->w;
    r->a.w = &r->w;
    r->a.o = &r->o;
}

static void rig_start(rig *r)
{
    CHECK(pthread_create(&r->th, NULL, run_thread, &r->a) == 0);
}

/* The loop must have ended (ops->run returned 1). */
static void rig_down(rig *r)
{
    CHECK(wait_flag(&r->o.ended, 5.0));
    CHECK(pthread_join(r->th, NULL) == 0);
    sk_worker_close_wake(&r->w);
    CHECK(r->w.efd == -1);
    sk_corr_free(&r->t);
    sk_conn_release(&r->c);
    close(r->fds[0]);
    close(r->fds[1]);
}

TEST(worker_settles_replies_tells_the_owner_and_writes_the_queue)
{
    static rig r;
    sk_err err;
    sk_promise p, q, s;
    unsigned char buf[256], got[64];
    sk_iov iov = {"req", 3, 0, 1};
    size_t n;

    rig_up(&r);
    /* p: a waiter, no owner callback; q: the owner wants to hear, and it
     * expires; s: the owner wants to hear, and its reply comes */
    sk_promise_init(&p);
    sk_promise_init(&q);
    sk_promise_init(&s);
    CHECK(sk_promise_mark(&q, SK_P_NOTIFY) == 1);
    CHECK(sk_promise_mark(&s, SK_P_NOTIFY) == 1);
    pthread_mutex_lock(&r.t.mu);
    CHECK(sk_corr_add(&r.t, &p, SK_NO_DEADLINE, &err) == SK_OK);
    CHECK(sk_corr_add(&r.t, &q, sk_now_ns() + 20000000LL, &err) == SK_OK);
    CHECK(sk_corr_add(&r.t, &s, SK_NO_DEADLINE, &err) == SK_OK);
    pthread_mutex_unlock(&r.t.mu);
    rig_start(&r);

    /* a message, p's reply, another message, s's reply, a stranger */
    n = frame_of("hello", 0, 0, buf);
    n += frame_of("pong", p.id | SK_ID_REPLY, 1, buf + n);
    n += frame_of(" world", 0, 0, buf + n);
    n += frame_of("yes", s.id | SK_ID_REPLY, 1, buf + n);
    n += frame_of("who", 999 | SK_ID_REPLY, 1, buf + n);
    CHECK(raw_write_all(r.fds[1], buf, n, 5.0) == 0);
    CHECK(sk_promise_wait(&p, sk_now_ns() + (int64_t)(tmax(5.0) * 1e9),
                          NULL) == SK_OK);
    CHECK(sk_promise_state(&p) == SK_P_DONE);
    CHECK(p.len == 4 && memcmp(p.data, "pong", 4) == 0);
    CHECK(wait_noted(&r.o, &r.t, 2, 5.0) == 2); /* s by its reply, q expired */
    CHECK(sk_promise_state(&q) == SK_P_FAILED && q.fail == SK_PF_TIMEOUT);
    CHECK(sk_promise_state(&s) == SK_P_DONE);

    /* a queued request: the kick makes the worker write it */
    pthread_mutex_lock(&r.c.send_mu);
    CHECK(sk_conn_enqueue(&r.c, &iov, &err) == SK_OK);
    pthread_mutex_unlock(&r.c.send_mu);
    sk_worker_kick(&r.w, 0);
    CHECK(raw_read(r.fds[1], got, 4 + SK_ID_LEN + 3, 5.0, NULL) ==
          4 + SK_ID_LEN + 3);
    CHECK(memcmp(got + 4 + SK_ID_LEN, "req", 3) == 0);

    /* stop: the loop ends at once (the eventfd wakes it) */
    SK_STORE(&r.o.stop, 1);
    sk_worker_kick(&r.w, 1);
    pthread_mutex_lock(&r.t.mu);
    CHECK(r.t.replies == 2 && r.t.unknown == 1 && r.t.timeouts == 1);
    pthread_mutex_unlock(&r.t.mu);
    rig_down(&r);
    CHECK(r.o.msgs_len == 11 && memcmp(r.o.msgs, "hello world", 11) == 0);
    CHECK(r.o.noted == 2 && r.o.noted_expired == 1);
    CHECK(r.o.fatal_code == 0 && r.o.retired_freed == 1); /* p */
    sk_promise_release(&p);
    sk_promise_release(&q);
    sk_promise_release(&s);
}

TEST(worker_hands_over_the_peers_close_and_ends)
{
    static rig r;
    unsigned char buf[64];
    size_t n;

    rig_up(&r);
    rig_start(&r);
    n = frame_of("last", 0, 0, buf);
    CHECK(raw_write_all(r.fds[1], buf, n, 5.0) == 0);
    shutdown(r.fds[1], SHUT_WR);
    rig_down(&r);
    /* the frame before the close was delivered, then the close */
    CHECK(r.o.msgs_len == 4 && memcmp(r.o.msgs, "last", 4) == 0);
    CHECK(r.o.fatal_code == SK_E_CLOSED);
}
