/*
 * fuzz_proxy.c - libFuzzer harness for the fault proxy's scheduler
 * (csrc/testkit/proxy.c): the byte queues, the fault folding, the per-connection
 * timers and the write-side faults, driven without threads, real time or
 * sockets.
 *
 * FUZZ_UNITY: testkit/proxy
 * FUZZ_MAXLEN: 1024
 *
 * The harness includes csrc/testkit/proxy.c itself (run.sh then links the core
 * without its object) with the syscalls the reactor makes renamed to fakes
 * (readv, sendmsg, shutdown, recv, close, epoll_ctl, socket, connect,
 * getsockopt, getsockname, sk_abort, sk_set_nodelay), and runs the
 * reactor's own functions - sk_pair_new, sk_pair_event, sk_pair_pump,
 * sk_px_refresh and sk_px_run_timers - on a proxy set up by
 * hand, with time from a fake clock (clock.h's seam).  The input is a
 * program: add or remove a fault (any kind, directions and parameters,
 * valid or not), open a connection (its upstream connect succeeds or
 * fails), bytes or EOF or an error arrive on a side, a side becomes
 * writable for some bytes, time passes (then due timers run), the next
 * allocation fails.
 *
 * The fake kernel checks every write against rules written here from
 * proxy.h, with the harness's own view of the faults in force:
 *   - every direction's bytes arrive exactly, in order, once (a byte
 *     generator per direction);
 *   - no byte leaves before read time + (sum of latencies - sum of
 *     jitters), nor before the release time the proxy stamped on it;
 *   - nothing is written in a stalled direction, nor under a timeout
 *     fault (whose bytes are dropped: the bytes written skip exactly the
 *     proxy's count of dropped ones); a slicer's writes are at
 *     most size + size_var bytes; under a bandwidth fault the bytes written
 *     since it took effect stay within rate x time + one quantum; no more
 *     than limit_data's bytes go through after it applies;
 *   - a FIN is forwarded only after the source's FIN and every byte
 *     before it, and not before slow_close's delay.
 * And after every step: each direction holds at most SK_PROXY_QMAX chunks,
 * its chunk lengths add up to what it holds, release times never go
 * backwards, bytes read = bytes written + dropped + held, the
 * global `buffered` counter is the sum; a connection that waits for its
 * sink is registered for EPOLLOUT and one with room (due bytes under
 * buffer_size, held bytes under the latency limit) for EPOLLIN (else it
 * would wait forever); after the due timers ran, no connection has bytes
 * it may send to a sink that takes them, and none outlives a reset_peer
 * (timed from the first byte read in its direction after it was added),
 * a stall or timeout fault's timeout or a limit_data that is due.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/sk.h"
#include "require.h"
#include "core/sys.h"

struct sk_err;

static ssize_t fx_readv(int fd, const struct iovec *iov, int n);
static ssize_t fx_sendmsg(int fd, const struct msghdr *mh, int flags);
static int fx_shutdown(int fd, int how);
static ssize_t fx_recv(int fd, void *buf, size_t n, int flags);
static int fx_close(int fd);
static int fx_epoll_ctl(int ep, int op, int fd, struct epoll_event *ev);
static int fx_socket(int domain, int type, int proto);
static int fx_connect(int fd, const struct sockaddr *sa, socklen_t len);
static int fx_getsockopt(int fd, int level, int name, void *val,
                         socklen_t *len);
static int fx_getsockname(int fd, struct sockaddr *sa, socklen_t *len);
static int fx_sk_abort(int fd, struct sk_err *err);
static int fx_sk_set_nodelay(int fd, struct sk_err *err);

#define readv fx_readv
#define sendmsg fx_sendmsg
#define shutdown fx_shutdown
#define recv fx_recv
#define close fx_close
#define epoll_ctl fx_epoll_ctl
#define socket fx_socket
#define connect fx_connect
#define getsockopt fx_getsockopt
#define getsockname fx_getsockname
#define sk_abort fx_sk_abort
#define sk_set_nodelay fx_sk_set_nodelay
#include "testkit/proxy.c"
#undef readv
#undef sendmsg
#undef shutdown
#undef recv
#undef close
#undef epoll_ctl
#undef socket
#undef connect
#undef getsockopt
#undef getsockname
#undef sk_abort
#undef sk_set_nodelay

/* FUZZ_TRACE=1 ./fuzz_proxy CRASH-FILE prints what the program does. */
static int trace = -1;
#define TRACE(...)                                                          \
    do {                                                                    \
        if (trace)                                                          \
            fprintf(stderr, __VA_ARGS__);                                   \
    } while (0)

#define MAXC 4            /* connections at once */
#define FD0 100000        /* fake fds: FD0 + 2 * slot + side */
#define NFAULT 16         /* faults at once */
#define MS 1000000LL
#define RD_MAX 4096       /* read records per direction */

/* ---- the harness's view ---------------------------------------------- */

