/* sock.c - socket setup: listen, connect, options, abort (see sock.h). */
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"

/* Contract: pure; host must be numeric (names are resolved by the caller). */
int sk_sockaddr(const char *host, int port, int family,
                struct sockaddr_storage *ss, socklen_t *len, sk_err *err)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    int rc = SK_OK;

    memset(ss, 0, sizeof(*ss));
    if (port < 0 || port > 65535) {
        rc = sk_err_set(err, SK_E_ARG, "port must be 0..65535, not %d", port);
        goto done;
    }
    if (family == AF_UNSPEC)
        family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        if (host[0] == '\0')
            a4->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            rc = sk_err_set(err, SK_E_ARG,
                            "%.60s is not a numeric IPv4 address", host);
        *len = sizeof(*a4);
    } else if (family == AF_INET6) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        if (host[0] == '\0')
            a6->sin6_addr = in6addr_any;
        else if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            rc = sk_err_set(err, SK_E_ARG,
                            "%.60s is not a numeric IPv6 address", host);
        *len = sizeof(*a6);
    } else {
        rc = sk_err_set(err, SK_E_ARG, "unsupported address family %d",
                        family);
    }
done:
    return rc;
}

/* Contract: no GIL needed. */
int sk_set_nodelay(int fd, sk_err *err)
{
    int one = 1, rc = SK_OK;

    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        rc = sk_err_sys(err, "setsockopt(TCP_NODELAY)", errno);
    return rc;
}

/* Contract: no GIL needed; *fd_out is the caller's on SK_OK, nothing leaks
 * otherwise. */
int sk_listen(const struct sockaddr *sa, socklen_t len, int backlog,
              int *fd_out, sk_err *err)
{
    int fd, one = 1, rc = SK_ERR;

    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sk_err_sys(err, "socket", errno);
        goto error;
    }
    /* a restarted server must be able to bind while old connections of the
     * previous run sit in TIME_WAIT */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
        sk_err_sys(err, "setsockopt(SO_REUSEADDR)", errno);
        goto error;
    }
    /* accepted sockets inherit TCP_NODELAY from the listener (Linux clones
     * the listener's socket into each child): set once here, not once per
     * accept (a setsockopt on a short connection's critical path) */
    if (sk_set_nodelay(fd, err) != SK_OK)
        goto error;
    if (bind(fd, sa, len) != 0) {
        sk_err_sys(err, "bind", errno);
        goto error;
    }
    if (listen(fd, backlog) != 0) {
        sk_err_sys(err, "listen", errno);
        goto error;
    }
    *fd_out = fd;
    fd = -1; /* the caller's now */
    rc = SK_OK;
error:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Contract: no GIL needed; *fd_out is the caller's on SK_OK, nothing leaks
 * otherwise. */
int sk_connect(const struct sockaddr *sa, socklen_t len, int64_t deadline,
               const sk_intr *intr, int *fd_out, sk_err *err)
{
    int fd, rc, soerr = 0;
    socklen_t sl = sizeof(soerr);
    short rev;

    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = sk_err_sys(err, "socket", errno);
        goto error;
    }
    if (connect(fd, sa, len) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) {
            rc = sk_err_sys(err, "connect", errno);
            goto error;
        }
        /* the handshake goes on in the kernel; wait for writability */
        rc = sk_wait_revents(fd, POLLOUT, deadline, intr, &rev, err);
        if (rc != SK_OK)
            goto error;
        /* POLLOUT alone means established: a TCP socket in SYN_SENT polls
         * as nothing, a failed one as POLLERR|POLLHUP.  Only then is
         * SO_ERROR asked for the reason (one syscall less on every
         * connect, which on loopback has usually completed already) */
        if ((rev & (POLLERR | POLLHUP)) &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
            rc = sk_err_sys(err, "getsockopt(SO_ERROR)", errno);
            goto error;
        }
        if (soerr != 0) {
            rc = sk_err_sys(err, "connect", soerr);
            goto error;
        }
    }
    rc = sk_set_nodelay(fd, err);
    if (rc != SK_OK)
        goto error;
    *fd_out = fd;
    fd = -1; /* the caller's now */
error:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Contract: no GIL needed. */
int sk_set_keepalive(int fd, int idle_s, int interval_s, int count,
                     int user_timeout_ms, sk_err *err)
{
    int one = 1, rc = SK_ERR;

    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0) {
        sk_err_sys(err, "setsockopt(SO_KEEPALIVE)", errno);
        goto done;
    }
    if (idle_s > 0 && setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s,
                                 sizeof(idle_s)) != 0) {
        sk_err_sys(err, "setsockopt(TCP_KEEPIDLE)", errno);
        goto done;
    }
    if (interval_s > 0 && setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL,
                                     &interval_s, sizeof(interval_s)) != 0) {
        sk_err_sys(err, "setsockopt(TCP_KEEPINTVL)", errno);
        goto done;
    }
    if (count > 0 && setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count,
                                sizeof(count)) != 0) {
        sk_err_sys(err, "setsockopt(TCP_KEEPCNT)", errno);
        goto done;
    }
    if (user_timeout_ms >= 0 &&
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
                   sizeof(user_timeout_ms)) != 0) {
        sk_err_sys(err, "setsockopt(TCP_USER_TIMEOUT)", errno);
        goto done;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: no GIL needed; closes fd in every case. */
int sk_abort(int fd, sk_err *err)
{
    struct linger lg;
    int rc = SK_OK;

    lg.l_onoff = 1;
    lg.l_linger = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) != 0)
        rc = sk_err_sys(err, "setsockopt(SO_LINGER)", errno);
    if (close(fd) != 0 && rc == SK_OK)
        rc = sk_err_sys(err, "close", errno);
    return rc;
}
