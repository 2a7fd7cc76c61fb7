/* server.c - the server reactor behind sk.serve (see server.h). */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "io.h"
#include "sock.h"
#include "sys.h"
#include "thread.h"

#define SK_SRV_EVENTS 512
#define SK_SRV_WAKE_TAG UINT64_MAX
#define SK_SRV_LISTEN_TAG (UINT64_MAX - 1)
#define SK_SRV_ACCEPTS 256                /* accepts per turn, at most */
#define SK_SRV_ACCEPT_PAUSE_NS 50000000LL /* after EMFILE and the like */
#define SK_SRV_LOST_RETRY_NS 1000000LL  /* an unreported end: retry after */
#define SK_SRV_INFLIGHT_MAX 1024          /* messages of one client in flight */
#define SK_SRV_STACK (256 * 1024)

/* A ticket (what a message carries to the handler and its answer back):
 * the plain sequence number in the high half (0: correlated), the request's
 * length (clamped to 31 bits) in the low bits, so that the answer gives both
 * back, and bit 31: SK_SRV_TICKET_DIRECT, the handler thread may write the
 * reply itself (see sk_srv_direct). */
#define SK_SRV_TICKET(seq, len)                                               \
    (((uint64_t)(seq) << 32) | ((len) > 0x7fffffffu ? 0x7fffffffu : (len)))
#define SK_SRV_TICKET_SEQ(t) ((uint32_t)((t) >> 32))
#define SK_SRV_TICKET_LEN(t) ((size_t)((t) & 0x7fffffffu))
#define SK_SRV_TICKET_DIRECT (1ull << 31)

/* An answer kind inside the server: the handler thread wrote the reply
 * itself; base/len is the tail the socket did not take (often none). */
#define SK_SRV_SENT 16
#define SK_SRV_MAX_HEADER 8 /* header_size is 1, 2, 4 or 8 */
#define SK_SRV_DIRECT_COPY 1024 /* a direct reply up to this: one send() */

enum {
    SK_CL_OPEN = 1,   /* reading and answering */
    SK_CL_DRAIN = 2,  /* the read side ended (or the handler failed on a
                         plain request): write what is due, then end */
    SK_CL_ZOMBIE = 3, /* ended and reported; waiting for sk_srv_forget */
};

enum { SK_T_NONE = 0, SK_T_READ = 1, SK_T_WRITE = 2 };

/* A plain reply that arrived ahead of its turn. */
typedef struct sk_srv_held {
    struct sk_srv_held *next;
    uint32_t seq;
    int kind;
    size_t len;
    unsigned char data[];
} sk_srv_held;

typedef struct sk_srv_client {
    sk_conn c; /* decoder, output buffer, receive errors, heartbeats */
    uint64_t cid;
    int state;
    int hb;      /* registered with the hub: the reactor holds recv_mu */
    int closing; /* the handler failed on a plain request */
    sk_err end;  /* why it ends (SK_CL_DRAIN) */
    uint32_t seq_in, seq_out;
    uint64_t inflight;
    size_t inflight_bytes;
    sk_srv_held *held;
    uint32_t events; /* registered with epoll (0: not registered) */
    int timer;
    int64_t deadline;
    struct sk_srv_client *tprev, *tnext;
    struct sk_srv_client *dnext;
    struct sk_srv_client *lnext; /* on the unreported list (ended, its end
                                    event not queued yet: out of memory) */
    int lost_kind;
    int gone; /* its socket is being closed: set under sk_srv.mu; then
                 sk_srv_finish waits for c.send_mu, which a handler thread
                 holds while it writes a direct reply */
    int dirty;
    int port;
    char host[48];
} sk_srv_client;

typedef struct sk_srv_tlist {
    sk_srv_client *head, *tail;
} sk_srv_tlist;

/* Answers (or forgets) handed over by a handler thread: one block. */
typedef struct sk_srv_cmd {
    struct sk_srv_cmd *next;
    int forget;
    size_t n;
    sk_srv_answer *a; /* payloads point into the same block */
    uint64_t *cids;   /* forget */
} sk_srv_cmd;

struct sk_srv {
    sk_srv_config cfg;
    pthread_t thread;
    int started, ep, wake_fd;
    pthread_mutex_t mu; /* guards the fields below up to `slots`, and the
                           slot table against growth and frees */
    pthread_cond_t cv;  /* a batch was queued, or done */
    int stop, done, joined, wake_pending;
    sk_srv_batch *bq_head, *bq_tail;
    sk_srv_cmd *cq_head, *cq_tail;
    /* slots: written by the reactor thread only (under mu) */
    sk_srv_client **slots;
    uint32_t *gens;
    uint32_t *free_list;
    size_t nslots, cap, nfree;
    /* reactor thread only */
    uint64_t live; /* open or draining: counted against max_conns */
    sk_srv_tlist rlist, wlist;
    sk_srv_client *dirty;
    sk_srv_client *lost; /* ends whose event could not be queued yet */
    sk_srv_batch *cur;
    sk_srv_batch *spare; /* atomic: an emptied batch for the next turn */
    int64_t accept_resume; /* 0: accepting */
    int direct_ok; /* plain framing, no heartbeats: see SK_SRV_TICKET_DIRECT */
    sk_srv_stats st;
};

/* ------------------------------------------------------------ batches */

/* Contract: reactor thread; the batch this turn fills (allocated on first
 * use), or NULL when out of memory. */
static sk_srv_batch *sk_srv_cur(sk_srv *s)
{
    if (s->cur == NULL) {
        s->cur = SK_XCHG(&s->spare, NULL);
        if (s->cur == NULL)
            s->cur = sk_calloc(1, sizeof(sk_srv_batch));
    }
    return s->cur;
}

/* Contract: any thread; b (NULL: nothing) was taken with sk_srv_next and
 * is no longer used.  The server keeps one emptied batch for its next
 * turn (a batch of one message cost five malloc/free pairs: ~1,000
 * instructions of a ping-pong's 7,000), freeing the one it displaces;
 * storage beyond SK_SRV_BATCH_KEEP bytes is freed, not kept. */
void sk_srv_batch_done(sk_srv *s, sk_srv_batch *b)
{
    if (b == NULL)
        goto done;
    b->nmsgs = b->nevents = 0;
    b->next = NULL;
    b->data.start = b->data.end = 0;
    if (b->data.cap > SK_SRV_BATCH_KEEP)
        sk_buf_free(&b->data);
    if (b->msgs_cap * sizeof(*b->msgs) > SK_SRV_BATCH_KEEP) {
        free(b->msgs);
        b->msgs = NULL;
        b->msgs_cap = 0;
    }
    if (b->events_cap * sizeof(*b->events) > SK_SRV_BATCH_KEEP) {
        free(b->events);
        b->events = NULL;
        b->events_cap = 0;
    }
    sk_srv_batch_free(SK_XCHG(&s->spare, b));
done:
    return;
}

/* Contract: any thread; frees b (NULL: nothing) and what it holds. */
void sk_srv_batch_free(sk_srv_batch *b)
{
    if (b != NULL) {
        sk_buf_free(&b->data);
        free(b->msgs);
        free(b->events);
        free(b);
    }
}

