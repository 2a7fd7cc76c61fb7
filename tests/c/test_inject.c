/* test_inject.c - allocation, thread and epoll failures, one at a time.
 *
 * The core allocates, starts threads and creates epoll sets only through
 * csrc/core/sys.h, whose hook this file sets.  For each scenario below (one per
 * area of the core that allocates), a first run counts the calls the
 * scenario makes (n); then the scenario runs n more times, the k-th run
 * making exactly the k-th call fail (malloc/calloc/realloc return NULL,
 * pthread_create gives EAGAIN, epoll_create1 gives EMFILE).  Each run must
 *   - end with a typed error: SK_E_NOMEM for an allocation, SK_E_SYS with
 *     the syscall named ("pthread_create", "epoll_create1") and its errno
 *     for the others, with a message - or succeed where the core documents
 *     the failure as tolerated (a best-effort cache, a shrink);
 *   - leave no leak (LeakSanitizer in the sanitizer build, memcheck's leak
 *     counters under valgrind) and no open descriptor;
 *   - not crash.
 * Every tolerated site is listed in a note, so the run shows which
 * failures the core absorbs.  Scenario code uses plain malloc/calloc (not
 * hooked): only the core's calls are counted. */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define HAVE_MEMCHECK 1
#endif
#endif

#include "core/clock.h"
#include "core/corr.h"
#include "core/diag.h"
#include "core/frame.h"
#include "core/hub.h"
#include "core/io.h"
#include "core/promise.h"
#include "core/server.h"
#include "testkit/proxy.h"
#include "core/sock.h"
#include "core/sys.h"
#include "util.h"
#include "core/watch.h"

/* LeakSanitizer's on-demand check, present in the sanitizer build only. */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static const char *const call_names[] = {"malloc", "calloc", "realloc",
                                         "pthread_create", "epoll_create1"};

/* ---- the hook ------------------------------------------------------------ */

static struct {
    long count;   /* calls seen (atomic: core threads call the hook too) */
    long fail_at; /* 1-based index of the call to fail; 0: none */
    int fired;
    sk_sys_call call; /* the call that was failed */
    const char *site;
} inj;

static int inj_hook(sk_sys_call call, const char *site)
{
    long n = __atomic_add_fetch(&inj.count, 1, __ATOMIC_ACQ_REL);

    if (n != inj.fail_at)
        return 0;
    inj.call = call;
    inj.site = site;
    __atomic_store_n(&inj.fired, 1, __ATOMIC_RELEASE);
    return 1;
}

static void inj_arm(long fail_at)
{
    inj.count = 0;
    inj.fail_at = fail_at;
    inj.fired = 0;
    inj.call = SK_SYS_MALLOC;
    inj.site = NULL;
    __atomic_store_n(&sk_fault_hook, inj_hook, __ATOMIC_RELEASE);
}

static void inj_disarm(void)
{
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
}

/* ---- leak and descriptor accounting --------------------------------------- */

static int count_open_fds(void)
{
    int fd, n = 0;

    for (fd = 0; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            n++;
    return n;
}

/* Bytes definitely lost so far, as far as the run can tell (memcheck's
 * counters under valgrind; 0 elsewhere).  "Possibly lost" is left out: a
 * joined thread's TLS block, which glibc caches with its stack, counts as
 * possibly lost. */
static unsigned long lost_bytes(void)
{
#ifdef HAVE_MEMCHECK
    unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;

    if (RUNNING_ON_VALGRIND) {
        VALGRIND_DO_QUICK_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
    }
    return leaked;
#else
    return 0;
#endif
}

/* ---- the scenarios ----------------------------------------------------- */

/* Each scenario exercises one area through its public API and returns
 * SK_OK, or SK_ERR with *err saying what failed.  It checks its own
 * results (CHECK) where a success must be exact, and releases everything
 * on every path. */
typedef int (*scenario_fn)(sk_err *err);

/* Frames of growing sizes through a decoder (buffer growth). */
static int sc_decoder(sk_err *err)
{
    static const size_t sizes[] = {10, 300, 5000, 70000, 1, 200000, 0, 900};
    sk_framing f = {4, 0, 1 << 20, 0};
    unsigned char hdr[4], *p = malloc(200000);
    sk_decoder d;
    sk_frame fr;
    size_t i;
    int rc = SK_OK;

    if (p == NULL)
        return sk_err_set(err, SK_E_NOMEM, "test: no memory");
    sk_decoder_init(&d, &f);
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]) && rc == SK_OK; i++) {
        ref_put_len(hdr, 4, 0, sizes[i]);
        ref_fill(p, sizes[i], i);
        if (sk_decoder_feed(&d, hdr, 4) != SK_OK ||
            sk_decoder_feed(&d, p, sizes[i]) != SK_OK) {
            rc = SK_ERR;
            break;
        }
        rc = sk_decoder_next(&d, &fr);
        if (rc == SK_OK) {
            CHECK_U64(fr.len, ==, sizes[i]);
            CHECK_MEM(fr.data, p, sizes[i]);
        }
        sk_decoder_idle(&d);
    }
    if (rc != SK_OK)
        *err = d.err;
    sk_decoder_free(&d);
    free(p);
    return rc;
}

