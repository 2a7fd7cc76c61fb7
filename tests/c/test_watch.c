/* test_watch.c - the state sampler thread (watch.h) on real loopback
 * sockets: the fd phase, the hand-over to sock_diag after close(), a kept
 * fd whose TIME_WAIT lives on in diag, the fd-reuse guard, rings, stop. */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/sk.h"
#include "core/tcpinfo.h"
#include "util.h"
#include "core/watch.h"

/* Wait until the watch's latest state is `state`; 1 if it got there. */
static int wait_state(sk_watch *w, int state)
{
    int64_t end = sk_now_ns() + (int64_t)(3e9 * sk_test_time_scale());
    sk_watch_stats st;

    for (;;) {
        sk_watch_get_stats(w, &st);
        if (st.state == state)
            return 1;
        if (sk_now_ns() > end)
            return 0;
        usleep(500);
    }
}

/* The states recorded, in order, into out[cap]; returns how many. */
static size_t states_of(sk_watch *w, int *out, size_t cap)
{
    sk_watch_transition tr[32];
    size_t n = sk_watch_transitions(w, tr, 32), i;

    for (i = 0; i < n && i < cap; i++)
        out[i] = tr[i].state;
    return n < cap ? n : cap;
}

TEST(active_close_followed_through_diag)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_watch_stats st;
    sk_err err;
    int a, b, s[8];
    size_t n;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = a;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w == NULL)
        return;
    sk_watch_get_stats(w, &st);
    CHECK_INT(st.state, ==, SK_TCP_ESTABLISHED); /* the first sample, at once */
    CHECK(st.fd_phase && st.has_tuple && st.cookie != 0);
    close(a);                                     /* orphan: FIN_WAIT_* */
    CHECK(wait_state(w, SK_TCP_FIN_WAIT2));
    close(b);
    CHECK(wait_state(w, SK_TCP_TIME_WAIT));
    sk_watch_get_stats(w, &st);
    CHECK(!st.fd_phase && st.handover_ns > 0 && st.lookups > 0);
    CHECK(st.running && !st.finished);            /* TIME_WAIT: still there */
    CHECK_INT(st.err.code, ==, SK_E_NONE);
    n = states_of(w, s, 8);
    CHECK_U64(n, >=, 3);
    CHECK_INT(s[0], ==, SK_TCP_ESTABLISHED);
    CHECK_INT(s[n - 1], ==, SK_TCP_TIME_WAIT);
    sk_watch_stop(w);
    sk_watch_stop(w);
    sk_watch_get_stats(w, &st);
    CHECK(!st.running);
    sk_watch_free(w);
}

TEST(follow_waits_for_the_end_of_a_close_only)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_watch_stats st;
    sk_err err;
    int64_t step = (int64_t)(3e9 * sk_test_time_scale());
    int a, b;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = a;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w == NULL)
        return;
    /* nobody closes it: decided by the first sample after the call */
    CHECK_INT(sk_watch_follow(w, sk_now_ns(), SK_NO_DEADLINE), ==,
              SK_WATCH_NOT_CLOSING);
    /* our FIN is ACKed, the peer keeps its side open: still closing */
    CHECK_INT(shutdown(a, SHUT_WR), ==, 0);
    CHECK(wait_state(w, SK_TCP_FIN_WAIT2));
    CHECK_INT(sk_watch_follow(w, sk_now_ns(), sk_now_ns() + 20000000), ==,
              SK_WATCH_STILL_CLOSING);
    close(b);                    /* the peer's FIN: TIME_WAIT, via diag */
    CHECK_INT(sk_watch_follow(w, sk_now_ns(), sk_now_ns() + step), ==,
              SK_WATCH_CLOSED);
    sk_watch_get_stats(w, &st);
    CHECK_INT(st.state, ==, SK_TCP_TIME_WAIT);
    sk_watch_stop(w);            /* a stopped sampler: nothing to wait for */
    CHECK_INT(sk_watch_follow(w, sk_now_ns(), SK_NO_DEADLINE), ==,
              SK_WATCH_CLOSED);
    sk_watch_free(w);
    close(a);
}

TEST(kept_fd_reads_time_wait_and_passive_side_finishes)
{
    sk_watch_target ta, tb;
    sk_watch_config c;
    sk_watch *wa = NULL, *wb = NULL;
    sk_watch_stats st;
    sk_err err;
    int a, b, s[8];
    size_t n;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&ta, 0, sizeof(ta));
    memset(&tb, 0, sizeof(tb));
    memset(&c, 0, sizeof(c));
    ta.fd = a;
    tb.fd = b;
    c.interval_ns = 200000; /* 5 kHz */
    CHECK_RC(sk_watch_start(&ta, &c, &wa, &err), SK_OK, &err);
    CHECK_RC(sk_watch_start(&tb, &c, &wb, &err), SK_OK, &err);
    if (wa == NULL || wb == NULL)
        goto out;
    shutdown(a, SHUT_WR);                 /* a keeps its fd */
    CHECK(wait_state(wb, SK_TCP_CLOSE_WAIT));
    CHECK(wait_state(wa, SK_TCP_FIN_WAIT2));
    close(b);
    b = -1;
    CHECK(wait_state(wa, SK_TCP_TIME_WAIT)); /* the fd says CLOSE; diag says */
    CHECK(wait_state(wb, SK_TCP_CLOSE));
    sk_watch_get_stats(wa, &st);
    CHECK(st.fd_phase);                   /* still reading the fd */
    n = states_of(wb, s, 8);
    CHECK_INT(s[0], ==, SK_TCP_ESTABLISHED);
    CHECK_INT(s[1], ==, SK_TCP_CLOSE_WAIT);
    CHECK_INT(s[n - 1], ==, SK_TCP_CLOSE);
    /* gone for good: the sampler ends by itself */
    {
        int64_t end = sk_now_ns() + (int64_t)(3e9 * sk_test_time_scale());
        do {
            sk_watch_get_stats(wb, &st);
            usleep(500);
        } while (st.running && sk_now_ns() < end);
        CHECK(st.finished && !st.running);
    }
