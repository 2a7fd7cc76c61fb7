/* thread.c - see thread.h. */
#include "thread.h"

#include <signal.h>
#include <time.h>

#include "sys.h"

/* Contract: see thread.h. */
int sk_cond_init_monotonic(pthread_cond_t *cv, sk_err *err)
{
    pthread_condattr_t ca;
    int rc = SK_ERR;

    if (pthread_condattr_init(&ca) != 0) {
        pthread_cond_init(cv, NULL);
        sk_err_set(err, SK_E_NOMEM, "pthread_condattr_init failed");
        goto done;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: see thread.h. */
int sk_thread_spawn(pthread_t *t, size_t stack_size, void *(*fn)(void *), void *arg,
                    sk_err *err)
{
    pthread_attr_t ta;
    sigset_t all, old;
    int r, rc = SK_ERR;

    if (pthread_attr_init(&ta) != 0) {
        sk_err_set(err, SK_E_NOMEM, "pthread_attr_init failed");
        goto done;
    }
    pthread_attr_setstacksize(&ta, stack_size);
    /* the thread inherits a full signal mask: signals go elsewhere */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = sk_thread_create(t, &ta, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&ta);
    if (r != 0) {
        sk_err_sys(err, "pthread_create", r);
        goto done;
    }
    rc = SK_OK;
done:
    return rc;
}
