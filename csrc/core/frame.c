/* frame.c - sans-IO length-prefix codec (see frame.h). */
#include "frame.h"

#include <string.h>

/* Contract: pure. */
uint64_t sk_header_limit(unsigned header_size)
{
    uint64_t limit = 0;

    switch (header_size) {
    case 1: limit = 0xffu; break;
    case 2: limit = 0xffffu; break;
    case 4: limit = 0xffffffffu; break;
    case 8: limit = UINT64_MAX; break;
    default: break;
    }
    return limit;
}

/* Contract: pure. */
uint64_t sk_framing_limit(const sk_framing *f)
{
    uint64_t limit = sk_header_limit(f->header_size);

    if (f->flags & SK_FRAMING_CONTROL)
        limit >>= 1;
    if (f->flags & SK_FRAMING_IDS) {
        /* the correlation bit is the second-highest whether or not control
         * frames take the top one: every length stays below it (found by
         * tests/fuzz/fuzz_send.c: with ids alone a plain frame of 2**14
         * bytes in a 2-byte header read as a correlated one) */
        limit = sk_header_limit(f->header_size) >> 2;
        limit = limit > SK_ID_LEN ? limit - SK_ID_LEN : 0;
    }
    return limit;
}

/* Contract: pure. */
size_t sk_encode_header_id(const sk_framing *f, uint64_t len, uint64_t id,
                           unsigned char *out)
{
    unsigned h = f->header_size;
    int i;

    sk_encode_header(f, (len + SK_ID_LEN) | SK_HDR_ID_BIT(h), out);
    for (i = 0; i < SK_ID_LEN; i++)
        out[h + i] = (unsigned char)(id >> (8 * (SK_ID_LEN - 1 - i)));
    return h + SK_ID_LEN;
}

/* Contract: pure. */
uint64_t sk_control_header(const sk_framing *f, size_t n)
{
    return SK_HDR_CONTROL_BIT(f->header_size) | (uint64_t)n;
}

/* Contract: pure; err may be NULL. */
int sk_framing_check(const sk_framing *f, sk_err *err)
{
    uint64_t limit = sk_framing_limit(f);
    int rc = SK_OK;

    if (sk_header_limit(f->header_size) == 0)
        rc = sk_err_set(err, SK_E_ARG,
                        "header_size must be 1, 2, 4 or 8, not %u",
                        f->header_size);
    else if (limit == 0)
        rc = sk_err_set(err, SK_E_ARG,
                        "a %u-byte header leaves no room for correlated "
                        "frames: use header_size >= 2",
                        f->header_size);
    else if (f->max_frame == 0)
        rc = sk_err_set(err, SK_E_ARG, "max_frame must be at least 1");
    else if (f->max_frame > limit)
        rc = sk_err_set(err, SK_E_ARG,
                        "max_frame %llu does not fit a %u-byte header "
                        "(at most %llu%s)",
                        (unsigned long long)f->max_frame, f->header_size,
                        (unsigned long long)limit,
                        (f->flags & (SK_FRAMING_CONTROL | SK_FRAMING_IDS))
                            ? " with the top bits kept for extensions"
                            : "");
    return rc;
}

/* Contract: pure; out has header_size bytes. */
void sk_encode_header(const sk_framing *f, uint64_t len, unsigned char *out)
{
    unsigned i, n = f->header_size;

    if (f->little_endian) {
        for (i = 0; i < n; i++)
            out[i] = (unsigned char)(len >> (8 * i));
    } else {
        for (i = 0; i < n; i++)
            out[n - 1 - i] = (unsigned char)(len >> (8 * i));
    }
}

/* Contract: pure; in has header_size bytes. */
uint64_t sk_decode_header(const sk_framing *f, const unsigned char *in)
{
    unsigned i, n = f->header_size;
    uint64_t v = 0;

    if (f->little_endian) {
        for (i = n; i-- > 0;)
            v = (v << 8) | in[i];
    } else {
        for (i = 0; i < n; i++)
            v = (v << 8) | in[i];
    }
    return v;
}