/* Contract: reactor thread; grows *arr (elements of size `size`) to hold
 * one more.  0, or -1 when out of memory (nothing changed). */
static int sk_srv_grow(void **arr, size_t *cap, size_t n, size_t size)
{
    size_t ncap;
    void *p;
    int rc = 0;

    if (n < *cap)
        goto done;
    ncap = *cap ? *cap * 2 : 16;
    p = sk_realloc(*arr, ncap * size);
    if (p == NULL) {
        rc = -1;
        goto done;
    }
    *arr = p;
    *cap = ncap;
done:
    return rc;
}

/* Contract: reactor thread; adds an event to this turn's batch.  0, or -1
 * when out of memory (nothing added: the caller keeps it, see
 * sk_srv_finish). */
static int sk_srv_event_add(sk_srv *s, uint64_t cid, int kind,
                            const sk_srv_client *cl, const sk_err *err)
{
    sk_srv_batch *b = sk_srv_cur(s);
    sk_srv_event *e;
    int rc = -1;

    if (b == NULL ||
        sk_srv_grow((void **)&b->events, &b->events_cap, b->nevents,
                    sizeof(sk_srv_event)) != 0)
        goto done;
    e = &b->events[b->nevents++];
    memset(e, 0, sizeof(*e));
    e->cid = cid;
    e->kind = kind;
    e->port = cl != NULL ? cl->port : -1;
    if (cl != NULL)
        memcpy(e->host, cl->host, sizeof(e->host));
    if (err != NULL)
        e->err = *err;
    rc = 0;
done:
    return rc;
}

/* Contract: reactor thread; queues the end events that could not be
 * queued when their client ended (out of memory then), oldest first, as
 * far as memory allows now: each ended client is reported once, late
 * rather than never, so that its owner records it and frees its slot. */
static void sk_srv_report_lost(sk_srv *s)
{
    sk_srv_client *cl;

    while ((cl = s->lost) != NULL &&
           sk_srv_event_add(s, cl->cid, cl->lost_kind, cl, &cl->end) == 0) {
        s->lost = cl->lnext;
        cl->lnext = NULL;
    }
}

/* Contract: reactor thread; queues this turn's batch for the handler
 * threads, if it holds anything. */
static void sk_srv_publish(sk_srv *s)
{
    sk_srv_batch *b = s->cur;

    if (b == NULL)
        return;
    s->cur = NULL;
    if (b->nmsgs == 0 && b->nevents == 0) {
        sk_srv_batch_free(b);
        return;
    }
    pthread_mutex_lock(&s->mu);
    if (s->bq_tail != NULL)
        s->bq_tail->next = b;
    else
        s->bq_head = b;
    s->bq_tail = b;
    s->st.batches++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------- timers */

/* Contract: reactor thread; unlinks cl from l (it is on l). */
static void sk_srv_tlist_remove(sk_srv_tlist *l, sk_srv_client *cl)
{
    if (cl->tprev != NULL)
        cl->tprev->tnext = cl->tnext;
    else
        l->head = cl->tnext;
    if (cl->tnext != NULL)
        cl->tnext->tprev = cl->tprev;
    else
        l->tail = cl->tprev;
    cl->tprev = cl->tnext = NULL;
}

/* Contract: reactor thread; appends cl to l (deadlines only grow). */
static void sk_srv_tlist_push(sk_srv_tlist *l, sk_srv_client *cl)
{
    cl->tnext = NULL;
    cl->tprev = l->tail;
    if (l->tail != NULL)
        l->tail->tnext = cl;
    else
        l->head = cl;
    l->tail = cl;
}

/* Contract: reactor thread; takes cl off its timer list. */
static void sk_srv_untime(sk_srv *s, sk_srv_client *cl)
{
    if (cl->timer == SK_T_READ)
        sk_srv_tlist_remove(&s->rlist, cl);
    else if (cl->timer == SK_T_WRITE)
        sk_srv_tlist_remove(&s->wlist, cl);
    cl->timer = SK_T_NONE;
}

/* Contract: reactor thread; puts cl on the list of `kind` with a deadline
 * of now + that timeout (a restart when it already was on it). */
static void sk_srv_time(sk_srv *s, sk_srv_client *cl, int kind, int64_t now)
{
    sk_srv_untime(s, cl);
    cl->timer = kind;
    if (kind == SK_T_READ) {
        cl->deadline = now + s->cfg.read_timeout_ns;
        sk_srv_tlist_push(&s->rlist, cl);
    } else {
        cl->deadline = now + s->cfg.write_timeout_ns;
        sk_srv_tlist_push(&s->wlist, cl);
    }
}

/* ------------------------------------------------------------ clients */

/* Contract: reactor thread; the client of cid if it is held and not a
 * zombie, else NULL. */
static sk_srv_client *sk_srv_lookup(sk_srv *s, uint64_t cid)
{
    size_t idx = (size_t)(cid & 0xffffffffu);
    sk_srv_client *cl = NULL;

    if (idx < s->nslots && s->slots[idx] != NULL &&
        s->slots[idx]->cid == cid && s->slots[idx]->state != SK_CL_ZOMBIE)
        cl = s->slots[idx];
    return cl;
}

/* Contract: reactor thread; cl's state leaves SK_CL_OPEN (under s->mu:
 * sk_srv_push reads it to decide whether the reactor must wake). */
static void sk_srv_set_state(sk_srv *s, sk_srv_client *cl, int state)
{
    pthread_mutex_lock(&s->mu);
    cl->state = state;
    pthread_mutex_unlock(&s->mu);
}

/* Contract: reactor thread; frees the replies cl holds ahead of turn. */
static void sk_srv_free_held(sk_srv_client *cl)
{
    sk_srv_held *h = cl->held, *next;

    while (h != NULL) {
        next = h->next;
        free(h);
        h = next;
    }
    cl->held = NULL;
}

/* Contract: reactor thread; ends cl: unregisters it, closes (abort: RST)
 * its socket, frees its buffers, reports the end (kind, err) and leaves a
 * zombie slot for sk_srv_forget. */
static void sk_srv_finish(sk_srv *s, sk_srv_client *cl, int kind,
                          const sk_err *why, int abort)
{
    sk_err err, scratch;
    int fd = cl->c.fd;

    err = *why; /* why may point into cl->c, which is released below */
    /* waits for a handler thread writing a direct reply (sk_srv_direct);
     * none starts after this */
    pthread_mutex_lock(&s->mu);
    cl->gone = 1;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&cl->c.send_mu);
    pthread_mutex_unlock(&cl->c.send_mu);
    sk_srv_untime(s, cl);
    if (cl->events != 0)
        epoll_ctl(s->ep, EPOLL_CTL_DEL, fd, NULL);
    cl->events = 0;
    if (cl->hb) {
        sk_hub_remove(s->cfg.hub, &cl->c);
        pthread_mutex_unlock(&cl->c.recv_mu);
        cl->hb = 0;
    }
    if (abort) {
        sk_abort(fd, &scratch);
    } else {
        /* what is queued goes out if the socket takes it; unread bytes are
         * read away so that close() sends FIN, not RST (send_mu, the
         * flush's lock: no direct reply starts once cl->gone is set) */
        pthread_mutex_lock(&cl->c.send_mu);
        sk_conn_close_orderly(&cl->c, &scratch);
        pthread_mutex_unlock(&cl->c.send_mu);
    }
    cl->c.fd = -1;
    sk_conn_release(&cl->c);
    sk_srv_free_held(cl);
    cl->state = SK_CL_ZOMBIE;
    s->live--;
    if (s->lost != NULL ||
        sk_srv_event_add(s, cl->cid, kind, cl, &err) != 0) {
        /* out of memory for the event: the client stays on the unreported
         * list (FIFO) until sk_srv_report_lost queues it */
        sk_srv_client **tail = &s->lost;

        while (*tail != NULL)
            tail = &(*tail)->lnext;
        cl->end = err;
        cl->lost_kind = kind;
        cl->lnext = NULL;
        *tail = cl;
    }
}

