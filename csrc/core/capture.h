/*
 * capture.h - record the TCP segments of chosen ports on one interface
 * (normally the loopback), decoded, with kernel timestamps, in a capture
 * thread of its own (a plain pthread: no Python, no GIL).
 *
 * Three parts, kept apart so the parser can be fuzzed without a kernel:
 *
 *   - pure filter building: sk_capture_build_filter writes a classic BPF
 *     program that keeps IPv4 and IPv6 TCP segments with one of the asked
 *     ports as source or destination, drops non-first fragments, drops
 *     PACKET_OUTGOING copies, and cuts each packet to a snap length (the
 *     headers plus `payload_bytes`).  So the kernel copies nothing else to
 *     user space.
 *   - pure parsing: sk_capture_parse decodes one network-layer packet
 *     (IPv4 or IPv6, walking IPv6 extension headers) and its TCP header
 *     and options (MSS, window scale, SACK permitted, SACK blocks,
 *     timestamps) into a plain sk_segment.  Arbitrary bytes give SK_ERR
 *     (SK_E_PROTOCOL, a message saying what is wrong), never an
 *     out-of-bounds read.
 *   - the capture: sk_capture_start opens an AF_PACKET/SOCK_DGRAM socket
 *     that receives nothing (protocol 0), attaches the filter, asks for
 *     nanosecond timestamps (SO_TIMESTAMPNS), and only then binds it to
 *     the interface with ETH_P_ALL, so not one packet is read unfiltered.
 *     A thread drains it with recvmmsg into a ring.
 *
 * Each segment once: on the loopback every packet passes the packet taps
 * twice, leaving (PACKET_OUTGOING) and arriving (PACKET_HOST).  The
 * incoming copy is kept; the outgoing one is refused by
 * PACKET_IGNORE_OUTGOING (Linux >= 4.20) and, on older kernels, by the
 * filter.  Both copies are tapped before netfilter and before a socket
 * filter, so a segment that a rule drops on arrival is still recorded.
 *
 * Time: the kernel stamps each packet (CLOCK_REALTIME, ns) when it is
 * tapped; the thread converts it to CLOCK_MONOTONIC (clock.h, the clock
 * of the watch sampler) with an offset measured next to each read.
 *
 * Memory is bounded: max_segments records of sizeof(sk_segment) plus
 * max_segments * payload_bytes payload bytes, allocated at start.  The
 * ring keeps the FIRST max_segments segments (a recording needs its
 * handshake to number sequence numbers from it) and counts every segment
 * it had no room for (ring_dropped); the kernel's own drops (a receive
 * buffer overrun, PACKET_STATISTICS) are counted as kernel_dropped.  A
 * capture also ends by itself after max_duration_ns (timed_out), so one
 * left open is bounded in time too.
 *
 * Thread safety: every function may be called from any thread; the ring
 * is copied out under a mutex.  sk_capture_stop may be called by several
 * threads and many times; sk_capture_free must be the last call.  After
 * fork() the child has no capture thread: stop does nothing and free
 * releases the memory without touching the locks.
 */
#ifndef SK_CAPTURE_H
#define SK_CAPTURE_H

#include <stddef.h>
#include <stdint.h>

#include <linux/filter.h>

#include "sk.h"
#include "wait.h"

#define SK_CAPTURE_MAX_PORTS 16
#define SK_CAPTURE_DEFAULT_SEGMENTS 4096
#define SK_CAPTURE_MAX_SEGMENTS (1u << 20)
#define SK_CAPTURE_DEFAULT_PAYLOAD 128
#define SK_CAPTURE_MAX_PAYLOAD 4096
/* Longest network + TCP header the filter's snap length allows for:
 * IPv4 with options (60) + TCP with options (60). */
#define SK_CAPTURE_HEADROOM 120
/* Room for the filter program (instructions). */
#define SK_CAPTURE_FILTER_MAX (24 + 4 * (SK_CAPTURE_MAX_PORTS + 2))

