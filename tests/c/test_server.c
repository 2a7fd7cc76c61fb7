/* test_server.c - the server reactor (core/server.h) on real loopback
 * sockets, without Python: batches, replies in request order whatever
 * order the handler answers in, correlated replies by id, every end
 * reported once with its error (late rather than never when memory for
 * its event ran out), read_timeout, max_conns and stop.
 *
 * The "handler" is the test itself: it takes batches with sk_srv_next and
 * answers with sk_srv_reply.  Peers are raw sockets driven with syscalls
 * and the reference encoder of util.h. */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/frame.h"
#include "core/server.h"
#include "core/sys.h"
#include "util.h"

#define HS 4
#define MAXM 64

/* What the test collected from the batches. */
typedef struct got {
    sk_srv_msg msgs[MAXM];
    unsigned char data[MAXM][64];
    size_t nmsgs;
    sk_srv_event events[8]; /* every event but SK_SRV_ACCEPTED */
    size_t nevents;
    uint64_t accepted_cid; /* the last SK_SRV_ACCEPTED's client */
    size_t accepted;       /* SK_SRV_ACCEPTED events */
} got;

/* A listening IPv4 loopback socket (non-blocking) and its port. */
static int listener(int *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(ls, 16) < 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &len) < 0) {
        if (ls >= 0)
            close(ls);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return ls;
}

static int client(int port)
{
    struct sockaddr_in sa;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    if (s >= 0 && connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(s);
        s = -1;
    }
    return s;
}

/* A server on ls with plain 4-byte framing (max_frame 1000); inline:
 * no reactor thread, the caller of sk_srv_next runs the turns
 * (cfg.inline_turns). */
static sk_srv *start_with(int ls, int64_t read_timeout_ns, uint64_t max_conns,
                          unsigned flags, int inline_turns)
{
    sk_srv_config cfg;
    sk_srv *s = NULL;
    sk_err err;

    memset(&cfg, 0, sizeof(cfg));
    cfg.listen_fd = ls;
    cfg.framing.header_size = HS;
    cfg.framing.max_frame = 1000;
    cfg.framing.flags = flags;
    cfg.read_timeout_ns = read_timeout_ns;
    cfg.max_conns = max_conns;
    cfg.inline_turns = inline_turns;
    CHECK_RC(sk_srv_new(&cfg, &s, &err), SK_OK, &err);
    return s;
}

static sk_srv *start(int ls, int64_t read_timeout_ns, uint64_t max_conns,
                     unsigned flags)
{
    return start_with(ls, read_timeout_ns, max_conns, flags, 0);
}

static sk_srv *start_inline(int ls, int64_t read_timeout_ns)
{
    return start_with(ls, read_timeout_ns, 0, 0, 1);
}

/* Take batches until `msgs` messages and `events` events were collected,
 * or the bound passes. */
static void collect(sk_srv *s, got *g, size_t msgs, size_t events)
{
    int64_t end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    sk_srv_batch *b;
    sk_err err;
    size_t i;

    while ((g->nmsgs < msgs || g->nevents < events) && real_now_ns() < end) {
        if (sk_srv_next(s, sk_now_ns() + 100000000LL, &b, &err) != SK_OK)
            continue;
        for (i = 0; i < b->nmsgs && g->nmsgs < MAXM; i++) {
            sk_srv_msg *m = &b->msgs[i];
            g->msgs[g->nmsgs] = *m;
            memcpy(g->data[g->nmsgs], b->data.data + b->data.start + m->off,
                   m->len < 64 ? m->len : 64);
            g->nmsgs++;
        }
        for (i = 0; i < b->nevents && g->nevents < 8; i++) {
            if (b->events[i].kind == SK_SRV_ACCEPTED) {
                g->accepted_cid = b->events[i].cid;
                g->accepted++;
                continue;
            }
            g->events[g->nevents++] = b->events[i];
        }
        sk_srv_batch_done(s, b); /* reused by a later turn */
    }
    CHECK_U64(g->nmsgs, ==, msgs);
    CHECK_U64(g->nevents, ==, events);
}

static void put_frame(int fd, const char *payload)
{
    unsigned char buf[128];
    size_t n = strlen(payload);

    ref_put_len(buf, HS, 0, n);
    memcpy(buf + HS, payload, n);
    CHECK_INT(raw_write_all(fd, buf, HS + n, 5.0), ==, 0);
}

