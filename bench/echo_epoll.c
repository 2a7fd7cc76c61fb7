/* echo_epoll.c: the limit line of bench/many.py (issue 13): a one-thread C
 * epoll echo server for pysockkit's plain framing ([4-byte big-endian
 * length][payload]).
 *
 *   echo_epoll [BACKLOG]      (prints "READY <port>", serves until SIGTERM)
 *
 * Listens on 127.0.0.1, an ephemeral port.  Level-triggered epoll; per
 * client a 64 KiB input buffer: each read parses every whole frame in it and
 * echoes them all in one write (the rest of a frame waits for the next read).
 * A frame over 64 KiB - 4 bytes closes the client.  A client whose output
 * cannot be written at once keeps it in an output buffer and is not read until
 * that buffer is empty.  No threads, no timers.
 * Build: cc -O2 -Wall -Wextra -Werror -o echo_epoll echo_epoll.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 65536

typedef struct {
    int fd;
    size_t in_len;
    size_t out_off, out_len;
    unsigned char *out;      /* pending output (NULL when none) */
    unsigned char in[BUFSZ];
} ee_client;

static volatile sig_atomic_t stopping;

static void ee_on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

/* Free a client and close its socket. */
static void ee_drop(int ep, ee_client *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* Write out[out_off..out_len); 1 if all written, 0 if it must wait, -1. */
static int ee_flush(ee_client *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->out_off += (size_t)n;
    }
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    return 1;
}

/* Read what is there, echo every whole frame.  0 to keep the client, -1 to
 * drop it. */
static int ee_serve(int ep, ee_client *c)
{
    struct epoll_event ev;
    size_t used = 0;
    ssize_t n = recv(c->fd, c->in + c->in_len, BUFSZ - c->in_len, 0);
    if (n <= 0)
        return (n < 0 && (errno == EAGAIN || errno == EINTR)) ? 0 : -1;
    c->in_len += (size_t)n;
    while (c->in_len - used >= 4) {
        const unsigned char *p = c->in + used;
        size_t len = ((size_t)p[0] << 24) | ((size_t)p[1] << 16) | ((size_t)p[2] << 8) | p[3];
        if (len > BUFSZ - 4)
            return -1;
        if (c->in_len - used < 4 + len)
            break;
        used += 4 + len;
    }
    if (used > 0) {
        ssize_t w = send(c->fd, c->in, used, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (w < 0)
            w = 0;
        if ((size_t)w < used) {
            c->out_len = used - (size_t)w;
            c->out = malloc(c->out_len);
            if (!c->out)
                return -1;
            memcpy(c->out, c->in + w, c->out_len);
            c->out_off = 0;
            ev.events = EPOLLOUT;
            ev.data.ptr = c;
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    struct epoll_event ev, evs[1024];
    struct rlimit rl;
    struct sigaction act;
    int lfd, ep, one = 1, backlog = argc > 1 ? atoi(argv[1]) : 4096;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&act, 0, sizeof act);
    act.sa_handler = ee_on_term;
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, backlog) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
        fprintf(stderr, "echo_epoll: socket/bind/listen: %s\n", strerror(errno));
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        fprintf(stderr, "echo_epoll: epoll_create1/epoll_ctl: %s\n", strerror(errno));
        return 2;
    }
    printf("READY %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    while (!stopping) {
        int k, nev = epoll_wait(ep, evs, 1024, 200);
        if (nev < 0 && errno != EINTR) {
            fprintf(stderr, "echo_epoll: epoll_wait: %s\n", strerror(errno));
            return 2;
        }
        for (k = 0; k < nev; k++) {
            ee_client *c = evs[k].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    c = malloc(sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    c->in_len = c->out_off = c->out_len = 0;
                    c->out = NULL;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                        close(fd);
                        free(c);
                    }
                }
                continue;
            }
            if (c->out) {
                int f = ee_flush(c);
                if (f < 0) {
                    ee_drop(ep, c);
                } else if (f > 0) {
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
                continue;
            }
            if (ee_serve(ep, c) < 0)
                ee_drop(ep, c);
        }
    }
    return 0;
}