/* TCP header flags (byte 13), as on the wire. */
enum {
    SK_TCP_FLAG_FIN = 0x01,
    SK_TCP_FLAG_SYN = 0x02,
    SK_TCP_FLAG_RST = 0x04,
    SK_TCP_FLAG_PSH = 0x08,
    SK_TCP_FLAG_ACK = 0x10,
    SK_TCP_FLAG_URG = 0x20,
    SK_TCP_FLAG_ECE = 0x40,
    SK_TCP_FLAG_CWR = 0x80,
};

/* Which TCP options a segment carried (sk_segment.opts). */
enum {
    SK_SEG_OPT_MSS = 0x01,
    SK_SEG_OPT_WSCALE = 0x02,
    SK_SEG_OPT_SACK_PERM = 0x04,
    SK_SEG_OPT_TIMESTAMP = 0x08,
    SK_SEG_OPT_SACK = 0x10,
    SK_SEG_OPT_BAD = 0x80, /* an option with a bad length: walk stopped */
};

#define SK_SEG_MAX_SACK 4

/* One TCP segment, decoded.  Numbers in host order; addresses in network
 * order (IPv4 in the first 4 bytes). */
typedef struct sk_segment {
    int64_t t_ns;            /* CLOCK_MONOTONIC when tapped; 0 from parse */
    int32_t family;          /* AF_INET or AF_INET6 */
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport, dport;
    uint32_t seq, ack;       /* raw; ack is meaningful with the ACK flag */
    uint8_t flags;           /* SK_TCP_FLAG_* */
    uint8_t opts;            /* SK_SEG_OPT_* present */
    uint8_t wscale;          /* window scale shift (SK_SEG_OPT_WSCALE) */
    uint8_t nsack;           /* SACK blocks (SK_SEG_OPT_SACK) */
    uint16_t window;         /* raw 16-bit window field (unscaled) */
    uint16_t mss;            /* SK_SEG_OPT_MSS */
    uint16_t urgent;
    uint16_t hdr_len;        /* network + TCP header bytes */
    uint32_t tsval, tsecr;   /* SK_SEG_OPT_TIMESTAMP */
    uint32_t sack[SK_SEG_MAX_SACK][2]; /* left, right edges */
    uint32_t length;         /* payload bytes on the wire */
    uint32_t caplen;         /* payload bytes available (<= length) */
} sk_segment;

/*
 * Contract: pure; no allocation, no syscall, no errno.  Decode the
 * network-layer packet pkt[0..len) whose link-layer protocol is ethertype
 * (0x0800 IPv4, 0x86DD IPv6; 0 means "look at the version nibble").  The
 * packet may be cut short (a snap length): wire_len is its length before
 * that (0: len), the IP header's own length gives seg->length, and
 * seg->caplen says how much of the payload is in pkt, starting at
 * *payload (set to NULL when caplen is 0).  Malformed TCP options stop the
 * option walk (SK_SEG_OPT_BAD) but keep the segment.  SK_OK, or
 * SK_ERR with err (SK_E_PROTOCOL) saying what is wrong: not TCP, a
 * fragment, a truncated or inconsistent header.  seg->t_ns is set to 0.
 */
int sk_capture_parse(const uint8_t *pkt, size_t len, size_t wire_len,
                     unsigned ethertype, sk_segment *seg,
                     const uint8_t **payload, sk_err *err);

/*
 * Contract: pure.  Write the filter program into out[0..cap) and its
 * length into *n: TCP over IPv4/IPv6 with one of ports[0..nports) as
 * source or destination port (nports 0: every TCP segment), the first
 * fragment only, never PACKET_OUTGOING, cut to snaplen bytes.  SK_OK, or
 * SK_ERR (SK_E_ARG) for more than SK_CAPTURE_MAX_PORTS ports, a port 0,
 * snaplen 0 or too small a cap.
 */
int sk_capture_build_filter(const uint16_t *ports, size_t nports,
                            uint32_t snaplen, struct sock_filter *out,
                            size_t cap, size_t *n, sk_err *err);

typedef struct sk_capture sk_capture; /* opaque */

