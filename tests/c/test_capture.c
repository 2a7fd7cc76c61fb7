/* test_capture.c - the segment capture (capture.h): the parser on packets
 * built here byte by byte (IPv4, IPv6, options, extension headers, every
 * kind of damage), the filter builder, and a live capture on the loopback.
 *
 * The live tests need CAP_NET_RAW.  Without it (not root) they run in a
 * forked child that enters a private user and network namespace
 * (unshare(CLONE_NEWUSER | CLONE_NEWNET)), where it has the capability
 * over its own loopback; the child's failed checks come back as its exit
 * status.  The host's denial is checked too: EPERM, naming the syscall. */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/capture.h"
#include "core/clock.h"

/* ------------------------------------------------------ packet builders */

static void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The options of a Linux SYN: mss 65495, sackOK, TS 1000/0, nop, wscale 7
 * (20 bytes, as tcpdump shows "mss 65495,sackOK,TS val 1000 ecr 0,nop,
 * wscale 7"). */
static size_t syn_options(uint8_t *o)
{
    o[0] = 2; o[1] = 4; put16(o + 2, 65495);
    o[4] = 4; o[5] = 2;
    o[6] = 8; o[7] = 10; put32(o + 8, 1000); put32(o + 12, 0);
    o[16] = 1;
    o[17] = 3; o[18] = 3; o[19] = 7;
    return 20;
}

/* A TCP header at p with nopt option bytes from opt, then payload. */
static size_t tcp_at(uint8_t *p, uint16_t sport, uint16_t dport, uint32_t seq,
                     uint32_t ack, uint8_t flags, const uint8_t *opt,
                     size_t nopt, const void *payload, size_t plen)
{
    memset(p, 0, 20);
    put16(p, sport);
    put16(p + 2, dport);
    put32(p + 4, seq);
    put32(p + 8, ack);
    p[12] = (uint8_t)(((20 + nopt) / 4) << 4);
    p[13] = flags;
    put16(p + 14, 65483);
    if (nopt > 0)
        memcpy(p + 20, opt, nopt);
    if (plen > 0)
        memcpy(p + 20 + nopt, payload, plen);
    return 20 + nopt + plen;
}

/* IPv4 127.0.0.1 -> 127.0.0.2 around a TCP segment; returns the length. */
static size_t ipv4(uint8_t *p, size_t tcp_len)
{
    memset(p, 0, 20);
    p[0] = 0x45;
    put16(p + 2, (unsigned)(20 + tcp_len));
    p[6] = 0x40; /* DF */
    p[8] = 64;
    p[9] = IPPROTO_TCP;
    p[12] = 127; p[15] = 1;
    p[16] = 127; p[19] = 2;
    return 20 + tcp_len;
}

/* IPv6 ::1 -> ::2 with next header nh and payload length plen. */
static void ipv6(uint8_t *p, uint8_t nh, size_t plen)
{
    memset(p, 0, 40);
    p[0] = 0x60;
    put16(p + 4, (unsigned)plen);
    p[6] = nh;
    p[7] = 64;
    p[23] = 1;
    p[39] = 2;
}

/* -------------------------------------------------------------- parser */

TEST(parse_ipv4_syn_with_options)
{
    uint8_t pkt[128], opt[20];
    size_t n = syn_options(opt), len;
    const uint8_t *payload = (const uint8_t *)"x";
    const uint8_t lo1[4] = {127, 0, 0, 1}, lo2[4] = {127, 0, 0, 2};
    sk_segment seg;
    sk_err err;

    len = ipv4(pkt, tcp_at(pkt + 20, 40000, 5000, 0xfffffff0u, 0, 0x02, opt,
                           n, NULL, 0));
    CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IP, &seg, &payload, &err),
             SK_OK, &err);
    CHECK_INT(seg.family, ==, AF_INET);
    CHECK_MEM(seg.src, lo1, 4);
    CHECK_MEM(seg.dst, lo2, 4);
    CHECK_INT(seg.sport, ==, 40000);
    CHECK_INT(seg.dport, ==, 5000);
    CHECK_U64(seg.seq, ==, 0xfffffff0u);
    CHECK_INT(seg.flags, ==, SK_TCP_FLAG_SYN);
    CHECK_INT(seg.window, ==, 65483);
    CHECK_INT(seg.opts, ==, SK_SEG_OPT_MSS | SK_SEG_OPT_SACK_PERM
                              | SK_SEG_OPT_TIMESTAMP | SK_SEG_OPT_WSCALE);
    CHECK_INT(seg.mss, ==, 65495);
    CHECK_INT(seg.wscale, ==, 7);
    CHECK_U64(seg.tsval, ==, 1000);
    CHECK_U64(seg.tsecr, ==, 0);
    CHECK_U64(seg.length, ==, 0);
    CHECK_U64(seg.caplen, ==, 0);
    CHECK(payload == NULL);
    CHECK_INT(seg.hdr_len, ==, 60);
    CHECK_U64(seg.t_ns, ==, 0);
    /* the version nibble is enough without an ethertype */
    CHECK_RC(sk_capture_parse(pkt, len, len, 0, &seg, NULL, &err), SK_OK, &err);
    CHECK_INT(seg.family, ==, AF_INET);
}

