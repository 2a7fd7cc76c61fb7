/* loadgen.c: many-connections load generator for bench/many.py (issue 13).
 *
 *   loadgen load HOST PORT N WARMUP_S MEASURE_S CONNECT_S
 *   loadgen idle HOST PORT N HOLD_S CONNECT_S
 *
 * load: opens N loopback connections on one epoll loop (at most 512 connects
 * pending at a time), keeps one 64-byte request in flight on each (a 4-byte
 * big-endian length, then the payload: the connection number and its
 * sequence number as big-endian u32s, then the 56-byte pattern of
 * bench/README.md), and checks every reply byte for byte against the request.
 * The requests start when all N are connected (or CONNECT_S has passed: an
 * error), so that the connect phase measures accepting alone; then come a
 * warm-up of WARMUP_S and a measuring window of MEASURE_S.  Replies received in
 * the window are counted, and their round trips go to a histogram (64
 * buckets per power of two: under 1.6 % error).  At the start and the end
 * of the window it prints a line "MEASURE_START" / "MEASURE_END" on stdout
 * (flushed), so that the caller can read the server's CPU time at those
 * moments; the last line is one JSON object:
 *   {"mode":"load","conns":N,"connected":C,"connect_s":..,"requests":R,
 *    "window_s":..,"rps":..,"p50_us":..,"p99_us":..,"max_us":..,
 *    "silent":S,"errors":E,"first_error":"..."}
 * silent = connections with no reply in the window.  An error is a connect
 * failure or timeout, a reply that differs from its request, an EOF or a
 * reset: the connection is closed and counted.
 *
 * idle: opens N connections, makes one exchange on each (so that the server
 * has accepted and set it up), prints {"mode":"idle","phase":"holding",...},
 * then holds them idle until stdin reaches EOF or HOLD_S passes, closes them
 * and prints the final JSON line.
 *
 * Loopback only: HOST must be a 127.x.y.z address.  Bounded: alarm() kills
 * the process at the sum of its time arguments plus 30 s.  Exit status: 0,
 * 2 on bad arguments or set-up failure, 3 if any error was counted.
 * Build: cc -O2 -Wall -Wextra -Werror -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 64
#define FRAME (4 + PAYLOAD)
#define MAX_PENDING_CONNECTS 512
#define SUB_BITS 6
#define NBUCKETS (64 << SUB_BITS)

enum { ST_FREE, ST_CONNECTING, ST_BUSY, ST_DEAD };

typedef struct {
    int fd;
    int state;
    uint32_t seq;
    uint32_t replies_in_window;
    int out_off;            /* bytes of req already written */
    int in_len;             /* bytes of the reply received so far */
    uint64_t sent_ns;
    unsigned char req[FRAME];
    unsigned char in[FRAME];
} lg_conn;

static uint64_t hist[NBUCKETS];
static uint64_t errors;
static char first_error[200];

/* Monotonic clock in ns.  No GIL, no allocation. */
static uint64_t lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Count one error; keep the text of the first one. */
static void lg_error(const char *what, long i, int err)
{
    if (errors++ == 0)
        snprintf(first_error, sizeof first_error, "%s (connection %ld)%s%s", what, i,
                 err ? ": " : "", err ? strerror(err) : "");
}

/* Histogram bucket of a round trip in ns: 64 sub-buckets per power of 2. */
static int lg_bucket(uint64_t ns)
{
    int msb, idx;
    if (ns < (1u << SUB_BITS))
        return (int)ns;
    msb = 63 - __builtin_clzll(ns);
    idx = ((msb - SUB_BITS + 1) << SUB_BITS) | (int)((ns >> (msb - SUB_BITS)) & ((1u << SUB_BITS) - 1));
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

/* Lower bound in ns of bucket idx (inverse of lg_bucket). */
static uint64_t lg_bucket_low(int idx)
{
    int hi = idx >> SUB_BITS, lo = idx & ((1 << SUB_BITS) - 1);
    if (hi == 0)
        return (uint64_t)lo;
    return ((uint64_t)((1 << SUB_BITS) | lo)) << (hi - 1);
}

/* The value (µs) under which a fraction q of the counted round trips fall. */
static double lg_quantile(uint64_t total, double q)
{
    uint64_t want = (uint64_t)((double)total * q), seen = 0;
    int i;
    if (total == 0)
        return 0.0;
    if (want >= total)
        want = total - 1;
    for (i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)lg_bucket_low(i) / 1000.0;
    }
    return 0.0;
}

