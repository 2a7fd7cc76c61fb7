/*
 * cref.c - raw C reference client/server for the pysockkit benchmarks.
 *
 * This is the "limit line": what plain blocking sockets can do on this box
 * with no library at all.  Wire format is pysockkit's plain mode,
 * [4-byte big-endian length][payload], and the payload content is the same
 * as in contenders.py, so any receiver here can check any sender there:
 *
 *   64-byte message i:  bytes 0..7  = (i mod 65536), big-endian u64
 *                       bytes 8..63 = PAT64 (fixed pattern, see fill_pat64)
 *   1 MiB frame i:      every byte j = j & 0xff, except
 *                       bytes 0..7   = (i mod 16), big-endian u64
 *                       last 8 bytes = ~(i mod 16), big-endian u64
 *
 * Usage:  cref server SCENARIO COUNT          (prints "READY <port>")
 *         cref client SCENARIO COUNT PORT
 *
 * SCENARIO        server (receiver)                  client (sender)
 * stream64-batch  one big recv, parse in place,      ~64 KiB writes of 964
 *                 verify every frame                 frames each
 * stream64-per    same receiver                      one send() per frame
 * stream1m        same receiver, 1 MiB frames land   one frame per write
 *                 in place (no copy)                 loop
 * rtt64           echo every frame                   request, wait for the
 *                                                    reply, time each one
 * shortconn       accept, one frame, echo, close     connect, one exchange,
 *                                                    close (COUNT times)
 *
 * The measuring side prints one line "RESULT {json}" with count (the
 * messages/connections timed) and elapsed_s, plus latency percentiles for
 * rtt64.  The first min(1000, COUNT/20) exchanges of rtt64 and shortconn are
 * warm-up and not timed; streams are timed from the first received byte.
 * Any verification failure exits with status 3 and a message on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SMALL 64u
#define BIG (1u << 20)
#define SEQ_RING64 65536u
#define SEQ_RING1M 16u
#define BATCH_FRAMES 964u /* 964 * 68 = 65552 bytes per write */
#define IO_TIMEOUT_S 30
#define ALARM_S 600

static uint8_t PAT64[SMALL];

static void die(const char *what)
{
    fprintf(stderr, "cref: %s: %s\n", what, errno ? strerror(errno) : "-");
    exit(2);
}

static void bad(const char *what, uint64_t i)
{
    fprintf(stderr, "cref: verification failed at message %llu: %s\n",
            (unsigned long long)i, what);
    exit(3);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static void fill_pat64(void)
{
    /* The same pattern as contenders.py: byte k of a 64-byte message is
     * (k * 7 + 13) & 0xff for k >= 8. */
    for (unsigned k = 0; k < SMALL; k++)
        PAT64[k] = (uint8_t)((k * 7u + 13u) & 0xffu);
}

static void make_small(uint8_t *payload, uint64_t i)
{
    memcpy(payload, PAT64, SMALL);
    put_be64(payload, i % SEQ_RING64);
}

static void verify_small(const uint8_t *p, uint32_t len, uint64_t i)
{
    if (len != SMALL)
        bad("length", i);
    if (get_be64(p) != i % SEQ_RING64)
        bad("sequence number", i);
    if (memcmp(p + 8, PAT64 + 8, SMALL - 8) != 0)
        bad("pattern", i);
}

static void make_big(uint8_t *payload, uint64_t i)
{
    /* The body (j & 0xff) is filled once; only the ends change. */
    put_be64(payload, i % SEQ_RING1M);
    put_be64(payload + BIG - 8, ~(i % SEQ_RING1M));
}

static void verify_big(const uint8_t *p, uint32_t len, uint64_t i)
{
    if (len != BIG)
        bad("length", i);
    if (get_be64(p) != i % SEQ_RING1M)
        bad("first 8 bytes", i);
    if (get_be64(p + BIG - 8) != ~(i % SEQ_RING1M))
        bad("last 8 bytes", i);
    for (uint32_t j = BIG / 2; j < BIG / 2 + 8; j++)
        if (p[j] != (uint8_t)(j & 0xffu))
            bad("middle bytes", i);
}

static void set_opts(int fd)
{
    int one = 1;
    struct timeval tv = {IO_TIMEOUT_S, 0};
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("setsockopt TCP_NODELAY");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        die("setsockopt SO_RCVTIMEO");
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
        die("setsockopt SO_SNDTIMEO");
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("send");
        }
        p += w;
        n -= (size_t)w;
    }
}