typedef struct hfault {
    uint64_t id;
    int64_t added;
    sk_fault f;
} hfault;

/* A read record; the rings live outside the harness's per-connection
 * view (rd_ring), so that clearing a view per input and per connection
 * stays small: 4 x 2 x 4096 records are 768 KiB, and clearing them was
 * a fifth of the harness's time. */
struct rdrec {
    uint64_t end;
    int64_t at, minlat;
};

typedef struct hdir {
    uint64_t read;       /* bytes the proxy read from the source */
    uint64_t written;    /* bytes the proxy wrote to the sink */
    uint64_t dropped_seen; /* the proxy's dropped count at the last write */
    int eof_given;       /* readv returned 0 */
    int64_t eof_at;
    int fin_sent;        /* the proxy forwarded FIN to the sink */
    /* read records (a ring in rd_ring, see hconn_clear): bytes [end of
     * previous, end) were read at `at` with a minimum latency of `minlat` */
    struct rdrec *rd;
    size_t rd_n, rd_head;
    /* bandwidth accounting since the effective rate last changed */
    uint64_t bw_rate, bw_bytes, bw_writes;
    int64_t bw_start;
    /* limit_data accounting */
    uint64_t limit_id, limit_base;
} hdir;

typedef struct hside {
    uint64_t avail; /* bytes the peer sent that the proxy may read */
    int eof;        /* the peer closed after them */
    int err;        /* errno for the next read or write, 0: none */
    uint64_t budget; /* bytes the peer's window takes now */
    int closed, aborted;
    uint32_t mask;  /* epoll interest */
} hside;

typedef struct hconn {
    sk_pxpair *c;   /* NULL: slot free */
    struct {
        uint64_t id;
        int64_t first;
    } arm[SK_PROXY_MAX_FAULTS]; /* reset_peer faults: their first byte */
    unsigned narm;
    hside side[2];
    hdir dir[2];
    int64_t start;
    int connect_err;
} hconn;

static struct {
    sk_proxy *p;
    hconn conn[MAXC];
    hfault faults[NFAULT];
    unsigned nfaults;
    int next_slot; /* the slot sk_pair_new is making */
    int fail_alloc;
    int64_t now;
} H;

static struct rdrec rd_ring[MAXC][2][RD_MAX];

/* A free view for `slot`: zeroed, its rings attached (empty). */
static hconn *hconn_clear(int slot)
{
    hconn *h = &H.conn[slot];

    memset(h, 0, sizeof(*h));
    h->dir[0].rd = rd_ring[slot][0];
    h->dir[1].rd = rd_ring[slot][1];
    return h;
}

static int64_t fake_clock(void)
{
    return H.now;
}

static int fault_hook(sk_sys_call call, const char *site)
{
    (void)call;
    (void)site;
    if (!H.fail_alloc)
        return 0;
    H.fail_alloc = 0;
    return 1;
}

static unsigned char gen_byte(int slot, int d, uint64_t off)
{
    return (unsigned char)(off * 7 + (off >> 8) + (uint64_t)d * 101 +
                           (uint64_t)slot * 13);
}

/* fd -> slot and side (asserts it is one of ours) */
static hconn *by_fd(int fd, int *side)
{
    int x = fd - FD0;

    REQUIRE(x >= 0 && x < 2 * MAXC);
    *side = x & 1;
    return &H.conn[x >> 1];
}

/* ---- the faults in force, as the harness sees them -------------------- */

static int64_t h_minlat(int d)
{
    int64_t lat = 0, jit = 0;
    unsigned i;

    for (i = 0; i < H.nfaults; i++)
        if (H.faults[i].f.kind == SK_FAULT_LATENCY &&
            (H.faults[i].f.dirs & (1u << d))) {
            lat += H.faults[i].f.delay_ns;
            jit += H.faults[i].f.jitter_ns;
        }
    return lat > jit ? lat - jit : 0;
}

static const hfault *h_last(int d, sk_fault_kind kind)
{
    const hfault *r = NULL;
    unsigned i;

    for (i = 0; i < H.nfaults; i++)
        if (H.faults[i].f.kind == kind && (H.faults[i].f.dirs & (1u << d)))
            r = &H.faults[i];
    return r;
}

static uint64_t h_rate(int d)
{
    uint64_t r = 0;
    unsigned i;

    for (i = 0; i < H.nfaults; i++)
        if (H.faults[i].f.kind == SK_FAULT_BANDWIDTH &&
            (H.faults[i].f.dirs & (1u << d)) &&
            (r == 0 || H.faults[i].f.rate_Bps < r))
            r = H.faults[i].f.rate_Bps;
    return r;
}

static int64_t h_slow_close(int d)
{
    int64_t v = 0;
    unsigned i;

    for (i = 0; i < H.nfaults; i++)
        if (H.faults[i].f.kind == SK_FAULT_SLOW_CLOSE &&
            (H.faults[i].f.dirs & (1u << d)) && H.faults[i].f.delay_ns > v)
            v = H.faults[i].f.delay_ns;
    return v;
}

