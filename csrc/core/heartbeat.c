/* heartbeat.c - ping/pong control frames and liveness (see heartbeat.h). */
#include "heartbeat.h"

#include <string.h>

/* Contract: no allocation. */
void sk_hb_init(sk_hb *hb, int64_t interval_ns, int64_t timeout_ns,
                int initiator, int64_t now)
{
    memset(hb, 0, sizeof(*hb));
    hb->interval_ns = interval_ns;
    hb->timeout_ns = timeout_ns;
    hb->ping_after_ns = initiator ? interval_ns : interval_ns + interval_ns / 2;
    hb->last_rx_ns = now;
    hb->last_tx_ns = now;
    hb->rtt_ns = -1;
    /* the first sample is due after one interval, not SK_HB_RTT_EVERY */
    hb->rtt_at_ns = now - (SK_HB_RTT_EVERY - 1) * interval_ns;
}

static int64_t sk_get_ts(const unsigned char *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return (int64_t)v;
}

/* Contract: caller owns the receive side; may run on any thread. */
void sk_hb_on_control(sk_hb *hb, const sk_frame *fr, int64_t now)
{
    int64_t ts;

    if (fr->len == SK_CTL_PING_LEN && fr->data[0] == SK_CTL_PING) {
        uint32_t us = ((uint32_t)fr->data[9] << 24) |
                      ((uint32_t)fr->data[10] << 16) |
                      ((uint32_t)fr->data[11] << 8) | fr->data[12];
        ts = sk_get_ts(fr->data + 1);
        hb->pings_recv++;
        if (us != SK_CTL_RTT_UNKNOWN) { /* the round trip the peer saw */
            SK_STORE(&hb->rtt_ns, (int64_t)us * 1000);
            SK_STORE(&hb->rtt_at_ns, now);
        }
        /* 0 means "no pong owed": a peer whose clock reads 0 gets 1 back */
        SK_STORE(&hb->pong_ts, ts ? ts : 1);
    } else if (fr->len == SK_CTL_PONG_LEN && fr->data[0] == SK_CTL_PONG) {
        ts = sk_get_ts(fr->data + 1);
        hb->pongs_recv++;
        if (ts > 0 && ts <= now) {
            SK_STORE(&hb->rtt_ns, now - ts);
            SK_STORE(&hb->rtt_at_ns, now);
        }
    } else {
        hb->unknown_ctl++;
    }
}

/* Contract: pure. */
size_t sk_hb_encode(const sk_framing *f, int type, int64_t ts,
                    int64_t rtt_ns, unsigned char *out)
{
    unsigned h = f->header_size;
    size_t len = type == SK_CTL_PING ? SK_CTL_PING_LEN : SK_CTL_PONG_LEN;
    uint32_t us = SK_CTL_RTT_UNKNOWN;
    int i;

    sk_encode_header(f, sk_control_header(f, len), out);
    out[h] = (unsigned char)type;
    for (i = 0; i < 8; i++)
        out[h + 1 + i] = (unsigned char)((uint64_t)ts >> (8 * (7 - i)));
    if (type == SK_CTL_PING) {
        if (rtt_ns >= 0 && rtt_ns / 1000 < SK_CTL_RTT_UNKNOWN)
            us = (uint32_t)(rtt_ns / 1000);
        for (i = 0; i < 4; i++)
            out[h + 9 + i] = (unsigned char)(us >> (8 * (3 - i)));
    }
    return h + len;
}
