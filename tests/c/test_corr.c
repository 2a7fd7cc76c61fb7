/* test_corr.c - the request table (corr.h), its promises (promise.h), and
 * the write-behind pieces of io.h (sk_conn_enqueue, sk_conn_recv_wake) on
 * a real socketpair.  Threads are joined, every wait is bounded, every fd
 * is closed. */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/corr.h"
#include "core/frame.h"
#include "core/io.h"
#include "core/promise.h"

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double since_s(int64_t t0)
{
    return (double)(sk_now_ns() - t0) / 1e9;
}

/* ------------------------------------------------------------ promise */

TEST(promise_settle_once_and_payload)
{
    sk_promise p;
    unsigned char big[1000];

    sk_promise_init(&p);
    CHECK(sk_promise_state(&p) == SK_P_PENDING);
    CHECK(sk_promise_set_payload(&p, "hello", 5) == SK_OK);
    CHECK(p.data == p.small);
    CHECK(sk_promise_settle(&p, SK_P_DONE, SK_PF_NONE) == 1);
    CHECK(sk_promise_state(&p) == SK_P_DONE);
    CHECK(p.len == 5 && memcmp(p.data, "hello", 5) == 0);
    CHECK(sk_promise_settle(&p, SK_P_FAILED, SK_PF_TIMEOUT) == 0);
    CHECK(sk_promise_cancel(&p) == 0);
    CHECK(sk_promise_state(&p) == SK_P_DONE);
    sk_promise_release(&p);

    sk_promise_init(&p);
    memset(big, 'b', sizeof(big));
    CHECK(sk_promise_set_payload(&p, big, sizeof(big)) == SK_OK);
    CHECK(p.data != p.small && p.len == sizeof(big));
    CHECK(memcmp(p.data, big, sizeof(big)) == 0);
    sk_promise_release(&p); /* ASan: the long payload is freed */
    CHECK(p.data == p.small);
}

TEST(promise_notify_flag_survives_settle)
{
    sk_promise p;

    sk_promise_init(&p);
    CHECK(sk_promise_mark(&p, SK_P_NOTIFY) == 1);
    CHECK(sk_promise_mark(&p, SK_P_NOTIFY) == 1);
    CHECK(sk_promise_settle(&p, SK_P_FAILED, SK_PF_TIMEOUT) == 1);
    CHECK(p.prev & SK_P_NOTIFY);
    CHECK(sk_promise_word(&p) & SK_P_NOTIFY);
    CHECK(p.fail == SK_PF_TIMEOUT);
    CHECK(sk_promise_mark(&p, SK_P_NOTIFY) == 0); /* settled: too late */
    sk_promise_release(&p);
}

TEST(promise_wait_times_out_on_its_deadline)
{
    sk_promise p;
    int64_t t0 = sk_now_ns();
    double took;

    sk_promise_init(&p);
    CHECK(sk_promise_wait(&p, sk_now_ns() + 50000000LL, NULL) == SK_TIMEOUT);
    took = since_s(t0);
    CHECK(took >= 0.045 && took < 2.0);
    CHECK(sk_promise_wait(&p, sk_now_ns(), NULL) == SK_TIMEOUT); /* no wait */
    sk_promise_release(&p);
}

struct settler {
    sk_promise *p;
    int delay_ms;
    int cancel;
};

static void *settle_later(void *vp)
{
    struct settler *s = vp;

    nap_ms(s->delay_ms);
    if (s->cancel) {
        sk_promise_cancel(s->p);
    } else {
        sk_promise_set_payload(s->p, "late", 4);
        if (sk_promise_settle(s->p, SK_P_DONE, SK_PF_NONE) &&
            (s->p->prev & SK_P_WAITING))
            sk_promise_wake(s->p);
    }
    return NULL;
}