/* Fill c->req with request number c->seq of connection i. */
static void lg_build(lg_conn *c, uint32_t i)
{
    int k;
    c->req[0] = 0; c->req[1] = 0; c->req[2] = 0; c->req[3] = PAYLOAD;
    c->req[4] = (unsigned char)(i >> 24); c->req[5] = (unsigned char)(i >> 16);
    c->req[6] = (unsigned char)(i >> 8); c->req[7] = (unsigned char)i;
    c->req[8] = (unsigned char)(c->seq >> 24); c->req[9] = (unsigned char)(c->seq >> 16);
    c->req[10] = (unsigned char)(c->seq >> 8); c->req[11] = (unsigned char)c->seq;
    for (k = 8; k < PAYLOAD; k++)
        c->req[4 + k] = (unsigned char)((k * 7 + 13) & 0xff);
}

/* Close a connection after an error.  The caller counted the error. */
static void lg_kill(int ep, lg_conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = ST_DEAD;
}

/* Write what is left of c->req; on EAGAIN wait for EPOLLOUT.  0 or -1. */
static int lg_write(int ep, lg_conn *c, long i)
{
    struct epoll_event ev;
    while (c->out_off < FRAME) {
        ssize_t n = send(c->fd, c->req + c->out_off, (size_t)(FRAME - c->out_off), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                ev.events = EPOLLIN | EPOLLOUT;
                ev.data.u64 = (uint64_t)i;
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return 0;
            }
            lg_error("send()", i, errno);
            lg_kill(ep, c);
            return -1;
        }
        c->out_off += (int)n;
    }
    return 0;
}

/* Start request c->seq on connection i. */
static int lg_start(int ep, lg_conn *c, long i)
{
    lg_build(c, (uint32_t)i);
    c->out_off = 0;
    c->in_len = 0;
    c->sent_ns = lg_now();
    return lg_write(ep, c, i);
}

/* Open connection i (non-blocking connect).  0 or -1 (error counted). */
static int lg_open(int ep, lg_conn *c, long i, const struct sockaddr_in *sa)
{
    struct epoll_event ev;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lg_error("socket()", i, errno);
        c->state = ST_DEAD;
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        lg_error("connect()", i, errno);
        close(fd);
        c->state = ST_DEAD;
        return -1;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    ev.events = EPOLLOUT;
    ev.data.u64 = (uint64_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        lg_error("epoll_ctl(ADD)", i, errno);
        close(fd);
        c->fd = -1;
        c->state = ST_DEAD;
        return -1;
    }
    return 0;
}

typedef struct {
    int ep;
    long n;
    lg_conn *conns;
    long next_open, pending, connected, answered_once;
    int in_window, keep_going;
    int start_at_once;      /* idle: the one exchange starts on connect */
    uint64_t window_replies;
} lg_run;

/* Handle one epoll event for connection i. */
static void lg_event(lg_run *r, long i, uint32_t events)
{
    lg_conn *c = &r->conns[i];
    struct epoll_event ev;
    if (c->state == ST_DEAD)
        return;
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        r->pending--;
        if (err) {
            lg_error("connect()", i, err);
            lg_kill(r->ep, c);
            return;
        }
        r->connected++;
        c->state = ST_BUSY;
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)i;
        epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        if (r->start_at_once)
            lg_start(r->ep, c, i);
        else
            c->out_off = FRAME; /* nothing to write until lg_start_all */
        return;
    }
    if ((events & EPOLLOUT) && c->out_off < FRAME) {
        if (lg_write(r->ep, c, i) < 0)
            return;
        if (c->out_off == FRAME) {
            ev.events = EPOLLIN;
            ev.data.u64 = (uint64_t)i;
            epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = recv(c->fd, c->in + c->in_len, (size_t)(FRAME - c->in_len), 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            lg_error("recv()", i, errno);
            lg_kill(r->ep, c);
            return;
        }
        if (n == 0) {
            lg_error("EOF from the server before the reply", i, 0);
            lg_kill(r->ep, c);
            return;
        }
        c->in_len += (int)n;
        if (c->in_len < FRAME)
            return;
        if (c->out_off < FRAME || memcmp(c->in, c->req, FRAME) != 0) {
            lg_error("reply differs from its request", i, 0);
            lg_kill(r->ep, c);
            return;
        }
        if (c->seq == 0)
            r->answered_once++;
        if (r->in_window) {
            hist[lg_bucket(lg_now() - c->sent_ns)]++;
            r->window_replies++;
            c->replies_in_window++;
        }
        c->seq++;
        if (r->keep_going)
            lg_start(r->ep, c, i);
    }
}