/* Contract: pure; writes nothing unless every length is acceptable. */
int sk_encode_headers(const sk_framing *f, const size_t *lens, size_t n,
                      unsigned char *out, sk_err *err)
{
    size_t i;
    int rc = SK_OK;

    for (i = 0; i < n; i++) {
        if ((uint64_t)lens[i] > f->max_frame) {
            sk_err_set(err, SK_E_TOO_LARGE,
                       "frame %zu is %zu bytes, over max_frame %llu; split "
                       "it or raise Framing.max_frame on both peers",
                       i, lens[i], (unsigned long long)f->max_frame);
            if (err)
                err->detail = i;
            rc = SK_ERR;
            goto done;
        }
    }
    for (i = 0; i < n; i++)
        sk_encode_header(f, lens[i], out + i * f->header_size);
done:
    return rc;
}

/* Contract: no allocation. */
void sk_decoder_init(sk_decoder *d, const sk_framing *f)
{
    memset(d, 0, sizeof(*d));
    d->f = *f;
    sk_buf_init(&d->buf);
    sk_err_clear(&d->err);
}

/* Contract: frees the buffer. */
void sk_decoder_free(sk_decoder *d)
{
    sk_buf_free(&d->buf);
}

/* What a header says, before any error is made sticky. */
enum sk_hdr_kind {
    SK_HDR_OK = 0,
    SK_HDR_BAD_CONTROL, /* control frame of 0 or > SK_CONTROL_MAX bytes */
    SK_HDR_SHORT_ID,    /* correlated frame shorter than its id */
    SK_HDR_TOO_LARGE    /* payload over max_frame */
};

/* Contract: pure.  Classify the header at p.  *len is the wire length
 * after the header (id included for a correlated frame), *payload the
 * length the max_frame limit applies to, *control whether it is a control
 * frame.  One place decides which frames are acceptable, so that next(),
 * reserve() and missing() never disagree. */
static enum sk_hdr_kind sk_header_classify(const sk_framing *f,
                                           const unsigned char *p,
                                           uint64_t *len, uint64_t *payload,
                                           int *control)
{
    uint64_t v = sk_decode_header(f, p);
    uint64_t top;
    enum sk_hdr_kind kind;

    *control = 0;
    if (f->flags & SK_FRAMING_CONTROL) {
        top = SK_HDR_CONTROL_BIT(f->header_size);
        if (v & top) {
            v &= ~top;
            *control = 1;
            *len = *payload = v;
            kind = v == 0 || v > SK_CONTROL_MAX ? SK_HDR_BAD_CONTROL
                                                : SK_HDR_OK;
            goto done;
        }
    }
    if (f->flags & SK_FRAMING_IDS) {
        top = SK_HDR_ID_BIT(f->header_size);
        if (v & top) {
            v &= ~top;
            *len = v;
            if (v < SK_ID_LEN) {
                *payload = 0;
                kind = SK_HDR_SHORT_ID;
                goto done;
            }
            *payload = v - SK_ID_LEN;
            kind = *payload > f->max_frame ? SK_HDR_TOO_LARGE : SK_HDR_OK;
            goto done;
        }
    }
    *len = *payload = v;
    kind = v > f->max_frame ? SK_HDR_TOO_LARGE : SK_HDR_OK;
done:
    return kind;
}

/* Parse the header at p: the wire length, and whether it is a control
 * frame.  Returns SK_OK, or SK_ERR (sticky) for a length over max_frame,
 * a malformed control frame or a correlated frame shorter than its id. */
static int sk_decoder_header(sk_decoder *d, const unsigned char *p,
                             uint64_t *len, int *control)
{
    uint64_t payload;
    int rc = SK_OK;

    switch (sk_header_classify(&d->f, p, len, &payload, control)) {
    case SK_HDR_OK:
        break;
    case SK_HDR_BAD_CONTROL:
        sk_err_set(&d->err, SK_E_PROTOCOL,
                   "peer sent a control frame of %llu bytes (must be "
                   "1..%d): it does not speak the heartbeat extension, or "
                   "the stream is corrupt; close the connection",
                   (unsigned long long)*len, SK_CONTROL_MAX);
        d->err.detail = *len;
        rc = SK_ERR;
        break;
    case SK_HDR_SHORT_ID:
        sk_err_set(&d->err, SK_E_PROTOCOL,
                   "peer sent a correlated frame of %llu bytes, shorter "
                   "than its %d-byte id; close the connection",
                   (unsigned long long)*len, SK_ID_LEN);
        rc = SK_ERR;
        break;
    case SK_HDR_TOO_LARGE:
        sk_err_set(&d->err, SK_E_TOO_LARGE,
                   "peer announced a %llu-byte frame, over max_frame %llu; "
                   "the stream cannot be resynchronised: close the "
                   "connection (or raise Framing.max_frame if the peer is "
                   "right)",
                   (unsigned long long)payload,
                   (unsigned long long)d->f.max_frame);
        d->err.detail = payload;
        rc = SK_ERR;
        break;
    }
    return rc;
}