TEST(promise_waiter_is_woken_by_settle_and_cancel)
{
    sk_promise p;
    struct settler s;
    pthread_t th;
    int64_t t0;
    int k;

    for (k = 0; k < 2; k++) {
        sk_promise_init(&p);
        s.p = &p;
        s.delay_ms = 30;
        s.cancel = k;
        t0 = sk_now_ns();
        CHECK(pthread_create(&th, NULL, settle_later, &s) == 0);
        CHECK(sk_promise_wait(&p, sk_now_ns() + 10000000000LL, NULL) == SK_OK);
        CHECK(since_s(t0) < 5.0);
        pthread_join(th, NULL);
        CHECK(sk_promise_state(&p) == (k ? SK_P_CANCELLED : SK_P_DONE));
        sk_promise_release(&p);
    }
}

static int intr_calls;

static int count_intr(void *ctx)
{
    (void)ctx;
    return ++intr_calls >= 3; /* the third check asks to stop */
}

TEST(promise_wait_checks_interrupts_every_slice)
{
    sk_promise p;
    sk_intr intr = {count_intr, NULL, 10};
    int64_t t0 = sk_now_ns();

    intr_calls = 0;
    sk_promise_init(&p);
    CHECK(sk_promise_wait(&p, SK_NO_DEADLINE, &intr) == SK_INTR);
    CHECK(intr_calls == 3);
    CHECK(since_s(t0) < 2.0);
    sk_promise_release(&p);
}

/* ---------------------------------------------------------------- corr */

static sk_promise *mkp(void)
{
    sk_promise *p = malloc(sizeof(*p));

    if (p != NULL)
        sk_promise_init(p);
    return p;
}

static void freep(sk_promise *p)
{
    sk_promise_release(p);
    free(p);
}

TEST(corr_reply_settles_and_counts)
{
    sk_corr t;
    sk_err err;
    sk_promise *a = mkp(), *b = mkp(), *r;

    CHECK(sk_corr_init(&t, &err) == SK_OK);
    CHECK(sk_corr_add(&t, a, SK_NO_DEADLINE, &err) == SK_OK);
    CHECK(sk_corr_add(&t, b, SK_NO_DEADLINE, &err) == SK_OK);
    CHECK(a->id == 1 && b->id == 2 && t.pending == 2);
    CHECK(sk_corr_next_deadline(&t) == SK_NO_DEADLINE);
    /* out of order, with the reply bit set as on the wire */
    r = sk_corr_reply(&t, b->id | SK_ID_REPLY, "bee", 3);
    CHECK(r == b && sk_promise_state(b) == SK_P_DONE);
    CHECK(b->len == 3 && memcmp(b->data, "bee", 3) == 0);
    CHECK(sk_corr_reply(&t, b->id | SK_ID_REPLY, "again", 5) == NULL);
    CHECK(sk_corr_reply(&t, 999 | SK_ID_REPLY, "who", 3) == NULL);
    CHECK(t.unknown == 2 && t.replies == 1 && t.pending == 1);
    /* a cancelled request: taken out, nothing stored, nobody to wake */
    CHECK(sk_promise_cancel(a) == 1);
    r = sk_corr_reply(&t, a->id, "ay", 2);
    CHECK(r == a && a->prev == 0 && a->len == 0);
    CHECK(sk_promise_state(a) == SK_P_CANCELLED);
    CHECK(t.pending == 0 && t.replies == 2);
    freep(a);
    freep(b);
    sk_corr_free(&t);
}

