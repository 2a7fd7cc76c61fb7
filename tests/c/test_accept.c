/*
 * test_accept.c - the acceptor (csrc/core/accept.h) on real loopback
 * listeners: deadlines in both modes (accept4 that waits in the kernel,
 * poll then accept4), a long SO_RCVTIMEO never outlasting a shorter
 * deadline, threads sharing one listener, the listener made non-blocking
 * behind its back, close waking every thread, the interrupt check, the
 * SO_RCVTIMEO an accepted socket inherits, and the reactor taking over a
 * listener the acceptor left blocking.
 */
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/time.h>

#include "core/accept.h"
#include "core/clock.h"
#include "core/io.h"
#include "core/sock.h"

static const sk_intr no_intr = {NULL, NULL, 0};

static double since_s(int64_t t0)
{
    return (double)(real_now_ns() - t0) / 1e9;
}

/* A listener on 127.0.0.1 (port 0) handed to *a; its port in *port.
 * 0, or -1 (checked) with nothing open. */
static int acceptor_open(sk_acceptor *a, int *port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    sk_err err;
    int lfd = -1, rc;

    CHECK_RC(sk_sockaddr("127.0.0.1", 0, AF_INET, &ss, &len, &err), SK_OK, &err);
    rc = sk_listen((struct sockaddr *)&ss, len, 16, &lfd, &err);
    CHECK_RC(rc, SK_OK, &err);
    if (rc != SK_OK)
        return -1;
    len = sizeof(sa);
    CHECK_INT(getsockname(lfd, (struct sockaddr *)&sa, &len), ==, 0);
    *port = ntohs(sa.sin_port);
    rc = sk_acceptor_init(a, lfd, &err);
    CHECK_RC(rc, SK_OK, &err);
    if (rc != SK_OK) {
        sk_acceptor_release(a);
        return -1;
    }
    return 0;
}

/* A blocking client socket connected to 127.0.0.1:port, or -1. */
static int client_to(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static int is_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

static int64_t rcvtimeo_ns(int fd)
{
    struct timeval tv = {0, 0};
    socklen_t len = sizeof(tv);

    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) != 0)
        return -1;
    return (int64_t)tv.tv_sec * 1000000000LL + (int64_t)tv.tv_usec * 1000LL;
}

/* One accept in a thread. */
typedef struct acc_job {
    sk_acceptor *a;
    double timeout; /* < 0: no deadline */
    const sk_intr *intr;
    int rc, fd;
    sk_err err;
    double took;
} acc_job;

static void *acc_thread(void *arg)
{
    acc_job *j = arg;
    int64_t t0 = real_now_ns();

    j->fd = -1;
    j->rc = sk_acceptor_accept(j->a, j->timeout < 0 ? SK_NO_DEADLINE
                                                    : sk_deadline_after(j->timeout),
                               j->intr != NULL ? j->intr : &no_intr, &j->fd,
                               &j->err);
    j->took = since_s(t0);
    return NULL;
}

/* Connect to port after delay_ms, in a thread. */
typedef struct conn_job {
    int port, delay_ms, fd;
} conn_job;

static void *conn_thread(void *arg)
{
    conn_job *j = arg;

    sleep_ms(j->delay_ms);
    j->fd = client_to(j->port);
    return NULL;
}

/* Wait (bounded) until the acceptor counts n threads in accept4 or poll. */
static int wait_inside(sk_acceptor *a, int n)
{
    int64_t until = real_now_ns() + 5000000000LL;
    int k;

    for (;;) {
        pthread_mutex_lock(&a->mu);
        k = a->waiters + a->pollers;
        pthread_mutex_unlock(&a->mu);
        if (k >= n || real_now_ns() > until)
            break;
        sleep_ms(2);
    }
    return k >= n;
}

/* Start one accept(timeout) in thread *th and wait (bounded) until the
 * acceptor counts it in; nonzero if it did. */
static int acc_start(sk_acceptor *a, double timeout, pthread_t *th, acc_job *j)
{
    memset(j, 0, sizeof(*j));
    j->a = a;
    j->timeout = timeout;
    if (pthread_create(th, NULL, acc_thread, j) != 0) {
        CHECK(!"pthread_create");
        return 0;
    }
    return wait_inside(a, 1);
}

