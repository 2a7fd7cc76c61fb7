/* capture.c - TCP segments from an AF_PACKET socket: the BPF filter
 * (pure), the packet parser (pure), and the capture thread (see capture.h).
 *
 * Locking: `mu` guards the ring, the counters, `stop` and `running`; the
 * thread reads packets without it and appends under it, then broadcasts
 * `cv` (waiters of sk_capture_wait).  `join_mu` serialises joiners. */
#include "capture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "thread.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux >= 4.20, linux/if_packet.h */
#endif

#define SK_CAPTURE_BATCH 32         /* packets per recvmmsg */
#define SK_CAPTURE_STACK (256 * 1024)
#define SK_CAPTURE_RCVBUF (1 << 20)
#define SK_CAPTURE_CMSG 64          /* room for one SCM_TIMESTAMPNS */
/* how long a start waits for the kernel to switch receive timestamps on */
#define SK_CAPTURE_STAMPS_WAIT_NS (1000LL * 1000000)

/* ------------------------------------------------------------- parser */

/* Contract: pure; big-endian read of a packet field (rd32 below too). */
static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16)
         | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Contract: pure.  Walk the TCP options in p[0..n) into seg.  A bad
 * option length stops the walk and sets SK_SEG_OPT_BAD; known options of
 * the wrong size are ignored (as tcpdump prints them "bad"). */
static void parse_options(const uint8_t *p, size_t n, sk_segment *seg)
{
    size_t i = 0, olen, k;

    while (i < n) {
        uint8_t kind = p[i];

        if (kind == 0) /* end of option list */
            break;
        if (kind == 1) { /* no-operation */
            i++;
            continue;
        }
        if (i + 1 >= n) {
            seg->opts |= SK_SEG_OPT_BAD;
            break;
        }
        olen = p[i + 1];
        if (olen < 2 || olen > n - i) {
            seg->opts |= SK_SEG_OPT_BAD;
            break;
        }
        switch (kind) {
        case 2: /* MSS */
            if (olen == 4) {
                seg->mss = rd16(p + i + 2);
                seg->opts |= SK_SEG_OPT_MSS;
            }
            break;
        case 3: /* window scale */
            if (olen == 3) {
                seg->wscale = p[i + 2];
                seg->opts |= SK_SEG_OPT_WSCALE;
            }
            break;
        case 4: /* SACK permitted */
            if (olen == 2)
                seg->opts |= SK_SEG_OPT_SACK_PERM;
            break;
        case 5: /* SACK blocks */
            if (olen >= 10 && (olen - 2) % 8 == 0) {
                seg->opts |= SK_SEG_OPT_SACK;
                seg->nsack = 0;
                for (k = 0; k < (olen - 2) / 8 && k < SK_SEG_MAX_SACK; k++) {
                    seg->sack[k][0] = rd32(p + i + 2 + 8 * k);
                    seg->sack[k][1] = rd32(p + i + 6 + 8 * k);
                    seg->nsack++;
                }
            }
            break;
        case 8: /* timestamps */
            if (olen == 10) {
                seg->tsval = rd32(p + i + 2);
                seg->tsecr = rd32(p + i + 6);
                seg->opts |= SK_SEG_OPT_TIMESTAMP;
            }
            break;
        default:
            break;
        }
        i += olen;
    }
}

/* Contract: pure.  The IPv4 header at pkt: sets seg's addresses, *off
 * (TCP header offset) and *ip_end (end of the IP datagram).  SK_OK or
 * SK_ERR (SK_E_PROTOCOL). */
static int parse_ipv4(const uint8_t *pkt, size_t len, size_t wire_len,
                      sk_segment *seg, size_t *off, size_t *ip_end,
                      sk_err *err)
{
    size_t ihl, tot;
    int rc = SK_ERR;

    if (len < 20) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv4 header truncated (%zu of 20 bytes)",
                   len);
        goto done;
    }
    if ((pkt[0] >> 4) != 4) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv4 packet with IP version %u",
                   (unsigned)(pkt[0] >> 4));
        goto done;
    }
    ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > len) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv4 header length %zu is bad "
                   "(packet has %zu bytes)", ihl, len);
        goto done;
    }
    if (pkt[9] != IPPROTO_TCP) {
        sk_err_set(err, SK_E_PROTOCOL, "not TCP (IPv4 protocol %u)",
                   (unsigned)pkt[9]);
        goto done;
    }
    if ((rd16(pkt + 6) & 0x1fff) != 0) {
        sk_err_set(err, SK_E_PROTOCOL, "an IPv4 fragment (offset %u)",
                   (unsigned)(rd16(pkt + 6) & 0x1fff) * 8);
        goto done;
    }
    tot = rd16(pkt + 2);
    if (tot == 0) /* a GSO packet over 64 KiB (BIG TCP): the wire says */
        tot = wire_len;
    if (tot < ihl || tot > wire_len) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv4 total length %zu does not fit "
                   "the packet (%zu bytes, header %zu)", tot, wire_len, ihl);
        goto done;
    }
    seg->family = AF_INET;
    memcpy(seg->src, pkt + 12, 4);
    memcpy(seg->dst, pkt + 16, 4);
    *off = ihl;
    *ip_end = tot;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: pure.  The IPv6 header and its extension headers at pkt, as
 * parse_ipv4. */
