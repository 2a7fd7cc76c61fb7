/*
 * hub.c - the heartbeat hub singleton of the binding and hub_stats().
 *
 * The hub (core/hub.h) is one reactor thread for every heartbeating
 * connection of every interpreter.  It is a process resource (a thread),
 * not module state; it lives until the process exits.  A forked child
 * starts without the thread, so the child handler forgets the parent's hub
 * (its memory is left alone: the parent's connections in the child lose
 * their beats).
 */
#include "util.h"

#include <pthread.h>

#include "areas.h"
#include "hub.h"

static sk_hub *skpy_hub = NULL;
static pthread_once_t skpy_hub_once = PTHREAD_ONCE_INIT;

/* Contract: the child side of fork(), one thread, no GIL. */
static void skpy_hub_forget(void)
{
    skpy_hub = NULL;
}

/* Contract: once per process (pthread_once). */
static void skpy_hub_atfork(void)
{
    pthread_atfork(NULL, NULL, skpy_hub_forget);
}

/* Contract: GIL held (serialises the creation); borrowed result. */
sk_hub *skpy_hub_get(PyObject *mod)
{
    sk_err err;

    pthread_once(&skpy_hub_once, skpy_hub_atfork);
    if (skpy_hub == NULL && sk_hub_new(&skpy_hub, &err) != SK_OK) {
        skpy_hub = NULL;
        skpy_raise(mod, &err, NULL);
    }
    return skpy_hub;
}

PyDoc_STRVAR(skpy_hub_stats_doc,
"hub_stats() -> dict | None\n--\n\n"
"Counters of the heartbeat hub thread (None before it started): conns,\n"
"lingering, wakeups, pings, reads, dead, cpu_s.\n");

/* Contract: GIL held; a new dict, or None before the hub started. */
static PyObject *skpy_hub_stats(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    PyObject *py_res;
    sk_hub_stats st;

    (void)mod;
    if (skpy_hub == NULL) {
        py_res = Py_NewRef(Py_None);
        goto done;
    }
    sk_hub_get_stats(skpy_hub, &st);
    py_res = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:d}",
                           "conns", (unsigned long long)st.conns,
                           "lingering", (unsigned long long)st.lingering,
                           "wakeups", (unsigned long long)st.wakeups,
                           "pings", (unsigned long long)st.pings,
                           "reads", (unsigned long long)st.reads,
                           "dead", (unsigned long long)st.dead,
                           "cpu_s", (double)st.cpu_ns / 1e9);
done:
    return py_res;
}

static PyMethodDef skpy_hub_functions[] = {
    {"hub_stats", skpy_hub_stats, METH_NOARGS, skpy_hub_stats_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_hub(PyObject *mod)
{
    return PyModule_AddFunctions(mod, skpy_hub_functions);
}
