/*
 * proxy.c - the fault-injection proxy (see proxy.h).
 *
 * Shape: one reactor thread runs an epoll loop over the listener, an
 * eventfd (control wake-ups) and, per connection ("pair"), the client
 * socket and the upstream socket.  Level-triggered; a socket is in the
 * epoll set only while we want something from it (EPOLLIN while its
 * direction's buffer has room, EPOLLOUT while a write hit EAGAIN), so a
 * socket the peer has closed never makes the loop spin.
 *
 * Each direction of a pair ("dir") is a ring buffer of bytes plus a ring of
 * chunk descriptors {length, release time}.  Bytes are stamped when read
 * (latency, jitter) with release times that never decrease, so the chunk
 * ring is a FIFO of timers; write-side faults (stall, bandwidth, slicer,
 * limit_data) decide how much of the due head goes out and when the next
 * write may happen.  Every pair has one wake-up time, the earliest of its
 * directions' next releases and its fault deadlines (reset_peer, stall
 * timeout, slow_close); pairs sit in a binary min-heap by wake-up time and
 * the heap's top is epoll's timeout (epoll_pwait2: nanoseconds).
 *
 * Control: the fault table lives under p->mu; a change writes the eventfd
 * and the reactor copies the table (its "snapshot"), recomputes the
 * effective faults of each direction and re-pumps every pair.  The caller
 * waits (condition variable, generation counter) until the reactor has
 * done so, so that a fault is in force when sk_proxy_add returns: a test
 * that adds a fault and then sends knows its bytes are affected.
 *
 * Ending a pair: an orderly close shuts down writing, reads and discards
 * what is still queued (a close with unread data would send RST instead of
 * FIN) and closes; an abort sets SO_LINGER {1, 0} so close sends RST.  A
 * pair's memory is freed only after the current batch of epoll events,
 * since a later event of the same batch may still point at it.
 */
#include "proxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/heap.h"
#include "core/sock.h"
#include "core/sys.h"
#include "rand.h"

#define SK_PX_NEVER INT64_MAX
#define SK_PX_EVENTS 64
#define SK_PX_ACCEPT_BATCH 32
#define SK_PX_DRAIN_MAX (256 * 1024)       /* discarded before a close */
#define SK_PX_ACCEPT_PAUSE_NS 100000000LL  /* after EMFILE and friends */
#define SK_PX_BW_SLICES 1000               /* bandwidth: 1 ms of bytes a write */
/* bandwidth: a wake-up up to this late after the bytes became writable is
 * the reactor's lateness (a busy machine), carried forward; more is the
 * sender's idleness, which earns nothing (at most 5 ms worth of bytes may
 * go out back to back after an idle spell) */
#define SK_PX_BW_CREDIT_NS 5000000LL
#define SK_PX_DEFAULT_CONNS 1024u
#define SK_PX_SYNC_S 2 /* longest wait for the reactor to apply a change */
/* Parameter bounds: far beyond any use, small enough that sums of times
 * and sizes cannot overflow. */
#define SK_PX_MAX_DELAY (366LL * 86400 * 1000000000LL)
#define SK_PX_MAX_SLICE (1u << 30)
#define SK_PX_MAX_RATE (1ULL << 50) /* bytes/s: a petabyte */
#define SK_PX_GROW_MIN 65536        /* a latency buffer grows by at least */

/* epoll_pwait2 (ns timeouts) is in glibc from 2.35; older builds round the
 * timeout up to milliseconds. */
#if defined(__GLIBC__) &&                                                  \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#define SK_PX_HAVE_PWAIT2 1
#else
#define SK_PX_HAVE_PWAIT2 0
#endif

enum { SK_SIDE_CLIENT = 0, SK_SIDE_SERVER = 1 };
/* Direction index d: 0 upstream, 1 downstream.  Its source is side d, its
 * sink side 1 - d; its SK_DIR_* bit is 1u << d. */
enum { SK_END_PAIR = 0, SK_END_LISTEN = 1, SK_END_WAKE = 2 };
enum { SK_CLOSE_ORDERLY = 0, SK_CLOSE_ABORT = 1 };

typedef struct sk_pxchunk {
    int64_t release; /* monotonic ns; 0: at once */
    size_t len;
} sk_pxchunk;

struct sk_pxpair;

typedef struct sk_pxend {
    int kind;       /* SK_END_* */
    int fd;         /* -1 once closed */
    int side;       /* SK_SIDE_* (pairs only) */
    uint32_t mask;  /* epoll interest now; 0: not in the epoll set */
    struct sk_pxpair *pair;
} sk_pxend;

typedef struct sk_pxdir {
    unsigned char *buf; /* ring of cap bytes */
    size_t cap, head, used;
    sk_pxchunk q[SK_PROXY_QMAX]; /* ring of chunk descriptors */
    unsigned qhead, qlen;
    int64_t last_release; /* release times never go backwards */
    int src_eof;          /* the source sent FIN */
    int64_t eof_ns;       /* ... when we read it */
    int64_t last_write_ns; /* slow_close counts from max(eof, last write) */
    int shut_sent;        /* we shut down the sink's writing */
    int want_write;       /* the last write hit EAGAIN: wait for EPOLLOUT */
    int64_t ready_ns;     /* the head bytes are writable since (arrival in
                             an empty buffer, the sink's EPOLLOUT, a fault
                             change): pacing never credits time before */
    int64_t pace_ns;      /* bandwidth: no write before this */
    uint64_t pace_rem;    /* ... ns x rate not yet turned into pace */
    int64_t rate_since;   /* the bandwidth in force took effect then */
    int64_t slice_ns;     /* slicer: no write before this */
    size_t slice_left;    /* slicer: bytes left in the current slice */
    uint64_t limit_id;    /* limit_data fault being counted against */
    uint64_t limit_base;  /* `fwd` when it started to apply */
    _Atomic uint64_t fwd; /* bytes written to the sink */
    _Atomic uint64_t held; /* == used, readable by other threads */
    uint64_t dropped;     /* bytes a timeout fault discarded */
} sk_pxdir;

typedef struct sk_pxfault {
    uint64_t id;
    int64_t added_ns;
    sk_fault f;
} sk_pxfault;

/* The faults acting on one direction of one pair, folded from the
 * snapshot (a fault's toxicity decides per pair whether it is in). */
typedef struct sk_pxeff {
    int64_t latency_ns, jitter_ns; /* summed over latency faults */
    uint64_t rate;                 /* lowest bandwidth; 0: none */
    int stall;
    int timeout;                   /* drop what is read */
    int nreset;                    /* reset_peer faults covering it */
    int64_t slow_close_ns;         /* longest */
    int slicer;                    /* newest slicer wins */
    uint64_t slice_size, slice_var;
    int64_t slice_delay_ns;
    uint64_t limit_id, limit_bytes; /* newest limit_data; id 0: none */
} sk_pxeff;

/* A reset_peer fault armed on a pair: the first byte it saw came then. */
typedef struct sk_pxarm {
    uint64_t id;
    int64_t first_ns;
} sk_pxarm;

typedef struct sk_pxpair {
    sk_pxend end[2];
    sk_pxdir dir[2];
    int connecting; /* upstream connect in progress (written under mu) */
    int dead;
    int64_t start_ns;
    int64_t reset_at;
    unsigned reset_dirs;
    unsigned reset_hold;  /* directions an armed reset_peer holds: the
                             data that triggered it never arrives */
    int64_t stall_close_at;
    sk_pxeff eff[2];      /* the faults acting on each direction */
    uint64_t salt;        /* draws this pair's toxicity decisions */
    sk_pxarm arm[SK_PROXY_MAX_FAULTS];
    unsigned narm;
    sk_heap_node wake; /* key: the next wake-up (p->heap, when timed) */
    struct sockaddr_storage client_addr; /* immutable */
    struct sockaddr_storage local_addr;  /* written under mu */
    struct sk_pxpair *prev, *next;       /* live list: changed under mu */
    struct sk_pxpair *zombie_next;
} sk_pxpair;