static int parse_ipv6(const uint8_t *pkt, size_t len, size_t wire_len,
                      sk_segment *seg, size_t *off, size_t *ip_end,
                      sk_err *err)
{
    size_t pos = 40, end, hlen;
    unsigned nh;
    int hops = 0, rc = SK_ERR;

    if (len < 40) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv6 header truncated (%zu of 40 bytes)",
                   len);
        goto done;
    }
    if ((pkt[0] >> 4) != 6) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv6 packet with IP version %u",
                   (unsigned)(pkt[0] >> 4));
        goto done;
    }
    end = 40 + (size_t)rd16(pkt + 4);
    if (end == 40) /* a jumbogram or BIG TCP: the wire says */
        end = wire_len;
    if (end > wire_len) {
        sk_err_set(err, SK_E_PROTOCOL, "IPv6 payload length %zu does not fit "
                   "the packet (%zu bytes)", end - 40, wire_len);
        goto done;
    }
    nh = pkt[6];
    /* hop-by-hop (0), routing (43), fragment (44), AH (51), dest opts (60) */
    while (nh != IPPROTO_TCP) {
        if (nh != 0 && nh != 43 && nh != 44 && nh != 51 && nh != 60) {
            sk_err_set(err, SK_E_PROTOCOL, "not TCP (IPv6 next header %u)", nh);
            goto done;
        }
        if (++hops > 8 || pos + 8 > len || pos + 8 > end) {
            sk_err_set(err, SK_E_PROTOCOL, "IPv6 extension header %u truncated "
                       "or too many of them", nh);
            goto done;
        }
        if (nh == 44) {
            if ((rd16(pkt + pos + 2) & 0xfff8) != 0) {
                sk_err_set(err, SK_E_PROTOCOL, "an IPv6 fragment (offset %u)",
                           (unsigned)(rd16(pkt + pos + 2) & 0xfff8));
                goto done;
            }
            hlen = 8;
        } else if (nh == 51) {
            hlen = ((size_t)pkt[pos + 1] + 2) * 4;
        } else {
            hlen = ((size_t)pkt[pos + 1] + 1) * 8;
        }
        nh = pkt[pos];
        pos += hlen;
    }
    seg->family = AF_INET6;
    memcpy(seg->src, pkt + 8, 16);
    memcpy(seg->dst, pkt + 24, 16);
    *off = pos;
    *ip_end = end;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: see capture.h. */
