/* nfq.c - the nfnetlink_queue delay line (see nfq.h).
 *
 * Locking: `mu` guards the parameters (delay, jitter, reorder, limit), the
 * counters and `error`; the thread reads the parameters once per batch of
 * packets and publishes its counters once per loop.  The heap, the free
 * nodes and the verdict buffer belong to the thread alone.  `stop` is
 * atomic and paired with a write to the eventfd. */
#include "nfq.h"

/* glibc's netinet/in.h before linux/in.h (which linux/netfilter.h
 * includes): linux/libc-compat.h then skips the kernel's copies */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/atomic.h"
#include "core/clock.h"
#include "core/heap.h"
#include "core/sys.h"
#include "core/thread.h"
#include "rand.h"

#define SK_NFQ_STACK (128 * 1024)
#define SK_NFQ_RCVBUF (4 << 20)
#define SK_NFQ_RECV_BUF 65536
#define SK_NFQ_BATCH 64 /* verdicts per send() */
#define SK_NFQ_VERDICT_LEN                                                  \
    (NLMSG_ALIGN(sizeof(struct nlmsghdr)) + sizeof(struct nfgenmsg) +       \
     NLA_ALIGN(NLA_HDRLEN + sizeof(struct nfqnl_msg_verdict_hdr)))

typedef struct sk_nfq_node {
    sk_heap_node hn;          /* key: due time (ns, monotonic); tie: arrival */
    uint32_t id;              /* the kernel's packet id */
    struct sk_nfq_node *next; /* in the free list */
} sk_nfq_node;

struct sk_nfq {
    int fd;         /* the netlink socket; -1 once closed */
    int efd;        /* eventfd: wakes the thread to stop */
    uint16_t queue; /* queue number */
    pthread_t thread;
    pthread_mutex_t mu;
    int stop;       /* atomic */
    /* under mu */
    int64_t delay_ns, jitter_ns;
    uint32_t reorder_ppm, limit;
    sk_nfq_stats st;
    /* the thread's own */
    sk_heap heap;
    sk_nfq_node *free_nodes;
    uint64_t arrivals, rng;
    size_t nodes; /* allocated */
    unsigned char out[SK_NFQ_BATCH * SK_NFQ_VERDICT_LEN];
    size_t out_len;
    unsigned char in[SK_NFQ_RECV_BUF];
};

/* Contract: the thread; the handler's next random number (rand.h). */
static uint64_t sk_nfq_rand(sk_nfq *q)
{
    return sk_splitmix64(&q->rng);
}

/* Contract: pure.  One nfnetlink_queue message at buf (room for the
 * header, the nfgenmsg and attrs_len bytes): header and nfgenmsg filled,
 * the attributes left to the caller.  Returns the message's length. */
static size_t sk_nfq_msg(unsigned char *buf, uint16_t queue, uint16_t msg,
                         uint16_t flags, uint8_t family, size_t attrs_len)
{
    struct nlmsghdr *nh = (struct nlmsghdr *)(void *)buf;
    struct nfgenmsg *g = (struct nfgenmsg *)NLMSG_DATA(nh);

    nh->nlmsg_len = (uint32_t)(NLMSG_LENGTH(sizeof(*g)) + attrs_len);
    nh->nlmsg_type = (uint16_t)((NFNL_SUBSYS_QUEUE << 8) | msg);
    nh->nlmsg_flags = flags;
    nh->nlmsg_seq = 0;
    nh->nlmsg_pid = 0;
    g->nfgen_family = family;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
    return NLMSG_ALIGN(nh->nlmsg_len);
}

/* Contract: pure.  An attribute at buf; returns its aligned length. */
static size_t sk_nfq_attr(unsigned char *buf, uint16_t type, const void *data,
                          size_t len)
{
    struct nlattr *a = (struct nlattr *)(void *)buf;

    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    a->nla_type = type;
    memcpy(buf + NLA_HDRLEN, data, len);
    memset(buf + NLA_HDRLEN + len, 0, NLA_ALIGN(NLA_HDRLEN + len) - (NLA_HDRLEN + len));
    return NLA_ALIGN(NLA_HDRLEN + len);
}