/* Load: send the first request on every open connection at once. */
static void lg_start_all(lg_run *r)
{
    long i;
    for (i = 0; i < r->n; i++)
        if (r->conns[i].state == ST_BUSY)
            lg_start(r->ep, &r->conns[i], i);
}

/* Open connections while fewer than MAX_PENDING_CONNECTS are pending. */
static void lg_open_more(lg_run *r, const struct sockaddr_in *sa)
{
    while (r->next_open < r->n && r->pending < MAX_PENDING_CONNECTS) {
        long i = r->next_open++;
        if (lg_open(r->ep, &r->conns[i], i, sa) == 0)
            r->pending++;
    }
}

/* Run the loop until `until` (ns), or until stop() says so. */
static void lg_loop(lg_run *r, const struct sockaddr_in *sa, uint64_t until,
                    int (*stop)(const lg_run *))
{
    struct epoll_event evs[1024];
    for (;;) {
        uint64_t t = lg_now();
        int k, nev, ms;
        lg_open_more(r, sa);
        if (t >= until || (stop && stop(r)))
            return;
        ms = (int)((until - t) / 1000000u) + 1;
        if (ms > 50)
            ms = 50;
        nev = epoll_wait(r->ep, evs, 1024, ms);
        if (nev < 0) {
            if (errno == EINTR)
                continue;
            lg_error("epoll_wait()", -1, errno);
            return;
        }
        for (k = 0; k < nev; k++)
            lg_event(r, (long)evs[k].data.u64, evs[k].events);
    }
}

static int lg_all_connected(const lg_run *r)
{
    return r->next_open == r->n && r->pending == 0;
}

static int lg_all_answered(const lg_run *r)
{
    return lg_all_connected(r) && r->answered_once + (long)errors >= r->n;
}

/* Raise RLIMIT_NOFILE to the hard limit; -1 if n connections won't fit. */
static int lg_raise_nofile(long n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    return (rlim_t)(n + 16) <= rl.rlim_cur ? 0 : -1;
}