TEST(corr_error_reply_fails_remote_with_the_text)
{
    sk_corr t;
    sk_err err;
    sk_promise *a = mkp(), *b = mkp(), *r;

    CHECK(sk_corr_init(&t, &err) == SK_OK);
    CHECK(sk_corr_add(&t, a, SK_NO_DEADLINE, &err) == SK_OK);
    CHECK(sk_corr_add(&t, b, SK_NO_DEADLINE, &err) == SK_OK);
    /* the bits are the documented ones (docs/PROTOCOL.md) */
    CHECK(SK_ID_REPLY == 1ULL << 63 && SK_ID_ERROR == 1ULL << 62);
    CHECK(SK_ID_MASK == (1ULL << 62) - 1 && SK_CORR_ID_MASK == SK_ID_MASK);
    /* an error reply fails its request with the peer's text */
    r = sk_corr_reply(&t, a->id | SK_ID_REPLY | SK_ID_ERROR, "ValueError: x", 13);
    CHECK(r == a && sk_promise_state(a) == SK_P_FAILED && a->fail == SK_PF_REMOTE);
    CHECK(a->len == 13 && memcmp(a->data, "ValueError: x", 13) == 0);
    CHECK(t.replies == 1 && t.remote_errors == 1 && t.pending == 1);
    /* the error bit does not make a second reply or a stranger deliverable */
    CHECK(sk_corr_reply(&t, a->id | SK_ID_REPLY | SK_ID_ERROR, "again", 5) == NULL);
    CHECK(sk_corr_reply(&t, 77 | SK_ID_REPLY | SK_ID_ERROR, "who", 3) == NULL);
    CHECK(t.unknown == 2 && t.remote_errors == 1);
    /* an ordinary reply after it is unaffected */
    r = sk_corr_reply(&t, b->id | SK_ID_REPLY, "ok", 2);
    CHECK(r == b && sk_promise_state(b) == SK_P_DONE && b->fail == SK_PF_NONE);
    CHECK(t.replies == 2 && t.remote_errors == 1 && t.pending == 0);
    freep(a);
    freep(b);
    sk_corr_free(&t);
}

TEST(corr_lookup_and_match_say_what_each_reply_is)
{
    sk_corr t;
    sk_err err;
    sk_plist out;
    sk_promise *a = mkp(), *b = mkp(), *c = mkp(), *p;
    int64_t now = sk_now_ns();
    int outcome;

    CHECK(sk_corr_init(&t, &err) == SK_OK);
    /* an empty table: every id is a stranger, 0 included */
    CHECK(sk_corr_lookup(&t, 1, &p) == SK_CORR_STRAY && p == NULL);
    CHECK(sk_corr_lookup(&t, 0, &p) == SK_CORR_STRAY);
    CHECK(sk_corr_add(&t, a, SK_NO_DEADLINE, &err) == SK_OK);
    CHECK(sk_corr_add(&t, b, now + 100, &err) == SK_OK);
    CHECK(sk_corr_add(&t, c, SK_NO_DEADLINE, &err) == SK_OK);
    /* lookup changes nothing and ignores the flag bits */
    CHECK(sk_corr_lookup(&t, a->id | SK_ID_REPLY | SK_ID_ERROR, &p) ==
          SK_CORR_DELIVER && p == a);
    CHECK(t.pending == 3 && t.replies == 0 && t.unknown == 0);
    /* match takes the promise out unsettled: the caller owns it */
    CHECK(sk_corr_match(&t, a->id | SK_ID_REPLY, &outcome) == a);
    CHECK(outcome == SK_CORR_DELIVER && sk_promise_state(a) == SK_P_PENDING);
    CHECK(t.pending == 2 && t.replies == 1 && t.remote_errors == 0);
    /* a second reply to it: a duplicate (counted in unknown too) */
    CHECK(sk_corr_match(&t, a->id | SK_ID_REPLY, &outcome) == NULL);
    CHECK(outcome == SK_CORR_DUPLICATE && t.duplicate == 1 && t.unknown == 1);
    /* an id never issued: a stray */
    CHECK(sk_corr_match(&t, 4 | SK_ID_REPLY, &outcome) == NULL);
    CHECK(outcome == SK_CORR_STRAY && t.duplicate == 1 && t.unknown == 2);
    /* an expired request: late, as long as it is remembered */
    sk_plist_init(&out);
    CHECK(sk_corr_expire(&t, now + 100, &out) == 1 && out.head == b);
    CHECK(sk_corr_lookup(&t, b->id, &p) == SK_CORR_LATE && p == NULL);
    CHECK(sk_corr_match(&t, b->id | SK_ID_REPLY, &outcome) == NULL);
    CHECK(outcome == SK_CORR_LATE && t.late == 1);
    /* an error reply counts as a remote error */
    CHECK(sk_corr_match(&t, c->id | SK_ID_REPLY | SK_ID_ERROR, &outcome) == c);
    CHECK(outcome == SK_CORR_DELIVER && t.remote_errors == 1);
    CHECK(t.pending == 0 && t.replies == 2);
    freep(a);
    freep(b);
    freep(c);
    sk_corr_free(&t);
}