/* Contract: no GIL needed; called by sk_nfq_start before the thread runs.
 * Send one config message (attributes attrs) with an ack requested and
 * wait for the ack.  SK_OK, or SK_ERR naming `what`. */
static int sk_nfq_config(sk_nfq *q, uint8_t family, const unsigned char *attrs,
                         size_t attrs_len, const char *what, sk_err *err)
{
    unsigned char buf[256];
    size_t n;
    ssize_t r;
    struct nlmsghdr *nh = (struct nlmsghdr *)(void *)buf;
    int rc = SK_ERR;

    n = sk_nfq_msg(buf, q->queue, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK,
                   family, attrs_len);
    memcpy(buf + NLMSG_LENGTH(sizeof(struct nfgenmsg)), attrs, attrs_len);
    if (send(q->fd, buf, n, 0) < 0) {
        sk_err_sys(err, "send(nfnetlink_queue config)", errno);
        goto done;
    }
    r = recv(q->fd, buf, sizeof(buf), 0);
    if (r < 0) {
        sk_err_sys(err, "recv(nfnetlink_queue config ack)", errno);
        goto done;
    }
    if ((size_t)r >= NLMSG_LENGTH(sizeof(struct nlmsgerr)) &&
        nh->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = (const struct nlmsgerr *)NLMSG_DATA(nh);
        if (e->error != 0) {
            sk_err_sys(err, what, -e->error);
            goto done;
        }
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: no GIL needed, any thread (netlink sends are atomic).  Send
 * the queue length cap to the kernel, no ack asked (the thread reads the
 * socket and skips whatever is not a packet).  0, or an errno value. */
static int sk_nfq_send_limit(sk_nfq *q, uint32_t limit)
{
    unsigned char buf[64];
    uint32_t be = htonl(limit);
    size_t n = sk_nfq_msg(buf, q->queue, NFQNL_MSG_CONFIG, NLM_F_REQUEST, AF_UNSPEC,
                          NLA_ALIGN(NLA_HDRLEN + sizeof(be)));
    int e = 0;

    sk_nfq_attr(buf + NLMSG_LENGTH(sizeof(struct nfgenmsg)), NFQA_CFG_QUEUE_MAXLEN,
                &be, sizeof(be));
    if (send(q->fd, buf, n, 0) < 0)
        e = errno;
    return e;
}

/* Contract: the thread; no GIL.  Send the buffered verdicts.  0, or an
 * errno value (the buffer is emptied either way). */
static int sk_nfq_flush(sk_nfq *q)
{
    int e = 0;

    if (q->out_len > 0 && send(q->fd, q->out, q->out_len, 0) < 0)
        e = errno;
    q->out_len = 0;
    return e;
}

/* Contract: the thread; no GIL.  Buffer a verdict for packet id (and send
 * the buffer when it is full).  0, or an errno value. */
static int sk_nfq_verdict(sk_nfq *q, uint32_t id, uint32_t verdict)
{
    struct nfqnl_msg_verdict_hdr vh;
    unsigned char *m = q->out + q->out_len;
    int e = 0;

    vh.verdict = htonl(verdict);
    vh.id = htonl(id);
    q->out_len += sk_nfq_msg(m, q->queue, NFQNL_MSG_VERDICT, NLM_F_REQUEST, AF_UNSPEC,
                             NLA_ALIGN(NLA_HDRLEN + sizeof(vh)));
    sk_nfq_attr(m + NLMSG_LENGTH(sizeof(struct nfgenmsg)), NFQA_VERDICT_HDR, &vh,
                sizeof(vh));
    if (q->out_len + SK_NFQ_VERDICT_LEN > sizeof(q->out))
        e = sk_nfq_flush(q);
    return e;
}

/* Contract: the thread; no GIL.  Accept every held packet whose due time
 * is at or before now (all of them when now is INT64_MAX), in due order;
 * their lateness goes to st (not for INT64_MAX); *e set to an errno value
 * on a send failure. */
static void sk_nfq_release(sk_nfq *q, int64_t now, sk_nfq_stats *st, int *e)
{
    sk_heap_node *top;
    sk_nfq_node *n;

    while ((top = sk_heap_top(&q->heap)) != NULL && top->key <= now) {
        n = SK_HEAP_ENTRY(top, sk_nfq_node, hn);
        sk_heap_remove(&q->heap, top);
        if (now != INT64_MAX) {
            if ((uint64_t)(now - top->key) > st->late_max_ns)
                st->late_max_ns = (uint64_t)(now - top->key);
            st->late_total_ns += (uint64_t)(now - top->key);
            st->released++;
        }
        if (*e == 0)
            *e = sk_nfq_verdict(q, n->id, NF_ACCEPT);
        n->next = q->free_nodes;
        q->free_nodes = n;
    }
    if (*e == 0)
        *e = sk_nfq_flush(q);
}

/* Contract: the thread; no GIL.  A node for a packet to hold: from the
 * free list, or allocated (up to SK_NFQ_MAX_HELD); NULL if none. */
static sk_nfq_node *sk_nfq_node_get(sk_nfq *q)
{
    sk_nfq_node *n = q->free_nodes;

    if (n != NULL) {
        q->free_nodes = n->next;
    } else if (q->nodes < SK_NFQ_MAX_HELD &&
               (n = sk_malloc(sizeof(*n))) != NULL) {
        q->nodes++;
    }
    if (n != NULL)
        sk_heap_node_init(&n->hn);
    return n;
}

/* Contract: pure.  The packet id of one netlink message of type
 * NFQNL_MSG_PACKET (its NFQA_PACKET_HDR), or -1 if it has none. */
static int64_t sk_nfq_packet_id(const struct nlmsghdr *nh)
{
    const unsigned char *p = (const unsigned char *)NLMSG_DATA(nh) + sizeof(struct nfgenmsg);
    const unsigned char *end = (const unsigned char *)nh + nh->nlmsg_len;
    const struct nlattr *a;
    struct nfqnl_msg_packet_hdr ph;
    int64_t id = -1;

    while (id < 0 && p + NLA_HDRLEN <= end) {
        a = (const struct nlattr *)(const void *)p;
        if (a->nla_len < NLA_HDRLEN || p + a->nla_len > end)
            break;
        if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR &&
            a->nla_len >= NLA_HDRLEN + sizeof(ph)) {
            memcpy(&ph, p + NLA_HDRLEN, sizeof(ph));
            id = (int64_t)ntohl(ph.packet_id);
        }
        p += NLA_ALIGN(a->nla_len);
    }
    return id;
}

/* Contract: the thread; no GIL.  Read every packet waiting on the socket
 * and give each its due time (accepting at once the ones due now).
 * Counters go to *st.  0, or an errno value (fatal). */
static int sk_nfq_read(sk_nfq *q, sk_nfq_stats *st)
{
    int64_t delay, jitter, now, due, id;
    uint32_t reorder;
    struct nlmsghdr *nh;
    sk_nfq_node *n;
    ssize_t r;
    size_t len;
    int e = 0;

    pthread_mutex_lock(&q->mu);
    delay = q->delay_ns;
    jitter = q->jitter_ns;
    reorder = q->reorder_ppm;
    pthread_mutex_unlock(&q->mu);
    for (;;) {
        r = recv(q->fd, q->in, sizeof(q->in), MSG_DONTWAIT);
        if (r < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ENOBUFS)
                e = errno;
            break;
        }
        now = sk_now_ns();
        len = (size_t)r;
        for (nh = (struct nlmsghdr *)(void *)q->in; e == 0 && NLMSG_OK(nh, len);
             nh = NLMSG_NEXT(nh, len)) {
            if (nh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET))
                continue;
            id = sk_nfq_packet_id(nh);
            if (id < 0)
                continue;
            due = now;
            if ((delay > 0 || jitter > 0) &&
                !(reorder > 0 && sk_nfq_rand(q) % 1000000u < reorder)) {
                due += delay;
                if (jitter > 0)
                    due += (int64_t)(sk_nfq_rand(q) % (uint64_t)(2 * jitter + 1)) - jitter;
            }
            if (due <= now) {
                st->passed++;
                e = sk_nfq_verdict(q, (uint32_t)id, NF_ACCEPT);
            } else if ((n = sk_nfq_node_get(q)) == NULL) {
                st->dropped++;
                e = sk_nfq_verdict(q, (uint32_t)id, NF_DROP);
            } else {
                n->hn.key = due;
                n->hn.tie = q->arrivals++;
                n->id = (uint32_t)id;
                if (sk_heap_push(&q->heap, &n->hn) != SK_OK) {
                    n->next = q->free_nodes;
                    q->free_nodes = n;
                    st->dropped++;
                    e = sk_nfq_verdict(q, (uint32_t)id, NF_DROP);
                } else {
                    st->held++;
                    if (q->heap.len > st->most_held)
                        st->most_held = q->heap.len;
                }
            }
        }
        if (e != 0)
            break;
    }
    if (e == 0)
        e = sk_nfq_flush(q);
    return e;
}

