/*
 * heartbeat.h - liveness of a long connection: ping/pong control frames,
 * the last-received/last-sent clocks and the dead-peer rule.
 *
 * Protocol (docs/PROTOCOL.md, "control frames"): with SK_FRAMING_CONTROL a
 * control frame is [length | top bit][type][body].  PING carries the
 * sender's 8-byte monotonic timestamp and the round trip it last measured
 * (4 bytes, microseconds, all ones if unknown); the receiver answers PONG
 * with the same 8-byte timestamp, so the pinger measures the round trip
 * without any state, and the side that only answers learns it too.
 * Unknown control types are counted and ignored (forward compatibility).
 *
 * Rules (applied by the hub, hub.h):
 *   - send a PING when nothing was sent for `interval` (the side that
 *     connected) or 1.5 x `interval` (the side that accepted).  The offset
 *     breaks the symmetry: the connecting side's PINGs arrive first, the
 *     accepting side's PONGs refresh its own clock, and a quiet connection
 *     costs one PING and one PONG per interval instead of two of each;
 *   - a side whose own PINGs are not needed (its PONGs keep the peer
 *     informed) still pings every SK_HB_RTT_EVERY intervals, so that both
 *     sides know the round trip;
 *   - any byte received counts as liveness (a large frame in progress
 *     keeps the peer alive);
 *   - the peer is dead when nothing was received for `timeout` - unless our
 *     own application is the one not reading (the kernel holds unread
 *     bytes), which proves the peer alive.
 *
 * The fields are shared between the connection's user threads and the hub
 * thread: they are read and written with the atomic helpers of atomic.h.
 * No GIL.
 */
#ifndef SK_HEARTBEAT_H
#define SK_HEARTBEAT_H

#include <stdint.h>

#include "atomic.h"
#include "frame.h"

enum {
    SK_CTL_PING = 1,
    SK_CTL_PONG = 2,
};

#define SK_CTL_PONG_LEN 9  /* type + echoed 8-byte timestamp */
#define SK_CTL_PING_LEN 13 /* type + 8-byte timestamp + 4-byte rtt report */
#define SK_CTL_RTT_UNKNOWN 0xffffffffu
#define SK_HB_RTT_EVERY 8 /* intervals between round-trip samples, at most */

typedef struct sk_hb {
    int64_t interval_ns; /* 0: heartbeats off */
    int64_t timeout_ns;
    int64_t ping_after_ns; /* tx idle time that triggers a PING (below) */
    int64_t last_rx_ns;  /* atomic: last time a byte arrived */
    int64_t last_tx_ns;  /* atomic: last time a byte left */
    int64_t rtt_ns;      /* atomic: last ping round trip, -1 unknown */
    int64_t rtt_at_ns;   /* atomic: when rtt_ns was measured */
    int64_t pong_ts;     /* atomic: timestamp to echo; 0: no pong owed */
    int dead;            /* atomic: 1 once the peer was declared dead */
    uint64_t pings_sent, pongs_sent, pings_recv, pongs_recv, unknown_ctl;
} sk_hb;

/* Reset the state; interval/timeout in ns (0: off); initiator: this side
 * connected.  No allocation. */
void sk_hb_init(sk_hb *hb, int64_t interval_ns, int64_t timeout_ns,
                int initiator, int64_t now);

/* Handle one received control frame (caller holds the receive side).
 * PING records a pong to send; PONG updates rtt_ns. */
void sk_hb_on_control(sk_hb *hb, const sk_frame *fr, int64_t now);

/* Encode a PING (with our last rtt) or a PONG (echoing ts) into out, which
 * has header_size + SK_CTL_PING_LEN bytes.  Returns the frame's length. */
size_t sk_hb_encode(const sk_framing *f, int type, int64_t ts,
                    int64_t rtt_ns, unsigned char *out);

#endif /* SK_HEARTBEAT_H */
