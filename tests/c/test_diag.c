/* test_diag.c - sock_diag: request and bytecode building (checked against a
 * model of the kernel's audit and interpreter), the netlink parser on
 * synthesized, truncated, mutated and random buffers, and real dumps and
 * lookups over loopback (diag.h). */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/tcpinfo.h"

/* ---- a model of the kernel's bytecode audit and interpreter ------------ */
/* net/ipv4/inet_diag.c: inet_diag_bc_audit(), valid_cc(), inet_diag_bc_run()
 * restricted to the ops we emit (NOP, JMP, S_EQ, D_EQ); anything else is
 * rejected here. */

typedef struct inet_diag_bc_op bcop;

static int model_valid_cc(const unsigned char *bc, int len, int cc)
{
    int guard = 0;

    while (len >= 0 && guard++ < 1000) {
        bcop op;

        if (cc > len)
            return 0;
        if (cc == len)
            return 1;
        memcpy(&op, bc, sizeof(op));
        if (op.yes < 4 || (op.yes & 3))
            return 0;
        len -= op.yes;
        bc += op.yes;
    }
    return 0;
}

static int model_audit(const unsigned char *bc, int bclen)
{
    const unsigned char *p = bc;
    int len = bclen, guard = 0;

    if (bclen < (int)sizeof(bcop))
        return 0;
    while (len > 0 && guard++ < 1000) {
        int min_len = sizeof(bcop);
        bcop op;

        memcpy(&op, p, sizeof(op));
        switch (op.code) {
        case INET_DIAG_BC_S_EQ:
        case INET_DIAG_BC_D_EQ:
            min_len = 2 * sizeof(bcop);
            if (len < min_len)
                return 0;
            break;
        case INET_DIAG_BC_JMP:
        case INET_DIAG_BC_NOP:
            break;
        default:
            return 0;
        }
        if (op.code != INET_DIAG_BC_NOP) {
            if (op.no < min_len || op.no > len + 4 || (op.no & 3))
                return 0;
            if (op.no < len && !model_valid_cc(bc, bclen, len - op.no))
                return 0;
        }
        if (op.yes < min_len || op.yes > len + 4 || (op.yes & 3))
            return 0;
        p += op.yes;
        len -= op.yes;
    }
    return len == 0;
}

static int model_run(const unsigned char *bc, int len, uint16_t sport,
                     uint16_t dport)
{
    int guard = 0;

    while (len > 0 && guard++ < 1000) {
        bcop op, arg;
        int yes = 1;

        memcpy(&op, bc, sizeof(op));
        switch (op.code) {
        case INET_DIAG_BC_NOP:
            break;
        case INET_DIAG_BC_JMP:
            yes = 0;
            break;
        case INET_DIAG_BC_S_EQ:
            memcpy(&arg, bc + 4, sizeof(arg));
            yes = sport == arg.no;
            break;
        case INET_DIAG_BC_D_EQ:
            memcpy(&arg, bc + 4, sizeof(arg));
            yes = dport == arg.no;
            break;
        default:
            return 0;
        }
        if (yes) {
            len -= op.yes;
            bc += op.yes;
        } else {
            len -= op.no;
            bc += op.no;
        }
    }
    return len == 0;
}

/* ---- buffer synthesis --------------------------------------------------- */

typedef struct nlbuf {
    unsigned char b[8192];
    size_t n;
} nlbuf;

static void nl_put(nlbuf *nb, uint16_t type, uint32_t seq, const void *payload,
                   size_t plen)
{
    struct nlmsghdr h;
    size_t total = NLMSG_HDRLEN + plen;

    if (nb->n + NLMSG_ALIGN(total) > sizeof(nb->b))
        return;
    memset(&h, 0, sizeof(h));
    h.nlmsg_len = (uint32_t)total;
    h.nlmsg_type = type;
    h.nlmsg_flags = NLM_F_MULTI;
    h.nlmsg_seq = seq;
    memset(nb->b + nb->n, 0, NLMSG_ALIGN(total));
    memcpy(nb->b + nb->n, &h, sizeof(h));
    if (plen > 0)
        memcpy(nb->b + nb->n + NLMSG_HDRLEN, payload, plen);
    nb->n += NLMSG_ALIGN(total);
}

/* One inet_diag_msg with an optional INET_DIAG_INFO of info_len bytes. */
static void nl_put_entry(nlbuf *nb, uint32_t seq, int family, int state,
                         const char *src, uint16_t sport, const char *dst,
                         uint16_t dport, uint32_t inode, uint64_t cookie,
                         size_t info_len)
{
    unsigned char p[512];
    struct inet_diag_msg m;
    size_t plen = NLMSG_ALIGN(sizeof(m));

    memset(p, 0, sizeof(p));
    memset(&m, 0, sizeof(m));
    m.idiag_family = (uint8_t)family;
    m.idiag_state = (uint8_t)state;
    m.idiag_timer = state == 6 ? 3 : 0;
    m.idiag_retrans = 2;
    m.id.idiag_sport = htons(sport);
    m.id.idiag_dport = htons(dport);
    inet_pton(family, src, m.id.idiag_src);
    inet_pton(family, dst, m.id.idiag_dst);
    m.id.idiag_if = 1;
    m.id.idiag_cookie[0] = (uint32_t)cookie;
    m.id.idiag_cookie[1] = (uint32_t)(cookie >> 32);
    m.idiag_expires = 59000;
    m.idiag_rqueue = 5;
    m.idiag_wqueue = 6;
    m.idiag_uid = 1000;
    m.idiag_inode = inode;
    memcpy(p, &m, sizeof(m));
    if (info_len > 0 && info_len + 4 + plen <= sizeof(p)) {
        struct rtattr a;
        size_t i;

        a.rta_len = (unsigned short)RTA_LENGTH(info_len);
        a.rta_type = INET_DIAG_INFO;
        memcpy(p + plen, &a, sizeof(a));
        for (i = 0; i < info_len; i++)
            p[plen + 4 + i] = (unsigned char)(i == 0 ? state : 0x11);
        plen += RTA_ALIGN(RTA_LENGTH(info_len));
    }
    nl_put(nb, SOCK_DIAG_BY_FAMILY, seq, p, plen);
}

static void nl_put_done(nlbuf *nb, uint32_t seq, int32_t code)
{
    nl_put(nb, NLMSG_DONE, seq, &code, sizeof(code));
}

