/* diag.c - NETLINK_SOCK_DIAG dump and exact lookup for TCP (see diag.h).
 *
 * Layout of the file: request building (pure), parsing (pure, fuzzed),
 * socket I/O.  Every read from a receive buffer goes through memcpy after a
 * bounds check, so unaligned or truncated input is harmless. */
#include "diag.h"

#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "sys.h"

#define SK_DIAG_RECV_BUF (64 * 1024)   /* kernel dump skbs are <= 32 KiB */
#define SK_DIAG_MAX_RECVS 4000000      /* bounds a dump loop (~125 GB) */
#define SK_DIAG_DEFAULT_DUMP_MS 30000
#define SK_DIAG_DEFAULT_LOOKUP_MS 5000

/* One bytecode op, as in <linux/inet_diag.h>. */
typedef struct inet_diag_bc_op bc_op;

/* ------------------------------------------------------------ addresses */

/* Normalize an address for comparison: IPv4-mapped IPv6 becomes IPv4; IPv4
 * keeps its 4 bytes and zeroes the rest.  Returns the effective family. */
static int addr_norm(int family, const uint8_t in[16], uint8_t out[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    memset(out, 0, 16);
    if (family == AF_INET6 && memcmp(in, mapped, sizeof(mapped)) == 0) {
        memcpy(out, in + 12, 4);
        family = AF_INET;
    } else if (family == AF_INET) {
        memcpy(out, in, 4);
    } else {
        memcpy(out, in, 16);
    }
    return family;
}

/* Contract: pure.  Are the two addresses equal once IPv4-mapped IPv6
 * addresses are read as IPv4? */
static int addr_eq(int fa, const uint8_t a[16], int fb, const uint8_t b[16])
{
    uint8_t na[16], nb[16];

    return addr_norm(fa, a, na) == addr_norm(fb, b, nb)
        && memcmp(na, nb, 16) == 0;
}

/* Does filter f (family 0: any) accept address a of family fam? */
static int addr_filter(const sk_diag_addr *f, int fam, const uint8_t a[16])
{
    return f->family == 0 || addr_eq(f->family, f->addr, fam, a);
}

/* ------------------------------------------------------------- building */

/* Contract: pure. */
void sk_diag_query_init(sk_diag_query *q)
{
    if (q != NULL) {
        memset(q, 0, sizeof(*q));
        q->states = SK_DIAG_ALL_STATES;
        q->family = AF_UNSPEC;
        q->sport = q->dport = q->port = -1;
        q->timeout_ms = 0;
    }
}

/* Contract: pure.  A port filter value: -1 (any) or 0..65535. */
static int port_ok(int p)
{
    return p >= -1 && p <= 65535;
}

/*
 * Contract: pure.  The program is a conjunction of clauses; each clause
 * either accepts (falls through to the next op) or jumps to "reject",
 * which is 4 bytes past the end (the kernel accepts only a run ending
 * exactly at the end).  Clauses:
 *   sport == P:  [S_EQ yes=8 no=REJECT][port]
 *   dport == P:  [D_EQ yes=8 no=REJECT][port]
 *   either == P: [S_EQ yes=8 no=12][port][JMP yes=4 no=12]
 *                [D_EQ yes=8 no=REJECT][port]
 * Every op boundary lies on the "yes" path, which the kernel's audit
 * (inet_diag_bc_audit / valid_cc) requires of jump targets.
 */
int sk_diag_build_bytecode(const sk_diag_query *q, void *out, size_t cap,
                           size_t *outlen, sk_err *err)
{
    bc_op ops[16];
    size_t reject[4];
    size_t n = 0, nrej = 0, i, total;
    int rc = SK_ERR;

    if (outlen != NULL)
        *outlen = 0;
    if (q == NULL || outlen == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_diag_build_bytecode: NULL argument");
        goto done;
    }
    if (!port_ok(q->sport) || !port_ok(q->dport) || !port_ok(q->port)) {
        sk_err_set(err, SK_E_ARG, "port must be in 0..65535");
        goto done;
    }
    if (q->sport >= 0) {
        reject[nrej++] = n;
        ops[n++] = (bc_op){INET_DIAG_BC_S_EQ, 8, 0};
        ops[n++] = (bc_op){INET_DIAG_BC_NOP, 0, (uint16_t)q->sport};
    }
    if (q->dport >= 0) {
        reject[nrej++] = n;
        ops[n++] = (bc_op){INET_DIAG_BC_D_EQ, 8, 0};
        ops[n++] = (bc_op){INET_DIAG_BC_NOP, 0, (uint16_t)q->dport};
    }
    if (q->port >= 0) {
        ops[n++] = (bc_op){INET_DIAG_BC_S_EQ, 8, 12};
        ops[n++] = (bc_op){INET_DIAG_BC_NOP, 0, (uint16_t)q->port};
        ops[n++] = (bc_op){INET_DIAG_BC_JMP, 4, 12};
        reject[nrej++] = n;
        ops[n++] = (bc_op){INET_DIAG_BC_D_EQ, 8, 0};
        ops[n++] = (bc_op){INET_DIAG_BC_NOP, 0, (uint16_t)q->port};
    }
    total = n * sizeof(bc_op);
    for (i = 0; i < nrej; i++)
        ops[reject[i]].no = (uint16_t)(total - reject[i] * sizeof(bc_op) + 4);
    if (total > cap || (total > 0 && out == NULL)) {
        sk_err_set(err, SK_E_ARG, "bytecode buffer too small (%zu < %zu)",
                   cap, total);
        goto done;
    }
    if (total > 0)
        memcpy(out, ops, total);
    *outlen = total;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: pure; fills hdr + inet_diag_req_v2 at buf (cap checked by the
 * caller). */
static void put_header(unsigned char *buf, size_t total, uint16_t nl_flags,
                       uint32_t seq, const struct inet_diag_req_v2 *req)
{
    struct nlmsghdr h;

    memset(&h, 0, sizeof(h));
    h.nlmsg_len = (uint32_t)total;
    h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    h.nlmsg_flags = nl_flags;
    h.nlmsg_seq = seq;
    h.nlmsg_pid = 0;
    memcpy(buf, &h, sizeof(h));
    memcpy(buf + NLMSG_HDRLEN, req, sizeof(*req));
}

/* Contract: pure. */
int sk_diag_build_request(const sk_diag_query *q, int family, uint32_t seq,
                          void *buf, size_t cap, size_t *outlen, sk_err *err)
{
    unsigned char bc[64];
    size_t bclen = 0, total;
    struct inet_diag_req_v2 req;
    struct rtattr rta;
    unsigned char *p = buf;
    int rc = SK_ERR;

    if (outlen != NULL)
        *outlen = 0;
    if (q == NULL || buf == NULL || outlen == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_diag_build_request: NULL argument");
        goto done;
    }
    if (family != AF_INET && family != AF_INET6) {
        sk_err_set(err, SK_E_ARG, "family must be AF_INET or AF_INET6");
        goto done;
    }
    if (sk_diag_build_bytecode(q, bc, sizeof(bc), &bclen, err) != SK_OK)
        goto done;
    total = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(req));
    if (bclen > 0)
        total += RTA_LENGTH(bclen);
    if (total > cap) {
        sk_err_set(err, SK_E_ARG, "request buffer too small");
        goto done;
    }
    memset(&req, 0, sizeof(req));
    req.sdiag_family = (uint8_t)family;
    req.sdiag_protocol = IPPROTO_TCP;
    if (q->flags & SK_DIAG_WITH_INFO)
        req.idiag_ext = (uint8_t)(1u << (INET_DIAG_INFO - 1));
    req.idiag_states = q->states ? q->states : SK_DIAG_ALL_STATES;
    if (q->flags & SK_DIAG_BOUND_INACTIVE)
        req.idiag_states |= SK_DIAG_TCPF_BOUND_INACTIVE;
    req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    memset(p, 0, total);
    put_header(p, total, NLM_F_REQUEST | NLM_F_DUMP, seq, &req);
    if (bclen > 0) {
        size_t at = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(req));
        rta.rta_len = (unsigned short)RTA_LENGTH(bclen);
        rta.rta_type = INET_DIAG_REQ_BYTECODE;
        memcpy(p + at, &rta, sizeof(rta));
        memcpy(p + at + RTA_LENGTH(0), bc, bclen);
    }
    *outlen = total;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: pure. */
int sk_diag_build_lookup(const sk_diag_lookup_req *r, uint32_t seq, void *buf,
                         size_t cap, size_t *outlen, sk_err *err)
{
    struct inet_diag_req_v2 req;
    size_t total = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(req));
    int rc = SK_ERR;

    if (outlen != NULL)
        *outlen = 0;
    if (r == NULL || buf == NULL || outlen == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_diag_build_lookup: NULL argument");
        goto done;
    }
    if (r->family != AF_INET && r->family != AF_INET6) {
        sk_err_set(err, SK_E_ARG, "family must be AF_INET or AF_INET6");
        goto done;
    }
    if (total > cap) {
        sk_err_set(err, SK_E_ARG, "request buffer too small");
        goto done;
    }
    memset(&req, 0, sizeof(req));
    req.sdiag_family = (uint8_t)r->family;
    req.sdiag_protocol = IPPROTO_TCP;
    if (r->flags & SK_DIAG_WITH_INFO)
        req.idiag_ext = (uint8_t)(1u << (INET_DIAG_INFO - 1));
    req.idiag_states = ~0u; /* not used by the kernel for exact lookups */
    req.id.idiag_sport = htons(r->sport);
    req.id.idiag_dport = htons(r->dport);
    memcpy(req.id.idiag_src, r->src, r->family == AF_INET ? 4 : 16);
    memcpy(req.id.idiag_dst, r->dst, r->family == AF_INET ? 4 : 16);
    if (r->has_cookie) {
        req.id.idiag_cookie[0] = (uint32_t)r->cookie;
        req.id.idiag_cookie[1] = (uint32_t)(r->cookie >> 32);
    } else {
        req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
        req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    }
    memset(buf, 0, total);
    put_header(buf, total, NLM_F_REQUEST, seq, &req);
    *outlen = total;
    rc = SK_OK;
done:
    return rc;
}