TEST(parse_payload_and_snap_length)
{
    uint8_t pkt[256];
    const char *data = "\x00\x00\x00\x05hello";
    const uint8_t *payload = NULL;
    size_t len;
    sk_segment seg;
    sk_err err;

    len = ipv4(pkt, tcp_at(pkt + 20, 5000, 40000, 1, 2, 0x18, NULL, 0, data, 9));
    CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IP, &seg, &payload, &err),
             SK_OK, &err);
    CHECK_U64(seg.length, ==, 9);
    CHECK_U64(seg.caplen, ==, 9);
    CHECK(payload == pkt + 40);
    CHECK_INT(seg.flags, ==, SK_TCP_FLAG_PSH | SK_TCP_FLAG_ACK);
    CHECK_U64(seg.ack, ==, 2);
    /* cut after 4 payload bytes (a snap length): the wire length stays */
    CHECK_RC(sk_capture_parse(pkt, 44, len, ETH_P_IP, &seg, &payload, &err),
             SK_OK, &err);
    CHECK_U64(seg.length, ==, 9);
    CHECK_U64(seg.caplen, ==, 4);
    /* padding after the datagram (an Ethernet minimum) is not payload */
    memset(pkt + len, 0xee, 6);
    CHECK_RC(sk_capture_parse(pkt, len + 6, len + 6, ETH_P_IP, &seg, &payload,
                              &err), SK_OK, &err);
    CHECK_U64(seg.length, ==, 9);
    CHECK_U64(seg.caplen, ==, 9);
}

TEST(parse_ipv6_and_extension_headers)
{
    uint8_t pkt[256], opt[20];
    size_t n = syn_options(opt), tl;
    const uint8_t *payload;
    sk_segment seg;
    sk_err err;

    tl = tcp_at(pkt + 40, 40000, 5000, 7, 9, 0x12, opt, n, NULL, 0);
    ipv6(pkt, IPPROTO_TCP, tl);
    CHECK_RC(sk_capture_parse(pkt, 40 + tl, 0, ETH_P_IPV6, &seg, &payload,
                              &err), SK_OK, &err);
    CHECK_INT(seg.family, ==, AF_INET6);
    CHECK_INT(seg.src[15], ==, 1);
    CHECK_INT(seg.dst[15], ==, 2);
    CHECK_INT(seg.flags, ==, SK_TCP_FLAG_SYN | SK_TCP_FLAG_ACK);
    CHECK_INT(seg.mss, ==, 65495);
    /* a hop-by-hop header (8 bytes) then a destination-options header
     * (16 bytes) in front of the TCP header */
    memset(pkt + 40, 0, 24);
    pkt[40] = 60;           /* next: destination options */
    pkt[41] = 0;            /* (0 + 1) * 8 bytes */
    pkt[48] = IPPROTO_TCP;  /* next: TCP */
    pkt[49] = 1;            /* (1 + 1) * 8 bytes */
    tl = tcp_at(pkt + 64, 1, 2, 3, 4, 0x11, NULL, 0, "ab", 2);
    ipv6(pkt, 0, 24 + tl);
    CHECK_RC(sk_capture_parse(pkt, 64 + tl, 0, ETH_P_IPV6, &seg, &payload,
                              &err), SK_OK, &err);
    CHECK_INT(seg.flags, ==, SK_TCP_FLAG_FIN | SK_TCP_FLAG_ACK);
    CHECK_U64(seg.length, ==, 2);
    CHECK(payload == pkt + 84);
    /* a non-first IPv6 fragment is refused */
    memset(pkt + 40, 0, 8);
    pkt[40] = IPPROTO_TCP;
    put16(pkt + 42, 8 << 3);
    ipv6(pkt, 44, 8 + tl);
    CHECK_RC(sk_capture_parse(pkt, 48 + tl, 0, ETH_P_IPV6, &seg, NULL, &err),
             SK_ERR, &err);
    CHECK(strstr(err.msg, "fragment") != NULL);
}

