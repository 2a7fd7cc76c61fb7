/*
 * server.h - the server reactor behind sk.serve: one thread with an epoll
 * set that accepts, reads, decodes, enforces the limits and writes for
 * every client, and hands the messages to the handler threads in batches.
 *
 * Built from the core's pieces: each client is an sk_conn (io.h: decoder
 * with max_frame, output buffer, the sticky receive errors and their
 * messages); heartbeats are the hub's (hub.h), which the server registers
 * each client with when heartbeats are on.
 *
 * Flow:
 *   - the reactor thread collects every data frame that became ready in one
 *     epoll turn into ONE batch (payloads copied into one buffer) and
 *     queues it; a handler thread takes a whole batch with sk_srv_next;
 *   - the handler threads give their answers back with sk_srv_reply (one
 *     call per batch); the reactor applies them in its next turn and writes
 *     each client's replies with one coalesced write;
 *   - the direct path (plain framing without heartbeats; a request that is
 *     its client's only one in flight, with nothing queued before its
 *     reply): sk_srv_reply writes that reply itself with one non-blocking
 *     sendmsg, under the client's send_mu, and leaves only the tail the
 *     socket did not take to the reactor; the reactor is not woken for the
 *     bookkeeping of a reply written whole (it applies it at the start of
 *     its next turn, which the client's next request or end starts), unless
 *     read_timeout is on or the client stopped being read.  One-client
 *     round trip: one thread hand-over fewer per request;
 *   - replies to plain frames leave in request order (each plain frame gets
 *     the client's next sequence number; a reply that arrives ahead of its
 *     turn is held), replies to correlated frames (seq 0) as they come;
 *   - every client's end is reported once, as an end event in a batch; its
 *     slot (and its peer address, see sk_srv_ports) stays until the owner
 *     calls sk_srv_forget, so that whoever sees a client gone from the list
 *     sees its end recorded too.
 *
 * Inline mode (cfg.inline_turns): no reactor thread.  Exactly one thread
 * calls sk_srv_next, and that call runs the turns (accept, read, write,
 * timeouts) until a batch is ready; the answers that thread hands back
 * with sk_srv_reply are applied and written before its next wait.  The
 * handler then runs on the reactor's thread: no hand-over between two
 * threads per turn, but while it runs no client is read or written.
 * sk_srv_stop does not wait: it wakes that thread, whose sk_srv_next
 * closes every client, returns the last batches, then SK_E_CLOSED.
 *
 * Limits: read_timeout (no whole frame while the server waits for one:
 * RST), write_timeout (an unsent reply made no progress for that long:
 * RST), max_conns (over it: RST at once, a REJECTED event), out_cap (a
 * client whose pending requests and unsent replies exceed it is not read
 * until they drain: bounded memory per client).
 *
 * Cost per event is O(1) in the number of clients: slots are indexed by
 * the client id, the two timeout lists are FIFO (every deadline of a list
 * is now + the same timeout, so arming order is deadline order).
 *
 * Thread-safety: sk_srv_next, sk_srv_reply, sk_srv_forget, sk_srv_peer,
 * sk_srv_ports and sk_srv_stop may be called from any thread, without the
 * GIL (the binding releases it while they may wait).  No Python.
 */
#ifndef SK_SERVER_H
#define SK_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "frame.h"
#include "hub.h"
#include "sk.h"

#define SK_SRV_OUT_CAP (1024 * 1024) /* default out_cap, bytes */

typedef struct sk_srv sk_srv;

typedef struct sk_srv_config {
    int listen_fd;           /* non-blocking listener; stays the caller's */
    sk_framing framing;      /* SK_FRAMING_CONTROL iff heartbeats are on */
    int64_t read_timeout_ns; /* 0: none */
    int64_t write_timeout_ns;/* 0: none */
    int64_t hb_interval_ns;  /* 0: heartbeats off */
    int64_t hb_timeout_ns;
    sk_hub *hub;             /* the hub for heartbeats (or NULL when off) */
    uint64_t max_conns;      /* 0: no cap */
    size_t out_cap;          /* 0: SK_SRV_OUT_CAP */
    int keepalive;           /* nonzero: each client gets sk_set_keepalive
                                (sock.h) with the four values below */
    int ka_idle_s, ka_interval_s, ka_count, ka_user_timeout_ms;
    int inline_turns;        /* nonzero: no reactor thread; the one thread
                                that calls sk_srv_next runs the reactor's
                                turns itself (see "Inline mode" above) */
} sk_srv_config;

/* One message of a batch: its payload is data[off .. off + len) of the
 * batch's buffer. */
typedef struct sk_srv_msg {
    uint64_t cid;  /* client id */
    uint64_t seq;  /* plain frame: the client's sequence number (1, 2 ...);
                      correlated frame: 0 */
    uint64_t id;   /* correlation id, if has_id */
    int has_id;
    size_t off, len;
} sk_srv_msg;