static void nl_put_error(nlbuf *nb, uint32_t seq, int32_t code)
{
    struct nlmsgerr e;

    memset(&e, 0, sizeof(e));
    e.error = code;
    nl_put(nb, NLMSG_ERROR, seq, &e, sizeof(e));
}

/* ---- a recording callback ---------------------------------------------- */

typedef struct rec {
    int n;
    int stop_after;   /* 0: never */
    /* our own sockets, by (local port, remote port): n_mine counts entries
     * among them (a dump also sees other processes' sockets, and a reused
     * port may carry an old TIME_WAIT) */
    int nwant;
    uint16_t want[8][2];
    int n_mine;
    uint32_t states_seen;  /* bitmask of the states of all entries */
    sk_diag_entry last;
    sk_tcp_info last_info;
    int last_has_info;
    int bad;          /* an entry the callback should never see */
} rec;

static int rec_cb(void *ctx, const sk_diag_entry *e)
{
    rec *r = ctx;

    int i;

    r->n++;
    for (i = 0; i < r->nwant; i++)
        if (e->sport == r->want[i][0] && e->dport == r->want[i][1]) {
            r->n_mine++;
            break;
        }
    if (e->state > 0 && e->state < 32)
        r->states_seen |= 1u << e->state;
    r->last = *e;
    r->last_has_info = e->info != NULL;
    if (e->info != NULL) {
        r->last_info = *e->info;
        if (e->info->len > SK_TCP_INFO_SIZE)
            r->bad++;
    }
    if (e->family != AF_INET && e->family != AF_INET6)
        r->bad++;
    return r->stop_after != 0 && r->n >= r->stop_after;
}

/* ---- building ----------------------------------------------------------- */

TEST(query_init_defaults)
{
    sk_diag_query q;

    memset(&q, 0x5a, sizeof(q));
    sk_diag_query_init(&q);
    CHECK_U64(q.states, ==, SK_DIAG_ALL_STATES);
    CHECK_INT(q.family, ==, AF_UNSPEC);
    CHECK_INT(q.sport, ==, -1);
    CHECK_INT(q.dport, ==, -1);
    CHECK_INT(q.port, ==, -1);
    CHECK_INT(q.src.family, ==, 0);
    CHECK_INT(q.addr.family, ==, 0);
    CHECK_U64(q.flags, ==, 0);
    sk_diag_query_init(NULL); /* harmless */
}

TEST(bytecode_matches_kernel_model)
{
    static const int ports[] = {0, 1, 80, 443, 8080, 65534, 65535};
    const size_t np = sizeof(ports) / sizeof(ports[0]);
    size_t a, b, c, i, j;

    /* every combination of sport/dport/port filters (each absent or one of
     * a few values), checked for kernel acceptance and exact semantics */
    for (a = 0; a <= 3; a++)
        for (b = 0; b <= 3; b++)
            for (c = 0; c <= 3; c++) {
                sk_diag_query q;
                unsigned char bc[64];
                size_t len = 0;
                sk_err err;

                sk_diag_query_init(&q);
                q.sport = a ? ports[a + 1] : -1;
                q.dport = b ? ports[b + 2] : -1;
                q.port = c ? ports[c + 2] : -1;
                sk_err_clear(&err);
                CHECK_RC(sk_diag_build_bytecode(&q, bc, sizeof(bc), &len,
                                                &err), SK_OK, &err);
                if (!a && !b && !c) {
                    CHECK_U64(len, ==, 0);
                    continue;
                }
                CHECK_U64(len % 4, ==, 0);
                CHECK(model_audit(bc, (int)len));
                for (i = 0; i < np; i++)
                    for (j = 0; j < np; j++) {
                        int sp = ports[i], dp = ports[j];
                        int want = (q.sport < 0 || sp == q.sport)
                                && (q.dport < 0 || dp == q.dport)
                                && (q.port < 0 || sp == q.port
                                    || dp == q.port);
                        int got = model_run(bc, (int)len, (uint16_t)sp,
                                            (uint16_t)dp);
                        if (got != want)
                            sk_check_fail(__FILE__, __LINE__,
                                          "filter s=%d d=%d p=%d on %d->%d: "
                                          "got %d want %d",
                                          q.sport, q.dport, q.port, sp, dp,
                                          got, want);
                    }
            }
}

TEST(bytecode_errors)
{
    sk_diag_query q;
    unsigned char bc[8];
    size_t len = 99;
    sk_err err;

    sk_diag_query_init(&q);
    q.sport = 65536;
    CHECK_RC(sk_diag_build_bytecode(&q, bc, sizeof(bc), &len, &err), SK_ERR,
             &err);
    CHECK_INT(err.code, ==, SK_E_ARG);
    CHECK_U64(len, ==, 0);
    sk_diag_query_init(&q);
    q.port = -2;
    CHECK_RC(sk_diag_build_bytecode(&q, bc, sizeof(bc), &len, &err), SK_ERR,
             &err);
    sk_diag_query_init(&q);
    q.port = 80; /* needs 20 bytes */
    CHECK_RC(sk_diag_build_bytecode(&q, bc, sizeof(bc), &len, &err), SK_ERR,
             &err);
    CHECK_RC(sk_diag_build_bytecode(NULL, bc, sizeof(bc), &len, &err), SK_ERR,
             &err);
}

