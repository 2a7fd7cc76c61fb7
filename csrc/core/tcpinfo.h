/*
 * tcpinfo.h - getsockopt(TCP_INFO) into a plain struct, length-aware across
 * kernels, plus the TCP state-name table.
 *
 * Rule 1: a field the running kernel did not write is ABSENT, never zero and
 * never garbage.  The kernel copies min(our size, its size) bytes and reports
 * that length; we zero the struct first and keep the length in `len`, and
 * every reader asks sk_tcp_info_has() (or walks the field table, which does)
 * before trusting a field.  An older kernel simply yields a shorter `len`.
 *
 * Rule 2: sk_tcp_info mirrors `struct tcp_info` of include/uapi/linux/tcp.h
 * byte for byte up to `len` (offsets are pinned by static asserts in
 * tcpinfo.c), so the kernel writes straight into it.  The mirror is Linux
 * 6.18's, the kernel this project targets: 280 bytes.  Debian 12's
 * linux-libc-dev (6.1) stops at tcpi_snd_wnd (232 bytes), which is why we
 * carry our own copy instead of including <linux/tcp.h>.
 *
 * The last 4 bytes changed meaning upstream: 6.18 and 6.19 have two __u16
 * (tcpi_accecn_fail_mode, tcpi_accecn_opt_seen); Linux 7.0 turned the same
 * 4 bytes into a __u32 bitfield (tcpi_ecn_mode:2, tcpi_accecn_opt_seen:2,
 * tcpi_accecn_fail_mode:4, tcpi_options2:24).  The field table
 * (sk_tcp_info_fields) picks the right reading for the running kernel.
 *
 * Everything here is plain C: no Python, no allocation, no global state
 * except one cached "which trailer layout" flag.  Thread-safe; no GIL needed.
 */
#ifndef SK_TCPINFO_H
#define SK_TCPINFO_H

#include <stddef.h>
#include <stdint.h>

#include "sk.h"

/* Linux TCP states (include/net/tcp_states.h). */
enum {
    SK_TCP_ESTABLISHED = 1,
    SK_TCP_SYN_SENT = 2,
    SK_TCP_SYN_RECV = 3,
    SK_TCP_FIN_WAIT1 = 4,
    SK_TCP_FIN_WAIT2 = 5,
    SK_TCP_TIME_WAIT = 6,
    SK_TCP_CLOSE = 7,
    SK_TCP_CLOSE_WAIT = 8,
    SK_TCP_LAST_ACK = 9,
    SK_TCP_LISTEN = 10,
    SK_TCP_CLOSING = 11,
    SK_TCP_NEW_SYN_RECV = 12,
    SK_TCP_BOUND_INACTIVE = 13, /* diag-only pseudo state (Linux >= 6.8) */
};

/* tcpi_options bits. */
enum {
    SK_TCPI_OPT_TIMESTAMPS = 1,
    SK_TCPI_OPT_SACK = 2,
    SK_TCPI_OPT_WSCALE = 4,
    SK_TCPI_OPT_ECN = 8,
    SK_TCPI_OPT_ECN_SEEN = 16,
    SK_TCPI_OPT_SYN_DATA = 32,
    SK_TCPI_OPT_USEC_TS = 64,
    SK_TCPI_OPT_TFO_CHILD = 128,
};

/* Size of the kernel part of sk_tcp_info (Linux 6.18's struct tcp_info). */
#define SK_TCP_INFO_SIZE 280

/*
 * Mirror of Linux 6.18 `struct tcp_info`.  Units are the kernel's:
 * rto/ato/rtt/rttvar/rcv_rtt/min_rtt in microseconds; last_* in
 * milliseconds; pacing/delivery rates in bytes per second; busy/rwnd/sndbuf
 * limited times in microseconds; total_rto_time in milliseconds.
 *
 * Bytes 6 and 7 hold C bitfields in the kernel; they are kept here as raw
 * bytes (tcpi_wscale, tcpi_flags7) so their bit positions are explicit.
 * Read them through the field table or the sk_tcpi_* helpers below.
 */
