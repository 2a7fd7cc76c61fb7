/* test_frame.c - the sans-IO frame codec (frame.h): header helpers, framing
 * validation, and the decoder fed one byte at a time, in seeded random
 * splits and through reserve/commit; limits, sticky errors, finish/missing,
 * idle, garbage input. */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"

static const unsigned hsizes[4] = {1, 2, 4, 8};

static sk_framing framing(unsigned hs, int little, uint64_t max)
{
    sk_framing f;

    memset(&f, 0, sizeof(f));
    f.header_size = hs;
    f.little_endian = little;
    f.max_frame = max;
    return f;
}

/* ---- header helpers --------------------------------------------------- */

TEST(header_limit)
{
    CHECK_U64(sk_header_limit(1), ==, 0xffu);
    CHECK_U64(sk_header_limit(2), ==, 0xffffu);
    CHECK_U64(sk_header_limit(4), ==, 0xffffffffu);
    CHECK_U64(sk_header_limit(8), ==, UINT64_MAX);
    CHECK_U64(sk_header_limit(0), ==, 0);
    CHECK_U64(sk_header_limit(3), ==, 0);
    CHECK_U64(sk_header_limit(5), ==, 0);
    CHECK_U64(sk_header_limit(7), ==, 0);
    CHECK_U64(sk_header_limit(16), ==, 0);
    CHECK_U64(sk_header_limit(~0u), ==, 0);
}

TEST(framing_check)
{
    static const unsigned bad_hs[] = {0, 3, 5, 6, 7, 9, 16, 32, ~0u};
    sk_framing f;
    sk_err err;
    size_t i;
    int le;

    for (le = 0; le < 2; le++) {
        for (i = 0; i < 4; i++) {
            unsigned hs = hsizes[i];
            uint64_t lim = sk_header_limit(hs);

            f = framing(hs, le, 1);
            CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
            f = framing(hs, le, lim);
            CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
            f = framing(hs, le, 0);
            sk_err_clear(&err);
            CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_ARG);
            CHECK(err.msg[0] != '\0');
            if (lim != UINT64_MAX) {
                f = framing(hs, le, lim + 1);
                sk_err_clear(&err);
                CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
                CHECK_INT(err.code, ==, SK_E_ARG);
                f = framing(hs, le, UINT64_MAX);
                CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
            }
        }
        for (i = 0; i < sizeof(bad_hs) / sizeof(bad_hs[0]); i++) {
            f = framing(bad_hs[i], le, 100);
            sk_err_clear(&err);
            CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_ARG);
        }
    }
}

TEST(header_roundtrip)
{
    static const uint64_t values[] = {
        0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x100, 0x1234, 0x7fff, 0x8000,
        0xfffe, 0xffff, 0x10000, 0x123456, 0x12345678, 0x7fffffff,
        0x80000000, 0xffffffff, 0x100000000ull, 0x0102030405060708ull,
        0x7fffffffffffffffull, 0x8000000000000000ull, UINT64_MAX};
    size_t i, v;
    int le;

    for (i = 0; i < 4; i++) {
        unsigned hs = hsizes[i];
        uint64_t lim = sk_header_limit(hs);

        for (le = 0; le < 2; le++) {
            sk_framing f = framing(hs, le, lim);

            for (v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
                unsigned char out[16], ref[16];

                if (values[v] > lim)
                    continue;
                memset(out, 0xee, sizeof(out));
                sk_encode_header(&f, values[v], out);
                ref_put_len(ref, hs, le, values[v]);
                CHECK_MEM(out, ref, hs);
                /* exactly header_size bytes written */
                CHECK_INT(out[hs], ==, 0xee);
                CHECK_U64(sk_decode_header(&f, ref), ==, values[v]);
            }
        }
    }
}

TEST(header_byte_order)
{
    sk_framing f;
    unsigned char out[8];
    static const unsigned char be4[] = {1, 2, 3, 4};
    static const unsigned char le4[] = {4, 3, 2, 1};
    static const unsigned char be8[] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const unsigned char le8[] = {8, 7, 6, 5, 4, 3, 2, 1};
    static const unsigned char be2[] = {0x12, 0x34};
    static const unsigned char le2[] = {0x34, 0x12};

    f = framing(4, 0, 0xffffffffu);
    sk_encode_header(&f, 0x01020304u, out);
    CHECK_MEM(out, be4, 4);
    f.little_endian = 1;
    sk_encode_header(&f, 0x01020304u, out);
    CHECK_MEM(out, le4, 4);
    f = framing(8, 0, UINT64_MAX);
    sk_encode_header(&f, 0x0102030405060708ull, out);
    CHECK_MEM(out, be8, 8);
    CHECK_U64(sk_decode_header(&f, be8), ==, 0x0102030405060708ull);
    f.little_endian = 1;
    sk_encode_header(&f, 0x0102030405060708ull, out);
    CHECK_MEM(out, le8, 8);
    CHECK_U64(sk_decode_header(&f, be8), ==, 0x0807060504030201ull);
    f = framing(2, 0, 0xffff);
    sk_encode_header(&f, 0x1234, out);
    CHECK_MEM(out, be2, 2);
    f.little_endian = 1;
    sk_encode_header(&f, 0x1234, out);
    CHECK_MEM(out, le2, 2);
    f = framing(1, 1, 0xff);
    sk_encode_header(&f, 0xab, out);
    CHECK_INT(out[0], ==, 0xab);
}