TEST(request_layout)
{
    unsigned char buf[256];
    size_t len = 0;
    struct nlmsghdr h;
    struct inet_diag_req_v2 req;
    struct rtattr a;
    sk_diag_query q;
    sk_err err;

    sk_diag_query_init(&q);
    q.states = (1u << 6) | (1u << 10);
    q.sport = 8080;
    q.flags = SK_DIAG_WITH_INFO | SK_DIAG_BOUND_INACTIVE;
    sk_err_clear(&err);
    CHECK_RC(sk_diag_build_request(&q, AF_INET6, 77, buf, sizeof(buf), &len,
                                   &err), SK_OK, &err);
    CHECK_U64(len, ==, NLMSG_HDRLEN + sizeof(req) + RTA_LENGTH(8));
    memcpy(&h, buf, sizeof(h));
    CHECK_U64(h.nlmsg_len, ==, len);
    CHECK_INT(h.nlmsg_type, ==, SOCK_DIAG_BY_FAMILY);
    CHECK_INT(h.nlmsg_flags, ==, NLM_F_REQUEST | NLM_F_DUMP);
    CHECK_U64(h.nlmsg_seq, ==, 77);
    memcpy(&req, buf + NLMSG_HDRLEN, sizeof(req));
    CHECK_INT(req.sdiag_family, ==, AF_INET6);
    CHECK_INT(req.sdiag_protocol, ==, IPPROTO_TCP);
    CHECK_INT(req.idiag_ext, ==, 1 << (INET_DIAG_INFO - 1));
    CHECK_U64(req.idiag_states, ==, (1u << 6) | (1u << 10) | (1u << 13));
    memcpy(&a, buf + NLMSG_HDRLEN + sizeof(req), sizeof(a));
    CHECK_INT(a.rta_type, ==, INET_DIAG_REQ_BYTECODE);
    CHECK_INT(a.rta_len, ==, RTA_LENGTH(8));

    /* no filter: no attribute; states 0 means all */
    sk_diag_query_init(&q);
    q.states = 0;
    CHECK_RC(sk_diag_build_request(&q, AF_INET, 1, buf, sizeof(buf), &len,
                                   &err), SK_OK, &err);
    CHECK_U64(len, ==, NLMSG_HDRLEN + sizeof(req));
    memcpy(&req, buf + NLMSG_HDRLEN, sizeof(req));
    CHECK_U64(req.idiag_states, ==, SK_DIAG_ALL_STATES);
    CHECK_INT(req.idiag_ext, ==, 0);

    CHECK_RC(sk_diag_build_request(&q, AF_UNIX, 1, buf, sizeof(buf), &len,
                                   &err), SK_ERR, &err);
    CHECK_RC(sk_diag_build_request(&q, AF_INET, 1, buf, 40, &len, &err),
             SK_ERR, &err);
}

TEST(lookup_request_layout)
{
    unsigned char buf[256];
    size_t len = 0;
    struct nlmsghdr h;
    struct inet_diag_req_v2 req;
    sk_diag_lookup_req r;
    sk_err err;

    memset(&r, 0, sizeof(r));
    r.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", r.src);
    inet_pton(AF_INET, "127.0.0.2", r.dst);
    r.sport = 1234;
    r.dport = 80;
    r.cookie = UINT64_C(0x1122334455667788);
    r.has_cookie = 1;
    sk_err_clear(&err);
    CHECK_RC(sk_diag_build_lookup(&r, 9, buf, sizeof(buf), &len, &err), SK_OK,
             &err);
    memcpy(&h, buf, sizeof(h));
    CHECK_INT(h.nlmsg_flags, ==, NLM_F_REQUEST); /* not a dump */
    memcpy(&req, buf + NLMSG_HDRLEN, sizeof(req));
    CHECK_INT(ntohs(req.id.idiag_sport), ==, 1234);
    CHECK_INT(ntohs(req.id.idiag_dport), ==, 80);
    CHECK_MEM(req.id.idiag_src, r.src, 4);
    CHECK_MEM(req.id.idiag_dst, r.dst, 4);
    CHECK_U64(req.id.idiag_cookie[0], ==, 0x55667788u);
    CHECK_U64(req.id.idiag_cookie[1], ==, 0x11223344u);
    r.has_cookie = 0;
    CHECK_RC(sk_diag_build_lookup(&r, 9, buf, sizeof(buf), &len, &err), SK_OK,
             &err);
    memcpy(&req, buf + NLMSG_HDRLEN, sizeof(req));
    CHECK_U64(req.id.idiag_cookie[0], ==, INET_DIAG_NOCOOKIE);
    CHECK_U64(req.id.idiag_cookie[1], ==, INET_DIAG_NOCOOKIE);
    r.family = 0;
    CHECK_RC(sk_diag_build_lookup(&r, 9, buf, sizeof(buf), &len, &err),
             SK_ERR, &err);
}

TEST(timer_names)
{
    CHECK_STR(sk_diag_timer_name(0), "none");
    CHECK_STR(sk_diag_timer_name(1), "retransmit");
    CHECK_STR(sk_diag_timer_name(2), "keepalive");
    CHECK_STR(sk_diag_timer_name(3), "time_wait");
    CHECK_STR(sk_diag_timer_name(4), "probe");
    CHECK_STR(sk_diag_timer_name(5), "unknown");
    CHECK_STR(sk_diag_timer_name(-1), "unknown");
}

/* ---- parsing ------------------------------------------------------------- */

