/* heartbeat.c - ping/pong control frames and liveness (see heartbeat.h). */
#include "heartbeat.h"

#include <string.h>

/* Contract: no allocation. */
void sk_hb_init(sk_hb *hb, int64_t interval_ns, int64_t timeout_ns,
                int64_t now)
{
    memset(hb, 0, sizeof(*hb));
    hb->interval_ns = interval_ns;
    hb->timeout_ns = timeout_ns;
    hb->last_rx_ns = now;
    hb->last_tx_ns = now;
    hb->rtt_ns = -1;
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
        ts = sk_get_ts(fr->data + 1);
        hb->pings_recv++;
        /* 0 means "no pong owed": a peer whose clock reads 0 gets 1 back */
        SK_STORE(&hb->pong_ts, ts ? ts : 1);
    } else if (fr->len == SK_CTL_PING_LEN && fr->data[0] == SK_CTL_PONG) {
        ts = sk_get_ts(fr->data + 1);
        hb->pongs_recv++;
        if (ts > 0 && ts <= now)
            SK_STORE(&hb->rtt_ns, now - ts);
    } else {
        hb->unknown_ctl++;
    }
}

/* Contract: pure. */
size_t sk_hb_encode(const sk_framing *f, int type, int64_t ts,
                    unsigned char *out)
{
    unsigned h = f->header_size;
    int i;

    sk_encode_header(f, sk_control_header(f, SK_CTL_PING_LEN), out);
    out[h] = (unsigned char)type;
    for (i = 0; i < 8; i++)
        out[h + 1 + i] = (unsigned char)((uint64_t)ts >> (8 * (7 - i)));
    return h + SK_CTL_PING_LEN;
}