TEST(parse_refuses_damage_with_a_message)
{
    uint8_t pkt[128], bad[128];
    size_t len, cut;
    sk_segment seg;
    sk_err err;

    len = ipv4(pkt, tcp_at(pkt + 20, 1, 2, 3, 4, 0x10, NULL, 0, NULL, 0));
    /* every truncation of a valid packet is an error, never a read past */
    for (cut = 0; cut < len; cut++) {
        memcpy(bad, pkt, cut);
        sk_err_clear(&err);
        CHECK_RC(sk_capture_parse(cut ? bad : NULL, cut, cut, ETH_P_IP, &seg,
                                  NULL, &err), SK_ERR, &err);
        CHECK_INT(err.code, ==, SK_E_PROTOCOL);
        CHECK(err.msg[0] != '\0');
    }
    memcpy(bad, pkt, len);
    bad[9] = IPPROTO_UDP;
    CHECK_RC(sk_capture_parse(bad, len, 0, ETH_P_IP, &seg, NULL, &err), SK_ERR,
             &err);
    CHECK(strstr(err.msg, "not TCP") != NULL);
    memcpy(bad, pkt, len);
    put16(bad + 6, 0x0010); /* fragment offset 128 */
    CHECK_RC(sk_capture_parse(bad, len, 0, ETH_P_IP, &seg, NULL, &err), SK_ERR,
             &err);
    CHECK(strstr(err.msg, "fragment") != NULL);
    memcpy(bad, pkt, len);
    bad[0] = 0x44; /* header length 16 */
    CHECK_RC(sk_capture_parse(bad, len, 0, ETH_P_IP, &seg, NULL, &err), SK_ERR,
             &err);
    memcpy(bad, pkt, len);
    put16(bad + 2, 200); /* longer than the packet */
    CHECK_RC(sk_capture_parse(bad, len, 0, ETH_P_IP, &seg, NULL, &err), SK_ERR,
             &err);
    memcpy(bad, pkt, len);
    bad[32] = 0x40; /* TCP data offset 16 */
    CHECK_RC(sk_capture_parse(bad, len, 0, ETH_P_IP, &seg, NULL, &err), SK_ERR,
             &err);
    CHECK(strstr(err.msg, "data offset") != NULL);
    CHECK_RC(sk_capture_parse(pkt, len, 0, 0x0806, &seg, NULL, &err), SK_ERR,
             &err);
    CHECK(strstr(err.msg, "ethertype 0x0806") != NULL);
    CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IPV6, &seg, NULL, &err),
             SK_ERR, &err);
    CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IP, NULL, NULL, &err), SK_ERR,
             &err);
    CHECK_INT(err.code, ==, SK_E_ARG);
}