TEST(parse_entries_and_done)
{
    nlbuf nb = {.n = 0};
    rec r = {0};
    int st = -1;
    sk_err err;
    char s[64];

    memset(&r, 0, sizeof(r));
    nl_put_entry(&nb, 5, AF_INET, 10, "127.0.0.1", 8080, "0.0.0.0", 0, 4242,
                 UINT64_C(0xdeadbeef00000001), 0);
    nl_put_entry(&nb, 5, AF_INET6, 6, "::1", 40000, "::1", 8080, 0, 7, 0);
    nl_put_done(&nb, 5, 0);
    sk_err_clear(&err);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 5, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(st, ==, SK_DIAG_DONE);
    CHECK_INT(r.n, ==, 2);
    CHECK_INT(r.bad, ==, 0);
    CHECK_INT(r.last.family, ==, AF_INET6);
    CHECK_INT(r.last.state, ==, 6);
    CHECK_INT(r.last.sport, ==, 40000);
    CHECK_INT(r.last.dport, ==, 8080);
    CHECK_INT(r.last.timer, ==, SK_DIAG_TIMER_TIME_WAIT);
    CHECK_U64(r.last.expires_ms, ==, 59000);
    CHECK_U64(r.last.retrans, ==, 2);
    CHECK_U64(r.last.rqueue, ==, 5);
    CHECK_U64(r.last.wqueue, ==, 6);
    CHECK_U64(r.last.uid, ==, 1000);
    CHECK_U64(r.last.cookie, ==, 7);
    CHECK_U64(r.last.ifindex, ==, 1);
    CHECK(r.last.info == NULL);
    inet_ntop(AF_INET6, r.last.src, s, sizeof(s));
    CHECK_STR(s, "::1");

    /* the first entry alone: 64-bit cookie halves, IPv4 bytes */
    memset(&r, 0, sizeof(r));
    r.stop_after = 1;
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 5, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(st, ==, SK_DIAG_STOPPED);
    CHECK_INT(r.n, ==, 1);
    CHECK_U64(r.last.cookie, ==, UINT64_C(0xdeadbeef00000001));
    CHECK_U64(r.last.inode, ==, 4242);
    inet_ntop(AF_INET, r.last.src, s, sizeof(s));
    CHECK_STR(s, "127.0.0.1");
    CHECK_MEM(r.last.src + 4, "\0\0\0\0\0\0\0\0\0\0\0\0", 12);

    /* empty buffer: nothing, more to come */
    CHECK_RC(sk_diag_parse(nb.b, 0, 5, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(st, ==, SK_DIAG_MORE);
    CHECK_RC(sk_diag_parse(NULL, 0, 5, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_RC(sk_diag_parse(NULL, 10, 5, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
}

TEST(parse_info_attribute)
{
    nlbuf nb = {.n = 0};
    rec r = {0};
    int st;
    sk_err err;
    sk_diag_query q;

    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1,
                 SK_TCP_INFO_SIZE);
    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 3, "127.0.0.1", 4, 9, 2,
                 104); /* an old kernel's shorter struct */
    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 5, "127.0.0.1", 6, 9, 3,
                 400); /* a future kernel's longer struct */
    sk_err_clear(&err);

    memset(&r, 0, sizeof(r));
    r.stop_after = 1;
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK(r.last_has_info);
    CHECK_U64(r.last_info.len, ==, SK_TCP_INFO_SIZE);
    CHECK_INT(r.last_info.tcpi_state, ==, 1);

    memset(&r, 0, sizeof(r));
    r.stop_after = 2;
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_U64(r.last_info.len, ==, 104);
    CHECK(SK_TCPI_HAS(&r.last_info, tcpi_total_retrans));
    CHECK(!SK_TCPI_HAS(&r.last_info, tcpi_pacing_rate));
    CHECK_U64(r.last_info.tcpi_pacing_rate, ==, 0);

    memset(&r, 0, sizeof(r));
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(r.n, ==, 3);
    CHECK_U64(r.last_info.len, ==, SK_TCP_INFO_SIZE);
    CHECK_INT(r.bad, ==, 0);
    CHECK_INT(st, ==, SK_DIAG_MORE); /* no DONE yet */

    /* info not asked for: not delivered */
    sk_diag_query_init(&q);
    memset(&r, 0, sizeof(r));
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 1, &q, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(r.n, ==, 3);
    CHECK(!r.last_has_info);
}

TEST(parse_errors_and_seq)
{
    nlbuf nb = {.n = 0};
    rec r = {0};
    int st;
    sk_err err;

    /* a stale message (other seq) is skipped; the error reply is ours */
    nl_put_entry(&nb, 99, AF_INET, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1, 0);
    nl_put_error(&nb, 3, -ENOENT);
    memset(&r, 0, sizeof(r));
    sk_err_clear(&err);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    CHECK_INT(r.n, ==, 0);
    CHECK_INT(err.code, ==, SK_E_SYS);
    CHECK_INT(err.sys_errno, ==, ENOENT);
    CHECK_STR(err.syscall, "sock_diag");

    /* an ACK (error 0) is not an error */
    nb.n = 0;
    nl_put_error(&nb, 3, 0);
    nl_put_done(&nb, 3, 0);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(st, ==, SK_DIAG_DONE);

    /* a positive or INT_MIN error code is malformed */
    nb.n = 0;
    nl_put_error(&nb, 3, 5);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    CHECK_INT(err.code, ==, SK_E_PROTOCOL);
    nb.n = 0;
    nl_put_error(&nb, 3, INT32_MIN);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);

    /* a short NLMSG_ERROR */
    nb.n = 0;
    nl_put(&nb, NLMSG_ERROR, 3, "ab", 2);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    CHECK_INT(err.code, ==, SK_E_PROTOCOL);

    /* a failed dump: NLMSG_DONE carrying -EINTR */
    nb.n = 0;
    nl_put_done(&nb, 3, -EINTR);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    CHECK_INT(err.sys_errno, ==, EINTR);

    /* DONE without payload (old kernels) */
    nb.n = 0;
    nl_put(&nb, NLMSG_DONE, 3, NULL, 0);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(st, ==, SK_DIAG_DONE);

    /* overrun */
    nb.n = 0;
    nl_put(&nb, NLMSG_OVERRUN, 3, NULL, 0);
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);

    /* NOOP and unknown types are skipped; a non-inet family is skipped */
    nb.n = 0;
    nl_put(&nb, NLMSG_NOOP, 3, NULL, 0);
    nl_put(&nb, 0x1234, 3, "abcd", 4);
    nl_put_entry(&nb, 3, AF_UNIX, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1, 0);
    nl_put_done(&nb, 3, 0);
    memset(&r, 0, sizeof(r));
    CHECK_RC(sk_diag_parse(nb.b, nb.n, 3, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(r.n, ==, 0);
    CHECK_INT(st, ==, SK_DIAG_DONE);
}

TEST(parse_bad_lengths)
{
    nlbuf nb = {.n = 0};
    unsigned char b[8192];
    struct nlmsghdr h;
    struct rtattr a;
    rec r = {0};
    int st;
    sk_err err;
    size_t attr_off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct inet_diag_msg));
    static const uint32_t bad_nl[] = {0, 1, 15, 0xffffffffu, 0x7fffffffu};
    static const uint16_t bad_rta[] = {0, 1, 3, 0xffff};
    size_t i;

    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1, 40);
    nl_put_done(&nb, 1, 0);

    for (i = 0; i < sizeof(bad_nl) / sizeof(bad_nl[0]); i++) {
        memcpy(b, nb.b, nb.n);
        memcpy(&h, b, sizeof(h));
        h.nlmsg_len = bad_nl[i];
        memcpy(b, &h, sizeof(h));
        memset(&r, 0, sizeof(r));
        sk_err_clear(&err);
        CHECK_RC(sk_diag_parse(b, nb.n, 1, NULL, rec_cb, &r, &st, &err),
                 SK_ERR, &err);
        CHECK_INT(err.code, ==, SK_E_PROTOCOL);
        CHECK_INT(r.n, ==, 0);
    }
    /* nlmsg_len one past the buffer */
    memcpy(b, nb.b, nb.n);
    memcpy(&h, b, sizeof(h));
    h.nlmsg_len = (uint32_t)nb.n + 1;
    memcpy(b, &h, sizeof(h));
    CHECK_RC(sk_diag_parse(b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    /* too short for an inet_diag_msg */
    memcpy(b, nb.b, nb.n);
    memcpy(&h, b, sizeof(h));
    h.nlmsg_len = NLMSG_HDRLEN + 10;
    memcpy(b, &h, sizeof(h));
    CHECK_RC(sk_diag_parse(b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_ERR,
             &err);
    CHECK_INT(err.code, ==, SK_E_PROTOCOL);

    /* bad attribute lengths */
    for (i = 0; i < sizeof(bad_rta) / sizeof(bad_rta[0]); i++) {
        memcpy(b, nb.b, nb.n);
        memcpy(&a, b + attr_off, sizeof(a));
        a.rta_len = bad_rta[i];
        memcpy(b + attr_off, &a, sizeof(a));
        memset(&r, 0, sizeof(r));
        CHECK_RC(sk_diag_parse(b, nb.n, 1, NULL, rec_cb, &r, &st, &err),
                 SK_ERR, &err);
        CHECK_INT(r.n, ==, 0);
    }
    /* an attribute that ends exactly at the message end is fine; trailing
     * bytes shorter than an rtattr header are ignored */
    memcpy(b, nb.b, nb.n);
    memcpy(&h, b, sizeof(h));
    memcpy(&a, b + attr_off, sizeof(a));
    CHECK_U64(h.nlmsg_len, ==, attr_off + a.rta_len);
    memset(&r, 0, sizeof(r));
    CHECK_RC(sk_diag_parse(b, nb.n, 1, NULL, rec_cb, &r, &st, &err), SK_OK,
             &err);
    CHECK_INT(r.n, ==, 1);
    CHECK_U64(r.last_info.len, ==, 40);
}

TEST(parse_every_truncation)
{
    nlbuf nb = {.n = 0};
    size_t cut, boundaries[8], nbound = 0, i;
    rec r = {0};
    int st;
    sk_err err;

    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1,
                 SK_TCP_INFO_SIZE);
    boundaries[nbound++] = nb.n;
    nl_put_entry(&nb, 1, AF_INET6, 10, "::1", 3, "::", 0, 9, 2, 0);
    boundaries[nbound++] = nb.n;
    nl_put_done(&nb, 1, 0);
    boundaries[nbound++] = nb.n;

    for (cut = 0; cut <= nb.n; cut++) {
        /* copy into an exact-size heap block so ASan sees any overread */
        unsigned char *p = malloc(cut ? cut : 1);
        int at_boundary = cut == 0;
        int rc;

        if (p == NULL)
            break;
        memcpy(p, nb.b, cut);
        for (i = 0; i < nbound; i++)
            at_boundary |= cut == boundaries[i];
        memset(&r, 0, sizeof(r));
        sk_err_clear(&err);
        rc = sk_diag_parse(p, cut, 1, NULL, rec_cb, &r, &st, &err);
        if (at_boundary) {
            if (rc != SK_OK)
                sk_check_fail(__FILE__, __LINE__, "cut %zu: %s", cut, err.msg);
        } else if (rc != SK_ERR || err.code != SK_E_PROTOCOL) {
            sk_check_fail(__FILE__, __LINE__, "cut %zu: rc %d", cut, rc);
        }
        if (r.n > 2 || r.bad)
            sk_check_fail(__FILE__, __LINE__, "cut %zu: %d entries", cut, r.n);
        free(p);
    }
    CHECK(1);
}

/* Fuzz: random bytes, and random mutations of a valid buffer.  Only
 * "no crash, no overread (ASan), sane results" is checked. */
TEST(parse_fuzz)
{
    nlbuf nb = {.n = 0};
    sk_rng rng = {0x5eed5eedULL};
    unsigned char *p;
    long iter, bad = 0;
    rec r = {0};
    int st;
    sk_err err;

    nl_put_entry(&nb, 1, AF_INET, 1, "127.0.0.1", 1, "127.0.0.1", 2, 9, 1,
                 SK_TCP_INFO_SIZE);
    nl_put_entry(&nb, 1, AF_INET6, 6, "::1", 3, "::1", 4, 0, 2, 16);
    nl_put_error(&nb, 1, 0);
    nl_put_entry(&nb, 1, AF_INET, 10, "0.0.0.0", 5, "0.0.0.0", 0, 9, 3, 0);
    nl_put_done(&nb, 1, 0);

    for (iter = 0; iter < 20000; iter++) {
        size_t len, k, flips;
        int rc;

        if (iter % 2 == 0) {
            /* mutate the valid buffer, maybe truncate */
            len = nb.n;
            if (rng_below(&rng, 4) == 0)
                len = (size_t)rng_below(&rng, nb.n + 1);
            p = malloc(len ? len : 1);
            if (p == NULL)
                break;
            memcpy(p, nb.b, len);
            flips = 1 + (size_t)rng_below(&rng, 6);
            for (k = 0; k < flips && len > 0; k++) {
                size_t at = (size_t)rng_below(&rng, len);
                switch (rng_below(&rng, 3)) {
                case 0: p[at] ^= (unsigned char)(1u << rng_below(&rng, 8)); break;
                case 1: p[at] = (unsigned char)rng_next(&rng); break;
                default: p[at] = rng_below(&rng, 2) ? 0xff : 0x00; break;
                }
            }
        } else {
            len = (size_t)rng_below(&rng, 700);
            p = malloc(len ? len : 1);
            if (p == NULL)
                break;
            for (k = 0; k < len; k++)
                p[k] = (unsigned char)rng_next(&rng);
            /* sometimes a plausible header up front */
            if (len >= 16 && rng_below(&rng, 2)) {
                uint32_t l = (uint32_t)rng_below(&rng, len + 8);
                uint16_t t = SOCK_DIAG_BY_FAMILY;
                uint32_t s = 1;
                memcpy(p, &l, 4);
                memcpy(p + 4, &t, 2);
                memcpy(p + 8, &s, 4);
            }
        }
        memset(&r, 0, sizeof(r));
        sk_err_clear(&err);
        rc = sk_diag_parse(p, len, 1, NULL, rec_cb, &r, &st, &err);
        if (rc != SK_OK && rc != SK_ERR)
            bad++;
        if (rc == SK_ERR && err.code != SK_E_PROTOCOL && err.code != SK_E_SYS)
            bad++;
        if (r.bad)
            bad++;
        free(p);
    }
    CHECK_INT(bad, ==, 0);
}

TEST(parse_filters)
{
    nlbuf nb = {.n = 0};
    sk_diag_query q;
    rec r = {0};
    int st;
    sk_err err;

    nl_put_entry(&nb, 1, AF_INET, 10, "127.0.0.1", 80, "0.0.0.0", 0, 1, 1, 0);
    nl_put_entry(&nb, 1, AF_INET, 3, "127.0.0.1", 80, "127.0.0.9", 5000, 0, 2,
                 0); /* a request socket */
    nl_put_entry(&nb, 1, AF_INET6, 1, "::ffff:127.0.0.1", 81, "::1", 6000, 3,
                 3, 0);
    nl_put_entry(&nb, 1, AF_INET, 7, "127.0.0.1", 82, "0.0.0.0", 0, 4, 4, 0);
    nl_put_done(&nb, 1, 0);
    sk_err_clear(&err);

#define RUN_FILTER(expect)                                                   \
    do {                                                                     \
        memset(&r, 0, sizeof(r));                                            \
        CHECK_RC(sk_diag_parse(nb.b, nb.n, 1, &q, rec_cb, &r, &st, &err),    \
                 SK_OK, &err);                                               \
        CHECK_INT(r.n, ==, (expect));                                        \
    } while (0)

    sk_diag_query_init(&q);
    RUN_FILTER(4); /* "all" is bits 1..12, CLOSE (7) included */
    q.states = 1u << SK_TCP_LISTEN;
    RUN_FILTER(1);
    q.flags = SK_DIAG_BOUND_INACTIVE; /* adds the state-7 bound sockets */
    RUN_FILTER(2);
    sk_diag_query_init(&q);
    q.states = 1u << SK_TCP_NEW_SYN_RECV; /* 12 matches the request (3) */
    RUN_FILTER(1);
    q.states = 1u << SK_TCP_SYN_RECV;
    RUN_FILTER(1);
    CHECK_INT(r.last.inode, ==, 0);
    sk_diag_query_init(&q);
    q.family = AF_INET6;
    RUN_FILTER(1);
    sk_diag_query_init(&q);
    q.sport = 80;
    RUN_FILTER(2);
    q.dport = 5000;
    RUN_FILTER(1);
    sk_diag_query_init(&q);
    q.port = 6000;
    RUN_FILTER(1);
    q.port = 81;
    RUN_FILTER(1);
    /* addresses: the IPv4-mapped local address matches 127.0.0.1 */
    sk_diag_query_init(&q);
    q.src.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", q.src.addr);
    RUN_FILTER(4);
    q.dst.family = AF_INET6;
    inet_pton(AF_INET6, "::1", q.dst.addr);
    RUN_FILTER(1);
    sk_diag_query_init(&q);
    q.addr.family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:127.0.0.9", q.addr.addr);
    RUN_FILTER(1); /* the request socket's remote side */
    q.addr.family = AF_INET;
    inet_pton(AF_INET, "10.0.0.1", q.addr.addr);
    RUN_FILTER(0);
#undef RUN_FILTER
}

/* ---- real sockets ------------------------------------------------------- */

static int dg_listener(int family, uint16_t *port, int defer_accept)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        len = sizeof(*a);
    }
    if (defer_accept > 0)
        setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_accept,
                   sizeof(defer_accept));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 16) != 0
        || getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                    : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return fd;
}