/* The earliest reset_peer or stall timeout of connection h, or INT64_MAX. */
static int64_t h_deadline(const hconn *h)
{
    int64_t at, best = INT64_MAX;
    unsigned i;

    for (i = 0; i < H.nfaults; i++) {
        const hfault *f = &H.faults[i];
        unsigned j;

        if (f->f.kind == SK_FAULT_RESET_PEER) {
            for (j = 0; j < h->narm && h->arm[j].id != f->id; j++)
                ;
            if (j == h->narm)
                continue; /* no byte came its way yet */
            at = h->arm[j].first + f->f.delay_ns;
        } else if ((f->f.kind == SK_FAULT_STALL ||
                    f->f.kind == SK_FAULT_TIMEOUT) && f->f.delay_ns > 0) {
            at = (f->added > h->start ? f->added : h->start) + f->f.delay_ns;
        } else {
            continue;
        }
        if (at < best)
            best = at;
    }
    return best;
}

/* Bytes came in direction d of h: arm the reset_peer faults covering d
 * that are not armed yet (forgetting arms of faults gone). */
static void h_arm(hconn *h, int d)
{
    unsigned i, j, kept = 0;

    for (j = 0; j < h->narm; j++) {
        for (i = 0; i < H.nfaults && H.faults[i].id != h->arm[j].id; i++)
            ;
        if (i < H.nfaults)
            h->arm[kept++] = h->arm[j];
    }
    h->narm = kept;
    for (i = 0; i < H.nfaults; i++) {
        const hfault *f = &H.faults[i];

        if (f->f.kind != SK_FAULT_RESET_PEER || !(f->f.dirs & (1u << d)))
            continue;
        for (j = 0; j < h->narm && h->arm[j].id != f->id; j++)
            ;
        if (j == h->narm) {
            h->arm[h->narm].id = f->id;
            h->arm[h->narm].first = H.now;
            h->narm++;
        }
    }
}

/* Does an armed reset_peer of h cover direction d (its data waits)? */
static int h_reset_holds(const hconn *h, int d)
{
    unsigned i, j;

    for (j = 0; j < h->narm; j++)
        for (i = 0; i < H.nfaults; i++)
            if (H.faults[i].id == h->arm[j].id &&
                (H.faults[i].f.dirs & (1u << d)))
                return 1;
    return 0;
}

/* Latency or jitter on direction d: bytes held in flight may exceed
 * buffer_size. */
static int h_latency_on(int d)
{
    unsigned i;

    for (i = 0; i < H.nfaults; i++)
        if (H.faults[i].f.kind == SK_FAULT_LATENCY &&
            (H.faults[i].f.dirs & (1u << d)) &&
            (H.faults[i].f.delay_ns > 0 || H.faults[i].f.jitter_ns > 0))
            return 1;
    return 0;
}

/* After the fault table changed: the harness's accounting windows. */
static void h_refold(void)
{
    int s, d;

    for (s = 0; s < MAXC; s++) {
        hconn *h = &H.conn[s];
        if (h->c == NULL)
            continue;
        for (d = 0; d < 2; d++) {
            hdir *x = &h->dir[d];
            const hfault *lim = h_last(d, SK_FAULT_LIMIT_DATA);
            uint64_t rate = h_rate(d);

            if (rate != x->bw_rate) {
                x->bw_rate = rate;
                x->bw_start = H.now;
                x->bw_bytes = x->bw_writes = 0;
            }
            if ((lim ? lim->id : 0) != x->limit_id) {
                x->limit_id = lim ? lim->id : 0;
                x->limit_base = x->written;
            }
        }
    }
}

/* ---- the fake kernel ------------------------------------------------------ */

static ssize_t fx_readv(int fd, const struct iovec *iov, int n)
{
    int s, i, slot;
    hconn *h = by_fd(fd, &s);
    hdir *x = &h->dir[s]; /* side s is the source of direction s */
    hside *sd = &h->side[s];
    uint64_t total = 0, take, k = 0;

    slot = (int)(h - H.conn);
    REQUIRE(!sd->closed);
    if (sd->err) {
        errno = sd->err;
        return -1;
    }
    for (i = 0; i < n; i++)
        total += iov[i].iov_len;
    REQUIRE(total > 0);
    if (sd->avail == 0) {
        if (sd->eof) {
            REQUIRE(!x->eof_given); /* a FIN is read once */
            x->eof_given = 1;
            x->eof_at = H.now;
            return 0;
        }
        errno = EAGAIN;
        return -1;
    }
    take = sd->avail < total ? sd->avail : total;
    for (i = 0; i < n && k < take; i++) {
        unsigned char *dst = iov[i].iov_base;
        size_t j;

        for (j = 0; j < iov[i].iov_len && k < take; j++, k++)
            dst[j] = gen_byte(slot, s, x->read + k);
    }
    x->read += take;
    sd->avail -= take;
    h_arm(h, s);
    TRACE("  read  slot %d dir %d: %llu bytes (minlat %lld ns)\n", slot, s,
          (unsigned long long)take, (long long)h_minlat(s));
    /* when and under which latency floor these bytes were read */
    {
        int64_t minlat = h_minlat(s);
        size_t last = (x->rd_head + x->rd_n + RD_MAX - 1) % RD_MAX;

        if (x->rd_n > 0 && x->rd[last].at == H.now &&
            x->rd[last].minlat == minlat) {
            x->rd[last].end = x->read;
        } else {
            size_t w = (x->rd_head + x->rd_n) % RD_MAX;
            REQUIRE(x->rd_n < RD_MAX); /* the proxy holds at most QMAX chunks */
            x->rd[w].end = x->read;
            x->rd[w].at = H.now;
            x->rd[w].minlat = minlat;
            x->rd_n++;
        }
    }
    return (ssize_t)take;
}

