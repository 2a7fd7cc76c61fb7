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
 * Rules (sk_hb_tick below, the one place they are written; the hub,
 * hub.h, applies them to the threaded connections, and pysockkit.aio asks
 * the same function through _core.HeartbeatRule):
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
 *     bytes), which proves the peer alive, or the peer already finished
 *     sending (end of stream: its silence proves nothing);
 *   - a connection is looked at again at the earliest of: PING due,
 *     round-trip sample due, peer overdue; never sooner than interval / 8
 *     from now (a PING that could not go out is retried soon, not in a
 *     busy loop), never once the peer is dead.
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

/* What sk_hb_tick asks its caller to do (bits of its result). */
enum {
    SK_HB_CHECK = 1,  /* nothing received for `timeout`: take in what has
                         arrived, then call again with `unread` = the bytes
                         the kernel still holds (FIONREAD) */
    SK_HB_ALIVE = 2,  /* overdue, but the kernel holds unread bytes: the
                         peer is alive; count now as the last receive */
    SK_HB_DEAD = 4,   /* declare the peer dead (nothing else to do) */
    SK_HB_PONG = 8,   /* a PONG is owed: send it */
    SK_HB_PING = 16,  /* send a PING (now - last_tx is due) */
};

#define SK_HB_NEVER INT64_MAX /* sk_hb_tick's due for a dead peer */

/* The inputs of the rule, as plain values (times in monotonic ns). */
typedef struct sk_hb_view {
    int64_t interval_ns;   /* > 0 */
    int64_t timeout_ns;
    int64_t ping_after_ns; /* sk_hb_ping_after */
    int64_t last_rx_ns;    /* the last time a byte arrived */
    int64_t last_tx_ns;    /* the last time a byte left */
    int64_t rtt_at_ns;     /* when the last round trip was measured */
    int pong_owed;         /* a PING was received and not answered yet */
    int rx_done;           /* the peer finished sending (end of stream) */
    int dead;              /* the peer was declared dead already */
} sk_hb_view;

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

/* Contract: pure.  The tx idle time that triggers a PING: interval for the
 * side that connected (initiator), 1.5 x interval for the side that
 * accepted. */
int64_t sk_hb_ping_after(int64_t interval_ns, int initiator);

/* Contract: pure.  The rtt_at of a fresh connection at `now`: the first
 * round-trip sample is due after one interval, not SK_HB_RTT_EVERY. */
int64_t sk_hb_first_rtt_at(int64_t interval_ns, int64_t now);

/* Contract: pure (no clock, no I/O, no state).  The heartbeat rule: what
 * to do for the connection described by v at `now`, as SK_HB_* bits, and
 * in *due the time at which to call again (SK_HB_NEVER once dead).
 * unread: the bytes the kernel holds unread (FIONREAD), or -1 when not
 * looked at yet; an overdue peer with unread < 0 gives SK_HB_CHECK only.
 * *due reflects v as given: after carrying out a PING (last_tx changes) or
 * ALIVE (last_rx), call again with the new view for the next due time. */
int sk_hb_tick(const sk_hb_view *v, int64_t now, int64_t unread,
               int64_t *due);

/* Contract: reads hb's atomics (any thread).  The view of hb for
 * sk_hb_tick; rx_done is 0 (the threaded connections keep the rule of
 * declaring a silent peer dead even after its end of stream). */
void sk_hb_view_of(const sk_hb *hb, sk_hb_view *v);

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
