/* test_buf.c - sk_buf: reserve/commit/consume/append, compaction, growth,
 * shrink, zero-init (buf.h). */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

TEST(zero_init_is_valid)
{
    sk_buf b = {0};

    CHECK_U64(sk_buf_len(&b), ==, 0);
    CHECK_U64(sk_buf_spare(&b), ==, 0);
    sk_buf_consume(&b, 0);
    sk_buf_shrink(&b);
    sk_buf_free(&b); /* freeing a never-used buffer is fine */
    CHECK_INT(sk_buf_append(&b, "abc", 3), ==, 0);
    CHECK_U64(sk_buf_len(&b), ==, 3);
    CHECK_MEM(sk_buf_rptr(&b), "abc", 3);
    sk_buf_free(&b);
    CHECK_U64(sk_buf_len(&b), ==, 0);
    sk_buf_free(&b); /* twice: still fine */
}

TEST(init_resets)
{
    sk_buf b;

    memset(&b, 0x5a, sizeof(b));
    sk_buf_init(&b);
    CHECK(b.data == NULL || b.cap > 0);
    CHECK_U64(sk_buf_len(&b), ==, 0);
    CHECK_INT(sk_buf_append(&b, "x", 1), ==, 0);
    CHECK_U64(sk_buf_len(&b), ==, 1);
    sk_buf_free(&b);
    /* usable again after free */
    CHECK_INT(sk_buf_append(&b, "yz", 2), ==, 0);
    CHECK_MEM(sk_buf_rptr(&b), "yz", 2);
    sk_buf_free(&b);
}

TEST(reserve_commit_consume)
{
    sk_buf b = {0};
    unsigned char expect[1000];
    size_t i;

    CHECK_INT(sk_buf_reserve(&b, 100), ==, 0);
    CHECK_U64(sk_buf_spare(&b), >=, 100);
    CHECK_U64(sk_buf_len(&b), ==, 0);
    for (i = 0; i < 100; i++)
        sk_buf_wptr(&b)[i] = (unsigned char)i;
    sk_buf_commit(&b, 60);
    CHECK_U64(sk_buf_len(&b), ==, 60);
    sk_buf_commit(&b, 0);
    CHECK_U64(sk_buf_len(&b), ==, 60);
    for (i = 0; i < 60; i++)
        expect[i] = (unsigned char)i;
    CHECK_MEM(sk_buf_rptr(&b), expect, 60);
    sk_buf_consume(&b, 10);
    CHECK_U64(sk_buf_len(&b), ==, 50);
    CHECK_MEM(sk_buf_rptr(&b), expect + 10, 50);
    sk_buf_consume(&b, 0);
    CHECK_U64(sk_buf_len(&b), ==, 50);
    /* reserve keeps the readable bytes even if it moves them */
    CHECK_INT(sk_buf_reserve(&b, 900), ==, 0);
    CHECK_U64(sk_buf_spare(&b), >=, 900);
    CHECK_MEM(sk_buf_rptr(&b), expect + 10, 50);
    CHECK_U64(b.start, <=, b.end);
    CHECK_U64(b.end, <=, b.cap);
    sk_buf_consume(&b, 50);
    CHECK_U64(sk_buf_len(&b), ==, 0);
    sk_buf_free(&b);
}

