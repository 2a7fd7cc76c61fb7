/* test_heap.c - the indexed min-heap (heap.h): order, ties, removal and
 * update anywhere, moved nodes, reserve, and a seeded random run checked
 * against a plain array after every operation. */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/heap.h"

typedef struct item {
    int tag;
    sk_heap_node n;
} item;

/* The heap property and every node's idx, for all of h. */
static int heap_ok(const sk_heap *h)
{
    size_t i;

    for (i = 0; i < h->len; i++) {
        const sk_heap_node *a = h->v[i], *p;
        if (a->idx != i)
            return 0;
        if (i == 0)
            continue;
        p = h->v[(i - 1) / 2];
        if (p->key > a->key || (p->key == a->key && p->tie > a->tie))
            return 0;
    }
    return 1;
}

TEST(pops_in_key_then_tie_order)
{
    static const int64_t keys[] = {50, 10, 30, 10, 70, 20, 10, 60};
    item it[8];
    sk_heap h;
    sk_heap_node *top;
    int64_t last_key = INT64_MIN;
    uint64_t last_tie = 0;
    size_t i;

    sk_heap_init(&h);
    CHECK(sk_heap_top(&h) == NULL);
    for (i = 0; i < 8; i++) {
        it[i].tag = (int)i;
        sk_heap_node_init(&it[i].n);
        CHECK(!sk_heap_contains(&it[i].n));
        it[i].n.key = keys[i];
        it[i].n.tie = 8 - i; /* later items win ties */
        CHECK_RC(sk_heap_push(&h, &it[i].n), SK_OK, NULL);
        CHECK(sk_heap_contains(&it[i].n));
    }
    CHECK(heap_ok(&h));
    for (i = 0; i < 8; i++) {
        top = sk_heap_top(&h);
        CHECK(top != NULL);
        if (top == NULL)
            break;
        CHECK(top->key > last_key || (top->key == last_key && top->tie > last_tie));
        last_key = top->key;
        last_tie = top->tie;
        sk_heap_remove(&h, top);
        CHECK(!sk_heap_contains(top));
        CHECK(heap_ok(&h));
    }
    /* the three 10s came out as items 6, 3, 1 (ties 2, 5, 7) */
    CHECK_U64(h.len, ==, 0);
    sk_heap_free(&h);
    sk_heap_free(&h); /* twice: fine */
}

TEST(entry_update_remove_anywhere)
{
    item it[5];
    sk_heap h;
    int i;

    sk_heap_init(&h);
    for (i = 0; i < 5; i++) {
        sk_heap_node_init(&it[i].n);
        it[i].tag = i;
        it[i].n.key = 100 + i;
        CHECK_RC(sk_heap_push(&h, &it[i].n), SK_OK, NULL);
    }
    CHECK_INT(SK_HEAP_ENTRY(sk_heap_top(&h), item, n)->tag, ==, 0);
    it[4].n.key = 1; /* the last becomes the first */
    sk_heap_update(&h, &it[4].n);
    CHECK(heap_ok(&h));
    CHECK_INT(SK_HEAP_ENTRY(sk_heap_top(&h), item, n)->tag, ==, 4);
    it[4].n.key = 1000; /* and the last again */
    sk_heap_update(&h, &it[4].n);
    CHECK(heap_ok(&h));
    CHECK_INT(SK_HEAP_ENTRY(sk_heap_top(&h), item, n)->tag, ==, 0);
    sk_heap_remove(&h, &it[2].n); /* from the middle */
    CHECK(heap_ok(&h));
    CHECK_U64(h.len, ==, 4);
    sk_heap_remove(&h, &it[2].n); /* not in it any more: no-op */
    CHECK_U64(h.len, ==, 4);
    sk_heap_remove(&h, &it[4].n); /* the last position */
    CHECK(heap_ok(&h));
    CHECK_U64(h.len, ==, 3);
    sk_heap_free(&h);
}

TEST(moved_nodes_and_reserve)
{
    item *a, *b;
    sk_heap h;
    size_t cap;
    int i;

    sk_heap_init(&h);
    CHECK_RC(sk_heap_reserve(&h, 3), SK_OK, NULL);
    cap = h.cap;
    CHECK_U64(cap, >=, 3);
    a = calloc(3, sizeof(*a));
    b = calloc(3, sizeof(*b));
    CHECK(a != NULL && b != NULL);
    if (a == NULL || b == NULL)
        goto done;
    for (i = 0; i < 3; i++) {
        sk_heap_node_init(&a[i].n);
        a[i].tag = i;
        a[i].n.key = 3 - i;
        CHECK_RC(sk_heap_push(&h, &a[i].n), SK_OK, NULL);
    }
    CHECK_U64(h.cap, ==, cap); /* reserved: no growth */
    /* the container moves (as the hub's slot array does on realloc) */
    memcpy(b, a, 3 * sizeof(*a));
    memset(a, 0xa5, 3 * sizeof(*a));
    for (i = 0; i < 3; i++)
        sk_heap_moved(&h, &b[i].n);
    CHECK(heap_ok(&h));
    CHECK_INT(SK_HEAP_ENTRY(sk_heap_top(&h), item, n)->tag, ==, 2);
    CHECK(sk_heap_top(&h) == &b[2].n);
    CHECK_RC(sk_heap_reserve(&h, SIZE_MAX), SK_ERR, NULL); /* overflow */
    CHECK_U64(h.len, ==, 3);
done:
    sk_heap_free(&h);
    free(a);
    free(b);
}

TEST(random_against_a_model)
{
    enum { N = 300, STEPS = 20000 };
    item *it = calloc(N, sizeof(*it));
    sk_rng r = {0x9e3779b97f4a7c15ULL};
    sk_heap h;
    size_t in = 0, k, best;
    int s, j;

    CHECK(it != NULL);
    if (it == NULL)
        return;
    sk_heap_init(&h);
    for (j = 0; j < N; j++) {
        sk_heap_node_init(&it[j].n);
        it[j].tag = j;
    }
    for (s = 0; s < STEPS && sk_check_failures() == 0; s++) {
        item *x = &it[rng_below(&r, N)];
        switch (rng_below(&r, 4)) {
        case 0: /* push or update */
        case 1:
            x->n.key = (int64_t)rng_below(&r, 64) - 32; /* many ties */
            x->n.tie = (uint64_t)x->tag;
            if (sk_heap_contains(&x->n)) {
                sk_heap_update(&h, &x->n);
            } else {
                CHECK_RC(sk_heap_push(&h, &x->n), SK_OK, NULL);
                in++;
            }
            break;
        case 2: /* remove anything */
            if (sk_heap_contains(&x->n))
                in--;
            sk_heap_remove(&h, &x->n);
            break;
        default: /* pop the top: it must be the model's minimum */
            if (in == 0) {
                CHECK(sk_heap_top(&h) == NULL);
                break;
            }
            best = N;
            for (k = 0; k < N; k++)
                if (sk_heap_contains(&it[k].n) &&
                    (best == N || it[k].n.key < it[best].n.key ||
                     (it[k].n.key == it[best].n.key &&
                      it[k].n.tie < it[best].n.tie)))
                    best = k;
            CHECK(sk_heap_top(&h) == &it[best].n);
            sk_heap_remove(&h, sk_heap_top(&h));
            in--;
            break;
        }
        CHECK_U64(h.len, ==, in);
        CHECK(heap_ok(&h));
    }
    sk_heap_free(&h);
    free(it);
}