/* The three frames "one", "two", "three" as the server sends them back,
 * into want; returns their length. */
static size_t one_two_three(unsigned char *want)
{
    static const char *const p[3] = {"one", "two", "three"};
    size_t wn = 0;
    int i;

    for (i = 0; i < 3; i++) {
        ref_put_len(want + wn, HS, 0, strlen(p[i]));
        memcpy(want + wn + HS, p[i], strlen(p[i]));
        wn += HS + strlen(p[i]);
    }
    return wn;
}

/* A client that connected and sent "one", "two", "three". */
static int client_sending_one_two_three(int port)
{
    int c = client(port);

    CHECK(c >= 0);
    put_frame(c, "one");
    put_frame(c, "two");
    put_frame(c, "three");
    return c;
}

/* Echo the three messages of g, answering the last first. */
static void answer_last_first(sk_srv *s, const got *g)
{
    sk_srv_answer a[3];
    sk_err err;
    int i;

    memset(a, 0, sizeof(a));
    for (i = 0; i < 3; i++) {
        a[2 - i].cid = g->msgs[i].cid;
        a[2 - i].seq = g->msgs[i].seq;
        a[2 - i].kind = SK_SRV_REPLY;
        a[2 - i].base = g->data[i];
        a[2 - i].len = g->msgs[i].len;
    }
    CHECK_RC(sk_srv_reply(s, a, 3, &err), SK_OK, &err);
}

TEST(server_replies_leave_in_request_order)
{
    int port, ls = listener(&port), c, i;
    sk_srv *s = start(ls, 0, 0, 0);
    unsigned char want[64], buf[64];
    size_t wn = one_two_three(want);
    got g;
    sk_err err;

    memset(&g, 0, sizeof(g));
    c = client_sending_one_two_three(port);
    collect(s, &g, 3, 0);
    /* the accept was reported, in the batch of the first frame or before */
    CHECK_U64(g.accepted, ==, 1);
    CHECK_U64(g.accepted_cid, ==, g.msgs[0].cid);
    for (i = 0; i < 3; i++) {
        CHECK_U64(g.msgs[i].seq >> 32, ==, (uint64_t)i + 1);
        CHECK_INT(g.msgs[i].has_id, ==, 0);
    }
    /* answered last first: the reactor still writes them in order */
    answer_last_first(s, &g);
    CHECK_U64(raw_read(c, buf, wn, 5.0, NULL), ==, wn);
    CHECK_MEM(buf, want, wn);
    /* a clean close ends it as SK_E_CLOSED, once */
    close(c);
    memset(&g, 0, sizeof(g));
    collect(s, &g, 0, 1);
    CHECK_INT(g.events[0].kind, ==, SK_SRV_END);
    CHECK_INT(g.events[0].err.code, ==, SK_E_CLOSED);
    CHECK_U64(sk_srv_ports(s, NULL, 0), ==, 1); /* held until forgotten */
    CHECK_RC(sk_srv_forget(s, &g.events[0].cid, 1, &err), SK_OK, &err);
    for (i = 0; i < 100 && sk_srv_ports(s, NULL, 0) > 0; i++)
        sleep_ms(10);
    CHECK_U64(sk_srv_ports(s, NULL, 0), ==, 0);
    sk_srv_stop(s);
    sk_srv_free(s);
    close(ls);
}

/* Take the next batch that holds a message (events-only batches are
 * given back), or NULL after the bound. */
static sk_srv_batch *next_with_a_message(sk_srv *s)
{
    int64_t end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    sk_srv_batch *b = NULL;
    sk_err err;

    while (real_now_ns() < end) {
        if (sk_srv_next(s, sk_now_ns() + 100000000LL, &b, &err) != SK_OK)
            continue;
        if (b->nmsgs > 0)
            break;
        sk_srv_batch_done(s, b);
        b = NULL;
    }
    CHECK(b != NULL);
    return b;
}

/* A batch given back with sk_srv_batch_done is the next turn's batch:
 * same storage, none of its old messages or events. */
