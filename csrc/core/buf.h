/*
 * buf.h - a growable byte buffer with a consumed prefix.
 *
 *      data                start            end               cap
 *       |----- consumed -----|--- readable ---|---- spare ----|
 *
 * Producers write into the spare space (sk_buf_reserve, then sk_buf_commit),
 * so recv() writes straight into the buffer with no bounce copy.  Consumers
 * read from `start` and sk_buf_consume.  The consumed prefix is compacted
 * away when a reserve would otherwise have to grow, or when it exceeds half
 * the capacity; growth is x1.5; an empty buffer bigger than SK_BUF_KEEP is
 * released by sk_buf_shrink so idle connections hold little memory.
 *
 * Not thread-safe: the owner serialises access.  No syscalls.
 */
#ifndef SK_BUF_H
#define SK_BUF_H

#include <stddef.h>

#define SK_BUF_KEEP 4096 /* capacity kept across idle periods */

typedef struct sk_buf {
    unsigned char *data;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last written byte */
    size_t cap;
} sk_buf;

/* Zero-initialised sk_buf is valid and empty. */
void sk_buf_init(sk_buf *b);

/* Free the storage; the buffer is empty and reusable afterwards. */
void sk_buf_free(sk_buf *b);

/* Ensure at least n bytes of spare space after `end`.  Returns 0, or -1 if
 * the allocation failed (the buffer is unchanged).  May move the data:
 * pointers into the buffer are invalid after a successful call. */
int sk_buf_reserve(sk_buf *b, size_t n);

/* Mark n spare bytes (n <= spare) as written. */
void sk_buf_commit(sk_buf *b, size_t n);

/* Mark n readable bytes (n <= readable) as consumed. */
void sk_buf_consume(sk_buf *b, size_t n);

/* Append n bytes (copy).  Returns 0 or -1 on allocation failure. */
int sk_buf_append(sk_buf *b, const void *p, size_t n);

/* Move the readable bytes to the front of the storage (start becomes 0). */
void sk_buf_compact(sk_buf *b);

/* If empty: reset the offsets, and free storage bigger than SK_BUF_KEEP. */
void sk_buf_shrink(sk_buf *b);

/* Contract: pure (the four accessors below too): readable bytes, read
 * pointer, write pointer, spare room at the end. */
static inline size_t sk_buf_len(const sk_buf *b) { return b->end - b->start; }
static inline unsigned char *sk_buf_rptr(const sk_buf *b) { return b->data + b->start; }
static inline unsigned char *sk_buf_wptr(const sk_buf *b) { return b->data + b->end; }
static inline size_t sk_buf_spare(const sk_buf *b) { return b->cap - b->end; }

#endif /* SK_BUF_H */