struct sk_proxy {
    /* set before the thread starts, read-only afterwards */
    struct sockaddr_storage up_addr;
    socklen_t up_len;
    size_t bufsize;
    unsigned max_conns;
    int lfd, epfd, evfd;
    pthread_t thread;

    /* shared with the control threads, under mu */
    pthread_mutex_t mu;
    pthread_cond_t applied_cv; /* signalled when `applied` moves */
    uint64_t gen;              /* bumped by every change of the table */
    uint64_t applied;          /* the gen the reactor works with */
    int running;               /* the reactor thread has not exited */
    int disabled;              /* sk_proxy_set_enabled(0) */
    int new_lfd, have_new_lfd; /* a listener for the reactor to adopt */
    struct sockaddr_storage listen_addr; /* where we listen (re-enable) */
    socklen_t listen_len;
    sk_pxfault faults[SK_PROXY_MAX_FAULTS];
    unsigned nfaults;
    uint64_t next_id;
    sk_pxpair *live_head, *live_tail;
    char last_err[SK_ERRMSG_MAX];
    int last_errno;

    /* shared, atomic */
    atomic_int stop;
    _Atomic uint64_t accepted, active, bytes[2], buffered, buffered_peak,
        upfail, resets, limits, stall_closes;

    /* the reactor's own */
    sk_pxend lend, wend;
    sk_pxfault snap[SK_PROXY_MAX_FAULTS];
    unsigned nsnap;
    sk_heap heap;   /* the pairs' wake nodes; room for max_conns */
    sk_pxpair *zombies;
    uint64_t rng;
    int64_t accept_pause_until;
    int pwait2_missing;
};

/* ------------------------------------------------------------ small bits */

/* Everything below marked "Reactor" runs only in the reactor thread and
 * touches loop-owned state without locks; no function here needs the GIL
 * and none frees what its caller owns unless it says so. */

/* Contract: pure (sk_px_min below too). */
static int64_t sk_px_max(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t sk_px_min(int64_t a, int64_t b) { return a < b ? a : b; }

/* The proxy's next random number (rand.h). */
static uint64_t sk_px_rand(sk_proxy *p)
{
    return sk_splitmix64(&p->rng);
}

/* Uniform in [lo, hi]. */
static int64_t sk_px_uniform(sk_proxy *p, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1; /* 0: the full range */
    int64_t v = lo;

    if (hi > lo)
        v = span == 0 ? (int64_t)sk_px_rand(p)
                      : lo + (int64_t)(sk_px_rand(p) % span);
    return v;
}

/* Record an error for sk_proxy_last_error.  Reactor thread. */
static void sk_px_note(sk_proxy *p, const char *what, int e)
{
    char tmp[96];
    const char *s = strerror_r(e, tmp, sizeof(tmp));

    pthread_mutex_lock(&p->mu);
    snprintf(p->last_err, sizeof(p->last_err), "%s: %s", what, s);
    p->last_errno = e;
    pthread_mutex_unlock(&p->mu);
}

/* Contract: any thread.  Wakes the reactor; a saturated counter (EAGAIN)
 * means a wake-up is pending anyway. */
static void sk_px_wake(sk_proxy *p)
{
    uint64_t one = 1;
    ssize_t r;

    do {
        r = write(p->evfd, &one, sizeof(one));
    } while (r < 0 && errno == EINTR);
}

/* ------------------------------------------------------------ timer heap */

/* Set c's wake-up time; SK_PX_NEVER takes it out of the heap.  The heap
 * has room for max_conns pairs, and there are never more, so the push
 * cannot fail.  Reactor. */
static void sk_timer_set(sk_proxy *p, sk_pxpair *c, int64_t wake)
{
    if (wake == SK_PX_NEVER) {
        sk_heap_remove(&p->heap, &c->wake);
    } else if (sk_heap_contains(&c->wake)) {
        c->wake.key = wake;
        sk_heap_update(&p->heap, &c->wake);
    } else {
        c->wake.key = wake;
        (void)sk_heap_push(&p->heap, &c->wake);
    }
}

/* ---------------------------------------------------------------- faults */

/* Contract: pure. */
int sk_fault_check(const sk_fault *f, sk_err *err)
{
    int rc = SK_OK;

    if (f->dirs == 0 || (f->dirs & ~SK_DIR_BOTH) != 0) {
        rc = sk_err_set(err, SK_E_ARG, "fault directions must be a "
                        "non-empty subset of upstream|downstream");
        goto done;
    }
    if (f->delay_ns < 0 || f->jitter_ns < 0 || f->delay_ns > SK_PX_MAX_DELAY ||
        f->jitter_ns > SK_PX_MAX_DELAY) {
        rc = sk_err_set(err, SK_E_ARG,
                        "fault delays must be 0..%lld ns (a year)",
                        (long long)SK_PX_MAX_DELAY);
        goto done;
    }
    if (!(f->spare >= 0.0 && f->spare <= 1.0)) {
        rc = sk_err_set(err, SK_E_ARG, "a fault's spare probability "
                        "(1 - toxicity) must be 0..1");
        goto done;
    }
    switch (f->kind) {
    case SK_FAULT_LATENCY:
    case SK_FAULT_STALL:
    case SK_FAULT_TIMEOUT:
    case SK_FAULT_RESET_PEER:
    case SK_FAULT_SLOW_CLOSE:
    case SK_FAULT_LIMIT_DATA:
        break;
    case SK_FAULT_BANDWIDTH:
        if (f->rate_Bps == 0 || f->rate_Bps > SK_PX_MAX_RATE)
            rc = sk_err_set(err, SK_E_ARG, "bandwidth rate must be "
                            "1..%llu bytes/s",
                            (unsigned long long)SK_PX_MAX_RATE);
        break;
    case SK_FAULT_SLICER:
        if (f->size == 0 || f->size_var >= f->size ||
            f->size > SK_PX_MAX_SLICE)
            rc = sk_err_set(err, SK_E_ARG, "slicer needs 1 <= average size "
                            "<= %u and size variation < average size",
                            (unsigned)SK_PX_MAX_SLICE);
        break;
    default:
        rc = sk_err_set(err, SK_E_ARG, "unknown fault kind %d",
                        (int)f->kind);
        break;
    }
done:
    return rc;
}

/* Does fault s act on pair c?  Its toxicity is drawn once per pair and
 * fault (a hash of the pair's salt and the fault's id), so the answer never
 * changes while both live.  Pure. */
static int sk_fault_hits(const sk_pxpair *c, const sk_pxfault *s)
{
    uint64_t z = c->salt ^ (s->id * 0x9E3779B97F4A7C15ULL);
    int hit = 1;

    if (s->f.spare > 0.0) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        hit = (double)(z >> 11) * 0x1p-53 >= s->f.spare;
    }
    return hit;
}

/* Fold the snapshot into pair c's effective faults per direction.
 * Reactor. */
static void sk_pair_fold(sk_proxy *p, sk_pxpair *c)
{
    unsigned i;
    int d;

    memset(c->eff, 0, sizeof(c->eff));
    for (i = 0; i < p->nsnap; i++) {
        const sk_pxfault *s = &p->snap[i];
        const sk_fault *f = &s->f;

        if (!sk_fault_hits(c, s))
            continue;
        for (d = 0; d < 2; d++) {
            sk_pxeff *e = &c->eff[d];

            if (!(f->dirs & (1u << d)))
                continue;
            switch (f->kind) {
            case SK_FAULT_LATENCY:
                e->latency_ns += f->delay_ns;
                e->jitter_ns += f->jitter_ns;
                break;
            case SK_FAULT_BANDWIDTH:
                if (e->rate == 0 || f->rate_Bps < e->rate)
                    e->rate = f->rate_Bps;
                break;
            case SK_FAULT_STALL:
                e->stall = 1;
                break;
            case SK_FAULT_TIMEOUT:
                e->timeout = 1;
                break;
            case SK_FAULT_SLOW_CLOSE:
                e->slow_close_ns = sk_px_max(e->slow_close_ns, f->delay_ns);
                break;
            case SK_FAULT_SLICER:
                e->slicer = 1;
                e->slice_size = f->size;
                e->slice_var = f->size_var;
                e->slice_delay_ns = f->delay_ns;
                break;
            case SK_FAULT_LIMIT_DATA:
                e->limit_id = s->id;
                e->limit_bytes = f->bytes;
                break;
            case SK_FAULT_RESET_PEER:
                e->nreset++;
                break;
            }
        }
    }
}

