/* watch.c - a sampler thread following one TCP connection's state (see
 * watch.h for the fd phase / diag phase design).
 *
 * Layout: rings (pure), one sample (syscalls, no lock), the thread, the
 * public functions.  Locking: `mu` guards the rings, the counters and
 * `stop`; the sampler takes its sample without it and records under it.
 * `join_mu` serialises joiners so pthread_join runs once. */
#include "watch.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clock.h"
#include "sys.h"
#include "tcpinfo.h"
#include "thread.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57 /* Linux >= 4.13, asm-generic/socket.h */
#endif

#define SK_WATCH_STACK (512 * 1024)
#define SK_WATCH_LOOKUP_MS 2000 /* one diag lookup; normally ~20 us */

struct sk_watch {
    /* immutable after start */
    int fd;                   /* -1: tuple only */
    int is_fd_target;
    int64_t interval_ns;
    int sample_info;
    pid_t pid;                /* the process that started the thread */
    pthread_t thread;

    /* sampler-private (only the sampler thread, or start before it runs) */
    int fd_phase;
    int has_tuple;
    sk_diag_lookup_req tuple;
    int cookie_locked;
    uint64_t cookie;
    int have_last_info;
    sk_watch_sample last_info;

    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* stop requests; CLOCK_MONOTONIC */
    pthread_cond_t rec_cv;    /* a sample was recorded, or the sampler
                                 ended (sk_watch_follow); CLOCK_MONOTONIC */
    int stop;
    int running;
    int finished;
    int64_t start_ns, first_ns, last_ns, handover_ns;
    uint64_t samples, lookups;
    int state;                /* latest, -1 before the first sample */
    sk_err err;
    /* snapshot of the sampler-private identity, for stats */
    int pub_fd_phase, pub_has_tuple;
    sk_diag_lookup_req pub_tuple;
    uint64_t pub_cookie;

    sk_watch_transition *tr;  /* ring */
    size_t tr_cap, tr_head, tr_len;
    uint64_t tr_total, tr_dropped;
    sk_watch_sample *sm;      /* ring, NULL without sample_info */
    size_t sm_cap, sm_head, sm_len;
    uint64_t sm_total, sm_dropped;

    /* joining */
    pthread_mutex_t join_mu;
    int joined;
    int thread_started;
};

/* ------------------------------------------------------------- locking */

/* Contract: take mu for a reader/stopper; returns 1 if taken.  In a child
 * made by fork() there is no sampler, and mu may have been copied locked
 * (the fork landed while the sampler held it): the child reads without
 * it, as nothing else can write. */
static int outer_lock(sk_watch *w)
{
    int own = getpid() == w->pid;

    if (own)
        pthread_mutex_lock(&w->mu);
    return own;
}

/* Contract: release what outer_lock took (nothing if it took nothing). */
static void outer_unlock(sk_watch *w, int locked)
{
    if (locked)
        pthread_mutex_unlock(&w->mu);
}

/* ---------------------------------------------------------------- rings */

/* Contract: mu held (or no thread yet).  Append, overwriting the oldest
 * record when full. */
static void tr_push(sk_watch *w, const sk_watch_transition *t)
{
    size_t at = (w->tr_head + w->tr_len) % w->tr_cap;

    if (w->tr_len == w->tr_cap) {
        w->tr_head = (w->tr_head + 1) % w->tr_cap;
        w->tr_dropped++;
    } else {
        w->tr_len++;
    }
    w->tr[at] = *t;
    w->tr_total++;
}

/* Contract: as tr_push, for info samples. */
static void sm_push(sk_watch *w, const sk_watch_sample *s)
{
    size_t at = (w->sm_head + w->sm_len) % w->sm_cap;

    if (w->sm_len == w->sm_cap) {
        w->sm_head = (w->sm_head + 1) % w->sm_cap;
        w->sm_dropped++;
    } else {
        w->sm_len++;
    }
    w->sm[at] = *s;
    w->sm_total++;
}

/* ------------------------------------------------------------ one sample */

typedef struct tick {
    int64_t t_ns;
    int state;
    int via_diag;
    int have_info;
    sk_watch_sample info;
} tick;

