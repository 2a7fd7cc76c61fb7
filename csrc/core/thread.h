/*
 * thread.h - starting the core's own threads (the state sampler of
 * watch.c, the segment capture of capture.c): a condition variable on
 * CLOCK_MONOTONIC (clock.h deadlines), and a thread that blocks every
 * signal, so no syscall of the application's threads sees an EINTR because
 * of it and Python's signal handlers keep running in the main thread.  The
 * thread is started through sys.h (sk_thread_create), so fault injection
 * reaches it.
 */
#ifndef SK_THREAD_H
#define SK_THREAD_H

#include <pthread.h>
#include <stddef.h>

#include "sk.h"

/* Contract: initialise *cv to wait on CLOCK_MONOTONIC (pthread_cond_timedwait
 * with clock.h deadlines).  SK_OK, or SK_ERR (SK_E_NOMEM) with *cv still
 * initialised (on the default clock), so the caller may destroy it either
 * way. */
int sk_cond_init_monotonic(pthread_cond_t *cv, sk_err *err);

/* Contract: start fn(arg) in a new joinable thread with a stack of
 * stack_size bytes and every signal blocked.  SK_OK with *t set, or SK_ERR
 * with err naming "pthread_create" (or SK_E_NOMEM). */
int sk_thread_spawn(pthread_t *t, size_t stack_size, void *(*fn)(void *), void *arg,
                    sk_err *err);

#endif /* SK_THREAD_H */