TEST(parse_bad_options_keep_the_segment)
{
    uint8_t pkt[128], opt[8];
    size_t len;
    sk_segment seg;
    sk_err err;

    /* MSS, then an option claiming 40 bytes in an 8-byte option area */
    opt[0] = 2; opt[1] = 4; put16(opt + 2, 1460);
    opt[4] = 30; opt[5] = 40; opt[6] = 0; opt[7] = 0;
    len = ipv4(pkt, tcp_at(pkt + 20, 1, 2, 3, 4, 0x02, opt, 8, NULL, 0));
    CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IP, &seg, NULL, &err), SK_OK,
             &err);
    CHECK_INT(seg.opts, ==, SK_SEG_OPT_MSS | SK_SEG_OPT_BAD);
    CHECK_INT(seg.mss, ==, 1460);
    /* SACK blocks (two), and a window scale of the wrong size (ignored) */
    {
        uint8_t o[24];

        o[0] = 1; o[1] = 1;
        o[2] = 5; o[3] = 18;
        put32(o + 4, 100); put32(o + 8, 200); put32(o + 12, 300);
        put32(o + 16, 400);
        o[20] = 3; o[21] = 4; o[22] = 9; o[23] = 0;
        len = ipv4(pkt, tcp_at(pkt + 20, 1, 2, 3, 4, 0x10, o, 24, NULL, 0));
        CHECK_RC(sk_capture_parse(pkt, len, 0, ETH_P_IP, &seg, NULL, &err),
                 SK_OK, &err);
        CHECK_INT(seg.opts, ==, SK_SEG_OPT_SACK);
        CHECK_INT(seg.nsack, ==, 2);
        CHECK_U64(seg.sack[1][0], ==, 300);
        CHECK_U64(seg.sack[1][1], ==, 400);
    }
}

/* -------------------------------------------------------------- filter */

TEST(filter_builder)
{
    struct sock_filter code[SK_CAPTURE_FILTER_MAX];
    uint16_t ports[SK_CAPTURE_MAX_PORTS + 1];
    size_t n = 0, i, all;
    sk_err err;

    for (i = 0; i <= SK_CAPTURE_MAX_PORTS; i++)
        ports[i] = (uint16_t)(1000 + i);
    CHECK_RC(sk_capture_build_filter(NULL, 0, 200, code, SK_CAPTURE_FILTER_MAX,
                                     &n, &err), SK_OK, &err);
    all = n;
    CHECK_U64(all, >, 8);
    CHECK_INT(code[n - 2].code, ==, BPF_RET | BPF_K);
    CHECK_U64(code[n - 2].k, ==, 200);
    CHECK_INT(code[n - 1].code, ==, BPF_RET | BPF_K);
    CHECK_U64(code[n - 1].k, ==, 0);
    CHECK_RC(sk_capture_build_filter(ports, SK_CAPTURE_MAX_PORTS, 248, code,
                                     SK_CAPTURE_FILTER_MAX, &n, &err),
             SK_OK, &err);
    /* two loads and one compare per port, for each family and direction */
    CHECK_U64(n, ==, all - 2 + 4 + 4 * SK_CAPTURE_MAX_PORTS);
    /* every jump lands inside the program */
    for (i = 0; i < n; i++) {
        if (BPF_CLASS(code[i].code) == BPF_JMP) {
            CHECK_U64(i + 1 + code[i].jt, <, n);
            CHECK_U64(i + 1 + code[i].jf, <, n);
        }
    }
    CHECK_RC(sk_capture_build_filter(ports, SK_CAPTURE_MAX_PORTS + 1, 248,
                                     code, SK_CAPTURE_FILTER_MAX, &n, &err),
             SK_ERR, &err);
    CHECK_INT(err.code, ==, SK_E_ARG);
    ports[0] = 0;
    CHECK_RC(sk_capture_build_filter(ports, 1, 248, code,
                                     SK_CAPTURE_FILTER_MAX, &n, &err),
             SK_ERR, &err);
    CHECK_RC(sk_capture_build_filter(ports + 1, 1, 0, code,
                                     SK_CAPTURE_FILTER_MAX, &n, &err),
             SK_ERR, &err);
    CHECK_RC(sk_capture_build_filter(ports + 1, 1, 248, code, 5, &n, &err),
             SK_ERR, &err);
}

/* ---------------------------------------------------------------- live */

/* Bring lo up (a new network namespace starts with it down). */
static int lo_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = -1;

    if (s < 0)
        return -1;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return rc;
}

/* A listener on 127.0.0.1; its port in *port. */
static int listener(uint16_t *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0
        || listen(ls, 4) < 0
        || getsockname(ls, (struct sockaddr *)&sa, &len) < 0) {
        if (ls >= 0)
            close(ls);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return ls;
}