/* -------------------------------------------------------------- parsing */

/* Contract: pure.  Does the entry pass q's filters? */
static int entry_wanted(const sk_diag_query *q, const sk_diag_entry *e)
{
    uint32_t mask;
    int ok = 0;

    if (q == NULL) {
        ok = 1;
        goto done;
    }
    if (q->family != AF_UNSPEC && q->family != e->family)
        goto done;
    mask = q->states ? q->states : SK_DIAG_ALL_STATES;
    if (e->state <= 0 || e->state >= 32)
        goto done;
    if (!(mask & SK_DIAG_STATE_BIT(e->state))) {
        /* request sockets: reported as 3, asked for as 3 or 12 */
        int req = (e->state == SK_TCP_SYN_RECV
                   && (mask & SK_DIAG_STATE_BIT(SK_TCP_NEW_SYN_RECV)))
               || (e->state == SK_TCP_NEW_SYN_RECV
                   && (mask & SK_DIAG_STATE_BIT(SK_TCP_SYN_RECV)));
        /* bound-inactive sockets: reported as 7 (CLOSE) */
        int bound = e->state == SK_TCP_CLOSE
                 && (q->flags & SK_DIAG_BOUND_INACTIVE);
        if (!req && !bound)
            goto done;
    }
    if (q->sport >= 0 && e->sport != q->sport)
        goto done;
    if (q->dport >= 0 && e->dport != q->dport)
        goto done;
    if (q->port >= 0 && e->sport != q->port && e->dport != q->port)
        goto done;
    if (!addr_filter(&q->src, e->family, e->src)
        || !addr_filter(&q->dst, e->family, e->dst))
        goto done;
    if (q->addr.family != 0 && !addr_filter(&q->addr, e->family, e->src)
        && !addr_filter(&q->addr, e->family, e->dst))
        goto done;
    ok = 1;
done:
    return ok;
}