static int dg_connect(int family, uint16_t port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons(port);
        len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons(port);
        len = sizeof(*a);
    }
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static uint16_t dg_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET
                     ? ((struct sockaddr_in *)&ss)->sin_port
                     : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void dg_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Dump with q; count entries (and keep the last). */
static int dg_dump(sk_diag_query *q, rec *r)
{
    sk_err err;
    int rc, nwant = r->nwant;
    uint16_t want[8][2];

    memcpy(want, r->want, sizeof(want));
    memset(r, 0, sizeof(*r));
    r->nwant = nwant;
    memcpy(r->want, want, sizeof(want));
    sk_err_clear(&err);
    rc = sk_diag_dump(q, rec_cb, r, &err);
    if (rc != SK_OK)
        sk_check_fail(__FILE__, __LINE__, "sk_diag_dump: %s", err.msg);
    return rc;
}

static void rec_want(rec *r, uint16_t sport, uint16_t dport)
{
    if (r->nwant < 8) {
        r->want[r->nwant][0] = sport;
        r->want[r->nwant][1] = dport;
        r->nwant++;
    }
}

TEST(dump_listener_and_pair)
{
    uint16_t port = 0, cport = 0;
    int lfd = dg_listener(AF_INET, &port, 0), cli = -1, srv = -1;
    sk_diag_query q;
    rec r = {0};
    uint64_t cookie = 0;
    socklen_t cl = sizeof(cookie);

    CHECK(lfd >= 0);
    if (lfd < 0)
        return;
    memset(&r, 0, sizeof(r));
    sk_diag_query_init(&q);
    q.states = 1u << SK_TCP_LISTEN;
    q.sport = port;
    dg_dump(&q, &r);
    CHECK_INT(r.n, ==, 1); /* one listener per address and port */
    CHECK_INT(r.last.state, ==, SK_TCP_LISTEN);
    CHECK_INT(r.last.family, ==, AF_INET);
    CHECK_U64(r.last.inode, >, 0);
    CHECK_U64(r.last.uid, ==, (uint64_t)getuid());
    CHECK_U64(r.last.wqueue, ==, 16); /* the backlog */
    if (getsockopt(lfd, SOL_SOCKET, SO_COOKIE, &cookie, &cl) == 0)
        CHECK_U64(r.last.cookie, ==, cookie);

    cli = dg_connect(AF_INET, port);
    srv = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(cli >= 0 && srv >= 0);
    cport = cli >= 0 ? dg_local_port(cli) : 0;
    memset(&r, 0, sizeof(r));
    rec_want(&r, port, 0);      /* listener */
    rec_want(&r, port, cport);  /* server end */
    rec_want(&r, cport, port);  /* client end */
    sk_diag_query_init(&q);
    q.port = port;
    q.flags = SK_DIAG_WITH_INFO;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 3);
    CHECK_INT(r.bad, ==, 0);
    q.states = 1u << SK_TCP_ESTABLISHED;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 2);
    CHECK_U64(r.states_seen, ==, 1u << SK_TCP_ESTABLISHED);
    CHECK(r.last_has_info);
    CHECK_INT(r.last_info.tcpi_state, ==, SK_TCP_ESTABLISHED);
    CHECK_U64(r.last_info.len, >=, 104);
    /* the other family sees none of ours */
    q.family = AF_INET6;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 0);
    /* local-port filter picks the client side only */
    sk_diag_query_init(&q);
    q.sport = cport;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 1);
    /* address filters (in C) */
    sk_diag_query_init(&q);
    q.port = port;
    q.addr.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", q.addr.addr);
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 3);
    inet_pton(AF_INET, "127.0.0.2", q.addr.addr);
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 0);
    /* the callback stops the dump */
    sk_diag_query_init(&q);
    q.port = port;
    {
        sk_err err;
        memset(&r, 0, sizeof(r));
        r.stop_after = 1;
        sk_err_clear(&err);
        CHECK_RC(sk_diag_dump(&q, rec_cb, &r, &err), SK_OK, &err);
        CHECK_INT(r.n, ==, 1);
    }
    if (cli >= 0)
        close(cli);
    if (srv >= 0)
        close(srv);
    close(lfd);
}