TEST(append_sequence)
{
    sk_buf b = {0};
    unsigned char *ref = malloc(200000);
    size_t have = 0, off = 0, i;
    sk_rng r = {0x1234567u};

    if (!ref)
        return;
    /* random appends and consumes, checked against a flat reference */
    for (i = 0; i < 2000 && sk_check_failures() == 0; i++) {
        size_t n = (size_t)rng_below(&r, 300);
        unsigned char tmp[300];
        size_t j;

        for (j = 0; j < n; j++)
            tmp[j] = (unsigned char)rng_next(&r);
        if (have + n > 200000)
            break;
        if (sk_buf_append(&b, tmp, n) != 0) {
            CHECK(!"append failed");
            break;
        }
        memcpy(ref + have, tmp, n);
        have += n;
        if (rng_below(&r, 3) == 0) {
            size_t c = (size_t)rng_below(&r, have - off + 1);
            sk_buf_consume(&b, c);
            off += c;
        }
        if (sk_buf_len(&b) != have - off ||
            memcmp(sk_buf_rptr(&b), ref + off, have - off) != 0) {
            CHECK(!"buffer content differs from the reference");
            break;
        }
    }
    CHECK_U64(sk_buf_len(&b), ==, have - off);
    CHECK_MEM(sk_buf_rptr(&b), ref + off, have - off);
    CHECK_INT(sk_buf_append(&b, "", 0), ==, 0);
    CHECK_U64(sk_buf_len(&b), ==, have - off);
    sk_buf_free(&b);
    free(ref);
}

TEST(compaction_instead_of_growth)
{
    sk_buf b = {0};
    unsigned char tail[16];
    size_t cap;
    unsigned char *fill;

    CHECK_INT(sk_buf_reserve(&b, 4096), ==, 0);
    cap = b.cap;
    CHECK_U64(cap, >=, 4096);
    fill = malloc(cap);
    if (!fill) {
        sk_buf_free(&b);
        return;
    }
    ref_fill(fill, cap, 7);
    /* fill completely, consume all but 16 bytes */
    CHECK_INT(sk_buf_append(&b, fill, cap), ==, 0);
    CHECK_U64(b.cap, ==, cap);
    memcpy(tail, fill + cap - 16, 16);
    sk_buf_consume(&b, cap - 16);
    /* the request fits once the consumed prefix is dropped: no growth */
    CHECK_INT(sk_buf_reserve(&b, cap - 16), ==, 0);
    CHECK_U64(b.cap, ==, cap);
    CHECK_U64(b.start, ==, 0);
    CHECK_U64(sk_buf_len(&b), ==, 16);
    CHECK_U64(sk_buf_spare(&b), >=, cap - 16);
    CHECK_MEM(sk_buf_rptr(&b), tail, 16);
    sk_buf_free(&b);
    free(fill);
}

TEST(compaction_when_prefix_exceeds_half)
{
    sk_buf b = {0};
    unsigned char *data;
    size_t cap, total;

    CHECK_INT(sk_buf_reserve(&b, 4096), ==, 0);
    cap = b.cap;
    total = cap / 2 + 200; /* fits: no growth needed below */
    data = malloc(total);
    if (!data) {
        sk_buf_free(&b);
        return;
    }
    ref_fill(data, total, 4);
    CHECK_INT(sk_buf_append(&b, data, total), ==, 0);
    CHECK_U64(b.cap, ==, cap);
    sk_buf_consume(&b, cap / 2 + 100); /* consumed prefix > cap / 2 */
    CHECK_INT(sk_buf_reserve(&b, 1), ==, 0);
    CHECK_U64(b.cap, ==, cap);
    /* by now (at consume or at reserve) the prefix has been compacted */
    CHECK_U64(b.start, <=, b.cap / 2);
    CHECK_U64(sk_buf_len(&b), ==, 100);
    CHECK_MEM(sk_buf_rptr(&b), data + total - 100, 100);
    sk_buf_free(&b);
    free(data);
}

TEST(growth_is_geometric)
{
    sk_buf b = {0};
    size_t last_cap = 0, i;
    unsigned changes = 0;
    unsigned char c;

    /* 1e6 one-byte appends: x1.5 growth means ~35 reallocations; a linear
     * or fixed-step growth would need thousands. */
    for (i = 0; i < 1000000; i++) {
        c = (unsigned char)(i * 31u);
        if (sk_buf_append(&b, &c, 1) != 0) {
            CHECK(!"append failed");
            break;
        }
        if (b.cap != last_cap) {
            changes++;
            last_cap = b.cap;
        }
    }
    CHECK_U64(sk_buf_len(&b), ==, 1000000);
    CHECK_U64(changes, <=, 60);
    CHECK_U64(b.cap, <, 4000000); /* not wildly over-allocated */
    for (i = 0; i < 1000000; i++)
        if (sk_buf_rptr(&b)[i] != (unsigned char)(i * 31u))
            break;
    CHECK_U64(i, ==, 1000000);
    sk_buf_free(&b);
}

