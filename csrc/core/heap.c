/* heap.c - the indexed binary min-heap (heap.h). */
#include "heap.h"

#include <stdlib.h>

#include "sys.h"

/* Contract: pure.  Does a come before b? */
static inline int sk_heap_before(const sk_heap_node *a, const sk_heap_node *b)
{
    return a->key < b->key || (a->key == b->key && a->tie < b->tie);
}

/* Contract: h->v has room for position i. */
static inline void sk_heap_set(sk_heap *h, size_t i, sk_heap_node *n)
{
    h->v[i] = n;
    n->idx = i;
}

/* Contract: the node at i may come before its parent: move it up. */
static void sk_heap_sift_up(sk_heap *h, size_t i)
{
    sk_heap_node *n = h->v[i];
    size_t parent;

    while (i > 0) {
        parent = (i - 1) / 2;
        if (!sk_heap_before(n, h->v[parent]))
            break;
        sk_heap_set(h, i, h->v[parent]);
        i = parent;
    }
    sk_heap_set(h, i, n);
}

/* Contract: the node at i may come after a child: move it down. */
static void sk_heap_sift_down(sk_heap *h, size_t i)
{
    sk_heap_node *n = h->v[i];
    size_t c;

    for (;;) {
        c = 2 * i + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len && sk_heap_before(h->v[c + 1], h->v[c]))
            c++;
        if (!sk_heap_before(h->v[c], n))
            break;
        sk_heap_set(h, i, h->v[c]);
        i = c;
    }
    sk_heap_set(h, i, n);
}

/* Contract: no allocation. */
void sk_heap_init(sk_heap *h)
{
    h->v = NULL;
    h->len = 0;
    h->cap = 0;
}

/* Contract: see heap.h. */
void sk_heap_free(sk_heap *h)
{
    free(h->v);
    sk_heap_init(h);
}

/* Contract: allocates through sys.h; the heap is unchanged on failure. */
int sk_heap_reserve(sk_heap *h, size_t n)
{
    sk_heap_node **v;
    int rc = SK_OK;

    if (n <= h->cap)
        goto done;
    if (n > SIZE_MAX / sizeof(*v)) {
        rc = SK_ERR;
        goto done;
    }
    v = sk_realloc(h->v, n * sizeof(*v));
    if (v == NULL) {
        rc = SK_ERR;
        goto done;
    }
    h->v = v;
    h->cap = n;
done:
    return rc;
}

/* Contract: may allocate (x2 growth); n is added only on SK_OK. */
int sk_heap_push(sk_heap *h, sk_heap_node *n)
{
    int rc = SK_OK;

    if (h->len == h->cap &&
        sk_heap_reserve(h, h->cap ? h->cap * 2 : SK_HEAP_MIN_CAP) != SK_OK) {
        rc = SK_ERR;
        goto done;
    }
    sk_heap_set(h, h->len++, n);
    sk_heap_sift_up(h, n->idx);
done:
    return rc;
}

/* Contract: no allocation; a node not in the heap is left alone. */
void sk_heap_remove(sk_heap *h, sk_heap_node *n)
{
    size_t i = n->idx;
    sk_heap_node *last;

    if (i == SK_HEAP_NONE)
        goto done;
    n->idx = SK_HEAP_NONE;
    last = h->v[--h->len];
    if (i == h->len)
        goto done;
    sk_heap_set(h, i, last); /* the last one fills the hole */
    sk_heap_update(h, last);
done:
    return;
}

/* Contract: no allocation; n is in h. */
void sk_heap_update(sk_heap *h, sk_heap_node *n)
{
    size_t i = n->idx;

    if (i > 0 && sk_heap_before(n, h->v[(i - 1) / 2]))
        sk_heap_sift_up(h, i);
    else
        sk_heap_sift_down(h, i);
}