TEST(dump_time_wait)
{
    uint16_t port = 0, cport;
    int lfd = dg_listener(AF_INET, &port, 0), cli, srv, i;
    sk_diag_query q;
    rec r = {0};

    CHECK(lfd >= 0);
    if (lfd < 0)
        return;
    cli = dg_connect(AF_INET, port);
    srv = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(cli >= 0 && srv >= 0);
    cport = cli >= 0 ? dg_local_port(cli) : 0;
    if (cli >= 0)
        close(cli); /* active closer: the TIME_WAIT is the client's */
    if (srv >= 0)
        close(srv);
    sk_diag_query_init(&q);
    q.states = 1u << SK_TCP_TIME_WAIT;
    q.sport = cport;
    q.dport = port;
    memset(&r, 0, sizeof(r));
    for (i = 0; i < 200 && r.n == 0; i++) {
        dg_dump(&q, &r);
        if (r.n == 0)
            dg_sleep_ms(5);
    }
    CHECK_INT(r.n, ==, 1);
    CHECK_INT(r.last.state, ==, SK_TCP_TIME_WAIT);
    CHECK_INT(r.last.timer, ==, SK_DIAG_TIMER_TIME_WAIT);
    CHECK_U64(r.last.inode, ==, 0);
    CHECK_U64(r.last.expires_ms, >, 50000);
    CHECK_U64(r.last.expires_ms, <=, 62000);
    /* no info for TIME_WAIT even when asked */
    q.flags = SK_DIAG_WITH_INFO;
    dg_dump(&q, &r);
    CHECK_INT(r.n, ==, 1);
    CHECK(!r.last_has_info);
    close(lfd);
}

