/*
 * fuzz_decoder.c - libFuzzer harness for the frame decoder (csrc/core/frame.h).
 *
 * Input layout (tests/fuzz/make_corpus.py writes seeds in it):
 *
 *   byte 0       bits 0-1: header size 1/2/4/8; bit 2: little endian;
 *                bit 3: SK_FRAMING_CONTROL; bit 4: take control frames out
 *                with sk_decoder_scan first (the hub's path);
 *                bits 5-6: 0 feed only, 1 reserve/commit only, 2-3 mixed;
 *                bit 7: call sk_decoder_idle between chunks at random
 *   bytes 1..8   max_frame (little-endian u64, reduced into 1..limit; with
 *                reserve/commit it is capped at 1 MiB, because reserve
 *                allocates the frame in progress by design)
 *   byte 9       seed of the split PRNG
 *   byte 10      bit 0: SK_FRAMING_IDS (correlated frames)
 *   bytes 11..   the byte stream a peer sent
 *
 * The stream is fed in random chunks (1 byte .. everything), every complete
 * frame is taken out after each chunk, and the end of stream is declared.
 * Every result is checked against a reference decoder written from
 * docs/PROTOCOL.md, independently of frame.c:
 *   - the data frames (and control frames) come out exactly, in order,
 *     correlated ones with their id;
 *   - every data frame's length <= max_frame; control frames 1..64 bytes;
 *   - the first bad header gives the documented sticky error
 *     (SK_E_TOO_LARGE with detail = declared payload length, or
 *     SK_E_PROTOCOL for a control frame of a bad size or a correlated frame
 *     shorter than its id), and every later call repeats it;
 *   - after taking out every complete frame, fewer than header + max_frame
 *     bytes stay buffered, and the buffer's capacity stays within a
 *     constant factor of header + max_frame + chunk;
 *   - sk_decoder_missing and sk_decoder_finish agree with the reference.
 * Control frames are also handed to the heartbeat parser (sk_hb_on_control)
 * as the hub does.  A failed check aborts, which libFuzzer reports.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"
#include "core/heartbeat.h"
#include "ref_frame.h"
#include "require.h"

#define CFG_BYTES 11
#define RESERVE_MAX_FRAME (1u << 20)

/* ------------------------------------------------ checking the decoder */

typedef struct run {
    const unsigned char *stream;
    const ref_result *ref;
    size_t next_data;     /* index into the reference's data frames */
    size_t next_control;
    size_t next_any;      /* inline mode: index into all frames */
    size_t data_seen_ix;  /* position in ref->frames of the next data frame */
    size_t ctl_seen_ix;
    uint64_t max_frame;
    int scan_mode;
    sk_hb hb;
} run;

/* The reference frame index of the k-th frame of a kind. */
static size_t ref_nth(const ref_result *r, size_t *cursor, int control)
{
    while (*cursor < r->n && r->frames[*cursor].control != control)
        (*cursor)++;
    REQUIRE(*cursor < r->n); /* the decoder produced more than the stream has */
    return (*cursor)++;
}

static void check_frame(run *ru, const sk_frame *fr)
{
    const ref_frame *rf;
    size_t ix;

    if (fr->control) {
        REQUIRE(fr->len >= 1 && fr->len <= SK_CONTROL_MAX);
        ix = ref_nth(ru->ref, &ru->ctl_seen_ix, 1);
        ru->next_control++;
        sk_hb_on_control(&ru->hb, fr, 1000000000);
    } else {
        REQUIRE(fr->len <= ru->max_frame);
        ix = ref_nth(ru->ref, &ru->data_seen_ix, 0);
        ru->next_data++;
    }
    if (!ru->scan_mode) { /* inline: kinds come out interleaved, in order */
        REQUIRE(ix == ru->next_any);
        ru->next_any++;
    }
    rf = &ru->ref->frames[ix];
    REQUIRE(rf->len == fr->len);
    if (!fr->control) {
        REQUIRE(fr->has_id == rf->has_id);
        REQUIRE(!fr->has_id || fr->id == rf->id);
    }
    REQUIRE(fr->len == 0 || memcmp(fr->data, ru->stream + rf->off, fr->len) == 0);
}