TEST(corr_in_order_advance_names_the_request_each_frame_answers)
{
    sk_corr t;
    sk_err err;
    sk_promise *p[3];
    int i, outcome;

    CHECK(sk_corr_init_in_order(&t, &err) == SK_OK);
    for (i = 0; i < 3; i++) {
        p[i] = mkp();
        CHECK(sk_corr_add(&t, p[i], SK_NO_DEADLINE, &err) == SK_OK);
    }
    CHECK(sk_corr_abandon(&t, p[0]) == 1);
    CHECK(sk_corr_owed(&t) && sk_corr_advance(&t) == p[0]->id);
    CHECK(sk_corr_match(&t, p[0]->id, &outcome) == NULL);
    CHECK(outcome == SK_CORR_LATE && t.late == 1);
    CHECK(sk_corr_advance(&t) == p[1]->id);
    CHECK(sk_corr_match(&t, p[1]->id, &outcome) == p[1]);
    CHECK(outcome == SK_CORR_DELIVER);
    CHECK(sk_corr_owed(&t) && sk_corr_advance(&t) == p[2]->id);
    CHECK(sk_corr_match(&t, p[2]->id, &outcome) == p[2]);
    CHECK(!sk_corr_owed(&t) && t.pending == 0 && t.unknown == 0);
    for (i = 0; i < 3; i++)
        freep(p[i]);
    sk_corr_free(&t);
}

TEST(corr_expire_in_deadline_order_then_late)
{
    sk_corr t;
    sk_err err;
    sk_plist out;
    sk_promise *p[5], *q;
    int64_t now = sk_now_ns();
    int64_t dl[5] = {now + 500, now + 100, SK_NO_DEADLINE, now + 300, now + 100};
    int i;

    CHECK(sk_corr_init(&t, &err) == SK_OK);
    for (i = 0; i < 5; i++) {
        p[i] = mkp();
        CHECK(sk_corr_add(&t, p[i], dl[i], &err) == SK_OK);
    }
    CHECK(sk_corr_next_deadline(&t) == now + 100);
    sk_plist_init(&out);
    CHECK(sk_corr_expire(&t, now + 99, &out) == 0);
    CHECK(sk_corr_expire(&t, now + 300, &out) == 3);
    /* equal deadlines: lower id first */
    CHECK(out.n == 3 && out.head == p[1] && out.head->next == p[4] &&
          out.head->next->next == p[3]);
    for (q = out.head; q != NULL; q = q->next)
        CHECK(sk_promise_state(q) == SK_P_FAILED && q->fail == SK_PF_TIMEOUT);
    CHECK(t.timeouts == 3 && t.pending == 2);
    CHECK(sk_corr_next_deadline(&t) == now + 500);
    /* a reply to an expired request is late, never delivered */
    CHECK(sk_corr_reply(&t, p[1]->id, "late", 4) == NULL);
    CHECK(sk_corr_reply(&t, p[1]->id, "later", 5) == NULL);
    CHECK(t.late == 2 && t.unknown == 0);
    /* a reply removes the deadline too */
    CHECK(sk_corr_reply(&t, p[0]->id, "ok", 2) == p[0]);
    CHECK(sk_corr_next_deadline(&t) == SK_NO_DEADLINE);
    /* remove and take_all */
    CHECK(sk_corr_remove(&t, p[2]) == 1);
    CHECK(sk_corr_remove(&t, p[2]) == 0);
    CHECK(t.pending == 0);
    for (i = 0; i < 5; i++)
        freep(p[i]);
    sk_corr_free(&t);
}