TEST(dump_request_socket)
{
    uint16_t port = 0;
    int lfd = dg_listener(AF_INET, &port, 5), cli, i;
    sk_diag_query q;
    rec r = {0};

    CHECK(lfd >= 0);
    if (lfd < 0)
        return;
    /* TCP_DEFER_ACCEPT: the server drops the bare third ACK, so a request
     * socket (no fd) stays; the client is ESTABLISHED and sends nothing */
    cli = dg_connect(AF_INET, port);
    CHECK(cli >= 0);
    sk_diag_query_init(&q);
    q.states = 1u << SK_TCP_SYN_RECV;
    q.sport = port;
    memset(&r, 0, sizeof(r));
    for (i = 0; i < 200 && r.n == 0; i++) {
        dg_dump(&q, &r);
        if (r.n == 0)
            dg_sleep_ms(5);
    }
    CHECK_INT(r.n, ==, 1);
    CHECK_INT(r.last.state, ==, SK_TCP_SYN_RECV); /* 3, not 12 */
    CHECK_U64(r.last.inode, ==, 0);
    CHECK_INT(r.last.dport, ==, cli >= 0 ? dg_local_port(cli) : 0);
    /* asking for 12 finds it too */
    q.states = 1u << SK_TCP_NEW_SYN_RECV;
    dg_dump(&q, &r);
    CHECK_INT(r.n, ==, 1);
    if (cli >= 0)
        close(cli);
    close(lfd);
}

TEST(dump_bound_inactive)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sk_diag_query q;
    rec r = {0};

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_INT(bind(fd, (struct sockaddr *)&a, sizeof(a)), ==, 0);
    getsockname(fd, (struct sockaddr *)&a, &len);
    sk_diag_query_init(&q);
    q.states = 1u << SK_TCP_CLOSE;
    q.sport = ntohs(a.sin_port);
    dg_dump(&q, &r);
    CHECK_INT(r.n, ==, 0); /* never shown without the opt-in */
    q.flags = SK_DIAG_BOUND_INACTIVE;
    dg_dump(&q, &r);
    /* Linux >= 6.8 (this project targets 6.18) */
    CHECK_INT(r.n, ==, 1);
    CHECK_INT(r.last.state, ==, SK_TCP_CLOSE);
    CHECK_U64(r.last.inode, >, 0);
    close(fd);
}

TEST(dump_ipv6)
{
    uint16_t port = 0;
    int lfd = dg_listener(AF_INET6, &port, 0), cli, srv;
    sk_diag_query q;
    rec r = {0};
    char s[64];

    if (lfd < 0) {
        sk_test_note("no IPv6 loopback here: skipped");
        return;
    }
    cli = dg_connect(AF_INET6, port);
    srv = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(cli >= 0 && srv >= 0);
    memset(&r, 0, sizeof(r));
    rec_want(&r, port, 0);
    rec_want(&r, port, cli >= 0 ? dg_local_port(cli) : 0);
    rec_want(&r, cli >= 0 ? dg_local_port(cli) : 0, port);
    sk_diag_query_init(&q);
    q.family = AF_INET6;
    q.port = port;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 3);
    q.states = 1u << SK_TCP_LISTEN;
    dg_dump(&q, &r);
    CHECK_INT(r.n, ==, 1);
    CHECK_INT(r.last.family, ==, AF_INET6);
    inet_ntop(AF_INET6, r.last.src, s, sizeof(s));
    CHECK_STR(s, "::1");
    sk_diag_query_init(&q);
    q.family = AF_INET;
    q.port = port;
    dg_dump(&q, &r);
    CHECK_INT(r.n_mine, ==, 0);
    if (cli >= 0)
        close(cli);
    if (srv >= 0)
        close(srv);
    close(lfd);
}