/* Contract: reactor thread; bytes the client holds in the server. */
static size_t sk_srv_pending(const sk_srv_client *cl)
{
    return cl->inflight_bytes + sk_conn_queued(&cl->c);
}

static void sk_srv_read(sk_srv *s, sk_srv_client *cl, int64_t now);

/* Contract: reactor thread; after any change to cl: ends it when all that
 * was due is written, sets its epoll interest and its timer. */
static void sk_srv_update(sk_srv *s, sk_srv_client *cl, int64_t now)
{
    size_t out;
    uint32_t want;
    struct epoll_event ev;
    int reading;

    if (cl->state == SK_CL_ZOMBIE)
        goto done;
    out = sk_conn_queued(&cl->c);
    if (cl->state == SK_CL_DRAIN && out == 0 &&
        (cl->closing || (cl->inflight == 0 && cl->held == NULL))) {
        sk_srv_finish(s, cl, SK_SRV_END, &cl->end, 0);
        goto done;
    }
    reading = cl->state == SK_CL_OPEN && cl->inflight < SK_SRV_INFLIGHT_MAX &&
              sk_srv_pending(cl) <= s->cfg.out_cap;
    want = (reading ? EPOLLIN : 0) | (out ? EPOLLOUT : 0);
    if (want != cl->events) {
        int op = cl->events == 0 ? EPOLL_CTL_ADD
                 : want == 0     ? EPOLL_CTL_DEL
                                 : EPOLL_CTL_MOD;
        int resumed = reading && !(cl->events & EPOLLIN);
        ev.events = want;
        ev.data.u64 = cl->cid;
        if (epoll_ctl(s->ep, op, cl->c.fd, &ev) != 0) {
            sk_err err;
            sk_err_sys(&err, "epoll_ctl", errno);
            sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
            goto done;
        }
        cl->events = want;
        /* frames read before the pause are in the decoder, which no epoll
         * event will announce */
        if (resumed && sk_decoder_buffered(&cl->c.dec) > 0) {
            sk_srv_read(s, cl, now);
            goto done;
        }
    }
    if (out && s->cfg.write_timeout_ns > 0) {
        if (cl->timer != SK_T_WRITE)
            sk_srv_time(s, cl, SK_T_WRITE, now);
    } else if (cl->state == SK_CL_OPEN && out == 0 && cl->inflight == 0 &&
               s->cfg.read_timeout_ns > 0) {
        /* the server waits for a frame: the deadline runs from now, and a
         * client dribbling bytes does not move it */
        if (cl->timer != SK_T_READ)
            sk_srv_time(s, cl, SK_T_READ, now);
    } else {
        sk_srv_untime(s, cl);
    }
done:
    return;
}

/* Contract: reactor thread; the read side of cl ended with err. */
static void sk_srv_read_ended(sk_srv *s, sk_srv_client *cl, const sk_err *err)
{
    if (err->code == SK_E_CLOSED || err->code == SK_E_INCOMPLETE ||
        err->code == SK_E_TOO_LARGE) {
        /* the requests already read are still answered, then the end */
        cl->end = *err;
        sk_srv_set_state(s, cl, SK_CL_DRAIN);
    } else {
        sk_srv_finish(s, cl, SK_SRV_END, err, 0);
    }
}

/* Contract: reactor thread; hands one data frame of cl to this turn's
 * batch.  SK_OK or SK_ERR (out of memory). */
static int sk_srv_dispatch(sk_srv *s, sk_srv_client *cl, const sk_frame *fr,
                           sk_err *err)
{
    sk_srv_batch *b = sk_srv_cur(s);
    sk_srv_msg *m;
    uint32_t seq = 0;
    int rc = SK_ERR;

    if (b == NULL ||
        sk_srv_grow((void **)&b->msgs, &b->msgs_cap, b->nmsgs,
                    sizeof(sk_srv_msg)) != 0) {
        sk_err_set(err, SK_E_NOMEM, "out of memory queueing a message");
        goto done;
    }
    if (fr->len > 0 && sk_buf_append(&b->data, fr->data, fr->len) != 0) {
        sk_err_set(err, SK_E_NOMEM, "out of memory queueing %zu bytes",
                   fr->len);
        goto done;
    }
    if (!fr->has_id) {
        seq = ++cl->seq_in;
        if (seq == 0) /* 0 marks a correlated frame: skip it on wrap */
            seq = ++cl->seq_in;
    }
    m = &b->msgs[b->nmsgs++];
    m->cid = cl->cid;
    m->seq = SK_SRV_TICKET(seq, fr->len);
    /* the only request of the client in flight, nothing queued before its
     * reply, and no other writer of the socket (heartbeats, correlated
     * replies that leave as they come): the handler thread may write the
     * reply itself, with no reactor hop */
    if (s->direct_ok && seq != 0 && cl->inflight == 0 && cl->held == NULL &&
        sk_conn_queued(&cl->c) == 0)
        m->seq |= SK_SRV_TICKET_DIRECT;
    m->id = fr->id;
    m->has_id = fr->has_id;
    m->off = sk_buf_len(&b->data) - fr->len;
    m->len = fr->len;
    cl->inflight++;
    cl->inflight_bytes += SK_SRV_TICKET_LEN(m->seq);
    s->st.messages++;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: reactor thread; reads what cl sent (one recv, then every frame
 * it completed) and dispatches the data frames. */
static void sk_srv_read(sk_srv *s, sk_srv_client *cl, int64_t now)
{
    sk_frame fr;
    sk_err err;
    int rc, first = 1;

    while (cl->state == SK_CL_OPEN && cl->inflight < SK_SRV_INFLIGHT_MAX &&
           sk_srv_pending(cl) <= s->cfg.out_cap) {
        rc = first ? sk_conn_recv_nowait(&cl->c, &fr, &err)
                   : sk_conn_recv_buffered(&cl->c, &fr, &err);
        first = 0;
        if (rc == SK_NEED_DATA)
            break;
        if (rc != SK_OK) {
            sk_srv_read_ended(s, cl, &err);
            break;
        }
        if (sk_srv_dispatch(s, cl, &fr, &err) != SK_OK) {
            sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
            break;
        }
    }
    if (cl->state != SK_CL_ZOMBIE && sk_decoder_buffered(&cl->c.dec) == 0)
        sk_decoder_idle(&cl->c.dec);
    sk_srv_update(s, cl, now);
}

/* Contract: reactor thread; writes what cl has queued (one write, more if
 * the socket takes it) and ends cl on a write error. */
static void sk_srv_flush(sk_srv *s, sk_srv_client *cl, int64_t now)
{
    size_t before = sk_conn_queued(&cl->c);
    sk_err err;
    int rc;

    pthread_mutex_lock(&cl->c.send_mu);
    rc = sk_conn_flush(&cl->c, 0, NULL, &err);
    pthread_mutex_unlock(&cl->c.send_mu);
    s->st.writes++;
    if (rc == SK_ERR) {
        sk_srv_finish(s, cl, SK_SRV_END, &err, 0);
        goto done;
    }
    /* progress restarts the write timeout: it bounds a window that stays
     * full, not a large reply */
    if (cl->timer == SK_T_WRITE && sk_conn_queued(&cl->c) < before)
        sk_srv_time(s, cl, SK_T_WRITE, now);
    sk_srv_update(s, cl, now);
done:
    return;
}

/* Contract: reactor thread; cl gets one write at the end of this turn's
 * answers. */
static void sk_srv_mark_dirty(sk_srv *s, sk_srv_client *cl)
{
    if (!cl->dirty) {
        cl->dirty = 1;
        cl->dnext = s->dirty;
        s->dirty = cl;
    }
}

/* Contract: reactor thread; gives each client's peer from ss. */
static void sk_srv_peer_text(sk_srv_client *cl, const struct sockaddr_storage *ss)
{
    cl->port = -1;
    cl->host[0] = '\0';
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, cl->host, sizeof(cl->host));
        cl->port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, cl->host, sizeof(cl->host));
        cl->port = ntohs(a->sin6_port);
    }
}