/* Contract: fill s's value fields (not t_ns) from ti.  Pure. */
static void info_to_sample(const sk_tcp_info *ti, sk_watch_sample *s)
{
    memset(s, 0, sizeof(*s));
    s->state = ti->tcpi_state;
    s->rtt_us = ti->tcpi_rtt;
    s->rttvar_us = ti->tcpi_rttvar;
    s->snd_cwnd = ti->tcpi_snd_cwnd;
    s->snd_ssthresh = ti->tcpi_snd_ssthresh;
    s->unacked = ti->tcpi_unacked;
    s->total_retrans = ti->tcpi_total_retrans;
}

/* Contract: getsockopt(SO_COOKIE).  SK_OK with *cookie, or SK_ERR with
 * err set (an fd that is not a socket, a kernel older than 4.13). */
static int read_cookie(int fd, uint64_t *cookie, sk_err *err)
{
    socklen_t len = sizeof(*cookie);
    int rc = SK_ERR;

    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) < 0) {
        sk_err_sys(err, "getsockopt(SO_COOKIE)", errno);
        goto done;
    }
    if (len != sizeof(*cookie)) {
        sk_err_set(err, SK_E_SYS, "getsockopt(SO_COOKIE): short value");
        goto done;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: fill the lookup request from the fd's addresses.  Returns 1 if
 * the fd is connected (both names known, an inet family), else 0.  No
 * error: an unconnected socket simply has no 4-tuple yet. */
static int read_tuple(int fd, sk_diag_lookup_req *r)
{
    struct sockaddr_storage a, b;
    socklen_t la = sizeof(a), lb = sizeof(b);
    int ok = 0;

    if (getsockname(fd, (struct sockaddr *)&a, &la) < 0
        || getpeername(fd, (struct sockaddr *)&b, &lb) < 0)
        goto done;
    if (a.ss_family != b.ss_family)
        goto done;
    memset(r, 0, sizeof(*r));
    if (a.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&b;
        r->family = AF_INET;
        memcpy(r->src, &s->sin_addr, 4);
        memcpy(r->dst, &d->sin_addr, 4);
        r->sport = ntohs(s->sin_port);
        r->dport = ntohs(d->sin_port);
    } else if (a.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&b;
        r->family = AF_INET6;
        memcpy(r->src, &s->sin6_addr, 16);
        memcpy(r->dst, &d->sin6_addr, 16);
        r->sport = ntohs(s->sin6_port);
        r->dport = ntohs(d->sin6_port);
    } else {
        goto done;
    }
    ok = 1;
done:
    return ok;
}

/*
 * Contract: the fd phase of one tick.  Returns 1 with tk->state (and info)
 * if the reading came from our socket, 0 if the fd is no longer ours (the
 * caller hands over to diag).  Sampler thread, or start; no lock.
 */
static int sample_fd(sk_watch *w, tick *tk)
{
    sk_tcp_info ti;
    sk_err e;
    uint64_t ck = 0;
    int state = -1, ours = 0;

    if (w->sample_info) {
        if (sk_tcp_info_get(w->fd, &ti, &e) != SK_OK || ti.len < 1)
            goto done;
        state = ti.tcpi_state;
    } else if (sk_tcp_state(w->fd, &state, &e) != SK_OK) {
        goto done;
    }
    /* after the read: was that still our socket? */
    if (read_cookie(w->fd, &ck, &e) != SK_OK || ck != w->cookie)
        goto done;
    tk->state = state;
    tk->via_diag = 0;
    if (w->sample_info) {
        info_to_sample(&ti, &tk->info);
        tk->have_info = 1;
    }
    if (!w->has_tuple && state != SK_TCP_CLOSE && state != SK_TCP_LISTEN)
        w->has_tuple = read_tuple(w->fd, &w->tuple);
    ours = 1;
done:
    return ours;
}

/*
 * Contract: one diag lookup of the tuple (and the locked cookie).  Sets
 * tk->state (CLOSE when not found), *found.  SK_OK, or SK_ERR with err
 * set.  Sampler thread, or start; no lock (counts lookups in *nlookups).
 */
static int sample_diag(sk_watch *w, tick *tk, int *found, uint64_t *nlookups,
                       sk_err *err)
{
    sk_diag_lookup_req r = w->tuple;
    sk_diag_entry e;
    sk_tcp_info ti;
    int rc = SK_ERR;

    *found = 0;
    r.has_cookie = w->cookie_locked;
    r.cookie = w->cookie;
    r.flags = w->sample_info ? SK_DIAG_WITH_INFO : 0;
    r.timeout_ms = SK_WATCH_LOOKUP_MS;
    (*nlookups)++;
    if (sk_diag_lookup(&r, &e, &ti, found, err) != SK_OK)
        goto done;
    tk->via_diag = 1;
    if (*found) {
        tk->state = e.state;
        if (!w->cookie_locked) {
            w->cookie = e.cookie;
            w->cookie_locked = 1;
        }
        if (w->sample_info && e.info != NULL) {
            info_to_sample(e.info, &tk->info);
            tk->info.state = e.state;
            tk->have_info = 1;
        }
    } else {
        tk->state = SK_TCP_CLOSE;
    }
    rc = SK_OK;
done:
    return rc;
}

/*
 * Contract: take one sample into *tk.  *gone is set when the socket can
 * never be seen again (fd target, diag phase, not found).  *handed_over
 * when this tick left the fd phase.  SK_OK or SK_ERR (err set).  Sampler
 * thread, or start before the thread exists; no lock.
 */
static int sample_once(sk_watch *w, tick *tk, int *gone, int *handed_over,
                       uint64_t *nlookups, sk_err *err)
{
    int found = 0, rc = SK_ERR;

    memset(tk, 0, sizeof(*tk));
    *gone = 0;
    *handed_over = 0;
    tk->t_ns = sk_now_ns();
    if (w->fd_phase) {
        if (sample_fd(w, tk)) {
            /* A kept fd reads CLOSE while its TIME_WAIT (same 4-tuple and
             * cookie) lives on in the kernel: ask diag which it is. */
            if (tk->state != SK_TCP_CLOSE || !w->has_tuple) {
                rc = SK_OK;
                goto done;
            }
        } else {
            w->fd_phase = 0;
            *handed_over = 1;
        }
    }
    if (!w->has_tuple) {
        /* never connected: nothing for diag to find */
        tk->state = SK_TCP_CLOSE;
        tk->via_diag = 0;
        *gone = !w->fd_phase;
        rc = SK_OK;
        goto done;
    }
    if (sample_diag(w, tk, &found, nlookups, err) != SK_OK)
        goto done;
    if (!found && w->fd_phase) {
        tk->via_diag = 0; /* the fd's own CLOSE, confirmed */
    } else if (!found && w->is_fd_target) {
        *gone = 1;
    } else if (!found) {
        w->cookie_locked = 0; /* tuple target: follow the next socket */
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: mu held.  Record a tick: a transition if the state changed,
 * an info sample if its values changed. */
static void record(sk_watch *w, const tick *tk)
{
    if (w->samples == 0)
        w->first_ns = tk->t_ns;
    w->samples++;
    w->last_ns = tk->t_ns;
    if (w->state != tk->state) {
        sk_watch_transition t;

        t.t_ns = tk->t_ns;
        t.state = tk->state;
        t.via_diag = tk->via_diag;
        tr_push(w, &t);
        w->state = tk->state;
    }
    if (tk->have_info && w->sm != NULL) {
        sk_watch_sample s = tk->info;

        s.t_ns = 0;
        if (!w->have_last_info
            || memcmp(&s, &w->last_info, sizeof(s)) != 0) {
            w->last_info = s;
            w->have_last_info = 1;
            s.t_ns = tk->t_ns;
            sm_push(w, &s);
        }
    }
    w->pub_fd_phase = w->fd_phase;
    w->pub_has_tuple = w->has_tuple;
    w->pub_tuple = w->tuple;
    w->pub_cookie = (w->cookie_locked || w->is_fd_target) ? w->cookie : 0;
}

/* ------------------------------------------------------------- thread */

/* Contract: ask the scheduler for a short slice (Linux >= 6.12, EEVDF:
 * sched_attr.sched_runtime of a SCHED_OTHER thread is its slice; no
 * privilege needed, same nice level).  A short slice gives the thread an
 * early deadline, so its wake-ups preempt busy threads instead of waiting
 * for their slice to end: on a saturated machine the rate stays near the
 * target.  Older kernels ignore sched_runtime for SCHED_OTHER; failure is
 * harmless and ignored. */
static void set_short_slice(void)
{
#ifdef SYS_sched_setattr
    /* struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes); the uapi header
     * clashes with glibc's struct sched_param */
    struct {
        uint32_t size, sched_policy;
        uint64_t sched_flags;
        int32_t sched_nice;
        uint32_t sched_priority;
        uint64_t sched_runtime, sched_deadline, sched_period;
    } a;

    memset(&a, 0, sizeof(a));
    a.size = sizeof(a);
    a.sched_policy = SCHED_OTHER;
    a.sched_nice = getpriority(PRIO_PROCESS, 0);
    a.sched_runtime = 100000; /* 100 us, the kernel's minimum */
    (void)syscall(SYS_sched_setattr, 0, &a, 0U);
#endif
}

/* Contract: the sampler thread.  Never touches Python.  Ends on stop, on
 * "gone for good", or on an error (kept in w->err). */
static void *sampler_main(void *arg)
{
    sk_watch *w = arg;
    int64_t next;
    struct timespec ts;
    uint64_t nlookups;
    sk_err err;
    tick tk;
    int gone, handed_over, rc;

    /* 1 us timer slack instead of 50 us: ticks land on time */
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    set_short_slice();
    sk_err_clear(&err);
    pthread_mutex_lock(&w->mu);
    next = w->start_ns;
    while (!w->stop) {
        int64_t now = sk_now_ns();

        next += w->interval_ns;
        if (next < now) /* late: skip the missed ticks, never burst */
            next = now + w->interval_ns
                 - (now - w->start_ns) % w->interval_ns;
        ts.tv_sec = (time_t)(next / 1000000000LL);
        ts.tv_nsec = (long)(next % 1000000000LL);
        while (!w->stop) {
            int r = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            if (r != 0) /* ETIMEDOUT: the tick is due */
                break;
        }
        if (w->stop)
            break;
        pthread_mutex_unlock(&w->mu);
        nlookups = 0;
        rc = sample_once(w, &tk, &gone, &handed_over, &nlookups, &err);
        pthread_mutex_lock(&w->mu);
        w->lookups += nlookups;
        if (rc != SK_OK) {
            w->err = err;
            break;
        }
        if (handed_over)
            w->handover_ns = tk.t_ns;
        record(w, &tk);
        pthread_cond_broadcast(&w->rec_cv);
        if (gone) {
            w->finished = 1;
            break;
        }
    }
    w->running = 0;
    pthread_cond_broadcast(&w->rec_cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* -------------------------------------------------------------- public */

/* Contract: free the parts of a watch whose thread never started or was
 * joined.  w may be NULL. */
static void watch_destroy(sk_watch *w)
{
    if (w != NULL) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        pthread_cond_destroy(&w->rec_cv);
        pthread_mutex_destroy(&w->join_mu);
        free(w->tr);
        free(w->sm);
        free(w);
    }
}

/* Contract: see watch.h.  Owns everything it allocates until it hands *out
 * to the caller. */
int sk_watch_start(const sk_watch_target *t, const sk_watch_config *c,
                   sk_watch **out, sk_err *err)
{
    sk_watch *w = NULL;
    uint64_t nlookups = 0;
    tick tk;
    int gone, handed_over, rc = SK_ERR;

    if (out != NULL)
        *out = NULL;
    if (t == NULL || c == NULL || out == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_watch_start: NULL argument");
        goto done;
    }
    if (t->fd < 0 && !t->has_tuple) {
        sk_err_set(err, SK_E_ARG, "watch: need a socket fd or a 4-tuple");
        goto done;
    }
    if (t->fd < 0 && t->tuple.family != AF_INET
        && t->tuple.family != AF_INET6) {
        sk_err_set(err, SK_E_ARG, "watch: family must be AF_INET or AF_INET6");
        goto done;
    }
    if (c->interval_ns > 0 && (c->interval_ns < SK_WATCH_MIN_INTERVAL_NS
                               || c->interval_ns > SK_WATCH_MAX_INTERVAL_NS)) {
        sk_err_set(err, SK_E_ARG, "watch: interval must be in [%g, %g] s",
                   SK_WATCH_MIN_INTERVAL_NS / 1e9,
                   SK_WATCH_MAX_INTERVAL_NS / 1e9);
        goto done;
    }
    if (c->max_transitions > SK_WATCH_MAX_RING
        || c->max_samples > SK_WATCH_MAX_RING) {
        sk_err_set(err, SK_E_ARG, "watch: ring size must be at most %u",
                   SK_WATCH_MAX_RING);
        goto done;
    }
    w = sk_calloc(1, sizeof(*w));
    if (w == NULL) {
        sk_err_set(err, SK_E_NOMEM, "watch: out of memory");
        goto done;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->join_mu, NULL);
    /* both condition variables exist from here on, even on failure, so
     * that watch_destroy can destroy them */
    if (sk_cond_init_monotonic(&w->cv, err) != SK_OK) {
        pthread_cond_init(&w->rec_cv, NULL);
        goto done;
    }
    if (sk_cond_init_monotonic(&w->rec_cv, err) != SK_OK)
        goto done;
    w->fd = t->fd;
    w->is_fd_target = t->fd >= 0;
    w->interval_ns = c->interval_ns > 0 ? c->interval_ns
                                        : SK_WATCH_DEFAULT_INTERVAL_NS;
    w->sample_info = c->sample_info != 0;
    w->pid = getpid();
    w->state = -1;
    w->tr_cap = c->max_transitions ? c->max_transitions
                                   : SK_WATCH_DEFAULT_TRANSITIONS;
    w->tr = sk_calloc(w->tr_cap, sizeof(*w->tr));
    if (w->tr == NULL) {
        sk_err_set(err, SK_E_NOMEM, "watch: out of memory (transitions)");
        goto done;
    }
    if (w->sample_info) {
        w->sm_cap = c->max_samples ? c->max_samples : SK_WATCH_DEFAULT_SAMPLES;
        w->sm = sk_calloc(w->sm_cap, sizeof(*w->sm));
        if (w->sm == NULL) {
            sk_err_set(err, SK_E_NOMEM, "watch: out of memory (samples)");
            goto done;
        }
    }
    if (w->is_fd_target) {
        int st;

        /* a TCP socket?  (names the syscall in the error) */
        if (sk_tcp_state(w->fd, &st, err) != SK_OK)
            goto done;
        if (read_cookie(w->fd, &w->cookie, err) != SK_OK)
            goto done;
        w->cookie_locked = 1;
        w->fd_phase = 1;
        w->has_tuple = read_tuple(w->fd, &w->tuple);
    } else {
        w->tuple = t->tuple;
        w->tuple.has_cookie = 0;
        w->has_tuple = 1;
    }
    /* the first sample, here, so the state at start is always recorded */
    w->start_ns = sk_now_ns();
    if (sample_once(w, &tk, &gone, &handed_over, &nlookups, err) != SK_OK)
        goto done;
    w->lookups = nlookups;
    if (handed_over)
        w->handover_ns = tk.t_ns;
    record(w, &tk);
    w->running = 1;
    if (gone) {
        /* already gone: nothing to sample */
        w->finished = 1;
        w->running = 0;
        *out = w;
        w = NULL;
        rc = SK_OK;
        goto done;
    }
    if (sk_thread_spawn(&w->thread, SK_WATCH_STACK, sampler_main, w, err) !=
        SK_OK) {
        w->running = 0;
        goto done;
    }
    w->thread_started = 1;
    *out = w;
    w = NULL;
    rc = SK_OK;
done:
    if (w != NULL)
        watch_destroy(w);
    return rc;
}

/* Contract: see watch.h. */
void sk_watch_stop(sk_watch *w)
{
    if (w == NULL || getpid() != w->pid)
        goto done; /* after fork() this process has no sampler to stop */
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_lock(&w->join_mu);
    if (w->thread_started && !w->joined) {
        pthread_join(w->thread, NULL);
        w->joined = 1;
        pthread_mutex_lock(&w->mu);
        w->running = 0;
        pthread_mutex_unlock(&w->mu);
    }
    pthread_mutex_unlock(&w->join_mu);
done:
    return;
}

/* Contract: pure.  The states of a connection whose close is under way
 * (more is to come without the application doing anything). */
static int is_closing(int state)
{
    return state == SK_TCP_FIN_WAIT1 || state == SK_TCP_FIN_WAIT2 ||
           state == SK_TCP_CLOSING || state == SK_TCP_LAST_ACK;
}

/* Contract: see watch.h. */
int sk_watch_follow(sk_watch *w, int64_t since_ns, int64_t deadline_ns)
{
    struct timespec ts;
    int r = SK_WATCH_CLOSED;

    if (w == NULL || getpid() != w->pid)
        goto done; /* after fork() nothing samples here: over */
    ts.tv_sec = (time_t)(deadline_ns / 1000000000LL);
    ts.tv_nsec = (long)(deadline_ns % 1000000000LL);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (w->samples > 0 && (w->state == SK_TCP_TIME_WAIT ||
                               w->state == SK_TCP_CLOSE)) {
            r = SK_WATCH_CLOSED;
            break;
        }
        if (!w->running) {
            r = SK_WATCH_CLOSED;
            break;
        }
        if (w->samples > 0 && w->last_ns >= since_ns && !is_closing(w->state)) {
            r = SK_WATCH_NOT_CLOSING;
            break;
        }
        if (deadline_ns != SK_NO_DEADLINE && sk_now_ns() >= deadline_ns) {
            r = SK_WATCH_STILL_CLOSING;
            break;
        }
        if (deadline_ns == SK_NO_DEADLINE)
            pthread_cond_wait(&w->rec_cv, &w->mu);
        else
            pthread_cond_timedwait(&w->rec_cv, &w->mu, &ts);
    }
    pthread_mutex_unlock(&w->mu);
done:
    return r;
}

/* Contract: see watch.h. */
void sk_watch_free(sk_watch *w)
{
    if (w != NULL && getpid() != w->pid) {
        /* a fork()ed child: its copies of the locks may be held by a thread
         * that does not exist here; free the memory, leave the locks */
        free(w->tr);
        free(w->sm);
        free(w);
    } else if (w != NULL) {
        sk_watch_stop(w);
        watch_destroy(w);
    }
}

/* Contract: see watch.h. */
size_t sk_watch_transitions(sk_watch *w, sk_watch_transition *out,
                            size_t cap)
{
    size_t i, n = 0;
    int locked;

    if (w == NULL)
        goto done;
    locked = outer_lock(w);
    n = w->tr_len;
    for (i = 0; i < n && i < cap && out != NULL; i++)
        out[i] = w->tr[(w->tr_head + i) % w->tr_cap];
    outer_unlock(w, locked);
done:
    return n;
}

/* Contract: see watch.h. */
size_t sk_watch_samples(sk_watch *w, sk_watch_sample *out, size_t cap)
{
    size_t i, n = 0;
    int locked;

    if (w == NULL)
        goto done;
    locked = outer_lock(w);
    n = w->sm_len;
    for (i = 0; i < n && i < cap && out != NULL; i++)
        out[i] = w->sm[(w->sm_head + i) % w->sm_cap];
    outer_unlock(w, locked);
done:
    return n;
}

/* Contract: see watch.h. */
void sk_watch_get_stats(sk_watch *w, sk_watch_stats *st)
{
    int locked;

    memset(st, 0, sizeof(*st));
    st->state = -1;
    if (w == NULL)
        goto done;
    locked = outer_lock(w);
    st->start_ns = w->start_ns;
    st->first_ns = w->first_ns;
    st->last_ns = w->last_ns;
    st->handover_ns = w->handover_ns;
    st->samples = w->samples;
    st->lookups = w->lookups;
    st->transitions = w->tr_total;
    st->transitions_dropped = w->tr_dropped;
    st->info_samples = w->sm_total;
    st->info_dropped = w->sm_dropped;
    st->cookie = w->pub_cookie;
    st->state = w->state;
    st->running = w->running;
    st->finished = w->finished;
    st->fd_phase = w->pub_fd_phase;
    st->has_tuple = w->pub_has_tuple;
    st->tuple = w->pub_tuple;
    st->err = w->err;
    if (!locked)
        st->running = 0; /* no sampler in a fork()ed child */
    outer_unlock(w, locked);
done:
    return;
}