TEST(corr_in_order_matches_by_position_and_drops_late_replies)
{
    sk_corr t;
    sk_err err;
    sk_plist out;
    sk_promise *p[4], *r;
    int64_t now = sk_now_ns();
    int i;

    CHECK(sk_corr_init_in_order(&t, &err) == SK_OK);
    CHECK(!sk_corr_owed(&t)); /* nothing sent: a frame is not a reply */
    for (i = 0; i < 4; i++) {
        p[i] = mkp();
        CHECK(sk_corr_add(&t, p[i], i == 0 ? now + 100 : SK_NO_DEADLINE,
                          &err) == SK_OK);
    }
    /* the first request times out before any reply: a plain timeout */
    sk_plist_init(&out);
    CHECK(sk_corr_expire(&t, now + 100, &out) == 1);
    CHECK(out.head == p[0] && p[0]->fail == SK_PF_TIMEOUT);
    /* its late reply is the first frame: dropped, not given to p[1] */
    CHECK(sk_corr_owed(&t));
    CHECK(sk_corr_reply_next(&t, "r0", 2) == NULL && t.late == 1);
    r = sk_corr_reply_next(&t, "r1", 2);
    CHECK(r == p[1] && r->len == 2 && memcmp(r->data, "r1", 2) == 0);
    /* p[3] could not be sent at all: its id is given back */
    CHECK(sk_corr_unsend(&t, p[3]) == 1 && t.next_id == p[3]->id);
    CHECK(sk_corr_unsend(&t, p[3]) == 0);
    /* p[2] was sent in part: abandoned, its reply is dropped when it comes */
    CHECK(sk_corr_abandon(&t, p[2]) == 1 && t.pending == 0);
    CHECK(sk_corr_owed(&t));
    CHECK(sk_corr_reply_next(&t, "r2", 2) == NULL && t.late == 2);
    CHECK(!sk_corr_owed(&t));
    /* a request that times out after a late reply was dropped during its
     * wait: replies are arriving behind their requests */
    sk_promise_init(p[3]);
    CHECK(sk_corr_add(&t, p[3], now + 200, &err) == SK_OK);
    CHECK(sk_corr_add(&t, p[0] = mkp(), now + 300, &err) == SK_OK);
    CHECK(sk_corr_expire(&t, now + 200, &out) == 1 && p[3]->fail == SK_PF_TIMEOUT);
    CHECK(sk_corr_reply_next(&t, "r3", 2) == NULL && t.late == 3);
    CHECK(sk_corr_expire(&t, now + 300, &out) == 1);
    CHECK(p[0]->fail == SK_PF_OUT_OF_STEP);
    CHECK(sk_corr_reply_next(&t, "r4", 2) == NULL && t.late == 4);
    CHECK(!sk_corr_owed(&t) && t.unknown == 0);
    freep(out.head); /* the first p[0] */
    for (i = 0; i < 4; i++)
        freep(p[i]);
    sk_corr_free(&t);
}