enum {
    SK_SRV_END = 0,      /* a client ended: err says why */
    SK_SRV_STOPPED = 1,  /* a client was closed by sk_srv_stop */
    SK_SRV_REJECTED = 2, /* a client over max_conns was reset */
    SK_SRV_FAILED = 3,   /* accept failed (err); no client */
    SK_SRV_ACCEPTED = 4, /* a client was accepted (its peer; no err); out
                            of memory: not reported (st.accepted counts it) */
};

/* One event of a batch other than a message. */
typedef struct sk_srv_event {
    uint64_t cid;
    int kind; /* SK_SRV_* above */
    int port; /* the peer's port, -1 if unknown */
    char host[48];
    sk_err err;
} sk_srv_event;

typedef struct sk_srv_batch {
    sk_buf data;
    sk_srv_msg *msgs;
    size_t nmsgs, msgs_cap;
    sk_srv_event *events;
    size_t nevents, events_cap;
    struct sk_srv_batch *next;
} sk_srv_batch;

/* What a handler answers to one message. */
enum {
    SK_SRV_REPLY = 0, /* send payload (with id if has_id) */
    SK_SRV_NONE = 1,  /* send nothing */
    SK_SRV_CLOSE = 2, /* the handler failed on a plain request: send the
                         replies before this one, then close the client */
};

typedef struct sk_srv_answer {
    uint64_t cid, seq, id;
    int has_id, kind;
    const void *base; /* payload (SK_SRV_REPLY), borrowed for the call */
    size_t len;
} sk_srv_answer;

/* replies: counted when the reactor applies them, so a reply written on
 * the direct path to a client that then fell idle may not be counted yet. */
typedef struct sk_srv_stats {
    uint64_t conns;    /* clients held now (ended but not forgotten too) */
    uint64_t accepted, rejected, turns, batches, messages, replies, writes;
} sk_srv_stats;

/* Contract: start the reactor thread on cfg->listen_fd.  *out is the
 * caller's: sk_srv_stop, then sk_srv_free.  SK_OK or SK_ERR (epoll_create1,
 * eventfd, pthread_create, out of memory). */
int sk_srv_new(const sk_srv_config *cfg, sk_srv **out, sk_err *err);

/* Contract: close every client (each gets an SK_SRV_STOPPED event), stop
 * and join the reactor thread.  Idempotent; any thread; waits at most for
 * one reactor turn.  The listener is not closed.  Inline mode: sets the
 * flag and wakes the thread in sk_srv_next, which does the closing; does
 * not wait. */
void sk_srv_stop(sk_srv *s);

/* Contract: free everything (after sk_srv_stop, with no thread inside
 * sk_srv_next).  Batches still queued are freed. */
void sk_srv_free(sk_srv *s);

/* Contract: wait until a batch is ready or the deadline passes (clock.h;
 * SK_NO_DEADLINE: forever); inline mode: one thread only, which runs the
 * reactor's turns meanwhile.  SK_OK with *out (the caller's:
 * sk_srv_batch_free), SK_TIMEOUT, or SK_ERR when the server stopped and
 * every batch was taken (err: SK_E_CLOSED). */
int sk_srv_next(sk_srv *s, int64_t deadline, sk_srv_batch **out, sk_err *err);

/* Contract: free a batch taken with sk_srv_next. */
void sk_srv_batch_free(sk_srv_batch *b);

/* Storage a given-back batch keeps per array (bytes). */
#define SK_SRV_BATCH_KEEP (64 * 1024)

/* Contract: any thread; give back a batch taken with sk_srv_next instead
 * of freeing it: the server reuses it (see server.c). */
void sk_srv_batch_done(sk_srv *s, sk_srv_batch *b);

/* Contract: hand n answers to the reactor (payloads are copied).  Answers
 * to clients that ended are dropped.  SK_OK, or SK_ERR (out of memory:
 * nothing queued). */
int sk_srv_reply(sk_srv *s, const sk_srv_answer *a, size_t n, sk_err *err);

/* Contract: the owner recorded the ends of these clients: free their
 * slots (asynchronously, in the reactor's next turn). */
int sk_srv_forget(sk_srv *s, const uint64_t *cids, size_t n, sk_err *err);

/* Contract: the peer of client cid into host (cap bytes) and *port;
 * SK_OK, or SK_ERR if cid is not held (any more). */
int sk_srv_peer(sk_srv *s, uint64_t cid, char *host, size_t cap, int *port);

/* Contract: the peer ports of the clients held (up to cap of them; -1 for
 * an unknown port) into ports; returns how many clients are held (which
 * may exceed cap).  O(clients): for tests and tools, not per event. */
size_t sk_srv_ports(sk_srv *s, int *ports, size_t cap);

/* Contract: a snapshot of the counters; any thread. */
void sk_srv_get_stats(sk_srv *s, sk_srv_stats *st);

#endif /* SK_SERVER_H */