int sk_capture_parse(const uint8_t *pkt, size_t len, size_t wire_len,
                     unsigned ethertype, sk_segment *seg,
                     const uint8_t **payload, sk_err *err)
{
    size_t off = 0, ip_end = 0, doff, avail;
    unsigned version;
    int rc = SK_ERR;

    if (payload != NULL)
        *payload = NULL;
    if (seg == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_capture_parse: NULL segment");
        goto done;
    }
    memset(seg, 0, sizeof(*seg));
    if (pkt == NULL || len == 0) {
        sk_err_set(err, SK_E_PROTOCOL, "empty packet");
        goto done;
    }
    if (wire_len < len)
        wire_len = len;
    version = pkt[0] >> 4;
    if (ethertype == ETH_P_IP || (ethertype == 0 && version == 4)) {
        if (parse_ipv4(pkt, len, wire_len, seg, &off, &ip_end, err) != SK_OK)
            goto done;
    } else if (ethertype == ETH_P_IPV6 || (ethertype == 0 && version == 6)) {
        if (parse_ipv6(pkt, len, wire_len, seg, &off, &ip_end, err) != SK_OK)
            goto done;
    } else {
        sk_err_set(err, SK_E_PROTOCOL, "not IPv4 or IPv6 (ethertype 0x%04x, "
                   "version %u)", ethertype, version);
        goto done;
    }
    if (off + 20 > len || off + 20 > ip_end) {
        sk_err_set(err, SK_E_PROTOCOL, "TCP header truncated (%zu bytes left)",
                   (len < ip_end ? len : ip_end) - (off < len ? off : len));
        goto done;
    }
    doff = (size_t)(pkt[off + 12] >> 4) * 4;
    if (doff < 20 || off + doff > len || off + doff > ip_end) {
        sk_err_set(err, SK_E_PROTOCOL, "TCP data offset %zu is bad (%zu bytes "
                   "from the TCP header on)", doff,
                   (len < ip_end ? len : ip_end) - off);
        goto done;
    }
    seg->sport = rd16(pkt + off);
    seg->dport = rd16(pkt + off + 2);
    seg->seq = rd32(pkt + off + 4);
    seg->ack = rd32(pkt + off + 8);
    seg->flags = pkt[off + 13];
    seg->window = rd16(pkt + off + 14);
    seg->urgent = rd16(pkt + off + 18);
    parse_options(pkt + off + 20, doff - 20, seg);
    seg->hdr_len = (uint16_t)(off + doff);
    seg->length = (uint32_t)(ip_end - off - doff);
    avail = len - off - doff;
    seg->caplen = (uint32_t)(avail < seg->length ? avail : seg->length);
    if (payload != NULL && seg->caplen > 0)
        *payload = pkt + off + doff;
    rc = SK_OK;
done:
    return rc;
}

/* ------------------------------------------------------------- filter */

/* Jump targets while the program is built: an instruction index >= 0, or
 * one of these labels, patched once every instruction is in place. */
enum { L_NEXT = -1, L_ACCEPT = -2, L_DROP = -3, L_IPV6 = -4 };

typedef struct prog {
    struct sock_filter *ins;
    int jt[SK_CAPTURE_FILTER_MAX], jf[SK_CAPTURE_FILTER_MAX];
    size_t n, cap;
    int overflow;
} prog;

/* Contract: pure.  Append one instruction (jt/jf: labels, see above). */
static void emit(prog *p, uint16_t code, uint32_t k, int jt, int jf)
{
    if (p->n >= p->cap || p->n >= SK_CAPTURE_FILTER_MAX) {
        p->overflow = 1;
        return;
    }
    p->ins[p->n].code = code;
    p->ins[p->n].k = k;
    p->ins[p->n].jt = 0;
    p->ins[p->n].jf = 0;
    p->jt[p->n] = jt;
    p->jf[p->n] = jf;
    p->n++;
}

/* Contract: pure.  The TCP ports at `off` (mode BPF_ABS: from the packet's
 * start; BPF_IND: from X, the IPv4 header length): ACCEPT if the source or
 * the destination port is one of ports, else DROP (no ports: ACCEPT). */
static void emit_ports(prog *p, const uint16_t *ports, size_t nports,
                       uint16_t mode, uint32_t off)
{
    size_t i;
    int dir;

    if (nports == 0) {
        emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, L_ACCEPT, L_ACCEPT);
        return;
    }
    for (dir = 0; dir < 2; dir++) {     /* source port, then destination */
        emit(p, BPF_LD | BPF_H | mode, off + 2u * (uint32_t)dir, L_NEXT, L_NEXT);
        for (i = 0; i < nports; i++)
            emit(p, BPF_JMP | BPF_JEQ | BPF_K, ports[i], L_ACCEPT,
                 (dir == 1 && i + 1 == nports) ? L_DROP : L_NEXT);
    }
}

/* Contract: pure.  Turn a label into a relative jump from instruction i;
 * -1 if it does not fit in 8 bits. */
static int resolve(int label, size_t i, size_t accept, size_t drop,
                   size_t ipv6)
{
    size_t target;
    int jump = -1;

    switch (label) {
    case L_NEXT: target = i + 1; break;
    case L_ACCEPT: target = accept; break;
    case L_DROP: target = drop; break;
    case L_IPV6: target = ipv6; break;
    default: target = (size_t)label; break;
    }
    if (target > i && target - i - 1 <= 255)
        jump = (int)(target - i - 1);
    return jump;
}