TEST(encode_headers_batch)
{
    size_t i;
    int le;

    for (i = 0; i < 4; i++) {
        for (le = 0; le < 2; le++) {
            unsigned hs = hsizes[i];
            uint64_t max = hs == 1 ? 200 : 60000;
            sk_framing f = framing(hs, le, max);
            size_t lens[5] = {0, 1, 17, (size_t)max - 1, (size_t)max};
            unsigned char out[5 * 8 + 8], ref[5 * 8];
            size_t k;
            sk_err err;

            memset(out, 0xee, sizeof(out));
            sk_err_clear(&err);
            CHECK_RC(sk_encode_headers(&f, lens, 5, out, &err), SK_OK, &err);
            for (k = 0; k < 5; k++)
                ref_put_len(ref + k * hs, hs, le, lens[k]);
            CHECK_MEM(out, ref, 5 * hs);
            CHECK_INT(out[5 * hs], ==, 0xee);

            /* n = 0: nothing to do */
            memset(out, 0xee, sizeof(out));
            CHECK_RC(sk_encode_headers(&f, lens, 0, out, &err), SK_OK, &err);
            CHECK_INT(out[0], ==, 0xee);

            /* one too large (index 3): nothing written, detail = index */
            lens[3] = (size_t)max + 1;
            memset(out, 0xee, sizeof(out));
            sk_err_clear(&err);
            CHECK_RC(sk_encode_headers(&f, lens, 5, out, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_TOO_LARGE);
            CHECK_U64(err.detail, ==, 3);
            for (k = 0; k < sizeof(out); k++)
                if (out[k] != 0xee)
                    break;
            CHECK_U64(k, ==, sizeof(out));

            /* the last one too large */
            lens[3] = 5;
            lens[4] = (size_t)max + 1000;
            sk_err_clear(&err);
            CHECK_RC(sk_encode_headers(&f, lens, 5, out, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_TOO_LARGE);
            CHECK_U64(err.detail, ==, 4);
            for (k = 0; k < sizeof(out); k++)
                if (out[k] != 0xee)
                    break;
            CHECK_U64(k, ==, sizeof(out));
        }
    }
}

/* ---- a reference stream and a checking drain ---------------------------- */

typedef struct ref_stream {
    unsigned char *bytes;
    size_t len;
    size_t *flen; /* payload length of frame k */
    size_t n;
    size_t largest;
} ref_stream;

/* n frames with mixed sizes (many empty ones), each at most max. */
static int ref_stream_make(ref_stream *s, sk_rng *r, unsigned hs, int le,
                           uint64_t max, size_t n, size_t big)
{
    size_t k, total = 0, off = 0;

    memset(s, 0, sizeof(*s));
    s->flen = calloc(n ? n : 1, sizeof(*s->flen));
    if (s->flen == NULL)
        return -1;
    s->n = n;
    for (k = 0; k < n; k++) {
        uint64_t pick = rng_below(r, 100), len;

        if (pick < 20)
            len = 0;
        else if (pick < 60)
            len = 1 + rng_below(r, 20);
        else if (pick < 95)
            len = rng_below(r, 2000);
        else
            len = rng_below(r, big + 1);
        if (len > max)
            len = max;
        s->flen[k] = (size_t)len;
        if (len > s->largest)
            s->largest = (size_t)len;
        total += hs + (size_t)len;
    }
    s->bytes = malloc(total ? total : 1);
    if (s->bytes == NULL) {
        free(s->flen);
        return -1;
    }
    for (k = 0; k < n; k++) {
        ref_put_len(s->bytes + off, hs, le, s->flen[k]);
        off += hs;
        ref_fill(s->bytes + off, s->flen[k], k);
        off += s->flen[k];
    }
    s->len = total;
    return 0;
}

static void ref_stream_free(ref_stream *s)
{
    free(s->bytes);
    free(s->flen);
}

typedef struct drain_state {
    size_t next_k;   /* next frame expected */
    size_t fed;      /* bytes given to the decoder */
    size_t taken;    /* bytes returned as frames (headers + payloads) */
    int bad;         /* a failure was reported: stop */
} drain_state;

/* Take every complete frame and compare with the reference. */
static void drain(sk_decoder *d, const ref_stream *s, drain_state *st)
{
    unsigned hs = d->f.header_size;
    int guard;

    for (guard = 0; guard < 1000000 && !st->bad; guard++) {
        sk_frame fr;
        size_t i;
        int rc = sk_decoder_next(d, &fr);

        if (rc == SK_NEED_DATA)
            break;
        if (rc != SK_OK) {
            CHECK_RC(rc, SK_OK, &d->err);
            st->bad = 1;
            break;
        }
        if (st->next_k >= s->n) {
            CHECK(!"more frames than were sent");
            st->bad = 1;
            break;
        }
        if (fr.len != s->flen[st->next_k]) {
            CHECK_U64(fr.len, ==, s->flen[st->next_k]);
            st->bad = 1;
            break;
        }
        for (i = 0; i < fr.len; i++)
            if (fr.data[i] != ref_byte(st->next_k, i))
                break;
        if (i != fr.len) {
            sk_check_fail(__FILE__, __LINE__,
                          "frame %zu: payload differs at offset %zu",
                          st->next_k, i);
            st->bad = 1;
            break;
        }
        st->taken += hs + fr.len;
        st->next_k++;
    }
    if (!st->bad && sk_decoder_buffered(d) != st->fed - st->taken) {
        CHECK_U64(sk_decoder_buffered(d), ==, st->fed - st->taken);
        st->bad = 1;
    }
}

/* Every frame came out, in order, nothing left over. */
static void drain_done(sk_decoder *d, const ref_stream *s, drain_state *st)
{
    sk_err err;

    if (st->bad)
        return;
    CHECK_U64(st->next_k, ==, s->n);
    CHECK_U64(d->frames, ==, s->n);
    CHECK_U64(sk_decoder_buffered(d), ==, 0);
    CHECK_U64(sk_decoder_missing(d), ==, 0);
    CHECK_RC(sk_decoder_finish(d, &err), SK_OK, &err);
    CHECK_INT(d->err.code, ==, SK_E_NONE);
}

static uint64_t max_for(unsigned hs)
{
    return hs == 1 ? 255 : hs == 2 ? 65535 : 100000;
}

TEST(decoder_one_byte_at_a_time)
{
    size_t i;
    int le;

    for (i = 0; i < 4; i++) {
        for (le = 0; le < 2; le++) {
            unsigned hs = hsizes[i];
            sk_framing f = framing(hs, le, max_for(hs));
            sk_rng r = {0x9e3779b97f4a7c15ull + i * 2 + (unsigned)le};
            ref_stream s;
            drain_state st = {0};
            sk_decoder d;
            size_t off;

            if (ref_stream_make(&s, &r, hs, le, f.max_frame, 400, 20000))
                continue;
            sk_decoder_init(&d, &f);
            for (off = 0; off < s.len && !st.bad; off++) {
                int rc = sk_decoder_feed(&d, s.bytes + off, 1);
                if (rc != SK_OK) {
                    CHECK_RC(rc, SK_OK, &d.err);
                    break;
                }
                st.fed++;
                drain(&d, &s, &st);
            }
            drain_done(&d, &s, &st);
            sk_decoder_free(&d);
            ref_stream_free(&s);
        }
    }
}

TEST(decoder_random_splits)
{
    static const uint64_t seeds[] = {1, 2, 42, 0xdeadbeef, 0x123456789abcull,
                                     7777777};
    size_t i, si;
    int le;

    for (si = 0; si < sizeof(seeds) / sizeof(seeds[0]); si++) {
        for (i = 0; i < 4; i++) {
            for (le = 0; le < 2; le++) {
                unsigned hs = hsizes[i];
                sk_framing f = framing(hs, le, max_for(hs));
                sk_rng r = {seeds[si] * 0x2545f4914f6cdd1dull + i * 2 +
                            (unsigned)le + 1};
                ref_stream s;
                drain_state st = {0};
                sk_decoder d;
                size_t off = 0, max_chunk = 0;
                int guard;

                if (ref_stream_make(&s, &r, hs, le, f.max_frame, 600, 90000))
                    continue;
                sk_decoder_init(&d, &f);
                for (guard = 0; off < s.len && !st.bad && guard < 1000000;
                     guard++) {
                    uint64_t pick = rng_below(&r, 10);
                    size_t n = pick < 6 ? (size_t)rng_below(&r, 16)
                               : pick < 9 ? (size_t)rng_below(&r, 3000)
                                          : (size_t)rng_below(&r, 150000);
                    int rc;

                    if (n > s.len - off)
                        n = s.len - off;
                    if (n > max_chunk)
                        max_chunk = n;
                    rc = sk_decoder_feed(&d, s.bytes + off, n);
                    if (rc != SK_OK) {
                        CHECK_RC(rc, SK_OK, &d.err);
                        break;
                    }
                    off += n;
                    st.fed += n;
                    drain(&d, &s, &st);
                }
                drain_done(&d, &s, &st);
                /* bounded memory: nothing like a multiple of the stream */
                CHECK_U64(d.buf.cap, <=,
                          4 * (max_chunk + s.largest + hs) +
                              4 * SK_READ_AHEAD);
                sk_decoder_free(&d);
                ref_stream_free(&s);
            }
        }
    }
}

TEST(decoder_reserve_commit)
{
    static const uint64_t seeds[] = {3, 99, 0xabcdef, 31337, 0xfeedface};
    size_t i, si;
    int le;

    for (si = 0; si < sizeof(seeds) / sizeof(seeds[0]); si++) {
        for (i = 0; i < 4; i++) {
            for (le = 0; le < 2; le++) {
                unsigned hs = hsizes[i];
                sk_framing f = framing(hs, le, max_for(hs));
                sk_rng r = {seeds[si] * 0x9e3779b97f4a7c15ull + i * 2 +
                            (unsigned)le + 1};
                ref_stream s;
                drain_state st = {0};
                sk_decoder d;
                size_t off = 0;
                int guard;

                if (ref_stream_make(&s, &r, hs, le, f.max_frame, 500, 90000))
                    continue;
                sk_decoder_init(&d, &f);
                for (guard = 0; off < s.len && !st.bad && guard < 1000000;
                     guard++) {
                    unsigned char *space = NULL;
                    size_t avail = 0, n, min;
                    uint64_t need = sk_decoder_missing(&d);
                    int rc;

                    min = rng_below(&r, 4) == 0 ? (size_t)rng_below(&r, 70000)
                                                : (size_t)rng_below(&r, 64);
                    rc = sk_decoder_reserve(&d, min, &space, &avail);
                    if (rc != SK_OK) {
                        CHECK_RC(rc, SK_OK, &d.err);
                        break;
                    }
                    if (avail < min || avail < need || space == NULL) {
                        sk_check_fail(__FILE__, __LINE__,
                                      "reserve(min %zu) gave %zu bytes, "
                                      "frame in progress needs %llu",
                                      min, avail, (unsigned long long)need);
                        break;
                    }
                    /* random commit size, zero now and then */
                    switch (rng_below(&r, 4)) {
                    case 0: n = 0; break;
                    case 1: n = avail; break;
                    case 2: n = 1 + (size_t)rng_below(&r, 8); break;
                    default: n = (size_t)rng_below(&r, avail + 1); break;
                    }
                    if (n > avail)
                        n = avail;
                    if (n > s.len - off)
                        n = s.len - off;
                    memcpy(space, s.bytes + off, n);
                    sk_decoder_commit(&d, n);
                    off += n;
                    st.fed += n;
                    drain(&d, &s, &st);
                }
                drain_done(&d, &s, &st);
                sk_decoder_free(&d);
                ref_stream_free(&s);
            }
        }
    }
}

TEST(decoder_empty_frames)
{
    sk_framing f = framing(1, 0, 10);
    unsigned char zeros[1000];
    sk_decoder d;
    sk_frame fr;
    int k, rc = SK_OK;

    memset(zeros, 0, sizeof(zeros));
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, zeros, sizeof(zeros)), SK_OK, &d.err);
    for (k = 0; k < 1000; k++) {
        fr.len = 99;
        rc = sk_decoder_next(&d, &fr);
        if (rc != SK_OK || fr.len != 0)
            break;
    }
    CHECK_INT(k, ==, 1000);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(d.frames, ==, 1000);
    CHECK_U64(sk_decoder_buffered(&d), ==, 0);
    sk_decoder_free(&d);
}

