/*
 * fuzz_diag.c - libFuzzer harness for the sock_diag parser (csrc/diag.h).
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
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "diag.h"
#include "tcpinfo.h"

#define CFG_BYTES 8

static volatile uint64_t sink; /* keeps the field reads alive */

#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_diag: %s:%d: check failed: %s\n",         \
                    __FILE__, __LINE__, #cond);                             \
            abort();                                                        \
        }                                                                   \
    } while (0)

typedef struct ctx {
    const sk_diag_query *q;
    int stop_first;
    size_t entries;
    uint64_t sink; /* keeps the reads from being optimised away */
} ctx;

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
    memset(&err, 0, sizeof(err));
    rc = sk_diag_parse(len ? buf : NULL, len, seq, qp, on_entry, &c, &status,
                       &err);
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