TEST(server_reuses_a_given_back_batch)
{
    int port, ls = listener(&port), c, i;
    sk_srv *s = start(ls, 0, 0, 0);
    sk_srv_batch *b1, *b2;
    const char *words[2] = {"first", "second"};

    c = client(port);
    CHECK(c >= 0);
    put_frame(c, words[0]);
    b1 = next_with_a_message(s);
    if (b1 != NULL) {
        CHECK_U64(b1->nmsgs, ==, 1);
        sk_srv_batch_done(s, b1);
        for (i = 1; i < 2; i++) {
            put_frame(c, words[i]);
            b2 = next_with_a_message(s);
            if (b2 == NULL)
                break;
            CHECK(b2 == b1);
            CHECK_U64(b2->nmsgs, ==, 1);
            CHECK_U64(b2->nevents, ==, 0);
            CHECK_U64(b2->msgs[0].len, ==, strlen(words[i]));
            CHECK_MEM(b2->data.data + b2->data.start + b2->msgs[0].off, words[i],
                      strlen(words[i]));
            sk_srv_batch_done(s, b2);
        }
    }
    close(c);
    sk_srv_stop(s);
    sk_srv_free(s);
    close(ls);
}

TEST(server_reports_a_truncated_frame_after_answering_what_came_before)
{
    int port, ls = listener(&port), c, eof;
    sk_srv *s = start(ls, 0, 0, 0);
    unsigned char hdr[HS], buf[64];
    sk_srv_answer a;
    got g;
    sk_err err;

    memset(&g, 0, sizeof(g));
    c = client(port);
    put_frame(c, "ok");
    ref_put_len(hdr, HS, 0, 10);
    CHECK_INT(raw_write_all(c, hdr, HS, 5.0), ==, 0);
    CHECK_INT(raw_write_all(c, "abc", 3, 5.0), ==, 0);
    shutdown(c, SHUT_WR);
    collect(s, &g, 1, 0);
    memset(&a, 0, sizeof(a));
    a.cid = g.msgs[0].cid;
    a.seq = g.msgs[0].seq;
    a.kind = SK_SRV_REPLY;
    a.base = "OK";
    a.len = 2;
    CHECK_RC(sk_srv_reply(s, &a, 1, &err), SK_OK, &err);
    collect(s, &g, 1, 1);
    CHECK_INT(g.events[0].err.code, ==, SK_E_INCOMPLETE);
    CHECK_U64(g.events[0].err.detail, ==, 7);
    CHECK_U64(raw_read(c, buf, sizeof(buf), 5.0, &eof), ==, HS + 2);
    CHECK_MEM(buf + HS, "OK", 2);
    CHECK_INT(eof, ==, 1); /* FIN after the reply */
    close(c);
    sk_srv_stop(s);
    sk_srv_free(s);
    close(ls);
}

TEST(server_correlated_frames_are_unsequenced)
{
    int port, ls = listener(&port), c;
    sk_srv *s = start(ls, 0, 0, SK_FRAMING_IDS);
    unsigned char buf[64];
    sk_srv_answer a;
    got g;
    sk_err err;
    sk_framing f = {HS, 0, 1000, SK_FRAMING_IDS};
    size_t n;

    memset(&g, 0, sizeof(g));
    c = client(port);
    n = sk_encode_header_id(&f, 2, 7, buf);
    memcpy(buf + n, "hi", 2);
    CHECK_INT(raw_write_all(c, buf, n + 2, 5.0), ==, 0);
    collect(s, &g, 1, 0);
    CHECK_INT(g.msgs[0].has_id, ==, 1);
    CHECK_U64(g.msgs[0].id, ==, 7);
    CHECK_U64(g.msgs[0].seq >> 32, ==, 0);
    memset(&a, 0, sizeof(a));
    a.cid = g.msgs[0].cid;
    a.seq = g.msgs[0].seq;
    a.kind = SK_SRV_REPLY;
    a.has_id = 1;
    a.id = 7 | SK_ID_REPLY;
    a.base = "HI";
    a.len = 2;
    CHECK_RC(sk_srv_reply(s, &a, 1, &err), SK_OK, &err);
    CHECK_U64(raw_read(c, buf, n + 2, 5.0, NULL), ==, n + 2);
    CHECK_U64(buf[HS], ==, 0x80); /* the reply bit, top byte of the id */
    CHECK_MEM(buf + n, "HI", 2);
    close(c);
    sk_srv_stop(s);
    sk_srv_free(s);
    close(ls);
}