/* Contract: reactor thread; a free slot index (the table grows under mu),
 * or -1 when out of memory. */
static long sk_srv_slot(sk_srv *s)
{
    long idx = -1;

    if (s->nfree > 0) {
        idx = (long)s->free_list[--s->nfree];
        goto done;
    }
    if (s->nslots == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 256;
        sk_srv_client **ns;
        uint32_t *ng, *nf;

        if (ncap > 0xffffffffu)
            goto done;
        pthread_mutex_lock(&s->mu);
        ns = sk_realloc(s->slots, ncap * sizeof(*ns));
        if (ns != NULL)
            s->slots = ns;
        ng = sk_realloc(s->gens, ncap * sizeof(*ng));
        if (ng != NULL)
            s->gens = ng;
        nf = sk_realloc(s->free_list, ncap * sizeof(*nf));
        if (nf != NULL)
            s->free_list = nf;
        if (ns != NULL && ng != NULL && nf != NULL)
            s->cap = ncap;
        pthread_mutex_unlock(&s->mu);
        if (s->nslots == s->cap)
            goto done;
    }
    idx = (long)s->nslots;
    s->gens[idx] = 0;
    s->slots[idx] = NULL;
    s->nslots++;
done:
    return idx;
}

/* Contract: reactor thread; takes over fd as a new client.  SK_OK, or
 * SK_ERR with fd closed. */
static int sk_srv_add(sk_srv *s, int fd, const struct sockaddr_storage *ss,
                      int64_t now, sk_err *err)
{
    sk_srv_client *cl = NULL;
    long idx;
    int rc = SK_ERR;

    /* TCP_NODELAY: inherited from the listener (sk_listen, or the
     * SO_REUSEPORT listener of processes=N, set it) */
    if (s->cfg.keepalive &&
        sk_set_keepalive(fd, s->cfg.ka_idle_s, s->cfg.ka_interval_s,
                         s->cfg.ka_count, s->cfg.ka_user_timeout_ms,
                         err) != SK_OK)
        goto error;
    cl = sk_calloc(1, sizeof(*cl));
    idx = cl != NULL ? sk_srv_slot(s) : -1;
    if (idx < 0) {
        sk_err_set(err, SK_E_NOMEM, "out of memory taking a client");
        goto error;
    }
    if (sk_conn_init(&cl->c, fd, &s->cfg.framing, err) != SK_OK) {
        s->free_list[s->nfree++] = (uint32_t)idx;
        goto error;
    }
    sk_srv_peer_text(cl, ss);
    s->gens[idx]++;
    cl->cid = ((uint64_t)s->gens[idx] << 32) | (uint64_t)idx;
    cl->state = SK_CL_OPEN;
    cl->seq_out = 1;
    if (s->cfg.hb_interval_ns > 0) {
        if (sk_conn_heartbeat(&cl->c, s->cfg.hb_interval_ns,
                              s->cfg.hb_timeout_ns, 0, err) != SK_OK)
            goto release;
        /* the reactor is the receiver: the hub must never read for it */
        pthread_mutex_lock(&cl->c.recv_mu);
        if (sk_hub_add(s->cfg.hub, &cl->c, err) != SK_OK) {
            pthread_mutex_unlock(&cl->c.recv_mu);
            goto release;
        }
        cl->hb = 1;
    }
    pthread_mutex_lock(&s->mu);
    s->slots[idx] = cl;
    pthread_mutex_unlock(&s->mu);
    s->live++;
    s->st.accepted++;
    /* out of memory: the accept goes unreported; its end is still reported */
    (void)sk_srv_event_add(s, cl->cid, SK_SRV_ACCEPTED, cl, NULL);
    sk_srv_update(s, cl, now);
    rc = SK_OK;
    goto done;
release:
    sk_conn_release(&cl->c);
    s->free_list[s->nfree++] = (uint32_t)idx;
error:
    free(cl);
    close(fd);
done:
    return rc;
}

/* Contract: reactor thread; accepts what the listener holds (up to
 * SK_SRV_ACCEPTS a turn). */
static void sk_srv_accept(sk_srv *s, int64_t now)
{
    struct sockaddr_storage ss;
    struct epoll_event ev;
    socklen_t len;
    sk_err err;
    int i, fd;

    for (i = 0; i < SK_SRV_ACCEPTS; i++) {
        len = sizeof(ss);
        fd = accept4(s->cfg.listen_fd, (struct sockaddr *)&ss, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            /* out of descriptors or memory: report it and look again
             * later, rather than spinning on a listener that stays
             * readable */
            sk_err_sys(&err, "accept4", errno);
            (void)sk_srv_event_add(s, 0, SK_SRV_FAILED, NULL, &err);
            ev.events = 0;
            ev.data.u64 = SK_SRV_LISTEN_TAG;
            epoll_ctl(s->ep, EPOLL_CTL_MOD, s->cfg.listen_fd, &ev);
            s->accept_resume = now + SK_SRV_ACCEPT_PAUSE_NS;
            break;
        }
        if (s->cfg.max_conns > 0 && s->live >= s->cfg.max_conns) {
            sk_abort(fd, &err); /* RST: the client learns at once */
            s->st.rejected++;
            /* out of memory: the event is lost, st.rejected counts it */
            (void)sk_srv_event_add(s, 0, SK_SRV_REJECTED, NULL, NULL);
            continue;
        }
        if (sk_srv_add(s, fd, &ss, now, &err) != SK_OK)
            (void)sk_srv_event_add(s, 0, SK_SRV_FAILED, NULL, &err);
    }
}