out:
    sk_watch_free(wa);
    sk_watch_free(wb);
    close(a);
    if (b >= 0)
        close(b);
}

TEST(reused_fd_number_is_not_followed)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_err err;
    int a, b, other, s[8];
    size_t n, i;
    struct sockaddr_in sa;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = a;
    c.interval_ns = 50000000; /* 50 ms: the reuse lands between two ticks */
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w == NULL)
        return;
    other = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(other, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(other, 1) == 0);
    close(a);
    CHECK_INT(dup2(other, a), ==, a);     /* the number now names a listener */
    usleep(200000);
    n = states_of(w, s, 8);
    for (i = 0; i < n; i++)
        CHECK_INT(s[i], !=, SK_TCP_LISTEN);
    sk_watch_free(w);
    close(a);
    close(other);
    close(b);
}

TEST(rings_are_bounded)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_watch_transition tr[4];
    sk_watch_stats st;
    sk_err err;
    int a, b;
    size_t n;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = b;
    c.max_transitions = 1;
    c.sample_info = 1;
    c.max_samples = 2;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w == NULL)
        return;
    close(a);
    CHECK(wait_state(w, SK_TCP_CLOSE_WAIT));
    close(b);
    CHECK(wait_state(w, SK_TCP_CLOSE));
    n = sk_watch_transitions(w, tr, 4);
    CHECK_U64(n, ==, 1);
    CHECK_INT(tr[0].state, ==, SK_TCP_CLOSE);
    CHECK_INT(tr[0].via_diag, ==, 1);
    sk_watch_get_stats(w, &st);
    CHECK_U64(st.transitions_dropped, >=, 2);
    CHECK_U64(st.transitions, ==, st.transitions_dropped + 1);
    CHECK_U64(sk_watch_samples(w, NULL, 0), <=, 2);
    CHECK_U64(st.info_samples, >=, 1);
    sk_watch_free(w);
}

static void *stopper(void *arg)
{
    sk_watch_stop(arg);
    return NULL;
}

TEST(stop_from_many_threads)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_err err;
    pthread_t th[4];
    int a, b, i;

    CHECK_INT(tcp_loopback_pair(&a, &b), ==, 0);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = a;
    c.interval_ns = 1000000000; /* 1 s: stop must not wait for a tick */
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w == NULL)
        return;
    {
        int64_t t0 = sk_now_ns();
        for (i = 0; i < 4; i++)
            pthread_create(&th[i], NULL, stopper, w);
        for (i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        CHECK_INT((sk_now_ns() - t0) / 1000000, <, 500);
    }
    sk_watch_stop(w);
    sk_watch_free(w);
    close(a);
    close(b);
}

TEST(tuple_target_and_errors)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_watch_stats st;
    sk_err err;
    int u;

    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = -1;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_ERR, NULL);
    CHECK_INT(err.code, ==, SK_E_ARG);
    CHECK(w == NULL);

    /* nothing with that 4-tuple: CLOSE, and it keeps looking */
    t.has_tuple = 1;
    t.tuple.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", t.tuple.src);
    inet_pton(AF_INET, "127.0.0.1", t.tuple.dst);
    t.tuple.sport = 1;
    t.tuple.dport = 2;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_OK, &err);
    if (w != NULL) {
        /* a bounded wait for the second sample, not a fixed sleep: on a
         * loaded machine the sampler thread may not run within 5 ms */
        for (u = 0; u < 2000; u++) {
            sk_watch_get_stats(w, &st);
            if (st.samples >= 2)
                break;
            usleep(1000);
        }
        CHECK_INT(st.state, ==, SK_TCP_CLOSE);
        CHECK(st.running && !st.finished);
        CHECK_U64(st.samples, >=, 2);
        sk_watch_free(w);
        w = NULL;
    }

    c.interval_ns = 10; /* below the minimum */
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_ERR, NULL);
    CHECK_INT(err.code, ==, SK_E_ARG);
    c.interval_ns = 0;
    c.max_transitions = (size_t)SK_WATCH_MAX_RING + 1;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_ERR, NULL);
    CHECK_INT(err.code, ==, SK_E_ARG);
    c.max_transitions = 0;

    /* not a TCP socket: the failing syscall is named */
    u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&t, 0, sizeof(t));
    t.fd = u;
    CHECK_RC(sk_watch_start(&t, &c, &w, &err), SK_ERR, NULL);
    CHECK_STR(err.syscall, "getsockopt(TCP_INFO)");
    CHECK(w == NULL);
    close(u);
    sk_watch_free(NULL);
    sk_watch_stop(NULL);
}