/*
 * Contract: pure.  Decode one SOCK_DIAG_BY_FAMILY message (msg[mlen], the
 * whole nlmsg including its header, mlen already checked against the
 * buffer).  Returns 1 with *e filled, 0 to skip it (not an inet family),
 * or -1 for a malformed message (err set).  info is caller storage.
 */
static int decode_entry(const unsigned char *msg, size_t mlen, int want_info,
                        sk_diag_entry *e, sk_tcp_info *info, sk_err *err)
{
    struct inet_diag_msg m;
    size_t off;
    int rc = -1;

    if (mlen < NLMSG_HDRLEN + sizeof(m)) {
        sk_err_set(err, SK_E_PROTOCOL,
                   "sock_diag: message too short for inet_diag_msg (%zu)",
                   mlen);
        goto done;
    }
    memcpy(&m, msg + NLMSG_HDRLEN, sizeof(m));
    if (m.idiag_family != AF_INET && m.idiag_family != AF_INET6) {
        rc = 0;
        goto done;
    }
    memset(e, 0, sizeof(*e));
    e->family = m.idiag_family;
    e->state = m.idiag_state;
    e->sport = ntohs(m.id.idiag_sport);
    e->dport = ntohs(m.id.idiag_dport);
    memcpy(e->src, m.id.idiag_src, e->family == AF_INET ? 4 : 16);
    memcpy(e->dst, m.id.idiag_dst, e->family == AF_INET ? 4 : 16);
    e->ifindex = m.id.idiag_if;
    e->cookie = (uint64_t)m.id.idiag_cookie[0]
              | ((uint64_t)m.id.idiag_cookie[1] << 32);
    e->inode = m.idiag_inode;
    e->uid = m.idiag_uid;
    e->timer = m.idiag_timer;
    e->expires_ms = m.idiag_expires;
    e->retrans = m.idiag_retrans;
    e->rqueue = m.idiag_rqueue;
    e->wqueue = m.idiag_wqueue;
    e->info = NULL;

    /* Attributes.  Each step advances by >= 4 bytes, so the loop is bounded
     * by mlen / 4. */
    off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(m));
    while (off + sizeof(struct rtattr) <= mlen) {
        struct rtattr a;
        size_t alen, step;

        memcpy(&a, msg + off, sizeof(a));
        alen = a.rta_len;
        if (alen < sizeof(a) || alen > mlen - off) {
            sk_err_set(err, SK_E_PROTOCOL,
                       "sock_diag: bad attribute length %zu at %zu", alen, off);
            goto done;
        }
        if ((a.rta_type & NLA_TYPE_MASK) == INET_DIAG_INFO && want_info) {
            sk_tcp_info_from_bytes(info, msg + off + RTA_LENGTH(0),
                                   alen - RTA_LENGTH(0));
            e->info = info;
        }
        step = RTA_ALIGN(alen);
        if (step > mlen - off)
            step = mlen - off;
        off += step;
    }
    rc = 1;
