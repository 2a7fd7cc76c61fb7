/*
 * fuzz_diag.c - libFuzzer harness for the sock_diag parser (csrc/core/diag.h).
 *
 * sk_diag_parse reads a netlink receive buffer straight from the kernel;
 * the harness feeds it arbitrary bytes.  Input layout (seeds written by
 * tests/fuzz/make_corpus.py from real dumps):
 *
 *   bytes 0..3   the sequence number to expect (u32, host order): seeds use
 *                the one of their real dump, so the messages match
 *   byte 4       bit 0: a filtering query (else q = NULL, as a lookup
 *                does); bit 1: SK_DIAG_WITH_INFO; bit 2: the callback
 *                stops after the first entry; bits 3-4: family filter
 *                (none, AF_INET, AF_INET6, none); bit 5: bound-inactive
 *   bytes 5..6   port filter (u16; 0 means none), applied as sport, dport
 *                or either by byte 7
 *   byte 7       bits 0-1: which port filter; bits 2-7: a state mask seed
 *   bytes 8..    the netlink buffer
 *
 * Checks: no out-of-bounds read (ASan), no UB (UBSan); the return value,
 * the status and the error record follow the contract; every entry handed
 * to the callback is AF_INET or AF_INET6 and passes the query's filters
 * (an independent re-check); INET_DIAG_INFO is at most SK_TCP_INFO_SIZE
 * bytes and every field of both field tables reads as present exactly when
 * the kernel wrote all of it; the number of entries is bounded by the
 * buffer size; the request builders accept every query the parser does.
 *
 * And against a reference parser written here from the netlink and
 * inet_diag ABI (<linux/netlink.h>, <linux/inet_diag.h>: byte offsets, not
 * the kernel's structs, and nothing from diag.c): the entries delivered
 * are exactly the reference's, in order, field by field (family, state,
 * ports, addresses, interface, cookie, inode, uid, timer, expiry,
 * retransmits, queues, and the INET_DIAG_INFO bytes), up to the first one
 * when the callback stops; the return code, the status, and the error's
 * code and errno are the reference's.  So an entry dropped, duplicated or
 * mis-decoded fails, not only one that breaks the filters.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/tcpinfo.h"
#include "require.h"

#define CFG_BYTES 8

static volatile uint64_t sink; /* keeps the field reads alive */

/* An entry as delivered (or as the reference decodes it), with a copy of
 * its INET_DIAG_INFO bytes. */
typedef struct rec {
    sk_diag_entry e;
    int has_info;
    uint32_t info_len;
    unsigned char info[SK_TCP_INFO_SIZE];
} rec;

typedef struct ctx {
    const sk_diag_query *q;
    int stop_first;
    size_t entries;
    rec *got;     /* the entries delivered, up to cap */
    size_t cap;
    uint64_t sink; /* keeps the reads from being optimised away */
} ctx;

/* ------------------------------------------------ the reference parser */

enum { R_NOOP = 1, R_ERROR = 2, R_DONE = 3, R_OVERRUN = 4, R_DIAG = 20 };
#define R_HDR 16      /* struct nlmsghdr */
#define R_MSG 72      /* struct inet_diag_msg */
#define R_INFO 2      /* INET_DIAG_INFO */
#define R_TYPE_MASK 0x3fff /* ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) */

typedef struct ref {
    int rc, status, code, sys_errno;
    rec *want;
    size_t n;
} ref;

static uint32_t rd32(const unsigned char *p)
{
    uint32_t v;

    memcpy(&v, p, 4); /* host order, as netlink is */
    return v;
}

static uint16_t rd16(const unsigned char *p)
{
    uint16_t v;

    memcpy(&v, p, 2);
    return v;
}

static size_t align4(size_t n)
{
    return (n + 3) & ~(size_t)3;
}

/* The query's filters, from diag.h's contract. */
static int ref_wanted(const sk_diag_query *q, const sk_diag_entry *e)
{
    uint32_t mask;

    if (q == NULL)
        return 1;
    if (q->family != 0 && q->family != e->family)
        return 0;
    if (e->state < 1 || e->state > 31)
        return 0;
    mask = q->states ? q->states : SK_DIAG_ALL_STATES;
    if (!(mask & (1u << e->state)) &&
        !(e->state == 3 && (mask & (1u << 12))) &&
        !(e->state == 12 && (mask & (1u << 3))) &&
        !(e->state == 7 && (q->flags & SK_DIAG_BOUND_INACTIVE)))
        return 0;
    if (q->sport >= 0 && e->sport != q->sport)
        return 0;
    if (q->dport >= 0 && e->dport != q->dport)
        return 0;
    if (q->port >= 0 && e->sport != q->port && e->dport != q->port)
        return 0;
    return 1;
}