/* A client that sends half a header is reset at read_timeout, and its end
 * says so; with or without a reactor thread (inline: the wait in
 * sk_srv_next ends at the client's deadline, not only on events). */
static void read_timeout_case(int inline_turns)
{
    int port, ls = listener(&port), c, eof;
    sk_srv *s = start_with(ls, 100000000LL, 0, 0, inline_turns);
    unsigned char buf[8];
    got g;

    memset(&g, 0, sizeof(g));
    c = client(port);
    CHECK_INT(raw_write_all(c, "\0\0", 2, 5.0), ==, 0); /* half a header */
    collect(s, &g, 0, 1);
    CHECK_INT(g.events[0].err.code, ==, SK_E_TIMEOUT);
    CHECK(strstr(g.events[0].err.msg, "read_timeout") != NULL);
    CHECK(raw_readable(c, (int)(5000 * sk_test_time_scale())));
    CHECK_U64(raw_read(c, buf, sizeof(buf), 5.0, &eof), ==, 0);
    close(c);
    sk_srv_stop(s);
    sk_srv_free(s); /* inline: never shut down by a turn; free closes all */
    close(ls);
}

TEST(server_read_timeout_resets_an_idle_client)
{
    read_timeout_case(0);
}

TEST(server_inline_read_timeout_resets_an_idle_client)
{
    read_timeout_case(1);
}

/* max_conns: a client over the cap is reset and reported; then a stop
 * closes the one held (SK_SRV_STOPPED) and sk_srv_next reports
 * SK_E_CLOSED.  Inline, the stop comes while no thread is inside
 * sk_srv_next: the next call sees it and does the closing. */
static void max_conns_case(int inline_turns)
{
    int port, ls = listener(&port), a, b;
    sk_srv *s = start_with(ls, 0, 1, 0, inline_turns);
    sk_srv_batch *batch;
    got g;
    sk_err err;

    memset(&g, 0, sizeof(g));
    a = client(port);
    put_frame(a, "in");
    collect(s, &g, 1, 0);
    b = client(port); /* over the cap: reset at once */
    collect(s, &g, 1, 1);
    CHECK_INT(g.events[0].kind, ==, SK_SRV_REJECTED);
    sk_srv_stop(s);
    memset(&g, 0, sizeof(g));
    collect(s, &g, 0, 1);
    CHECK_INT(g.events[0].kind, ==, SK_SRV_STOPPED);
    CHECK_RC(sk_srv_next(s, SK_NO_DEADLINE, &batch, &err), SK_ERR, NULL);
    CHECK_INT(err.code, ==, SK_E_CLOSED);
    sk_srv_free(s);
    close(a);
    close(b);
    close(ls);
}

TEST(server_max_conns_and_stop)
{
    max_conns_case(0);
}

TEST(server_inline_max_conns_and_a_stop_before_the_next_call)
{
    max_conns_case(1);
}

/* Fails every allocation the reactor makes (sites in server.c) while
 * armed, counting them. */
static long srv_alloc_fails;

static int fail_server_allocs(sk_sys_call call, const char *site)
{
    if (call > SK_SYS_REALLOC || strstr(site, "server.c") == NULL)
        return 0;
    __atomic_add_fetch(&srv_alloc_fails, 1, __ATOMIC_ACQ_REL);
    return 1;
}

TEST(server_an_end_whose_event_finds_no_memory_is_reported_later)
{
    int port, ls = listener(&port), c;
    sk_srv *s = start(ls, 0, 0, 0);
    int64_t end;
    sk_srv_stats st;
    uint64_t cid;
    got g;

    memset(&g, 0, sizeof(g));
    memset(&st, 0, sizeof(st));
    c = client(port);
    end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    while (st.accepted < 1 && real_now_ns() < end) {
        sleep_ms(1);
        sk_srv_get_stats(s, &st);
    }
    CHECK_U64(st.accepted, ==, 1); /* the client is held */
    /* it ends while no batch can be allocated: the reactor keeps it */
    srv_alloc_fails = 0;
    __atomic_store_n(&sk_fault_hook, fail_server_allocs, __ATOMIC_RELEASE);
    close(c);
    while (__atomic_load_n(&srv_alloc_fails, __ATOMIC_ACQUIRE) < 3 &&
           real_now_ns() < end)
        sleep_ms(1); /* the end, then at least two retries, failed */
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
    CHECK_INT(__atomic_load_n(&srv_alloc_fails, __ATOMIC_ACQUIRE), >=, 3);
    CHECK_U64(sk_srv_ports(s, NULL, 0), ==, 1); /* its slot is accounted */
    collect(s, &g, 0, 1); /* reported once memory is back */
    CHECK_INT(g.events[0].kind, ==, SK_SRV_END);
    CHECK_INT(g.events[0].err.code, ==, SK_E_CLOSED);
    cid = g.events[0].cid;
    CHECK_RC(sk_srv_forget(s, &cid, 1, NULL), SK_OK, NULL);
    end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    while (sk_srv_ports(s, NULL, 0) > 0 && real_now_ns() < end)
        sleep_ms(1);
    CHECK_U64(sk_srv_ports(s, NULL, 0), ==, 0); /* the slot is free */
    sk_srv_stop(s);
    sk_srv_free(s);
    close(ls);
}