/* Two connections on a socketpair: write-behind frames, a batch whose send
 * is cut short (its tail kept), flushes, receives. */
static int sc_conn(sk_err *err)
{
    static const size_t sizes[] = {3, 2000, 400000, 17, 90000};
    enum { NF = sizeof(sizes) / sizeof(sizes[0]) };
    sk_framing f = {4, 0, 1 << 20, 0};
    sk_iov iov[NF];
    unsigned char *pay[NF];
    sk_conn a, b;
    sk_frame fr;
    size_t i, done, got = 0;
    int sv[2], rc = SK_ERR, turns;
    int64_t deadline = real_now_ns() + (int64_t)(tmax(10) * 1e9);

    memset(pay, 0, sizeof(pay));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return sk_err_sys(err, "socketpair", errno);
    set_nonblock(sv[0], 1);
    set_nonblock(sv[1], 1);
    sk_conn_init(&a, sv[0], &f, err);
    sk_conn_init(&b, sv[1], &f, err);
    for (i = 0; i < NF; i++) {
        pay[i] = malloc(sizes[i] + 1);
        if (pay[i] == NULL) {
            sk_err_set(err, SK_E_NOMEM, "test: no memory");
            goto done;
        }
        ref_fill(pay[i], sizes[i], i);
        iov[i].base = pay[i];
        iov[i].len = sizes[i];
        iov[i].id = 0;
        iov[i].has_id = 0;
    }
    /* write-behind: two frames queued without a syscall */
    if (sk_conn_enqueue(&a, &iov[0], err) != SK_OK ||
        sk_conn_enqueue(&a, &iov[1], err) != SK_OK)
        goto done;
    /* the rest as one batch that does not fit: cut short, tail kept */
    rc = sk_conn_send(&a, iov + 2, NF - 2, sk_now_ns(), NULL, &done, err);
    if (rc == SK_ERR)
        goto done;
    CHECK_INT(rc, ==, SK_TIMEOUT);
    /* drain b, flush a, until every frame arrived */
    for (turns = 0; got < 2 + done && real_now_ns() < deadline; turns++) {
        rc = sk_conn_recv_nowait(&b, &fr, err);
        if (rc == SK_ERR)
            goto done;
        if (rc == SK_OK) {
            CHECK_U64(fr.len, ==, sizes[got]);
            CHECK_MEM(fr.data, pay[got], sizes[got]);
            got++;
            continue;
        }
        rc = sk_conn_flush(&a, sk_now_ns(), NULL, err);
        if (rc == SK_ERR)
            goto done;
        if (done < NF - 2 && sk_conn_queued(&a) == 0) {
            size_t more = 0;
            rc = sk_conn_send(&a, iov + 2 + done, NF - 2 - done, sk_now_ns(),
                              NULL, &more, err);
            if (rc == SK_ERR)
                goto done;
            done += more;
        }
    }
    CHECK_U64(got, ==, NF);
    rc = SK_OK;
done:
    sk_conn_release(&a);
    sk_conn_release(&b);
    close(sv[0]);
    close(sv[1]);
    for (i = 0; i < NF; i++)
        free(pay[i]);
    return rc;
}