static ssize_t fx_sendmsg(int fd, const struct msghdr *mh, int flags)
{
    int s, slot;
    hconn *h = by_fd(fd, &s);
    int d = 1 - s; /* side s is the sink of direction 1 - s */
    hdir *x = &h->dir[d];
    hside *sd = &h->side[s];
    const sk_pxdir *px = &h->c->dir[d];
    const hfault *sl = h_last(d, SK_FAULT_SLICER);
    uint64_t total = 0, take, k, cov;
    size_t i;
    unsigned qi, qn;

    (void)flags;
    slot = (int)(h - H.conn);
    REQUIRE(!sd->closed && !x->fin_sent && !h->c->dead);
    REQUIRE(h_last(d, SK_FAULT_STALL) == NULL); /* a stall passes nothing */
    REQUIRE(h_last(d, SK_FAULT_TIMEOUT) == NULL); /* nor a timeout */
    REQUIRE(!h_reset_holds(h, d)); /* nor an armed reset_peer */
    /* bytes a timeout dropped were consumed from the head: skip them */
    x->dropped_seen = px->dropped;
    for (i = 0; i < mh->msg_iovlen; i++)
        total += mh->msg_iov[i].iov_len;
    REQUIRE(total > 0);
    if (sl != NULL)
        REQUIRE(total <= sl->f.size + sl->f.size_var);
    if (x->limit_id != 0) {
        const hfault *lim = h_last(d, SK_FAULT_LIMIT_DATA);
        REQUIRE(x->written + total - x->limit_base <= lim->f.bytes);
    }
    if (sd->err) {
        errno = sd->err;
        return -1;
    }
    if (sd->budget == 0) {
        errno = EAGAIN;
        return -1;
    }
    take = sd->budget < total ? sd->budget : total;
    /* exact bytes, in order */
    for (i = 0, k = 0; i < mh->msg_iovlen && k < take; i++) {
        const unsigned char *src = mh->msg_iov[i].iov_base;
        size_t j;

        for (j = 0; j < mh->msg_iov[i].iov_len && k < take; j++, k++)
            REQUIRE(src[j] == gen_byte(slot, d,
                                       x->written + x->dropped_seen + k));
    }
    /* never before read time + the latency floor of its read: the head
     * record holds the first byte written; later ones while they hold
     * bytes of this write */
    for (cov = x->written + x->dropped_seen;
         x->rd_n > 0 && cov < x->written + x->dropped_seen + take;) {
        if (x->rd[x->rd_head].end <= cov) { /* dropped, never written */
            x->rd_head = (x->rd_head + 1) % RD_MAX;
            x->rd_n--;
            continue;
        }
        REQUIRE(H.now >= x->rd[x->rd_head].at + x->rd[x->rd_head].minlat);
        if (x->rd[x->rd_head].end > x->written + x->dropped_seen + take)
            break;
        cov = x->rd[x->rd_head].end;
        x->rd_head = (x->rd_head + 1) % RD_MAX;
        x->rd_n--;
    }
    /* ... nor before the release time the proxy stamped */
    for (qi = px->qhead, qn = 0, cov = 0; qn < px->qlen && cov < take;
         qn++, qi = (qi + 1) % SK_PROXY_QMAX) {
        REQUIRE(px->q[qi].release <= H.now);
        cov += px->q[qi].len;
    }
    REQUIRE(cov >= take);
    /* bandwidth: rate x time since it took effect, plus one quantum (and a
     * byte a write for the rounding of the pace) */
    if (x->bw_rate != 0) {
        uint64_t quantum = x->bw_rate / 1000 ? x->bw_rate / 1000 : 1;
        unsigned __int128 allow =
            (unsigned __int128)x->bw_rate *
                (unsigned __int128)(H.now - x->bw_start) / 1000000000u +
            quantum + x->bw_writes + 1;
        x->bw_bytes += take;
        x->bw_writes++;
        REQUIRE((unsigned __int128)x->bw_bytes <= allow);
    }
    sd->budget -= take;
    x->written += take;
    TRACE("  write slot %d dir %d: %llu bytes\n", slot, d,
          (unsigned long long)take);
    return (ssize_t)take;
}

