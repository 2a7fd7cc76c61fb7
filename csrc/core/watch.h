/*
 * watch.h - follow one TCP connection's state over time, in a sampler
 * thread of its own (a plain pthread: no Python, no GIL).
 *
 * What is watched: a socket descriptor (the fd the application holds), a
 * 4-tuple, or both.  The sampler never dup()s the fd: a dup would keep the
 * socket open, so the application's close() would no longer close the
 * connection, which is exactly what one wants to watch.  Instead:
 *
 *   1. fd phase.  Each tick reads the state with getsockopt(TCP_INFO)
 *      (1 byte, about 1 us) and then checks getsockopt(SO_COOKIE) against
 *      the cookie captured at start.  The check comes *after* the read: a
 *      reading is kept only if the fd still named our socket afterwards,
 *      so a state read from a socket that reused the fd number is never
 *      recorded.  When the fd reads CLOSE while its 4-tuple is known, the
 *      state comes from sock_diag instead: a socket that was shut down and
 *      kept reads CLOSE while its TIME_WAIT lives on as a separate kernel
 *      object with the same 4-tuple and cookie (STATES.md).
 *   2. diag phase, for good, once the fd is closed (EBADF), is no longer a
 *      TCP socket, or names another socket (cookie mismatch): each tick is
 *      an exact sock_diag lookup by 4-tuple and cookie (about 15-30 us),
 *      which follows the orphan through FIN_WAIT_1/2, CLOSING, LAST_ACK and
 *      TIME_WAIT.  The kernel's listener fallback is detected by diag.c.
 *      Not found means CLOSED, and then nothing more can happen to that
 *      socket: the sampler ends by itself ("finished").
 *
 * A 4-tuple target without an fd starts in the diag phase.  It locks onto
 * the cookie of the first socket found; when that socket is gone it
 * records CLOSED, unlocks, and follows the next socket to use the 4-tuple.
 * It runs until stopped.
 *
 * What is recorded, with CLOCK_MONOTONIC timestamps:
 *   - a transition (t_ns, state) whenever the state differs from the last
 *     one seen (the first sample is always one);
 *   - with sample_info, an info sample (rtt, cwnd, ...) whenever one of its
 *     values changed since the last one kept (not for TIME_WAIT sockets,
 *     which have no tcp_info).
 * Both go into fixed-size rings allocated at start: memory is bounded by
 * max_transitions * 16 + max_samples * 40 bytes.  A full ring overwrites
 * its oldest record and counts it as dropped.
 *
 * Timing: ticks are at start + k * interval on CLOCK_MONOTONIC (a late
 * tick is not made up for: missed ticks are skipped, so the rate never
 * bursts).  The thread sets its timer slack to 1 us, so 1 kHz is cheap
 * and 10 kHz works.  The sampler blocks all signals, so no syscall of the
 * application's threads sees an EINTR because of it.
 *
 * Thread safety: every function may be called from any thread; the rings
 * are read under a mutex (a copy).  sk_watch_stop may be called by several
 * threads at once and many times; sk_watch_free must be the last call.
 * After fork() the child has no sampler: there the watch reads as
 * stopped, keeps its records, stop does nothing, and free releases the
 * memory without touching the locks (the fork may have copied them
 * held).
 */
#ifndef SK_WATCH_H
#define SK_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "sk.h"

#define SK_WATCH_DEFAULT_INTERVAL_NS 1000000LL /* 1 ms: 1 kHz */
#define SK_WATCH_MIN_INTERVAL_NS 20000LL       /* 20 us */
#define SK_WATCH_MAX_INTERVAL_NS 3600000000000LL
#define SK_WATCH_DEFAULT_TRANSITIONS 4096
#define SK_WATCH_DEFAULT_SAMPLES 65536
#define SK_WATCH_MAX_RING (1u << 22)

typedef struct sk_watch sk_watch; /* opaque */

typedef struct sk_watch_target {
    int fd;                   /* a TCP socket, or -1: follow the tuple only */
    int has_tuple;            /* fd >= 0: ignored, read from the fd */
    sk_diag_lookup_req tuple; /* family, src, sport, dst, dport (local =
                                 src); cookie, flags, timeout ignored */
} sk_watch_target;

typedef struct sk_watch_config {
    int64_t interval_ns;     /* <= 0: SK_WATCH_DEFAULT_INTERVAL_NS */
    int sample_info;         /* also record rtt/cwnd samples */
    size_t max_transitions;  /* 0: default */
    size_t max_samples;      /* 0: default; unused without sample_info */
} sk_watch_config;

typedef struct sk_watch_transition {
    int64_t t_ns;            /* CLOCK_MONOTONIC, absolute */
    int32_t state;           /* Linux state number; 7 (CLOSE) when gone */
    int32_t via_diag;        /* 1 if seen through sock_diag */
} sk_watch_transition;