TEST(shrink_frees_big_empty)
{
    sk_buf b = {0};
    unsigned char *big = malloc(4 * SK_BUF_KEEP);

    if (!big)
        return;
    ref_fill(big, 4 * SK_BUF_KEEP, 9);
    CHECK_INT(sk_buf_append(&b, big, 4 * SK_BUF_KEEP), ==, 0);
    CHECK_U64(b.cap, >, SK_BUF_KEEP);
    /* not empty: shrink changes nothing */
    sk_buf_shrink(&b);
    CHECK_U64(sk_buf_len(&b), ==, 4 * SK_BUF_KEEP);
    CHECK_MEM(sk_buf_rptr(&b), big, 4 * SK_BUF_KEEP);
    sk_buf_consume(&b, 4 * SK_BUF_KEEP - 1);
    sk_buf_shrink(&b);
    CHECK_U64(sk_buf_len(&b), ==, 1);
    CHECK_INT(sk_buf_rptr(&b)[0], ==, big[4 * SK_BUF_KEEP - 1]);
    /* empty and big: the storage goes */
    sk_buf_consume(&b, 1);
    sk_buf_shrink(&b);
    CHECK_U64(b.cap, <=, SK_BUF_KEEP);
    CHECK_U64(b.start, ==, 0);
    CHECK_U64(b.end, ==, 0);
    CHECK_U64(sk_buf_len(&b), ==, 0);
    /* still usable */
    CHECK_INT(sk_buf_append(&b, "hello", 5), ==, 0);
    CHECK_MEM(sk_buf_rptr(&b), "hello", 5);
    sk_buf_free(&b);
    free(big);
}

TEST(shrink_keeps_small_empty)
{
    sk_buf b = {0};
    size_t cap;

    CHECK_INT(sk_buf_append(&b, "0123456789", 10), ==, 0);
    cap = b.cap;
    CHECK_U64(cap, <=, SK_BUF_KEEP);
    sk_buf_consume(&b, 10);
    sk_buf_shrink(&b);
    /* small storage is kept, offsets reset */
    CHECK_U64(b.cap, ==, cap);
    CHECK(b.data != NULL);
    CHECK_U64(b.start, ==, 0);
    CHECK_U64(b.end, ==, 0);
    CHECK_U64(sk_buf_spare(&b), ==, cap);
    sk_buf_free(&b);
}

TEST(reserve_failure_leaves_buffer_unchanged)
{
    sk_buf b = {0};
    sk_buf before;

    CHECK_INT(sk_buf_append(&b, "keep me", 7), ==, 0);
    sk_buf_consume(&b, 2);
    before = b;
    /* impossible sizes fail cleanly: no size_t overflow, no crash, and the
     * readable bytes stay (a compaction before failing would be harmless,
     * so only length, capacity and content are compared) */
    CHECK_INT(sk_buf_reserve(&b, SIZE_MAX), ==, -1);
    CHECK(b.cap == before.cap && sk_buf_len(&b) == 5);
    /* readable + n is exactly SIZE_MAX + 1: the off-by-one overflow */
    CHECK_INT(sk_buf_reserve(&b, SIZE_MAX - sk_buf_len(&b) + 1), ==, -1);
    CHECK(b.cap == before.cap && sk_buf_len(&b) == 5);
    CHECK_INT(sk_buf_reserve(&b, SIZE_MAX / 4), ==, -1);
    CHECK(b.cap == before.cap && sk_buf_len(&b) == 5);
    CHECK_MEM(sk_buf_rptr(&b), "ep me", 5);
    CHECK_INT(sk_buf_append(&b, "!", 1), ==, 0);
    CHECK_MEM(sk_buf_rptr(&b), "ep me!", 6);
    sk_buf_free(&b);
}