done:
    return rc;
}

/* Contract: pure (see diag.h).  The loop advances by >= NLMSG_HDRLEN per
 * message, so it runs at most len / 16 times. */
int sk_diag_parse(const void *buf, size_t len, uint32_t seq,
                  const sk_diag_query *q, sk_diag_cb cb, void *ctx,
                  int *status, sk_err *err)
{
    const unsigned char *p = buf;
    size_t off = 0;
    int st = SK_DIAG_MORE, rc = SK_ERR;
    int want_info = q == NULL || (q->flags & SK_DIAG_WITH_INFO);
    sk_tcp_info info;
    sk_diag_entry e;

    if (buf == NULL && len > 0) {
        sk_err_set(err, SK_E_ARG, "sk_diag_parse: NULL buffer");
        goto done;
    }
    while (off < len && st == SK_DIAG_MORE) {
        struct nlmsghdr h;
        size_t left = len - off, step;

        if (left < sizeof(h)) {
            sk_err_set(err, SK_E_PROTOCOL,
                       "sock_diag: %zu trailing bytes, short of a header",
                       left);
            goto done;
        }
        memcpy(&h, p + off, sizeof(h));
        if (h.nlmsg_len < sizeof(h) || h.nlmsg_len > left) {
            sk_err_set(err, SK_E_PROTOCOL,
                       "sock_diag: bad nlmsg_len %u at %zu (%zu left)",
                       (unsigned)h.nlmsg_len, off, left);
            goto done;
        }
        if (h.nlmsg_seq == seq) {
            const unsigned char *payload = p + off + NLMSG_HDRLEN;
            size_t plen = h.nlmsg_len - NLMSG_HDRLEN;
            int32_t v;

            switch (h.nlmsg_type) {
            case NLMSG_NOOP:
                break;
            case NLMSG_DONE:
                if (plen >= sizeof(v)) {
                    memcpy(&v, payload, sizeof(v));
                    if (v < 0) {
                        sk_err_sys(err, "sock_diag", v == INT32_MIN ? EIO : -v);
                        goto done;
                    }
                }
                st = SK_DIAG_DONE;
                break;
            case NLMSG_ERROR:
                if (plen < sizeof(v)) {
                    sk_err_set(err, SK_E_PROTOCOL,
                               "sock_diag: short NLMSG_ERROR");
                    goto done;
                }
                memcpy(&v, payload, sizeof(v));
                if (v == 0)
                    break; /* an ACK */
                if (v > 0 || v == INT32_MIN) {
                    sk_err_set(err, SK_E_PROTOCOL,
                               "sock_diag: bad error code %d", (int)v);
                    goto done;
                }
                sk_err_sys(err, "sock_diag", -v);
                goto done;
            case NLMSG_OVERRUN:
                sk_err_set(err, SK_E_PROTOCOL, "sock_diag: NLMSG_OVERRUN");
                goto done;
            case SOCK_DIAG_BY_FAMILY: {
                int d = decode_entry(p + off, h.nlmsg_len, want_info, &e,
                                     &info, err);
                if (d < 0)
                    goto done;
                if (d > 0 && entry_wanted(q, &e) && cb != NULL
                    && cb(ctx, &e) != 0)
                    st = SK_DIAG_STOPPED;
                break;
            }
            default:
                break; /* unknown message types are skipped */
            }
        }
        step = NLMSG_ALIGN(h.nlmsg_len);
        if (step > left)
            step = left;
        off += step;
    }
    rc = SK_OK;
done:
    if (status != NULL)
        *status = st;
    return rc;
}