/* Contract: the thread's body; no GIL, ever.  Waits on one deadline (the
 * earliest due time), reads packets, accepts them when due; on stop or a
 * fatal error accepts everything held and closes the socket. */
static void *sk_nfq_main(void *arg)
{
    sk_nfq *q = arg;
    struct pollfd pf[2];
    struct timespec ts, *tsp;
    sk_heap_node *top;
    sk_nfq_stats st;
    int64_t now, wait;
    uint64_t v;
    int e = 0;

    prctl(PR_SET_NAME, "sk-nfq", 0, 0, 0);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 us, not the default 50 */
    memset(&st, 0, sizeof(st));
    pf[0].fd = q->fd;
    pf[0].events = POLLIN;
    pf[1].fd = q->efd;
    pf[1].events = POLLIN;
    while (e == 0 && !SK_LOAD(&q->stop)) {
        now = sk_now_ns();
        sk_nfq_release(q, now, &st, &e);
        if (e != 0)
            break;
        tsp = NULL;
        top = sk_heap_top(&q->heap);
        if (top != NULL) {
            wait = top->key - sk_now_ns();
            if (wait < 0)
                wait = 0;
            ts.tv_sec = (time_t)(wait / 1000000000LL);
            ts.tv_nsec = (long)(wait % 1000000000LL);
            tsp = &ts;
        }
        st.waiting = q->heap.len;
        pthread_mutex_lock(&q->mu);
        q->st = st;
        pthread_mutex_unlock(&q->mu);
        if (ppoll(pf, 2, tsp, NULL) < 0 && errno != EINTR) {
            e = errno;
            break;
        }
        if (pf[1].revents & POLLIN) {
            if (read(q->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                e = errno;
        }
        if (e == 0 && (pf[0].revents & (POLLIN | POLLERR)))
            e = sk_nfq_read(q, &st);
    }
    /* held packets pass now; then the queue goes (its rule's bypass lets
     * traffic through), so nothing is ever stuck behind a dead handler */
    {
        int e2 = 0;
        sk_nfq_release(q, INT64_MAX, &st, &e2);
    }
    st.waiting = 0;
    st.error = e;
    pthread_mutex_lock(&q->mu);
    q->st = st;
    close(q->fd);
    q->fd = -1;
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* Contract: no GIL needed; frees q and everything it owns (the thread is
 * not running). */
static void sk_nfq_free(sk_nfq *q)
{
    sk_nfq_node *n;

    /* the heap is empty: the thread accepted and freed every held packet
     * on its way out (or never ran) */
    while ((n = q->free_nodes) != NULL) {
        q->free_nodes = n->next;
        free(n);
    }
    sk_heap_free(&q->heap);
    if (q->fd >= 0)
        close(q->fd);
    if (q->efd >= 0)
        close(q->efd);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int sk_nfq_start(uint16_t queue_num, uint32_t limit, uint64_t seed,
                 sk_nfq **out, sk_err *err)
{
    struct sockaddr_nl sa;
    struct nfqnl_msg_config_cmd cmd;
    struct nfqnl_msg_config_params params;
    unsigned char attrs[64];
    size_t alen;
    uint32_t be;
    int one = 1, rcvbuf = SK_NFQ_RCVBUF;
    sk_nfq *q = NULL;
    int rc = SK_ERR;

    *out = NULL;
    if (limit < 1 || limit > SK_NFQ_MAX_LIMIT) {
        sk_err_set(err, SK_E_ARG, "limit must be 1..%u packets, not %u",
                   SK_NFQ_MAX_LIMIT, limit);
        goto error;
    }
    q = sk_calloc(1, sizeof(*q));
    if (q == NULL) {
        sk_err_set(err, SK_E_NOMEM, "out of memory for the packet queue handler");
        goto error;
    }
    q->fd = -1;
    q->efd = -1;
    q->queue = queue_num;
    q->limit = limit;
    q->rng = seed;
    pthread_mutex_init(&q->mu, NULL);
    sk_heap_init(&q->heap);
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0) {
        sk_err_sys(err, "eventfd", errno);
        goto error;
    }
    q->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (q->fd < 0) {
        sk_err_sys(err, "socket(AF_NETLINK, NETLINK_NETFILTER)", errno);
        goto error;
    }
    /* a burst beyond the socket buffer is dropped by the kernel and
     * counted (user_dropped), not reported as ENOBUFS on every recv */
    setsockopt(q->fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    setsockopt(q->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    if (bind(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        sk_err_sys(err, "bind(AF_NETLINK)", errno);
        goto error;
    }
    {
        struct timeval tv = {5, 0}; /* the config acks come at once */
        setsockopt(q->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    /* one bind serves every family (the family is ignored since Linux 3.8) */
    memset(&cmd, 0, sizeof(cmd));
    cmd.command = NFQNL_CFG_CMD_BIND;
    cmd.pf = htons(AF_INET);
    alen = sk_nfq_attr(attrs, NFQA_CFG_CMD, &cmd, sizeof(cmd));
    if (sk_nfq_config(q, AF_INET, attrs, alen, "bind queue (nfnetlink_queue)", err) != SK_OK)
        goto error;
    memset(&params, 0, sizeof(params));
    params.copy_range = htonl(0);
    params.copy_mode = NFQNL_COPY_META; /* ids and metadata, never the bytes */
    alen = sk_nfq_attr(attrs, NFQA_CFG_PARAMS, &params, sizeof(params));
    be = htonl(limit);
    alen += sk_nfq_attr(attrs + alen, NFQA_CFG_QUEUE_MAXLEN, &be, sizeof(be));
    if (sk_nfq_config(q, AF_UNSPEC, attrs, alen, "configure queue (nfnetlink_queue)",
                      err) != SK_OK)
        goto error;
    if (sk_thread_spawn(&q->thread, SK_NFQ_STACK, sk_nfq_main, q, err) != SK_OK)
        goto error;
    *out = q;
    q = NULL;
    rc = SK_OK;
error:
    if (q != NULL)
        sk_nfq_free(q);
    return rc;
}

int sk_nfq_set(sk_nfq *q, int64_t delay_ns, int64_t jitter_ns,
               uint32_t reorder_ppm, uint32_t limit, sk_err *err)
{
    int rc = SK_ERR, e = 0;

    if (delay_ns < 0 || jitter_ns < 0 || jitter_ns > INT64_MAX / 4 ||
        delay_ns > INT64_MAX / 4 || reorder_ppm > 1000000u || limit < 1 ||
        limit > SK_NFQ_MAX_LIMIT) {
        sk_err_set(err, SK_E_ARG, "delay and jitter must be >= 0, reorder 0..1000000 "
                   "ppm, limit 1..%u packets", SK_NFQ_MAX_LIMIT);
        goto error;
    }
    pthread_mutex_lock(&q->mu);
    if (limit != q->limit && q->fd >= 0)
        e = sk_nfq_send_limit(q, limit);
    if (e == 0) {
        q->delay_ns = delay_ns;
        q->jitter_ns = jitter_ns;
        q->reorder_ppm = reorder_ppm;
        q->limit = limit;
    }
    pthread_mutex_unlock(&q->mu);
    if (e != 0) {
        sk_err_sys(err, "send(nfnetlink_queue maxlen)", e);
        goto error;
    }
    rc = SK_OK;
error:
    return rc;
}

void sk_nfq_get_stats(sk_nfq *q, sk_nfq_stats *s)
{
    pthread_mutex_lock(&q->mu);
    *s = q->st;
    pthread_mutex_unlock(&q->mu);
}

void sk_nfq_stop(sk_nfq *q)
{
    uint64_t one = 1;

    SK_STORE(&q->stop, 1);
    if (write(q->efd, &one, sizeof(one)) < 0) {
        /* an eventfd write fails only on overflow: the thread is awake */
    }
    pthread_join(q->thread, NULL);
    sk_nfq_free(q);
}
