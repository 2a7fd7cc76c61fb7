/*
 * nfq.h - a delay line for packets: the handler of an nfnetlink_queue,
 * which gives Link its delay, jitter and reordering
 * (pysockkit/testing/link.py; the kernel has no sch_netem).
 *
 * An iptables NFQUEUE rule (with --queue-bypass) hands every packet of a
 * hook to queue `queue_num`; the kernel keeps the packet until a verdict
 * names its id.  The handler, a thread of its own, reads the packets'
 * metadata (never their bytes), gives each a due time and accepts it then:
 *
 *   due = arrival + delay_ns + uniform(-jitter_ns, +jitter_ns), at least
 *         the arrival (so with jitter, packets pass each other, as in
 *         netem); with probability reorder_ppm / 1e6 the packet is due at
 *         once instead (netem's "reorder": it overtakes the ones held).
 *
 * Packets are accepted in due-time order (arrival order among equal
 * times).  The thread waits in ppoll() on one monotonic deadline, the
 * earliest due time, with a 1 us timer slack; each packet is accepted at
 * or after its due time, never before.
 *
 * Memory is bounded: the kernel holds at most `limit` packets for the queue
 * (NFQA_CFG_QUEUE_MAXLEN) and drops the ones beyond it, as netem's limit
 * does (counted in /proc/net/netfilter/nfnetlink_queue); the handler holds
 * one small node per held packet, at most SK_NFQ_MAX_HELD (a packet beyond
 * that, or one it cannot allocate a node for, is dropped and counted as
 * `dropped`).
 *
 * Threads: sk_nfq_start binds the queue and starts the thread ("sk-nfq",
 * all signals blocked).  sk_nfq_set and sk_nfq_get_stats may be called from
 * any thread while it runs (they take the handler's mutex).  sk_nfq_stop
 * must be called exactly once, with no other call in progress or to come:
 * it accepts every held packet, unbinds (closing the netlink socket: the
 * rule's bypass then lets packets through), joins the thread and frees
 * everything.  If the thread meets a netlink error it cannot go on from, it
 * does the same accepting and closing at once and records the error
 * (sk_nfq_get_stats's `error`), so traffic is never left stuck.  Nothing
 * here needs the GIL or includes Python.h.
 */
#ifndef SK_NFQ_H
#define SK_NFQ_H

#include <stdint.h>

#include "core/sk.h"

#define SK_NFQ_MAX_LIMIT 100000u /* the largest queue length cap */
#define SK_NFQ_MAX_HELD SK_NFQ_MAX_LIMIT

typedef struct sk_nfq sk_nfq;

typedef struct sk_nfq_stats {
    uint64_t held;      /* packets given a later due time */
    uint64_t passed;    /* packets accepted on arrival (reorder, no delay) */
    uint64_t dropped;   /* packets the handler could not hold */
    uint64_t waiting;   /* packets held now */
    uint64_t most_held; /* the most held at once */
    uint64_t late_max_ns; /* the latest a packet was accepted after its due time */
    uint64_t late_total_ns; /* summed over the `released` held packets */
    uint64_t released;    /* held packets accepted at their due time */
    int error;          /* errno of the failure that stopped the thread, or 0 */
} sk_nfq_stats;

/* Contract: no GIL needed; blocks for the netlink round trips of the
 * binding (a few microseconds).  Opens an AF_NETLINK/NETLINK_NETFILTER
 * socket, binds queue queue_num (copy mode: metadata only), sets its
 * length cap to limit (1..SK_NFQ_MAX_LIMIT) and starts the thread with no
 * delay configured (every packet passes at once).  seed seeds the jitter
 * and reorder draws.  SK_OK with *out set (the caller stops it with
 * sk_nfq_stop), or SK_ERR with err naming the syscall (EBUSY from "bind
 * queue": another handler has the queue). */
int sk_nfq_start(uint16_t queue_num, uint32_t limit, uint64_t seed,
                 sk_nfq **out, sk_err *err);

/* Contract: any thread, no GIL needed.  New parameters for the packets
 * that arrive from now on (held ones keep their due times): delay_ns and
 * jitter_ns >= 0, reorder_ppm 0..1000000, limit 1..SK_NFQ_MAX_LIMIT (sent
 * to the kernel when it changes).  SK_OK, or SK_ERR (SK_E_ARG for a value
 * out of range, or "send" failing) with nothing changed. */
int sk_nfq_set(sk_nfq *q, int64_t delay_ns, int64_t jitter_ns,
               uint32_t reorder_ppm, uint32_t limit, sk_err *err);

/* Contract: any thread, no GIL needed; fills *s. */
void sk_nfq_get_stats(sk_nfq *q, sk_nfq_stats *s);

/* Contract: once, no other call in progress or to come; no GIL needed
 * (joins the thread).  Held packets are accepted; q is freed. */
void sk_nfq_stop(sk_nfq *q);

#endif /* SK_NFQ_H */