/* ------------------------------------------------------------ socket I/O */

/* Contract: no GIL needed; returns the fd or -1 with err set. */
static int open_diag_socket(sk_err *err)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);

    if (fd < 0)
        sk_err_sys(err, "socket(AF_NETLINK, NETLINK_SOCK_DIAG)", errno);
    return fd;
}

/* Contract: send one request to the kernel; EINTR is retried a bounded
 * number of times.  SK_OK or SK_ERR. */
static int send_request(int fd, const void *req, size_t len, sk_err *err)
{
    struct sockaddr_nl kernel;
    int tries, rc = SK_ERR;
    ssize_t n = -1;

    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    for (tries = 0; tries < 100; tries++) {
        n = sendto(fd, req, len, 0, (struct sockaddr *)&kernel,
                   sizeof(kernel));
        if (n >= 0 || errno != EINTR)
            break;
    }
    if (n < 0) {
        sk_err_sys(err, "sendto(NETLINK_SOCK_DIAG)", errno);
        goto done;
    }
    if ((size_t)n != len) {
        sk_err_set(err, SK_E_PROTOCOL, "sock_diag: short send (%zd of %zu)",
                   n, len);
        goto done;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: wait (poll) until fd is readable or the deadline passes, then
 * read one datagram from the kernel into buf.  *got is its length (0 for a
 * datagram not from the kernel, to be ignored).  SK_OK, or SK_ERR with
 * err set (SK_E_TIMEOUT at the deadline). */
static int recv_reply(int fd, void *buf, size_t cap, int64_t deadline,
                      size_t *got, sk_err *err)
{
    struct sockaddr_nl from;
    struct iovec iov;
    struct msghdr mh;
    struct pollfd pfd;
    int tries, rc = SK_ERR;
    ssize_t n;

    *got = 0;
    /* bounded: each turn either returns or waits; EINTR/EAGAIN storms end
     * at the deadline or after this many turns */
    for (tries = 0; tries < 100000; tries++) {
        int ms = sk_poll_ms(deadline, -1), pr;

        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        pr = poll(&pfd, 1, ms);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            sk_err_sys(err, "poll", errno);
            goto done;
        }
        if (pr == 0) {
            sk_err_set(err, SK_E_TIMEOUT, "sock_diag: no reply in time");
            goto done;
        }
        memset(&mh, 0, sizeof(mh));
        memset(&from, 0, sizeof(from));
        iov.iov_base = buf;
        iov.iov_len = cap;
        mh.msg_name = &from;
        mh.msg_namelen = sizeof(from);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        n = recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            sk_err_sys(err, "recvmsg(NETLINK_SOCK_DIAG)", errno);
            goto done;
        }
        if (mh.msg_flags & MSG_TRUNC) {
            sk_err_set(err, SK_E_PROTOCOL,
                       "sock_diag: reply truncated (buffer %zu)", cap);
            goto done;
        }
        if (from.nl_pid == 0)
            *got = (size_t)n;
        rc = SK_OK;
        goto done;
    }
    sk_err_set(err, SK_E_TIMEOUT, "sock_diag: gave up waiting");
done:
    return rc;
}

