/*
 * watch.c - the Watcher type of pysockkit._core: a C sampler
 * thread (watch.[ch]) following one connection's TCP state.
 *
 *   Watcher(fd=-1, tuple=None, interval=0.001, sample_info=False,
 *           max_transitions=0, max_samples=0)
 *     tuple: (family, local_host, local_port, remote_host, remote_port)
 *   .stop()          end the sampler (GIL released while joining); again:
 *                    no-op
 *   .transitions()   [(t_ns, state, via_diag), ...] oldest first; t_ns is
 *                    absolute CLOCK_MONOTONIC (time.monotonic_ns())
 *   .samples()       [(t_ns, state, rtt_us, rttvar_us, snd_cwnd,
 *                      snd_ssthresh, unacked, total_retrans), ...]
 *   .stats()         dict of counters (see Watcher_stats)
 *   .follow(since_ns, timeout)
 *                    sk_watch_follow: 0 not closing, 1 closed (or
 *                    ended), 2 still closing after timeout s (None: no
 *                    limit); waits without the GIL, Ctrl-C interrupts
 *
 * The sampler never takes the GIL; this file only copies its rings into
 * Python objects.  Pending errors of the sampler (a failed sock_diag
 * lookup) are reported by stats()["error"] as an exception object.
 */
#include "util.h"

#include "areas.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/clock.h"
#include "core/watch.h"

/* handle: the sk_watch (owned); util.h */
typedef skpy_handle_obj WatcherObject;

/* ------------------------------------------------------------ lifecycle */

/* Contract: any thread, no GIL (skpy_handle_dealloc releases it): stop
 * and join the sampler, free everything. */
static void watch_release(void *w)
{
    sk_watch_free(w);
}

/* Contract: GIL held on entry and exit; released while the sampler is
 * joined and freed (at most about one sample's time). */
static void Watcher_dealloc(PyObject *op)
{
    skpy_handle_dealloc(op, watch_release);
}

/* Contract: GIL held.  Parse (family, src, sport, dst, dport) into r.
 * 0, or -1 with an exception set. */
static int parse_tuple(PyObject *py_t, sk_diag_lookup_req *r)
{
    const char *src, *dst;
    int family, sport, dport, rc = -1;

    memset(r, 0, sizeof(*r));
    if (!PyArg_ParseTuple(py_t, "isisi;tuple must be (family, local_host, "
                                "local_port, remote_host, remote_port)",
                          &family, &src, &sport, &dst, &dport))
        goto done;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError,
                        "family must be AF_INET or AF_INET6");
        goto done;
    }
    if (sport < 0 || sport > 65535 || dport < 0 || dport > 65535) {
        PyErr_SetString(PyExc_ValueError, "ports must be in 0..65535");
        goto done;
    }
    if (inet_pton(family, src, r->src) != 1
        || inet_pton(family, dst, r->dst) != 1) {
        PyErr_Format(PyExc_ValueError,
                     "not numeric %s addresses: %s, %s",
                     family == AF_INET ? "IPv4" : "IPv6", src, dst);
        goto done;
    }
    r->family = family;
    r->sport = (uint16_t)sport;
    r->dport = (uint16_t)dport;
    rc = 0;
done:
    return rc;
}

PyDoc_STRVAR(Watcher_doc,
"Watcher(fd=-1, tuple=None, interval=0.001, sample_info=False,\n"
"        max_transitions=0, max_samples=0)\n"
"--\n\n"
"Start a sampler thread following one TCP socket's state: the socket fd\n"
"(never dup'ed: once the application closes it the sampler follows the\n"
"4-tuple through sock_diag), or tuple = (family, local_host, local_port,\n"
"remote_host, remote_port).  0 for a ring size means the default (4096\n"
"transitions, 65536 info samples).  Private: use pysockkit.watch().");

/* Contract: GIL held; released around sk_watch_start (its first sample
 * may be a sock_diag round trip).  0 or -1 with an exception set. */