/* Decode one SOCK_DIAG_BY_FAMILY message m[mlen] (header included): 1 an
 * entry, 0 skipped (another family), -1 malformed. */
static int ref_entry(const unsigned char *m, size_t mlen, int want_info,
                     rec *r)
{
    const unsigned char *d = m + R_HDR;
    size_t off, alen, step;
    int alen_bytes;

    if (mlen < R_HDR + R_MSG)
        return -1;
    if (d[0] != AF_INET && d[0] != AF_INET6)
        return 0;
    memset(r, 0, sizeof(*r));
    alen_bytes = d[0] == AF_INET ? 4 : 16;
    r->e.family = d[0];
    r->e.state = d[1];
    r->e.timer = d[2];
    r->e.retrans = d[3];
    r->e.sport = (uint16_t)(d[4] << 8 | d[5]);
    r->e.dport = (uint16_t)(d[6] << 8 | d[7]);
    memcpy(r->e.src, d + 8, (size_t)alen_bytes);
    memcpy(r->e.dst, d + 24, (size_t)alen_bytes);
    r->e.ifindex = rd32(d + 40);
    r->e.cookie = (uint64_t)rd32(d + 44) | (uint64_t)rd32(d + 48) << 32;
    r->e.expires_ms = rd32(d + 52);
    r->e.rqueue = rd32(d + 56);
    r->e.wqueue = rd32(d + 60);
    r->e.uid = rd32(d + 64);
    r->e.inode = rd32(d + 68);
    for (off = R_HDR + align4(R_MSG); off + 4 <= mlen; off += step) {
        alen = rd16(m + off);
        if (alen < 4 || alen > mlen - off)
            return -1;
        if ((rd16(m + off + 2) & R_TYPE_MASK) == R_INFO && want_info) {
            r->has_info = 1;
            r->info_len = (uint32_t)(alen - 4 < SK_TCP_INFO_SIZE
                                         ? alen - 4
                                         : SK_TCP_INFO_SIZE);
            memcpy(r->info, m + off + 4, r->info_len);
        }
        step = align4(alen);
        if (step > mlen - off)
            step = mlen - off;
    }
    return 1;
}

static void ref_parse(const unsigned char *b, size_t len, uint32_t seq,
                      const sk_diag_query *q, int stop_first, ref *out)
{
    int want_info = q == NULL || (q->flags & SK_DIAG_WITH_INFO);
    size_t off = 0;

    out->rc = SK_ERR;
    out->status = SK_DIAG_MORE;
    out->code = SK_E_PROTOCOL;
    out->sys_errno = 0;
    out->n = 0;
    while (off < len && out->status == SK_DIAG_MORE) {
        size_t left = len - off, mlen, plen, step;
        int32_t v = 0;

        if (left < R_HDR)
            return;
        mlen = rd32(b + off);
        if (mlen < R_HDR || mlen > left)
            return;
        plen = mlen - R_HDR;
        if (plen >= 4)
            memcpy(&v, b + off + R_HDR, 4);
        if (rd32(b + off + 8) == seq) {
            switch (rd16(b + off + 4)) {
            case R_DONE:
                if (plen >= 4 && v < 0) {
                    out->sys_errno = v == INT32_MIN ? EIO : -v;
                    out->code = out->sys_errno == ECONNRESET ||
                                        out->sys_errno == EPIPE
                                    ? SK_E_RESET
                                    : SK_E_SYS;
                    return;
                }
                out->status = SK_DIAG_DONE;
                break;
            case R_ERROR:
                if (plen < 4 || v > 0 || v == INT32_MIN)
                    return;
                if (v < 0) {
                    out->code = -v == ECONNRESET || -v == EPIPE ? SK_E_RESET
                                                                 : SK_E_SYS;
                    out->sys_errno = -v;
                    return;
                }
                break; /* an ACK */
            case R_OVERRUN:
                return;
            case R_DIAG: {
                rec *r = &out->want[out->n];
                int d = ref_entry(b + off, mlen, want_info, r);
                if (d < 0)
                    return;
                if (d > 0 && ref_wanted(q, &r->e)) {
                    out->n++;
                    if (stop_first)
                        out->status = SK_DIAG_STOPPED;
                }
                break;
            }
            default: /* NLMSG_NOOP and unknown types */
                break;
            }
        }
        step = align4(mlen);
        off += step < left ? step : left;
    }
    out->rc = SK_OK;
}