/* The snapshot's fault `id` if it acts on pair c, else NULL.  Reactor. */
static const sk_pxfault *sk_pair_fault(const sk_proxy *p, const sk_pxpair *c,
                                       uint64_t id)
{
    const sk_pxfault *r = NULL;
    unsigned i;

    for (i = 0; i < p->nsnap && r == NULL; i++)
        if (p->snap[i].id == id && sk_fault_hits(c, &p->snap[i]))
            r = &p->snap[i];
    return r;
}

/* Pair c's reset time from its armed reset_peer faults (those gone are
 * forgotten).  Reactor. */
static void sk_pair_reset_times(sk_proxy *p, sk_pxpair *c)
{
    unsigned i, kept = 0;

    c->reset_at = SK_PX_NEVER;
    c->reset_dirs = 0;
    c->reset_hold = 0;
    for (i = 0; i < c->narm; i++) {
        const sk_pxfault *s = sk_pair_fault(p, c, c->arm[i].id);
        int64_t at;

        if (s == NULL || s->f.kind != SK_FAULT_RESET_PEER)
            continue;
        c->arm[kept++] = c->arm[i];
        c->reset_hold |= s->f.dirs;
        at = c->arm[i].first_ns + s->f.delay_ns;
        if (at < c->reset_at) {
            c->reset_at = at;
            c->reset_dirs = s->f.dirs;
        } else if (at == c->reset_at) {
            c->reset_dirs |= s->f.dirs;
        }
    }
    c->narm = kept;
}

/* Bytes were read in direction d at `now`: arm every reset_peer fault of
 * pair c covering d that is not armed yet (toxiproxy times a reset from
 * the first data, so an idle connection is never reset).  Reactor. */
static void sk_pair_arm(sk_proxy *p, sk_pxpair *c, int d, int64_t now)
{
    unsigned i, j;
    int changed = 0;

    for (i = 0; i < p->nsnap; i++) {
        const sk_pxfault *s = &p->snap[i];

        if (s->f.kind != SK_FAULT_RESET_PEER || !(s->f.dirs & (1u << d)) ||
            !sk_fault_hits(c, s))
            continue;
        for (j = 0; j < c->narm && c->arm[j].id != s->id; j++)
            ;
        if (j < c->narm || c->narm >= SK_PROXY_MAX_FAULTS)
            continue;
        c->arm[c->narm].id = s->id;
        c->arm[c->narm].first_ns = now;
        c->narm++;
        changed = 1;
    }
    if (changed)
        sk_pair_reset_times(p, c);
}

/* Per-pair fault state: effective faults, deadlines, limit_data
 * baselines; a direction whose faults changed credits no time before now
 * to its pacing.  Reactor. */
static void sk_pair_apply(sk_proxy *p, sk_pxpair *c)
{
    sk_pxeff old[2];
    int64_t now = sk_now_ns();
    unsigned i;
    int d;

    memcpy(old, c->eff, sizeof(old));
    sk_pair_fold(p, c);
    sk_pair_reset_times(p, c);
    c->stall_close_at = SK_PX_NEVER;
    for (i = 0; i < p->nsnap; i++) {
        const sk_pxfault *s = &p->snap[i];
        int64_t at = sk_px_max(s->added_ns, c->start_ns) + s->f.delay_ns;

        if ((s->f.kind == SK_FAULT_STALL || s->f.kind == SK_FAULT_TIMEOUT) &&
            s->f.delay_ns > 0 && sk_fault_hits(c, s))
            c->stall_close_at = sk_px_min(c->stall_close_at, at);
    }
    for (d = 0; d < 2; d++) {
        sk_pxdir *x = &c->dir[d];
        const sk_pxeff *e = &c->eff[d];

        /* a slice in progress ends: a new slicer's sizes apply at once
         * (found by tests/fuzz/fuzz_proxy.c) */
        x->slice_left = 0;
        if (memcmp(&old[d], e, sizeof(*e)) != 0)
            x->ready_ns = sk_px_max(x->ready_ns, now);
        if (old[d].rate != e->rate) {
            x->pace_ns = sk_px_min(x->pace_ns, now);
            x->pace_rem = 0;
            x->rate_since = now;
        }
        if (old[d].slicer != e->slicer ||
            old[d].slice_delay_ns != e->slice_delay_ns)
            x->slice_ns = sk_px_min(x->slice_ns, now);
        if (x->limit_id != e->limit_id) {
            x->limit_id = e->limit_id;
            x->limit_base = atomic_load_explicit(&x->fwd,
                                                 memory_order_relaxed);
        }
    }
}

/* ------------------------------------------------------------ epoll set */