static int fx_shutdown(int fd, int how)
{
    int s;
    hconn *h = by_fd(fd, &s);
    hdir *x = &h->dir[1 - s];

    REQUIRE(how == SHUT_WR);
    REQUIRE(!h->side[s].closed);
    if (h->c == NULL || h->c->dead)
        return 0; /* part of an orderly close (h->c is NULL while
                     sk_pair_new runs: a reset_peer due at once) */
    /* forwarding the source's FIN: after it came and after every byte */
    REQUIRE(!x->fin_sent);
    REQUIRE(x->eof_given);
    REQUIRE(x->written + h->c->dir[1 - s].dropped == x->read);
    REQUIRE(H.now >= x->eof_at + h_slow_close(1 - s));
    x->fin_sent = 1;
    return 0;
}

static ssize_t fx_recv(int fd, void *buf, size_t n, int flags)
{
    int s;
    hconn *h = by_fd(fd, &s);

    (void)buf;
    (void)n;
    (void)flags;
    REQUIRE(!h->side[s].closed);
    return 0; /* what the peer sends while we close: nothing */
}

static int fx_close(int fd)
{
    int s;
    hconn *h = by_fd(fd, &s);

    REQUIRE(!h->side[s].closed); /* never twice */
    h->side[s].closed = 1;
    h->side[s].mask = 0;
    return 0;
}

static int fx_sk_abort(int fd, struct sk_err *err)
{
    int s;
    hconn *h = by_fd(fd, &s);

    (void)err;
    REQUIRE(!h->side[s].closed);
    h->side[s].closed = 1;
    h->side[s].aborted = 1;
    h->side[s].mask = 0;
    return 0;
}

static int fx_epoll_ctl(int ep, int op, int fd, struct epoll_event *ev)
{
    int s;
    hconn *h = by_fd(fd, &s);
    hside *sd = &h->side[s];

    (void)ep;
    REQUIRE(!sd->closed);
    switch (op) {
    case EPOLL_CTL_ADD:
        REQUIRE(sd->mask == 0 && ev != NULL && ev->events != 0);
        sd->mask = ev->events;
        break;
    case EPOLL_CTL_MOD:
        REQUIRE(sd->mask != 0 && ev != NULL && ev->events != 0);
        sd->mask = ev->events;
        break;
    default:
        REQUIRE(op == EPOLL_CTL_DEL && sd->mask != 0);
        sd->mask = 0;
        break;
    }
    return 0;
}

static int fx_socket(int domain, int type, int proto)
{
    (void)domain;
    (void)type;
    (void)proto;
    return FD0 + 2 * H.next_slot + 1;
}

static int fx_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    (void)fd;
    (void)sa;
    (void)len;
    errno = EINPROGRESS;
    return -1;
}

static int fx_getsockopt(int fd, int level, int name, void *val,
                         socklen_t *len)
{
    int s;
    hconn *h = by_fd(fd, &s);

    REQUIRE(level == SOL_SOCKET && name == SO_ERROR && *len >= sizeof(int));
    memcpy(val, &h->connect_err, sizeof(int));
    return 0;
}

static int fx_getsockname(int fd, struct sockaddr *sa, socklen_t *len)
{
    int s;

    by_fd(fd, &s);
    memset(sa, 0, *len);
    sa->sa_family = AF_INET;
    return 0;
}

static int fx_sk_set_nodelay(int fd, struct sk_err *err)
{
    int s;

    (void)err;
    by_fd(fd, &s);
    return 0;
}

/* ---- driving the reactor ----------------------------------------------- */

/* The fault as b[0..2] describe it (valid or not): b[0] bits 0-2 kind (8:
 * unknown), bits 3-4 directions (0: none), bits 5-6 a slicer's delay, all
 * of 5-7 set: a negative delay; b[1], b[2] the parameters. */
static void draw_fault(const uint8_t *b, sk_fault *f)
{
    memset(f, 0, sizeof(*f));
    f->kind = (sk_fault_kind)(1 + b[0] % 9); /* 9: an unknown kind */
    f->dirs = (b[0] >> 3) & 3;              /* 0: invalid */
    switch (f->kind) {
    case SK_FAULT_LATENCY:
        f->delay_ns = b[1] * MS;
        f->jitter_ns = b[2] * MS / 2;
        break;
    case SK_FAULT_BANDWIDTH:
        f->rate_Bps = (uint64_t)b[1] * b[2] * 97;
        break;
    case SK_FAULT_STALL:
    case SK_FAULT_TIMEOUT:
        f->delay_ns = b[1] * 10 * MS;
        break;
    case SK_FAULT_RESET_PEER:
        f->delay_ns = b[1] * 5 * MS;
        break;
    case SK_FAULT_SLOW_CLOSE:
        f->delay_ns = b[1] * MS;
        break;
    case SK_FAULT_SLICER:
        f->size = b[1];
        f->size_var = b[2] % (b[1] + 1u);
        f->delay_ns = ((b[0] >> 5) & 3) * MS;
        break;
    case SK_FAULT_LIMIT_DATA:
        f->bytes = (uint64_t)b[1] * 16 + b[2];
        break;
    default:
        break;
    }
    if ((b[0] & 0xe0) == 0xe0)
        f->delay_ns = -1; /* out of range */
}