static int listen_any(void)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt SO_REUSEADDR");
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (listen(fd, 1024) < 0)
        die("listen");
    if (getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        die("getsockname");
    printf("READY %u\n", (unsigned)ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static int accept_one(int lfd)
{
    int fd;
    do {
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("accept");
    set_opts(fd);
    return fd;
}

static int connect_to(unsigned port)
{
    struct sockaddr_in a;
    int rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    set_opts(fd);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    do {
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        die("connect");
    return fd;
}

/* ---- a buffered frame reader: one big recv, frames parsed in place ---- */

typedef struct reader {
    int fd;
    uint8_t *buf;
    size_t cap, off, have;
} reader;

static void reader_init(reader *r, int fd, size_t cap)
{
    r->fd = fd;
    r->cap = cap;
    r->off = r->have = 0;
    r->buf = malloc(cap);
    if (!r->buf)
        die("malloc");
}

/* Next complete frame in the buffer without reading: its payload, or NULL. */
static const uint8_t *reader_next(reader *r, uint32_t max_len, uint32_t *len)
{
    size_t avail = r->have - r->off;
    uint32_t n;
    const uint8_t *p;
    if (avail < 4)
        return NULL;
    n = get_be32(r->buf + r->off);
    if (n > max_len) {
        fprintf(stderr, "cref: frame of %u bytes > %u\n", n, max_len);
        exit(3);
    }
    if (avail < 4 + (size_t)n)
        return NULL;
    p = r->buf + r->off + 4;
    r->off += 4 + (size_t)n;
    *len = n;
    return p;
}

/* One recv() into the buffer.  A big frame's rest is read straight into its
 * place (never more than it needs), so 1 MiB frames are never moved; small
 * leftovers are moved to the front when space runs low.  0 on EOF. */
static size_t reader_fill(reader *r)
{
    size_t want;
    ssize_t got;
    if (r->off == r->have) {
        r->off = r->have = 0;
    } else if (r->cap - r->have < 65536 && r->off > 0) {
        memmove(r->buf, r->buf + r->off, r->have - r->off);
        r->have -= r->off;
        r->off = 0;
    }
    want = r->cap - r->have;
    if (r->have - r->off >= 4) {
        size_t flen = 4 + (size_t)get_be32(r->buf + r->off);
        size_t need = flen - (r->have - r->off);
        if (flen >= 65536 && need < want)
            want = need;
    }
    if (want == 0) {
        errno = 0;
        die("reader buffer full");
    }
    do {
        got = recv(r->fd, r->buf + r->have, want, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        die("recv");
    r->have += (size_t)got;
    return (size_t)got;
}

/* ---- stream scenarios ---- */

static void stream_receiver(uint64_t count, int big)
{
    int lfd = listen_any();
    int fd = accept_one(lfd);
    reader r;
    uint64_t i = 0, at_t0 = 0;
    int64_t t0 = 0, t1;
    uint32_t len;
    const uint8_t *p;
    reader_init(&r, fd, big ? 4 * (BIG + 4) : 256 * 1024);
    while (i < count) {
        int first = t0 == 0;
        if (reader_fill(&r) == 0) {
            errno = 0;
            bad("EOF before the last message", i);
        }
        if (first)
            t0 = now_ns();
        while (i < count && (p = reader_next(&r, big ? BIG : SMALL, &len))) {
            if (big)
                verify_big(p, len, i);
            else
                verify_small(p, len, i);
            i++;
        }
        if (first)
            at_t0 = i; /* frames the first read completed arrived before t0 */
    }
    t1 = now_ns();
    /* Nothing may follow the last frame. */
    if (r.have != r.off || reader_fill(&r) != 0)
        bad("bytes after the last message", i);
    printf("RESULT {\"count\": %llu, \"elapsed_s\": %.9f}\n",
           (unsigned long long)(count - at_t0), (double)(t1 - t0) / 1e9);
    fflush(stdout);
    close(fd);
    close(lfd);
    free(r.buf);
}

static void stream64_sender_batch(unsigned port, uint64_t count)
{
    int fd = connect_to(port);
    size_t fsz = 4 + SMALL;
    uint8_t *buf = malloc(BATCH_FRAMES * fsz);
    uint64_t i = 0;
    if (!buf)
        die("malloc");
    /* Header and pattern are the same in every frame: fill them once. */
    for (unsigned k = 0; k < BATCH_FRAMES; k++) {
        put_be32(buf + k * fsz, SMALL);
        memcpy(buf + k * fsz + 4, PAT64, SMALL);
    }
    while (i < count) {
        uint64_t n = count - i < BATCH_FRAMES ? count - i : BATCH_FRAMES;
        for (uint64_t k = 0; k < n; k++)
            put_be64(buf + k * fsz + 4, (i + k) % SEQ_RING64);
        write_all(fd, buf, (size_t)n * fsz);
        i += n;
    }
    close(fd);
    free(buf);
}

static void stream64_sender_per(unsigned port, uint64_t count)
{
    int fd = connect_to(port);
    uint8_t frame[4 + SMALL];
    put_be32(frame, SMALL);
    for (uint64_t i = 0; i < count; i++) {
        make_small(frame + 4, i);
        write_all(fd, frame, sizeof frame);
    }
    close(fd);
}

static void stream1m_sender(unsigned port, uint64_t count)
{
    int fd = connect_to(port);
    uint8_t *frame = malloc(4 + BIG);
    if (!frame)
        die("malloc");
    put_be32(frame, BIG);
    for (uint32_t j = 0; j < BIG; j++)
        frame[4 + j] = (uint8_t)(j & 0xffu);
    for (uint64_t i = 0; i < count; i++) {
        make_big(frame + 4, i);
        write_all(fd, frame, 4 + BIG);
    }
    close(fd);
    free(frame);
}

/* ---- request/reply scenarios ---- */

static uint64_t warmup_of(uint64_t count)
{
    uint64_t w = count / 20;
    return w > 1000 ? 1000 : w;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void rtt_server(void)
{
    int lfd = listen_any();
    int fd = accept_one(lfd);
    reader r;
    uint32_t len;
    const uint8_t *p;
    reader_init(&r, fd, 64 * 1024);
    for (;;) {
        if (reader_fill(&r) == 0)
            break; /* the client is done */
        while ((p = reader_next(&r, SMALL, &len)))
            write_all(fd, p - 4, 4 + (size_t)len); /* echo the frame in place */
    }
    close(fd);
    close(lfd);
    free(r.buf);
}

/* Read one reply frame and check it equals the request. */
static void read_reply(reader *r, const uint8_t *req, uint64_t i)
{
    uint32_t len;
    const uint8_t *p;
    while (!(p = reader_next(r, SMALL, &len))) {
        if (reader_fill(r) == 0) {
            errno = 0;
            bad("EOF instead of a reply", i);
        }
    }
    if (len != SMALL || memcmp(p, req + 4, SMALL) != 0)
        bad("reply differs from request", i);
}

static void rtt_client(unsigned port, uint64_t count)
{
    int fd = connect_to(port);
    reader r;
    uint8_t frame[4 + SMALL];
    uint64_t warm = warmup_of(count), n = count - warm;
    int64_t *lat = malloc(sizeof(int64_t) * (n ? n : 1));
    int64_t t_start = 0, t_end;
    if (!lat)
        die("malloc");
    reader_init(&r, fd, 64 * 1024);
    put_be32(frame, SMALL);
    for (uint64_t i = 0; i < count; i++) {
        int64_t t0, t1;
        make_small(frame + 4, i);
        if (i == warm)
            t_start = now_ns();
        t0 = now_ns();
        write_all(fd, frame, sizeof frame);
        read_reply(&r, frame, i);
        t1 = now_ns();
        if (i >= warm)
            lat[i - warm] = t1 - t0;
    }
    t_end = now_ns();
    shutdown(fd, SHUT_WR);
    if (reader_fill(&r) != 0)
        bad("bytes after the last reply", count);
    qsort(lat, n, sizeof lat[0], cmp_i64);
    printf("RESULT {\"count\": %llu, \"elapsed_s\": %.9f, "
           "\"median_us\": %.3f, \"p99_us\": %.3f, \"min_us\": %.3f}\n",
           (unsigned long long)n, (double)(t_end - t_start) / 1e9,
           (double)lat[n / 2] / 1e3, (double)lat[(n * 99) / 100] / 1e3,
           (double)lat[0] / 1e3);
    fflush(stdout);
    close(fd);
    free(r.buf);
    free(lat);
}

static void shortconn_server(uint64_t count)
{
    int lfd = listen_any();
    reader r;
    reader_init(&r, -1, 4096);
    for (uint64_t i = 0; i < count; i++) {
        uint32_t len;
        const uint8_t *p;
        int fd = accept_one(lfd);
        r.fd = fd;
        r.off = r.have = 0;
        while (!(p = reader_next(&r, SMALL, &len))) {
            if (reader_fill(&r) == 0) {
                errno = 0;
                bad("EOF before the request", i);
            }
        }
        write_all(fd, p - 4, 4 + (size_t)len);
        close(fd);
    }
    close(lfd);
    free(r.buf);
}

static void shortconn_client(unsigned port, uint64_t count)
{
    uint8_t frame[4 + SMALL];
    uint64_t warm = warmup_of(count);
    int64_t t_start = now_ns(), t_end;
    reader r;
    reader_init(&r, -1, 4096);
    put_be32(frame, SMALL);
    for (uint64_t i = 0; i < count; i++) {
        int fd;
        if (i == warm)
            t_start = now_ns();
        fd = connect_to(port);
        r.fd = fd;
        r.off = r.have = 0;
        make_small(frame + 4, i);
        write_all(fd, frame, sizeof frame);
        read_reply(&r, frame, i);
        close(fd);
    }
    t_end = now_ns();
    printf("RESULT {\"count\": %llu, \"elapsed_s\": %.9f}\n",
           (unsigned long long)(count - warm), (double)(t_end - t_start) / 1e9);
    fflush(stdout);
    free(r.buf);
}

int main(int argc, char **argv)
{
    const char *role, *scen;
    uint64_t count;
    unsigned port = 0;
    int server;
    if (argc < 4) {
        fprintf(stderr, "usage: cref server|client SCENARIO COUNT [PORT]\n");
        return 64;
    }
    role = argv[1];
    scen = argv[2];
    count = strtoull(argv[3], NULL, 10);
    server = strcmp(role, "server") == 0;
    if (!server && strcmp(role, "client") != 0) {
        fprintf(stderr, "cref: role must be server or client\n");
        return 64;
    }
    if (!server) {
        if (argc < 5) {
            fprintf(stderr, "cref: client needs PORT\n");
            return 64;
        }
        port = (unsigned)strtoul(argv[4], NULL, 10);
    }
    if (count < 1) {
        fprintf(stderr, "cref: COUNT must be >= 1\n");
        return 64;
    }
    alarm(ALARM_S); /* a safety net; the harness kills us much sooner */
    fill_pat64();

    if (strcmp(scen, "stream64-batch") == 0 || strcmp(scen, "stream64-per") == 0) {
        if (server)
            stream_receiver(count, 0);
        else if (scen[9] == 'b')
            stream64_sender_batch(port, count);
        else
            stream64_sender_per(port, count);
    } else if (strcmp(scen, "stream1m") == 0) {
        if (server)
            stream_receiver(count, 1);
        else
            stream1m_sender(port, count);
    } else if (strcmp(scen, "rtt64") == 0) {
        if (server)
            rtt_server();
        else
            rtt_client(port, count);
    } else if (strcmp(scen, "shortconn") == 0) {
        if (server)
            shortconn_server(count);
        else
            shortconn_client(port, count);
    } else {
        fprintf(stderr, "cref: unknown scenario %s\n", scen);
        return 64;
    }
    return 0;
}