typedef struct sk_watch_sample {
    int64_t t_ns;
    int32_t state;
    uint32_t rtt_us;
    uint32_t rttvar_us;
    uint32_t snd_cwnd;       /* segments */
    uint32_t snd_ssthresh;   /* segments */
    uint32_t unacked;        /* segments in flight */
    uint32_t total_retrans;
    uint32_t pad_;
} sk_watch_sample;

typedef struct sk_watch_stats {
    int64_t start_ns;        /* when sk_watch_start began */
    int64_t first_ns;        /* first sample */
    int64_t last_ns;         /* latest sample */
    int64_t handover_ns;     /* fd phase -> diag phase, or 0 */
    uint64_t samples;        /* ticks sampled */
    uint64_t lookups;        /* sock_diag lookups done */
    uint64_t transitions;    /* recorded in total (kept + dropped) */
    uint64_t transitions_dropped;
    uint64_t info_samples;   /* recorded in total (kept + dropped) */
    uint64_t info_dropped;
    uint64_t cookie;         /* socket cookie followed, 0 if none yet */
    int state;               /* latest state, -1 before the first sample */
    int running;             /* the sampler thread has not ended */
    int finished;            /* ended because the socket is gone for good */
    int fd_phase;            /* still reading the fd */
    int has_tuple;           /* the 4-tuple is known */
    sk_diag_lookup_req tuple;/* valid if has_tuple */
    sk_err err;              /* why the sampler ended with an error, else
                                code SK_E_NONE */
} sk_watch_stats;

/*
 * Contract: validate t and c, capture the fd's cookie and 4-tuple (if
 * connected), allocate the rings, take the first sample in the calling
 * thread (so the state at start is always recorded), then start the
 * sampler thread.  On SK_OK *out is a running watch the caller owns (free
 * it with sk_watch_free).  On SK_ERR nothing is left behind: err says why
 * ("getsockopt(TCP_INFO)" for an fd that is not a TCP socket,
 * "pthread_create", SK_E_ARG, SK_E_NOMEM).  No GIL needed; the caller may
 * release it (the first sample can be a sock_diag round trip).
 */
int sk_watch_start(const sk_watch_target *t, const sk_watch_config *c,
                   sk_watch **out, sk_err *err);

/*
 * Contract: ask the sampler to end, wake it, and join it.  Returns within
 * about one sample's time (not one interval).  Idempotent and safe from
 * several threads at once (the others wait for the first to join).  Does
 * not free.  No GIL needed and none must be held by a thread the sampler
 * could wait for (the sampler never takes the GIL, so any caller may keep
 * it, but releasing it is kinder to other Python threads).
 */
void sk_watch_stop(sk_watch *w);

/* What sk_watch_follow found. */
enum {
    SK_WATCH_NOT_CLOSING = 0, /* not closing: nothing more to follow */
    SK_WATCH_CLOSED = 1,      /* TIME_WAIT or CLOSED recorded, or ended */
    SK_WATCH_STILL_CLOSING = 2, /* the deadline came first */
};

/*
 * Contract: follow the connection to the end of its close.  Wait until
 * TIME_WAIT or CLOSED is recorded, or the sampler ends (then
 * SK_WATCH_CLOSED), or until deadline_ns (CLOCK_MONOTONIC; SK_NO_DEADLINE:
 * no limit) with the connection still in FIN_WAIT_1, FIN_WAIT_2, CLOSING
 * or LAST_ACK (SK_WATCH_STILL_CLOSING).  It decides on samples taken at or
 * after since_ns (a close just before the call shows): if such a sample
 * finds the connection in any other state (ESTABLISHED, CLOSE_WAIT, ...),
 * nothing is closing it and it returns SK_WATCH_NOT_CLOSING at once.  At
 * the deadline with no such sample yet, SK_WATCH_STILL_CLOSING.  No GIL
 * needed (it blocks: release it); any thread.
 */
int sk_watch_follow(sk_watch *w, int64_t since_ns, int64_t deadline_ns);

/* Contract: stop (as above) and free everything; w may be NULL.  The
 * caller must ensure no other thread still uses w. */
void sk_watch_free(sk_watch *w);

/*
 * Contract: copy up to cap transitions, oldest first, into out (out may
 * be NULL with cap 0 to ask for the count).  Returns how many are kept in
 * the ring (which may exceed cap).  Takes the watch's mutex briefly.
 */
size_t sk_watch_transitions(sk_watch *w, sk_watch_transition *out,
                            size_t cap);

/* Contract: the same for info samples. */
size_t sk_watch_samples(sk_watch *w, sk_watch_sample *out, size_t cap);

/* Contract: a consistent snapshot of the counters into *st.  Takes the
 * mutex briefly. */
void sk_watch_get_stats(sk_watch *w, sk_watch_stats *st);

#endif /* SK_WATCH_H */
