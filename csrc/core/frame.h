/*
 * frame.h - sans-IO codec for length-prefixed frames.
 *
 * Wire format (docs/PROTOCOL.md): every frame is [length][payload], where
 * length is an unsigned integer of header_size bytes (1, 2, 4 or 8) in the
 * configured byte order and counts payload bytes only.
 *
 * The decoder owns a read-ahead buffer.  The I/O layer receives straight into
 * its spare space (sk_decoder_reserve / sk_decoder_commit), or copies with
 * sk_decoder_feed, then takes out every complete frame with sk_decoder_next.
 * A declared length is checked against max_frame before anything is
 * allocated for it.  The first error is sticky: every later call returns
 * SK_ERR with the same record in d->err.
 *
 * No syscalls, no errno, no Python.  Not thread-safe: the owner serialises.
 */
#ifndef SK_FRAME_H
#define SK_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "sk.h"

#define SK_READ_AHEAD (64 * 1024) /* spare space asked for before a recv
                                     of bulk data */
#define SK_READ_SMALL 2048 /* ... and between small messages: a room whose
                              buffer (2,916 bytes after buf.c's growth)
                              stays within SK_BUF_KEEP, kept when idle */

/* Framing flags.
 * SK_FRAMING_CONTROL: the extended format of docs/PROTOCOL.md.  The top bit
 * of the length field marks a control frame (heartbeat ping/pong ...), whose
 * payload is one type byte and at most SK_CONTROL_MAX bytes in all.  Data
 * frames are unchanged (they cost nothing extra); their length may use all
 * bits but the top one. */
#define SK_FRAMING_CONTROL 1u
#define SK_CONTROL_MAX 64
/* SK_FRAMING_IDS: the correlation extension.  The second-highest bit of the
 * length marks a correlated frame, whose payload starts with an 8-byte
 * big-endian id (counted in the length).  The id's top bit tells a reply
 * (set) from a request (clear).  Plain data frames are unchanged. */
#define SK_FRAMING_IDS 2u
#define SK_ID_LEN 8
/* The id's top two bits are flags; request ids use the 62 bits below them
 * (docs/PROTOCOL.md, "Correlation ids").  A reply carries its request's id
 * with SK_ID_REPLY set; a reply that reports that the peer's handler failed
 * also sets SK_ID_ERROR, and its payload is the error text (UTF-8,
 * "ExcType: message"), which the requester raises as sk.RemoteError.
 * These are the only definitions: pysockkit._core exports them as ID_REPLY,
 * ID_ERROR and ID_MASK for the Python modules. */
#define SK_ID_REPLY (1ULL << 63)
#define SK_ID_ERROR (1ULL << 62)
#define SK_ID_MASK (SK_ID_ERROR - 1)
/* The length-field bits that mark the extended frames of an h-byte header:
 * the top bit a control frame (SK_FRAMING_CONTROL), the second-highest a
 * correlated frame (SK_FRAMING_IDS). */
#define SK_HDR_CONTROL_BIT(h) (1ULL << (8 * (h) - 1))
#define SK_HDR_ID_BIT(h) (1ULL << (8 * (h) - 2))

typedef struct sk_framing {
    unsigned header_size; /* 1, 2, 4 or 8 */
    int little_endian;    /* 0: big endian (network order), the default */
    uint64_t max_frame;   /* largest payload accepted or sent, in bytes */
    unsigned flags;       /* SK_FRAMING_* */
} sk_framing;

/* One decoded frame: a view into the decoder's buffer, valid until the next
 * call that feeds, reserves or shrinks the decoder. */
typedef struct sk_frame {
    const unsigned char *data;
    size_t len;
    int control; /* 1: a control frame (only with SK_FRAMING_CONTROL) */
    int has_id;  /* 1: a correlated frame (only with SK_FRAMING_IDS) */
    uint64_t id; /* its id (SK_ID_REPLY set for a reply) */
} sk_frame;

/* Largest length a header of `header_size` bytes can carry (0 if invalid). */
uint64_t sk_header_limit(unsigned header_size);

/* Largest data-frame length a framing can carry: the header's limit, less
 * the top bit when SK_FRAMING_CONTROL reserves it. */
uint64_t sk_framing_limit(const sk_framing *f);

/* The length field value marking a control frame of body length n. */
uint64_t sk_control_header(const sk_framing *f, size_t n);

/* Validate a framing: header size in {1,2,4,8}, max_frame >= 1 and
 * representable in the header.  Returns SK_OK or SK_ERR (SK_E_ARG). */
int sk_framing_check(const sk_framing *f, sk_err *err);

/* Write the header for a payload of `len` bytes to out[0..header_size).
 * The caller has checked len <= f->max_frame. */
void sk_encode_header(const sk_framing *f, uint64_t len, unsigned char *out);

/* Write the header of a correlated frame (SK_FRAMING_IDS) for a payload of
 * `len` bytes with `id`: header_size + SK_ID_LEN bytes.  Returns that. */
size_t sk_encode_header_id(const sk_framing *f, uint64_t len, uint64_t id,
                           unsigned char *out);

/* Read a header from in[0..header_size). */
uint64_t sk_decode_header(const sk_framing *f, const unsigned char *in);

/* Encode the headers of a batch of n payloads (for writev): out holds
 * n * header_size bytes.  Checks every length against max_frame first and
 * writes nothing if one is too large (SK_ERR, SK_E_TOO_LARGE, detail = the
 * index of the offending payload). */
int sk_encode_headers(const sk_framing *f, const size_t *lens, size_t n,
                      unsigned char *out, sk_err *err);

typedef struct sk_decoder {
    sk_framing f;
    sk_buf buf;
    sk_err err;      /* sticky error, code SK_E_NONE while healthy */
    uint64_t frames; /* frames decoded so far */
    size_t scanned;  /* bytes from the read position known to hold only
                        complete data frames (see sk_decoder_scan) */
} sk_decoder;

/* Set up an empty decoder (no allocation). f must pass sk_framing_check. */
void sk_decoder_init(sk_decoder *d, const sk_framing *f);

/* Free the buffer.  The decoder may be re-initialised afterwards. */
void sk_decoder_free(sk_decoder *d);

/* Get spare space to receive into: at least `min` bytes, and at least what
 * the frame in progress still needs (its length is already checked).
 * On SK_OK, *space / *avail describe writable memory valid until the next
 * decoder call.  SK_ERR: sticky error or out of memory (then sticky too). */
int sk_decoder_reserve(sk_decoder *d, size_t min, unsigned char **space,
                       size_t *avail);

/* Declare that n bytes were written into the reserved space. */
void sk_decoder_commit(sk_decoder *d, size_t n);

/* Copy n bytes in (reserve + memcpy + commit).  SK_OK or SK_ERR. */
int sk_decoder_feed(sk_decoder *d, const void *p, size_t n);

/* Take the next complete frame out of the buffer.
 * SK_OK: *out is filled and consumed from the buffer.  SK_NEED_DATA: no
 * complete frame yet.  SK_ERR: a header declared more than max_frame
 * (SK_E_TOO_LARGE, sticky; detail = the declared length). */
int sk_decoder_next(sk_decoder *d, sk_frame *out);

/* Bytes buffered and not yet returned as frames. */
size_t sk_decoder_buffered(const sk_decoder *d);

/* Bytes still missing to complete the frame in progress (0 when the buffer
 * holds no partial frame, or a header the decoder refuses).  While the
 * header itself is incomplete this is the number of header bytes missing.
 * A control or correlated frame is measured against its own limit. */
uint64_t sk_decoder_missing(const sk_decoder *d);

/* The stream ended.  SK_OK if no partial frame is buffered; otherwise SK_ERR
 * with SK_E_INCOMPLETE (detail = bytes missing), which does not make the
 * decoder's state sticky: the buffered bytes stay for inspection.  A decoder
 * whose stream already failed returns that (sticky) error instead. */
int sk_decoder_finish(const sk_decoder *d, sk_err *err);

/* Take every complete control frame out of the buffer, wherever it is,
 * leaving data frames in place and in order: on_control is called for each
 * one.  Scanning resumes where the previous call stopped, so each byte is
 * looked at once.  SK_OK or SK_ERR (sticky error). */
int sk_decoder_scan(sk_decoder *d,
                    void (*on_control)(void *ctx, const sk_frame *fr),
                    void *ctx);

/* Called when the owner is about to go idle (block): compacts, and frees a
 * large buffer that holds nothing. */
void sk_decoder_idle(sk_decoder *d);

#endif /* SK_FRAME_H */
