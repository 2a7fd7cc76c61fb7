/*
 * proxy.h - a TCP fault-injection proxy on an epoll reactor in its own thread.
 *
 * A client connects to the proxy's listener; the proxy connects to the
 * upstream server and copies bytes both ways.  "Upstream" is client -> server
 * (SK_DIR_UP), "downstream" server -> client (SK_DIR_DOWN).  Faults, named as
 * in toxiproxy, can be added and removed at any time, also while connections
 * are live; each applies to one or both directions:
 *
 *   latency     hold each chunk delay_ns (+- jitter_ns, uniform) after it was
 *               read; the order of bytes never changes
 *   bandwidth   pace the writes to rate_Bps bytes per second
 *   stall       pass nothing and hold the connection open (data and EOF
 *               wait in the proxy, then in the kernel: the sender blocks);
 *               delay_ns > 0: close both sides that long after the fault
 *               applies.  Unlike toxiproxy's "timeout" nothing is dropped:
 *               removing the fault lets the held bytes through intact
 *   reset_peer  delay_ns after the fault applies, reset the connection: the
 *               sides whose direction is selected get RST (UP: the server,
 *               DOWN: the client), the other side an orderly close
 *   slow_close  delay the forwarding of an EOF (FIN) by delay_ns
 *   slicer      write in slices of size +- size_var bytes (at least 1),
 *               delay_ns apart
 *   limit_data  close both sides once `bytes` bytes went through in that
 *               direction (counted from when the fault applies)
 *
 * "Applies" means max(time the fault was added, time the connection was
 * accepted).  Latency is stamped on bytes when they are read: removing a
 * latency fault does not speed up bytes already held.  The other faults act
 * when bytes are written, so switching them takes effect at once.
 *
 * Memory is bounded: each direction of each connection holds at most
 * opts.buffer_size bytes and SK_PROXY_QMAX pending chunks; when either is
 * full the proxy stops reading that side, so backpressure reaches the sender
 * through TCP.  At most opts.max_conns connections are served at once (more
 * wait in the listen backlog) and at most SK_PROXY_MAX_FAULTS faults exist.
 *
 * Threads: sk_proxy_start creates the reactor thread (named "sk-proxy",
 * all signals blocked).  The other functions may be called from any thread,
 * concurrently, while it runs: they take the proxy's mutex, change the fault
 * table and wake the reactor through an eventfd.  sk_proxy_stop must be
 * called exactly once, by one thread, with no other call in progress or to
 * come; it joins the reactor and frees everything.  Nothing here needs the
 * GIL and nothing here includes Python.h.
 */
#ifndef SK_PROXY_H
#define SK_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/sk.h"

#define SK_DIR_UP 1u   /* client -> server */
#define SK_DIR_DOWN 2u /* server -> client */
#define SK_DIR_BOTH 3u

#define SK_PROXY_MAX_FAULTS 64
#define SK_PROXY_QMAX 1024         /* pending chunks per direction */
#define SK_PROXY_DEFAULT_BUF 65536 /* bytes per direction */
#define SK_PROXY_MIN_BUF 1024
#define SK_PROXY_MAX_BUF (64u << 20)

typedef enum {
    SK_FAULT_LATENCY = 1,
    SK_FAULT_BANDWIDTH = 2,
    SK_FAULT_STALL = 3,
    SK_FAULT_RESET_PEER = 4,
    SK_FAULT_SLOW_CLOSE = 5,
    SK_FAULT_SLICER = 6,
    SK_FAULT_LIMIT_DATA = 7,
} sk_fault_kind;

/* One fault.  Fields a kind does not use must be 0. */
typedef struct sk_fault {
    sk_fault_kind kind;
    unsigned dirs;     /* SK_DIR_UP | SK_DIR_DOWN */
    int64_t delay_ns;  /* latency, stall (close after), reset_peer,
                          slow_close, slicer (between slices) */
    int64_t jitter_ns; /* latency */
    uint64_t rate_Bps; /* bandwidth, >= 1 */
    uint64_t size;     /* slicer: average slice size, >= 1 */
    uint64_t size_var; /* slicer: variation, < size */
    uint64_t bytes;    /* limit_data */
} sk_fault;

