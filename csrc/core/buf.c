/* buf.c - growable byte buffer (see buf.h). */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "sys.h"

/* Contract: no allocation. */
void sk_buf_init(sk_buf *b)
{
    memset(b, 0, sizeof(*b));
}

/* Contract: frees b->data; b is empty afterwards. */
void sk_buf_free(sk_buf *b)
{
    free(b->data);
    sk_buf_init(b);
}

/* Contract: no allocation; moves the readable bytes to the front. */
void sk_buf_compact(sk_buf *b)
{
    size_t n = b->end - b->start;

    if (b->start == 0)
        return;
    if (n)
        memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}

/* Contract: may realloc b->data; on failure b is unchanged.  Compacts first
 * when that alone makes room, or when the consumed prefix is more than half
 * the capacity (so a long-lived buffer does not creep forward). */
int sk_buf_reserve(sk_buf *b, size_t n)
{
    size_t need, cap;
    unsigned char *p;
    int rc = -1;

    if (b->cap - b->end >= n && b->start <= b->cap / 2) {
        rc = 0;
        goto done;
    }
    if (b->cap - (b->end - b->start) >= n) {
        sk_buf_compact(b);
        rc = 0;
        goto done;
    }
    need = (b->end - b->start) + n;
    if (need < n) /* overflow */
        goto done;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        size_t next = cap + cap / 2;
        if (next <= cap) { /* overflow: take exactly what is needed */
            cap = need;
            break;
        }
        cap = next;
    }
    sk_buf_compact(b);
    p = sk_realloc(b->data, cap);
    if (p == NULL)
        goto done;
    b->data = p;
    b->cap = cap;
    rc = 0;
done:
    return rc;
}

/* Contract: n <= spare. */
void sk_buf_commit(sk_buf *b, size_t n)
{
    b->end += n;
}

/* Contract: n <= readable.  An emptied buffer rewinds to offset 0 (free). */
void sk_buf_consume(sk_buf *b, size_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

/* Contract: copies n bytes from p; -1 on allocation failure. */
int sk_buf_append(sk_buf *b, const void *p, size_t n)
{
    int rc = 0;

    if (n == 0)
        goto done;
    if (sk_buf_reserve(b, n) != 0) {
        rc = -1;
        goto done;
    }
    memcpy(b->data + b->end, p, n);
    b->end += n;
done:
    return rc;
}

/* Contract: frees storage above SK_BUF_KEEP only when empty. */
void sk_buf_shrink(sk_buf *b)
{
    if (b->start != b->end)
        return;
    b->start = b->end = 0;
    if (b->cap > SK_BUF_KEEP)
        sk_buf_free(b);
}
