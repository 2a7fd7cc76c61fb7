/* hub.c - epoll + timer-heap reactor for heartbeats (see hub.h). */
#include "hub.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "heap.h"
#include "sys.h"

#define SK_HUB_EVENTS 256
#define SK_HUB_WAKE_TAG UINT64_MAX
#define SK_HUB_LINGER_MS 10 /* how often lingering sockets are looked at */
/* For a TCP socket TIOCOUTQ is SIOCOUTQ (bytes not yet acknowledged);
 * linux/sockios.h, which spells it so, clashes with glibc headers. */

typedef struct sk_hub_linger_ent {
    int fd;
    int64_t deadline;
} sk_hub_linger_ent;

typedef struct sk_hub_slot {
    sk_conn *c;       /* NULL: free */
    uint32_t gen;     /* bumped on every reuse, so stale events are ignored */
    int armed;        /* EPOLLIN (one-shot) is armed */
    sk_heap_node due; /* key: next time the hub looks at this connection */
} sk_hub_slot;

struct sk_hub {
    pthread_t thread;
    pthread_mutex_t mu; /* guards everything below */
    int ep, wake_fd, stop, started;
    sk_hub_slot *slots;
    int nslots, cap;
    int *free_list, nfree;
    sk_heap heap;       /* the slots' `due` nodes, room for `cap` */
    sk_hub_linger_ent *lingers;
    int nlinger, linger_cap;
    sk_hub_stats st;
};

/* ------------------------------------------------------------- per conn */

/* Contract: hub lock held.  When to look at c next: the heartbeat rule's
 * due time (heartbeat.h sk_hb_tick) for c's clocks as they are now. */
static int64_t sk_hub_next_due(const sk_conn *c, int64_t now)
{
    sk_hb_view v;
    int64_t due;

    sk_hb_view_of(&c->hb, &v);
    sk_hb_tick(&v, now, -1, &due);
    return due;
}

/* Contract: hub lock held. */
static void sk_hub_arm(sk_hub *h, int idx)
{
    struct epoll_event ev;

    if (h->slots[idx].armed)
        return;
    h->slots[idx].armed = 1;
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    ev.data.u64 = ((uint64_t)h->slots[idx].gen << 32) | (uint32_t)idx;
    epoll_ctl(h->ep, EPOLL_CTL_MOD, h->slots[idx].c->fd, &ev);
}

/* Read what arrived if no user thread is receiving.  Returns the pump
 * result, or 2 if a user thread holds the receive side. */
static int sk_hub_pump(sk_hub *h, sk_conn *c)
{
    int r = 2;

    if (pthread_mutex_trylock(&c->recv_mu) == 0) {
        r = sk_conn_pump(c, SK_HUB_RX_LIMIT);
        pthread_mutex_unlock(&c->recv_mu);
        h->st.reads++;
    }
    return r;
}

/* A readable event on slot idx (hub lock held). */
static void sk_hub_on_event(sk_hub *h, int idx)
{
    sk_conn *c = h->slots[idx].c;

    /* re-arm only when the hub read everything: a paused, closed or busy
     * connection is looked at again by its timer */
    if (sk_hub_pump(h, c) == 0)
        sk_hub_arm(h, idx);
}

/* Contract: hub lock held, c's send lock held (trylocked).  Send the
 * owed PONG, then ask the rule again (a PONG that went out refreshes
 * last_tx, which may make a PING unnecessary) and send a PING if it still
 * says so.  Non-blocking: a full socket sends nothing. */
static void sk_hub_send(sk_hub *h, sk_conn *c, int64_t now)
{
    sk_hb_view v;
    int64_t due;
    sk_err err;

    sk_conn_send_pending(c);
    sk_hb_view_of(&c->hb, &v);
    if ((sk_hb_tick(&v, now, -1, &due) & SK_HB_PING) &&
        sk_conn_send_control(c, SK_CTL_PING, now, &err) == SK_OK) {
        c->hb.pings_sent++;
        h->st.pings++;
    }
}