/* Make e's epoll interest `want` (0: leave the set).  0 or -1 (errno). */
static int sk_end_want(sk_proxy *p, sk_pxend *e, uint32_t want)
{
    struct epoll_event ev;
    int op, rc = 0;

    if (e->fd < 0 || want == e->mask)
        goto done;
    memset(&ev, 0, sizeof(ev));
    ev.events = want;
    ev.data.ptr = e;
    op = want == 0 ? EPOLL_CTL_DEL
                   : (e->mask == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
    rc = epoll_ctl(p->epfd, op, e->fd, &ev);
    if (rc == 0)
        e->mask = want;
done:
    return rc;
}

/* Listen while there is room for a connection and accepting is not paused
 * after running out of descriptors. */
static void sk_px_listen_mask(sk_proxy *p, int64_t now)
{
    uint64_t active = atomic_load_explicit(&p->active, memory_order_relaxed);
    uint32_t want = 0;

    if (active < p->max_conns && now >= p->accept_pause_until)
        want = EPOLLIN;
    if (sk_end_want(p, &p->lend, want) != 0)
        sk_px_note(p, "epoll_ctl(listener)", errno);
}

/* ------------------------------------------------------------ ending */

/* Orderly close: FIN, discard unread input (so close sends no RST), close.
 * scratch is a buffer of n bytes. */
static void sk_px_close_orderly(int fd, unsigned char *scratch, size_t n)
{
    size_t drained = 0;
    ssize_t r;

    shutdown(fd, SHUT_WR);
    while (drained < SK_PX_DRAIN_MAX) {
        r = recv(fd, scratch, n, MSG_DONTWAIT);
        if (r > 0) {
            drained += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break;
    }
    close(fd);
}

/* End pair c: close (how_client) the client side and (how_server) the
 * server side, forget the pair.  Its memory goes when the event batch is
 * done.  Reactor. */
static void sk_pair_end(sk_proxy *p, sk_pxpair *c, int how_client,
                        int how_server)
{
    int s, d;

    if (c->dead)
        goto done;
    c->dead = 1;
    for (s = 0; s < 2; s++) {
        sk_pxend *e = &c->end[s];
        int how = s == SK_SIDE_CLIENT ? how_client : how_server;

        if (e->fd < 0)
            continue;
        if (e->mask != 0)
            epoll_ctl(p->epfd, EPOLL_CTL_DEL, e->fd, NULL);
        e->mask = 0;
        if (how == SK_CLOSE_ABORT)
            sk_abort(e->fd, NULL);
        else if (s == SK_SIDE_SERVER && c->connecting)
            close(e->fd);
        else
            sk_px_close_orderly(e->fd, c->dir[s].buf, c->dir[s].cap);
        e->fd = -1;
    }
    for (d = 0; d < 2; d++) {
        atomic_fetch_sub_explicit(&p->buffered, c->dir[d].used,
                                  memory_order_relaxed);
        c->dir[d].used = 0;
        atomic_store_explicit(&c->dir[d].held, 0, memory_order_relaxed);
    }
    sk_timer_set(p, c, SK_PX_NEVER);
    pthread_mutex_lock(&p->mu);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        p->live_head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        p->live_tail = c->prev;
    c->prev = c->next = NULL;
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
    c->zombie_next = p->zombies;
    p->zombies = c;
    sk_px_listen_mask(p, sk_now_ns());
done:
    return;
}

/* An I/O error on one side: the connection is broken, so the other side
 * gets RST too (that is what it would see talking to the peer directly). */
static void sk_pair_fail(sk_proxy *p, sk_pxpair *c)
{
    sk_pair_end(p, c, SK_CLOSE_ABORT, SK_CLOSE_ABORT);
}

/* Free an ended pair's memory (its fds are already closed).  Reactor. */
static void sk_pair_free(sk_pxpair *c)
{
    free(c->dir[0].buf);
    free(c->dir[1].buf);
    free(c);
}

/* ------------------------------------------------------------ data path */

/* Account n bytes just read into dir d: stamp them with their release
 * time (latency, jitter) and queue them.  Reactor. */
static void sk_dir_push(sk_proxy *p, sk_pxpair *c, int d, size_t n)
{
    sk_pxdir *x = &c->dir[d];
    const sk_pxeff *e = &c->eff[d];
    int64_t rel = 0, now = sk_now_ns();
    uint64_t now_held;

    if (x->used == 0)
        x->ready_ns = now; /* an idle sender earns no pacing credit */
    if (e->nreset > 0)
        sk_pair_arm(p, c, d, now);
    if (e->latency_ns > 0 || e->jitter_ns > 0) {
        int64_t delay = e->latency_ns +
                        sk_px_uniform(p, -e->jitter_ns, e->jitter_ns);
        rel = now + sk_px_max(delay, 0);
    }
    rel = sk_px_max(rel, x->last_release); /* bytes keep their order */
    x->last_release = rel;
    if (x->qlen > 0 &&
        x->q[(x->qhead + x->qlen - 1) % SK_PROXY_QMAX].release == rel) {
        x->q[(x->qhead + x->qlen - 1) % SK_PROXY_QMAX].len += n;
    } else {
        sk_pxchunk *k = &x->q[(x->qhead + x->qlen) % SK_PROXY_QMAX];
        k->release = rel;
        k->len = n;
        x->qlen++;
    }
    x->used += n;
    atomic_store_explicit(&x->held, x->used, memory_order_relaxed);
    now_held = atomic_fetch_add_explicit(&p->buffered, n,
                                         memory_order_relaxed) + n;
    /* only this thread writes the peak */
    if (now_held > atomic_load_explicit(&p->buffered_peak,
                                        memory_order_relaxed))
        atomic_store_explicit(&p->buffered_peak, now_held,
                              memory_order_relaxed);
}

/* How many bytes direction d of pair c may hold: buffer_size, or with a
 * latency fault also the bytes in flight (held until their release time),
 * up to SK_PROXY_INFLIGHT_MAX.  Reactor. */
static size_t sk_dir_limit(const sk_proxy *p, const sk_pxpair *c, int d)
{
    const sk_pxeff *e = &c->eff[d];
    size_t lim = p->bufsize;

    if ((e->latency_ns > 0 || e->jitter_ns > 0) &&
        lim < SK_PROXY_INFLIGHT_MAX)
        lim = SK_PROXY_INFLIGHT_MAX;
    return lim;
}

/* Bytes of direction d whose release time has come, counted up to
 * buffer_size (all that matters).  Reactor. */
static size_t sk_dir_due(const sk_proxy *p, const sk_pxdir *x, int64_t now)
{
    size_t due = 0;
    unsigned i, k;

    for (i = 0, k = x->qhead; i < x->qlen && due < p->bufsize; i++) {
        if (x->q[k].release > now)
            break;
        due += x->q[k].len;
        k = (k + 1) % SK_PROXY_QMAX;
    }
    return due;
}

/* May direction d read from its source now?  Its due bytes (those only a
 * slow sink or a write-side fault holds) stay within buffer_size, so
 * backpressure works; bytes held by latency are in flight and only bounded
 * by sk_dir_limit.  Reactor. */
static int sk_dir_can_read(const sk_proxy *p, const sk_pxpair *c, int d,
                           int64_t now)
{
    const sk_pxdir *x = &c->dir[d];

    return !x->src_eof && x->qlen < SK_PROXY_QMAX &&
           x->used < sk_dir_limit(p, c, d) && sk_dir_due(p, x, now) <
                                                  p->bufsize;
}

/* Grow dir x's ring to hold `want` bytes (at most `lim`), straightening it.
 * On allocation failure the ring stays as it is (the caller reads less).
 * Reactor. */
static void sk_dir_grow(sk_pxdir *x, size_t want, size_t lim)
{
    size_t ncap = x->cap * 2, first;
    unsigned char *nb;

    if (ncap < want)
        ncap = want;
    if (ncap > lim)
        ncap = lim;
    nb = ncap > x->cap ? sk_malloc(ncap) : NULL;
    if (nb != NULL) {
        first = x->cap - x->head < x->used ? x->cap - x->head : x->used;
        memcpy(nb, x->buf + x->head, first);
        memcpy(nb + first, x->buf, x->used - first);
        free(x->buf);
        x->buf = nb;
        x->cap = ncap;
        x->head = 0;
    }
}

/* Read what dir d's source has, while it may.  0, or -1 if the pair
 * ended. */
static int sk_dir_read(sk_proxy *p, sk_pxpair *c, int d)
{
    sk_pxdir *x = &c->dir[d];
    int fd = c->end[d].fd;
    int rc = 0;

    while (sk_dir_can_read(p, c, d, sk_now_ns())) {
        struct iovec iov[2];
        size_t lim = sk_dir_limit(p, c, d), tail, room, first;
        int niov = 1;
        ssize_t r;

        if (x->cap < lim && x->cap - x->used < SK_PX_GROW_MIN)
            sk_dir_grow(x, x->used + SK_PX_GROW_MIN, lim);
        tail = (x->head + x->used) % x->cap;
        room = (lim < x->cap ? lim : x->cap) - x->used;
        if (x->used >= x->cap || room == 0)
            break;
        first = room < x->cap - tail ? room : x->cap - tail;
        iov[0].iov_base = x->buf + tail;
        iov[0].iov_len = first;
        if (room > first) {
            iov[1].iov_base = x->buf;
            iov[1].iov_len = room - first;
            niov = 2;
        }
        r = readv(fd, iov, niov);
        if (r > 0) {
            sk_dir_push(p, c, d, (size_t)r);
            if ((size_t)r < room)
                break; /* most likely drained; level-triggered epoll says */
            continue;
        }
        if (r == 0) {
            x->src_eof = 1;
            x->eof_ns = sk_now_ns();
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        sk_pair_fail(p, c);
        rc = -1;
        break;
    }
    return rc;
}

/* Drop w bytes from the head of dir d: written to the sink (sent), or
 * discarded by a timeout fault.  A ring grown for latency shrinks back
 * once empty and latency is gone.  Reactor. */
static void sk_dir_consume(sk_proxy *p, sk_pxpair *c, int d, size_t w,
                           int sent)
{
    sk_pxdir *x = &c->dir[d];
    size_t left = w;

    x->head = (x->head + w) % x->cap;
    x->used -= w;
    while (left > 0) {
        sk_pxchunk *k = &x->q[x->qhead];
        if (k->len > left) {
            k->len -= left;
            break;
        }
        left -= k->len;
        x->qhead = (x->qhead + 1) % SK_PROXY_QMAX;
        x->qlen--;
    }
    atomic_store_explicit(&x->held, x->used, memory_order_relaxed);
    if (sent) {
        atomic_fetch_add_explicit(&x->fwd, w, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bytes[d], w, memory_order_relaxed);
    } else {
        x->dropped += w;
    }
    atomic_fetch_sub_explicit(&p->buffered, w, memory_order_relaxed);
    if (x->used == 0 && x->cap > p->bufsize &&
        sk_dir_limit(p, c, d) == p->bufsize) {
        unsigned char *nb = sk_realloc(x->buf, p->bufsize);
        if (nb != NULL) {
            x->buf = nb;
            x->cap = p->bufsize;
        }
        x->head = 0;
    }
}

/* Write the due bytes of dir d to its sink under the write-side faults.
 * 0, or -1 if the pair ended. */
static int sk_dir_write(sk_proxy *p, sk_pxpair *c, int d)
{
    sk_pxdir *x = &c->dir[d];
    const sk_pxeff *e = &c->eff[d];
    int fd = c->end[1 - d].fd;
    int rc = 0;

    if (c->connecting)
        goto done;
    if (e->timeout && x->used > 0) {
        sk_dir_consume(p, c, d, x->used, 0); /* dropped on the floor */
        goto done;
    }
    for (;;) {
        struct iovec iov[2];
        struct msghdr mh;
        size_t want, n, first, k;
        unsigned i;
        int64_t now, ready;
        ssize_t w;

        if (e->limit_id != 0 &&
            atomic_load_explicit(&x->fwd, memory_order_relaxed) -
                    x->limit_base >= e->limit_bytes) {
            atomic_fetch_add_explicit(&p->limits, 1, memory_order_relaxed);
            sk_pair_end(p, c, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
            rc = -1;
            goto done;
        }
        if (!e->slicer)
            x->slice_left = 0;
        if (x->used == 0 || x->shut_sent || e->stall || x->want_write ||
            (c->reset_hold & (1u << d)))
            break;
        now = sk_now_ns();
        if (x->q[x->qhead].release > now)
            break;
        /* when these bytes could have gone out at the earliest: the
         * schedules below count from there, not from this (late) wake-up */
        ready = sk_px_max(x->ready_ns, x->q[x->qhead].release);
        if (e->rate != 0 && x->pace_ns > now)
            break;
        if (e->slicer && x->slice_ns > now)
            break;
        want = x->used;
        if (e->limit_id != 0) {
            uint64_t left = e->limit_bytes -
                            (atomic_load_explicit(&x->fwd,
                                                  memory_order_relaxed) -
                             x->limit_base);
            if (left < want)
                want = (size_t)left;
        }
        if (e->slicer) {
            if (x->slice_left == 0)
                x->slice_left = (size_t)sk_px_uniform(
                    p, (int64_t)(e->slice_size - e->slice_var),
                    (int64_t)(e->slice_size + e->slice_var));
            if (x->slice_left < want)
                want = x->slice_left;
        }
        if (e->rate != 0) {
            uint64_t quantum = e->rate / SK_PX_BW_SLICES;
            if (quantum == 0)
                quantum = 1;
            if (quantum < want)
                want = (size_t)quantum;
        }
        /* due bytes: the head chunks whose release time has come */
        n = 0;
        for (i = 0, k = x->qhead; i < x->qlen && n < want; i++) {
            if (x->q[k].release > now)
                break;
            n += x->q[k].len;
            k = (k + 1) % SK_PROXY_QMAX;
        }
        if (n > want)
            n = want;
        first = x->cap - x->head < n ? x->cap - x->head : n;
        iov[0].iov_base = x->buf + x->head;
        iov[0].iov_len = first;
        iov[1].iov_base = x->buf;
        iov[1].iov_len = n - first;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = n > first ? 2 : 1;
        /* sendmsg for MSG_NOSIGNAL: a peer that went away is EPIPE, not
         * SIGPIPE */
        w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                x->want_write = 1;
                break;
            }
            sk_pair_fail(p, c);
            rc = -1;
            goto done;
        }
        sk_dir_consume(p, c, d, (size_t)w, 1);
        x->last_write_ns = now;
        if (e->slicer) {
            x->slice_left -= (size_t)w < x->slice_left ? (size_t)w
                                                        : x->slice_left;
            if (x->slice_left == 0 && e->slice_delay_ns > 0)
                x->slice_ns = sk_px_max(x->slice_ns, ready) +
                              e->slice_delay_ns;
        }
        if (e->rate != 0) {
            /* w bytes take w / rate s; the remainder (ns x rate) is kept
             * so that the sum over writes is exact */
            uint64_t t = (uint64_t)w * 1000000000ULL + x->pace_rem;
            int64_t base = sk_px_max(ready - SK_PX_BW_CREDIT_NS,
                                     x->rate_since);
            x->pace_ns = sk_px_max(x->pace_ns, base) +
                         (int64_t)(t / e->rate);
            x->pace_rem = t % e->rate;
        }
        if ((size_t)w < n) {
            x->want_write = 1;
            break;
        }
    }
done:
    return rc;
}

/* Earliest time pair c has something to do without an epoll event. */
static int64_t sk_pair_wake(const sk_pxpair *c)
{
    int64_t w = sk_px_min(c->reset_at, c->stall_close_at);
    int d;

    for (d = 0; d < 2 && !c->connecting; d++) {
        const sk_pxdir *x = &c->dir[d];
        const sk_pxeff *e = &c->eff[d];
        int64_t t;

        if (e->stall || e->timeout || x->want_write || x->shut_sent ||
            (c->reset_hold & (1u << d)))
            continue;
        if (x->used > 0) {
            t = x->q[x->qhead].release;
            if (e->rate != 0)
                t = sk_px_max(t, x->pace_ns);
            if (e->slicer)
                t = sk_px_max(t, x->slice_ns);
            w = sk_px_min(w, t);
        } else if (x->src_eof) {
            w = sk_px_min(w, sk_px_max(x->eof_ns, x->last_write_ns) +
                                 e->slow_close_ns);
        }
    }
    return w;
}

/* Do everything pair c can do now: fault deadlines, writes, EOF
 * forwarding; then set its epoll interest and its timer.  Reactor. */
static void sk_pair_pump(sk_proxy *p, sk_pxpair *c)
{
    int64_t now = sk_now_ns();
    int d, s;

    if (c->dead)
        goto done;
    if (now >= c->reset_at) {
        atomic_fetch_add_explicit(&p->resets, 1, memory_order_relaxed);
        sk_pair_end(p, c,
                    (c->reset_dirs & SK_DIR_DOWN) ? SK_CLOSE_ABORT
                                                  : SK_CLOSE_ORDERLY,
                    (c->reset_dirs & SK_DIR_UP) ? SK_CLOSE_ABORT
                                                : SK_CLOSE_ORDERLY);
        goto done;
    }
    if (now >= c->stall_close_at) {
        atomic_fetch_add_explicit(&p->stall_closes, 1, memory_order_relaxed);
        sk_pair_end(p, c, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
        goto done;
    }
    for (d = 0; d < 2; d++)
        if (sk_dir_write(p, c, d) != 0)
            goto done; /* the pair ended */
    if (c->connecting)
        goto masks;
    now = sk_now_ns();
    for (d = 0; d < 2; d++) {
        sk_pxdir *x = &c->dir[d];
        if (x->src_eof && x->used == 0 && !x->shut_sent &&
            !c->eff[d].stall && !c->eff[d].timeout &&
            !(c->reset_hold & (1u << d)) &&
            now >= sk_px_max(x->eof_ns, x->last_write_ns) +
                       c->eff[d].slow_close_ns) {
            shutdown(c->end[1 - d].fd, SHUT_WR);
            x->shut_sent = 1;
        }
    }
    if (c->dir[0].shut_sent && c->dir[1].shut_sent) {
        sk_pair_end(p, c, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
        goto done;
    }
masks:
    now = sk_now_ns();
    for (s = 0; s < 2; s++) {
        uint32_t want = 0;

        if (!c->connecting && sk_dir_can_read(p, c, s, now))
            want |= EPOLLIN;
        if (c->connecting ? s == SK_SIDE_SERVER : c->dir[1 - s].want_write)
            want |= EPOLLOUT;
        if (sk_end_want(p, &c->end[s], want) != 0) {
            sk_px_note(p, "epoll_ctl", errno);
            sk_pair_fail(p, c);
            goto done;
        }
    }
    sk_timer_set(p, c, sk_pair_wake(c));
done:
    return;
}

/* ------------------------------------------------------------ connections */

/* The upstream connect of c finished (EPOLLOUT/ERR on its server socket). */
static void sk_pair_connected(sk_proxy *p, sk_pxpair *c)
{
    int fd = c->end[SK_SIDE_SERVER].fd, soerr = 0;
    socklen_t sl = sizeof(soerr);
    struct sockaddr_storage la;
    socklen_t ll = sizeof(la);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        soerr = errno;
    if (soerr != 0) {
        atomic_fetch_add_explicit(&p->upfail, 1, memory_order_relaxed);
        sk_px_note(p, "connect(upstream)", soerr);
        /* the client sees what a refused connect would have shown it: a
         * reset */
        sk_pair_end(p, c, SK_CLOSE_ABORT, SK_CLOSE_ORDERLY);
        goto done;
    }
    sk_set_nodelay(fd, NULL);
    memset(&la, 0, sizeof(la));
    getsockname(fd, (struct sockaddr *)&la, &ll);
    pthread_mutex_lock(&p->mu);
    c->local_addr = la;
    c->connecting = 0;
    pthread_mutex_unlock(&p->mu);
    sk_pair_pump(p, c);
done:
    return;
}

/* A new client on cfd: make its pair and start the upstream connect.
 * Takes cfd (closed on failure). */
static void sk_pair_new(sk_proxy *p, int cfd,
                        const struct sockaddr_storage *ca)
{
    sk_pxpair *c = NULL;
    int sfd = -1, s, d;

    c = sk_calloc(1, sizeof(*c));
    if (c == NULL)
        goto nomem;
    for (d = 0; d < 2; d++) {
        c->dir[d].buf = sk_malloc(p->bufsize);
        if (c->dir[d].buf == NULL)
            goto nomem;
        c->dir[d].cap = p->bufsize;
    }
    sfd = socket(p->up_addr.ss_family,
                 SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (sfd < 0) {
        sk_px_note(p, "socket(upstream)", errno);
        goto error;
    }
    sk_set_nodelay(cfd, NULL);
    c->connecting = 1;
    if (connect(sfd, (const struct sockaddr *)&p->up_addr, p->up_len) != 0 &&
        errno != EINPROGRESS) {
        atomic_fetch_add_explicit(&p->upfail, 1, memory_order_relaxed);
        sk_px_note(p, "connect(upstream)", errno);
        goto error;
    }
    for (s = 0; s < 2; s++) {
        c->end[s].kind = SK_END_PAIR;
        c->end[s].side = s;
        c->end[s].pair = c;
    }
    c->end[SK_SIDE_CLIENT].fd = cfd;
    c->end[SK_SIDE_SERVER].fd = sfd;
    sk_heap_node_init(&c->wake);
    c->start_ns = sk_now_ns();
    c->salt = sk_px_rand(p);
    c->client_addr = *ca;
    pthread_mutex_lock(&p->mu);
    c->prev = p->live_tail;
    if (p->live_tail != NULL)
        p->live_tail->next = c;
    else
        p->live_head = c;
    p->live_tail = c;
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_add_explicit(&p->accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
    sk_pair_apply(p, c);
    /* connect() on loopback usually completes later, signalled by
     * EPOLLOUT; pump registers the server socket for it */
    sk_pair_pump(p, c);
    goto done;
nomem:
    sk_px_note(p, "malloc(connection buffers)", ENOMEM);
error:
    if (sfd >= 0)
        close(sfd);
    sk_abort(cfd, NULL);
    if (c != NULL)
        sk_pair_free(c);
done:
    return;
}

/* Accept what the listener holds (a bounded batch), one pair each.
 * Reactor. */
static void sk_px_accept(sk_proxy *p)
{
    int i;

    for (i = 0; i < SK_PX_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ca;
        socklen_t cl = sizeof(ca);
        int cfd;

        if (atomic_load_explicit(&p->active, memory_order_relaxed) >=
            p->max_conns)
            break;
        memset(&ca, 0, sizeof(ca));
        cfd = accept4(p->lfd, (struct sockaddr *)&ca, &cl,
                      SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            sk_px_note(p, "accept4", errno);
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays
             * queued and the listener stays readable; pause instead of
             * spinning */
            p->accept_pause_until = sk_now_ns() + SK_PX_ACCEPT_PAUSE_NS;
            break;
        }
        sk_pair_new(p, cfd, &ca);
    }
    sk_px_listen_mask(p, sk_now_ns());
}

/* The fault table changed: take a snapshot, refold, re-pump every pair. */
static void sk_px_refresh(sk_proxy *p)
{
    sk_pxpair *c, *next;

    uint64_t gen;
    int disabled, new_lfd = -1;

    pthread_mutex_lock(&p->mu);
    memcpy(p->snap, p->faults, p->nfaults * sizeof(p->faults[0]));
    p->nsnap = p->nfaults;
    gen = p->gen;
    disabled = p->disabled;
    if (p->have_new_lfd && !disabled) {
        new_lfd = p->new_lfd;
        p->have_new_lfd = 0;
    }
    pthread_mutex_unlock(&p->mu);
    if (disabled && p->lend.fd >= 0) {
        /* toxiproxy's "enabled": false: refuse new clients, end the rest */
        sk_end_want(p, &p->lend, 0);
        close(p->lend.fd);
        p->lend.fd = -1;
        p->lend.mask = 0;
        while (p->live_head != NULL)
            sk_pair_end(p, p->live_head, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
    }
    if (new_lfd >= 0) {
        if (p->lend.fd >= 0)
            close(new_lfd); /* cannot happen: enabling waits for us */
        else
            p->lend.fd = new_lfd;
        p->lend.mask = 0;
    }
    /* the live list changes only in this thread: no lock to walk it */
    for (c = p->live_head; c != NULL; c = next) {
        next = c->next;
        sk_pair_apply(p, c);
        sk_pair_pump(p, c);
    }
    sk_px_listen_mask(p, sk_now_ns());
    pthread_mutex_lock(&p->mu);
    p->applied = gen;
    pthread_cond_broadcast(&p->applied_cv);
    pthread_mutex_unlock(&p->mu);
}

/* Contract: any thread but the reactor, p->mu held.  Wait until the
 * reactor works with table generation `gen` (it applies a change within
 * microseconds), so that bytes the proxy reads after a control call
 * returns see the change.  Bounded: gives up after SK_PX_SYNC_NS or when
 * the reactor is gone. */
static void sk_px_sync_locked(sk_proxy *p, uint64_t gen)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += SK_PX_SYNC_S;
    while (p->running && p->applied < gen) {
        if (pthread_cond_timedwait(&p->applied_cv, &p->mu, &ts) == ETIMEDOUT)
            break;
    }
}

/* Contract: as sk_px_sync_locked.  Publish a change of the fault table
 * (or of the enabled flag): bump the generation, wake the reactor, wait
 * until it works with the change. */
static void sk_px_publish_locked(sk_proxy *p)
{
    uint64_t gen = ++p->gen;

    sk_px_wake(p);
    sk_px_sync_locked(p, gen);
}

/* Events on one socket of a pair. */
static void sk_pair_event(sk_proxy *p, sk_pxend *e, uint32_t ev)
{
    sk_pxpair *c = e->pair;
    int s = e->side;

    if (c->dead)
        goto done;
    if (c->connecting) {
        if (s == SK_SIDE_SERVER)
            sk_pair_connected(p, c);
        goto done;
    }
    if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && c->dir[1 - s].want_write) {
        /* the sink held the bytes back: pacing credits none of that time */
        c->dir[1 - s].want_write = 0;
        c->dir[1 - s].ready_ns = sk_px_max(c->dir[1 - s].ready_ns,
                                           sk_now_ns());
    }
    if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && (e->mask & EPOLLIN)) {
        if (sk_dir_read(p, c, s) != 0)
            goto done; /* the pair ended */
    }
    sk_pair_pump(p, c);
done:
    return;
}

/* ------------------------------------------------------------ the loop */

/* epoll wait until `wake` (SK_PX_NEVER: no timeout), to the nanosecond
 * where epoll_pwait2 exists.  Returns as epoll_wait.  Reactor. */
static int sk_px_epoll_wait(sk_proxy *p, struct epoll_event *evs, int n,
                            int64_t wake)
{
    int64_t left;
    int ms, r;

    left = wake == SK_PX_NEVER ? -1 : sk_px_max(wake - sk_now_ns(), 0);
#if SK_PX_HAVE_PWAIT2
    if (!p->pwait2_missing) {
        struct timespec ts;

        ts.tv_sec = left / 1000000000LL;
        ts.tv_nsec = left % 1000000000LL;
        r = epoll_pwait2(p->epfd, evs, n, left < 0 ? NULL : &ts, NULL);
        if (r >= 0 || errno != ENOSYS)
            goto done;
        p->pwait2_missing = 1; /* a kernel older than 5.11 */
    }
#endif
    if (left < 0)
        ms = -1;
    else if (left > 3600LL * 1000000000LL)
        ms = 3600 * 1000;
    else
        ms = (int)((left + 999999) / 1000000); /* round up: never early */
    r = epoll_wait(p->epfd, evs, n, ms);
#if SK_PX_HAVE_PWAIT2
done:
#endif
    return r;
}

/* Pump every pair whose timer is due.  Reactor.  The due pairs are taken
 * out first, so a pair that is due again at once waits for the next turn
 * instead of spinning here. */
static void sk_px_run_timers(sk_proxy *p)
{
    sk_pxpair *due = NULL, *c;
    sk_heap_node *top;
    int64_t now;

    top = sk_heap_top(&p->heap);
    if (top == NULL || top->key > sk_now_ns())
        return;
    now = sk_now_ns();
    while ((top = sk_heap_top(&p->heap)) != NULL && top->key <= now) {
        c = SK_HEAP_ENTRY(top, sk_pxpair, wake);
        sk_timer_set(p, c, SK_PX_NEVER);
        c->zombie_next = due; /* borrowed as a list link */
        due = c;
    }
    while (due != NULL) {
        c = due;
        due = c->zombie_next;
        c->zombie_next = NULL;
        sk_pair_pump(p, c);
    }
}

/* The reactor thread: loop until p->stop, then close every connection.
 * Owns everything marked "Reactor"; frees the pairs, not p. */
static void *sk_px_main(void *arg)
{
    sk_proxy *p = (sk_proxy *)arg;
    struct epoll_event evs[SK_PX_EVENTS];
    sk_pxpair *c;

    pthread_setname_np(pthread_self(), "sk-proxy");
    /* wake-ups within a microsecond: slicer and bandwidth schedules are
     * exact anyway (lateness is carried forward), this keeps bursts small */
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    sk_px_refresh(p);
    sk_px_listen_mask(p, sk_now_ns());
    while (!atomic_load_explicit(&p->stop, memory_order_acquire)) {
        int64_t wake = sk_heap_top(&p->heap) != NULL ? sk_heap_top(&p->heap)->key
                                                      : SK_PX_NEVER;
        int n, i;

        if (p->accept_pause_until != 0) {
            if (sk_now_ns() >= p->accept_pause_until) {
                p->accept_pause_until = 0;
                sk_px_listen_mask(p, sk_now_ns());
            } else {
                wake = sk_px_min(wake, p->accept_pause_until);
            }
        }
        n = sk_px_epoll_wait(p, evs, SK_PX_EVENTS, wake);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sk_px_note(p, "epoll_wait", errno);
            break;
        }
        for (i = 0; i < n; i++) {
            sk_pxend *e = (sk_pxend *)evs[i].data.ptr;

            if (e->kind == SK_END_WAKE) {
                uint64_t v;
                ssize_t r = read(p->evfd, &v, sizeof(v));
                (void)r; /* EAGAIN: another read got it first */
                sk_px_refresh(p);
            } else if (e->kind == SK_END_LISTEN) {
                sk_px_accept(p);
            } else {
                sk_pair_event(p, e, evs[i].events);
            }
        }
        sk_px_run_timers(p);
        while (p->zombies != NULL) {
            c = p->zombies;
            p->zombies = c->zombie_next;
            sk_pair_free(c);
        }
    }
    pthread_mutex_lock(&p->mu);
    p->running = 0;
    pthread_cond_broadcast(&p->applied_cv);
    pthread_mutex_unlock(&p->mu);
    /* stopping: close every connection in order */
    while (p->live_head != NULL)
        sk_pair_end(p, p->live_head, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
    while (p->zombies != NULL) {
        c = p->zombies;
        p->zombies = c->zombie_next;
        sk_pair_free(c);
    }
    return NULL;
}

/* ------------------------------------------------------------ control API */

/* Contract: no GIL needed; on SK_OK *out is the caller's until
 * sk_proxy_stop; on failure nothing leaks. */
int sk_proxy_start(const struct sockaddr *upstream, socklen_t upstream_len,
                   const struct sockaddr *listen, socklen_t listen_len,
                   const sk_proxy_opts *opts, sk_proxy **out, sk_err *err)
{
    sk_proxy *p = NULL;
    sigset_t all, old;
    pthread_condattr_t ca;
    int rc = SK_ERR, mu_ok = 0, cv_ok = 0, e;

    if (upstream_len > sizeof(p->up_addr) ||
        (upstream->sa_family != AF_INET && upstream->sa_family != AF_INET6)) {
        sk_err_set(err, SK_E_ARG, "upstream must be an IPv4 or IPv6 address");
        goto error;
    }
    p = sk_calloc(1, sizeof(*p));
    if (p == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory for the proxy");
        goto error;
    }
    p->lfd = p->epfd = p->evfd = -1;
    memcpy(&p->up_addr, upstream, upstream_len);
    p->up_len = upstream_len;
    p->bufsize = opts != NULL && opts->buffer_size != 0 ? opts->buffer_size
                                                        : SK_PROXY_DEFAULT_BUF;
    if (p->bufsize < SK_PROXY_MIN_BUF || p->bufsize > SK_PROXY_MAX_BUF) {
        sk_err_set(err, SK_E_ARG, "buffer_size must be %u..%u bytes",
                   (unsigned)SK_PROXY_MIN_BUF, (unsigned)SK_PROXY_MAX_BUF);
        goto error;
    }
    p->max_conns = opts != NULL && opts->max_conns != 0 ? opts->max_conns
                                                        : SK_PX_DEFAULT_CONNS;
    p->rng = opts != NULL && opts->seed != 0 ? opts->seed
                                             : (uint64_t)sk_now_ns();
    sk_heap_init(&p->heap);
    if (sk_heap_reserve(&p->heap, p->max_conns) != SK_OK) {
        sk_err_set(err, SK_E_NOMEM, "out of memory for the proxy");
        goto error;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        sk_err_set(err, SK_E_NOMEM, "pthread_mutex_init failed");
        goto error;
    }
    mu_ok = 1;
    if (pthread_condattr_init(&ca) != 0 ||
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&p->applied_cv, &ca) != 0) {
        sk_err_set(err, SK_E_NOMEM, "pthread_cond_init failed");
        goto error;
    }
    pthread_condattr_destroy(&ca);
    cv_ok = 1;
    if (sk_listen(listen, listen_len, 128, &p->lfd, err) != SK_OK)
        goto error;
    p->listen_len = sizeof(p->listen_addr);
    if (getsockname(p->lfd, (struct sockaddr *)&p->listen_addr,
                    &p->listen_len) != 0) {
        sk_err_sys(err, "getsockname", errno);
        goto error;
    }
    p->epfd = sk_epoll_create(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        sk_err_sys(err, "epoll_create1", errno);
        goto error;
    }
    p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->evfd < 0) {
        sk_err_sys(err, "eventfd", errno);
        goto error;
    }
    p->lend.kind = SK_END_LISTEN;
    p->lend.fd = p->lfd;
    p->wend.kind = SK_END_WAKE;
    p->wend.fd = p->evfd;
    if (sk_end_want(p, &p->wend, EPOLLIN) != 0) {
        sk_err_sys(err, "epoll_ctl", errno);
        goto error;
    }
    /* the reactor takes no signals: they belong to the caller's threads */
    p->running = 1;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e = sk_thread_create(&p->thread, NULL, sk_px_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        sk_err_sys(err, "pthread_create", e);
        goto error;
    }
    *out = p;
    rc = SK_OK;
    goto done;
error:
    if (p != NULL) {
        if (p->lfd >= 0)
            close(p->lfd);
        if (p->epfd >= 0)
            close(p->epfd);
        if (p->evfd >= 0)
            close(p->evfd);
        if (cv_ok)
            pthread_cond_destroy(&p->applied_cv);
        if (mu_ok)
            pthread_mutex_destroy(&p->mu);
        sk_heap_free(&p->heap);
        free(p);
    }
done:
    return rc;
}

/* Contract: any thread. */
int sk_proxy_listen_fd(const sk_proxy *p)
{
    return p->lfd;
}

/* Contract: any thread but the reactor; takes p->mu; returns once the
 * reactor applies the fault (microseconds; at most SK_PX_SYNC_S s). */
int sk_proxy_add(sk_proxy *p, const sk_fault *f, uint64_t *id, sk_err *err)
{
    int rc = SK_ERR;

    if (sk_fault_check(f, err) != SK_OK)
        goto done;
    pthread_mutex_lock(&p->mu);
    if (p->nfaults >= SK_PROXY_MAX_FAULTS) {
        pthread_mutex_unlock(&p->mu);
        sk_err_set(err, SK_E_ARG, "a proxy holds at most %d faults; remove "
                   "some first", SK_PROXY_MAX_FAULTS);
        goto done;
    }
    p->faults[p->nfaults].id = ++p->next_id;
    p->faults[p->nfaults].added_ns = sk_now_ns();
    p->faults[p->nfaults].f = *f;
    *id = p->next_id;
    p->nfaults++;
    sk_px_publish_locked(p);
    pthread_mutex_unlock(&p->mu);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: as sk_proxy_add. */
int sk_proxy_update(sk_proxy *p, uint64_t id, const sk_fault *f, int *found,
                    sk_err *err)
{
    unsigned i;
    int rc = SK_ERR;

    *found = 0;
    if (sk_fault_check(f, err) != SK_OK)
        goto done;
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < p->nfaults && p->faults[i].id != id; i++)
        ;
    if (i < p->nfaults && p->faults[i].f.kind != f->kind) {
        pthread_mutex_unlock(&p->mu);
        sk_err_set(err, SK_E_ARG, "an update keeps the fault's kind; remove "
                   "it and add the new kind instead");
        goto done;
    }
    if (i < p->nfaults) {
        p->faults[i].f = *f;
        *found = 1;
        sk_px_publish_locked(p);
    }
    pthread_mutex_unlock(&p->mu);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: any thread but the reactor, not concurrently with itself;
 * binds and listens in the caller's thread, then waits for the reactor
 * as sk_proxy_add. */
int sk_proxy_set_enabled(sk_proxy *p, int enabled, sk_err *err)
{
    int fd = -1, rc = SK_ERR, now_disabled;

    pthread_mutex_lock(&p->mu);
    now_disabled = p->disabled;
    pthread_mutex_unlock(&p->mu);
    if (now_disabled == !enabled) {
        rc = SK_OK;
        goto done;
    }
    if (enabled && sk_listen((const struct sockaddr *)&p->listen_addr,
                             p->listen_len, 128, &fd, err) != SK_OK)
        goto done;
    pthread_mutex_lock(&p->mu);
    p->disabled = !enabled;
    if (enabled) {
        p->new_lfd = fd;
        p->have_new_lfd = 1;
    }
    p->lfd = fd;
    sk_px_publish_locked(p);
    pthread_mutex_unlock(&p->mu);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: as sk_proxy_add. */
int sk_proxy_remove(sk_proxy *p, uint64_t id)
{
    unsigned i;
    int found = 0;

    pthread_mutex_lock(&p->mu);
    for (i = 0; i < p->nfaults; i++) {
        if (p->faults[i].id == id) {
            memmove(&p->faults[i], &p->faults[i + 1],
                    (p->nfaults - i - 1) * sizeof(p->faults[0]));
            p->nfaults--;
            found = 1;
            break;
        }
    }
    if (found)
        sk_px_publish_locked(p);
    pthread_mutex_unlock(&p->mu);
    return found;
}

/* Contract: as sk_proxy_add. */
void sk_proxy_clear(sk_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    p->nfaults = 0;
    sk_px_publish_locked(p);
    pthread_mutex_unlock(&p->mu);
}

/* Contract: any thread; lock-free. */
void sk_proxy_get_stats(sk_proxy *p, sk_proxy_stats *out)
{
#define SK_LD(x) atomic_load_explicit(&p->x, memory_order_relaxed)
    out->accepted = SK_LD(accepted);
    out->active = SK_LD(active);
    out->bytes_up = SK_LD(bytes[0]);
    out->bytes_down = SK_LD(bytes[1]);
    out->buffered = SK_LD(buffered);
    out->buffered_peak = SK_LD(buffered_peak);
    out->upstream_failures = SK_LD(upfail);
    out->resets = SK_LD(resets);
    out->limits = SK_LD(limits);
    out->stall_closes = SK_LD(stall_closes);
#undef SK_LD
}

/* Contract: any thread; holds p->mu while it walks the live list (the
 * reactor links and unlinks pairs under it, so none is freed meanwhile). */
size_t sk_proxy_conns(sk_proxy *p, sk_proxy_conn_info *out, size_t n)
{
    const sk_pxpair *c;
    size_t count = 0;

    pthread_mutex_lock(&p->mu);
    for (c = p->live_head; c != NULL; c = c->next, count++) {
        sk_proxy_conn_info *o;

        if (count >= n)
            continue;
        o = &out[count];
        o->client = c->client_addr;
        o->local = c->local_addr;
        o->connecting = c->connecting;
        o->bytes_up = atomic_load_explicit(&c->dir[0].fwd,
                                           memory_order_relaxed);
        o->bytes_down = atomic_load_explicit(&c->dir[1].fwd,
                                             memory_order_relaxed);
        o->buffered_up = atomic_load_explicit(&c->dir[0].held,
                                              memory_order_relaxed);
        o->buffered_down = atomic_load_explicit(&c->dir[1].held,
                                                memory_order_relaxed);
    }
    pthread_mutex_unlock(&p->mu);
    return count;
}

/* Contract: any thread; takes p->mu briefly. */
int sk_proxy_last_error(sk_proxy *p, char *msg, size_t n)
{
    int e;

    pthread_mutex_lock(&p->mu);
    snprintf(msg, n, "%s", p->last_err);
    e = p->last_errno;
    pthread_mutex_unlock(&p->mu);
    return e;
}

/* Contract: once, with no other call in flight; blocks until the reactor
 * thread is joined; frees p. */
void sk_proxy_stop(sk_proxy *p)
{
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    sk_px_wake(p);
    pthread_join(p->thread, NULL);
    if (p->lend.fd >= 0)
        close(p->lend.fd);
    if (p->have_new_lfd)
        close(p->new_lfd);
    close(p->epfd);
    close(p->evfd);
    pthread_cond_destroy(&p->applied_cv);
    pthread_mutex_destroy(&p->mu);
    sk_heap_free(&p->heap);
    free(p);
}