/* The correlation table: 150 requests (map and heap growth), replies with
 * long payloads (promise storage), expiry (the expired-id ring), late
 * replies, take_all. */
static int sc_corr(sk_err *err)
{
    enum { N = 150 };
    sk_promise *ps = calloc(N, sizeof(*ps));
    unsigned char payload[300];
    sk_plist out;
    sk_corr t;
    size_t i, added = 0, replied = 0;
    int rc = SK_OK;

    if (ps == NULL)
        return sk_err_set(err, SK_E_NOMEM, "test: no memory");
    memset(payload, 'r', sizeof(payload));
    sk_corr_init(&t, err);
    sk_plist_init(&out);
    for (i = 0; i < N && rc == SK_OK; i++) {
        sk_promise_init(&ps[i]);
        rc = sk_corr_add(&t, &ps[i],
                         i % 3 == 0 ? SK_NO_DEADLINE : 1000 + (int64_t)i, err);
        if (rc == SK_OK)
            added++;
    }
    for (i = 1; i < added && rc == SK_OK; i += 3) {
        sk_promise *p = sk_corr_reply(&t, ps[i].id, payload,
                                      i % 2 ? sizeof(payload) : 10);
        CHECK(p == &ps[i]);
        replied++;
        if (p != NULL && p->fail == SK_PF_NOMEM)
            rc = sk_err_set(err, SK_E_NOMEM,
                            "a reply arrived but its %zu bytes could not be "
                            "stored",
                            sizeof(payload));
    }
    if (rc == SK_OK) {
        size_t expired = sk_corr_expire(&t, 1000 + N, &out);
        /* late replies: dropped, counted late (or unknown when the
         * best-effort ring could not remember the id) */
        for (i = 2; i < added; i += 3)
            CHECK(sk_corr_reply(&t, ps[i].id, payload, 4) == NULL);
        CHECK_U64(t.late + t.unknown, ==, expired);
    }
    /* whatever is still pending comes out unsettled: every request is
     * accounted for exactly once */
    sk_corr_take_all(&t, &out);
    CHECK_U64(replied + out.n, ==, added);
    CHECK_U64(t.pending, ==, 0);
    for (i = 0; i < N; i++)
        sk_promise_release(&ps[i]);
    sk_corr_free(&t);
    free(ps);
    return rc;
}

/* A hub with 70 connections (table growth past 64) and 20 lingering
 * sockets (growth past 16). */
static int sc_hub(sk_err *err)
{
    enum { NC = 70, NL = 20 };
    sk_framing f = {4, 0, 1 << 20, SK_FRAMING_CONTROL};
    sk_conn *cs = calloc(NC, sizeof(*cs));
    int fds[NC][2], i, n = 0, rc;
    sk_hub *h = NULL;

    if (cs == NULL)
        return sk_err_set(err, SK_E_NOMEM, "test: no memory");
    rc = sk_hub_new(&h, err);
    for (i = 0; i < NC && rc == SK_OK; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds[i]) != 0) {
            rc = sk_err_sys(err, "socketpair", errno);
            break;
        }
        set_nonblock(fds[i][0], 1);
        sk_conn_init(&cs[i], fds[i][0], &f, err);
        sk_conn_heartbeat(&cs[i], 1000 * 1000000LL, 10000 * 1000000LL, 1, err);
        n++;
        rc = sk_hub_add(h, &cs[i], err);
    }
    for (i = 0; i < NL && rc == SK_OK; i++) {
        int sv[2];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            rc = sk_err_sys(err, "socketpair", errno);
            break;
        }
        shutdown(sv[0], SHUT_WR);
        close(sv[1]); /* the peer is gone: the hub closes sv[0] soon */
        sk_hub_linger(h, sv[0], sk_now_ns() + 60 * 1000000000LL);
    }
    for (i = 0; i < n; i++) {
        if (h != NULL)
            sk_hub_remove(h, &cs[i]);
        sk_conn_release(&cs[i]);
        close(fds[i][0]);
        close(fds[i][1]);
    }
    sk_hub_free(h); /* closes what still lingers */
    free(cs);
    return rc;
}