TEST(decoder_init_no_alloc_and_reuse)
{
    sk_framing f = framing(4, 0, 1000);
    unsigned char frame[4 + 3] = {0, 0, 0, 3, 'a', 'b', 'c'};
    sk_decoder d;
    sk_frame fr;
    sk_err err;

    memset(&d, 0x77, sizeof(d));
    sk_decoder_init(&d, &f);
    CHECK(d.buf.data == NULL);
    CHECK_U64(d.buf.cap, ==, 0);
    CHECK_INT(d.err.code, ==, SK_E_NONE);
    CHECK_U64(d.frames, ==, 0);
    CHECK_U64(sk_decoder_buffered(&d), ==, 0);
    CHECK_U64(sk_decoder_missing(&d), ==, 0);
    CHECK_RC(sk_decoder_finish(&d, &err), SK_OK, &err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_RC(sk_decoder_feed(&d, frame, 0), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    sk_decoder_free(&d);
    sk_decoder_free(&d); /* harmless */

    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, frame, sizeof(frame)), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_U64(fr.len, ==, 3);
    CHECK_MEM(fr.data, "abc", 3);
    sk_decoder_free(&d);
    /* re-initialised after free */
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, frame, sizeof(frame)), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_MEM(fr.data, "abc", 3);
    sk_decoder_free(&d);
}