/* Contract: hub lock held.  The timer of slot idx fired: carry out what
 * the heartbeat rule (sk_hb_tick) asks - read what arrived and measure
 * the unread bytes when the peer is overdue, declare it dead, or send a
 * PONG/PING - then re-arm the read event and the timer. */
static void sk_hub_tick(sk_hub *h, int idx, int64_t now)
{
    sk_conn *c = h->slots[idx].c;
    sk_hb_view v;
    int64_t due;
    int act, pending;

    sk_hb_view_of(&c->hb, &v);
    if (v.dead)
        goto done;
    act = sk_hb_tick(&v, now, -1, &due);
    if (act & SK_HB_CHECK) {
        sk_hub_pump(h, c); /* what arrived counts as received */
        if (ioctl(c->fd, FIONREAD, &pending) != 0)
            pending = 0;
        sk_hb_view_of(&c->hb, &v);
        act = sk_hb_tick(&v, now, pending, &due);
    }
    if (act & SK_HB_DEAD) {
        sk_conn_declare_dead(c);
        h->st.dead++;
        goto done;
    }
    if (act & SK_HB_ALIVE)
        SK_STORE(&c->hb.last_rx_ns, now);
    if ((act & (SK_HB_PONG | SK_HB_PING)) &&
        pthread_mutex_trylock(&c->send_mu) == 0) {
        sk_hub_send(h, c, now);
        pthread_mutex_unlock(&c->send_mu);
    }
    sk_hub_arm(h, idx);
done:
    h->slots[idx].due.key = sk_hub_next_due(c, now);
    sk_heap_update(&h->heap, &h->slots[idx].due);
}

/* Look at every lingering socket (hub lock held): drain it, and close it
 * once all we sent is acknowledged, the peer closed, or time is up. */
static void sk_hub_lingers(sk_hub *h, int64_t now)
{
    unsigned char sink[4096];
    int i = 0, outq, done;
    ssize_t r;

    while (i < h->nlinger) {
        sk_hub_linger_ent *e = &h->lingers[i];
        done = now >= e->deadline;
        do {
            r = recv(e->fd, sink, sizeof(sink), MSG_DONTWAIT);
        } while (r > 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                       errno != EINTR))
            done = 1;
        if (ioctl(e->fd, TIOCOUTQ, &outq) != 0 || outq == 0)
            done = 1;
        if (done) {
            close(e->fd);
            h->lingers[i] = h->lingers[--h->nlinger];
            h->st.lingering--;
        } else {
            i++;
        }
    }
}

/* --------------------------------------------------------------- thread */

/* Contract: the hub thread's start routine (arg: the hub, which outlives
 * it); no GIL, no Python.  Waits in epoll until the earliest heartbeat due
 * time, a socket event or a wake-up; runs sk_hub_tick for each due slot
 * and looks at the lingering sockets. */
static void *sk_hub_main(void *arg)
{
    sk_hub *h = (sk_hub *)arg;
    struct epoll_event evs[SK_HUB_EVENTS];
    struct timespec cpu;
    sk_heap_node *top;
    int64_t now;
    uint64_t tag, junk;
    int i, n, ms, idx;

    for (;;) {
        pthread_mutex_lock(&h->mu);
        if (h->stop) {
            pthread_mutex_unlock(&h->mu);
            break;
        }
        ms = 1000;
        top = sk_heap_top(&h->heap);
        if (top != NULL && top->key != SK_HB_NEVER)
            ms = sk_poll_ms(top->key, 1000);
        if (h->nlinger > 0 && ms > SK_HUB_LINGER_MS)
            ms = SK_HUB_LINGER_MS;
        pthread_mutex_unlock(&h->mu);

        n = epoll_wait(h->ep, evs, SK_HUB_EVENTS, ms);
        now = sk_now_ns();
        pthread_mutex_lock(&h->mu);
        h->st.wakeups++;
        for (i = 0; i < n; i++) {
            tag = evs[i].data.u64;
            if (tag == SK_HUB_WAKE_TAG) {
                if (read(h->wake_fd, &junk, sizeof(junk)) < 0)
                    junk = 0; /* EAGAIN: another wake-up already drained it */
                continue;
            }
            idx = (int)(uint32_t)tag;
            if (idx >= h->nslots || h->slots[idx].c == NULL ||
                h->slots[idx].gen != (uint32_t)(tag >> 32))
                continue; /* removed after epoll_wait returned */
            h->slots[idx].armed = 0; /* one-shot: disarmed by the event */
            sk_hub_on_event(h, idx);
        }
        while ((top = sk_heap_top(&h->heap)) != NULL && top->key <= now)
            sk_hub_tick(h, (int)(SK_HEAP_ENTRY(top, sk_hub_slot, due) - h->slots),
                        now);
        if (h->nlinger > 0)
            sk_hub_lingers(h, now);
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0)
            h->st.cpu_ns = (int64_t)cpu.tv_sec * 1000000000LL + cpu.tv_nsec;
        pthread_mutex_unlock(&h->mu);
    }
    return NULL;
}