/* The fault proxy: start, one client through to an upstream server and
 * back, stop.  A failure inside the reactor (a new connection's buffers)
 * resets the client and is reported by sk_proxy_last_error. */
static int sc_proxy(sk_err *err)
{
    struct sockaddr_storage ss;
    struct sockaddr_in up, pa;
    socklen_t len = sizeof(up);
    sk_proxy_opts opts = {4096, 0, 7};
    sk_proxy *p = NULL;
    char buf[8], msg[SK_ERRMSG_MAX];
    int lfd = -1, cli = -1, srv = -1, rc = SK_ERR, e;
    struct pollfd pf[2];

    if (sk_sockaddr("127.0.0.1", 0, AF_INET, &ss, &len, err) != SK_OK ||
        sk_listen((struct sockaddr *)&ss, len, 16, &lfd, err) != SK_OK)
        goto done;
    len = sizeof(up);
    getsockname(lfd, (struct sockaddr *)&up, &len);
    if (sk_proxy_start((struct sockaddr *)&up, sizeof(up),
                       (struct sockaddr *)&ss, sizeof(struct sockaddr_in),
                       &opts, &p, err) != SK_OK)
        goto done;
    len = sizeof(pa);
    getsockname(sk_proxy_listen_fd(p), (struct sockaddr *)&pa, &len);
    cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cli < 0 || connect(cli, (struct sockaddr *)&pa, sizeof(pa)) != 0) {
        sk_err_sys(err, "connect", errno);
        goto done;
    }
    /* the upstream connection arrives, or the client is reset */
    pf[0].fd = lfd;
    pf[0].events = POLLIN;
    pf[1].fd = cli;
    pf[1].events = POLLIN;
    pf[0].revents = pf[1].revents = 0;
    poll(pf, 2, (int)(tmax(5) * 1000));
    if (!(pf[0].revents & POLLIN)) {
        e = sk_proxy_last_error(p, msg, sizeof(msg));
        if (e == ENOMEM)
            sk_err_set(err, SK_E_NOMEM, "proxy: %s", msg);
        else
            sk_err_set(err, SK_E_SYS, "proxy: no upstream connection (%s)",
                       msg);
        goto done;
    }
    srv = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK_INT(srv, >=, 0);
    CHECK_INT(raw_write_all(cli, "ping", 4, 5), ==, 0);
    CHECK_U64(raw_read(srv, buf, 4, 5, NULL), ==, 4);
    CHECK_MEM(buf, "ping", 4);
    CHECK_INT(raw_write_all(srv, "pong", 4, 5), ==, 0);
    CHECK_U64(raw_read(cli, buf, 4, 5, NULL), ==, 4);
    CHECK_MEM(buf, "pong", 4);
    rc = SK_OK;
done:
    if (p != NULL)
        sk_proxy_stop(p);
    if (cli >= 0)
        close(cli);
    if (srv >= 0)
        close(srv);
    if (lfd >= 0)
        close(lfd);
    return rc;
}

/* A state watch on a connected socket, with info samples. */
static int sc_watch(sk_err *err)
{
    sk_watch_target t;
    sk_watch_config c;
    sk_watch_stats st;
    sk_watch *w = NULL;
    int a, b, rc;

    if (tcp_loopback_pair(&a, &b) != 0)
        return sk_err_sys(err, "connect", errno);
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = a;
    c.interval_ns = 1000000;
    c.sample_info = 1;
    c.max_transitions = 16;
    c.max_samples = 64;
    rc = sk_watch_start(&t, &c, &w, err);
    if (rc == SK_OK) {
        sleep_ms(3);
        sk_watch_stop(w);
        sk_watch_get_stats(w, &st);
        CHECK_INT(st.state, ==, 1); /* ESTABLISHED */
        sk_watch_free(w);
    }
    close(a);
    close(b);
    return rc;
}

static int count_entries(void *ctx, const sk_diag_entry *e)
{
    (void)e;
    (*(int *)ctx)++;
    return 0;
}

