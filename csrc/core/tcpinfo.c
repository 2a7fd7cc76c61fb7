/* tcpinfo.c - TCP_INFO into sk_tcp_info, the field table, state names.
 * See tcpinfo.h for the rules (absent fields are never reported). */
#include "tcpinfo.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include "atomic.h"

/* The mirror must match the kernel's offsets exactly; these are the
 * offsets of Linux 6.18's struct tcp_info (pahole / offsetof there). */
_Static_assert(offsetof(sk_tcp_info, tcpi_rto) == 8, "tcpi_rto");
_Static_assert(offsetof(sk_tcp_info, tcpi_last_data_sent) == 44, "last_data_sent");
_Static_assert(offsetof(sk_tcp_info, tcpi_rtt) == 68, "tcpi_rtt");
_Static_assert(offsetof(sk_tcp_info, tcpi_total_retrans) == 100, "total_retrans");
_Static_assert(offsetof(sk_tcp_info, tcpi_pacing_rate) == 104, "pacing_rate");
_Static_assert(offsetof(sk_tcp_info, tcpi_bytes_acked) == 120, "bytes_acked");
_Static_assert(offsetof(sk_tcp_info, tcpi_delivery_rate) == 160, "delivery_rate");
_Static_assert(offsetof(sk_tcp_info, tcpi_delivered) == 192, "delivered");
_Static_assert(offsetof(sk_tcp_info, tcpi_bytes_sent) == 200, "bytes_sent");
_Static_assert(offsetof(sk_tcp_info, tcpi_snd_wnd) == 228, "snd_wnd");
_Static_assert(offsetof(sk_tcp_info, tcpi_rcv_wnd) == 232, "rcv_wnd");
_Static_assert(offsetof(sk_tcp_info, tcpi_total_rto) == 240, "total_rto");
_Static_assert(offsetof(sk_tcp_info, tcpi_total_rto_time) == 244, "total_rto_time");
_Static_assert(offsetof(sk_tcp_info, tcpi_received_ce) == 248, "received_ce");
_Static_assert(offsetof(sk_tcp_info, tcpi_received_ce_bytes) == 272, "received_ce_bytes");
_Static_assert(offsetof(sk_tcp_info, tcpi_accecn_fail_mode) == 276, "accecn_fail_mode");
_Static_assert(offsetof(sk_tcp_info, len) == SK_TCP_INFO_SIZE, "kernel part size");

#define F(m) {#m, offsetof(sk_tcp_info, tcpi_##m), \
              sizeof(((sk_tcp_info *)0)->tcpi_##m), 0, 0}
#define B8(name, off, pos, w) {name, off, 1, SK_TCPI_BF8(pos, w), w}
#define B32(name, off, pos, w) {name, off, 4, SK_TCPI_BF32(pos, w), w}

/* Everything up to and including the byte counters: common to both
 * trailer layouts.  The common prefix is followed by one of two tails. */
#define SK_TCPI_COMMON_FIELDS \
    F(state), F(ca_state), F(retransmits), F(probes), F(backoff), F(options), \
    B8("snd_wscale", 6, 0, 4), B8("rcv_wscale", 6, 4, 4), \
    B8("delivery_rate_app_limited", 7, 0, 1), \
    B8("fastopen_client_fail", 7, 1, 2), \
    F(rto), F(ato), F(snd_mss), F(rcv_mss), \
    F(unacked), F(sacked), F(lost), F(retrans), F(fackets), \
    F(last_data_sent), F(last_ack_sent), F(last_data_recv), F(last_ack_recv), \
    F(pmtu), F(rcv_ssthresh), F(rtt), F(rttvar), F(snd_ssthresh), \
    F(snd_cwnd), F(advmss), F(reordering), \
    F(rcv_rtt), F(rcv_space), F(total_retrans), \
    F(pacing_rate), F(max_pacing_rate), F(bytes_acked), F(bytes_received), \
    F(segs_out), F(segs_in), \
    F(notsent_bytes), F(min_rtt), F(data_segs_in), F(data_segs_out), \
    F(delivery_rate), F(busy_time), F(rwnd_limited), F(sndbuf_limited), \
    F(delivered), F(delivered_ce), F(bytes_sent), F(bytes_retrans), \
    F(dsack_dups), F(reord_seen), F(rcv_ooopack), F(snd_wnd), F(rcv_wnd), \
    F(rehash), F(total_rto), F(total_rto_recoveries), F(total_rto_time), \
    F(received_ce), F(delivered_e1_bytes), F(delivered_e0_bytes), \
    F(delivered_ce_bytes), F(received_e1_bytes), F(received_e0_bytes), \
    F(received_ce_bytes)

/* Linux 6.18 and 6.19: two __u16 at 276. */
static const sk_tcp_info_field fields_v6[] = {
    SK_TCPI_COMMON_FIELDS,
    F(accecn_fail_mode),
    F(accecn_opt_seen),
};

/* Linux 7.0: `__u32 tcpi_ecn_mode:2, tcpi_accecn_opt_seen:2,
 * tcpi_accecn_fail_mode:4, tcpi_options2:24;` at 276. */
static const sk_tcp_info_field fields_v7[] = {
    SK_TCPI_COMMON_FIELDS,
    B32("ecn_mode", 276, 0, 2),
    B32("accecn_opt_seen", 276, 2, 2),
    B32("accecn_fail_mode", 276, 4, 4),
    B32("options2", 276, 8, 24),
};

#undef F
#undef B8
#undef B32

/* 0 unknown, 1 the 6.18 layout, 2 the 7.0 layout. */
static int trailer_layout;

/* Contract: pure apart from uname(); decides whether the running kernel
 * uses the 7.0 reading of the last word.  Defaults to 6.18 when unsure. */
static int kernel_is_v7(void)
{
    struct utsname u;
    long major = 0;
    int v7 = 0;

    if (uname(&u) != 0)
        goto done;
    major = strtol(u.release, NULL, 10);
    v7 = major >= 7;
done:
    return v7;
}

/* Contract: static storage; the cached flag is written with the same value
 * by any racing thread, so a relaxed atomic is enough.  No GIL needed. */
const sk_tcp_info_field *sk_tcp_info_fields(size_t *n)
{
    int layout = SK_LOAD_RELAXED(&trailer_layout);

    if (layout == 0) {
        layout = kernel_is_v7() ? 2 : 1;
        SK_STORE_RELAXED(&trailer_layout, layout);
    }
    return sk_tcp_info_fields_layout(layout == 2, n);
}

/* Contract: static storage; pure. */
const sk_tcp_info_field *sk_tcp_info_fields_layout(int v7, size_t *n)
{
    const sk_tcp_info_field *t = v7 ? fields_v7 : fields_v6;

    if (n != NULL)
        *n = v7 ? sizeof(fields_v7) / sizeof(fields_v7[0])
                : sizeof(fields_v6) / sizeof(fields_v6[0]);
    return t;
}

/* Contract: pure; memcpy keeps unaligned reads legal. */
int sk_tcp_info_field_get(const sk_tcp_info *ti, const sk_tcp_info_field *f,
                          uint64_t *out)
{
    const unsigned char *base = (const unsigned char *)ti;
    uint64_t v = 0;
    int present = 0;

    if (ti == NULL || f == NULL || !sk_tcp_info_has(ti, f->offset, f->size))
        goto done;
    switch (f->size) {
    case 1: {
        uint8_t x;
        memcpy(&x, base + f->offset, 1);
        v = x;
        break;
    }
    case 2: {
        uint16_t x;
        memcpy(&x, base + f->offset, 2);
        v = x;
        break;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, base + f->offset, 4);
        v = x;
        break;
    }
    case 8:
        memcpy(&v, base + f->offset, 8);
        break;
    default:
        goto done;
    }
    if (f->width != 0 && f->width < 64)
        v = (v >> f->shift) & ((UINT64_C(1) << f->width) - 1);
    present = 1;
done:
    if (out != NULL)
        *out = present ? v : 0;
    return present;
}

