/*
 * diag.h - TCP sockets of this network namespace, from the kernel's
 * NETLINK_SOCK_DIAG (inet_diag), for AF_INET and AF_INET6.
 *
 * What it sees that /proc or TCP_INFO cannot: TIME_WAIT sockets, request
 * sockets (a SYN_RECV with no fd: state 3, inode 0; reported as 3, never
 * 12), orphans, other processes' sockets (with their uid and inode).  Any
 * user may dump; no privilege is needed for anything here.
 *
 * Three parts, kept apart so the parser can be fuzzed without a kernel:
 *   - pure request building: sk_diag_build_request / sk_diag_build_bytecode
 *     (a port filter is sent as INET_DIAG_REQ_BYTECODE, so the kernel
 *     filters; with ~125k TIME_WAIT sockets that is 14 ms instead of 380);
 *   - pure parsing: sk_diag_parse walks a netlink receive buffer, checking
 *     every nlmsg_len and rta_len against what is left, and calls back once
 *     per matching entry.  Arbitrary bytes give SK_ERR or are skipped, never
 *     an out-of-bounds read;
 *   - socket I/O: sk_diag_dump (one dump per family) and sk_diag_lookup (an
 *     exact, non-dump request by 4-tuple and/or cookie).
 *
 * Address filters are applied in C (the kernel's S_COND/D_COND would work
 * too, but the C check is simple and exact, and ports already cut the dump
 * down).  An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches the IPv4
 * address a.b.c.d.
 *
 * The exact lookup trap (STATES.md): when the 4-tuple is gone, the kernel's
 * lookup falls back to the LISTENER on that port and returns it.  The
 * lookup here compares the returned id with the requested one and reports
 * "not found" in that case.
 *
 * Nothing here needs the GIL: no Python, no shared state.
 */
#ifndef SK_DIAG_H
#define SK_DIAG_H

#include <stddef.h>
#include <stdint.h>

#include "sk.h"
#include "tcpinfo.h"

/* Timer kinds reported in idiag_timer. */
enum {
    SK_DIAG_TIMER_NONE = 0,
    SK_DIAG_TIMER_RETRANSMIT = 1,
    SK_DIAG_TIMER_KEEPALIVE = 2,
    SK_DIAG_TIMER_TIME_WAIT = 3,
    SK_DIAG_TIMER_PROBE = 4, /* zero-window probe */
};

/* Query flags. */
enum {
    SK_DIAG_WITH_INFO = 1,       /* ask for INET_DIAG_INFO (struct tcp_info) */
    SK_DIAG_BOUND_INACTIVE = 2,  /* also bound, never-connected sockets
                                    (TCPF_BOUND_INACTIVE, Linux >= 6.8;
                                    older kernels ignore the bit).  They
                                    are reported with state 7 (CLOSE). */
};

/* Bitmask of all real TCP states, 1..12 (TCPF_ALL without bit 0). */
#define SK_DIAG_ALL_STATES 0x1ffeu
#define SK_DIAG_STATE_BIT(s) (1u << (s))
#define SK_DIAG_TCPF_BOUND_INACTIVE (1u << 13)

/* An address: family 0 means "any" (no filter); IPv4 in the first 4
 * bytes, network byte order. */
typedef struct sk_diag_addr {
    int family;
    uint8_t addr[16];
} sk_diag_addr;

/* One socket, as reported by the kernel. */
typedef struct sk_diag_entry {
    int family;           /* AF_INET or AF_INET6 */
    int state;            /* Linux state number (tcpinfo.h SK_TCP_*) */
    uint16_t sport;       /* local port, host order */
    uint16_t dport;       /* remote port, host order */
    uint8_t src[16];      /* local address, network order (IPv4: 4 bytes) */
    uint8_t dst[16];      /* remote address */
    uint32_t ifindex;     /* bound device, 0 if none */
    uint64_t cookie;      /* socket cookie (SO_COOKIE) */
    uint32_t inode;       /* 0 for request and TIME_WAIT sockets */
    uint32_t uid;
    int timer;            /* SK_DIAG_TIMER_* */
    uint32_t expires_ms;  /* time until the timer fires */
    uint32_t retrans;     /* retransmits (or probes) done by that timer */
    uint32_t rqueue;      /* LISTEN: accept queue length; else bytes unread */
    uint32_t wqueue;      /* LISTEN: backlog; else bytes not yet acked */
    /* INET_DIAG_INFO if asked for and sent (not for TIME_WAIT/request
     * sockets), else NULL.  Points into the parser's storage: valid only
     * during the callback; copy what you keep. */
    const sk_tcp_info *info;
} sk_diag_entry;

/* Called once per matching entry.  Return 0 to go on, nonzero to stop the
 * dump (sk_diag_dump then returns SK_OK).  Runs without the GIL. */
typedef int (*sk_diag_cb)(void *ctx, const sk_diag_entry *e);

typedef struct sk_diag_query {
    uint32_t states;     /* 1 << state bitmask; 0 means SK_DIAG_ALL_STATES.
                            Bit 12 and bit 3 both match request sockets. */
    int family;          /* AF_INET, AF_INET6, or AF_UNSPEC (0): both */
    int sport;           /* local port, or -1 for any */
    int dport;           /* remote port, or -1 */
    int port;            /* either side, or -1 */
    sk_diag_addr src;    /* local address (family 0: any) */
    sk_diag_addr dst;    /* remote address */
    sk_diag_addr addr;   /* either side */
    unsigned flags;      /* SK_DIAG_WITH_INFO | SK_DIAG_BOUND_INACTIVE */
    int timeout_ms;      /* whole dump; <= 0: 30000 */
} sk_diag_query;