static double lg_arg_seconds(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    return (*end || v < 0 || v > 3600) ? -1.0 : v;
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    lg_run r;
    long n, i, silent = 0;
    int idle;
    double a, b, cs;
    uint64_t t0, tc, tw0, tw1;

    if (argc != 8 && argc != 7) {
        fprintf(stderr, "usage: loadgen load HOST PORT N WARMUP_S MEASURE_S CONNECT_S\n"
                        "       loadgen idle HOST PORT N HOLD_S CONNECT_S\n");
        return 2;
    }
    idle = strcmp(argv[1], "idle") == 0;
    if ((!idle && (strcmp(argv[1], "load") != 0 || argc != 8)) || (idle && argc != 7)) {
        fprintf(stderr, "loadgen: mode is load (7 arguments) or idle (6 arguments)\n");
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1 ||
        strncmp(argv[2], "127.", 4) != 0) {
        fprintf(stderr, "loadgen: HOST must be a 127.x.y.z address, not %s\n", argv[2]);
        return 2;
    }
    n = atol(argv[4]);
    a = lg_arg_seconds(argv[5]);
    b = idle ? 0.0 : lg_arg_seconds(argv[6]);
    cs = lg_arg_seconds(argv[idle ? 6 : 7]);
    if (n < 1 || n > 100000 || a < 0 || b < 0 || cs <= 0) {
        fprintf(stderr, "loadgen: N in 1..100000, times in 0..3600 s\n");
        return 2;
    }
    if (lg_raise_nofile(n) < 0) {
        fprintf(stderr, "loadgen: RLIMIT_NOFILE too low for %ld connections (setrlimit)\n", n);
        return 2;
    }
    alarm((unsigned)(a + b + cs + 30));
    memset(&r, 0, sizeof r);
    r.n = n;
    r.conns = calloc((size_t)n, sizeof *r.conns);
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!r.conns || r.ep < 0) {
        fprintf(stderr, "loadgen: calloc() or epoll_create1() failed: %s\n", strerror(errno));
        return 2;
    }
    for (i = 0; i < n; i++)
        r.conns[i].fd = -1;
    r.keep_going = !idle;
    r.start_at_once = idle;

    t0 = lg_now();
    lg_loop(&r, &sa, t0 + (uint64_t)(cs * 1e9), idle ? lg_all_answered : lg_all_connected);
    tc = lg_now();
    if (!lg_all_connected(&r) || (idle && !lg_all_answered(&r)))
        lg_error(idle ? "connect and first exchange: timeout" : "connect: timeout",
                 (long)r.connected, 0);

    if (idle) {
        struct pollfd pfd = {0, POLLIN, 0};
        char buf[256];
        uint64_t until = tc + (uint64_t)(a * 1e9);
        printf("{\"mode\":\"idle\",\"phase\":\"holding\",\"conns\":%ld,\"connected\":%ld,"
               "\"connect_s\":%.3f,\"errors\":%llu}\n",
               n, r.connected, (double)(tc - t0) / 1e9, (unsigned long long)errors);
        fflush(stdout);
        while (lg_now() < until) {
            int ms = (int)((until - lg_now()) / 1000000u) + 1;
            if (poll(&pfd, 1, ms > 200 ? 200 : ms) > 0 && read(0, buf, sizeof buf) <= 0)
                break;
        }
    } else {
        lg_start_all(&r);
        lg_loop(&r, &sa, tc + (uint64_t)(a * 1e9), NULL);
        printf("MEASURE_START\n");
        fflush(stdout);
        r.in_window = 1;
        tw0 = lg_now();
        lg_loop(&r, &sa, tw0 + (uint64_t)(b * 1e9), NULL);
        tw1 = lg_now();
        r.in_window = 0;
        printf("MEASURE_END\n");
        fflush(stdout);
        for (i = 0; i < n; i++)
            if (r.conns[i].replies_in_window == 0)
                silent++;
        {
            double w = (double)(tw1 - tw0) / 1e9, mx = 0.0;
            int k;
            for (k = NBUCKETS - 1; k >= 0; k--)
                if (hist[k]) {
                    mx = (double)lg_bucket_low(k + 1 < NBUCKETS ? k + 1 : k) / 1000.0;
                    break;
                }
            printf("{\"mode\":\"load\",\"conns\":%ld,\"connected\":%ld,\"connect_s\":%.3f,"
                   "\"requests\":%llu,\"window_s\":%.4f,\"rps\":%.1f,\"p50_us\":%.1f,"
                   "\"p99_us\":%.1f,\"max_us\":%.1f,\"silent\":%ld,",
                   n, r.connected, (double)(tc - t0) / 1e9,
                   (unsigned long long)r.window_replies, w, (double)r.window_replies / w,
                   lg_quantile(r.window_replies, 0.50), lg_quantile(r.window_replies, 0.99),
                   mx, silent);
        }
    }
    for (i = 0; i < n; i++)
        if (r.conns[i].fd >= 0)
            close(r.conns[i].fd);
    if (idle)
        printf("{\"mode\":\"idle\",\"phase\":\"done\",\"conns\":%ld,\"connected\":%ld,", n,
               r.connected);
    printf("\"errors\":%llu,\"first_error\":\"%s\"}\n", (unsigned long long)errors, first_error);
    fflush(stdout);
    free(r.conns);
    close(r.ep);
    return errors ? 3 : 0;
}