/* Contract: see capture.h. */
int sk_capture_build_filter(const uint16_t *ports, size_t nports,
                            uint32_t snaplen, struct sock_filter *out,
                            size_t cap, size_t *n, sk_err *err)
{
    prog p;
    size_t i, accept, drop, ipv6 = 0;
    int rc = SK_ERR, a, b;

    if (n != NULL)
        *n = 0;
    if (out == NULL || n == NULL || (nports > 0 && ports == NULL)) {
        sk_err_set(err, SK_E_ARG, "sk_capture_build_filter: NULL argument");
        goto done;
    }
    if (nports > SK_CAPTURE_MAX_PORTS) {
        sk_err_set(err, SK_E_ARG, "capture: at most %d ports, not %zu",
                   SK_CAPTURE_MAX_PORTS, nports);
        goto done;
    }
    for (i = 0; i < nports; i++) {
        if (ports[i] == 0) {
            sk_err_set(err, SK_E_ARG, "capture: port 0 is not a port to "
                       "filter on");
            goto done;
        }
    }
    if (snaplen == 0) {
        sk_err_set(err, SK_E_ARG, "capture: snap length must be > 0");
        goto done;
    }
    memset(&p, 0, sizeof(p));
    p.ins = out;
    p.cap = cap;
    /* never the copy of a packet leaving the host (loopback: both) */
    emit(&p, BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PKTTYPE),
         L_NEXT, L_NEXT);
    emit(&p, BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, L_DROP, L_NEXT);
    emit(&p, BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PROTOCOL),
         L_NEXT, L_NEXT);
    emit(&p, BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, L_NEXT, L_IPV6);
    /* IPv4: TCP, first fragment, ports at X = header length */
    emit(&p, BPF_LD | BPF_B | BPF_ABS, 9, L_NEXT, L_NEXT);
    emit(&p, BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, L_NEXT, L_DROP);
    emit(&p, BPF_LD | BPF_H | BPF_ABS, 6, L_NEXT, L_NEXT);
    emit(&p, BPF_JMP | BPF_JSET | BPF_K, 0x1fff, L_DROP, L_NEXT);
    emit(&p, BPF_LDX | BPF_B | BPF_MSH, 0, L_NEXT, L_NEXT);
    emit_ports(&p, ports, nports, BPF_IND, 0);
    /* IPv6: TCP right after the fixed header (loopback TCP never carries
     * extension headers); ports at 40 and 42 */
    ipv6 = p.n;
    emit(&p, BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, L_NEXT, L_DROP);
    emit(&p, BPF_LD | BPF_B | BPF_ABS, 6, L_NEXT, L_NEXT);
    emit(&p, BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, L_NEXT, L_DROP);
    emit_ports(&p, ports, nports, BPF_ABS, 40);
    accept = p.n;
    emit(&p, BPF_RET | BPF_K, snaplen, L_NEXT, L_NEXT);
    drop = p.n;
    emit(&p, BPF_RET | BPF_K, 0, L_NEXT, L_NEXT);
    if (p.overflow) {
        sk_err_set(err, SK_E_ARG, "capture: the filter needs more than %zu "
                   "instructions", cap);
        goto done;
    }
    for (i = 0; i < p.n; i++) {
        if (BPF_CLASS(p.ins[i].code) != BPF_JMP)
            continue;
        a = resolve(p.jt[i], i, accept, drop, ipv6);
        b = resolve(p.jf[i], i, accept, drop, ipv6);
        if (a < 0 || b < 0) {
            sk_err_set(err, SK_E_ARG, "capture: filter jump out of range");
            goto done;
        }
        p.ins[i].jt = (uint8_t)a;
        p.ins[i].jf = (uint8_t)b;
    }
    *n = p.n;
    rc = SK_OK;
done:
    return rc;
}

/* ------------------------------------------------------------ capture */

struct sk_capture {
    /* immutable after start */
    int fd;                   /* the packet socket */
    int evfd;                 /* stop requests wake the thread */
    pid_t pid;
    pthread_t thread;
    size_t cap;               /* ring capacity (segments) */
    size_t pbytes;            /* payload bytes kept per segment */
    size_t snaplen;
    int64_t end_by_ns;        /* max_duration deadline, or SK_NO_DEADLINE */
    int stamps_on;            /* sk_capture_wait_stamps saw stamping on */

    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* new segments, thread end; CLOCK_MONOTONIC */
    sk_segment *ring;
    uint8_t *pay;
    size_t len;
    int stop, running, timed_out;
    int64_t start_ns, end_ns;
    uint64_t seen, ring_dropped, kernel_dropped, malformed;
    sk_err err;

    pthread_mutex_t join_mu;
    int thread_started, joined;
};

/* Contract: lock mu unless this is a fork()ed child (no thread there, and
 * mu may have been copied held); returns whether it locked. */