/* Contract: see diag.h.  Owns fd and buf and frees both on every path. */
int sk_diag_dump(const sk_diag_query *q, sk_diag_cb cb, void *ctx,
                 sk_err *err)
{
    int families[2], nfam = 0, i, fd = -1, st = SK_DIAG_MORE;
    unsigned char req[256];
    unsigned char *buf = NULL;
    uint32_t seq = 0x736b0000u; /* "sk" */
    int64_t deadline;
    size_t reqlen, got;
    long turns;
    int rc = SK_ERR;

    if (q == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_diag_dump: NULL query");
        goto done;
    }
    if (q->family == AF_INET || q->family == AF_UNSPEC)
        families[nfam++] = AF_INET;
    if (q->family == AF_INET6 || q->family == AF_UNSPEC)
        families[nfam++] = AF_INET6;
    if (nfam == 0) {
        sk_err_set(err, SK_E_ARG, "family must be AF_INET, AF_INET6 or 0");
        goto done;
    }
    deadline = sk_now_ns()
             + (int64_t)(q->timeout_ms > 0 ? q->timeout_ms
                                           : SK_DIAG_DEFAULT_DUMP_MS)
             * 1000000LL;
    buf = sk_malloc(SK_DIAG_RECV_BUF);
    if (buf == NULL) {
        sk_err_set(err, SK_E_NOMEM, "sock_diag: out of memory");
        goto done;
    }
    fd = open_diag_socket(err);
    if (fd < 0)
        goto done;
    for (i = 0; i < nfam && st != SK_DIAG_STOPPED; i++) {
        seq++;
        if (sk_diag_build_request(q, families[i], seq, req, sizeof(req),
                                  &reqlen, err) != SK_OK)
            goto done;
        if (send_request(fd, req, reqlen, err) != SK_OK)
            goto done;
        st = SK_DIAG_MORE;
        for (turns = 0; st == SK_DIAG_MORE; turns++) {
            if (turns >= SK_DIAG_MAX_RECVS) {
                sk_err_set(err, SK_E_PROTOCOL, "sock_diag: dump never ended");
                goto done;
            }
            if (recv_reply(fd, buf, SK_DIAG_RECV_BUF, deadline, &got, err)
                != SK_OK)
                goto done;
            if (sk_diag_parse(buf, got, seq, q, cb, ctx, &st, err) != SK_OK)
                goto done;
        }
    }
    rc = SK_OK;
done:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* Contract: pure. */
int sk_diag_same_tuple(const sk_diag_entry *e, const sk_diag_lookup_req *r)
{
    return e != NULL && r != NULL && e->sport == r->sport
        && e->dport == r->dport
        && addr_eq(e->family, e->src, r->family, r->src)
        && addr_eq(e->family, e->dst, r->family, r->dst);
}

typedef struct lookup_ctx {
    sk_diag_entry *out;
    sk_tcp_info *info_out;
    int got;
} lookup_ctx;

/* Contract: parser callback for sk_diag_lookup; copies the entry (and its
 * info into caller storage) and stops. */
static int lookup_cb(void *vctx, const sk_diag_entry *e)
{
    lookup_ctx *c = vctx;

    *c->out = *e;
    c->out->info = NULL;
    if (e->info != NULL && c->info_out != NULL) {
        *c->info_out = *e->info;
        c->out->info = c->info_out;
    }
    c->got = 1;
    return 1;
}

/* Contract: see diag.h.  Owns fd and buf and frees both on every path. */
int sk_diag_lookup(const sk_diag_lookup_req *r, sk_diag_entry *out,
                   sk_tcp_info *info_out, int *found, sk_err *err)
{
    unsigned char req[256];
    unsigned char *buf = NULL;
    uint32_t seq = 0x736b1000u;
    size_t reqlen, got;
    int64_t deadline;
    lookup_ctx c;
    int fd = -1, st = SK_DIAG_MORE, rc = SK_ERR, turns;
    sk_diag_entry tmp;

    if (found != NULL)
        *found = 0;
    if (r == NULL || found == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_diag_lookup: NULL argument");
        goto done;
    }
    if (out == NULL)
        out = &tmp;
    memset(out, 0, sizeof(*out));
    c.out = out;
    c.info_out = (r->flags & SK_DIAG_WITH_INFO) ? info_out : NULL;
    c.got = 0;
    if (sk_diag_build_lookup(r, seq, req, sizeof(req), &reqlen, err) != SK_OK)
        goto done;
    deadline = sk_now_ns()
             + (int64_t)(r->timeout_ms > 0 ? r->timeout_ms
                                           : SK_DIAG_DEFAULT_LOOKUP_MS)
             * 1000000LL;
    buf = sk_malloc(SK_DIAG_RECV_BUF);
    if (buf == NULL) {
        sk_err_set(err, SK_E_NOMEM, "sock_diag: out of memory");
        goto done;
    }
    fd = open_diag_socket(err);
    if (fd < 0)
        goto done;
    if (send_request(fd, req, reqlen, err) != SK_OK)
        goto done;
    /* The reply is one message (or an error); anything else (a foreign
     * datagram, an ACK) is skipped, within a bounded number of turns. */
    for (turns = 0; st == SK_DIAG_MORE && !c.got; turns++) {
        if (turns >= 64) {
            sk_err_set(err, SK_E_PROTOCOL, "sock_diag: no lookup reply");
            goto done;
        }
        if (recv_reply(fd, buf, SK_DIAG_RECV_BUF, deadline, &got, err)
            != SK_OK)
            goto done;
        if (sk_diag_parse(buf, got, seq, NULL, lookup_cb, &c, &st, err)
            != SK_OK) {
            if (err != NULL && err->code == SK_E_SYS
                && (err->sys_errno == ENOENT || err->sys_errno == ESTALE)) {
                sk_err_clear(err);
                rc = SK_OK; /* no such socket */
            }
            goto done;
        }
    }
    if (c.got && sk_diag_same_tuple(out, r)
        && (!r->has_cookie || out->cookie == r->cookie))
        *found = 1;
    else
        memset(out, 0, sizeof(*out)); /* e.g. the listener fallback */
    rc = SK_OK;
done:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

static const char *const timer_names[] = {
    "none", "retransmit", "keepalive", "time_wait", "probe",
};

/* Contract: pure, static storage. */
const char *sk_diag_timer_name(int timer)
{
    const char *s = "unknown";

    if (timer >= 0
        && (size_t)timer < sizeof(timer_names) / sizeof(timer_names[0]))
        s = timer_names[timer];
    return s;
}
