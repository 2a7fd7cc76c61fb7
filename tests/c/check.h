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

struct sk_err;

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

/* Each CHECK* expands to one call (keeps the test files quick to build,
 * with sanitizers too); the operands are evaluated exactly once. */
void sk_check_int(int ok, long long a, long long b, const char *what,
                  const char *file, int line);
void sk_check_u64(int ok, unsigned long long a, unsigned long long b,
                  const char *what, const char *file, int line);
void sk_check_rc(int rc, int want, const struct sk_err *err,
                 const char *what, const char *file, int line);
void sk_check_mem(const void *a, const void *b, size_t n, const char *what,
                  const char *file, int line);
void sk_check_str(const char *a, const char *b, const char *what,
                  const char *file, int line);

#define CHECK(cond)                                                         \
    sk_check_int(!!(cond), 0, 0, "CHECK(" #cond ")", __FILE__, __LINE__)

/* Signed integer comparison, e.g. CHECK_INT(rc, ==, SK_OK). */
#define CHECK_INT(a, op, b)                                                 \
    do {                                                                    \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);     \
        sk_check_int(check_a_ op check_b_, check_a_, check_b_,              \
                     "CHECK_INT(" #a " " #op " " #b ")", __FILE__,          \
                     __LINE__);                                             \
    } while (0)

/* Unsigned 64-bit comparison (sizes, lengths, details). */
#define CHECK_U64(a, op, b)                                                 \
    do {                                                                    \
        unsigned long long check_a_ = (unsigned long long)(a);              \
        unsigned long long check_b_ = (unsigned long long)(b);              \
        sk_check_u64(check_a_ op check_b_, check_a_, check_b_,              \
                     "CHECK_U64(" #a " " #op " " #b ")", __FILE__,          \
                     __LINE__);                                             \
    } while (0)

/* A result code; on a mismatch the sk_err (a pointer, may be NULL) is
 * printed too. */
#define CHECK_RC(rc, want, errp)                                            \
    sk_check_rc((rc), (want), (errp), "CHECK_RC(" #rc " == " #want ")",    \
                __FILE__, __LINE__)

/* Byte comparison; prints the first differing offset. */
#define CHECK_MEM(a, b, n)                                                  \
    sk_check_mem((a), (b), (n), "CHECK_MEM(" #a ", " #b ", " #n ")",        \
                 __FILE__, __LINE__)

/* C string equality (NULL-safe). */
#define CHECK_STR(a, b)                                                     \
    sk_check_str((a), (b), "CHECK_STR(" #a ", " #b ")", __FILE__, __LINE__)

/* ---- helpers shared by the test files (all static inline) ------------- */

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
