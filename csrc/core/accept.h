/*
 * accept.h - accepting connections on a listener that threads may share,
 * with one deadline per call, and closing it under them.
 *
 * A wait of SK_ACCEPT_BLOCK_MIN_NS or more waits inside accept4 itself, on
 * the listener made blocking and bounded by SO_RCVTIMEO (accept honours
 * it), not in poll() then accept4: on a short connection's path that is
 * two syscalls less per connection (the accept4 that finds nothing, and
 * the poll; bench/profile_exchange.py).  A shorter wait, or any wait while
 * another thread polls, polls on the listener made non-blocking.  The
 * acceptor remembers the mode and the timeout it set, so the usual loop
 * (one thread, one timeout) makes no fcntl and no setsockopt per accept.
 *
 * Threads.  The mode and SO_RCVTIMEO change under the mutex; a thread
 * counts itself in (waiters, pollers) before its syscall and out after it.
 * The timeout is raised only while no other thread is about to block on
 * it (a lower one only makes a waiter wake early and take again), and the
 * listener is made blocking only while nobody polls (a poller's accept4
 * must not block).  If something else makes the listener non-blocking, a
 * waiter's accept4 says EAGAIN at once and the next turn sets it again.
 *
 * Accepted sockets inherit the listener's SO_RCVTIMEO (Linux copies it):
 * sk_conn sets its own before it waits in recv (io.c sk_conn_block), and
 * every other read of the core passes MSG_DONTWAIT.
 *
 * sk_acceptor_close shuts the listener down, which wakes every thread in
 * its accept4 or poll, waits until they are out, then closes it: no
 * syscall of the acceptor meets a closed or reused descriptor number.
 *
 * No Python; no GIL needed.
 */
#ifndef SK_ACCEPT_H
#define SK_ACCEPT_H

#include <pthread.h>
#include <stdint.h>

#include "sk.h"
#include "wait.h"

/* A wait at least this long waits in accept4 (shorter ones poll: poll's
 * timeout is in ms, SO_RCVTIMEO rounds up to a jiffy). */
#define SK_ACCEPT_BLOCK_MIN_NS (20 * 1000000LL)
/* SO_RCVTIMEO is kept this far inside the wait it bounds (jiffy rounding). */
#define SK_ACCEPT_SLACK_NS (5 * 1000000LL)
/* sk_acceptor_close waits at most this long for the threads to leave. */
#define SK_ACCEPT_CLOSE_WAIT_NS (2000 * 1000000LL)

typedef struct sk_acceptor {
    pthread_mutex_t mu;
    pthread_cond_t idle; /* waiters + pollers dropped to 0 (close waits) */
    int fd;              /* the listener; -1 once closed */
    int closing;         /* sk_acceptor_close began: no new syscall */
    int blocking;        /* O_NONBLOCK is clear on fd, as far as we know */
    int64_t timeo_ns;    /* SO_RCVTIMEO we set on fd; 0: none (forever),
                            -1: unknown (not set yet) */
    int waiters;         /* threads between choosing to block and the end
                            of their accept4 */
    int pollers;         /* threads in the poll path */
} sk_acceptor;

/* Contract: no GIL needed.  Take listener fd over (closed by
 * sk_acceptor_close or sk_acceptor_release from now on, also when this
 * fails).  SK_OK, or SK_ERR (SK_E_NOMEM: the condition variable). */
int sk_acceptor_init(sk_acceptor *a, int fd, sk_err *err);

/* Contract: no GIL needed; any number of threads at once.  Accept one
 * connection by deadline (SK_NO_DEADLINE: none; a past one still takes a
 * connection already queued).  SK_OK with *fd_out (non-blocking,
 * close-on-exec, the caller's), SK_TIMEOUT, SK_INTR (intr->check asked;
 * it is called with no lock held, on EINTR and at least every slice), or
 * SK_ERR: SK_E_CLOSED once sk_acceptor_close began, else err names accept4
 * or poll. */
int sk_acceptor_accept(sk_acceptor *a, int64_t deadline, const sk_intr *intr,
                       int *fd_out, sk_err *err);

/* Contract: no GIL needed; idempotent; must not be called by a thread
 * that is inside sk_acceptor_accept on the same acceptor (from its intr
 * check: that thread is counted out then, so it is allowed).  Shut the
 * listener down, wait (at most SK_ACCEPT_CLOSE_WAIT_NS) until no thread is
 * in accept4 or poll on it, close it.  SK_OK, or SK_ERR naming close. */
int sk_acceptor_close(sk_acceptor *a, sk_err *err);

/* Contract: no thread may use a afterwards.  Close the listener if still
 * open; free the mutex and condition variable. */
void sk_acceptor_release(sk_acceptor *a);

#endif /* SK_ACCEPT_H */