/* The delivered entries equal the reference's, field by field. */
static void compare(const ctx *c, const ref *r)
{
    size_t i;

    REQUIRE(c->entries == r->n);
    for (i = 0; i < r->n; i++) {
        const rec *g = &c->got[i], *w = &r->want[i];

        REQUIRE(g->e.family == w->e.family);
        REQUIRE(g->e.state == w->e.state);
        REQUIRE(g->e.sport == w->e.sport && g->e.dport == w->e.dport);
        REQUIRE(memcmp(g->e.src, w->e.src, 16) == 0);
        REQUIRE(memcmp(g->e.dst, w->e.dst, 16) == 0);
        REQUIRE(g->e.ifindex == w->e.ifindex);
        REQUIRE(g->e.cookie == w->e.cookie);
        REQUIRE(g->e.inode == w->e.inode && g->e.uid == w->e.uid);
        REQUIRE(g->e.timer == w->e.timer);
        REQUIRE(g->e.expires_ms == w->e.expires_ms);
        REQUIRE(g->e.retrans == w->e.retrans);
        REQUIRE(g->e.rqueue == w->e.rqueue && g->e.wqueue == w->e.wqueue);
        REQUIRE(g->has_info == w->has_info);
        REQUIRE(g->info_len == w->info_len);
        REQUIRE(memcmp(g->info, w->info, w->info_len) == 0);
    }
}

static void check_info(ctx *c, const sk_tcp_info *ti)
{
    size_t n, i;
    int v7;

    REQUIRE(ti->len <= SK_TCP_INFO_SIZE);
    for (v7 = 0; v7 < 2; v7++) {
        const sk_tcp_info_field *t = sk_tcp_info_fields_layout(v7, &n);
        for (i = 0; i < n; i++) {
            uint64_t v = 1;
            int present = sk_tcp_info_field_get(ti, &t[i], &v);
            REQUIRE(present == (t[i].offset + t[i].size <= ti->len));
            if (!present)
                REQUIRE(v == 0);
            c->sink += v;
        }
    }
    c->sink += sk_tcpi_snd_wscale(ti) + sk_tcpi_rcv_wscale(ti)
             + sk_tcpi_delivery_rate_app_limited(ti)
             + sk_tcpi_fastopen_client_fail(ti);
}