static int Watcher_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_fd[] = "fd", kw_tuple[] = "tuple",
                kw_iv[] = "interval", kw_si[] = "sample_info",
                kw_mt[] = "max_transitions", kw_ms[] = "max_samples";
    static char *kwlist[] = {kw_fd, kw_tuple, kw_iv, kw_si, kw_mt, kw_ms,
                             NULL};
    WatcherObject *self = (WatcherObject *)op;
    PyObject *py_tuple = Py_None;
    int fd = -1, sample_info = 0, rc = -1, r;
    double interval = 0.001;
    Py_ssize_t max_tr = 0, max_sm = 0;
    sk_watch_target t;
    sk_watch_config c;
    sk_watch *w = NULL;
    sk_err err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iOdpnn", kwlist, &fd,
                                     &py_tuple, &interval, &sample_info,
                                     &max_tr, &max_sm))
        goto done;
    if (self->handle != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Watcher is already started");
        goto done;
    }
    if (!isfinite(interval) || interval <= 0) {
        PyErr_SetString(PyExc_ValueError, "interval must be > 0 seconds");
        goto done;
    }
    if (max_tr < 0 || max_sm < 0) {
        PyErr_SetString(PyExc_ValueError, "ring sizes must be >= 0");
        goto done;
    }
    memset(&t, 0, sizeof(t));
    memset(&c, 0, sizeof(c));
    t.fd = fd < 0 ? -1 : fd;
    if (py_tuple != Py_None) {
        if (parse_tuple(py_tuple, &t.tuple) < 0)
            goto done;
        t.has_tuple = 1;
    }
    c.interval_ns = (int64_t)llround(interval * 1e9);
    if (c.interval_ns <= 0)
        c.interval_ns = 1; /* rejected by sk_watch_start with a message */
    c.sample_info = sample_info;
    c.max_transitions = (size_t)max_tr;
    c.max_samples = (size_t)max_sm;
    sk_err_clear(&err);
    Py_BEGIN_ALLOW_THREADS
    r = sk_watch_start(&t, &c, &w, &err);
    Py_END_ALLOW_THREADS
    if (r != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    self->handle = w;
    rc = 0;
done:
    return rc;
}

/* -------------------------------------------------------------- methods */

/* Contract: no GIL (skpy_handle_call_nogil releases it). */
static void watch_stop(void *w)
{
    sk_watch_stop(w);
}

/* Contract: GIL held on entry and exit, released while joining. */
static PyObject *Watcher_stop(PyObject *op, PyObject *noargs)
{
    (void)noargs;
    return skpy_handle_call_nogil(op, watch_stop);
}

/* Contract: GIL held on entry and exit, released while waiting, in slices
 * of SKPY_SLICE_MS in the main thread so that signal handlers run. */
static PyObject *Watcher_follow(PyObject *op, PyObject *args)
{
    WatcherObject *self = (WatcherObject *)op;
    PyObject *py_timeout, *py_res = NULL;
    long long since;
    int64_t deadline, until;
    int r;

    if (!PyArg_ParseTuple(args, "LO:follow", &since, &py_timeout))
        goto done;
    if (skpy_handle_get(op) == NULL || skpy_deadline(py_timeout, &deadline) < 0)
        goto done;
    for (;;) {
        until = deadline;
        if (skpy_slice_ms() > 0) {
            int64_t slice = sk_now_ns() + (int64_t)skpy_slice_ms() * 1000000;
            if (deadline == SK_NO_DEADLINE || slice < deadline)
                until = slice;
        }
        Py_BEGIN_ALLOW_THREADS
        r = sk_watch_follow(self->handle, (int64_t)since, until);
        Py_END_ALLOW_THREADS
        if (r != SK_WATCH_STILL_CLOSING || until == deadline)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done;
    }
    py_res = PyLong_FromLong(r);
done:
    return py_res;
}

/* Contract: GIL held.  A new list of (t_ns, state, via_diag); the copy out
 * of the ring is a malloc'ed array freed here. */