static int outer_lock(sk_capture *c)
{
    int locked = getpid() == c->pid;

    if (locked)
        pthread_mutex_lock(&c->mu);
    return locked;
}

/* Contract: undoes outer_lock (locked: what it returned). */
static void outer_unlock(sk_capture *c, int locked)
{
    if (locked)
        pthread_mutex_unlock(&c->mu);
}

/* Contract: capture thread; no lock.  Kernel drops since the last call
 * (PACKET_STATISTICS resets its counters when read). */
static uint64_t kernel_drops(int fd)
{
    struct tpacket_stats st;
    socklen_t len = sizeof(st);

    memset(&st, 0, sizeof(st));
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
        st.tp_drops = 0;
    return st.tp_drops;
}

/* Contract: capture thread.  Read one batch (non-blocking) and append it
 * to the ring.  Returns the number of packets read (0: nothing there), or
 * -1 with err set. */
static int read_batch(sk_capture *c, uint8_t *bufs, sk_err *err)
{
    struct mmsghdr msgs[SK_CAPTURE_BATCH];
    struct iovec iov[SK_CAPTURE_BATCH];
    struct sockaddr_ll from[SK_CAPTURE_BATCH];
    union {
        char buf[SK_CAPTURE_CMSG];
        struct cmsghdr align;
    } ctl[SK_CAPTURE_BATCH];
    struct timespec real, mono;
    int64_t offset;
    uint64_t drops;
    sk_segment seg;
    const uint8_t *payload;
    int i, n, rc = -1;

    memset(msgs, 0, sizeof(msgs));
    for (i = 0; i < SK_CAPTURE_BATCH; i++) {
        iov[i].iov_base = bufs + (size_t)i * c->snaplen;
        iov[i].iov_len = c->snaplen;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        msgs[i].msg_hdr.msg_control = ctl[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
    }
    /* MSG_TRUNC: msg_len is the packet's length before the snap */
    n = recvmmsg(c->fd, msgs, SK_CAPTURE_BATCH, MSG_DONTWAIT | MSG_TRUNC,
                 NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            rc = 0;
            goto done;
        }
        sk_err_sys(err, "recvmmsg(AF_PACKET)", errno);
        goto done;
    }
    /* the kernel stamps in CLOCK_REALTIME; the watch sampler and Python's
     * time.monotonic() use CLOCK_MONOTONIC */
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    offset = ((int64_t)mono.tv_sec - (int64_t)real.tv_sec) * 1000000000LL
           + (mono.tv_nsec - real.tv_nsec);
    drops = kernel_drops(c->fd);
    pthread_mutex_lock(&c->mu);
    c->kernel_dropped += drops;
    for (i = 0; i < n; i++) {
        struct msghdr *mh = &msgs[i].msg_hdr;
        struct cmsghdr *cm;
        size_t wire = msgs[i].msg_len;
        size_t got = wire < c->snaplen ? wire : c->snaplen;
        int64_t t = (int64_t)mono.tv_sec * 1000000000LL + mono.tv_nsec;
        sk_err perr;

        for (cm = CMSG_FIRSTHDR(mh); cm != NULL; cm = CMSG_NXTHDR(mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET
                && cm->cmsg_type == SCM_TIMESTAMPNS
                && cm->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                struct timespec ts;

                memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
                t = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + offset;
            }
        }
        if (sk_capture_parse(iov[i].iov_base, got, wire,
                             ntohs(from[i].sll_protocol), &seg, &payload,
                             &perr) != SK_OK) {
            c->malformed++;
            continue;
        }
        seg.t_ns = t;
        c->seen++;
        if (c->len >= c->cap) {
            c->ring_dropped++;
            continue;
        }
        if (seg.caplen > c->pbytes)
            seg.caplen = (uint32_t)c->pbytes;
        if (seg.caplen > 0)
            memcpy(c->pay + c->len * c->pbytes, payload, seg.caplen);
        c->ring[c->len++] = seg;
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    rc = n;
done:
    return rc;
}

/* Contract: the capture thread.  Never touches Python.  Ends on stop, at
 * max_duration, or on an error (kept in c->err). */
static void *capture_main(void *arg)
{
    sk_capture *c = arg;
    uint8_t *bufs;
    struct pollfd pf[2];
    sk_err err;
    int r, drain = 0, rounds;

    sk_err_clear(&err);
    bufs = malloc((size_t)SK_CAPTURE_BATCH * c->snaplen);
    if (bufs == NULL) {
        sk_err_set(&err, SK_E_NOMEM, "capture: out of memory (read buffers)");
        goto done;
    }
    for (;;) {
        int timeout = sk_poll_ms(c->end_by_ns, -1);

        pf[0].fd = c->fd;
        pf[0].events = POLLIN;
        pf[1].fd = c->evfd;
        pf[1].events = POLLIN;
        pf[0].revents = pf[1].revents = 0;
        r = poll(pf, 2, timeout);
        if (r < 0 && errno != EINTR) {
            sk_err_sys(&err, "poll", errno);
            goto done;
        }
        if (pf[1].revents & POLLIN)
            break; /* stop: read what is left, then end */
        if (c->end_by_ns != SK_NO_DEADLINE && sk_now_ns() >= c->end_by_ns) {
            pthread_mutex_lock(&c->mu);
            c->timed_out = 1;
            pthread_mutex_unlock(&c->mu);
            break;
        }
        if (r > 0 && (pf[0].revents & (POLLIN | POLLERR))) {
            if (read_batch(c, bufs, &err) < 0)
                goto done;
        }
    }
    /* what the socket still holds was tapped before the stop: keep it
     * (bounded: a busy interface must not keep us here) */
    for (rounds = 0; rounds < 4096; rounds++) {
        drain = read_batch(c, bufs, &err);
        if (drain <= 0)
            break;
    }
    if (drain < 0)
        goto done;
done:
    free(bufs);
    pthread_mutex_lock(&c->mu);
    if (err.code != SK_E_NONE)
        c->err = err;
    c->running = 0;
    c->end_ns = sk_now_ns();
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Contract: free what start allocated (thread never started or joined);
 * c may be NULL. */
static void capture_destroy(sk_capture *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    if (c->evfd >= 0)
        close(c->evfd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->join_mu);
    free(c->ring);
    free(c->pay);
    free(c);
}

/* Contract: no GIL needed; no allocation.  SO_TIMESTAMPNS turns the
 * kernel's receive timestamps on (net_enable_timestamp), but when no
 * socket had them on, the kernel only schedules that switch on a
 * workqueue: until a kworker runs it, packets arrive unstamped and
 * recvmsg stamps them with its own, later time (seen on a loaded machine:
 * a SYN stamped after the SYN|ACK that answered it).  Wait, until
 * deadline_ns, for the switch: a datagram sent to ourselves on loopback
 * is stamped inside the send when stamping is on, so its stamp is no later
 * than the moment send returned; when off, it is stamped by our recvmsg,
 * after that moment.  1: stamping is on; 0: not seen on by the deadline,
 * or the probe could not run (no loopback address, say): the capture
 * still works, and only its first stamps may be late. */
static int sk_capture_wait_stamps(int64_t deadline_ns)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    char cbuf[SK_CAPTURE_CMSG], byte = 0;
    struct iovec iov = {&byte, 1};
    struct msghdr mh;
    struct cmsghdr *cm;
    struct timespec sent, ts;
    struct pollfd p;
    int fd, one = 1, on = 0;

    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto done;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0
        || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0
        || getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        goto done;
    while (!on && sk_now_ns() < deadline_ns) {
        if (sendto(fd, &byte, 1, 0, (struct sockaddr *)&a, sizeof(a)) != 1)
            break;
        clock_gettime(CLOCK_REALTIME, &sent);
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, 100) <= 0) /* EINTR or a lost datagram: try again */
            continue;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        if (recvmsg(fd, &mh, 0) != 1)
            continue;
        for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS
                && cm->cmsg_len >= CMSG_LEN(sizeof(ts))) {
                memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
                on = ts.tv_sec < sent.tv_sec
                     || (ts.tv_sec == sent.tv_sec && ts.tv_nsec <= sent.tv_nsec);
            }
        }
        if (!on)
            usleep(1000);
    }
