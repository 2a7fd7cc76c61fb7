/*
 * sys.h - one door for the core's allocations, thread starts and epoll sets,
 * so that a test can make any one of them fail (fault injection).
 *
 * sk_malloc, sk_calloc and sk_realloc behave as malloc(3), calloc(3) and
 * realloc(3) (a failed sk_realloc leaves the old block alone); their memory
 * is freed with free().  sk_thread_create returns 0 or an errno value, as
 * pthread_create does.  sk_epoll_create returns an fd, or -1 with errno set,
 * as epoll_create1 does.
 *
 * sk_fault_hook is NULL outside tests, which costs one predictable branch
 * per call.  The C runner (tests/c/test_inject.c) points it at a function
 * that is told the kind of call and where it is made ("csrc/hub.c:305") and
 * returns nonzero to make exactly that call fail: an allocation returns
 * NULL, sk_thread_create returns EAGAIN, sk_epoll_create sets errno to
 * EMFILE - what the real calls do when memory, threads or descriptors run
 * out.  Set the hook only while no core thread runs, or accept that their
 * calls see it too (it is read atomically).  No Python, no GIL needed.
 */
#ifndef SK_SYS_H
#define SK_SYS_H

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>

#include "atomic.h"

typedef enum {
    SK_SYS_MALLOC = 0,
    SK_SYS_CALLOC = 1,
    SK_SYS_REALLOC = 2,
    SK_SYS_THREAD = 3, /* pthread_create */
    SK_SYS_EPOLL = 4,  /* epoll_create1 */
} sk_sys_call;

/* Nonzero: fail this call.  site is a static "file:line" string. */
typedef int (*sk_fault_fn)(sk_sys_call call, const char *site);

extern sk_fault_fn sk_fault_hook; /* sys.c; NULL: nothing fails on purpose */

#define SK_SYS_STR2(x) #x
#define SK_SYS_STR(x) SK_SYS_STR2(x)
#define SK_SYS_SITE __FILE__ ":" SK_SYS_STR(__LINE__)

/* Contract: any thread, no GIL needed; nonzero when the hook asks this
 * call to fail. */
static inline int sk_fault_fire(sk_sys_call call, const char *site)
{
    sk_fault_fn f = SK_LOAD_RELAXED(&sk_fault_hook);

    return __builtin_expect(f != NULL, 0) && f(call, site);
}

/* Contract (the three allocators): as malloc/calloc/realloc, any thread,
 * no GIL needed; the caller frees with free(). */
static inline void *sk_malloc_at(size_t n, const char *site)
{
    return sk_fault_fire(SK_SYS_MALLOC, site) ? NULL : malloc(n);
}

static inline void *sk_calloc_at(size_t n, size_t size, const char *site)
{
    return sk_fault_fire(SK_SYS_CALLOC, site) ? NULL : calloc(n, size);
}

static inline void *sk_realloc_at(void *p, size_t n, const char *site)
{
    return sk_fault_fire(SK_SYS_REALLOC, site) ? NULL : realloc(p, n);
}

/* Contract: as pthread_create (0 or an errno value); the caller joins or
 * detaches the thread. */
static inline int sk_thread_create_at(pthread_t *t, const pthread_attr_t *attr,
                                      void *(*fn)(void *), void *arg,
                                      const char *site)
{
    return sk_fault_fire(SK_SYS_THREAD, site) ? EAGAIN
                                              : pthread_create(t, attr, fn, arg);
}

/* Contract: as epoll_create1 (an fd the caller closes, or -1 and errno). */
static inline int sk_epoll_create_at(int flags, const char *site)
{
    int fd = -1;

    if (sk_fault_fire(SK_SYS_EPOLL, site))
        errno = EMFILE;
    else
        fd = epoll_create1(flags);
    return fd;
}

#define sk_malloc(n) sk_malloc_at((n), SK_SYS_SITE)
#define sk_calloc(n, size) sk_calloc_at((n), (size), SK_SYS_SITE)
#define sk_realloc(p, n) sk_realloc_at((p), (n), SK_SYS_SITE)
#define sk_thread_create(t, attr, fn, arg)                                  \
    sk_thread_create_at((t), (attr), (fn), (arg), SK_SYS_SITE)
#define sk_epoll_create(flags) sk_epoll_create_at((flags), SK_SYS_SITE)

#endif /* SK_SYS_H */