/* Parser status (sk_diag_parse's *status). */
enum {
    SK_DIAG_MORE = 0,    /* no end seen: receive the next buffer */
    SK_DIAG_DONE = 1,    /* NLMSG_DONE (dump) or the reply (lookup) seen */
    SK_DIAG_STOPPED = 2, /* the callback returned nonzero */
};

/* Contract: fill q with "everything": all states, both families, no port
 * or address filter, no flags.  Pure. */
void sk_diag_query_init(sk_diag_query *q);

/*
 * Contract: write the INET_DIAG_REQ_BYTECODE program for q's port filters
 * (sport, dport, port; ANDed) into out[cap].  *outlen is 0 when q has no
 * port filter.  Returns SK_OK, or SK_ERR (SK_E_ARG) for a port outside
 * 0..65535 or cap too small (64 bytes always suffice).  Pure.
 */
int sk_diag_build_bytecode(const sk_diag_query *q, void *out, size_t cap,
                           size_t *outlen, sk_err *err);

/*
 * Contract: write a complete SOCK_DIAG_BY_FAMILY dump request for one
 * family (AF_INET/AF_INET6) into buf[cap] (256 bytes always suffice).
 * *outlen is its length.  SK_OK or SK_ERR (SK_E_ARG).  Pure.
 */
int sk_diag_build_request(const sk_diag_query *q, int family, uint32_t seq,
                          void *buf, size_t cap, size_t *outlen, sk_err *err);

/*
 * Contract: parse one netlink receive buffer of `len` bytes (from a dump or
 * a lookup reply), untrusted.  Messages whose nlmsg_seq differs from `seq`
 * are skipped.  For each SOCK_DIAG_BY_FAMILY message that passes q's
 * filters (q NULL: no filter), cb(ctx, entry) is called.  *status receives
 * SK_DIAG_MORE, SK_DIAG_DONE or SK_DIAG_STOPPED.
 * Returns SK_OK, or SK_ERR with err set: an NLMSG_ERROR (or a negative
 * NLMSG_DONE) becomes sk_err_sys(err, "sock_diag", errno) with the kernel's
 * errno; a malformed message (a length that runs past the buffer, a short
 * header) becomes SK_E_PROTOCOL.  Entries before the bad message were
 * already delivered.  Pure: no syscall, no allocation.  Runtime is linear
 * in len.
 */
int sk_diag_parse(const void *buf, size_t len, uint32_t seq,
                  const sk_diag_query *q, sk_diag_cb cb, void *ctx,
                  int *status, sk_err *err);

/*
 * Contract: dump the TCP sockets matching q, calling cb once per entry (in
 * kernel order; AF_INET first when both families are asked).  Opens and
 * closes its own netlink socket and a 64 KiB receive buffer (freed before
 * returning).  Returns SK_OK (finished, or stopped by cb), or SK_ERR with
 * err set (syscall failures name the syscall; "sock_diag" for the kernel's
 * error reply; SK_E_TIMEOUT after q->timeout_ms).  Blocking but short: the
 * kernel builds the dump as we read it.  No GIL needed; cb runs in the
 * calling thread without it.
 */
int sk_diag_dump(const sk_diag_query *q, sk_diag_cb cb, void *ctx,
                 sk_err *err);

/* An exact lookup request. */
typedef struct sk_diag_lookup_req {
    int family;           /* AF_INET or AF_INET6 */
    uint8_t src[16];      /* local address */
    uint16_t sport;       /* local port */
    uint8_t dst[16];      /* remote address */
    uint16_t dport;       /* remote port */
    uint64_t cookie;      /* checked by the kernel if has_cookie */
    int has_cookie;
    unsigned flags;       /* SK_DIAG_WITH_INFO */
    int timeout_ms;       /* <= 0: 5000 */
} sk_diag_lookup_req;

/* Contract: write the non-dump request for r into buf[cap] (256 bytes
 * suffice).  Pure.  SK_OK or SK_ERR (SK_E_ARG). */
int sk_diag_build_lookup(const sk_diag_lookup_req *r, uint32_t seq, void *buf,
                         size_t cap, size_t *outlen, sk_err *err);

/*
 * Contract: find the socket with exactly r's 4-tuple (and cookie, if
 * given).  On SK_OK, *found is 1 and *out holds it (out->info points at
 * *info_out, which the caller owns, when SK_DIAG_WITH_INFO was asked for
 * and the kernel sent it; else NULL), or *found is 0: no such socket
 * (ENOENT, ESTALE for a stale cookie, or the kernel's listener fallback,
 * detected by comparing the returned id with the requested one).
 * SK_ERR with err set for anything else.  Opens and closes its own netlink
 * socket.  No GIL needed.
 */
int sk_diag_lookup(const sk_diag_lookup_req *r, sk_diag_entry *out,
                   sk_tcp_info *info_out, int *found, sk_err *err);

/* Contract: a short name of a timer kind ("none", "retransmit",
 * "keepalive", "time_wait", "probe"), "unknown" otherwise.  Pure. */
const char *sk_diag_timer_name(int timer);

/* Contract: does the entry's 4-tuple equal the one requested (ports and
 * addresses, family-aware, IPv4-mapped equal to IPv4)?  Pure. */
int sk_diag_same_tuple(const sk_diag_entry *e, const sk_diag_lookup_req *r);

#endif /* SK_DIAG_H */