/* Connect to port, send n bytes, close both ends (client first). */
static int exchange(int ls, uint16_t port, size_t n)
{
    struct sockaddr_in sa;
    char buf[64] = "0123456789012345678901234567890123456789";
    int c, s, rc = -1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(port);
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0)
        return -1;
    if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        s = accept(ls, NULL, NULL);
        if (s >= 0) {
            if (n == 0 || send(c, buf, n, 0) == (ssize_t)n)
                rc = 0;
            if (n > 0 && recv(s, buf, sizeof(buf), 0) != (ssize_t)n)
                rc = -1;
            close(c);
            close(s);
            c = -1;
        }
    }
    if (c >= 0)
        close(c);
    return rc;
}

/* The live checks; CAP_NET_RAW over the current loopback is given. */
static void live_checks(void)
{
    sk_capture_config cfg;
    sk_capture *cap = NULL;
    sk_capture_stats st;
    sk_segment segs[16];
    uint8_t pay[16 * 8];
    sk_err err;
    uint16_t port, other_port;
    uint64_t seen = 0;
    int64_t t0;
    int ls, other;
    size_t n, i;

    ls = listener(&port);
    other = listener(&other_port);
    CHECK(ls >= 0 && other >= 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.ports[0] = port;
    cfg.nports = 1;
    cfg.payload_bytes = 8;
    t0 = sk_now_ns();
    CHECK_RC(sk_capture_start(&cfg, &cap, &err), SK_OK, &err);
    if (cap == NULL)
        goto out;
    CHECK_INT(exchange(other, other_port, 5), ==, 0); /* not ours */
    CHECK_INT(exchange(ls, port, 13), ==, 0);
    /* SYN, SYN|ACK, ACK, data, ACK, FIN, FIN|ACK (or ACK, FIN), ACK */
    CHECK_RC(sk_capture_wait(cap, 7, sk_deadline_after(5.0 * sk_test_time_scale()),
                             NULL, &seen), SK_OK, NULL);
    CHECK_U64(seen, >=, 7);
    sk_capture_stop(cap);
    sk_capture_stop(cap); /* idempotent */
    sk_capture_get_stats(cap, &st);
    CHECK(!st.running && !st.timed_out);
    CHECK_INT(st.err.code, ==, SK_E_NONE);
    /* the start waited for the kernel's arrival stamps (a loopback probe) */
    CHECK(st.stamps_on);
    CHECK_U64(st.ring_dropped + st.kernel_dropped + st.malformed, ==, 0);
    CHECK_U64(st.payload_bytes, ==, 8);
    n = sk_capture_segments(cap, 0, segs, pay, 16);
    CHECK_U64(n, ==, st.kept);
    CHECK_U64(n, >=, 7);
    CHECK_U64(n, <=, 9);
    if (n < 7 || n > 16)
        goto out;
    /* only our port, each segment once, stamped in order and in time */
    for (i = 0; i < n; i++) {
        CHECK(segs[i].sport == port || segs[i].dport == port);
        CHECK_U64(segs[i].t_ns, >=, t0);
        CHECK_U64(segs[i].t_ns, <=, sk_now_ns());
        if (i > 0)
            CHECK_U64(segs[i].t_ns, >=, segs[i - 1].t_ns);
    }
    CHECK_INT(segs[0].flags, ==, SK_TCP_FLAG_SYN);
    CHECK_INT(segs[0].dport, ==, port);
    CHECK(segs[0].opts & SK_SEG_OPT_MSS);
    CHECK_INT(segs[1].flags, ==, SK_TCP_FLAG_SYN | SK_TCP_FLAG_ACK);
    CHECK_U64(segs[1].ack, ==, segs[0].seq + 1u);
    CHECK_INT(segs[2].flags, ==, SK_TCP_FLAG_ACK);
    CHECK_U64(segs[2].ack, ==, segs[1].seq + 1u);
    CHECK_INT(segs[3].flags, ==, SK_TCP_FLAG_PSH | SK_TCP_FLAG_ACK);
    CHECK_U64(segs[3].length, ==, 13);
    CHECK_U64(segs[3].caplen, ==, 8); /* payload_bytes */
    CHECK_MEM(pay + 3 * 8, "01234567", 8);
    /* the other side of the ring: copy from an offset */
    CHECK_U64(sk_capture_segments(cap, 2, segs, NULL, 1), ==, n);
    CHECK_INT(segs[0].flags, ==, SK_TCP_FLAG_ACK);
out:
    sk_capture_free(cap);
    cap = NULL;

    /* a full ring keeps the first segments and counts the rest */
    cfg.max_segments = 2;
    CHECK_RC(sk_capture_start(&cfg, &cap, &err), SK_OK, &err);
    if (cap != NULL) {
        CHECK_INT(exchange(ls, port, 0), ==, 0);
        (void)sk_capture_wait(cap, 5, sk_deadline_after(5.0 * sk_test_time_scale()),
                              NULL, &seen);
        sk_capture_stop(cap);
        sk_capture_get_stats(cap, &st);
        CHECK_U64(st.kept, ==, 2);
        CHECK_U64(st.seen, >=, 5);
        CHECK_U64(st.ring_dropped, ==, st.seen - 2);
        CHECK_U64(sk_capture_segments(cap, 0, segs, NULL, 16), ==, 2);
        CHECK_INT(segs[0].flags, ==, SK_TCP_FLAG_SYN);
        sk_capture_free(cap);
        cap = NULL;
    }

    /* bounded in time: the thread ends by itself; a wait with a deadline
     * times out while it runs */
    cfg.max_segments = 0;
    cfg.max_duration_ns = 300000000; /* 0.3 s */
    CHECK_RC(sk_capture_start(&cfg, &cap, &err), SK_OK, &err);
    if (cap != NULL) {
        CHECK_RC(sk_capture_wait(cap, 1, sk_deadline_after(0.01), NULL, &seen),
                 SK_TIMEOUT, NULL);
        CHECK_U64(seen, ==, 0);
        CHECK_RC(sk_capture_wait(cap, 1, sk_deadline_after(10.0 * sk_test_time_scale()),
                                 NULL, &seen), SK_OK, NULL);
        sk_capture_get_stats(cap, &st);
        CHECK(!st.running && st.timed_out);
        CHECK_U64(st.end_ns - st.start_ns, >=, 300000000);
        sk_capture_free(cap);
        cap = NULL;
    }
    cfg.ifname = "no-such-if0";
    CHECK_RC(sk_capture_start(&cfg, &cap, &err), SK_ERR, &err);
    CHECK(strstr(err.msg, "no-such-if0") != NULL);
    CHECK(cap == NULL);
    close(ls);
    close(other);
}

/* Run the live checks in a child in a private user + network namespace;
 * returns its failed-check count (or 100 if it could not get there). */
static int live_in_namespace(void)
{
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    pid_t pid;
    int status = 0, fd;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        return 100;
    if (pid == 0) {
        if (unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0)
            _exit(100);
        fd = open("/proc/self/setgroups", O_WRONLY);
        if (fd >= 0) {
            (void)!write(fd, "deny", 4);
            close(fd);
        }
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
        fd = open("/proc/self/uid_map", O_WRONLY);
        if (fd < 0 || write(fd, map, strlen(map)) < 0)
            _exit(100);
        close(fd);
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
        fd = open("/proc/self/gid_map", O_WRONLY);
        if (fd < 0 || write(fd, map, strlen(map)) < 0)
            _exit(100);
        close(fd);
        if (lo_up() < 0)
            _exit(100);
        live_checks();
        fflush(stdout);
        fflush(stderr);
        _exit(sk_check_failures() > 99 ? 99 : (int)sk_check_failures());
    }
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
        return 100;
    return WEXITSTATUS(status);
}

TEST(live_capture_on_loopback)
{
    sk_capture_config cfg;
    sk_capture *cap = NULL;
    sk_err err;
    int r;

    memset(&cfg, 0, sizeof(cfg));
    r = sk_capture_start(&cfg, &cap, &err);
    if (r == SK_OK) {
        sk_capture_free(cap);
        live_checks(); /* root: the host's loopback */
        return;
    }
    /* no CAP_NET_RAW here: a typed, named error ... */
    CHECK_INT(err.sys_errno, ==, EPERM);
    CHECK_STR(err.syscall, "socket(AF_PACKET)");
    CHECK(cap == NULL);
    /* ... and the same checks in a namespace of our own */
    sk_test_note("no CAP_NET_RAW: live checks in a private user+net namespace");
    CHECK_INT(live_in_namespace(), ==, 0);
}