done:
    if (fd >= 0)
        close(fd);
    return on;
}

/* Contract: start's socket set-up; c->fd is open.  SK_OK or SK_ERR with
 * err naming the syscall. */
static int setup_socket(sk_capture *c, const sk_capture_config *cfg,
                        unsigned ifindex, sk_err *err)
{
    struct sock_filter code[SK_CAPTURE_FILTER_MAX];
    struct sock_fprog fprog;
    struct sockaddr_ll sll;
    size_t ncode = 0;
    int one = 1, rcvbuf, rc = SK_ERR;

    if (sk_capture_build_filter(cfg->ports, cfg->nports, (uint32_t)c->snaplen,
                                code, SK_CAPTURE_FILTER_MAX, &ncode, err)
        != SK_OK)
        goto done;
    memset(&fprog, 0, sizeof(fprog)); /* no uninitialised padding to the kernel */
    fprog.len = (unsigned short)ncode;
    fprog.filter = code;
    if (setsockopt(c->fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog,
                   sizeof(fprog)) < 0) {
        sk_err_sys(err, "setsockopt(SO_ATTACH_FILTER)", errno);
        goto done;
    }
    if (setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0) {
        sk_err_sys(err, "setsockopt(SO_TIMESTAMPNS)", errno);
        goto done;
    }
    c->stamps_on = sk_capture_wait_stamps(sk_now_ns() + SK_CAPTURE_STAMPS_WAIT_NS);
    /* the filter refuses outgoing copies too; this spares the kernel the
     * work (older kernels: ENOPROTOOPT, harmless) */
    (void)setsockopt(c->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one,
                     sizeof(one));
    rcvbuf = cfg->rcvbuf > 0 ? cfg->rcvbuf : SK_CAPTURE_RCVBUF;
    if (setsockopt(c->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf,
                   sizeof(rcvbuf)) < 0)
        (void)setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf,
                         sizeof(rcvbuf)); /* capped by rmem_max */
    /* only now does the socket start receiving: filtered from the first
     * packet on */
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)ifindex;
    if (bind(c->fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
        sk_err_sys(err, "bind(AF_PACKET)", errno);
        goto done;
    }
    (void)kernel_drops(c->fd); /* start the counters from zero */
    rc = SK_OK;
done:
    return rc;
}