/* ------------------------------------------------------------ answers */

/* Contract: reactor thread; queues one reply frame for cl (nothing for
 * SK_SRV_NONE; SK_SRV_CLOSE starts the close). */
static void sk_srv_apply(sk_srv *s, sk_srv_client *cl, int kind, int has_id,
                         uint64_t id, const void *base, size_t len)
{
    sk_iov iov;
    sk_err err;
    int rc;

    if (cl->closing)
        goto done;
    if (kind == SK_SRV_CLOSE) {
        cl->closing = 1;
        sk_srv_set_state(s, cl, SK_CL_DRAIN);
        sk_err_set(&cl->end, SK_E_CLOSED,
                   "the handler failed on a plain request: the client was "
                   "closed");
        goto done;
    }
    if (kind == SK_SRV_SENT) { /* written by the handler thread */
        rc = SK_OK;
        if (len > 0) {
            pthread_mutex_lock(&cl->c.send_mu);
            rc = sk_buf_append(&cl->c.out, base, len) == 0 ? SK_OK : SK_ERR;
            pthread_mutex_unlock(&cl->c.send_mu);
        }
        if (rc != SK_OK) {
            sk_err_set(&err, SK_E_NOMEM,
                       "out of memory queueing %zu bytes of a reply", len);
            sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
            goto done;
        }
        s->st.replies++;
        goto done;
    }
    if (kind != SK_SRV_REPLY)
        goto done;
    iov.base = base;
    iov.len = len;
    iov.id = id;
    iov.has_id = has_id;
    pthread_mutex_lock(&cl->c.send_mu);
    rc = sk_conn_enqueue(&cl->c, &iov, &err);
    pthread_mutex_unlock(&cl->c.send_mu);
    if (rc != SK_OK) {
        sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
        goto done;
    }
    s->st.replies++;
done:
    return;
}

/* Contract: reactor thread; applies one answer (in its turn for a plain
 * request: an early one is held). */
static void sk_srv_answer_one(sk_srv *s, const sk_srv_answer *a)
{
    sk_srv_client *cl = sk_srv_lookup(s, a->cid);
    uint32_t seq = SK_SRV_TICKET_SEQ(a->seq);
    sk_srv_held *h, **pp;

    if (cl == NULL)
        goto done;
    if (cl->inflight > 0)
        cl->inflight--;
    cl->inflight_bytes -= SK_SRV_TICKET_LEN(a->seq) <= cl->inflight_bytes
                              ? SK_SRV_TICKET_LEN(a->seq)
                              : cl->inflight_bytes;
    sk_srv_mark_dirty(s, cl);
    if (seq == 0) {
        sk_srv_apply(s, cl, a->kind, a->has_id, a->id, a->base, a->len);
        goto done;
    }
    if (seq != cl->seq_out) {
        /* ahead of its turn: hold it, in sequence order */
        h = sk_malloc(sizeof(*h) + a->len);
        if (h == NULL) {
            sk_err err;
            sk_err_set(&err, SK_E_NOMEM, "out of memory holding a reply");
            sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
            goto done;
        }
        h->seq = seq;
        h->kind = a->kind;
        h->len = a->kind == SK_SRV_REPLY || a->kind == SK_SRV_SENT ? a->len : 0;
        if (h->len)
            memcpy(h->data, a->base, h->len);
        pp = &cl->held;
        while (*pp != NULL && (int32_t)((*pp)->seq - seq) < 0)
            pp = &(*pp)->next;
        h->next = *pp;
        *pp = h;
        goto done;
    }
    sk_srv_apply(s, cl, a->kind, 0, 0, a->base, a->len);
    if (++cl->seq_out == 0)
        cl->seq_out = 1;
    while (cl->state != SK_CL_ZOMBIE && cl->held != NULL &&
           cl->held->seq == cl->seq_out) {
        h = cl->held;
        cl->held = h->next;
        sk_srv_apply(s, cl, h->kind, 0, 0, h->data, h->len);
        free(h);
        if (++cl->seq_out == 0)
            cl->seq_out = 1;
    }
done:
    return;
}

/* Contract: reactor thread; frees the zombie slot of cid (anything else:
 * nothing). */
static void sk_srv_forget_one(sk_srv *s, uint64_t cid)
{
    size_t idx = (size_t)(cid & 0xffffffffu);
    sk_srv_client *cl;

    if (idx < s->nslots && s->slots[idx] != NULL &&
        s->slots[idx]->cid == cid && s->slots[idx]->state == SK_CL_ZOMBIE) {
        cl = s->slots[idx];
        pthread_mutex_lock(&s->mu);
        s->slots[idx] = NULL;
        pthread_mutex_unlock(&s->mu);
        s->free_list[s->nfree++] = (uint32_t)idx;
        free(cl);
    }
}

/* Contract: reactor thread; applies what the handler threads handed over,
 * then writes each client it touched once. */
static void sk_srv_commands(sk_srv *s, int64_t now)
{
    sk_srv_cmd *q, *next;
    sk_srv_client *cl;
    size_t i;

    pthread_mutex_lock(&s->mu);
    q = s->cq_head;
    s->cq_head = s->cq_tail = NULL;
    s->wake_pending = 0;
    pthread_mutex_unlock(&s->mu);
    for (; q != NULL; q = next) {
        next = q->next;
        for (i = 0; i < q->n; i++) {
            if (q->forget)
                sk_srv_forget_one(s, q->cids[i]);
            else
                sk_srv_answer_one(s, &q->a[i]);
        }
        free(q);
    }
    while (s->dirty != NULL) {
        cl = s->dirty;
        s->dirty = cl->dnext;
        cl->dirty = 0;
        if (cl->state == SK_CL_ZOMBIE)
            continue;
        if (sk_conn_queued(&cl->c) > 0)
            sk_srv_flush(s, cl, now);
        else
            sk_srv_update(s, cl, now);
    }
}

/* Contract: caller holds s->mu; nonzero when the reactor may apply q in
 * its next turn rather than now: q only accounts for replies written
 * whole by handler threads (SK_SRV_SENT, no tail) to clients that are
 * still read (open, the request under out_cap) and have no read_timeout
 * to arm.  Their next request wakes the reactor, which applies the
 * commands first (sk_srv_main): no wake-up per reply. */
static int sk_srv_lazy(const sk_srv *s, const sk_srv_cmd *q)
{
    size_t i, idx;
    const sk_srv_client *cl;
    int lazy = !q->forget && s->cfg.read_timeout_ns == 0;

    for (i = 0; lazy && i < q->n; i++) {
        idx = (size_t)(q->a[i].cid & 0xffffffffu);
        cl = idx < s->nslots ? s->slots[idx] : NULL;
        lazy = q->a[i].kind == SK_SRV_SENT && q->a[i].len == 0 &&
               SK_SRV_TICKET_LEN(q->a[i].seq) <= s->cfg.out_cap &&
               cl != NULL && cl->cid == q->a[i].cid && !cl->gone &&
               cl->state == SK_CL_OPEN;
    }
    return lazy;
}

