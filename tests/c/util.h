/*
 * util.h - socket and time helpers shared by the C test files (all static
 * inline).  They read CLOCK_MONOTONIC directly, never sk_now_ns(), so they
 * keep real time while a test drives the core with a fake clock (clock.h's
 * seam).  Every wait is bounded.
 */
#ifndef SK_TEST_UTIL_H
#define SK_TEST_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* Real monotonic time in ns (independent of the core's clock seam). */
static inline int64_t real_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Interrupt callback (an sk_intr's check): stop once fire_after_ns have
 * passed since start (real monotonic time); counts its calls. */
typedef struct intr_ctx {
    int64_t start;
    int64_t fire_after_ns;
    int calls;
} intr_ctx;

static inline int intr_check(void *arg)
{
    intr_ctx *x = arg;

    x->calls++;
    return real_now_ns() - x->start >= x->fire_after_ns;
}

/* A time bound in seconds, multiplied by the run's time scale. */
static inline double tmax(double seconds)
{
    return seconds * sk_test_time_scale();
}

static inline void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline int set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0)
        return -1;
    fl = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
    return fcntl(fd, F_SETFL, fl);
}

/* Milliseconds left until the real-time deadline, capped at cap_ms. */
static inline int real_poll_ms(int64_t deadline, int cap_ms)
{
    int64_t left = deadline - real_now_ns();

    if (left <= 0)
        return 0;
    left = (left + 999999) / 1000000;
    return left < cap_ms ? (int)left : cap_ms;
}

/* Write all n bytes to a (non-blocking) fd within timeout.  0 or -1. */
static inline int raw_write_all(int fd, const void *p, size_t n,
                                double timeout)
{
    const unsigned char *b = p;
    int64_t deadline = real_now_ns() + (int64_t)(tmax(timeout) * 1e9);

    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            if (real_now_ns() >= deadline)
                return -1;
            poll(&pfd, 1, real_poll_ms(deadline, 100));
            continue;
        }
        return -1;
    }
    return 0;
}

/* Read up to n bytes, stopping at EOF, error or timeout.  Returns the count
 * read; *eof is set when EOF was seen (may be NULL). */
static inline size_t raw_read(int fd, void *p, size_t n, double timeout,
                              int *eof)
{
    unsigned char *b = p;
    size_t got = 0;
    int64_t deadline = real_now_ns() + (int64_t)(tmax(timeout) * 1e9);

    if (eof)
        *eof = 0;
    while (got < n) {
        ssize_t r = recv(fd, b + got, n - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0) {
            if (eof)
                *eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            struct pollfd pfd = {fd, POLLIN, 0};
            if (real_now_ns() >= deadline)
                break;
            poll(&pfd, 1, real_poll_ms(deadline, 100));
            continue;
        }
        break;
    }
    return got;
}

/* Is there something to read (data or EOF) within ms? */
static inline int raw_readable(int fd, int ms)
{
    struct pollfd pfd = {fd, POLLIN, 0};

    return poll(&pfd, 1, ms) > 0 && (pfd.revents & (POLLIN | POLLHUP));
}

/* Connected IPv4 loopback pair (blocking): *a is the client, *b the
 * accepted socket.  0, or -1 with nothing left open. */
static inline int tcp_loopback_pair(int *a, int *b)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int ls, rc = -1;

    *a = *b = -1;
    ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0
        || getsockname(ls, (struct sockaddr *)&sa, &len) < 0)
        goto done;
    *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*a < 0 || connect(*a, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        goto done;
    *b = accept(ls, NULL, NULL);
    if (*b < 0)
        goto done;
    rc = 0;
done:
    close(ls);
    if (rc < 0) {
        if (*a >= 0)
            close(*a);
        *a = -1;
    }
    return rc;
}

/* A writer thread: len bytes of buf to fd, after delay_ms, in chunks. */
typedef struct writer_job {
    int fd;
    const unsigned char *buf;
    size_t len;
    size_t chunk;    /* 0: all at once */
    int gap_ms;      /* sleep between chunks */
    int rc;
    int delay_ms;    /* sleep before the first chunk */
} writer_job;

static inline void *writer_main(void *arg)
{
    writer_job *j = arg;
    size_t off = 0;

    j->rc = 0;
    if (j->delay_ms)
        sleep_ms(j->delay_ms);
    while (off < j->len && j->rc == 0) {
        size_t n = j->chunk ? j->chunk : j->len;
        if (n > j->len - off)
            n = j->len - off;
        j->rc = raw_write_all(j->fd, j->buf + off, n, 20);
        off += n;
        if (j->gap_ms && off < j->len)
            sleep_ms(j->gap_ms);
    }
    return NULL;
}

/* Start writer_main on `len` bytes of buf to fd: after delay_ms, in
 * chunks of `chunk` (0: at once) gap_ms apart.  0, or -1 (reported). */
static inline int writer_start(pthread_t *th, writer_job *wj, int fd,
                        const unsigned char *buf, size_t len, size_t chunk,
                        int gap_ms, int delay_ms)
{
    memset(wj, 0, sizeof(*wj));
    wj->fd = fd;
    wj->buf = buf;
    wj->len = len;
    wj->chunk = chunk;
    wj->gap_ms = gap_ms;
    wj->delay_ms = delay_ms;
    if (pthread_create(th, NULL, writer_main, wj) != 0) {
        CHECK(!"pthread_create");
        return -1;
    }
    return 0;
}

#endif /* SK_TEST_UTIL_H */