TEST(decoder_max_frame_boundary)
{
    size_t i;
    int le;

    for (i = 0; i < 4; i++) {
        for (le = 0; le < 2; le++) {
            unsigned hs = hsizes[i];
            uint64_t max = hs == 1 ? 100 : 1000;
            sk_framing f = framing(hs, le, max);
            unsigned char *buf = calloc(1, 8 + max + 8);
            sk_decoder d;
            sk_frame fr;

            if (!buf)
                continue;
            /* exactly max: fine */
            ref_put_len(buf, hs, le, max);
            ref_fill(buf + hs, max, 5);
            sk_decoder_init(&d, &f);
            CHECK_RC(sk_decoder_feed(&d, buf, hs + max), SK_OK, &d.err);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
            CHECK_U64(fr.len, ==, max);
            CHECK_MEM(fr.data, buf + hs, max);
            /* max + 1: too large, detail = declared length */
            ref_put_len(buf, hs, le, max + 1);
            sk_decoder_feed(&d, buf, hs);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
            CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
            CHECK_U64(d.err.detail, ==, max + 1);
            CHECK(d.err.msg[0] != '\0');
            sk_decoder_free(&d);
            free(buf);
        }
    }
}

/* A huge declared length: sticky SK_E_TOO_LARGE and no allocation
 * proportional to it, whichever call notices it first. */
static void check_oversized(unsigned hs, int le, uint64_t max,
                            uint64_t declared, int via_reserve)
{
    sk_framing f = framing(hs, le, max);
    unsigned char hdr[8], good[8 + 5];
    unsigned char *space;
    size_t avail;
    sk_decoder d;
    sk_frame fr;
    int rc;
    /* "small": nothing like the declared size was allocated */
    uint64_t small = max > 4 * SK_READ_AHEAD ? max : 4 * SK_READ_AHEAD;

    sk_decoder_init(&d, &f);
    /* a good frame first: it still comes out */
    ref_put_len(good, hs, le, 5);
    memcpy(good + hs, "hello", 5);
    CHECK_RC(sk_decoder_feed(&d, good, hs + 5), SK_OK, &d.err);
    ref_put_len(hdr, hs, le, declared);
    if (via_reserve) {
        rc = sk_decoder_reserve(&d, hs, &space, &avail);
        CHECK_RC(rc, SK_OK, &d.err);
        if (rc == SK_OK && avail >= hs) {
            memcpy(space, hdr, hs);
            sk_decoder_commit(&d, hs);
        }
        /* asking for room now must not allocate `declared` bytes: it
         * either reports the error or gives ordinary space */
        avail = 0;
        rc = sk_decoder_reserve(&d, 16, &space, &avail);
        if (rc == SK_OK)
            CHECK_U64(avail, <, small);
        else
            CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
    } else {
        rc = sk_decoder_feed(&d, hdr, hs);
        CHECK(rc == SK_OK || rc == SK_ERR);
    }
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_U64(fr.len, ==, 5);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
    CHECK_U64(d.err.detail, ==, declared);
    CHECK_U64(d.buf.cap, <, small);
    /* sticky: every later call fails with the same record */
    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_RC(sk_decoder_feed(&d, "xyz", 3), SK_ERR, &d.err);
    CHECK_RC(sk_decoder_reserve(&d, 10, &space, &avail), SK_ERR, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
    CHECK_U64(d.err.detail, ==, declared);
    CHECK_U64(d.buf.cap, <, small);
    sk_decoder_free(&d);
}

TEST(decoder_too_large_is_sticky_and_allocates_nothing)
{
    int le;

    for (le = 0; le < 2; le++) {
        check_oversized(8, le, 1u << 20, 1ull << 40, 0);
        check_oversized(8, le, 1u << 20, 1ull << 40, 1);
        /* top bit set in 8-byte mode */
        check_oversized(8, le, 1u << 20, 0x8000000000000001ull, 0);
        check_oversized(8, le, 1u << 20, 0x8000000000000001ull, 1);
        check_oversized(8, le, 1u << 20, UINT64_MAX, 0);
        check_oversized(4, le, 1u << 20, 0xffffffffull, 0);
        check_oversized(4, le, 1u << 20, 0xffffffffull, 1);
        check_oversized(2, le, 1000, 0xffff, 0);
        check_oversized(1, le, 10, 11, 1);
    }
}

TEST(decoder_enormous_allowed_frame_fails_cleanly)
{
    /* max_frame = UINT64_MAX is a valid framing; a header declaring 2^62
     * passes the check, and the space it needs cannot be allocated: the
     * reserve must fail with SK_E_NOMEM (sticky), not overflow or crash. */
    sk_framing f = framing(8, 0, UINT64_MAX);
    unsigned char hdr[8], *space = NULL;
    size_t avail = 0;
    sk_decoder d;
    sk_frame fr;

    ref_put_len(hdr, 8, 0, 1ull << 62);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, hdr, 8), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, 1ull << 62);
    CHECK_RC(sk_decoder_reserve(&d, 1, &space, &avail), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_NOMEM);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_RC(sk_decoder_feed(&d, "a", 1), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_NOMEM);
    sk_decoder_free(&d);

    /* near 2^64: "what the frame still needs" must not wrap around to a
     * small number (len + header_size overflows uint64_t) */
    ref_put_len(hdr, 8, 0, UINT64_MAX - 2);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, hdr, 8), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, UINT64_MAX - 2);
    avail = 0;
    CHECK_RC(sk_decoder_reserve(&d, 1, &space, &avail), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_NOMEM);
    sk_decoder_free(&d);
}

