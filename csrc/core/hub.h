/*
 * hub.h - the reactor: one thread with an epoll set and a timer heap that
 * keeps the heartbeats of many connections going without the GIL.
 *
 * The hub never blocks on a connection: it only trylocks a connection's
 * mutexes (io.h) and does non-blocking I/O, so user threads keep priority
 * and a busy connection costs the hub at most one wake-up per interval.
 * For each registered connection it
 *   - reads what arrives while no user thread is receiving (EPOLLIN, one
 *     shot), up to SK_HUB_RX_LIMIT buffered bytes, answering PINGs and
 *     taking PONGs out of the stream;
 *   - sends a PING when nothing was sent for the interval;
 *   - declares the peer dead when nothing arrived for the timeout, unless
 *     the kernel holds unread bytes (the application is the slow one).
 *
 * Memory: a slot (32 bytes) and a heap entry (4 bytes) per connection; the
 * read-ahead buffer is freed whenever the hub leaves it empty.
 *
 * Thread-safety: every function may be called from any thread, without the
 * GIL.  sk_hub_remove is synchronous: when it returns, the hub no longer
 * touches the connection, which may then be freed.
 */
#ifndef SK_HUB_H
#define SK_HUB_H

#include <stdint.h>

#include "io.h"
#include "sk.h"

#define SK_HUB_RX_LIMIT (256 * 1024)

typedef struct sk_hub sk_hub;

typedef struct sk_hub_stats {
    uint64_t conns;     /* registered now */
    uint64_t wakeups;   /* epoll_wait returns */
    uint64_t pings;     /* PINGs sent by the hub */
    uint64_t reads;     /* pumps of a connection */
    uint64_t dead;      /* peers declared dead */
    uint64_t lingering; /* sockets in a lingering close now */
    int64_t cpu_ns;     /* CPU time used by the hub thread */
} sk_hub_stats;

/* Create a hub and start its thread.  *out is the caller's (sk_hub_free). */
int sk_hub_new(sk_hub **out, sk_err *err);

/* Stop the thread, join it and free the hub.  Connections still
 * registered are dropped from it (their hub pointer is cleared). */
void sk_hub_free(sk_hub *h);

/* Register c (heartbeats already on, see sk_conn_heartbeat). */
int sk_hub_add(sk_hub *h, sk_conn *c, sk_err *err);

/* Unregister c if it is registered with h; synchronous. */
void sk_hub_remove(sk_hub *h, sk_conn *c);

/* Take over fd for a lingering close: the hub reads and discards what
 * arrives (heartbeats a peer still sends would otherwise make the kernel
 * answer with RST and drop our unsent data) until everything we sent is
 * acknowledged (SIOCOUTQ 0), the peer closes, or the deadline passes; then
 * it closes fd.  The caller has already done shutdown(SHUT_WR) and must not
 * touch fd again.  If the hub cannot take it, fd is closed at once. */
void sk_hub_linger(sk_hub *h, int fd, int64_t deadline);

/* Wake the hub thread so that it reads the clock again and runs whatever
 * is due (the C tests advance a fake clock, clock.h, then call this). */
void sk_hub_wake(sk_hub *h);

/* A snapshot of the counters. */
void sk_hub_get_stats(sk_hub *h, sk_hub_stats *st);

#endif /* SK_HUB_H */