/* Holds the reactor thread in its next batch allocation (the one calloc
 * of server.c a turn makes when it has something to report, while no
 * client is accepted), `holds` times, until the test releases it: a
 * sequence point inside a turn, after the turn's epoll_wait returned. */
static struct {
    pthread_t test;
    int holds;    /* holds still armed */
    int held;     /* holds reached */
    int released; /* holds released */
} hold;

static int hold_reactor(sk_sys_call call, const char *site)
{
    int64_t end = real_now_ns() + (int64_t)(tmax(10.0) * 1e9);
    int n;

    if (call != SK_SYS_CALLOC || strstr(site, "server.c") == NULL ||
        pthread_equal(pthread_self(), hold.test) ||
        __atomic_load_n(&hold.holds, __ATOMIC_ACQUIRE) == 0)
        return 0;
    __atomic_sub_fetch(&hold.holds, 1, __ATOMIC_ACQ_REL);
    n = __atomic_add_fetch(&hold.held, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&hold.released, __ATOMIC_ACQUIRE) < n &&
           real_now_ns() < end)
        sleep_ms(1);
    return 0;
}

static int wait_held(int n)
{
    int64_t end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);

    while (__atomic_load_n(&hold.held, __ATOMIC_ACQUIRE) < n &&
           real_now_ns() < end)
        sleep_ms(1);
    return __atomic_load_n(&hold.held, __ATOMIC_ACQUIRE) >= n;
}

static void *stop_thread(void *arg)
{
    sk_srv_stop((sk_srv *)arg);
    return NULL;
}

/* The wake-up eventfd is one counter: a turn that reads it consumes every
 * write made so far, also that of a sk_srv_stop which came after the turn
 * had looked at the stop flag.  Ordered here: turn 1 is held while C1's
 * frame and a command's wake-up become ready (in that order), so that
 * turn 2 reports [C1, wake-up]; turn 2 is held on C1's frame while
 * sk_srv_stop sets the flag and writes, then reads the wake-up.  The
 * reactor must still see the flag before it sleeps again (it slept for
 * good, and close() waited, before the flag was read at the top of each
 * turn). */
TEST(server_a_stop_whose_wake_up_a_turn_consumed_still_stops)
{
    int port, ls = listener(&port), c0, c1, finished = 0, late;
    sk_srv *s = start(ls, 0, 0, 0);
    uint64_t bogus = 0xffffffffffffULL;
    size_t i, accepted = 0;
    pthread_t stopper;
    int64_t end;
    sk_srv_batch *b;
    sk_err err;

    memset(&hold, 0, sizeof(hold));
    hold.test = pthread_self();
    c0 = client(port);
    c1 = client(port);
    end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    while (accepted < 2 && real_now_ns() < end) {
        if (sk_srv_next(s, sk_now_ns() + 100000000LL, &b, &err) != SK_OK)
            continue;
        for (i = 0; i < b->nevents; i++)
            accepted += b->events[i].kind == SK_SRV_ACCEPTED;
        sk_srv_batch_free(b);
    }
    CHECK_U64(accepted, ==, 2); /* both held; nothing else pending */
    __atomic_store_n(&hold.holds, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&sk_fault_hook, hold_reactor, __ATOMIC_RELEASE);
    put_frame(c0, "a"); /* turn 1: [C0] */
    CHECK(wait_held(1));
    put_frame(c1, "b"); /* ready during turn 1: turn 2 reports it first */
    CHECK_RC(sk_srv_forget(s, &bogus, 1, NULL), SK_OK, NULL); /* wake-up */
    __atomic_store_n(&hold.holds, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&hold.released, 1, __ATOMIC_RELEASE);
    CHECK(wait_held(2)); /* turn 2, on C1's frame, before the wake-up */
    CHECK_INT(pthread_create(&stopper, NULL, stop_thread, s), ==, 0);
    sleep_ms(200); /* sk_srv_stop set the flag and wrote to the eventfd */
    __atomic_store_n(&hold.released, 2, __ATOMIC_RELEASE);
    end = real_now_ns() + (int64_t)(tmax(5.0) * 1e9);
    while (!finished && real_now_ns() < end) {
        finished = pthread_tryjoin_np(stopper, NULL) == 0;
        if (!finished)
            sleep_ms(5);
    }
    CHECK(finished); /* the reactor stopped: no event was needed */
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
    if (!finished) { /* unstick it: any event ends the sleep */
        late = client(port);
        pthread_join(stopper, NULL);
        if (late >= 0)
            close(late);
    }
    sk_srv_free(s);
    close(c0);
    close(c1);
    close(ls);
}