/* Contract: pure, no allocation; the caller owns ti. */
void sk_tcp_info_from_bytes(sk_tcp_info *ti, const void *p, size_t n)
{
    if (ti != NULL) {
        memset(ti, 0, sizeof(*ti));
        if (p == NULL)
            n = 0;
        if (n > SK_TCP_INFO_SIZE)
            n = SK_TCP_INFO_SIZE;
        if (n > 0)
            memcpy(ti, p, n);
        ti->len = (uint32_t)n;
    }
}

/* Contract: one non-blocking syscall, no GIL needed; the caller owns ti and
 * err.  On error ti is all zeros (len 0), so nothing reads as present. */
int sk_tcp_info_get(int fd, sk_tcp_info *ti, sk_err *err)
{
    socklen_t optlen = SK_TCP_INFO_SIZE;
    int rc = SK_ERR;

    if (ti == NULL) {
        sk_err_set(err, SK_E_ARG, "sk_tcp_info_get: ti is NULL");
        goto done;
    }
    memset(ti, 0, sizeof(*ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &optlen) != 0) {
        int e = errno;
        memset(ti, 0, sizeof(*ti));
        sk_err_sys(err, "getsockopt(TCP_INFO)", e);
        goto done;
    }
    ti->len = optlen > SK_TCP_INFO_SIZE ? SK_TCP_INFO_SIZE : (uint32_t)optlen;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: one non-blocking syscall, no GIL needed.  optlen 1 makes the
 * kernel copy only tcpi_state (it still fills a full tcp_info on its stack;
 * cost is about 0.8 us). */
int sk_tcp_state(int fd, int *state, sk_err *err)
{
    unsigned char b = 0;
    socklen_t optlen = 1;
    int rc = SK_ERR;

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &b, &optlen) != 0) {
        sk_err_sys(err, "getsockopt(TCP_INFO)", errno);
        goto done;
    }
    if (optlen < 1) {
        sk_err_set(err, SK_E_PROTOCOL,
                   "getsockopt(TCP_INFO): kernel returned no bytes");
        goto done;
    }
    if (state != NULL)
        *state = b;
    rc = SK_OK;
done:
    return rc;
}

static const char *const state_names[] = {
    [0] = "UNKNOWN",
    [SK_TCP_ESTABLISHED] = "ESTABLISHED",
    [SK_TCP_SYN_SENT] = "SYN_SENT",
    [SK_TCP_SYN_RECV] = "SYN_RECV",
    [SK_TCP_FIN_WAIT1] = "FIN_WAIT1",
    [SK_TCP_FIN_WAIT2] = "FIN_WAIT2",
    [SK_TCP_TIME_WAIT] = "TIME_WAIT",
    [SK_TCP_CLOSE] = "CLOSE",
    [SK_TCP_CLOSE_WAIT] = "CLOSE_WAIT",
    [SK_TCP_LAST_ACK] = "LAST_ACK",
    [SK_TCP_LISTEN] = "LISTEN",
    [SK_TCP_CLOSING] = "CLOSING",
    [SK_TCP_NEW_SYN_RECV] = "NEW_SYN_RECV",
    [SK_TCP_BOUND_INACTIVE] = "BOUND_INACTIVE",
};

/* Contract: pure, static storage. */
const char *sk_tcp_state_name(int state)
{
    const char *s = "UNKNOWN";

    if (state > 0 && (size_t)state < sizeof(state_names) / sizeof(state_names[0])
        && state_names[state] != NULL)
        s = state_names[state];
    return s;
}