/* Contract: any thread; queues q for the reactor and wakes it (unless
 * sk_srv_lazy). */
static void sk_srv_push(sk_srv *s, sk_srv_cmd *q)
{
    uint64_t one = 1;
    int wake;
    ssize_t r;

    pthread_mutex_lock(&s->mu);
    if (s->cq_tail != NULL)
        s->cq_tail->next = q;
    else
        s->cq_head = q;
    s->cq_tail = q;
    /* inline mode: the pushing thread is the reactor, which applies q
     * before it next sleeps */
    wake = !s->cfg.inline_turns && !s->wake_pending && !sk_srv_lazy(s, q);
    if (wake)
        s->wake_pending = 1;
    pthread_mutex_unlock(&s->mu);
    if (wake) {
        do {
            r = write(s->wake_fd, &one, sizeof(one));
        } while (r < 0 && errno == EINTR);
    }
}

/* Contract: a handler thread; writes the reply of answer a (its ticket
 * says SK_SRV_TICKET_DIRECT) to the client's socket without waiting (one
 * sendmsg), under the client's send_mu so that the reactor does not close
 * the socket meanwhile (sk_srv_finish).  Returns the bytes written (0: none, the
 * reactor sends it all); the header is encoded into hdr (*hl bytes). */
static size_t sk_srv_direct(sk_srv *s, const sk_srv_answer *a,
                            unsigned char *hdr, size_t *hl)
{
    size_t idx = (size_t)(a->cid & 0xffffffffu);
    unsigned char small[SK_SRV_DIRECT_COPY];
    struct iovec iov[2];
    struct msghdr mh;
    sk_srv_client *cl;
    ssize_t w = 0;
    int copy;

    *hl = s->cfg.framing.header_size;
    sk_encode_header(&s->cfg.framing, a->len, hdr);
    /* a small reply goes out with send() from one buffer: cheaper in the
     * kernel than sendmsg() with two iovecs (copy_iovec_from_user and
     * the msghdr walk, ~2 % of a server's CPU at 100 clients) */
    copy = *hl + a->len <= sizeof(small);
    if (copy) {
        memcpy(small, hdr, *hl);
        if (a->len > 0)
            memcpy(small + *hl, a->base, a->len);
    }
    iov[0].iov_base = hdr;
    iov[0].iov_len = *hl;
    iov[1].iov_base = (void *)a->base;
    iov[1].iov_len = a->len;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = a->len > 0 ? 2 : 1;
    pthread_mutex_lock(&s->mu);
    cl = idx < s->nslots ? s->slots[idx] : NULL;
    if (cl != NULL && (cl->cid != a->cid || cl->gone))
        cl = NULL;
    if (cl != NULL) /* order: s->mu, then send_mu */
        pthread_mutex_lock(&cl->c.send_mu);
    pthread_mutex_unlock(&s->mu);
    if (cl != NULL) {
        do {
            w = copy ? send(cl->c.fd, small, *hl + a->len,
                            MSG_DONTWAIT | MSG_NOSIGNAL)
                     : sendmsg(cl->c.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (w < 0 && errno == EINTR);
        pthread_mutex_unlock(&cl->c.send_mu);
    }
    /* an error (EAGAIN, a reset): the reactor's write meets it and ends
     * the client as usual */
    return w > 0 ? (size_t)w : 0;
}

/* Contract: see server.h. */
int sk_srv_reply(sk_srv *s, const sk_srv_answer *a, size_t n, sk_err *err)
{
    size_t i, total = 0, off, hl, w;
    sk_srv_cmd *q;
    unsigned char *data, hdr[SK_SRV_MAX_HEADER];
    int rc = SK_OK;

    if (n == 0)
        goto done;
    rc = SK_ERR;
    for (i = 0; i < n; i++)
        if (a[i].kind == SK_SRV_REPLY)
            total += a[i].len + SK_SRV_MAX_HEADER;
    q = sk_malloc(sizeof(*q) + n * sizeof(sk_srv_answer) + total);
    if (q == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory queueing %zu replies", n);
        goto done;
    }
    q->next = NULL;
    q->forget = 0;
    q->n = n;
    q->a = (sk_srv_answer *)(q + 1);
    q->cids = NULL;
    data = (unsigned char *)(q->a + n);
    off = 0;
    for (i = 0; i < n; i++) {
        q->a[i] = a[i];
        if (a[i].kind == SK_SRV_REPLY && (a[i].seq & SK_SRV_TICKET_DIRECT) &&
            a[i].len <= s->cfg.framing.max_frame) {
            w = sk_srv_direct(s, &a[i], hdr, &hl);
            if (w > 0) { /* the reactor keeps the tail, if any */
                q->a[i].kind = SK_SRV_SENT;
                q->a[i].len = hl + a[i].len - w;
                q->a[i].base = data + off;
                if (w < hl) {
                    memcpy(data + off, hdr + w, hl - w);
                    memcpy(data + off + hl - w, a[i].base, a[i].len);
                } else {
                    memcpy(data + off, (const unsigned char *)a[i].base +
                                           (w - hl), q->a[i].len);
                }
                off += q->a[i].len;
                continue;
            }
        }
        if (a[i].kind == SK_SRV_REPLY && a[i].len > 0) {
            memcpy(data + off, a[i].base, a[i].len);
            q->a[i].base = data + off;
            off += a[i].len;
        }
    }
    sk_srv_push(s, q);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: see server.h. */
int sk_srv_forget(sk_srv *s, const uint64_t *cids, size_t n, sk_err *err)
{
    sk_srv_cmd *q;
    int rc = SK_OK;

    if (n == 0)
        goto done;
    rc = SK_ERR;
    q = sk_malloc(sizeof(*q) + n * sizeof(uint64_t));
    if (q == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory");
        goto done;
    }
    q->next = NULL;
    q->forget = 1;
    q->n = n;
    q->a = NULL;
    q->cids = (uint64_t *)(q + 1);
    memcpy(q->cids, cids, n * sizeof(uint64_t));
    sk_srv_push(s, q);
    rc = SK_OK;
done:
    return rc;
}

/* ------------------------------------------------------------- thread */

/* Contract: reactor thread; ends the clients whose deadline passed (RST,
 * an sk.Timeout for the owner). */
static void sk_srv_expire(sk_srv *s, int64_t now)
{
    sk_srv_client *cl;
    sk_err err;

    while ((cl = s->rlist.head) != NULL && cl->deadline <= now) {
        sk_err_set(&err, SK_E_TIMEOUT,
                   "sk.serve: no whole frame from the client within "
                   "read_timeout (%.3g s, %zu bytes of a frame received); "
                   "the connection was reset",
                   (double)s->cfg.read_timeout_ns / 1e9,
                   sk_decoder_buffered(&cl->c.dec));
        sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
    }
    while ((cl = s->wlist.head) != NULL && cl->deadline <= now) {
        sk_err_set(&err, SK_E_TIMEOUT,
                   "sk.serve: the client read none of %zu bytes of replies "
                   "for write_timeout (%.3g s); the connection was reset",
                   sk_conn_queued(&cl->c),
                   (double)s->cfg.write_timeout_ns / 1e9);
        sk_srv_finish(s, cl, SK_SRV_END, &err, 1);
    }
}

/* Contract: reactor thread; the earliest deadline to wake up for. */
static int64_t sk_srv_next_deadline(const sk_srv *s)
{
    int64_t d = SK_NO_DEADLINE;

    if (s->rlist.head != NULL)
        d = s->rlist.head->deadline;
    if (s->wlist.head != NULL &&
        (d == SK_NO_DEADLINE || s->wlist.head->deadline < d))
        d = s->wlist.head->deadline;
    if (s->accept_resume != 0 && (d == SK_NO_DEADLINE || s->accept_resume < d))
        d = s->accept_resume;
    if (s->lost != NULL) { /* retry the unreported ends soon */
        int64_t retry = sk_now_ns() + SK_SRV_LOST_RETRY_NS;
        if (d == SK_NO_DEADLINE || retry < d)
            d = retry;
    }
    return d;
}

/* Contract: reactor thread; one event on a client socket. */
static void sk_srv_on_client(sk_srv *s, uint64_t cid, uint32_t ev, int64_t now)
{
    sk_srv_client *cl = sk_srv_lookup(s, cid);

    if (cl == NULL)
        goto done;
    if ((ev & (EPOLLOUT | EPOLLERR)) && sk_conn_queued(&cl->c) > 0) {
        sk_srv_flush(s, cl, now);
        if (cl->state == SK_CL_ZOMBIE)
            goto done;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (cl->state == SK_CL_OPEN)
            sk_srv_read(s, cl, now);
        else if (!(cl->events & EPOLLOUT))
            sk_srv_update(s, cl, now); /* nothing to wait for: unregister */
    }
done:
    return;
}

/* Contract: the reactor's thread (the reactor thread, or the one caller of
 * sk_srv_next in inline mode); no GIL, no Python.  One turn: wait up to ms
 * (-1: no bound) for the sockets, apply what the handlers handed over,
 * accept, read, write, expire the timeouts and queue the turn's batch. */
static void sk_srv_turn(sk_srv *s, int ms)
{
    struct epoll_event evs[SK_SRV_EVENTS];
    struct epoll_event lev;
    uint64_t junk;
    int64_t now;
    int n, k;

    n = epoll_wait(s->ep, evs, SK_SRV_EVENTS, ms); /* EINTR: n < 0, no events */
    now = sk_now_ns();
    s->st.turns++;
    /* what handler threads queued without waking the reactor (replies
     * they wrote themselves) first: the requests read below see their
     * clients with nothing in flight */
    sk_srv_commands(s, now);
    for (k = 0; k < n; k++) {
        if (evs[k].data.u64 == SK_SRV_WAKE_TAG) {
            if (read(s->wake_fd, &junk, sizeof(junk)) < 0)
                junk = 0; /* EAGAIN: another turn read it */
        } else if (evs[k].data.u64 == SK_SRV_LISTEN_TAG) {
            sk_srv_accept(s, now);
        } else {
            sk_srv_on_client(s, evs[k].data.u64, evs[k].events, now);
        }
    }
    if (s->accept_resume != 0 && now >= s->accept_resume) {
        s->accept_resume = 0;
        lev.events = EPOLLIN;
        lev.data.u64 = SK_SRV_LISTEN_TAG;
        epoll_ctl(s->ep, EPOLL_CTL_MOD, s->cfg.listen_fd, &lev);
    }
    sk_srv_commands(s, now);
    sk_srv_expire(s, now);
    sk_srv_report_lost(s);
    sk_srv_publish(s);
}

/* Contract: the reactor's thread, once, after sk_srv_stop: close every
 * client (each reported as SK_SRV_STOPPED), queue the last batch and mark
 * the server done (sk_srv_next then reports SK_E_CLOSED). */
static void sk_srv_shutdown(sk_srv *s)
{
    sk_err err;
    size_t i;

    sk_err_set(&err, SK_E_CLOSED,
               "the server was closed (close()) while this client was "
               "connected");
    for (i = 0; i < s->nslots; i++)
        if (s->slots[i] != NULL && s->slots[i]->state != SK_CL_ZOMBIE)
            sk_srv_finish(s, s->slots[i], SK_SRV_STOPPED, &err, 0);
    sk_srv_report_lost(s);
    sk_srv_publish(s);
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Contract: the stop flag, read under s->mu. */
static int sk_srv_stopping(sk_srv *s)
{
    int stop;

    pthread_mutex_lock(&s->mu);
    stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* Contract: reactor thread (the thread's body). */
static void *sk_srv_main(void *arg)
{
    sk_srv *s = (sk_srv *)arg;

    /* the stop flag is read before sleeping, never only after: a turn that
     * reads the wake-up eventfd may consume the write of a sk_srv_stop
     * that came after this turn's check (the counter holds one sum of all
     * writes), and epoll_wait would then sleep with the flag set and
     * nothing left to wake it */
    /* a turn that queued a batch yields the CPU, so that a handler thread
     * woken for it on this CPU answers now, while the batch's clients are
     * warm in the caches.  Without it the handler waited for the end of
     * the reactor's time slice (perf stat, server pinned to one CPU,
     * 10,000 clients: ~550 context switches/s, ~2 ms slices) and its
     * replies cost 1.8 us more kernel time each (7.1 against 5.3 us of
     * CPU per request with workers=0).  bench/many.py, same runs: sk.serve
     * 0.73x -> 0.91x the C epoll server at 10,000 clients, 0.81x -> 0.93x
     * at 100.  A handler on another CPU: sched_yield returns at once. */
    while (!sk_srv_stopping(s)) {
        uint64_t before = s->st.batches;
        sk_srv_turn(s, sk_poll_ms(sk_srv_next_deadline(s), -1));
        if (s->st.batches != before)
            sched_yield();
    }
    sk_srv_shutdown(s);
    return NULL;
}

/* ----------------------------------------------------------------- API */

/* Contract: see server.h. */
int sk_srv_new(const sk_srv_config *cfg, sk_srv **out, sk_err *err)
{
    sk_srv *s = NULL;
    struct epoll_event ev;
    int fl, rc = SK_ERR;

    *out = NULL;
    if (sk_framing_check(&cfg->framing, err) != SK_OK)
        goto done;
    if (cfg->hb_interval_ns > 0 && cfg->hub == NULL) {
        sk_err_set(err, SK_E_ARG, "heartbeats need a hub");
        goto done;
    }
    s = sk_calloc(1, sizeof(*s));
    if (s == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory");
        goto done;
    }
    s->cfg = *cfg;
    s->direct_ok = !(cfg->framing.flags & (SK_FRAMING_IDS | SK_FRAMING_CONTROL)) &&
                   cfg->hb_interval_ns == 0;
    if (s->cfg.out_cap == 0)
        s->cfg.out_cap = SK_SRV_OUT_CAP;
    s->ep = s->wake_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    if (sk_cond_init_monotonic(&s->cv, err) != SK_OK)
        goto error;
    s->ep = sk_epoll_create(EPOLL_CLOEXEC);
    if (s->ep < 0) {
        sk_err_sys(err, "epoll_create1", errno);
        goto error;
    }
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        sk_err_sys(err, "eventfd", errno);
        goto error;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = SK_SRV_WAKE_TAG;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_fd, &ev) != 0) {
        sk_err_sys(err, "epoll_ctl", errno);
        goto error;
    }
    /* the accept loop takes connections until EAGAIN: a listener that
     * Listener.accept left blocking (accept.h) must not block the reactor */
    fl = fcntl(cfg->listen_fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) &&
                   fcntl(cfg->listen_fd, F_SETFL, fl | O_NONBLOCK) != 0)) {
        sk_err_sys(err, "fcntl", errno);
        goto error;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = SK_SRV_LISTEN_TAG;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, cfg->listen_fd, &ev) != 0) {
        sk_err_sys(err, "epoll_ctl", errno);
        goto error;
    }
    if (!cfg->inline_turns) {
        if (sk_thread_spawn(&s->thread, SK_SRV_STACK, sk_srv_main, s, err) !=
            SK_OK)
            goto error;
        s->started = 1;
    }
    *out = s;
    rc = SK_OK;
    goto done;
error:
    sk_srv_free(s);
done:
    return rc;
}

/* Contract: see server.h. */
void sk_srv_stop(sk_srv *s)
{
    uint64_t one = 1;
    int join;
    ssize_t r;

    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    join = s->started && !s->joined;
    s->joined = 1;
    pthread_mutex_unlock(&s->mu);
    /* inline mode: no thread to join; the caller's next (or current)
     * turn sees the flag and shuts down */
    if (join || s->cfg.inline_turns) {
        do {
            r = write(s->wake_fd, &one, sizeof(one));
        } while (r < 0 && errno == EINTR);
    }
    if (join)
        pthread_join(s->thread, NULL);
}

/* Contract: see server.h. */
void sk_srv_free(sk_srv *s)
{
    sk_srv_batch *b, *bn;
    sk_srv_cmd *q, *qn;
    size_t i;

    if (s == NULL)
        goto done;
    for (b = s->bq_head; b != NULL; b = bn) {
        bn = b->next;
        sk_srv_batch_free(b);
    }
    sk_srv_batch_free(s->cur);
    sk_srv_batch_free(s->spare);
    for (q = s->cq_head; q != NULL; q = qn) {
        qn = q->next;
        free(q);
    }
    for (i = 0; i < s->nslots; i++) {
        sk_srv_client *cl = s->slots[i];
        if (cl == NULL)
            continue;
        if (cl->state != SK_CL_ZOMBIE) { /* never started: not reported */
            if (cl->hb) {
                sk_hub_remove(s->cfg.hub, &cl->c);
                pthread_mutex_unlock(&cl->c.recv_mu);
            }
            close(cl->c.fd);
            sk_conn_release(&cl->c);
            sk_srv_free_held(cl);
        }
        free(cl);
    }
    free(s->slots);
    free(s->gens);
    free(s->free_list);
    if (s->ep >= 0)
        close(s->ep);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
done:
    return;
}

/* Contract: caller holds s->mu; takes the oldest queued batch into *out.
 * SK_OK, SK_ERR (SK_E_CLOSED) when the server is done and every batch
 * was taken, or SK_TIMEOUT (nothing yet). */
static int sk_srv_take(sk_srv *s, sk_srv_batch **out, sk_err *err)
{
    int rc = SK_TIMEOUT;

    if (s->bq_head != NULL) {
        *out = s->bq_head;
        s->bq_head = (*out)->next;
        if (s->bq_head == NULL)
            s->bq_tail = NULL;
        (*out)->next = NULL;
        rc = SK_OK;
    } else if (s->done) {
        rc = sk_err_set(err, SK_E_CLOSED, "the server was closed");
    }
    return rc;
}

/* Contract: inline mode, the one thread that calls sk_srv_next; no GIL.
 * Runs the reactor's turns on this thread until a batch is queued, the
 * server is done, or the deadline passes.  Before each wait it applies
 * the answers handed over since the last turn, so replies leave before the
 * thread sleeps (no wake-up needed: this thread is the reactor). */
static int sk_srv_next_inline(sk_srv *s, int64_t deadline, sk_srv_batch **out,
                              sk_err *err)
{
    int64_t due;
    int rc, stop;

    for (;;) {
        pthread_mutex_lock(&s->mu);
        rc = sk_srv_take(s, out, err);
        stop = s->stop && !s->done;
        pthread_mutex_unlock(&s->mu);
        if (rc != SK_TIMEOUT)
            break;
        if (stop) {
            sk_srv_shutdown(s);
            continue;
        }
        sk_srv_commands(s, sk_now_ns());
        sk_srv_report_lost(s);
        sk_srv_publish(s);
        if (s->bq_head != NULL) /* what the answers ended: report it now */
            continue;
        if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline)
            break; /* SK_TIMEOUT */
        due = sk_srv_next_deadline(s);
        if (deadline != SK_NO_DEADLINE && (due == SK_NO_DEADLINE || deadline < due))
            due = deadline;
        sk_srv_turn(s, sk_poll_ms(due, -1));
    }
    return rc;
}