/* sock_diag: a filtered dump and an exact lookup of a loopback pair. */
static int sc_diag(sk_err *err)
{
    struct sockaddr_in la, ra;
    socklen_t len = sizeof(la);
    sk_diag_lookup_req r;
    sk_diag_query q;
    sk_diag_entry e;
    sk_tcp_info ti;
    int a, b, n = 0, found = 0, rc;

    if (tcp_loopback_pair(&a, &b) != 0)
        return sk_err_sys(err, "connect", errno);
    getsockname(a, (struct sockaddr *)&la, &len);
    len = sizeof(ra);
    getpeername(a, (struct sockaddr *)&ra, &len);
    sk_diag_query_init(&q);
    q.family = AF_INET;
    /* ESTABLISHED (not an old TIME_WAIT), both ports: other processes may
     * use the same ephemeral port towards another peer */
    q.states = 1u << 1;
    q.sport = ntohs(la.sin_port);
    q.dport = ntohs(ra.sin_port);
    rc = sk_diag_dump(&q, count_entries, &n, err);
    if (rc == SK_OK) {
        CHECK_INT(n, ==, 1);
        memset(&r, 0, sizeof(r));
        r.family = AF_INET;
        memcpy(r.src, &la.sin_addr, 4);
        memcpy(r.dst, &ra.sin_addr, 4);
        r.sport = ntohs(la.sin_port);
        r.dport = ntohs(ra.sin_port);
        r.flags = SK_DIAG_WITH_INFO;
        rc = sk_diag_lookup(&r, &e, &ti, &found, err);
        if (rc == SK_OK)
            CHECK_INT(found, ==, 1);
    }
    close(a);
    close(b);
    return rc;
}

/* The server reactor's handler side for sc_server: takes one batch (up to
 * 100 ms), answers each message with its payload, counts messages and
 * clean ends (*cid: the client that ended).  An end or accept failure
 * with an error other than a clean close is the scenario's error.  SK_OK,
 * SK_TIMEOUT (no batch yet) or SK_ERR. */
static int srv_turn(sk_srv *s, size_t *msgs, size_t *ends, uint64_t *cid,
                    sk_err *err)
{
    sk_srv_answer a[8];
    sk_srv_batch *b = NULL;
    size_t i, n = 0;
    int rc;

    rc = sk_srv_next(s, sk_now_ns() + 100000000LL, &b, err);
    if (rc != SK_OK)
        goto done;
    for (i = 0; i < b->nevents && rc == SK_OK; i++) {
        const sk_srv_event *e = &b->events[i];
        if (e->kind == SK_SRV_FAILED ||
            (e->kind == SK_SRV_END && e->err.code != SK_E_CLOSED)) {
            *err = e->err;
            rc = SK_ERR;
        } else if (e->kind == SK_SRV_END) {
            *cid = e->cid;
            (*ends)++;
        }
    }
    for (i = 0; i < b->nmsgs && n < 8 && rc == SK_OK; i++, n++) {
        const sk_srv_msg *m = &b->msgs[i];
        memset(&a[n], 0, sizeof(a[n]));
        a[n].cid = m->cid;
        a[n].seq = m->seq;
        a[n].id = m->id;
        a[n].has_id = m->has_id;
        a[n].kind = SK_SRV_REPLY;
        a[n].base = b->data.data + b->data.start + m->off;
        a[n].len = m->len;
    }
    if (rc == SK_OK && n > 0) {
        rc = sk_srv_reply(s, a, n, err);
        *msgs += n;
    }
done:
    sk_srv_batch_free(b);
    return rc;
}

/* The server reactor: start (epoll set, thread), one client whose two
 * frames come back (accept, slot table, batch, replies, coalesced write),
 * its clean end reported and forgotten, stop.  A failure inside the
 * reactor reaches the owner as the client's end (or an accept failure)
 * with its typed error, which the scenario returns. */
