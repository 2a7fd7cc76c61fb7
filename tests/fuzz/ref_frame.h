/*
 * ref_frame.h - a reference decoder of pysockkit's frame streams, written
 * from docs/PROTOCOL.md and independent of csrc/core/frame.c, shared by the
 * harnesses that check what the core decodes (fuzz_decoder) or sends
 * (fuzz_send).  All static; the caller frees r->frames.
 */
#ifndef SK_FUZZ_REF_FRAME_H
#define SK_FUZZ_REF_FRAME_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"

typedef struct ref_frame {
    size_t off;  /* payload offset in the stream (after a correlation id) */
    size_t len;
    int control;
    int has_id;
    uint64_t id;
} ref_frame;

typedef struct ref_result {
    ref_frame *frames;
    size_t n;
    size_t n_data, n_control;
    int outcome;       /* 0: clean end; 1: incomplete; 2: too large; 3: protocol */
    uint64_t detail;   /* missing bytes / declared length / bad control length */
    int check_detail;  /* the error's detail is documented */
    size_t tail;       /* bytes of the trailing partial frame (outcome 1) */
    int tail_ext;      /* that partial frame is a control or correlated ... */
    uint64_t tail_len; /* ... frame announcing this many bytes */
} ref_result;

static uint64_t ref_len(const unsigned char *p, unsigned hs, int little)
{
    uint64_t v = 0;
    unsigned i;

    for (i = 0; i < hs; i++) {
        unsigned idx = little ? hs - 1 - i : i;
        v = (v << 8) | p[idx];
    }
    return v;
}

static void ref_decode(const unsigned char *s, size_t n, unsigned hs,
                       int little, int control, int ids, uint64_t max_frame,
                       ref_result *r)
{
    size_t pos = 0;

    memset(r, 0, sizeof(*r));
    r->frames = malloc((n / hs + 1) * sizeof(ref_frame));
    if (r->frames == NULL)
        abort();
    for (;;) {
        size_t left = n - pos;
        uint64_t v, top = 1ULL << (8 * hs - 1), second = top >> 1;
        uint64_t id = 0;
        int ctl = 0, has_id = 0, k;

        if (left == 0)
            return;
        if (left < hs) {
            r->outcome = 1;
            r->detail = hs - left;
            r->tail = left;
            return;
        }
        v = ref_len(s + pos, hs, little);
        if (control && (v & top)) {
            v &= ~top;
            ctl = 1;
            if (v == 0 || v > SK_CONTROL_MAX) {
                r->outcome = 3;
                r->detail = v;
                r->check_detail = 1;
                return;
            }
        } else if (ids && (v & second)) {
            v &= ~second;
            has_id = 1;
            if (v < SK_ID_LEN) {
                r->outcome = 3;
                return;
            }
            if (v - SK_ID_LEN > max_frame) {
                r->outcome = 2;
                r->detail = v - SK_ID_LEN;
                r->check_detail = 1;
                return;
            }
        } else if (v > max_frame) {
            r->outcome = 2;
            r->detail = v;
            r->check_detail = 1;
            return;
        }
        if ((uint64_t)(left - hs) < v) {
            r->outcome = 1;
            r->detail = v - (left - hs);
            r->tail = left;
            r->tail_ext = ctl || has_id;
            r->tail_len = v;
            return;
        }
        if (has_id) {
            for (k = 0; k < SK_ID_LEN; k++)
                id = (id << 8) | s[pos + hs + k];
        }
        r->frames[r->n].off = pos + hs + (has_id ? SK_ID_LEN : 0);
        r->frames[r->n].len = (size_t)v - (has_id ? SK_ID_LEN : 0);
        r->frames[r->n].control = ctl;
        r->frames[r->n].has_id = has_id;
        r->frames[r->n].id = id;
        r->n++;
        if (ctl)
            r->n_control++;
        else
            r->n_data++;
        pos += hs + (size_t)v;
    }
}

#endif /* SK_FUZZ_REF_FRAME_H */