TEST(corr_many_requests_grow_shrink_and_take_all)
{
    enum { N = 20000 };
    sk_corr t;
    sk_err err;
    sk_plist all;
    sk_promise **p = calloc(N, sizeof(*p)), *q;
    size_t i, n;
    unsigned seed = 7;

    CHECK(p != NULL);
    if (p == NULL)
        return;
    CHECK(sk_corr_init(&t, &err) == SK_OK);
    for (i = 0; i < N; i++) {
        p[i] = mkp();
        CHECK(sk_corr_add(&t, p[i], (i % 3) ? SK_NO_DEADLINE
                                           : (int64_t)(rand_r(&seed) % 1000) + 1,
                          &err) == SK_OK);
    }
    CHECK(t.pending == N);
    /* answer every other one, in a scrambled order */
    for (i = 0; i < N; i += 2) {
        size_t k = (i * 7919) % N;
        k -= k % 2;
        if (sk_promise_state(p[k]) == SK_P_PENDING)
            CHECK(sk_corr_reply(&t, p[k]->id, "x", 1) == p[k]);
    }
    n = 0;
    for (i = 0; i < N; i++)
        n += sk_promise_state(p[i]) == SK_P_PENDING;
    CHECK(t.pending == n);
    /* every pending one is still found (the map survived the deletions) */
    sk_plist_init(&all);
    sk_corr_take_all(&t, &all);
    CHECK(all.n == n && t.pending == 0 && t.heap.len == 0);
    for (q = all.head; q != NULL; q = q->next)
        CHECK(sk_promise_state(q) == SK_P_PENDING && !sk_heap_contains(&q->deadline));
    /* the burst is over: light traffic (one request at a time) shrinks the
     * table back, one halving per `cap` erases; a steady pipeline of 100
     * keeps its size (no rebuild as the table drains between bursts) */
    for (i = 0; i < 4 * 32768 && t.cap > 256; i++) {
        q = mkp();
        if (q == NULL)
            break;
        CHECK(sk_corr_add(&t, q, SK_NO_DEADLINE, &err) == SK_OK);
        CHECK(sk_corr_reply(&t, q->id, "x", 1) == q);
        freep(q);
    }
    CHECK(t.cap <= 256); /* shrunk back */
    CHECK(i <= 2 * 32768);  /* within the sum of the halvings' windows */
    {
        sk_promise *w[100];
        size_t cap0 = 0, round, k, rebuilt = 0;

        for (round = 0; round < 50; round++) {
            for (k = 0; k < 100; k++) {
                w[k] = mkp();
                CHECK(w[k] != NULL &&
                      sk_corr_add(&t, w[k], SK_NO_DEADLINE, &err) == SK_OK);
            }
            if (round == 1)
                cap0 = t.cap;
            rebuilt += round > 1 && t.cap != cap0;
            for (k = 0; k < 100; k++) {
                CHECK(sk_corr_reply(&t, w[k]->id, "x", 1) == w[k]);
                freep(w[k]);
            }
            rebuilt += round > 1 && t.cap != cap0;
        }
        CHECK(cap0 >= 256);
        CHECK(rebuilt == 0);
    }
    for (i = 0; i < N; i++)
        freep(p[i]);
    free(p);
    sk_corr_free(&t);
}

TEST(corr_remembers_the_last_expired_ids)
{
    sk_corr t;
    sk_err err;
    sk_plist out;
    sk_promise p;
    uint64_t first = 0, last = 0;
    size_t i;

    CHECK(sk_corr_init(&t, &err) == SK_OK);
    for (i = 0; i < SK_CORR_EXPIRED_KEEP + 10; i++) {
        sk_promise_init(&p);
        CHECK(sk_corr_add(&t, &p, 1, &err) == SK_OK);
        sk_plist_init(&out);
        CHECK(sk_corr_expire(&t, 2, &out) == 1);
        if (i == 0)
            first = p.id;
        last = p.id;
        sk_promise_release(&p);
        if (sk_check_failures())
            break;
    }
    CHECK(t.ring_len == SK_CORR_EXPIRED_KEEP);
    CHECK(sk_corr_reply(&t, last, "", 0) == NULL && t.late == 1);
    CHECK(sk_corr_reply(&t, first, "", 0) == NULL && t.unknown == 1); /* forgotten */
    sk_corr_free(&t);
}

/* ----------------------------------------------- write-behind over io */

static int mkpair(int fds[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   fds) != 0)
        return -1;
    return 0;
}

