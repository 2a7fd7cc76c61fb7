/*
 * fuzz_capture.c - libFuzzer harness for the packet parser and the filter
 * builder of the segment capture (csrc/core/capture.h).
 *
 * sk_capture_parse reads packets straight from an AF_PACKET socket (after
 * a BPF filter, but the parser must not trust it); the harness feeds it
 * arbitrary bytes.  Input layout (seeds written by tests/fuzz/make_corpus.py
 * from real loopback packets):
 *
 *   byte 0       bits 0-1: the ethertype passed (0: none, the version
 *                nibble decides; 1: IPv4; 2: IPv6; 3: bytes 1-2 as is);
 *                bits 2-7: extra wire length beyond the buffer (a snap
 *                length cut the packet), times 16
 *   bytes 1..2   the ethertype when bits 0-1 of byte 0 are 3 (big endian)
 *   byte 3       how many ports (0..16+) the filter builder is given, taken
 *                from the packet bytes
 *   bytes 4..    the packet, from the network header on
 *
 * Checks: no out-of-bounds read (ASan), no UB (UBSan); SK_OK or SK_ERR
 * with SK_E_PROTOCOL and a message; on SK_OK the payload lies inside the
 * buffer, caplen <= length, the header length fits, the ports and sequence
 * numbers are the bytes at the TCP header (an independent re-read); every
 * prefix of an accepted packet parses or fails cleanly; the filter builder
 * accepts up to 16 non-zero ports and every jump it writes lands inside
 * the program.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/capture.h"

#define CFG_BYTES 4

#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_capture: %s:%d: check failed: %s\n",      \
                    __FILE__, __LINE__, #cond);                             \
            abort();                                                        \
        }                                                                   \
    } while (0)

static volatile uint64_t sink;

static void check_one(const uint8_t *pkt, size_t len, size_t wire,
                      unsigned eth, int recurse)
{
    sk_segment seg;
    const uint8_t *payload = (const uint8_t *)"sentinel";
    sk_err err;
    size_t tcp;
    int rc;

    memset(&err, 0, sizeof(err));
    rc = sk_capture_parse(len ? pkt : NULL, len, wire, eth, &seg, &payload,
                          &err);
    REQUIRE(rc == SK_OK || rc == SK_ERR);
    if (rc == SK_ERR) {
        REQUIRE(err.code == SK_E_PROTOCOL);
        REQUIRE(memchr(err.msg, 0, sizeof(err.msg)) != NULL);
        REQUIRE(err.msg[0] != '\0');
        REQUIRE(payload == NULL);
        return;
    }
    REQUIRE(seg.family == AF_INET || seg.family == AF_INET6);
    REQUIRE(seg.hdr_len >= 40 && seg.hdr_len <= len);
    REQUIRE(seg.caplen <= seg.length);
    REQUIRE(seg.caplen <= len - seg.hdr_len);
    REQUIRE(seg.nsack <= SK_SEG_MAX_SACK);
    REQUIRE(seg.t_ns == 0);
    if (seg.caplen > 0) {
        REQUIRE(payload == pkt + seg.hdr_len);
        sink += payload[seg.caplen - 1];
    } else {
        REQUIRE(payload == NULL);
    }
    if (seg.family == AF_INET) {
        static const uint8_t zero[12];

        REQUIRE(memcmp(seg.src + 4, zero, 12) == 0);
        REQUIRE(memcmp(seg.dst + 4, zero, 12) == 0);
    }
    /* the TCP header: right after the IPv4 header, or after the IPv6
     * header chain (found by search; data offset, ports and flags agree) */
    if (seg.family == AF_INET) {
        tcp = (size_t)(pkt[0] & 0x0f) * 4;
    } else {
        /* an independent walk of the extension headers */
        unsigned nh = pkt[6];

        tcp = 40;
        while (nh != 6 && tcp + 8 <= len) {
            size_t hl = nh == 44 ? 8
                      : nh == 51 ? ((size_t)pkt[tcp + 1] + 2) * 4
                                 : ((size_t)pkt[tcp + 1] + 1) * 8;

            nh = pkt[tcp];
            tcp += hl;
        }
        REQUIRE(nh == 6);
    }
    REQUIRE(tcp + 20 <= seg.hdr_len);
    REQUIRE(((pkt[tcp] << 8) | pkt[tcp + 1]) == seg.sport);
    REQUIRE(((pkt[tcp + 2] << 8) | pkt[tcp + 3]) == seg.dport);
    REQUIRE(pkt[tcp + 13] == seg.flags);
    REQUIRE(((uint32_t)pkt[tcp + 4] << 24 | (uint32_t)pkt[tcp + 5] << 16
             | (uint32_t)pkt[tcp + 6] << 8 | pkt[tcp + 7]) == seg.seq);
    if (recurse) {
        size_t cut;

        /* every prefix: parses (a snap length) or fails cleanly */
        for (cut = 0; cut < len; cut += 1 + cut / 8)
            check_one(pkt, cut, wire, eth, 0);
    }
    sink += seg.seq + seg.ack + seg.window + seg.mss + seg.wscale + seg.tsval;
}

static void check_filter(const uint8_t *data, size_t size, unsigned want)
{
    struct sock_filter code[SK_CAPTURE_FILTER_MAX];
    uint16_t ports[SK_CAPTURE_MAX_PORTS + 8];
    size_t n = 0, i, np = 0;
    int bad = 0, rc;
    sk_err err;

    for (i = 0; i < want && i < SK_CAPTURE_MAX_PORTS + 8 && 2 * i + 1 < size;
         i++) {
        ports[i] = (uint16_t)((data[2 * i] << 8) | data[2 * i + 1]);
        bad |= ports[i] == 0;
        np++;
    }
    rc = sk_capture_build_filter(ports, np, 120 + (uint32_t)size, code,
                                 SK_CAPTURE_FILTER_MAX, &n, &err);
    if (np > SK_CAPTURE_MAX_PORTS || bad) {
        REQUIRE(rc == SK_ERR && err.code == SK_E_ARG && n == 0);
        return;
    }
    REQUIRE(rc == SK_OK && n > 0 && n <= SK_CAPTURE_FILTER_MAX);
    REQUIRE(code[n - 1].code == (BPF_RET | BPF_K) && code[n - 1].k == 0);
    for (i = 0; i < n; i++) {
        if (BPF_CLASS(code[i].code) == BPF_JMP) {
            REQUIRE(i + 1 + code[i].jt < n);
            REQUIRE(i + 1 + code[i].jf < n);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned eths[3] = {0, 0x0800, 0x86dd};
    unsigned eth;
    size_t len, wire;

    if (size < CFG_BYTES)
        return 0;
    eth = (data[0] & 3) == 3 ? (unsigned)((data[1] << 8) | data[2])
                             : eths[data[0] & 3];
    len = size - CFG_BYTES;
    wire = len + (size_t)(data[0] >> 2) * 16;
    check_one(data + CFG_BYTES, len, wire, eth, 1);
    check_filter(data + CFG_BYTES, len, data[3] % 24);
    return 0;
}
