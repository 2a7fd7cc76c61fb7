/*
 * heartbeat.h - liveness of a long connection: ping/pong control frames,
 * the last-received/last-sent clocks and the dead-peer rule.
 *
 * Protocol (docs/PROTOCOL.md, "control frames"): with SK_FRAMING_CONTROL a
 * control frame is [length | top bit][type][body].  PING carries the
 * sender's 8-byte monotonic timestamp; the receiver answers PONG with the
 * same 8 bytes, so the pinger measures the round trip without any state.
 * Unknown control types are counted and ignored (forward compatibility).
 *
 * Rules (applied by the hub, hub.h):
 *   - send a PING when nothing was sent for `interval`;
 *   - any byte received counts as liveness (a large frame in progress
 *     keeps the peer alive);
 *   - the peer is dead when nothing was received for `timeout` - unless our
 *     own application is the one not reading (the kernel holds unread
 *     bytes), which proves the peer alive.
 *
 * The fields are shared between the connection's user threads and the hub
 * thread: they are read and written with the atomic helpers below.  No GIL.
 */
#ifndef SK_HEARTBEAT_H
#define SK_HEARTBEAT_H

#include <stdint.h>

#include "frame.h"

enum {
    SK_CTL_PING = 1,
    SK_CTL_PONG = 2,
};

#define SK_CTL_PING_LEN 9 /* type + 8-byte timestamp */

typedef struct sk_hb {
    int64_t interval_ns; /* 0: heartbeats off */
    int64_t timeout_ns;
    int64_t last_rx_ns;  /* atomic: last time a byte arrived */
    int64_t last_tx_ns;  /* atomic: last time a byte left */
    int64_t rtt_ns;      /* atomic: last ping round trip, -1 unknown */
    int64_t pong_ts;     /* atomic: timestamp to echo; 0: no pong owed */
    int dead;            /* atomic: 1 once the peer was declared dead */
    uint64_t pings_sent, pongs_sent, pings_recv, pongs_recv, unknown_ctl;
} sk_hb;

#define SK_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define SK_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* Reset the state; interval/timeout in ns (0: off).  No allocation. */
void sk_hb_init(sk_hb *hb, int64_t interval_ns, int64_t timeout_ns,
                int64_t now);

/* Handle one received control frame (caller holds the receive side).
 * PING records a pong to send; PONG updates rtt_ns. */
void sk_hb_on_control(sk_hb *hb, const sk_frame *fr, int64_t now);

/* Encode a control frame of `type` with an 8-byte body into out
 * (header_size + SK_CTL_PING_LEN bytes).  Returns its length. */
size_t sk_hb_encode(const sk_framing *f, int type, int64_t ts,
                    unsigned char *out);

#endif /* SK_HEARTBEAT_H */