/* proxy.h's rules for a valid fault, written again. */
static int fault_valid(const sk_fault *f)
{
    if (f->dirs == 0 || f->dirs > 3 || f->delay_ns < 0)
        return 0;
    switch (f->kind) {
    case SK_FAULT_BANDWIDTH:
        return f->rate_Bps >= 1;
    case SK_FAULT_SLICER:
        return f->size >= 1 && f->size_var < f->size;
    case SK_FAULT_LATENCY:
    case SK_FAULT_STALL:
    case SK_FAULT_TIMEOUT:
    case SK_FAULT_RESET_PEER:
    case SK_FAULT_SLOW_CLOSE:
    case SK_FAULT_LIMIT_DATA:
        return 1;
    default:
        return 0;
    }
}

/* The table changed: what sk_proxy_add/remove and the reactor do. */
static void table_changed(void)
{
    sk_proxy *p = H.p;

    pthread_mutex_lock(&p->mu);
    p->nfaults = H.nfaults;
    memcpy(p->faults, H.faults, H.nfaults * sizeof(p->faults[0]));
    p->gen++;
    pthread_mutex_unlock(&p->mu);
    h_refold(); /* windows start now, as the proxy's snapshot does */
    sk_px_refresh(p);
}

static void add_fault(const uint8_t *b)
{
    sk_fault f;
    sk_err err;
    int rc;

    draw_fault(b, &f);
    rc = sk_fault_check(&f, &err);
    REQUIRE(rc == (fault_valid(&f) ? SK_OK : SK_ERR));
    if (rc != SK_OK) {
        REQUIRE(err.code == SK_E_ARG);
        return;
    }
    if (H.nfaults == NFAULT)
        return;
    H.faults[H.nfaults].id = H.p->next_id = H.p->next_id + 1;
    H.faults[H.nfaults].added = H.now;
    H.faults[H.nfaults].f = f;
    H.nfaults++;
    TRACE("  fault %d dirs %u delay %lld jitter %lld rate %llu size %llu+-%llu "
          "bytes %llu\n", (int)f.kind, f.dirs, (long long)f.delay_ns,
          (long long)f.jitter_ns, (unsigned long long)f.rate_Bps,
          (unsigned long long)f.size, (unsigned long long)f.size_var,
          (unsigned long long)f.bytes);
    table_changed();
}

static void remove_fault(unsigned i)
{
    if (H.nfaults == 0)
        return;
    i %= H.nfaults;
    memmove(&H.faults[i], &H.faults[i + 1],
            (H.nfaults - i - 1) * sizeof(H.faults[0]));
    H.nfaults--;
    table_changed();
}

static void open_conn(unsigned b)
{
    struct sockaddr_storage ca;
    sk_pxpair *tail = H.p->live_tail;
    uint64_t accepted = atomic_load(&H.p->accepted);
    hconn *h;
    int slot;

    for (slot = 0; slot < MAXC && H.conn[slot].c != NULL; slot++)
        ;
    if (slot == MAXC)
        return;
    h = hconn_clear(slot);
    h->start = H.now;
    h->side[0].budget = h->side[1].budget = (b & 1) ? UINT64_MAX : 0;
    h->connect_err = (b & 6) == 6 ? ECONNREFUSED : 0;
    memset(&ca, 0, sizeof(ca));
    H.next_slot = slot;
    sk_pair_new(H.p, FD0 + 2 * slot, &ca);
    if (H.p->live_tail == tail) {
        if (atomic_load(&H.p->accepted) == accepted) {
            /* out of memory: the client was reset, nothing else left */
            REQUIRE(h->side[0].aborted);
        } else {
            /* made, and ended at once by a reset_peer already due */
            REQUIRE(h->side[0].closed && h->side[1].closed);
            REQUIRE(h_deadline(h) <= H.now);
        }
        REQUIRE(!h->side[1].mask);
        hconn_clear(slot);
        return;
    }
    h->c = H.p->live_tail;
    REQUIRE(h->c->connecting && h->c->start_ns == H.now);
    REQUIRE(h->side[1].mask & EPOLLOUT); /* waits for the connect */
    h_refold();
}

/* Run what the proxy's epoll would report, level-triggered, until nothing
 * is ready; a connection reported ready again and again with nothing
 * changing is a busy loop. */