typedef struct sk_tcp_info {
    uint8_t tcpi_state;
    uint8_t tcpi_ca_state;
    uint8_t tcpi_retransmits;
    uint8_t tcpi_probes;
    uint8_t tcpi_backoff;
    uint8_t tcpi_options;
    uint8_t tcpi_wscale;  /* snd_wscale:4, rcv_wscale:4 */
    uint8_t tcpi_flags7;  /* delivery_rate_app_limited:1, fastopen_client_fail:2 */

    uint32_t tcpi_rto;
    uint32_t tcpi_ato;
    uint32_t tcpi_snd_mss;
    uint32_t tcpi_rcv_mss;

    uint32_t tcpi_unacked;
    uint32_t tcpi_sacked;
    uint32_t tcpi_lost;
    uint32_t tcpi_retrans;
    uint32_t tcpi_fackets;

    uint32_t tcpi_last_data_sent;
    uint32_t tcpi_last_ack_sent;
    uint32_t tcpi_last_data_recv;
    uint32_t tcpi_last_ack_recv;

    uint32_t tcpi_pmtu;
    uint32_t tcpi_rcv_ssthresh;
    uint32_t tcpi_rtt;
    uint32_t tcpi_rttvar;
    uint32_t tcpi_snd_ssthresh;
    uint32_t tcpi_snd_cwnd;
    uint32_t tcpi_advmss;
    uint32_t tcpi_reordering;

    uint32_t tcpi_rcv_rtt;
    uint32_t tcpi_rcv_space;

    uint32_t tcpi_total_retrans;

    uint64_t tcpi_pacing_rate;
    uint64_t tcpi_max_pacing_rate;
    uint64_t tcpi_bytes_acked;
    uint64_t tcpi_bytes_received;
    uint32_t tcpi_segs_out;
    uint32_t tcpi_segs_in;

    uint32_t tcpi_notsent_bytes;
    uint32_t tcpi_min_rtt;
    uint32_t tcpi_data_segs_in;
    uint32_t tcpi_data_segs_out;

    uint64_t tcpi_delivery_rate;

    uint64_t tcpi_busy_time;
    uint64_t tcpi_rwnd_limited;
    uint64_t tcpi_sndbuf_limited;

    uint32_t tcpi_delivered;
    uint32_t tcpi_delivered_ce;

    uint64_t tcpi_bytes_sent;
    uint64_t tcpi_bytes_retrans;
    uint32_t tcpi_dsack_dups;
    uint32_t tcpi_reord_seen;

    uint32_t tcpi_rcv_ooopack;

    uint32_t tcpi_snd_wnd;
    uint32_t tcpi_rcv_wnd;   /* 6.2 */

    uint32_t tcpi_rehash;

    uint16_t tcpi_total_rto;             /* 6.7 */
    uint16_t tcpi_total_rto_recoveries;
    uint32_t tcpi_total_rto_time;

    uint32_t tcpi_received_ce;           /* 6.18: Accurate ECN counters */
    uint32_t tcpi_delivered_e1_bytes;
    uint32_t tcpi_delivered_e0_bytes;
    uint32_t tcpi_delivered_ce_bytes;
    uint32_t tcpi_received_e1_bytes;
    uint32_t tcpi_received_e0_bytes;
    uint32_t tcpi_received_ce_bytes;
    /* 6.18/6.19 layout; 7.0 reads these 4 bytes as a bitfield word. */
    uint16_t tcpi_accecn_fail_mode;
    uint16_t tcpi_accecn_opt_seen;

    /* --- not part of the kernel struct --- */
    uint32_t len;   /* bytes the kernel wrote (optlen / attribute length) */
    uint32_t pad_;
} sk_tcp_info;

/* True if the kernel wrote all of the `size` bytes at `off`.  Pure. */
static inline int sk_tcp_info_has(const sk_tcp_info *ti, size_t off,
                                  size_t size)
{
    return ti != NULL && off + size <= ti->len && off + size <= SK_TCP_INFO_SIZE;
}

/* SK_TCPI_HAS(ti, tcpi_rtt): is that member present? */
#define SK_TCPI_HAS(ti, member) \
    sk_tcp_info_has((ti), offsetof(sk_tcp_info, member), \
                    sizeof(((sk_tcp_info *)0)->member))

/*
 * One entry of the field table: the kernel name without "tcpi_", the byte
 * offset and width of the storage unit holding it, and for bitfields the
 * shift and width in bits of the value inside that unit (width 0: whole
 * unit).  A field is present when offset + size <= len.
 */