TEST(decoder_missing_and_finish)
{
    size_t i;
    int le;

    for (i = 0; i < 4; i++) {
        for (le = 0; le < 2; le++) {
            unsigned hs = hsizes[i];
            sk_framing f = framing(hs, le, 200);
            unsigned char buf[8 + 10 + 8];
            sk_decoder d;
            sk_frame fr;
            sk_err err;
            unsigned k;

            ref_put_len(buf, hs, le, 10);
            ref_fill(buf + hs, 10, 1);
            ref_put_len(buf + hs + 10, hs, le, 0);
            sk_decoder_init(&d, &f);
            CHECK_U64(sk_decoder_missing(&d), ==, 0);
            CHECK_RC(sk_decoder_finish(&d, &err), SK_OK, &err);
            /* partial header: missing = header bytes missing */
            for (k = 1; k < hs; k++) {
                CHECK_RC(sk_decoder_feed(&d, buf + k - 1, 1), SK_OK, &d.err);
                CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
                CHECK_U64(sk_decoder_missing(&d), ==, hs - k);
                sk_err_clear(&err);
                CHECK_RC(sk_decoder_finish(&d, &err), SK_ERR, &err);
                CHECK_INT(err.code, ==, SK_E_INCOMPLETE);
                CHECK_U64(err.detail, ==, hs - k);
            }
            CHECK_RC(sk_decoder_feed(&d, buf + hs - 1, 1), SK_OK, &d.err);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
            CHECK_U64(sk_decoder_missing(&d), ==, 10);
            sk_err_clear(&err);
            CHECK_RC(sk_decoder_finish(&d, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_INCOMPLETE);
            CHECK_U64(err.detail, ==, 10);
            /* partial payload */
            CHECK_RC(sk_decoder_feed(&d, buf + hs, 4), SK_OK, &d.err);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
            CHECK_U64(sk_decoder_missing(&d), ==, 6);
            CHECK_U64(sk_decoder_buffered(&d), ==, hs + 4);
            sk_err_clear(&err);
            CHECK_RC(sk_decoder_finish(&d, &err), SK_ERR, &err);
            CHECK_INT(err.code, ==, SK_E_INCOMPLETE);
            CHECK_U64(err.detail, ==, 6);
            /* finish is not sticky: the decoder goes on */
            CHECK_INT(d.err.code, ==, SK_E_NONE);
            CHECK_RC(sk_decoder_feed(&d, buf + hs + 4, 6), SK_OK, &d.err);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
            CHECK_U64(fr.len, ==, 10);
            CHECK_MEM(fr.data, buf + hs, 10);
            CHECK_U64(sk_decoder_missing(&d), ==, 0);
            CHECK_RC(sk_decoder_finish(&d, &err), SK_OK, &err);
            /* an empty frame, header split */
            if (hs > 1) {
                CHECK_RC(sk_decoder_feed(&d, buf + hs + 10, 1), SK_OK,
                         &d.err);
                CHECK_U64(sk_decoder_missing(&d), ==, hs - 1);
                CHECK_RC(sk_decoder_feed(&d, buf + hs + 11, hs - 1), SK_OK,
                         &d.err);
            } else {
                CHECK_RC(sk_decoder_feed(&d, buf + hs + 10, 1), SK_OK,
                         &d.err);
            }
            CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
            CHECK_U64(fr.len, ==, 0);
            CHECK_U64(sk_decoder_missing(&d), ==, 0);
            CHECK_RC(sk_decoder_finish(&d, &err), SK_OK, &err);
            CHECK_U64(d.frames, ==, 2);
            sk_decoder_free(&d);
        }
    }
}

TEST(decoder_idle_frees_big_buffer)
{
    size_t big = 1u << 20;
    sk_framing f = framing(4, 0, 4u << 20);
    unsigned char *buf = malloc(4 + big);
    sk_decoder d;
    sk_frame fr;

    if (!buf)
        return;
    ref_put_len(buf, 4, 0, big);
    ref_fill(buf + 4, big, 11);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, buf, 4 + big), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_U64(fr.len, ==, big);
    CHECK_MEM(fr.data, buf + 4, big);
    CHECK_U64(d.buf.cap, >=, big);
    sk_decoder_idle(&d);
    CHECK_U64(d.buf.cap, <=, SK_BUF_KEEP);
    CHECK_U64(sk_decoder_buffered(&d), ==, 0);
    /* and it works afterwards */
    CHECK_RC(sk_decoder_feed(&d, buf, 4 + 1000), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, big - 1000);
    /* idle with a partial big frame keeps every byte */
    sk_decoder_idle(&d);
    CHECK_U64(sk_decoder_buffered(&d), ==, 4 + 1000);
    CHECK_RC(sk_decoder_feed(&d, buf + 4 + 1000, big - 1000), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_U64(fr.len, ==, big);
    CHECK_MEM(fr.data, buf + 4, big);
    sk_decoder_free(&d);
    free(buf);
}

TEST(decoder_idle_keeps_partial_frame)
{
    sk_framing f = framing(2, 1, 1000);
    unsigned char buf[2 + 10 + 2 + 20];
    sk_decoder d;
    sk_frame fr;
    int round;

    ref_put_len(buf, 2, 1, 10);
    ref_fill(buf + 2, 10, 1);
    ref_put_len(buf + 12, 2, 1, 20);
    ref_fill(buf + 14, 20, 2);
    sk_decoder_init(&d, &f);
    for (round = 0; round < 3; round++) {
        CHECK_RC(sk_decoder_feed(&d, buf, 12 + 2 + 3), SK_OK, &d.err);
        CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
        CHECK_MEM(fr.data, buf + 2, 10);
        CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
        sk_decoder_idle(&d);
        CHECK_U64(sk_decoder_buffered(&d), ==, 5);
        CHECK_U64(sk_decoder_missing(&d), ==, 17);
        /* frame.h: idle "compacts" - the taken frame's bytes are dropped */
        CHECK_U64(d.buf.start, ==, 0);
        CHECK_MEM(sk_buf_rptr(&d.buf), buf + 12, 5);
        CHECK_RC(sk_decoder_feed(&d, buf + 17, 17), SK_OK, &d.err);
        CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
        CHECK_U64(fr.len, ==, 20);
        CHECK_MEM(fr.data, buf + 14, 20);
        sk_decoder_idle(&d);
        CHECK_U64(sk_decoder_buffered(&d), ==, 0);
    }
    sk_decoder_free(&d);
}

/* Random bytes: the decoder must produce exactly the frames a reference
 * parser sees, then a sticky SK_E_TOO_LARGE at the first bad header. */
TEST(decoder_garbage_input)
{
    static const uint64_t seeds[] = {5, 6, 7, 8, 0xc0ffee, 0xbadf00d};
    size_t si, i;
    size_t glen = 64 * 1024;
    unsigned char *g = malloc(glen);

    if (!g)
        return;
    for (si = 0; si < sizeof(seeds) / sizeof(seeds[0]); si++) {
        for (i = 0; i < 4; i++) {
            unsigned hs = hsizes[i];
            int le = (int)(si & 1);
            /* max_frame high enough that several frames pass for 1/2 */
            uint64_t max = hs == 1 ? 200 : hs == 2 ? 60000 : 1000;
            sk_framing f = framing(hs, le, max);
            sk_rng r = {seeds[si] * 0x9e3779b97f4a7c15ull + i + 1};
            size_t off = 0, pos = 0, k;
            uint64_t bad_len = 0;
            int expect_err = 0, got_err = 0, guard;
            sk_decoder d;

            for (k = 0; k < glen; k++)
                g[k] = (unsigned char)rng_next(&r);
            /* reference parse: where is the first bad header? */
            while (pos + hs <= glen) {
                uint64_t len = 0;
                unsigned b;
                for (b = 0; b < hs; b++) {
                    unsigned shift = 8 * (le ? b : hs - 1 - b);
                    len |= (uint64_t)g[pos + b] << shift;
                }
                if (len > max) {
                    expect_err = 1;
                    bad_len = len;
                    break;
                }
                if (pos + hs + len > glen)
                    break;
                pos += hs + (size_t)len;
            }
            sk_decoder_init(&d, &f);
            k = 0; /* offset of the next expected frame in g */
            for (guard = 0; guard < 200000 && off < glen && !got_err;
                 guard++) {
                size_t n = 1 + (size_t)rng_below(&r, 700);
                sk_frame fr;
                int rc;

                if (n > glen - off)
                    n = glen - off;
                rc = sk_decoder_feed(&d, g + off, n);
                off += n;
                if (rc == SK_ERR) {
                    got_err = 1;
                    break;
                }
                while ((rc = sk_decoder_next(&d, &fr)) == SK_OK) {
                    uint64_t len = 0;
                    unsigned b;
                    for (b = 0; b < hs; b++) {
                        unsigned shift = 8 * (le ? b : hs - 1 - b);
                        len |= (uint64_t)g[k + b] << shift;
                    }
                    if (fr.len != len || fr.len > max ||
                        memcmp(fr.data, g + k + hs, fr.len) != 0) {
                        sk_check_fail(__FILE__, __LINE__,
                                      "garbage seed %zu hs %u: frame at "
                                      "offset %zu differs",
                                      si, hs, k);
                        got_err = 2;
                        break;
                    }
                    k += hs + fr.len;
                }
                if (rc == SK_ERR)
                    got_err = 1;
            }
            if (got_err != 2) {
                CHECK_INT(got_err, ==, expect_err);
                CHECK_U64(k, ==, pos);
                if (got_err == 1) {
                    sk_frame fr;
                    CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
                    CHECK_U64(d.err.detail, ==, bad_len);
                    CHECK_RC(sk_decoder_feed(&d, g, 10), SK_ERR, &d.err);
                    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
                    CHECK_U64(d.buf.cap, <, 4 * (glen + SK_READ_AHEAD));
                }
            }
            sk_decoder_free(&d);
        }
    }
    free(g);
}

/* ---- SK_FRAMING_CONTROL: data frames unchanged, control frames apart ---- */

TEST(control_framing_limits)
{
    size_t i;

    for (i = 0; i < 4; i++) {
        unsigned hs = hsizes[i];
        sk_framing f = framing(hs, 0, 1);
        uint64_t lim = sk_header_limit(hs) >> 1;
        unsigned char hdr[8], ref[8];
        sk_err err;

        f.flags = SK_FRAMING_CONTROL;
        CHECK_U64(sk_framing_limit(&f), ==, lim);
        f.max_frame = lim;
        CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
        f.max_frame = lim + 1;
        sk_err_clear(&err);
        CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
        CHECK_INT(err.code, ==, SK_E_ARG);
        f.flags = 0;
        CHECK_U64(sk_framing_limit(&f), ==, sk_header_limit(hs));
        CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
        /* the control marker is the top bit of the length field */
        f.flags = SK_FRAMING_CONTROL;
        CHECK_U64(sk_control_header(&f, 9), ==, (lim + 1) | 9);
        sk_encode_header(&f, sk_control_header(&f, 9), hdr);
        ref_put_len(ref, hs, 0, (lim + 1) | 9);
        CHECK_MEM(hdr, ref, hs);
    }
}

/* With correlation ids, with or without control frames, every length -
 * a plain frame's, and a correlated frame's id + payload - stays below the
 * second-highest bit, which marks a correlated frame; the largest plain
 * frame max_frame allows is sent with that bit clear and decodes plain. */
TEST(correlation_framing_limits_keep_the_id_bit_clear)
{
    size_t i;
    int ctl;

    for (i = 1; i < 4; i++) {
        for (ctl = 0; ctl < 2; ctl++) {
            unsigned hs = hsizes[i];
            uint64_t second = 1ULL << (8 * hs - 2);
            sk_framing f = framing(hs, 0, 1);
            unsigned char hdr[8 + SK_ID_LEN];
            sk_err err;

            f.flags = SK_FRAMING_IDS | (ctl ? SK_FRAMING_CONTROL : 0);
            CHECK_U64(sk_framing_limit(&f), ==, second - 1 - SK_ID_LEN);
            f.max_frame = sk_framing_limit(&f);
            CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
            sk_encode_header(&f, f.max_frame, hdr);
            CHECK_U64(sk_decode_header(&f, hdr) & second, ==, 0);
            sk_encode_header_id(&f, f.max_frame, 7, hdr);
            CHECK_U64(sk_decode_header(&f, hdr), ==, second | (second - 1));
            if (hs == 2) { /* the fuzzer's case, end to end */
                sk_decoder d;
                sk_frame fr;
                unsigned char *buf = calloc(1, 2 + f.max_frame);

                if (buf == NULL)
                    continue;
                sk_encode_header(&f, f.max_frame, buf);
                sk_decoder_init(&d, &f);
                CHECK_RC(sk_decoder_feed(&d, buf, 2 + f.max_frame), SK_OK,
                         &d.err);
                CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
                CHECK_INT(fr.has_id, ==, 0);
                CHECK_U64(fr.len, ==, f.max_frame);
                sk_decoder_free(&d);
                free(buf);
            }
        }
    }
}

typedef struct ctl_log {
    size_t n;
    unsigned char first[64]; /* type byte of each control frame seen */
    int bad;
} ctl_log;

static void ctl_collect(void *ctx, const sk_frame *fr)
{
    ctl_log *log = ctx;

    if (!fr->control || fr->len < 1 || fr->len > SK_CONTROL_MAX)
        log->bad = 1;
    else if (log->n < sizeof(log->first))
        log->first[log->n] = fr->data[0];
    log->n++;
}

/* Data frames interleaved with control frames, fed in random splits:
 * sk_decoder_scan takes every control frame out (in order), next() yields
 * exactly the data frames, in order, intact. */
TEST(control_frames_scanned_out_of_data_stream)
{
    static const uint64_t seeds[] = {21, 22, 23};
    size_t si, i;

    for (si = 0; si < 3; si++) {
        for (i = 0; i < 4; i++) {
            unsigned hs = hsizes[i];
            sk_framing f = framing(hs, (int)(si & 1),
                                   hs == 1 ? 127 : hs == 2 ? 32767 : 50000);
            sk_rng r = {seeds[si] * 7919 + i + 1};
            size_t nd = 300, nc = 0, k, off = 0, cap = 0, len = 0;
            unsigned char *wire;
            size_t *dlen = calloc(nd, sizeof(*dlen));
            ctl_log log;
            sk_decoder d;
            int guard, bad = 0;

            f.flags = SK_FRAMING_CONTROL;
            for (k = 0; k < nd && dlen; k++) {
                uint64_t pick = rng_below(&r, 10);
                dlen[k] = pick < 2 ? 0 : pick < 8 ? (size_t)rng_below(&r, 100)
                                                  : (size_t)rng_below(&r, 127);
                cap += 2 * (hs + SK_CONTROL_MAX) + hs + dlen[k];
            }
            wire = dlen ? malloc(cap) : NULL;
            if (!wire) {
                free(dlen);
                continue;
            }
            /* build: before each data frame, maybe a control frame */
            for (k = 0; k < nd; k++) {
                if (rng_below(&r, 3) == 0) {
                    size_t body = 1 + (size_t)rng_below(&r, SK_CONTROL_MAX);
                    sk_encode_header(&f, sk_control_header(&f, body),
                                     wire + len);
                    len += hs;
                    memset(wire + len, 0, body);
                    wire[len] = (unsigned char)(nc & 0xff);
                    len += body;
                    nc++;
                }
                ref_put_len(wire + len, hs, f.little_endian, dlen[k]);
                len += hs;
                ref_fill(wire + len, dlen[k], k);
                len += dlen[k];
            }
            memset(&log, 0, sizeof(log));
            sk_decoder_init(&d, &f);
            k = 0;
            for (guard = 0; guard < 100000 && off < len && !bad; guard++) {
                size_t n = 1 + (size_t)rng_below(&r, rng_below(&r, 4) ? 8
                                                                      : 400);
                sk_frame fr;
                int rc;

                if (n > len - off)
                    n = len - off;
                if (sk_decoder_feed(&d, wire + off, n) != SK_OK) {
                    CHECK_RC(SK_ERR, SK_OK, &d.err);
                    break;
                }
                off += n;
                if (sk_decoder_scan(&d, ctl_collect, &log) != SK_OK) {
                    CHECK_RC(SK_ERR, SK_OK, &d.err);
                    break;
                }
                while ((rc = sk_decoder_next(&d, &fr)) == SK_OK) {
                    size_t b;
                    if (fr.control || k >= nd || fr.len != dlen[k]) {
                        sk_check_fail(__FILE__, __LINE__,
                                      "hs %u seed %zu: data frame %zu: "
                                      "control %d len %zu want %zu",
                                      hs, si, k, fr.control, fr.len,
                                      k < nd ? dlen[k] : 0);
                        bad = 1;
                        break;
                    }
                    for (b = 0; b < fr.len; b++)
                        if (fr.data[b] != ref_byte(k, b))
                            break;
                    if (b != fr.len) {
                        sk_check_fail(__FILE__, __LINE__,
                                      "data frame %zu differs at %zu", k, b);
                        bad = 1;
                        break;
                    }
                    k++;
                }
                if (rc == SK_ERR) {
                    CHECK_RC(rc, SK_NEED_DATA, &d.err);
                    bad = 1;
                }
            }
            if (!bad) {
                CHECK_U64(k, ==, nd);
                CHECK_U64(d.frames, ==, nd);
                CHECK_U64(log.n, ==, nc);
                CHECK_INT(log.bad, ==, 0);
                for (k = 0; k < nc && k < sizeof(log.first); k++)
                    if (log.first[k] != (unsigned char)k)
                        break;
                CHECK_U64(k, ==, nc < sizeof(log.first) ? nc
                                                         : sizeof(log.first));
                CHECK_U64(sk_decoder_buffered(&d), ==, 0);
            }
            sk_decoder_free(&d);
            free(wire);
            free(dlen);
        }
    }
}

TEST(control_frame_bad_length_is_protocol_error)
{
    size_t i;

    for (i = 0; i < 4; i++) {
        unsigned hs = hsizes[i];
        sk_framing f = framing(hs, 0, 100);
        unsigned char buf[8 + SK_CONTROL_MAX + 1];
        sk_decoder d;
        sk_frame fr;
        int which;

        f.flags = SK_FRAMING_CONTROL;
        for (which = 0; which < 2; which++) {
            size_t body = which == 0 ? 0 : SK_CONTROL_MAX + 1;
            memset(buf, 0, sizeof(buf));
            sk_encode_header(&f, sk_control_header(&f, body), buf);
            sk_decoder_init(&d, &f);
            CHECK_RC(sk_decoder_feed(&d, buf, hs + body), SK_OK, &d.err);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
            CHECK_INT(d.err.code, ==, SK_E_PROTOCOL);
            CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
            CHECK_RC(sk_decoder_feed(&d, buf, 1), SK_ERR, &d.err);
            sk_decoder_free(&d);
        }
        /* exactly SK_CONTROL_MAX is fine, and next() flags it */
        memset(buf, 0, sizeof(buf));
        sk_encode_header(&f, sk_control_header(&f, SK_CONTROL_MAX), buf);
        sk_decoder_init(&d, &f);
        CHECK_RC(sk_decoder_feed(&d, buf, hs + SK_CONTROL_MAX), SK_OK,
                 &d.err);
        CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
        CHECK_INT(fr.control, ==, 1);
        CHECK_U64(fr.len, ==, SK_CONTROL_MAX);
        CHECK_U64(d.frames, ==, 0);
        sk_decoder_free(&d);
        /* without the flag the same header is just a (too large) length */
        f.flags = 0;
        sk_decoder_init(&d, &f);
        CHECK_RC(sk_decoder_feed(&d, buf, hs), SK_OK, &d.err);
        CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
        CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
        sk_decoder_free(&d);
    }
}

/* A partial control or correlated frame is measured against its own limit
 * (SK_CONTROL_MAX; max_frame plus the id), not against max_frame: with
 * max_frame 4, a 13-byte control frame and a 4-byte payload behind an
 * 8-byte id are both frames the decoder will take. */
TEST(decoder_missing_extension_frames)
{
    sk_framing f = framing(4, 0, 4);
    unsigned char buf[4 + SK_ID_LEN + 4];
    sk_decoder d;
    sk_frame fr;
    sk_err err;

    f.flags = SK_FRAMING_CONTROL | SK_FRAMING_IDS;
    /* control frame of 13 bytes, 3 of them received */
    ref_put_len(buf, 4, 0, (1ull << 31) | 13);
    memset(buf + 4, 0x55, 3);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, buf, 7), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, 10);
    sk_err_clear(&err);
    CHECK_RC(sk_decoder_finish(&d, &err), SK_ERR, &err);
    CHECK_INT(err.code, ==, SK_E_INCOMPLETE);
    CHECK_U64(err.detail, ==, 10);
    sk_decoder_free(&d);

    /* correlated frame: id + 4-byte payload (= max_frame), 2 bytes in */
    ref_put_len(buf, 4, 0, (1ull << 30) | (SK_ID_LEN + 4));
    memset(buf + 4, 0, SK_ID_LEN + 4);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, buf, 6), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, SK_ID_LEN + 2);
    CHECK_RC(sk_decoder_feed(&d, buf + 6, SK_ID_LEN + 2), SK_OK, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, 0);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_U64(fr.len, ==, 4);
    CHECK_INT(fr.has_id, ==, 1);
    sk_decoder_free(&d);

    /* correlated frame one byte over: never completed, so 0 missing */
    ref_put_len(buf, 4, 0, (1ull << 30) | (SK_ID_LEN + 5));
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, buf, 4), SK_OK, &d.err);
    CHECK_U64(sk_decoder_missing(&d), ==, 0);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
    CHECK_U64(d.err.detail, ==, 5);
    sk_decoder_free(&d);
}
