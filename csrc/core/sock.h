/*
 * sock.h - socket setup: listen, connect, options, abort (accepting:
 * accept.h).
 *
 * Every socket made here is non-blocking and close-on-exec; blocking
 * behaviour is provided by waiting in poll (io.h: sk_wait) with a deadline.
 * All functions are safe to call without the GIL: they touch only their
 * arguments.  The caller owns the returned file descriptors.
 */
#ifndef SK_SOCK_H
#define SK_SOCK_H

#include <stdint.h>
#include <sys/socket.h>

#include "sk.h"
#include "wait.h"

/* Fill *ss and *len from a numeric host ("127.0.0.1", "::1", "" for any) and a
 * port.  family: AF_INET, AF_INET6, or AF_UNSPEC to guess from the text. */
int sk_sockaddr(const char *host, int port, int family,
                struct sockaddr_storage *ss, socklen_t *len, sk_err *err);

/* socket + SO_REUSEADDR + TCP_NODELAY + bind + listen.  *fd_out receives
 * the listener; the sockets accepted on it inherit TCP_NODELAY. */
int sk_listen(const struct sockaddr *sa, socklen_t len, int backlog,
              int *fd_out, sk_err *err);

/* Non-blocking connect, waiting for completion until deadline.
 * SK_OK with *fd_out set, SK_TIMEOUT, SK_INTR or SK_ERR (connect errors
 * carry syscall "connect").  No fd leaks on any failure. */
int sk_connect(const struct sockaddr *sa, socklen_t len, int64_t deadline,
               const sk_intr *intr, int *fd_out, sk_err *err);

/* TCP_NODELAY on. */
int sk_set_nodelay(int fd, sk_err *err);

/* Kernel liveness checks: SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT
 * (each set only when > 0) and TCP_USER_TIMEOUT in ms (set when >= 0;
 * 0 restores the system default). */
int sk_set_keepalive(int fd, int idle_s, int interval_s, int count,
                     int user_timeout_ms, sk_err *err);

/* Abort: SO_LINGER {1, 0} then close, so the kernel sends RST and keeps no
 * TIME_WAIT.  The fd is closed even on error. */
int sk_abort(int fd, sk_err *err);

#endif /* SK_SOCK_H */