TEST(deadlines_in_both_modes)
{
    sk_acceptor a;
    sk_err err;
    int port, fd = -1, rc;
    int64_t t0;
    double dt;

    if (acceptor_open(&a, &port))
        return;
    CHECK(is_nonblocking(a.fd));
    /* timeout 0: one try, no wait */
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(0), &no_intr, &fd, &err);
    CHECK_RC(rc, SK_TIMEOUT, &err);
    CHECK(since_s(t0) < tmax(0.05));
    /* under SK_ACCEPT_BLOCK_MIN_NS: polls on the non-blocking listener */
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(0.015), &no_intr, &fd, &err);
    dt = since_s(t0);
    CHECK_RC(rc, SK_TIMEOUT, &err);
    CHECK(dt >= 0.014 && dt < tmax(0.3));
    CHECK(is_nonblocking(a.fd));
    /* a longer one waits in accept4 (seen from outside while it waits):
     * the listener is blocking, its SO_RCVTIMEO inside the deadline; the
     * timeout comes on time (the last few ms poll again) */
    {
        pthread_t th;
        acc_job j;

        CHECK(acc_start(&a, 0.3, &th, &j));
        sleep_ms(50);
        pthread_mutex_lock(&a.mu);
        CHECK_INT(a.waiters, ==, 1);
        CHECK_INT(a.pollers, ==, 0);
        pthread_mutex_unlock(&a.mu);
        CHECK(!is_nonblocking(a.fd));
        CHECK(rcvtimeo_ns(a.fd) > 0 && rcvtimeo_ns(a.fd) <= 300000000LL);
        pthread_join(th, NULL);
        CHECK_RC(j.rc, SK_TIMEOUT, &j.err);
        CHECK(j.took >= 0.295 && j.took < tmax(0.8));
    }
    (void)dt;
    CHECK_INT(a.waiters, ==, 0);
    CHECK_INT(a.pollers, ==, 0);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(takes_a_queued_connection_in_both_modes)
{
    sk_acceptor a;
    sk_err err;
    int port, c1, c2, fd = -1, rc;
    int64_t t0;

    if (acceptor_open(&a, &port))
        return;
    c1 = client_to(port);
    c2 = client_to(port);
    CHECK(c1 >= 0 && c2 >= 0);
    /* poll path (deadline now) */
    rc = sk_acceptor_accept(&a, sk_deadline_after(0), &no_intr, &fd, &err);
    CHECK_RC(rc, SK_OK, &err);
    if (rc == SK_OK) {
        CHECK(is_nonblocking(fd));
        CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        close(fd);
    }
    /* blocking path: accept4 returns the queued one at once */
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(5), &no_intr, &fd, &err);
    CHECK_RC(rc, SK_OK, &err);
    CHECK(since_s(t0) < tmax(0.1));
    CHECK(!is_nonblocking(a.fd));
    if (rc == SK_OK) {
        CHECK(is_nonblocking(fd)); /* the listener's mode is not the socket's */
        close(fd);
    }
    close(c1);
    close(c2);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(waits_in_accept4_for_a_late_client)
{
    sk_acceptor a;
    pthread_t th;
    conn_job cj;
    sk_err err;
    int port, fd = -1, rc;
    int64_t t0;
    double dt;

    if (acceptor_open(&a, &port))
        return;
    cj.port = port;
    cj.delay_ms = 100;
    cj.fd = -1;
    CHECK_INT(pthread_create(&th, NULL, conn_thread, &cj), ==, 0);
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(5), &no_intr, &fd, &err);
    dt = since_s(t0);
    pthread_join(th, NULL);
    CHECK_RC(rc, SK_OK, &err);
    CHECK(dt >= 0.09 && dt < tmax(1));
    CHECK(!is_nonblocking(a.fd));
    if (rc == SK_OK)
        close(fd);
    if (cj.fd >= 0)
        close(cj.fd);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(a_long_timeout_never_outlasts_a_shorter_deadline)
{
    sk_acceptor a;
    sk_err err;
    int port, fd = -1, rc;
    int64_t t0, long_timeo;
    double dt;

    if (acceptor_open(&a, &port))
        return;
    /* sets SO_RCVTIMEO to most of 2 s, then a client ends the wait */
    {
        pthread_t th;
        conn_job cj = {port, 50, -1};

        CHECK_INT(pthread_create(&th, NULL, conn_thread, &cj), ==, 0);
        rc = sk_acceptor_accept(&a, sk_deadline_after(2), &no_intr, &fd, &err);
        pthread_join(th, NULL);
        CHECK_RC(rc, SK_OK, &err);
        if (rc == SK_OK)
            close(fd);
        if (cj.fd >= 0)
            close(cj.fd);
    }
    long_timeo = rcvtimeo_ns(a.fd);
    CHECK(long_timeo > 1000000000LL);
    /* 0.1 s: lowered, on time */
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(0.1), &no_intr, &fd, &err);
    dt = since_s(t0);
    CHECK_RC(rc, SK_TIMEOUT, &err);
    CHECK(dt >= 0.095 && dt < tmax(0.4));
    CHECK(rcvtimeo_ns(a.fd) <= 100000000LL);
    /* 0.5 s afterwards: raised again while it waits (nobody else does),
     * still on time */
    {
        pthread_t th;
        acc_job j;

        CHECK(acc_start(&a, 0.5, &th, &j));
        sleep_ms(50);
        CHECK(rcvtimeo_ns(a.fd) > 100000000LL);
        pthread_join(th, NULL);
        CHECK_RC(j.rc, SK_TIMEOUT, &j.err);
        CHECK(j.took >= 0.495 && j.took < tmax(1));
    }
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(threads_share_a_listener)
{
    sk_acceptor a;
    pthread_t tl, ts, tp;
    acc_job jl, js, jp;
    sk_err err;
    int port, c = -1;

    if (acceptor_open(&a, &port))
        return;
    /* L waits with no deadline, in accept4 */
    CHECK(acc_start(&a, -1, &tl, &jl));
    /* S with 0.1 s lowers SO_RCVTIMEO (L, already inside, keeps its own)
     * and times out on time */
    memset(&js, 0, sizeof(js));
    js.a = &a;
    js.timeout = 0.1;
    CHECK_INT(pthread_create(&ts, NULL, acc_thread, &js), ==, 0);
    pthread_join(ts, NULL);
    CHECK_RC(js.rc, SK_TIMEOUT, &js.err);
    CHECK(js.took >= 0.095 && js.took < tmax(0.5));
    /* P with 10 ms polls: the listener made non-blocking for it */
    memset(&jp, 0, sizeof(jp));
    jp.a = &a;
    jp.timeout = 0.01;
    CHECK_INT(pthread_create(&tp, NULL, acc_thread, &jp), ==, 0);
    pthread_join(tp, NULL);
    CHECK_RC(jp.rc, SK_TIMEOUT, &jp.err);
    CHECK(jp.took >= 0.009 && jp.took < tmax(0.3));
    /* L is still waiting, and takes the next client */
    CHECK_INT(a.waiters, ==, 1);
    c = client_to(port);
    CHECK(c >= 0);
    pthread_join(tl, NULL);
    CHECK_RC(jl.rc, SK_OK, &jl.err);
    if (jl.rc == SK_OK)
        close(jl.fd);
    if (c >= 0)
        close(c);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(made_nonblocking_behind_its_back_it_does_not_spin)
{
    sk_acceptor a;
    struct timespec c0, c1;
    sk_err err;
    int port, fd = -1, rc;
    int64_t t0;
    double dt, cpu;

    if (acceptor_open(&a, &port))
        return;
    /* a queued client, taken in accept4: the acceptor knows the listener
     * blocking */
    {
        int c = client_to(port);

        CHECK(c >= 0);
        rc = sk_acceptor_accept(&a, sk_deadline_after(5), &no_intr, &fd, &err);
        CHECK_RC(rc, SK_OK, &err);
        if (rc == SK_OK)
            close(fd);
        if (c >= 0)
            close(c);
    }
    CHECK(!is_nonblocking(a.fd));
    CHECK_INT(a.blocking, ==, 1);
    CHECK_INT(set_nonblock(a.fd, 1), ==, 0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    t0 = real_now_ns();
    rc = sk_acceptor_accept(&a, sk_deadline_after(0.3), &no_intr, &fd, &err);
    dt = since_s(t0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    cpu = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) / 1e9;
    CHECK_RC(rc, SK_TIMEOUT, &err);
    CHECK(dt >= 0.295 && dt < tmax(0.8));
    CHECK(cpu < 0.05); /* waited, did not loop on EAGAIN */
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(close_wakes_every_thread_then_closes)
{
    enum { N = 4 };
    static const double timeouts[N] = {-1, 30, 0.015, -1};
    sk_acceptor a;
    pthread_t th[N];
    acc_job j[N];
    sk_err err;
    int port, i, rc;
    int64_t t0;

    if (acceptor_open(&a, &port))
        return;
    for (i = 0; i < N; i++) {
        memset(&j[i], 0, sizeof(j[i]));
        j[i].a = &a;
        j[i].timeout = timeouts[i];
        CHECK_INT(pthread_create(&th[i], NULL, acc_thread, &j[i]), ==, 0);
    }
    CHECK(wait_inside(&a, 3)); /* the 15 ms one may have left already */
    t0 = real_now_ns();
    rc = sk_acceptor_close(&a, &err);
    CHECK_RC(rc, SK_OK, &err);
    CHECK(since_s(t0) < tmax(0.5));
    CHECK_INT(a.fd, ==, -1);
    CHECK_INT(a.waiters + a.pollers, ==, 0);
    for (i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (timeouts[i] == 0.015 && j[i].rc == SK_TIMEOUT)
            continue;
        CHECK_RC(j[i].rc, SK_ERR, &j[i].err);
        CHECK_INT(j[i].err.code, ==, SK_E_CLOSED);
    }
    /* idempotent, and an accept after it says closed */
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    rc = sk_acceptor_accept(&a, sk_deadline_after(1), &no_intr, &j[0].fd, &err);
    CHECK_RC(rc, SK_ERR, &err);
    CHECK_INT(err.code, ==, SK_E_CLOSED);
    sk_acceptor_release(&a);
}

TEST(the_interrupt_check_runs_every_slice)
{
    sk_acceptor a;
    sk_err err;
    intr_ctx s;
    int port, fd = -1, rc;
    double dt;

    if (acceptor_open(&a, &port))
        return;
    s.start = real_now_ns();
    s.fire_after_ns = 150000000LL;
    s.calls = 0;
    {
        sk_intr in = {intr_check, &s, 30};

        rc = sk_acceptor_accept(&a, SK_NO_DEADLINE, &in, &fd, &err);
    }
    dt = since_s(s.start);
    CHECK_RC(rc, SK_INTR, &err);
    CHECK(dt >= 0.145 && dt < tmax(0.6));
    CHECK(s.calls >= 2); /* woke per slice (30 ms), not only at the end */
    CHECK_INT(a.waiters + a.pollers, ==, 0);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}

TEST(an_accepted_socket_inherits_the_timeout_and_a_conn_replaces_it)
{
    sk_acceptor a;
    sk_framing f;
    sk_frame fr;
    sk_conn c;
    sk_err err;
    pthread_t th;
    conn_job cj;
    int port, fd = -1, rc;
    static const unsigned char wire[] = {0, 0, 0, 2, 'o', 'k'};

    if (acceptor_open(&a, &port))
        return;
    cj.port = port;
    cj.delay_ms = 30;
    cj.fd = -1;
    CHECK_INT(pthread_create(&th, NULL, conn_thread, &cj), ==, 0);
    rc = sk_acceptor_accept(&a, sk_deadline_after(5), &no_intr, &fd, &err);
    pthread_join(th, NULL);
    CHECK_RC(rc, SK_OK, &err);
    if (rc != SK_OK || cj.fd < 0)
        goto out;
    /* Linux copies the listener's SO_RCVTIMEO into the accepted socket */
    CHECK(rcvtimeo_ns(fd) > 0);
    memset(&f, 0, sizeof(f));
    f.header_size = 4;
    f.max_frame = 1 << 20;
    CHECK_RC(sk_conn_init(&c, fd, &f, &err), SK_OK, &err);
    /* the first wait polls; the second, with no deadline, waits in recv
     * and sets no timeout at all (it would wake every ~4 s otherwise) */
    rc = sk_conn_recv(&c, sk_deadline_after(0.02), &no_intr, &fr, &err);
    CHECK_RC(rc, SK_TIMEOUT, &err);
    CHECK_INT((int)write(cj.fd, wire, 3), ==, 3);
    /* the rest of the frame comes 100 ms later: the receive waits with no
     * deadline in the meantime */
    {
        writer_job wj;
        int64_t t0 = real_now_ns();

        if (writer_start(&th, &wj, cj.fd, wire + 3, 3, 0, 0, 100))
            goto out_conn;
        rc = sk_conn_recv(&c, SK_NO_DEADLINE, &no_intr, &fr, &err);
        pthread_join(th, NULL);
        CHECK_INT(wj.rc, ==, 0);
        CHECK_RC(rc, SK_OK, &err);
        if (rc == SK_OK)
            CHECK(fr.len == 2 && memcmp(fr.data, "ok", 2) == 0);
        CHECK(since_s(t0) >= 0.09);
    }
    CHECK_U64((uint64_t)rcvtimeo_ns(fd), ==, 0);
    CHECK(c.rd_timeo_ns == INT64_MAX);
out_conn:
    sk_conn_release(&c);
out:
    if (fd >= 0)
        close(fd);
    if (cj.fd >= 0)
        close(cj.fd);
    CHECK_RC(sk_acceptor_close(&a, &err), SK_OK, &err);
    sk_acceptor_release(&a);
}