static void on_control(void *ctx, const sk_frame *fr)
{
    run *ru = ctx;

    REQUIRE(fr->control);
    check_frame(ru, fr);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Take out every complete frame.  Returns SK_NEED_DATA or SK_ERR. */
static int drain(sk_decoder *d, run *ru)
{
    sk_frame fr;
    int rc;

    if (ru->scan_mode) {
        rc = sk_decoder_scan(d, on_control, ru);
        if (rc != SK_OK)
            return SK_ERR;
    }
    while ((rc = sk_decoder_next(d, &fr)) == SK_OK) {
        if (ru->scan_mode)
            REQUIRE(!fr.control); /* scan took every complete control frame
                                     out; only a partial one can remain */
        check_frame(ru, &fr);
    }
    REQUIRE(rc == SK_NEED_DATA || rc == SK_ERR);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned hsizes[4] = {1, 2, 4, 8};
    const unsigned char *s;
    size_t n, pos = 0, max_chunk = 0, max_min = 0;
    sk_framing f;
    sk_decoder d;
    ref_result ref;
    run ru;
    uint64_t raw = 0, limit, rng;
    unsigned mode;
    int idle, rc = SK_NEED_DATA, failed = 0, i;
    sk_err err;

    if (size < CFG_BYTES)
        return 0;
    memset(&f, 0, sizeof(f));
    f.header_size = hsizes[data[0] & 3];
    f.little_endian = (data[0] >> 2) & 1;
    f.flags = ((data[0] & 8) ? SK_FRAMING_CONTROL : 0)
            | ((data[10] & 1) ? SK_FRAMING_IDS : 0);
    mode = (data[0] >> 5) & 3;
    idle = (data[0] >> 7) & 1;
    for (i = 0; i < 8; i++)
        raw |= (uint64_t)data[1 + i] << (8 * i);
    limit = sk_framing_limit(&f);
    if (limit == 0) { /* a 1-byte header has no room for ids: refused */
        REQUIRE(sk_framing_check(&f, NULL) == SK_ERR);
        f.flags &= ~SK_FRAMING_IDS;
        limit = sk_framing_limit(&f);
    }
    if (mode != 0 && limit > RESERVE_MAX_FRAME)
        limit = RESERVE_MAX_FRAME;
    f.max_frame = limit == UINT64_MAX ? (raw ? raw : 1) : 1 + raw % limit;
    REQUIRE(sk_framing_check(&f, NULL) == SK_OK);
    rng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)data[9] << 32) ^ size;

    s = data + CFG_BYTES;
    n = size - CFG_BYTES;
    ref_decode(s, n, f.header_size, f.little_endian,
               (f.flags & SK_FRAMING_CONTROL) != 0,
               (f.flags & SK_FRAMING_IDS) != 0, f.max_frame, &ref);

    memset(&ru, 0, sizeof(ru));
    ru.stream = s;
    ru.ref = &ref;
    ru.max_frame = f.max_frame;
    ru.scan_mode = (f.flags & SK_FRAMING_CONTROL) && (data[0] & 16);
    sk_hb_init(&ru.hb, 1000000, 3000000, 1, 0);

    sk_decoder_init(&d, &f);
    while (pos < n) {
        uint64_t r = xorshift(&rng);
        size_t chunk, minr = 0;
        int use_reserve = mode == 1 || (mode >= 2 && (r & 1));

        /* chunk sizes: mostly small, sometimes everything left */
        switch ((r >> 1) & 7) {
        case 0: chunk = 1; break;
        case 1: chunk = n - pos; break;
        case 2: case 3: chunk = 1 + (r >> 8) % 16; break;
        default: chunk = 1 + (r >> 8) % 512; break;
        }
        if (chunk > n - pos)
            chunk = n - pos;
        if (chunk > max_chunk)
            max_chunk = chunk;
        if (use_reserve) {
            unsigned char *space;
            size_t avail;
            static const size_t mins[4] = {0, 1, 4096, SK_READ_AHEAD};

            minr = mins[(r >> 4) & 3];
            if (minr > max_min)
                max_min = minr;
            rc = sk_decoder_reserve(&d, minr, &space, &avail);
            if (rc != SK_OK) {
                REQUIRE(d.err.code != SK_E_NONE);
                REQUIRE(d.err.code != SK_E_NOMEM); /* max_frame <= 1 MiB */
                failed = 1;
                break;
            }
            REQUIRE(avail >= minr);
            /* recv() may return fewer bytes than the space */
            if (chunk > avail)
                chunk = avail;
            memcpy(space, s + pos, chunk);
            sk_decoder_commit(&d, chunk);
        } else {
            rc = sk_decoder_feed(&d, s + pos, chunk);
            if (rc != SK_OK) {
                REQUIRE(d.err.code != SK_E_NONE);
                failed = 1;
                break;
            }
        }
        pos += chunk;
        if (drain(&d, &ru) == SK_ERR) {
            failed = 1;
            break;
        }
        /* bounded memory: after taking every complete frame out, at most
         * one partial frame stays buffered ... */
        {
            size_t have = sk_decoder_buffered(&d);
            REQUIRE(have < f.header_size
                    || (uint64_t)(have - f.header_size) < f.max_frame
                    || (uint64_t)(have - f.header_size) < SK_CONTROL_MAX);
        }
        /* ... and the capacity stays within a constant factor of one frame
         * plus one read (feed never allocates a declared length, so with
         * feed only the input size bounds it too) */
        {
            uint64_t frame = f.max_frame;
            uint64_t bound;

            if (mode == 0 && frame > n)
                frame = n;
            bound = 256 + 2 * ((uint64_t)f.header_size + frame
                               + SK_CONTROL_MAX + max_chunk + max_min);
            REQUIRE((uint64_t)d.buf.cap <= bound);
        }
        if (idle && ((r >> 7) & 3) == 0)
            sk_decoder_idle(&d);
    }

    if (failed) {
        /* a bad header: the documented error, sticky for every call */
        sk_frame fr;
        unsigned char *space;
        size_t avail;

        REQUIRE(ref.outcome == 2 || ref.outcome == 3);
        REQUIRE(d.err.code == (ref.outcome == 2 ? SK_E_TOO_LARGE
                                                : SK_E_PROTOCOL));
        REQUIRE(!ref.check_detail || d.err.detail == ref.detail);
        REQUIRE(memchr(d.err.msg, 0, sizeof(d.err.msg)) != NULL);
        REQUIRE(sk_decoder_next(&d, &fr) == SK_ERR);
        REQUIRE(sk_decoder_feed(&d, "x", 1) == SK_ERR);
        REQUIRE(sk_decoder_reserve(&d, 1, &space, &avail) == SK_ERR);
        REQUIRE(d.err.code == (ref.outcome == 2 ? SK_E_TOO_LARGE
                                                : SK_E_PROTOCOL));
        /* frames before the bad one: all of them with inline decoding;
         * with scan the bad header can be seen before the data frames
         * ahead of it are taken, so a prefix */
        if (!ru.scan_mode) {
            REQUIRE(ru.next_data == ref.n_data);
            REQUIRE(ru.next_control == ref.n_control);
        } else {
            REQUIRE(ru.next_data <= ref.n_data);
            REQUIRE(ru.next_control <= ref.n_control);
        }
    } else {
        /* end of stream */
        REQUIRE(ref.outcome == 0 || ref.outcome == 1);
        REQUIRE(ru.next_data == ref.n_data);
        REQUIRE(ru.next_control == ref.n_control);
        uint64_t want_missing = ref.outcome == 1 ? ref.detail : 0;
        REQUIRE(sk_decoder_missing(&d) == want_missing);
        memset(&err, 0, sizeof(err));
        rc = sk_decoder_finish(&d, &err);
        if (ref.outcome == 0) {
            REQUIRE(rc == SK_OK);
            REQUIRE(sk_decoder_buffered(&d) == 0);
        } else {
            REQUIRE(rc == SK_ERR);
            REQUIRE(err.code == SK_E_INCOMPLETE);
            REQUIRE(err.detail == want_missing);
            if (!ru.scan_mode)
                REQUIRE(sk_decoder_buffered(&d) == ref.tail);
        }
        sk_decoder_idle(&d);
        if (ref.outcome == 0)
            REQUIRE(d.buf.cap <= SK_BUF_KEEP);
    }

    /* header helpers: encode/decode round trip on lengths from the input */
    {
        unsigned char hdr[8];
        uint64_t len = raw & sk_header_limit(f.header_size);
        sk_encode_header(&f, len, hdr);
        REQUIRE(sk_decode_header(&f, hdr) == len);
        REQUIRE(ref_len(hdr, f.header_size, f.little_endian) == len);
    }

    sk_decoder_free(&d);
    free(ref.frames);
    return 0;
}