typedef struct sk_capture_config {
    const char *ifname;        /* NULL: "lo" */
    uint16_t ports[SK_CAPTURE_MAX_PORTS];
    size_t nports;             /* 0: every TCP segment on the interface */
    size_t max_segments;       /* 0: SK_CAPTURE_DEFAULT_SEGMENTS */
    long payload_bytes;        /* kept per segment; < 0: the default */
    int64_t max_duration_ns;   /* <= 0: no limit */
    int rcvbuf;                /* SO_RCVBUF of the packet socket; 0: 1 MiB */
} sk_capture_config;

typedef struct sk_capture_stats {
    int64_t start_ns;          /* CLOCK_MONOTONIC when the socket was bound */
    int64_t end_ns;            /* when the thread ended, or 0 */
    uint64_t seen;             /* segments decoded (kept + ring_dropped) */
    uint64_t kept;             /* in the ring */
    uint64_t ring_dropped;     /* decoded but no room left in the ring */
    uint64_t kernel_dropped;   /* dropped by the kernel (PACKET_STATISTICS) */
    uint64_t malformed;        /* passed the filter but did not parse */
    size_t capacity;           /* max_segments */
    size_t payload_bytes;      /* payload kept per segment */
    int running;               /* the capture thread has not ended */
    int timed_out;             /* ended because max_duration passed */
    int stamps_on;             /* the kernel stamped packets on arrival from
                                * the start (else the first stamps may be
                                * late: see sk_capture_wait_stamps) */
    sk_err err;                /* why the thread ended with an error */
} sk_capture_stats;

/*
 * Contract: validate c, allocate the ring, open and set up the packet
 * socket (filter attached before it is bound), start the capture thread.
 * On SK_OK *out is a running capture the caller owns (sk_capture_free).
 * On SK_ERR nothing is left behind; err names the syscall:
 * "socket(AF_PACKET)" with EPERM without CAP_NET_RAW,
 * "if_nametoindex(NAME)" for an unknown interface, "setsockopt(...)",
 * "bind(AF_PACKET)", "pthread_create"; SK_E_ARG, SK_E_NOMEM.  No GIL
 * needed.
 */
int sk_capture_start(const sk_capture_config *c, sk_capture **out,
                     sk_err *err);

/*
 * Contract: ask the thread to end, wake it, join it.  Before it ends the
 * thread reads what the socket still holds (segments already tapped are
 * not lost).  Idempotent, safe from several threads.  Does not free.
 */
void sk_capture_stop(sk_capture *c);

/* Contract: stop (as above) and free everything; c may be NULL.  The
 * caller must ensure no other thread still uses c. */
void sk_capture_free(sk_capture *c);

/*
 * Contract: copy kept segments [from, from + cap) into out (may be NULL
 * with cap 0) and, if payload is not NULL, their payload bytes into
 * payload[i * payload_bytes ...] (payload_bytes from the stats; caplen
 * bytes of each are valid).  Returns the number of kept segments (which
 * may exceed from + cap).  Takes the mutex briefly.
 */
size_t sk_capture_segments(sk_capture *c, size_t from, sk_segment *out,
                           uint8_t *payload, size_t cap);

/*
 * Contract: wait until `count` segments have been seen (kept or not), the
 * capture thread ended, or the deadline (clock.h; SK_NO_DEADLINE: none).
 * While waiting, intr->check (if set) is called every intr->slice_ms; a
 * nonzero result ends the wait with SK_INTR.  Returns SK_OK (count
 * reached, or the thread ended), SK_TIMEOUT or SK_INTR; *seen (if not
 * NULL) is the count of segments seen.  No GIL needed; intr->check may
 * take it.
 */
int sk_capture_wait(sk_capture *c, uint64_t count, int64_t deadline,
                    const sk_intr *intr, uint64_t *seen);

/* Contract: a consistent snapshot of the counters.  Takes the mutex. */
void sk_capture_get_stats(sk_capture *c, sk_capture_stats *st);

#endif /* SK_CAPTURE_H */