/* Contract: see server.h. */
int sk_srv_next(sk_srv *s, int64_t deadline, sk_srv_batch **out, sk_err *err)
{
    struct timespec ts;
    int rc = SK_TIMEOUT;

    *out = NULL;
    if (s->cfg.inline_turns) {
        rc = sk_srv_next_inline(s, deadline, out, err);
        goto done;
    }
    if (deadline != SK_NO_DEADLINE) {
        ts.tv_sec = (time_t)(deadline / 1000000000LL);
        ts.tv_nsec = (long)(deadline % 1000000000LL);
    }
    pthread_mutex_lock(&s->mu);
    while (s->bq_head == NULL && !s->done) {
        if (deadline == SK_NO_DEADLINE)
            pthread_cond_wait(&s->cv, &s->mu);
        else if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT)
            break;
    }
    rc = sk_srv_take(s, out, err);
    pthread_mutex_unlock(&s->mu);
done:
    return rc;
}

/* Contract: see server.h. */
int sk_srv_peer(sk_srv *s, uint64_t cid, char *host, size_t cap, int *port)
{
    size_t idx = (size_t)(cid & 0xffffffffu);
    int rc = SK_ERR;

    pthread_mutex_lock(&s->mu);
    if (idx < s->nslots && s->slots[idx] != NULL &&
        s->slots[idx]->cid == cid) {
        snprintf(host, cap, "%s", s->slots[idx]->host);
        *port = s->slots[idx]->port;
        rc = SK_OK;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Contract: see server.h. */
size_t sk_srv_ports(sk_srv *s, int *ports, size_t cap)
{
    size_t i, n = 0;

    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->nslots; i++) {
        if (s->slots[i] == NULL)
            continue;
        if (n < cap)
            ports[n] = s->slots[i]->port;
        n++;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Contract: see server.h (counters read without the reactor's help: a
 * snapshot that may be a turn old). */
void sk_srv_get_stats(sk_srv *s, sk_srv_stats *st)
{
    size_t held;

    held = sk_srv_ports(s, NULL, 0);
    *st = s->st;
    st->conns = held;
}