static void epoll_loop(void)
{
    int round, s, side, again = 1;

    for (round = 0; again; round++) {
        again = 0;
        REQUIRE(round < 10000);
        for (s = 0; s < MAXC; s++) {
            for (side = 0; side < 2; side++) {
                hconn *h = &H.conn[s];
                hside *sd = &h->side[side];
                uint32_t ev = 0;

                if (h->c == NULL || h->c->dead || sd->closed)
                    continue;
                if ((sd->mask & EPOLLIN) &&
                    (sd->avail > 0 || sd->err ||
                     (sd->eof && !h->dir[side].eof_given)))
                    ev |= EPOLLIN;
                if ((sd->mask & EPOLLOUT) &&
                    (sd->budget > 0 || sd->err || h->c->connecting))
                    ev |= EPOLLOUT;
                if (sd->err && sd->mask)
                    ev |= EPOLLERR; /* reported only for sockets in the set */
                if (ev == 0)
                    continue;
                sk_pair_event(H.p, &h->c->end[side], ev);
                again = 1;
            }
        }
        /* an error is reported once: the pair fails on it */
        for (s = 0; s < MAXC; s++)
            if (H.conn[s].c != NULL && H.conn[s].c->dead) {
                H.conn[s].side[0].err = H.conn[s].side[1].err = 0;
                H.conn[s].side[0].avail = H.conn[s].side[1].avail = 0;
            }
    }
}

/* Free what ended (as the loop does after a batch); check how it ended. */
static void reap(void)
{
    sk_proxy *p = H.p;
    sk_pxpair *c;
    int s;

    for (s = 0; s < MAXC; s++) {
        hconn *h = &H.conn[s];
        if (h->c == NULL || !h->c->dead)
            continue;
        REQUIRE(h->side[0].closed && h->side[1].closed);
        h->c = NULL;
    }
    while (p->zombies != NULL) {
        c = p->zombies;
        p->zombies = c->zombie_next;
        sk_pair_free(c);
    }
}

/* The invariants of the file comment. */
static void check_state(int after_timers)
{
    sk_proxy *p = H.p;
    uint64_t buffered = 0, live = 0;
    size_t i;
    int s, d;

    for (i = 0; i < p->heap.len; i++) {
        REQUIRE(p->heap.v[i]->idx == i);
        REQUIRE(i == 0 || p->heap.v[(i - 1) / 2]->key <= p->heap.v[i]->key);
    }
    for (s = 0; s < MAXC; s++) {
        hconn *h = &H.conn[s];
        sk_pxpair *c = h->c;

        if (c == NULL)
            continue;
        REQUIRE(!c->dead);
        live++;
        REQUIRE(!sk_heap_contains(&c->wake) ||
                (c->wake.idx < p->heap.len && p->heap.v[c->wake.idx] == &c->wake));
        for (d = 0; d < 2; d++) {
            const sk_pxdir *x = &c->dir[d];
            const hdir *hx = &h->dir[d];
            uint64_t sum = 0;
            int64_t prev = INT64_MIN;
            unsigned k, qi;

            REQUIRE(x->used <= x->cap && x->qlen <= SK_PROXY_QMAX);
            for (k = 0, qi = x->qhead; k < x->qlen;
                 k++, qi = (qi + 1) % SK_PROXY_QMAX) {
                REQUIRE(x->q[qi].len > 0);
                REQUIRE(x->q[qi].release >= prev);
                prev = x->q[qi].release;
                sum += x->q[qi].len;
            }
            REQUIRE(sum == x->used);
            REQUIRE(atomic_load(&x->held) == x->used);
            REQUIRE(hx->read == hx->written + x->dropped + x->used);
            buffered += x->used;
            if (c->connecting)
                continue;
            /* waiting for something epoll will report */
            if (x->want_write)
                REQUIRE(h->side[1 - d].mask & EPOLLOUT);
            {
                uint64_t due = 0;
                size_t lim = h_latency_on(d) && p->bufsize < SK_PROXY_INFLIGHT_MAX
                                 ? SK_PROXY_INFLIGHT_MAX
                                 : p->bufsize;

                for (k = 0, qi = x->qhead; k < x->qlen;
                     k++, qi = (qi + 1) % SK_PROXY_QMAX)
                    if (x->q[qi].release <= H.now)
                        due += x->q[qi].len;
                if (!x->src_eof && x->qlen < SK_PROXY_QMAX && x->used < lim &&
                    due < p->bufsize)
                    REQUIRE(h->side[d].mask & EPOLLIN);
                /* a read never goes past the limit of its time (bytes
                 * held when latency goes away stay held) */
                REQUIRE(x->used <= (p->bufsize > SK_PROXY_INFLIGHT_MAX
                                        ? p->bufsize
                                        : SK_PROXY_INFLIGHT_MAX));
            }
            if (!after_timers)
                continue;
            /* nothing due is left behind */
            if (x->used > 0 && h_last(d, SK_FAULT_STALL) == NULL &&
                h_last(d, SK_FAULT_TIMEOUT) == NULL && !h_reset_holds(h, d) &&
                !x->want_write && !x->shut_sent &&
                x->q[x->qhead].release <= H.now &&
                (hx->bw_rate == 0 || x->pace_ns <= H.now) &&
                (h_last(d, SK_FAULT_SLICER) == NULL || x->slice_ns <= H.now))
                REQUIRE(h->side[1 - d].budget == 0 || h->side[1 - d].err);
            if (hx->limit_id != 0)
                REQUIRE(hx->written - hx->limit_base <
                        h_last(d, SK_FAULT_LIMIT_DATA)->f.bytes);
        }
        if (after_timers)
            REQUIRE(h_deadline(h) > H.now); /* a due reset/timeout ran */
    }
    REQUIRE(atomic_load(&p->buffered) == buffered);
    REQUIRE(atomic_load(&p->active) == live);
}

