/*
 * atomic.h - the one set of atomic operations of the C core (GCC/Clang
 * __atomic builtins), named by what they guarantee.
 *
 * Fields shared between threads without a lock (heartbeat clocks, the
 * dead flag, a promise's state word, the receive worker's phase, the test
 * seams) are read and written only through these, never plainly.
 *
 *   SK_LOAD / SK_STORE            acquire / release: what was written before
 *                                 the store is seen after the load
 *   SK_LOAD_RELAXED / SK_STORE_RELAXED
 *                                 atomic, no ordering (counters, hooks, caches)
 *   SK_STORE_SEQ                  sequentially consistent store: for "announce,
 *                                 then check" handshakes (the worker says it
 *                                 sleeps, then looks at the queue; an enqueuer
 *                                 queues, then looks at what the worker said)
 *   SK_XCHG(p, v)                 exchange, acquire-release: the old value
 *   SK_XCHG_SEQ(p, v)             exchange, sequentially consistent
 *   SK_CAS(p, expected, desired, fail_order)
 *                                 compare-and-swap (strong), acquire-release
 *                                 on success and fail_order (SK_RELAXED,
 *                                 SK_ACQUIRE) on failure, where *expected
 *                                 gets the current value; nonzero if swapped
 *
 * No Python, no locks, any thread.
 */
#ifndef SK_ATOMIC_H
#define SK_ATOMIC_H

#define SK_RELAXED __ATOMIC_RELAXED
#define SK_ACQUIRE __ATOMIC_ACQUIRE

#define SK_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define SK_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define SK_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define SK_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define SK_STORE_SEQ(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define SK_XCHG(p, v) __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define SK_XCHG_SEQ(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define SK_CAS(p, expected, desired, fail_order)                            \
    __atomic_compare_exchange_n((p), (expected), (desired), 0,              \
                                __ATOMIC_ACQ_REL, (fail_order))

#endif /* SK_ATOMIC_H */
