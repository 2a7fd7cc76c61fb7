/*
 * rand.h - the test kit's random numbers: splitmix64, fast and good enough
 * for jitter, slice sizes and per-packet draws (the fault proxy, the
 * packet delay line).  Not for anything secret.  No locking: each state
 * belongs to one thread.  No Python, no GIL needed.
 */
#ifndef SK_TESTKIT_RAND_H
#define SK_TESTKIT_RAND_H

#include <stdint.h>

/* Contract: pure but for advancing *state.  The next number of the
 * sequence seeded by *state's first value. */
static inline uint64_t sk_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#endif /* SK_TESTKIT_RAND_H */