static void setup(const uint8_t *cfg)
{
    sk_proxy *p = calloc(1, sizeof(*p));

    REQUIRE(p != NULL);
    memset(&H, 0, sizeof(H));
    H.p = p;
    H.now = 1000 * 1000 * MS;
    p->lfd = p->epfd = p->evfd = -1;
    p->up_addr.ss_family = AF_INET;
    p->up_len = sizeof(struct sockaddr_in);
    p->bufsize = (size_t)SK_PROXY_MIN_BUF << (cfg[0] & 3);
    p->max_conns = MAXC;
    p->rng = 1 + cfg[1];
    sk_heap_init(&p->heap);
    REQUIRE(sk_heap_reserve(&p->heap, MAXC) == SK_OK);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->applied_cv, NULL);
    p->running = 1;
    p->lend.kind = SK_END_LISTEN;
    p->lend.fd = -1;
    p->wend.kind = SK_END_WAKE;
    p->wend.fd = -1;
    __atomic_store_n(&sk_clock_hook, fake_clock, __ATOMIC_RELEASE);
    __atomic_store_n(&sk_fault_hook, fault_hook, __ATOMIC_RELEASE);
    sk_px_refresh(p);
}

static void teardown(void)
{
    sk_proxy *p = H.p;

    H.fail_alloc = 0;
    while (p->live_head != NULL)
        sk_pair_end(p, p->live_head, SK_CLOSE_ORDERLY, SK_CLOSE_ORDERLY);
    reap();
    pthread_cond_destroy(&p->applied_cv);
    pthread_mutex_destroy(&p->mu);
    sk_heap_free(&p->heap);
    free(p);
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
    __atomic_store_n(&sk_clock_hook, (sk_clock_fn)NULL, __ATOMIC_RELEASE);
}

/*
 * Input: 2 configuration bytes (buffer size 1..8 KiB, jitter seed), then
 * operations of 4 bytes: [op][a][b][c]
 *   0 add a fault from a, b, c      4 side (a&1) of slot b: an error
 *   1 remove fault a                5 side (a&1) of slot b: window += c*64
 *   2 open a connection             6 time passes (a, b: scale), timers run
 *   3 side (a&1) of slot b: c*16+1 bytes arrive, or EOF when a&2
 *   7 the next allocation fails
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t pos;

    if (size < 2)
        return 0;
    if (trace < 0)
        trace = getenv("FUZZ_TRACE") != NULL;
    setup(data);
    for (pos = 2; pos + 4 <= size; pos += 4) {
        const uint8_t *o = data + pos;
        hconn *h = &H.conn[o[2] % MAXC];
        hside *sd = &h->side[o[1] & 1];
        int timers = 0;

        TRACE("t=%lld op %u %u %u %u\n", (long long)(H.now - 1000 * 1000 * MS),
              o[0] & 7, o[1], o[2], o[3]);
        switch (o[0] & 7) {
        case 0:
            add_fault(o + 1);
            break;
        case 1:
            remove_fault(o[1]);
            break;
        case 2:
            open_conn(o[1]);
            break;
        case 3:
            if (h->c == NULL || h->c->dead || sd->eof)
                break;
            if (o[1] & 2)
                sd->eof = 1;
            else
                sd->avail += (uint64_t)o[3] * 16 + 1;
            break;
        case 4:
            if (h->c != NULL && !h->c->dead)
                sd->err = (o[1] & 4) ? EPIPE : ECONNRESET;
            break;
        case 5:
            if (h->c != NULL && sd->budget != UINT64_MAX)
                sd->budget += (uint64_t)o[3] * 64;
            break;
        case 6:
            H.now += (o[1] & 128) ? (int64_t)(o[1] & 127) * 10 * MS +
                                        (int64_t)o[2] * MS / 10
                                  : (int64_t)o[1] * MS / 10 + o[2];
            sk_px_run_timers(H.p); /* the reactor's timer turn */
            timers = 1;
            break;
        default:
            H.fail_alloc = 1;
            break;
        }
        epoll_loop();
        reap();
        check_state(timers);
    }
    teardown();
    return 0;
}