static int sc_server(sk_err *err)
{
    static const unsigned char want[] = {0, 0, 0, 2, 'a', 'b',
                                         0, 0, 0, 2, 'c', 'd'};
    struct sockaddr_storage ss;
    struct sockaddr_in sa;
    socklen_t len = sizeof(ss);
    sk_srv_config cfg;
    sk_srv *s = NULL;
    sk_srv_batch *b;
    sk_err scratch;
    unsigned char buf[sizeof(want)];
    size_t msgs = 0, ends = 0, got;
    uint64_t cid = 0;
    int lfd = -1, cli = -1, rc = SK_ERR, eof = 0;
    int64_t end = real_now_ns() + (int64_t)(tmax(5) * 1e9);

    if (sk_sockaddr("127.0.0.1", 0, AF_INET, &ss, &len, err) != SK_OK ||
        sk_listen((struct sockaddr *)&ss, len, 16, &lfd, err) != SK_OK)
        goto done;
    set_nonblock(lfd, 1);
    memset(&cfg, 0, sizeof(cfg));
    cfg.listen_fd = lfd;
    cfg.framing.header_size = 4;
    cfg.framing.max_frame = 1000;
    if (sk_srv_new(&cfg, &s, err) != SK_OK)
        goto done;
    len = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cli < 0 || connect(cli, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        sk_err_sys(err, "connect", errno);
        goto done;
    }
    CHECK_INT(raw_write_all(cli, want, sizeof(want), 5), ==, 0);
    while (msgs < 2 && real_now_ns() < end)
        if (srv_turn(s, &msgs, &ends, &cid, err) == SK_ERR)
            goto done;
    CHECK_U64(msgs, ==, 2);
    /* both replies, or a reset when the reactor failed on this client */
    got = raw_read(cli, buf, sizeof(buf), 5, &eof);
    close(cli);
    cli = -1;
    while (ends < 1 && real_now_ns() < end)
        if (srv_turn(s, &msgs, &ends, &cid, err) == SK_ERR)
            goto done;
    CHECK_U64(got, ==, sizeof(want));
    CHECK_MEM(buf, want, sizeof(want));
    CHECK_U64(ends, ==, 1);
    if (sk_srv_forget(s, &cid, 1, err) != SK_OK)
        goto done;
    while (sk_srv_ports(s, NULL, 0) > 0 && real_now_ns() < end)
        sleep_ms(1);
    CHECK_U64(sk_srv_ports(s, NULL, 0), ==, 0);
    rc = SK_OK;
done:
    if (cli >= 0)
        close(cli);
    if (s != NULL) {
        sk_srv_stop(s);
        while (sk_srv_next(s, SK_NO_DEADLINE, &b, &scratch) == SK_OK)
            sk_srv_batch_free(b);
        sk_srv_free(s);
    }
    if (lfd >= 0)
        close(lfd);
    return rc;
}

/* ---- the driver ----------------------------------------------------------- */

