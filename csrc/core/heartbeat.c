/* heartbeat.c - ping/pong control frames and liveness (see heartbeat.h). */
#include "heartbeat.h"

#include <string.h>

/* Contract: pure. */
int64_t sk_hb_ping_after(int64_t interval_ns, int initiator)
{
    return initiator ? interval_ns : interval_ns + interval_ns / 2;
}

/* Contract: pure. */
int64_t sk_hb_first_rtt_at(int64_t interval_ns, int64_t now)
{
    return now - (SK_HB_RTT_EVERY - 1) * interval_ns;
}

/* Contract: pure.  When to look at v next (the earliest of PING due,
 * round-trip sample due and peer overdue, at least interval / 8 away). */
static int64_t sk_hb_due(const sk_hb_view *v, int64_t now)
{
    int64_t due = v->last_tx_ns + v->ping_after_ns;
    int64_t rtt = v->rtt_at_ns + SK_HB_RTT_EVERY * v->interval_ns;
    int64_t rx = v->last_rx_ns + v->timeout_ns;
    int64_t min_step = v->interval_ns / 8;

    if (v->dead) {
        due = SK_HB_NEVER;
        goto done;
    }
    if (!v->rx_done && rx < due)
        due = rx;
    if (rtt < due)
        due = rtt;
    /* a ping that could not go out (socket full) is retried soon, not in a
     * busy loop */
    if (due < now + min_step)
        due = now + min_step;
done:
    return due;
}

/* Contract: pure; see heartbeat.h. */
int sk_hb_tick(const sk_hb_view *v, int64_t now, int64_t unread,
               int64_t *due)
{
    sk_hb_view w = *v;
    int act = 0;

    if (w.dead)
        goto done;
    if (!w.rx_done && now - w.last_rx_ns >= w.timeout_ns) {
        if (unread < 0) {
            act = SK_HB_CHECK; /* look at what arrived first */
            goto done;
        }
        if (unread == 0) {
            act = SK_HB_DEAD;
            w.dead = 1;
            goto done;
        }
        /* unread bytes in the kernel: the peer is alive, our application
         * is the one not reading */
        act |= SK_HB_ALIVE;
        w.last_rx_ns = now;
    }
    if (w.pong_owed)
        act |= SK_HB_PONG;
    if (now - w.rtt_at_ns >= SK_HB_RTT_EVERY * w.interval_ns ||
        now - w.last_tx_ns >= w.ping_after_ns)
        act |= SK_HB_PING;
done:
    *due = sk_hb_due(&w, now);
    return act;
}

/* Contract: any thread; reads the shared clocks atomically. */
void sk_hb_view_of(const sk_hb *hb, sk_hb_view *v)
{
    v->interval_ns = hb->interval_ns;
    v->timeout_ns = hb->timeout_ns;
    v->ping_after_ns = hb->ping_after_ns;
    v->last_rx_ns = SK_LOAD(&hb->last_rx_ns);
    v->last_tx_ns = SK_LOAD(&hb->last_tx_ns);
    v->rtt_at_ns = SK_LOAD(&hb->rtt_at_ns);
    v->pong_owed = SK_LOAD(&hb->pong_ts) != 0;
    v->rx_done = 0;
    v->dead = SK_LOAD(&hb->dead);
}

/* Contract: no allocation. */
void sk_hb_init(sk_hb *hb, int64_t interval_ns, int64_t timeout_ns,
                int initiator, int64_t now)
{
    memset(hb, 0, sizeof(*hb));
    hb->interval_ns = interval_ns;
    hb->timeout_ns = timeout_ns;
    hb->ping_after_ns = sk_hb_ping_after(interval_ns, initiator);
    hb->last_rx_ns = now;
    hb->last_tx_ns = now;
    hb->rtt_ns = -1;
    hb->rtt_at_ns = sk_hb_first_rtt_at(interval_ns, now);
}

/* Contract: pure; the big-endian 8-byte time stamp of a PING/PONG. */
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