static int on_entry(void *vctx, const sk_diag_entry *e)
{
    ctx *c = vctx;
    const sk_diag_query *q = c->q;

    c->entries++;
    REQUIRE(e->family == AF_INET || e->family == AF_INET6);
    if (q != NULL) {
        uint32_t mask = q->states ? q->states : SK_DIAG_ALL_STATES;
        int req = (e->state == 3 && (mask & (1u << 12)))
               || (e->state == 12 && (mask & (1u << 3)));
        int bound = e->state == 7 && (q->flags & SK_DIAG_BOUND_INACTIVE);

        REQUIRE(q->family == 0 || q->family == e->family);
        REQUIRE(e->state > 0 && e->state < 32);
        REQUIRE((mask & (1u << e->state)) || req || bound);
        REQUIRE(q->sport < 0 || e->sport == q->sport);
        REQUIRE(q->dport < 0 || e->dport == q->dport);
        REQUIRE(q->port < 0 || e->sport == q->port || e->dport == q->port);
        if (!(q->flags & SK_DIAG_WITH_INFO))
            REQUIRE(e->info == NULL);
    }
    if (e->info != NULL)
        check_info(c, e->info);
    if (c->entries <= c->cap) {
        rec *r = &c->got[c->entries - 1];
        r->e = *e;
        r->e.info = NULL;
        r->has_info = e->info != NULL;
        r->info_len = e->info != NULL ? e->info->len : 0;
        if (r->has_info)
            memcpy(r->info, e->info, r->info_len);
    }
    c->sink += e->sport + e->dport + e->inode + e->uid + e->cookie
             + e->expires_ms + e->retrans + e->rqueue + e->wqueue
             + e->src[0] + e->dst[15];
    c->sink += strlen(sk_diag_timer_name(e->timer));
    c->sink += strlen(sk_tcp_state_name(e->state));
    return c->stop_first;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int fams[4] = {0, AF_INET, AF_INET6, 0};
    sk_diag_query q;
    const sk_diag_query *qp = NULL;
    uint32_t seq;
    uint16_t port;
    int status = -1, rc;
    sk_err err;
    ctx c;
    const unsigned char *buf;
    size_t len;
    unsigned char req[256];
    size_t reqlen;
    ref r;

    if (size < CFG_BYTES)
        return 0;
    memcpy(&seq, data, 4);
    sk_diag_query_init(&q);
    port = (uint16_t)(data[5] | (data[6] << 8));
    if (data[4] & 1) {
        q.family = fams[(data[4] >> 3) & 3];
        q.flags = ((data[4] & 2) ? SK_DIAG_WITH_INFO : 0)
                | ((data[4] & 32) ? SK_DIAG_BOUND_INACTIVE : 0);
        q.states = (uint32_t)(data[7] >> 2) * 0x2492u & SK_DIAG_ALL_STATES;
        if (port != 0) {
            switch (data[7] & 3) {
            case 0: q.sport = port; break;
            case 1: q.dport = port; break;
            default: q.port = port; break;
            }
        }
        qp = &q;
    }
    buf = data + CFG_BYTES;
    len = size - CFG_BYTES;

    memset(&c, 0, sizeof(c));
    c.q = qp;
    c.stop_first = (data[4] >> 2) & 1;
    c.cap = len / 88 + 1;
    c.got = calloc(c.cap, sizeof(rec));
    r.want = calloc(c.cap, sizeof(rec));
    REQUIRE(c.got != NULL && r.want != NULL);
    memset(&err, 0, sizeof(err));
    rc = sk_diag_parse(len ? buf : NULL, len, seq, qp, on_entry, &c, &status,
                       &err);
    ref_parse(buf, len, seq, qp, c.stop_first, &r);
    REQUIRE(rc == r.rc);
    REQUIRE(status == r.status);
    if (rc == SK_ERR) {
        REQUIRE((int)err.code == r.code);
        REQUIRE(err.sys_errno == r.sys_errno);
    }
    compare(&c, &r);
    free(c.got);
    free(r.want);
    REQUIRE(rc == SK_OK || rc == SK_ERR);
    REQUIRE(status == SK_DIAG_MORE || status == SK_DIAG_DONE
            || status == SK_DIAG_STOPPED);
    if (rc == SK_ERR) {
        REQUIRE(err.code == SK_E_PROTOCOL || err.code == SK_E_SYS
                || err.code == SK_E_RESET);
        REQUIRE(memchr(err.msg, 0, sizeof(err.msg)) != NULL);
        REQUIRE(err.code == SK_E_PROTOCOL || err.sys_errno > 0);
    }
    if (status == SK_DIAG_STOPPED)
        REQUIRE(c.stop_first && c.entries == 1 && rc == SK_OK);
    /* an inet_diag message is at least 16 + 72 bytes */
    REQUIRE(c.entries <= len / 88);

    /* the same buffer with every message's seq ignored: NULL query, no
     * callback (a lookup that only wants the status) */
    rc = sk_diag_parse(len ? buf : NULL, len, seq ^ 1u, NULL, NULL, NULL,
                       &status, &err);
    REQUIRE(rc == SK_OK || rc == SK_ERR);

    /* the request builders take any query the parser took */
    if (qp != NULL) {
        rc = sk_diag_build_request(qp, AF_INET, seq, req, sizeof(req),
                                   &reqlen, &err);
        REQUIRE(rc == SK_OK && reqlen <= sizeof(req) && reqlen >= 16);
    }

    /* raw INET_DIAG_INFO bytes of any length, straight into tcp_info */
    {
        sk_tcp_info ti;
        sk_tcp_info_from_bytes(&ti, len ? buf : NULL, len);
        REQUIRE(ti.len == (len < SK_TCP_INFO_SIZE ? len : SK_TCP_INFO_SIZE));
        check_info(&c, &ti);
    }
    sink = c.sink;
    return 0;
}