/* Contract: pure.  Bytes of the frame in progress still missing (0 when
 * the header in the buffer announces a frame that will never be taken). */
uint64_t sk_decoder_missing(const sk_decoder *d)
{
    size_t have = sk_buf_len(&d->buf);
    unsigned h = d->f.header_size;
    uint64_t len, payload, missing = 0;
    int control;

    if (have == 0)
        goto done;
    if (have < h) {
        missing = h - have;
        goto done;
    }
    if (sk_header_classify(&d->f, sk_buf_rptr(&d->buf), &len, &payload,
                           &control) != SK_HDR_OK)
        goto done;
    if ((uint64_t)(have - h) < len)
        missing = len - (have - h);
done:
    return missing;
}

/* Contract: may grow the buffer (x1.5) up to header + max_frame + min. */
int sk_decoder_reserve(sk_decoder *d, size_t min, unsigned char **space,
                       size_t *avail)
{
    size_t want = min;
    size_t have = sk_buf_len(&d->buf);
    unsigned h = d->f.header_size;
    int rc = SK_ERR;

    if (d->err.code != SK_E_NONE)
        goto done;
    if (have >= h) {
        uint64_t len;
        int control;
        if (sk_decoder_header(d, sk_buf_rptr(&d->buf), &len, &control) !=
            SK_OK)
            goto done;
        /* enough room for the whole frame in progress (written so that a
         * length near 2^64 cannot wrap around) */
        if ((uint64_t)(have - h) < len) {
            uint64_t need = len - (uint64_t)(have - h);
            if (need > (uint64_t)(SIZE_MAX / 2)) {
                sk_err_set(&d->err, SK_E_NOMEM,
                           "cannot buffer a %llu-byte frame; lower "
                           "Framing.max_frame",
                           (unsigned long long)len);
                goto done;
            }
            if (need > want)
                want = (size_t)need;
        }
    }
    if (want == 0)
        want = 1;
    if (sk_buf_reserve(&d->buf, want) != 0) {
        sk_err_set(&d->err, SK_E_NOMEM,
                   "out of memory reserving %zu bytes for a frame; lower "
                   "Framing.max_frame to what the peer needs",
                   want);
        goto done;
    }
    *space = sk_buf_wptr(&d->buf);
    *avail = sk_buf_spare(&d->buf);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: n <= avail from the last reserve. */
void sk_decoder_commit(sk_decoder *d, size_t n)
{
    sk_buf_commit(&d->buf, n);
}

/* Contract: copies p. */
int sk_decoder_feed(sk_decoder *d, const void *p, size_t n)
{
    int rc = SK_ERR;

    if (d->err.code != SK_E_NONE)
        goto done;
    rc = SK_OK;
    if (n == 0)
        goto done;
    /* reserve only what is fed: feeding must not allocate a declared size */
    if (sk_buf_reserve(&d->buf, n) != 0) {
        rc = sk_err_set(&d->err, SK_E_NOMEM,
                        "out of memory buffering %zu bytes", n);
        goto done;
    }
    memcpy(sk_buf_wptr(&d->buf), p, n);
    sk_buf_commit(&d->buf, n);
done:
    return rc;
}

/* Contract: the frame views the buffer until the next feed/reserve/idle. */
int sk_decoder_next(sk_decoder *d, sk_frame *out)
{
    size_t have = sk_buf_len(&d->buf);
    unsigned h = d->f.header_size;
    const unsigned char *p;
    uint64_t len;
    int rc = SK_ERR;

    if (SK_UNLIKELY(d->err.code != SK_E_NONE))
        goto done;
    rc = SK_NEED_DATA;
    if (have < h)
        goto done;
    p = sk_buf_rptr(&d->buf);
    if (SK_UNLIKELY(sk_decoder_header(d, p, &len, &out->control) != SK_OK)) {
        rc = SK_ERR;
        goto done;
    }
    if ((uint64_t)(have - h) < len)
        goto done;
    out->data = p + h;
    out->len = (size_t)len;
    out->has_id = 0;
    out->id = 0;
    if ((d->f.flags & SK_FRAMING_IDS) && !out->control &&
        (sk_decode_header(&d->f, p) & SK_HDR_ID_BIT(h))) {
        unsigned i;
        for (i = 0; i < SK_ID_LEN; i++)
            out->id = (out->id << 8) | p[h + i];
        out->has_id = 1;
        out->data += SK_ID_LEN;
        out->len -= SK_ID_LEN;
    }
    /* consume without rewinding: the view must stay valid */
    d->buf.start += h + (size_t)len;
    d->scanned = d->scanned > h + (size_t)len ? d->scanned - h - (size_t)len
                                               : 0;
    if (!out->control)
        d->frames++;
    rc = SK_OK;
done:
    return rc;
}

/* Contract: pure. */
size_t sk_decoder_buffered(const sk_decoder *d)
{
    return sk_buf_len(&d->buf);
}

/* Length after the header of the frame in progress (header complete). */
static uint64_t sk_wire_len(const sk_decoder *d)
{
    uint64_t len, payload;
    int control;

    (void)sk_header_classify(&d->f, sk_buf_rptr(&d->buf), &len, &payload,
                             &control);
    return len;
}

/* Contract: pure; err may be NULL. */
int sk_decoder_finish(const sk_decoder *d, sk_err *err)
{
    size_t have = sk_buf_len(&d->buf);
    uint64_t missing;
    int rc = SK_ERR;

    if (d->err.code != SK_E_NONE) { /* the stream already failed */
        if (err)
            *err = d->err;
        goto done;
    }
    if (have == 0) {
        rc = SK_OK;
        goto done;
    }
    missing = sk_decoder_missing(d);
    if (have < d->f.header_size)
        sk_err_set(err, SK_E_INCOMPLETE,
                   "connection closed inside a frame header: %zu of %u "
                   "header bytes received, %llu missing; the peer sent a "
                   "truncated frame",
                   have, d->f.header_size, (unsigned long long)missing);
    else
        sk_err_set(err, SK_E_INCOMPLETE,
                   "connection closed inside a frame: %llu of %llu payload "
                   "bytes received, %llu missing; the peer sent a truncated "
                   "frame",
                   (unsigned long long)(have - d->f.header_size),
                   (unsigned long long)sk_wire_len(d),
                   (unsigned long long)missing);
    if (err)
        err->detail = missing;
done:
    return rc;
}

/* Contract: no allocation; moves buffered bytes down over each control
 * frame taken out (control frames are rare, so the moves are short). */
int sk_decoder_scan(sk_decoder *d,
                    void (*on_control)(void *ctx, const sk_frame *fr),
                    void *ctx)
{
    const unsigned h = d->f.header_size;
    unsigned char *base;
    size_t have, size;
    uint64_t len;
    sk_frame fr;
    int rc = SK_ERR;

    if (d->err.code != SK_E_NONE)
        goto done;
    for (;;) {
        base = sk_buf_rptr(&d->buf);
        have = sk_buf_len(&d->buf);
        if (have - d->scanned < h)
            break;
        if (sk_decoder_header(d, base + d->scanned, &len, &fr.control) !=
            SK_OK)
            goto done;
        if ((uint64_t)(have - d->scanned - h) < len)
            break;
        size = h + (size_t)len;
        if (!fr.control) {
            d->scanned += size;
            continue;
        }
        fr.data = base + d->scanned + h;
        fr.len = (size_t)len;
        on_control(ctx, &fr);
        memmove(base + d->scanned, base + d->scanned + size,
                have - d->scanned - size);
        d->buf.end -= size;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: may free the buffer.  A small partial frame is moved to the
 * front; a large one is left where it is (moving it on every wait would
 * copy a big frame many times; sk_decoder_reserve compacts when it must). */
void sk_decoder_idle(sk_decoder *d)
{
    if (sk_buf_len(&d->buf) == 0)
        sk_buf_shrink(&d->buf);
    else if (sk_buf_len(&d->buf) <= SK_BUF_KEEP)
        sk_buf_compact(&d->buf);
}