/* Contract: any thread, no GIL needed. */
void sk_hub_wake(sk_hub *h)
{
    uint64_t one = 1;

    if (write(h->wake_fd, &one, sizeof(one)) < 0)
        one = 0; /* EAGAIN: the counter is already non-zero, it will wake */
}

/* Contract: any thread, no GIL needed; *out is the caller's. */
int sk_hub_new(sk_hub **out, sk_err *err)
{
    struct epoll_event ev;
    sk_hub *h;
    int rc = SK_ERR;

    h = sk_calloc(1, sizeof(*h));
    if (h == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory for the hub");
        goto error;
    }
    h->ep = h->wake_fd = -1;
    pthread_mutex_init(&h->mu, NULL);
    h->ep = sk_epoll_create(EPOLL_CLOEXEC);
    if (h->ep < 0) {
        sk_err_sys(err, "epoll_create1", errno);
        goto error;
    }
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->wake_fd < 0) {
        sk_err_sys(err, "eventfd", errno);
        goto error;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = SK_HUB_WAKE_TAG;
    if (epoll_ctl(h->ep, EPOLL_CTL_ADD, h->wake_fd, &ev) != 0) {
        sk_err_sys(err, "epoll_ctl", errno);
        goto error;
    }
    errno = sk_thread_create(&h->thread, NULL, sk_hub_main, h);
    if (errno != 0) {
        sk_err_sys(err, "pthread_create", errno);
        goto error;
    }
    h->started = 1;
    *out = h;
    h = NULL; /* the caller's now */
    rc = SK_OK;
error:
    if (h != NULL)
        sk_hub_free(h);
    return rc;
}

/* Contract: any thread; joins the hub thread. */
void sk_hub_free(sk_hub *h)
{
    int i;

    if (h == NULL)
        return;
    if (h->started) {
        pthread_mutex_lock(&h->mu);
        h->stop = 1;
        pthread_mutex_unlock(&h->mu);
        sk_hub_wake(h);
        pthread_join(h->thread, NULL);
    }
    for (i = 0; i < h->nslots; i++)
        if (h->slots[i].c != NULL)
            h->slots[i].c->hub = NULL;
    for (i = 0; i < h->nlinger; i++)
        close(h->lingers[i].fd);
    free(h->lingers);
    if (h->ep >= 0)
        close(h->ep);
    if (h->wake_fd >= 0)
        close(h->wake_fd);
    pthread_mutex_destroy(&h->mu);
    free(h->slots);
    free(h->free_list);
    sk_heap_free(&h->heap);
    free(h);
}