typedef struct sk_proxy_opts {
    size_t buffer_size; /* per direction per connection; 0: default */
    unsigned max_conns; /* 0: 1024 */
    uint64_t seed;      /* jitter/slicer randomness; 0: from the clock */
} sk_proxy_opts;

typedef struct sk_proxy_stats {
    uint64_t accepted;          /* connections accepted so far */
    uint64_t active;            /* connections open now */
    uint64_t bytes_up;          /* bytes written to servers */
    uint64_t bytes_down;        /* bytes written to clients */
    uint64_t buffered;          /* bytes held in the proxy now */
    uint64_t buffered_peak;     /* most bytes ever held at once */
    uint64_t upstream_failures; /* connects to the upstream that failed */
    uint64_t resets;            /* connections ended by reset_peer */
    uint64_t limits;            /* ... by limit_data */
    uint64_t stall_closes;      /* ... by a stall's timeout */
} sk_proxy_stats;

typedef struct sk_proxy_conn_info {
    struct sockaddr_storage client; /* the client's address */
    struct sockaddr_storage local;  /* the proxy's end towards the server;
                                       family 0 while connecting */
    uint64_t bytes_up, bytes_down;  /* written so far each way */
    uint64_t buffered_up, buffered_down;
    int connecting;                 /* upstream connect not finished */
} sk_proxy_conn_info;

typedef struct sk_proxy sk_proxy;

/* Check a fault's kind, directions and parameters.  SK_OK or SK_ERR with
 * SK_E_ARG.  Pure. */
int sk_fault_check(const sk_fault *f, sk_err *err);

/* Listen on `listen` (port 0: any free port), start the reactor thread
 * forwarding every client to `upstream`.  *out is the caller's until
 * sk_proxy_stop.  No fd or thread leaks on failure. */
int sk_proxy_start(const struct sockaddr *upstream, socklen_t upstream_len,
                   const struct sockaddr *listen, socklen_t listen_len,
                   const sk_proxy_opts *opts, sk_proxy **out, sk_err *err);

/* The listening socket (owned by the proxy; for getsockname). */
int sk_proxy_listen_fd(const sk_proxy *p);

/* Add a fault (checked as sk_fault_check); *id identifies it (ids are never
 * reused).  SK_ERR with SK_E_ARG when the table holds SK_PROXY_MAX_FAULTS.
 * Returns once the reactor works with the new table (microseconds), so
 * every byte it reads afterwards sees the fault.  Not from the reactor. */
int sk_proxy_add(sk_proxy *p, const sk_fault *f, uint64_t *id, sk_err *err);

/* Remove fault `id`.  Returns 1 if it was there, 0 if not.  Waits for
 * the reactor as sk_proxy_add. */
int sk_proxy_remove(sk_proxy *p, uint64_t id);

/* Remove every fault (waits as sk_proxy_add). */
void sk_proxy_clear(sk_proxy *p);

/* A consistent-enough snapshot of the counters (each read atomically). */
void sk_proxy_get_stats(sk_proxy *p, sk_proxy_stats *out);

/* Fill out[0..n) with the open connections (oldest first) and return how
 * many are open (may exceed n). */
size_t sk_proxy_conns(sk_proxy *p, sk_proxy_conn_info *out, size_t n);

/* The last error the reactor met (accept or upstream connect failure,
 * epoll failure) into msg[0..n), "" if none.  Returns its errno (0 if
 * none). */
int sk_proxy_last_error(sk_proxy *p, char *msg, size_t n);

/* Stop: wake and join the reactor, close every connection (orderly), the
 * listener and the reactor's fds, free p.  Blocks until the thread ended
 * (it ends promptly: the reactor never blocks outside epoll). */
void sk_proxy_stop(sk_proxy *p);

#endif /* SK_PROXY_H */
