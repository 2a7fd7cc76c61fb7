/* test_proxy.c - the fault proxy (proxy.h) on loopback TCP, without Python.
 *
 * A listener stands for the server; clients are plain blocking sockets
 * with SO_RCVTIMEO so no wait is unbounded.  Under run.sh's ASan build this
 * also checks that stopping a proxy with live connections and held bytes
 * frees everything (LeakSanitizer) and closes every fd (test_main.c). */
#include "check.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/clock.h"
#include "testkit/proxy.h"
#include "core/sock.h"

typedef struct px_env {
    int lfd;       /* the "server" listener */
    sk_proxy *p;
    int cli, srv;  /* client <-> proxy <-> srv (blocking, timeouts) */
} px_env;

static void px_timeouts(int fd)
{
    struct timeval tv = {5, 0};
    int one = 1;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static struct sockaddr_in px_addr_of(int fd)
{
    struct sockaddr_in a;
    socklen_t l = sizeof(a);

    memset(&a, 0, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &l);
    return a;
}

/* Listener, proxy in front of it, one client connected through it. */
static int px_setup(px_env *e, size_t bufsize)
{
    struct sockaddr_storage ss;
    struct sockaddr_in up, pa;
    socklen_t len;
    sk_proxy_opts opts = {bufsize, 0, 42};
    sk_err err;

    memset(e, 0, sizeof(*e));
    e->lfd = e->cli = e->srv = -1;
    CHECK_RC(sk_sockaddr("127.0.0.1", 0, AF_INET, &ss, &len, &err), SK_OK,
             &err);
    CHECK_RC(sk_listen((struct sockaddr *)&ss, len, 16, &e->lfd, &err), SK_OK,
             &err);
    if (e->lfd < 0)
        return -1;
    up = px_addr_of(e->lfd);
    CHECK_RC(sk_proxy_start((struct sockaddr *)&up, sizeof(up),
                            (struct sockaddr *)&ss, len, &opts, &e->p, &err),
             SK_OK, &err);
    if (e->p == NULL)
        return -1;
    pa = px_addr_of(sk_proxy_listen_fd(e->p));
    e->cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    px_timeouts(e->cli);
    CHECK_INT(connect(e->cli, (struct sockaddr *)&pa, sizeof(pa)), ==, 0);
    /* the listener is non-blocking: wait for the proxy's upstream connect */
    {
        struct pollfd pf = {e->lfd, POLLIN, 0};
        CHECK_INT(poll(&pf, 1, 5000), ==, 1);
    }
    e->srv = accept4(e->lfd, NULL, NULL, SOCK_CLOEXEC); /* blocking */
    CHECK_INT(e->srv, >=, 0);
    if (e->srv < 0)
        return -1;
    px_timeouts(e->srv);
    return 0;
}

static void px_teardown(px_env *e)
{
    if (e->p != NULL)
        sk_proxy_stop(e->p);
    if (e->cli >= 0)
        close(e->cli);
    if (e->srv >= 0)
        close(e->srv);
    if (e->lfd >= 0)
        close(e->lfd);
}

/* Read exactly n bytes (or fewer at EOF/error); returns bytes read, -1 on
 * an error before any byte (errno kept). */
static ssize_t px_read(int fd, void *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return got > 0 ? (ssize_t)got : -1;
        }
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static uint64_t px_id(sk_proxy *p, sk_fault_kind kind, unsigned dirs,
                      int64_t delay_ns, uint64_t bytes)
{
    sk_fault f;
    uint64_t id = 0;
    sk_err err;

    memset(&f, 0, sizeof(f));
    f.kind = kind;
    f.dirs = dirs;
    f.delay_ns = delay_ns;
    f.bytes = bytes;
    CHECK_RC(sk_proxy_add(p, &f, &id, &err), SK_OK, &err);
    return id;
}

TEST(passthrough_both_ways)
{
    px_env e;
    char buf[16];
    sk_proxy_stats st;
    sk_proxy_conn_info ci[2];

    if (px_setup(&e, 0) == 0) {
        CHECK_INT(send(e.cli, "hello", 5, 0), ==, 5);
        CHECK_INT(px_read(e.srv, buf, 5), ==, 5);
        CHECK_MEM(buf, "hello", 5);
        CHECK_INT(send(e.srv, "world!", 6, 0), ==, 6);
        CHECK_INT(px_read(e.cli, buf, 6), ==, 6);
        CHECK_MEM(buf, "world!", 6);
        sk_proxy_get_stats(e.p, &st);
        CHECK_U64(st.accepted, ==, 1);
        CHECK_U64(st.active, ==, 1);
        CHECK_U64(st.bytes_up, ==, 5);
        CHECK_U64(sk_proxy_conns(e.p, ci, 2), ==, 1);
        CHECK_INT(ci[0].client.ss_family, ==, AF_INET);
        CHECK_INT(ci[0].connecting, ==, 0);
    }
    px_teardown(&e);
}

TEST(latency_one_direction)
{
    px_env e;
    char c;
    int64_t t0;

    if (px_setup(&e, 0) == 0) {
        px_id(e.p, SK_FAULT_LATENCY, SK_DIR_DOWN, 80000000LL, 0);
        t0 = sk_now_ns();
        CHECK_INT(send(e.cli, "u", 1, 0), ==, 1);
        CHECK_INT(px_read(e.srv, &c, 1), ==, 1);
        CHECK_INT(sk_now_ns() - t0, <, 60000000LL * sk_test_time_scale());
        t0 = sk_now_ns();
        CHECK_INT(send(e.srv, "d", 1, 0), ==, 1);
        CHECK_INT(px_read(e.cli, &c, 1), ==, 1);
        CHECK_INT(sk_now_ns() - t0, >=, 79000000LL);
    }
    px_teardown(&e);
}

TEST(limit_data_closes_after_n_bytes)
{
    px_env e;
    char buf[32];

    if (px_setup(&e, 0) == 0) {
        px_id(e.p, SK_FAULT_LIMIT_DATA, SK_DIR_UP, 0, 7);
        CHECK_INT(send(e.cli, "0123456789", 10, 0), ==, 10);
        CHECK_INT(px_read(e.srv, buf, sizeof(buf)), ==, 7);
        CHECK_MEM(buf, "0123456", 7);
    }
    px_teardown(&e);
}

TEST(reset_peer_resets_the_client)
{
    px_env e;
    char c;

    if (px_setup(&e, 0) == 0) {
        px_id(e.p, SK_FAULT_RESET_PEER, SK_DIR_DOWN, 0, 0);
        CHECK_INT(px_read(e.cli, &c, 1), ==, -1);
        CHECK_INT(errno, ==, ECONNRESET);
        CHECK_INT(px_read(e.srv, &c, 1), ==, 0); /* orderly on this side */
    }
    px_teardown(&e);
}

TEST(stall_then_release_and_bounded_buffer)
{
    px_env e;
    static char big[1 << 20];
    static char got[1 << 20];
    sk_proxy_stats st;
    uint64_t id;
    ssize_t sent = 0, r;

    if (px_setup(&e, 4096) == 0) {
        id = px_id(e.p, SK_FAULT_STALL, SK_DIR_UP, 0, 0);
        memset(big, 'x', sizeof(big));
        /* send without blocking until the kernel pushes back (the socket
         * buffers autotune to a few MiB; 64 MiB is far beyond them) */
        for (;;) {
            r = send(e.cli, big, sizeof(big), MSG_DONTWAIT);
            if (r <= 0)
                break;
            sent += r;
            if (sent >= (ssize_t)64 << 20)
                break;
        }
        CHECK_INT(sent, <, (ssize_t)64 << 20); /* backpressure reached us */
        sk_proxy_get_stats(e.p, &st);
        CHECK_U64(st.buffered, <=, 4096);
        CHECK_U64(st.bytes_up, ==, 0);
        CHECK_INT(sk_proxy_remove(e.p, id), ==, 1);
        CHECK_INT(sk_proxy_remove(e.p, id), ==, 0);
        while (sent > 0) { /* every byte arrives, intact */
            size_t n = (size_t)sent < sizeof(got) ? (size_t)sent : sizeof(got);
            r = px_read(e.srv, got, n);
            CHECK_INT(r, ==, (ssize_t)n);
            if (r != (ssize_t)n)
                break;
            CHECK_MEM(got, big, n);
            sent -= r;
        }
    }
    px_teardown(&e);
}

TEST(stop_with_live_connections_and_held_bytes)
{
    px_env e;
    char c;

    if (px_setup(&e, 0) == 0) {
        px_id(e.p, SK_FAULT_LATENCY, SK_DIR_BOTH, 10000000000LL, 0);
        CHECK_INT(send(e.cli, "held", 4, 0), ==, 4);
        sk_proxy_stop(e.p);
        e.p = NULL;
        CHECK_INT(px_read(e.cli, &c, 1), ==, 0); /* orderly close */
    }
    px_teardown(&e);
}

TEST(fault_table_and_checks)
{
    px_env e;
    sk_fault f;
    uint64_t id;
    sk_err err;
    int i;

    memset(&f, 0, sizeof(f));
    f.kind = SK_FAULT_SLICER;
    f.dirs = SK_DIR_UP;
    f.size = 2;
    f.size_var = 2;
    CHECK_RC(sk_fault_check(&f, &err), SK_ERR, NULL);
    f.size_var = 1;
    CHECK_RC(sk_fault_check(&f, &err), SK_OK, &err);
    f.dirs = 0;
    CHECK_RC(sk_fault_check(&f, &err), SK_ERR, NULL);
    f.dirs = SK_DIR_BOTH;
    f.kind = SK_FAULT_BANDWIDTH;
    CHECK_RC(sk_fault_check(&f, &err), SK_ERR, NULL); /* rate 0 */
    f.kind = (sk_fault_kind)99;
    CHECK_RC(sk_fault_check(&f, &err), SK_ERR, NULL);
    f.kind = SK_FAULT_LATENCY;
    f.delay_ns = -1;
    CHECK_RC(sk_fault_check(&f, &err), SK_ERR, NULL);
    if (px_setup(&e, 0) == 0) {
        f.delay_ns = 1000;
        for (i = 0; i < SK_PROXY_MAX_FAULTS; i++)
            CHECK_RC(sk_proxy_add(e.p, &f, &id, &err), SK_OK, &err);
        CHECK_RC(sk_proxy_add(e.p, &f, &id, &err), SK_ERR, NULL);
        CHECK_INT(err.code, ==, SK_E_ARG);
        sk_proxy_clear(e.p);
        CHECK_RC(sk_proxy_add(e.p, &f, &id, &err), SK_OK, &err);
        CHECK_U64(id, ==, SK_PROXY_MAX_FAULTS + 1);
    }
    px_teardown(&e);
}