/* Run `fn` failing each of its core calls in turn; see the file comment. */
static void inject_each(const char *name, scenario_fn fn)
{
    long n, k, per[5] = {0, 0, 0, 0, 0};
    int fds0, rc, typed = 0, tolerated = 0;
    char tol[512] = "";
    size_t tl = 0;
    unsigned long lost0, failed0 = sk_check_failures();
    sk_err err;

    sk_test_context(name);
    fds0 = count_open_fds();
    /* the counting run: must succeed */
    inj_arm(0);
    sk_err_clear(&err);
    rc = fn(&err);
    inj_disarm();
    n = inj.count;
    CHECK_RC(rc, SK_OK, &err);
    CHECK_U64(n, >, 0);
    lost0 = lost_bytes();
    for (k = 1; k <= n; k++) {
        inj_arm(k);
        sk_err_clear(&err);
        rc = fn(&err);
        inj_disarm();
        if (!__atomic_load_n(&inj.fired, __ATOMIC_ACQUIRE)) {
            /* this run made fewer calls (a thread's timing): a success */
            CHECK_RC(rc, SK_OK, &err);
            continue;
        }
        per[inj.call]++;
        if (rc == SK_OK) {
            tolerated++;
            if (tl + strlen(inj.site) + 24 < sizeof(tol))
                tl += (size_t)snprintf(tol + tl, sizeof(tol) - tl, " %s(%s)",
                                       call_names[inj.call], inj.site);
        } else {
            typed++;
            CHECK_INT(rc, ==, SK_ERR);
            CHECK(err.msg[0] != '\0');
            switch (inj.call) {
            case SK_SYS_MALLOC:
            case SK_SYS_CALLOC:
            case SK_SYS_REALLOC:
                CHECK_INT(err.code, ==, SK_E_NOMEM);
                break;
            case SK_SYS_THREAD:
                CHECK_INT(err.code, ==, SK_E_SYS);
                CHECK_STR(err.syscall, "pthread_create");
                CHECK_INT(err.sys_errno, ==, EAGAIN);
                break;
            case SK_SYS_EPOLL:
                CHECK_INT(err.code, ==, SK_E_SYS);
                CHECK_STR(err.syscall, "epoll_create1");
                CHECK_INT(err.sys_errno, ==, EMFILE);
                break;
            }
        }
        if (sk_check_failures() != failed0)
            sk_test_note("k=%ld failed %s at %s: rc %d, code %d, \"%s\"", k,
                         call_names[inj.call], inj.site, rc, (int)err.code,
                         err.msg);
        CHECK_INT(count_open_fds(), ==, fds0);
        if (__lsan_do_recoverable_leak_check != NULL)
            CHECK_INT(__lsan_do_recoverable_leak_check(), ==, 0);
        CHECK_U64(lost_bytes(), ==, lost0);
        if (sk_check_failures() != failed0)
            break;
    }
    sk_test_note("%ld calls (malloc %ld, calloc %ld, realloc %ld, "
                 "pthread_create %ld, epoll_create1 %ld failed in turn): "
                 "%d typed errors, %d tolerated:%s",
                 n, per[0], per[1], per[2], per[3], per[4], typed, tolerated,
                 tolerated ? tol : " none");
}

TEST(each_allocation_of_the_decoder_fails_in_turn)
{
    inject_each("decoder", sc_decoder);
}

TEST(each_allocation_of_a_connection_fails_in_turn)
{
    inject_each("conn", sc_conn);
}

TEST(each_allocation_of_the_correlation_table_fails_in_turn)
{
    inject_each("corr", sc_corr);
}

TEST(each_allocation_thread_and_epoll_of_the_hub_fails_in_turn)
{
    inject_each("hub", sc_hub);
}

TEST(each_allocation_thread_and_epoll_of_the_proxy_fails_in_turn)
{
    inject_each("proxy", sc_proxy);
}

TEST(each_allocation_and_thread_of_a_watch_fails_in_turn)
{
    inject_each("watch", sc_watch);
}

TEST(each_allocation_of_sock_diag_fails_in_turn)
{
    inject_each("diag", sc_diag);
}

TEST(each_allocation_thread_and_epoll_of_the_server_fails_in_turn)
{
    inject_each("server", sc_server);
}

static void *never_runs(void *arg)
{
    return arg;
}

TEST(the_hook_sees_every_kind_of_call)
{
    /* the seam itself: each wrapper asks the hook, and fails as documented */
    void *p;
    int e;
    pthread_t th;

    inj_arm(1);
    p = sk_malloc(8);
    CHECK(p == NULL);
    CHECK_INT(inj.call, ==, SK_SYS_MALLOC);
    inj_arm(1);
    CHECK(sk_calloc(1, 8) == NULL);
    CHECK_INT(inj.call, ==, SK_SYS_CALLOC);
    inj_arm(1);
    p = malloc(8);
    CHECK(sk_realloc(p, 64) == NULL); /* p is untouched */
    CHECK_INT(inj.call, ==, SK_SYS_REALLOC);
    free(p);
    inj_arm(1);
    e = sk_thread_create(&th, NULL, never_runs, NULL);
    CHECK_INT(e, ==, EAGAIN);
    CHECK_INT(inj.call, ==, SK_SYS_THREAD);
    inj_arm(1);
    errno = 0;
    CHECK_INT(sk_epoll_create(EPOLL_CLOEXEC), ==, -1);
    CHECK_INT(errno, ==, EMFILE);
    CHECK_INT(inj.call, ==, SK_SYS_EPOLL);
    CHECK(strstr(inj.site, "test_inject.c:") != NULL);
    inj_disarm();
}