/* Contract: see capture.h.  Owns everything it allocates until it hands
 * *out to the caller. */
int sk_capture_start(const sk_capture_config *cfg, sk_capture **out,
                     sk_err *err)
{
    sk_capture *c = NULL;
    const char *ifname;
    unsigned ifindex;
    int rc = SK_ERR;

    if (out != NULL)
        *out = NULL;
    if (cfg == NULL || out == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_capture_start: NULL argument");
        goto done;
    }
    if (cfg->max_segments > SK_CAPTURE_MAX_SEGMENTS) {
        sk_err_set(err, SK_E_ARG, "capture: max_segments must be at most %u",
                   SK_CAPTURE_MAX_SEGMENTS);
        goto done;
    }
    if (cfg->payload_bytes > SK_CAPTURE_MAX_PAYLOAD) {
        sk_err_set(err, SK_E_ARG, "capture: payload_bytes must be at most %d",
                   SK_CAPTURE_MAX_PAYLOAD);
        goto done;
    }
    ifname = cfg->ifname != NULL ? cfg->ifname : "lo";
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        sk_err_set(err, SK_E_NOMEM, "capture: out of memory");
        goto done;
    }
    c->fd = -1;
    c->evfd = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->join_mu, NULL);
    if (sk_cond_init_monotonic(&c->cv, err) != SK_OK)
        goto done;
    c->pid = getpid();
    c->cap = cfg->max_segments ? cfg->max_segments
                               : SK_CAPTURE_DEFAULT_SEGMENTS;
    c->pbytes = cfg->payload_bytes < 0 ? SK_CAPTURE_DEFAULT_PAYLOAD
                                       : (size_t)cfg->payload_bytes;
    c->snaplen = SK_CAPTURE_HEADROOM + c->pbytes;
    c->ring = calloc(c->cap, sizeof(*c->ring));
    c->pay = calloc(c->pbytes ? c->cap * c->pbytes : 1, 1);
    if (c->ring == NULL || c->pay == NULL) {
        sk_err_set(err, SK_E_NOMEM, "capture: out of memory (ring of %zu)",
                   c->cap);
        goto done;
    }
    ifindex = if_nametoindex(ifname);
    if (ifindex == 0) {
        sk_err_sys(err, "if_nametoindex", errno != 0 ? errno : ENODEV);
        if (err != NULL)
            snprintf(err->msg, sizeof(err->msg),
                     "if_nametoindex(%.32s): no such interface", ifname);
        goto done;
    }
    /* protocol 0: the socket receives nothing until bind() names one, so
     * the filter is in place before the first packet */
    c->fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        sk_err_sys(err, "socket(AF_PACKET)", errno);
        goto done;
    }
    c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->evfd < 0) {
        sk_err_sys(err, "eventfd", errno);
        goto done;
    }
    if (setup_socket(c, cfg, ifindex, err) != SK_OK)
        goto done;
    c->start_ns = sk_now_ns();
    c->end_by_ns = cfg->max_duration_ns > 0 ? c->start_ns + cfg->max_duration_ns
                                            : SK_NO_DEADLINE;
    c->running = 1;
    if (sk_thread_spawn(&c->thread, SK_CAPTURE_STACK, capture_main, c, err) != SK_OK) {
        c->running = 0;
        goto done;
    }
    c->thread_started = 1;
    *out = c;
    c = NULL;
    rc = SK_OK;
