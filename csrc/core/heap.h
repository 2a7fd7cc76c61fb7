/*
 * heap.h - the indexed binary min-heap of the core: timers by due time.
 *
 * Intrusive: each element embeds an sk_heap_node, whose `key` orders it
 * (smaller first; equal keys by `tie`, smaller first) and whose `idx` is
 * its position in the heap (SK_HEAP_NONE when it is not in it), so an
 * element's key can change, or the element leave, in O(log n) without a
 * search.  The heap holds pointers to the nodes; the element owner keeps
 * them alive while they are in it (SK_HEAP_ENTRY gets the element back).
 *
 * Users: the hub's connection timers (hub.c), the correlation book's
 * request deadlines (corr.c) and the fault proxy's pair timers
 * (testkit/proxy.c).
 *
 * Memory: one pointer per element; sk_heap_push grows the array (x2, from
 * SK_HEAP_MIN_CAP) through sys.h, so allocation failures can be injected;
 * sk_heap_reserve grows it ahead, after which pushes up to that size never
 * fail.  No locking (the owner's lock covers it), no Python, no syscalls.
 */
#ifndef SK_HEAP_H
#define SK_HEAP_H

#include <stddef.h>
#include <stdint.h>

#include "sk.h"

#define SK_HEAP_NONE ((size_t)-1)
#define SK_HEAP_MIN_CAP 64

typedef struct sk_heap_node {
    int64_t key;  /* smaller comes first */
    uint64_t tie; /* among equal keys, smaller comes first */
    size_t idx;   /* position in the heap, SK_HEAP_NONE when not in it */
} sk_heap_node;

typedef struct sk_heap {
    sk_heap_node **v;
    size_t len, cap;
} sk_heap;

/* The element of type `type` whose member `member` is the node n. */
#define SK_HEAP_ENTRY(n, type, member)                                      \
    ((type *)(void *)((char *)(n) - offsetof(type, member)))

/* Contract: no allocation.  An empty heap. */
void sk_heap_init(sk_heap *h);

/* Contract: frees the array; the nodes are the owner's (their idx is left
 * as it was). */
void sk_heap_free(sk_heap *h);

/* Contract: a node not in any heap. */
static inline void sk_heap_node_init(sk_heap_node *n)
{
    n->key = 0;
    n->tie = 0;
    n->idx = SK_HEAP_NONE;
}

/* Contract: pure.  Is n in a heap? */
static inline int sk_heap_contains(const sk_heap_node *n)
{
    return n->idx != SK_HEAP_NONE;
}

/* Contract: pure.  The node with the smallest key, or NULL when empty. */
static inline sk_heap_node *sk_heap_top(const sk_heap *h)
{
    return h->len > 0 ? h->v[0] : NULL;
}

/* Grow the array to hold at least n nodes.  SK_OK, or SK_ERR (out of
 * memory; the heap is unchanged). */
int sk_heap_reserve(sk_heap *h, size_t n);

/* Add n (not in a heap; its key and tie set).  SK_OK, or SK_ERR (out of
 * memory; n is not added). */
int sk_heap_push(sk_heap *h, sk_heap_node *n);

/* Take n out of h, if it is in it. */
void sk_heap_remove(sk_heap *h, sk_heap_node *n);

/* n's key (or tie) changed: move it to its place.  n is in h. */
void sk_heap_update(sk_heap *h, sk_heap_node *n);

/* n (in h) was moved in memory, its container reallocated: point the heap
 * at its new address. */
static inline void sk_heap_moved(sk_heap *h, sk_heap_node *n)
{
    h->v[n->idx] = n;
}

#endif /* SK_HEAP_H */