TEST(enqueue_then_flush_keeps_order)
{
    sk_framing f = {4, 0, 1000, SK_FRAMING_IDS};
    sk_conn c, peer;
    sk_iov a = {"one", 3, 5, 1}, b = {"two!", 4, 6, 1}, big = {"x", 1001, 0, 0};
    sk_frame fr;
    sk_err err;
    int fds[2];

    CHECK(mkpair(fds) == 0);
    CHECK(sk_conn_init(&c, fds[0], &f, &err) == SK_OK);
    CHECK(sk_conn_init(&peer, fds[1], &f, &err) == SK_OK);
    CHECK(sk_conn_enqueue(&c, &a, &err) == SK_OK);
    CHECK(sk_conn_enqueue(&c, &b, &err) == SK_OK);
    CHECK(sk_conn_queued(&c) == 2 * (4 + 8) + 7);
    CHECK(sk_conn_enqueue(&c, &big, &err) == SK_ERR && err.code == SK_E_TOO_LARGE);
    CHECK(sk_conn_queued(&c) == 31); /* nothing of the refused frame */
    /* nothing is on the wire before the flush */
    CHECK(sk_conn_recv(&peer, sk_now_ns(), NULL, &fr, &err) == SK_TIMEOUT);
    CHECK(sk_conn_flush(&c, sk_now_ns() + 1000000000LL, NULL, &err) == SK_OK);
    CHECK(sk_conn_queued(&c) == 0);
    CHECK(sk_conn_recv(&peer, sk_now_ns() + 1000000000LL, NULL, &fr, &err) == SK_OK);
    CHECK(fr.has_id && fr.id == 5 && fr.len == 3 && memcmp(fr.data, "one", 3) == 0);
    CHECK(sk_conn_recv(&peer, sk_now_ns() + 1000000000LL, NULL, &fr, &err) == SK_OK);
    CHECK(fr.has_id && fr.id == 6 && fr.len == 4 && memcmp(fr.data, "two!", 4) == 0);
    /* a connection without the id extension refuses correlated frames */
    f.flags = 0;
    sk_conn_release(&peer);
    CHECK(sk_conn_init(&peer, fds[1], &f, &err) == SK_OK);
    CHECK(sk_conn_enqueue(&peer, &a, &err) == SK_ERR && err.code == SK_E_ARG);
    sk_conn_release(&c);
    sk_conn_release(&peer);
    close(fds[0]);
    close(fds[1]);
}

TEST(recv_wake_returns_for_eventfd_pollout_frames_and_deadline)
{
    sk_framing f = {4, 0, 1 << 20, SK_FRAMING_IDS};
    sk_conn c;
    sk_frame fr;
    sk_err err;
    uint64_t one = 1;
    unsigned char msg[9] = {0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'};
    int fds[2], efd;
    int64_t t0;

    CHECK(mkpair(fds) == 0);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(efd >= 0);
    CHECK(sk_conn_init(&c, fds[0], &f, &err) == SK_OK);
    /* the deadline */
    t0 = sk_now_ns();
    CHECK(sk_conn_recv_wake(&c, sk_now_ns() + 30000000LL, efd, 0, &fr, &err) ==
          SK_TIMEOUT);
    CHECK(since_s(t0) >= 0.025);
    /* a kick: woken, nothing taken, the eventfd drained */
    CHECK(write(efd, &one, sizeof(one)) == sizeof(one));
    CHECK(sk_conn_recv_wake(&c, sk_now_ns() + 2000000000LL, efd, 0, &fr, &err) ==
          SK_NEED_DATA);
    CHECK(read(efd, &one, sizeof(one)) < 0 && errno == EAGAIN);
    /* writable: woken at once when asked for POLLOUT */
    t0 = sk_now_ns();
    CHECK(sk_conn_recv_wake(&c, sk_now_ns() + 2000000000LL, efd, POLLOUT, &fr,
                            &err) == SK_NEED_DATA);
    CHECK(since_s(t0) < 1.0);
    /* a frame */
    CHECK(write(fds[1], msg, sizeof(msg)) == sizeof(msg));
    CHECK(sk_conn_recv_wake(&c, sk_now_ns() + 2000000000LL, efd, 0, &fr, &err) ==
          SK_OK);
    CHECK(fr.len == 5 && memcmp(fr.data, "hello", 5) == 0);
    /* the peer's FIN at a frame boundary: closed */
    shutdown(fds[1], SHUT_WR);
    CHECK(sk_conn_recv_wake(&c, sk_now_ns() + 2000000000LL, efd, 0, &fr, &err) ==
          SK_ERR);
    CHECK(err.code == SK_E_CLOSED);
    sk_conn_release(&c);
    close(efd);
    close(fds[0]);
    close(fds[1]);
}