/* The raw kernel answer to a lookup (no id comparison): 1 entry, 0 error
 * (errno in *e), -1 failure. */
static int raw_lookup(const sk_diag_lookup_req *lr, sk_diag_entry *out,
                      int *eno)
{
    unsigned char req[256], buf[8192];
    size_t len;
    struct sockaddr_nl k;
    rec r = {0};
    int fd, st, rc = -1;
    ssize_t n;
    sk_err err;

    *eno = 0;
    if (sk_diag_build_lookup(lr, 42, req, sizeof(req), &len, &err) != SK_OK)
        return -1;
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return -1;
    memset(&k, 0, sizeof(k));
    k.nl_family = AF_NETLINK;
    if (sendto(fd, req, len, 0, (struct sockaddr *)&k, sizeof(k)) < 0)
        goto out;
    n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
        goto out;
    memset(&r, 0, sizeof(r));
    sk_err_clear(&err);
    if (sk_diag_parse(buf, (size_t)n, 42, NULL, rec_cb, &r, &st, &err)
        != SK_OK) {
        *eno = err.sys_errno;
        rc = 0;
    } else if (r.n == 1) {
        *out = r.last;
        rc = 1;
    }
out:
    close(fd);
    return rc;
}

TEST(lookup_exact_and_listener_fallback)
{
    uint16_t port = 0;
    int lfd = dg_listener(AF_INET, &port, 0), cli, srv, found = -1, eno, raw;
    struct linger lg = {1, 0};
    sk_diag_lookup_req lr;
    sk_diag_entry e, re;
    sk_tcp_info info;
    sk_err err;

    CHECK(lfd >= 0);
    if (lfd < 0)
        return;
    cli = dg_connect(AF_INET, port);
    srv = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(cli >= 0 && srv >= 0);
    if (cli < 0 || srv < 0)
        goto done;

    /* the server side of the connection: local = listener port */
    memset(&lr, 0, sizeof(lr));
    lr.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", lr.src);
    inet_pton(AF_INET, "127.0.0.1", lr.dst);
    lr.sport = port;
    lr.dport = dg_local_port(cli);
    lr.flags = SK_DIAG_WITH_INFO;
    sk_err_clear(&err);
    CHECK_RC(sk_diag_lookup(&lr, &e, &info, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 1);
    CHECK_INT(e.state, ==, SK_TCP_ESTABLISHED);
    CHECK(e.info == &info);
    CHECK_INT(info.tcpi_state, ==, SK_TCP_ESTABLISHED);
    CHECK(sk_diag_same_tuple(&e, &lr));

    /* with its cookie: found; with another cookie: not found (ESTALE) */
    lr.cookie = e.cookie;
    lr.has_cookie = 1;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 1);
    CHECK(e.info == NULL); /* no storage given */
    lr.cookie = e.cookie + 1;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 0);
    lr.has_cookie = 0;

    /* the same 4-tuple as an AF_INET6 lookup with IPv4-mapped addresses */
    {
        sk_diag_lookup_req l6 = lr;
        l6.family = AF_INET6;
        memset(l6.src, 0, 16);
        memset(l6.dst, 0, 16);
        inet_pton(AF_INET6, "::ffff:127.0.0.1", l6.src);
        inet_pton(AF_INET6, "::ffff:127.0.0.1", l6.dst);
        CHECK_RC(sk_diag_lookup(&l6, &e, NULL, &found, &err), SK_OK, &err);
        sk_test_note("AF_INET6 lookup of an IPv4 4-tuple: found=%d", found);
    }

    /* abort the server side (RST): the 4-tuple is gone, the listener stays */
    setsockopt(srv, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(srv);
    srv = -1;
    raw = raw_lookup(&lr, &re, &eno);
    if (raw == 1)
        sk_test_note("kernel answered with state %d %u->%u (the listener "
                     "fallback)", re.state, re.sport, re.dport);
    else
        sk_test_note("kernel answered errno %d", eno);
    CHECK(raw == 0 || (raw == 1 && !sk_diag_same_tuple(&re, &lr)));
    found = -1;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 0);
    CHECK_INT(e.state, ==, 0); /* cleared, not the listener's */

    /* a 4-tuple that never existed */
    lr.dport = 1;
    lr.sport = 1;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 0);

    /* the listener itself: its own (wildcard remote) id */
    memset(lr.dst, 0, 16);
    lr.sport = port;
    lr.dport = 0;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_OK, &err);
    CHECK_INT(found, ==, 1);
    CHECK_INT(e.state, ==, SK_TCP_LISTEN);

    /* bad requests */
    lr.family = AF_UNIX;
    CHECK_RC(sk_diag_lookup(&lr, &e, NULL, &found, &err), SK_ERR, &err);
    CHECK_RC(sk_diag_lookup(NULL, &e, NULL, &found, &err), SK_ERR, &err);
done:
    if (cli >= 0)
        close(cli);
    if (srv >= 0)
        close(srv);
    close(lfd);
}

TEST(works_unprivileged)
{
    uint16_t port = 0;
    int lfd = dg_listener(AF_INET, &port, 0), status = -1;
    pid_t pid;

    CHECK(lfd >= 0);
    if (lfd < 0)
        return;
    if (getuid() != 0) {
        sk_test_note("not root: this run is already unprivileged");
    }
    pid = fork();
    if (pid == 0) {
        /* child: drop to nobody, then dump and look up */
        sk_diag_query q;
        sk_diag_lookup_req lr;
        sk_diag_entry e;
        rec r;
        int found = 0;
        sk_err err;

        if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(10);
        sk_diag_query_init(&q);
        q.sport = port;
        memset(&r, 0, sizeof(r));
        if (sk_diag_dump(&q, rec_cb, &r, &err) != SK_OK)
            _exit(11);
        if (r.n != 1 || r.last.state != SK_TCP_LISTEN)
            _exit(12);
        memset(&lr, 0, sizeof(lr));
        lr.family = AF_INET;
        inet_pton(AF_INET, "127.0.0.1", lr.src);
        lr.sport = port;
        if (sk_diag_lookup(&lr, &e, NULL, &found, &err) != SK_OK || !found)
            _exit(13);
        _exit(0);
    }
    CHECK(pid > 0);
    if (pid > 0) {
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status));
        CHECK_INT(WEXITSTATUS(status), ==, 0);
    }
    close(lfd);
}