static PyObject *Watcher_transitions(PyObject *op, PyObject *noargs)
{
    WatcherObject *self = (WatcherObject *)op;
    sk_watch_transition *buf = NULL;
    PyObject *py_list = NULL, *py_item, *py_res = NULL;
    size_t n, got, i;

    (void)noargs;
    if (skpy_handle_get(op) == NULL)
        goto error;
    /* the ring only grows up to its cap: size, then copy */
    n = sk_watch_transitions(self->handle, NULL, 0);
    buf = PyMem_Malloc((n ? n : 1) * sizeof(*buf));
    if (buf == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    got = sk_watch_transitions(self->handle, buf, n);
    if (got > n)
        got = n;
    py_list = PyList_New((Py_ssize_t)got);
    if (py_list == NULL)
        goto error;
    for (i = 0; i < got; i++) {
        py_item = Py_BuildValue("(Lii)", (long long)buf[i].t_ns,
                                (int)buf[i].state, (int)buf[i].via_diag);
        if (py_item == NULL)
            goto error;
        PyList_SET_ITEM(py_list, (Py_ssize_t)i, py_item);
    }
    py_res = py_list;
    py_list = NULL;
error:
    PyMem_Free(buf);
    Py_XDECREF(py_list);
    return py_res;
}

/* Contract: GIL held.  A new list of sample tuples (module docstring). */
static PyObject *Watcher_samples(PyObject *op, PyObject *noargs)
{
    WatcherObject *self = (WatcherObject *)op;
    sk_watch_sample *buf = NULL;
    PyObject *py_list = NULL, *py_item, *py_res = NULL;
    size_t n, got, i;

    (void)noargs;
    if (skpy_handle_get(op) == NULL)
        goto error;
    n = sk_watch_samples(self->handle, NULL, 0);
    buf = PyMem_Malloc((n ? n : 1) * sizeof(*buf));
    if (buf == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    got = sk_watch_samples(self->handle, buf, n);
    if (got > n)
        got = n;
    py_list = PyList_New((Py_ssize_t)got);
    if (py_list == NULL)
        goto error;
    for (i = 0; i < got; i++) {
        const sk_watch_sample *s = &buf[i];
        py_item = Py_BuildValue("(LiIIIIII)", (long long)s->t_ns,
                                (int)s->state, s->rtt_us, s->rttvar_us,
                                s->snd_cwnd, s->snd_ssthresh, s->unacked,
                                s->total_retrans);
        if (py_item == NULL)
            goto error;
        PyList_SET_ITEM(py_list, (Py_ssize_t)i, py_item);
    }
    py_res = py_list;
    py_list = NULL;
error:
    PyMem_Free(buf);
    Py_XDECREF(py_list);
    return py_res;
}

/* Contract: GIL held.  (family, src, sport, dst, dport) as text, new ref. */
static PyObject *tuple_to_py(const sk_diag_lookup_req *r)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    PyObject *py_t = NULL;

    if (inet_ntop(r->family, r->src, src, sizeof(src)) == NULL
        || inet_ntop(r->family, r->dst, dst, sizeof(dst)) == NULL) {
        skpy_oserror("inet_ntop");
        goto done;
    }
    py_t = Py_BuildValue("(isisi)", r->family, src, (int)r->sport, dst,
                         (int)r->dport);
done:
    return py_t;
}

/* Contract: GIL held.  The exception object err maps to (new ref), built
 * without leaving it raised; NULL with an exception set on failure. */
static PyObject *err_to_exc(PyObject *mod, const sk_err *err)
{
    skpy_raise(mod, err, "the watch sampler stopped");
    return skpy_take_exception();
}

/* Contract: GIL held; a new dict. */
static PyObject *Watcher_stats(PyObject *op, PyObject *noargs)
{
    WatcherObject *self = (WatcherObject *)op;
    PyObject *py_d = NULL, *py_tuple = NULL, *py_exc = NULL;
    PyObject *py_state = NULL, *py_hand = NULL;
    sk_watch_stats st;

    (void)noargs;
    if (skpy_handle_get(op) == NULL)
        goto error;
    sk_watch_get_stats(self->handle, &st);
    if (st.has_tuple) {
        py_tuple = tuple_to_py(&st.tuple);
        if (py_tuple == NULL)
            goto error;
    } else {
        py_tuple = Py_NewRef(Py_None);
    }
    if (st.err.code != SK_E_NONE) {
        py_exc = err_to_exc(self->mod, &st.err);
        if (py_exc == NULL)
            goto error;
    } else {
        py_exc = Py_NewRef(Py_None);
    }
    py_state = st.state < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(st.state);
    if (py_state == NULL)
        goto error;
    py_hand = st.handover_ns == 0 ? Py_NewRef(Py_None)
                                  : PyLong_FromLongLong(st.handover_ns);
    if (py_hand == NULL)
        goto error;
    py_d = Py_BuildValue(
        "{s:L,s:L,s:L,s:O,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O,s:O,s:O,s:O,"
        "s:O,s:O}",
        "start_ns", (long long)st.start_ns,
        "first_ns", (long long)st.first_ns,
        "last_ns", (long long)st.last_ns,
        "handover_ns", py_hand,
        "samples", (unsigned long long)st.samples,
        "lookups", (unsigned long long)st.lookups,
        "transitions", (unsigned long long)st.transitions,
        "transitions_dropped", (unsigned long long)st.transitions_dropped,
        "info_samples", (unsigned long long)st.info_samples,
        "info_dropped", (unsigned long long)st.info_dropped,
        "cookie", (unsigned long long)st.cookie,
        "state", py_state,
        "running", st.running ? Py_True : Py_False,
        "finished", st.finished ? Py_True : Py_False,
        "fd_phase", st.fd_phase ? Py_True : Py_False,
        "tuple", py_tuple,
        "error", py_exc);
error:
    Py_XDECREF(py_tuple);
    Py_XDECREF(py_exc);
    Py_XDECREF(py_state);
    Py_XDECREF(py_hand);
    return py_d;
}

static PyMethodDef Watcher_methods[] = {
    {"stop", Watcher_stop, METH_NOARGS,
     "stop()\n--\n\nEnd the sampler thread and join it (idempotent)."},
    {"transitions", Watcher_transitions, METH_NOARGS,
     "transitions()\n--\n\n[(t_ns, state, via_diag), ...], oldest first."},
    {"samples", Watcher_samples, METH_NOARGS,
     "samples()\n--\n\n[(t_ns, state, rtt_us, rttvar_us, snd_cwnd, "
     "snd_ssthresh, unacked, total_retrans), ...], oldest first."},
    {"stats", Watcher_stats, METH_NOARGS,
     "stats()\n--\n\nA dict of the sampler's counters and status."},
    {"follow", Watcher_follow, METH_VARARGS,
     "follow(since_ns, timeout)\n--\n\nWait for the close to end (watch.h "
     "sk_watch_follow): 0 not closing, 1 closed, 2 still closing."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Watcher_slots[] = {
    {Py_tp_doc, (void *)Watcher_doc},
    {Py_tp_new, skpy_handle_new},
    {Py_tp_init, Watcher_init},
    {Py_tp_dealloc, Watcher_dealloc},
    {Py_tp_methods, Watcher_methods},
    {0, NULL},
};

static PyType_Spec Watcher_spec = {
    .name = "pysockkit._core.Watcher",
    .basicsize = sizeof(WatcherObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Watcher_slots,
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_watch(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Watcher_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Watcher", py_type) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "WATCH_DEFAULT_TRANSITIONS",
                                SK_WATCH_DEFAULT_TRANSITIONS) < 0
        || PyModule_AddIntConstant(mod, "WATCH_DEFAULT_SAMPLES",
                                   SK_WATCH_DEFAULT_SAMPLES) < 0
        || PyModule_AddIntConstant(mod, "WATCH_MAX_RING",
                                   (long)SK_WATCH_MAX_RING) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