done:
    capture_destroy(c);
    return rc;
}

/* Contract: see capture.h. */
void sk_capture_stop(sk_capture *c)
{
    uint64_t one = 1;

    if (c == NULL || getpid() != c->pid)
        goto done; /* after fork() this process has no thread to stop */
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_mutex_unlock(&c->mu);
    if (write(c->evfd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, the thread will wake */
    }
    pthread_mutex_lock(&c->join_mu);
    if (c->thread_started && !c->joined) {
        pthread_join(c->thread, NULL);
        c->joined = 1;
    }
    pthread_mutex_unlock(&c->join_mu);
done:
    return;
}

/* Contract: see capture.h. */
void sk_capture_free(sk_capture *c)
{
    if (c != NULL && getpid() != c->pid) {
        /* a fork()ed child: the locks may have been copied held; free the
         * memory and the descriptors, leave the locks */
        close(c->fd);
        close(c->evfd);
        free(c->ring);
        free(c->pay);
        free(c);
    } else if (c != NULL) {
        sk_capture_stop(c);
        capture_destroy(c);
    }
}

/* Contract: see capture.h. */
size_t sk_capture_segments(sk_capture *c, size_t from, sk_segment *out,
                           uint8_t *payload, size_t cap)
{
    size_t i, n = 0;
    int locked;

    if (c == NULL)
        goto done;
    locked = outer_lock(c);
    n = c->len;
    for (i = 0; out != NULL && i < cap && from + i < n; i++) {
        out[i] = c->ring[from + i];
        if (payload != NULL && c->pbytes > 0)
            memcpy(payload + i * c->pbytes, c->pay + (from + i) * c->pbytes,
                   c->pbytes);
    }
    outer_unlock(c, locked);
done:
    return n;
}

/* Contract: see capture.h. */
int sk_capture_wait(sk_capture *c, uint64_t count, int64_t deadline,
                    const sk_intr *intr, uint64_t *seen)
{
    struct timespec ts;
    int64_t until, now;
    int rc = SK_OK, done_waiting;

    if (c == NULL)
        goto out;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        done_waiting = c->seen >= count || !c->running;
        if (done_waiting)
            break;
        now = sk_now_ns();
        if (deadline != SK_NO_DEADLINE && now >= deadline) {
            rc = SK_TIMEOUT;
            break;
        }
        until = sk_intr_until(intr, now, deadline);
        if (until == SK_NO_DEADLINE) {
            pthread_cond_wait(&c->cv, &c->mu);
        } else {
            ts.tv_sec = (time_t)(until / 1000000000LL);
            ts.tv_nsec = (long)(until % 1000000000LL);
            (void)pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        }
        if (sk_intr_slice_ms(intr) > 0) {
            int stop;

            /* the check may take the GIL: never while holding mu */
            pthread_mutex_unlock(&c->mu);
            stop = sk_intr_fire(intr);
            pthread_mutex_lock(&c->mu);
            if (stop) {
                rc = SK_INTR;
                break;
            }
        }
    }
    if (seen != NULL)
        *seen = c->seen;
    pthread_mutex_unlock(&c->mu);
out:
    return rc;
}

/* Contract: see capture.h. */
void sk_capture_get_stats(sk_capture *c, sk_capture_stats *st)
{
    int locked;

    memset(st, 0, sizeof(*st));
    if (c == NULL)
        goto done;
    locked = outer_lock(c);
    st->start_ns = c->start_ns;
    st->end_ns = c->end_ns;
    st->seen = c->seen;
    st->kept = c->len;
    st->ring_dropped = c->ring_dropped;
    st->kernel_dropped = c->kernel_dropped;
    st->malformed = c->malformed;
    st->capacity = c->cap;
    st->payload_bytes = c->pbytes;
    st->running = locked ? c->running : 0;
    st->timed_out = c->timed_out;
    st->stamps_on = c->stamps_on;
    st->err = c->err;
    outer_unlock(c, locked);
done:
    return;
}