/* ---- inline mode: the caller's thread is the reactor ------------------- */

static void *stop_after_100ms(void *arg)
{
    sleep_ms(100);
    sk_srv_stop((sk_srv *)arg);
    return NULL;
}

/* No thread turns until the caller asks: a client's connection and frames
 * wait in the kernel.  sk_srv_next then accepts and reads; the answers
 * (given out of order, so not written directly) leave, in request order,
 * when the caller next enters sk_srv_next, before that call sleeps; a stop
 * from another thread wakes the caller's sleep, which closes the client
 * (SK_SRV_STOPPED) and then reports SK_E_CLOSED. */
TEST(server_inline_turns_run_on_the_callers_thread)
{
    int port, ls = listener(&port), c, eof;
    sk_srv *s = start_inline(ls, 0);
    sk_srv_stats st;
    sk_srv_batch *b;
    pthread_t stopper;
    unsigned char want[64], buf[64];
    size_t wn = one_two_three(want);
    got g;
    sk_err err;

    memset(&g, 0, sizeof(g));
    c = client_sending_one_two_three(port);
    sleep_ms(50);
    sk_srv_get_stats(s, &st);
    CHECK_U64(st.turns, ==, 0);    /* nobody turned */
    CHECK_U64(st.accepted, ==, 0); /* the client waits in the backlog */
    collect(s, &g, 3, 0);
    CHECK_U64(g.accepted, ==, 1);
    answer_last_first(s, &g);
    /* the first request was the client's only one in flight when read:
     * its reply was written by sk_srv_reply itself; the two others are
     * queued until this thread turns */
    CHECK_U64(raw_read(c, buf, HS + 3, 5.0, NULL), ==, HS + 3);
    CHECK_MEM(buf, want, HS + 3);
    CHECK(!raw_readable(c, 50));
    CHECK_RC(sk_srv_next(s, sk_now_ns() + 20000000LL, &b, &err), SK_TIMEOUT,
             &err);
    CHECK_U64(raw_read(c, buf, wn - HS - 3, 5.0, NULL), ==, wn - HS - 3);
    CHECK_MEM(buf, want + HS + 3, wn - HS - 3);
    /* stop while this thread sleeps in sk_srv_next, with no deadline */
    CHECK_INT(pthread_create(&stopper, NULL, stop_after_100ms, s), ==, 0);
    CHECK_RC(sk_srv_next(s, SK_NO_DEADLINE, &b, &err), SK_OK, &err);
    if (b != NULL) {
        CHECK_U64(b->nevents, ==, 1);
        CHECK_INT(b->events[0].kind, ==, SK_SRV_STOPPED);
        sk_srv_batch_free(b);
    }
    CHECK_RC(sk_srv_next(s, SK_NO_DEADLINE, &b, &err), SK_ERR, NULL);
    CHECK_INT(err.code, ==, SK_E_CLOSED);
    pthread_join(stopper, NULL);
    CHECK_U64(raw_read(c, buf, sizeof(buf), 5.0, &eof), ==, 0);
    CHECK_INT(eof, ==, 1);
    sk_srv_free(s);
    close(c);
    close(ls);
}