typedef struct sk_tcp_info_field {
    const char *name;
    uint16_t offset;
    uint8_t size;   /* 1, 2, 4 or 8 */
    uint8_t shift;
    uint8_t width;  /* 0 = the whole unit */
} sk_tcp_info_field;

/*
 * Contract: the field table for the running kernel, in struct order;
 * *n receives its length.  Static storage, never freed.  No GIL needed.
 * Picks the 6.18 or the 7.0 reading of the trailing AccECN word by the
 * kernel release (uname), checked once and cached.
 */
const sk_tcp_info_field *sk_tcp_info_fields(size_t *n);

/* Contract: the same table for a given trailer layout (0: 6.18/6.19 u16
 * pair, 1: 7.0 bitfield word); for tests.  Static storage. */
const sk_tcp_info_field *sk_tcp_info_fields_layout(int v7, size_t *n);

/*
 * Contract: read field f of ti into *out.  Returns 1 if present, 0 if the
 * kernel did not return it (then *out is 0).  Pure.
 */
int sk_tcp_info_field_get(const sk_tcp_info *ti, const sk_tcp_info_field *f,
                          uint64_t *out);

/*
 * Contract: fill *ti from `n` raw bytes of a kernel struct tcp_info (for
 * instance an INET_DIAG_INFO attribute): zero it, copy min(n,
 * SK_TCP_INFO_SIZE) bytes, set len to that.  Pure, no allocation.
 */
void sk_tcp_info_from_bytes(sk_tcp_info *ti, const void *p, size_t n);

/*
 * Contract: getsockopt(fd, IPPROTO_TCP, TCP_INFO) into *ti (zeroed first);
 * ti->len is the optlen the kernel returned.  Returns SK_OK, or SK_ERR with
 * err filled by sk_err_sys(err, "getsockopt(TCP_INFO)", errno); *ti is then
 * all zeros with len 0.  A non-blocking syscall: no GIL needed, callers may
 * release it.  The caller owns ti and err.
 */
int sk_tcp_info_get(int fd, sk_tcp_info *ti, sk_err *err);

/*
 * Contract: the cheap state read: getsockopt(TCP_INFO) with optlen 1, so
 * the kernel copies only tcpi_state.  Returns SK_OK with *state set, or
 * SK_ERR (err as above; *state untouched).  No GIL needed.
 */
int sk_tcp_state(int fd, int *state, sk_err *err);

/*
 * Contract: the Linux name of a TCP state number ("ESTABLISHED",
 * "SYN_RECV", "CLOSE", ... "NEW_SYN_RECV", "BOUND_INACTIVE"), or "UNKNOWN"
 * for anything else.  Static storage.  Pure.
 */
const char *sk_tcp_state_name(int state);

/* Bitfield helpers for bytes 6 and 7 (kernel C bitfields; the first
 * declared field sits in the low bits on little-endian, the high bits on
 * big-endian, as GCC lays them out). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SK_TCPI_BF8(pos, width) (8 - (pos) - (width))
#define SK_TCPI_BF32(pos, width) (32 - (pos) - (width))
#else
#define SK_TCPI_BF8(pos, width) (pos)
#define SK_TCPI_BF32(pos, width) (pos)
#endif

/* Contract: pure (the three accessors below too): the bit fields of
 * struct tcp_info, read the same way on either byte order. */
static inline unsigned sk_tcpi_snd_wscale(const sk_tcp_info *ti)
{
    return (ti->tcpi_wscale >> SK_TCPI_BF8(0, 4)) & 0xfu;
}

static inline unsigned sk_tcpi_rcv_wscale(const sk_tcp_info *ti)
{
    return (ti->tcpi_wscale >> SK_TCPI_BF8(4, 4)) & 0xfu;
}

static inline unsigned sk_tcpi_delivery_rate_app_limited(const sk_tcp_info *ti)
{
    return (ti->tcpi_flags7 >> SK_TCPI_BF8(0, 1)) & 0x1u;
}

static inline unsigned sk_tcpi_fastopen_client_fail(const sk_tcp_info *ti)
{
    return (ti->tcpi_flags7 >> SK_TCPI_BF8(1, 2)) & 0x3u;
}

#endif /* SK_TCPINFO_H */
