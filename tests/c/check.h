/*
 * check.h - a tiny test framework for the C core (no Python, no deps).
 *
 * A test is a function declared with TEST(name) in any tests/c/test_<area>.c;
 * a constructor registers it, so adding a file or a test needs no edit
 * anywhere else.  test_main.c runs the registered tests sorted by file and
 * line (or only those whose "<area>.<name>" contains one of the arguments).
 *
 * CHECK*() count every passed and failed check; a failure prints
 * "file:line: area.test: what" and the run goes on.  The last line of the
 * output is "N passed, M failed" (checks), and the exit code is 1 if M > 0.
 *
 * Checks are meant for the main thread; helper threads store results and
 * the test checks them after pthread_join (the counters are atomic anyway).
 */
#ifndef SK_TEST_CHECK_H
#define SK_TEST_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sk_test {
    const char *name; /* the TEST() name */
    const char *file; /* __FILE__ of the TEST() */
    int line;
    void (*fn)(void);
    struct sk_test *next; /* registry link, owned by test_main.c */
} sk_test;

/* Called by the TEST() constructors (before main). */
void sk_test_register(sk_test *t);

/* Count a passed check / report a failed one.  Used by the macros. */
void sk_check_pass(void);
void sk_check_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Print an informational line tagged with the current test (not a failure). */
void sk_test_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Tag later failure messages of the current test with ctx (a static
 * string, e.g. "tcp4"); NULL clears it.  Reset before every test. */
void sk_test_context(const char *ctx);

/* Multiply time upper bounds by this (env SK_TEST_TIME_SCALE, default 1;
 * run.sh raises it under valgrind). */
double sk_test_time_scale(void);

/* Number of failed checks so far: lets a test stop a loop after a failure. */
unsigned long sk_check_failures(void);

#define TEST(name)                                                          \
    static void test_##name(void);                                          \
    static sk_test test_entry_##name = {#name, __FILE__, __LINE__,          \
                                        test_##name, NULL};                 \
    __attribute__((constructor)) static void test_register_##name(void)     \
    {                                                                       \
        sk_test_register(&test_entry_##name);                               \
    }                                                                       \
    static void test_##name(void)

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (cond)                                                           \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);   \
    } while (0)

/* Signed integer comparison, e.g. CHECK_INT(rc, ==, SK_OK). */
#define CHECK_INT(a, op, b)                                                 \
    do {                                                                    \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);     \
        if (check_a_ op check_b_)                                           \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__,                               \
                          "CHECK_INT(%s %s %s) failed: %lld vs %lld", #a,   \
                          #op, #b, check_a_, check_b_);                     \
    } while (0)

/* Unsigned 64-bit comparison (sizes, lengths, details). */
#define CHECK_U64(a, op, b)                                                 \
    do {                                                                    \
        unsigned long long check_a_ = (unsigned long long)(a);              \
        unsigned long long check_b_ = (unsigned long long)(b);              \
        if (check_a_ op check_b_)                                           \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__,                               \
                          "CHECK_U64(%s %s %s) failed: %llu (0x%llx) vs "   \
                          "%llu (0x%llx)",                                  \
                          #a, #op, #b, check_a_, check_a_, check_b_,        \
                          check_b_);                                        \
    } while (0)

/* A result code, printing the sk_err (pointer) message on a mismatch. */
#define CHECK_RC(rc, want, errp)                                            \
    do {                                                                    \
        int check_rc_ = (rc), check_want_ = (want);                         \
        const sk_err *check_e_ = (errp);                                    \
        if (check_rc_ == check_want_)                                       \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__,                               \
                          "CHECK_RC(%s == %s) failed: got %d (%s), want "   \
                          "%d; err code %d errno %d msg \"%s\"",            \
                          #rc, #want, check_rc_, sk_test_rc_name(check_rc_),\
                          check_want_,                                      \
                          check_e_ ? (int)check_e_->code : -1,              \
                          check_e_ ? check_e_->sys_errno : 0,               \
                          check_e_ ? check_e_->msg : "");                   \
    } while (0)

/* Byte comparison; prints the first differing offset. */
#define CHECK_MEM(a, b, n)                                                  \
    do {                                                                    \
        const unsigned char *check_a_ = (const unsigned char *)(a);         \
        const unsigned char *check_b_ = (const unsigned char *)(b);         \
        size_t check_n_ = (n), check_i_ = sk_test_memdiff(check_a_,         \
                                                          check_b_,         \
                                                          check_n_);        \
        if (check_i_ == check_n_)                                           \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__,                               \
                          "CHECK_MEM(%s, %s, %s) failed at offset %zu of "  \
                          "%zu: 0x%02x vs 0x%02x",                          \
                          #a, #b, #n, check_i_, check_n_,                   \
                          check_a_[check_i_], check_b_[check_i_]);          \
    } while (0)

/* C string equality (NULL-safe). */
#define CHECK_STR(a, b)                                                     \
    do {                                                                    \
        const char *check_a_ = (a), *check_b_ = (b);                        \
        if (check_a_ && check_b_ && strcmp(check_a_, check_b_) == 0)        \
            sk_check_pass();                                                \
        else                                                                \
            sk_check_fail(__FILE__, __LINE__,                               \
                          "CHECK_STR(%s, %s) failed: \"%s\" vs \"%s\"", #a, \
                          #b, check_a_ ? check_a_ : "(null)",               \
                          check_b_ ? check_b_ : "(null)");                  \
    } while (0)

/* ---- helpers shared by the test files (all static inline) ------------- */

static inline size_t sk_test_memdiff(const unsigned char *a,
                                     const unsigned char *b, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (a[i] != b[i])
            break;
    return i;
}

static inline const char *sk_test_rc_name(int rc)
{
    switch (rc) {
    case 0: return "SK_OK";
    case -1: return "SK_ERR";
    case 1: return "SK_NEED_DATA";
    case 2: return "SK_TIMEOUT";
    case 3: return "SK_INTR";
    default: return "?";
    }
}

/* xorshift64: small, seeded, reproducible (seed must not be 0). */
typedef struct sk_rng {
    uint64_t s;
} sk_rng;

static inline uint64_t rng_next(sk_rng *r)
{
    uint64_t x = r->s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->s = x;
    return x;
}

/* Uniform-ish in [0, n); n > 0. */
static inline uint64_t rng_below(sk_rng *r, uint64_t n)
{
    return rng_next(r) % n;
}

/* Reference encoder, independent of the code under test. */
static inline void ref_put_len(unsigned char *out, unsigned hs, int little,
                               uint64_t len)
{
    unsigned i;

    for (i = 0; i < hs; i++) {
        unsigned shift = 8 * (little ? i : hs - 1 - i);
        out[i] = (unsigned char)(shift < 64 ? len >> shift : 0);
    }
}

/* Deterministic payload bytes: frame k, offset i. */
static inline unsigned char ref_byte(uint64_t k, size_t i)
{
    return (unsigned char)((k * 131u) ^ (i * 7u) ^ (i >> 8) ^ (i >> 16));
}

static inline void ref_fill(unsigned char *p, size_t n, uint64_t k)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = ref_byte(k, i);
}

#endif /* SK_TEST_CHECK_H */