/* Grow the slot, free-list and heap arrays to hold one more slot. */
static int sk_hub_grow(sk_hub *h)
{
    int cap = h->cap ? h->cap + h->cap / 2 : 64, i, rc = -1;
    sk_hub_slot *s;
    int *f;

    s = sk_realloc(h->slots, (size_t)cap * sizeof(*s));
    if (s == NULL)
        goto done;
    h->slots = s;
    /* the slots moved: so did their heap nodes */
    for (i = 0; i < h->nslots; i++)
        if (h->slots[i].c != NULL && sk_heap_contains(&h->slots[i].due))
            sk_heap_moved(&h->heap, &h->slots[i].due);
    f = sk_realloc(h->free_list, (size_t)cap * sizeof(*f));
    if (f == NULL)
        goto done;
    h->free_list = f;
    if (sk_heap_reserve(&h->heap, (size_t)cap) != SK_OK)
        goto done;
    h->cap = cap;
    rc = 0;
done:
    return rc;
}

/* Contract: any thread, no GIL needed. */
int sk_hub_add(sk_hub *h, sk_conn *c, sk_err *err)
{
    struct epoll_event ev;
    int idx, rc = SK_ERR;

    pthread_mutex_lock(&h->mu);
    if (h->nfree > 0) {
        idx = h->free_list[--h->nfree];
    } else {
        if (h->nslots == h->cap && sk_hub_grow(h) != 0) {
            sk_err_set(err, SK_E_NOMEM, "out of memory for the hub");
            goto done;
        }
        idx = h->nslots++;
        h->slots[idx].gen = 0;
    }
    h->slots[idx].c = c;
    h->slots[idx].gen++;
    h->slots[idx].armed = 1;
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    ev.data.u64 = ((uint64_t)h->slots[idx].gen << 32) | (uint32_t)idx;
    if (epoll_ctl(h->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        sk_err_sys(err, "epoll_ctl", errno);
        h->slots[idx].c = NULL;
        h->free_list[h->nfree++] = idx;
        goto done;
    }
    sk_heap_node_init(&h->slots[idx].due);
    h->slots[idx].due.key = sk_hub_next_due(c, sk_now_ns());
    (void)sk_heap_push(&h->heap, &h->slots[idx].due); /* room reserved */
    c->hub = h;
    c->hub_slot = idx;
    h->st.conns++;
    rc = SK_OK;
done:
    pthread_mutex_unlock(&h->mu);
    if (rc == SK_OK)
        sk_hub_wake(h);
    return rc;
}

/* Contract: any thread, no GIL needed; synchronous. */
void sk_hub_remove(sk_hub *h, sk_conn *c)
{
    int idx;

    pthread_mutex_lock(&h->mu);
    idx = c->hub_slot;
    if (c->hub != h || idx < 0 || idx >= h->nslots || h->slots[idx].c != c)
        goto done;
    epoll_ctl(h->ep, EPOLL_CTL_DEL, c->fd, NULL);
    sk_heap_remove(&h->heap, &h->slots[idx].due);
    h->slots[idx].c = NULL;
    h->free_list[h->nfree++] = idx;
    c->hub = NULL;
    c->hub_slot = -1;
    h->st.conns--;
done:
    pthread_mutex_unlock(&h->mu);
}

/* Contract: any thread, no GIL needed; takes ownership of fd. */
void sk_hub_linger(sk_hub *h, int fd, int64_t deadline)
{
    sk_hub_linger_ent *p;
    int cap;

    pthread_mutex_lock(&h->mu);
    if (h->nlinger == h->linger_cap) {
        cap = h->linger_cap ? h->linger_cap * 2 : 16;
        p = sk_realloc(h->lingers, (size_t)cap * sizeof(*p));
        if (p == NULL) {
            pthread_mutex_unlock(&h->mu);
            close(fd); /* no memory: close now, as a plain socket would */
            return;
        }
        h->lingers = p;
        h->linger_cap = cap;
    }
    h->lingers[h->nlinger].fd = fd;
    h->lingers[h->nlinger].deadline = deadline;
    h->nlinger++;
    h->st.lingering++;
    pthread_mutex_unlock(&h->mu);
    sk_hub_wake(h);
}

/* Contract: any thread. */
void sk_hub_get_stats(sk_hub *h, sk_hub_stats *st)
{
    pthread_mutex_lock(&h->mu);
    *st = h->st;
    pthread_mutex_unlock(&h->mu);
}
