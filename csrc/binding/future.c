/*
 * future.c - the Future of threaded-duplex requests.
 *
 * pysockkit._core.Future is the C half of pysockkit._duplex.Future, which
 * also derives from concurrent.futures.Future, so isinstance() checks,
 * asyncio.wrap_future(), concurrent.futures.wait() and as_completed() take
 * it.  It carries a promise (promise.h) that the receive worker settles
 * WITHOUT the GIL when the reply arrives or the deadline passes; result()
 * and exception() wait on it without the GIL (a futex, woken only if
 * someone waits).  The reply payload is copied into the promise and turned
 * into bytes by the first result(), with the GIL.
 *
 * Only a future watched the Python way takes the slow path: one with
 * add_done_callback() callbacks, or one whose concurrent.futures internals
 * (_condition, _waiters, _state: what wait() and as_completed() use) were
 * looked at.  That sets SK_P_NOTIFY, so whoever settles it calls
 * skpy_future_notify() with the GIL: it tells the concurrent.futures
 * waiters (under their condition, as concurrent.futures does) and runs the
 * callbacks, in the settling thread - the receive worker for replies and
 * timeouts.  Until then _state still reads PENDING, so a waiter is never
 * told twice or not at all.
 *
 * Every method runs with the GIL held; result() and exception() release
 * it while they wait (in slices in the main thread, so Ctrl-C interrupts).
 *
 * Ownership: whoever may settle a pending future holds a strong reference
 * to it (the connection's request table, see conn.c).  A
 * future can also be made by calling the class; it is then settled only by
 * set_result()/set_exception()/cancel(), like any concurrent.futures.Future.
 */
#include "util.h"

#include <structmember.h>

#include "areas.h"
#include "core/clock.h"
#include "core/promise.h"
#include "future.h"

typedef struct {
    PyObject_HEAD
    sk_promise p;
    PyObject *mod;        /* borrowed: the type keeps the module alive */
    PyObject *result;     /* the result once made (bytes) or set */
    PyObject *exc;        /* the exception once made or set */
    PyObject *callbacks;  /* list of callables not called yet, or NULL */
    PyObject *cond;       /* concurrent.futures compatibility (lazy): */
    PyObject *waiters;    /*   threading.Condition and its waiter list */
    int notified;         /* the concurrent.futures waiters were told */
    PyObject *weakreflist;
} FutureObject;

#define FUT(op) ((FutureObject *)(op))

/* ------------------------------------------------------------ helpers */

/* concurrent.futures._base, imported on first need.  Borrowed; NULL with
 * an exception set.  GIL held. */
static PyObject *skpy_cf(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);

    if (st->cf_base == NULL)
        st->cf_base = PyImport_ImportModule("concurrent.futures._base");
    return st->cf_base;
}

/* Raise concurrent.futures.<name>(msg).  Returns NULL.  GIL held. */
static PyObject *skpy_cf_raise(PyObject *mod, const char *name, const char *msg)
{
    PyObject *cf = skpy_cf(mod), *py_cls;

    if (cf == NULL)
        goto done;
    py_cls = PyObject_GetAttrString(cf, name);
    if (py_cls == NULL)
        goto done;
    if (msg != NULL)
        PyErr_SetString(py_cls, msg);
    else
        PyErr_SetNone(py_cls);
    Py_DECREF(py_cls);
done:
    return NULL;
}

/* Report an exception raised by a done-callback the way concurrent.futures
 * does (logger "concurrent.futures", level ERROR, with the traceback),
 * then clear it.  GIL held, an exception set. */
static void skpy_future_log_callback_error(PyObject *op)
{
    PyObject *py_exc = NULL, *cf, *py_log = NULL, *py_args = NULL,
             *py_kw = NULL, *py_r = NULL;
    PyObject *py_t, *py_v, *py_tb;

    PyErr_Fetch(&py_t, &py_v, &py_tb);
    PyErr_NormalizeException(&py_t, &py_v, &py_tb);
    if (py_v != NULL && py_tb != NULL)
        PyException_SetTraceback(py_v, py_tb);
    py_exc = py_v;
    Py_XDECREF(py_t);
    Py_XDECREF(py_tb);
    cf = skpy_cf(FUT(op)->mod);
    if (cf == NULL)
        goto error;
    py_log = PyObject_GetAttrString(cf, "LOGGER");
    if (py_log == NULL)
        goto error;
    py_args = Py_BuildValue("(sO)", "exception calling callback for %r", op);
    py_kw = Py_BuildValue("{sO}", "exc_info", py_exc ? py_exc : Py_None);
    if (py_args == NULL || py_kw == NULL)
        goto error;
    py_r = PyObject_GetAttrString(py_log, "error");
    if (py_r != NULL)
        Py_SETREF(py_r, PyObject_Call(py_r, py_args, py_kw));
error:
    if (py_r == NULL)
        PyErr_WriteUnraisable(op);
    Py_XDECREF(py_r);
    Py_XDECREF(py_kw);
    Py_XDECREF(py_args);
    Py_XDECREF(py_log);
    Py_XDECREF(py_exc);
}

/* Call every callback added so far, in order, each once (one taken from
 * the list is never seen again, so concurrent drains never double a call).
 * GIL held; keeps a pending exception intact. */
static void skpy_future_run_callbacks(PyObject *op)
{
    FutureObject *f = FUT(op);
    PyObject *py_cbs, *py_r;
    Py_ssize_t i;

    while (f->callbacks != NULL) {
        py_cbs = f->callbacks;
        f->callbacks = NULL;
        for (i = 0; i < PyList_GET_SIZE(py_cbs); i++) {
            py_r = PyObject_CallOneArg(PyList_GET_ITEM(py_cbs, i), op);
            if (py_r == NULL)
                skpy_future_log_callback_error(op);
            Py_XDECREF(py_r);
        }
        Py_DECREF(py_cbs);
    }
}

/* The exception of a FAILED future, made from its failure code on first
 * use.  Borrowed; NULL with an exception set.  GIL held. */
static PyObject *skpy_future_exc(FutureObject *f)
{
    skpy_state *st = skpy_get_state(f->mod);

    if (f->exc != NULL)
        goto done;
    switch (f->p.fail) {
    case SK_PF_TIMEOUT:
        f->exc = PyObject_CallFunction(
            st->Timeout, "s",
            "request_async: no reply in time; a late reply will be dropped "
            "(stats['late']), never given to another request. On plain "
            "framing, if the peer dropped the request without answering, "
            "later replies arrive one place behind and later requests raise "
            "sk.OutOfStep: then reconnect, or use "
            "sk.Framing(correlation=True) on both peers");
        break;
    case SK_PF_OUT_OF_STEP:
        f->exc = PyObject_CallFunction(
            st->OutOfStep, "s",
            "request_async: no reply in time, and meanwhile a reply arrived "
            "that was dropped as the late reply of an earlier timed-out "
            "request: replies are arriving behind their requests. Either the "
            "peer answers slower than the timeout, or it dropped a request "
            "without answering it, and then no reply on this plain "
            "connection can be matched to its request any more: reconnect, "
            "or use sk.Framing(correlation=True) on both peers (replies "
            "matched by id)");
        break;
    case SK_PF_NOMEM:
        f->exc = PyObject_CallFunction(
            PyExc_MemoryError, "s", "the reply came but could not be stored");
        break;
    case SK_PF_REMOTE: /* an error reply: the payload is the peer's text */
        f->exc = skpy_remote_error(f->mod, (const char *)f->p.data,
                                   (Py_ssize_t)f->p.len);
        if (f->exc != NULL)
            sk_promise_release(&f->p);
        break;
    default:
        f->exc = PyObject_CallFunction(st->ConnectionClosed, "s",
                                       "the request was failed");
        break;
    }
done:
    return f->exc;
}

/* Raise the stored exception.  Returns NULL.  GIL held. */
static PyObject *skpy_future_raise(FutureObject *f)
{
    PyObject *py_exc = skpy_future_exc(f);

    if (py_exc == NULL) /* making it failed: that exception is set */
        goto done;
    if (PyExceptionInstance_Check(py_exc))
        PyErr_SetObject((PyObject *)Py_TYPE(py_exc), py_exc);
    else if (PyExceptionClass_Check(py_exc))
        PyErr_SetNone(py_exc);
    else
        PyErr_Format(PyExc_TypeError, "set_exception() was given %R, not an "
                     "exception", py_exc);
done:
    return NULL;
}

/* Wait without the GIL until settled, or raise concurrent.futures'
 * TimeoutError after timeout seconds (None: no limit; 0: do not wait;
 * negative or NaN: ValueError, see skpy_deadline).  0 or -1 with an
 * exception set (also a signal handler's).  GIL held on entry and exit. */
static int skpy_future_wait(FutureObject *f, PyObject *py_timeout)
{
    int64_t deadline = SK_NO_DEADLINE;
    int rc, res = -1;

    /* checked first, so a bad timeout fails the same way whether or not
     * the future is done yet */
    if (skpy_deadline(py_timeout, &deadline) < 0)
        goto done;
    res = 0;
    if (sk_promise_state(&f->p) != SK_P_PENDING)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    rc = sk_promise_wait(&f->p, deadline, &intr);
    Py_END_ALLOW_THREADS
    if (rc == SK_TIMEOUT) {
        skpy_cf_raise(f->mod, "TimeoutError", NULL);
        res = -1;
    } else if (rc == SK_INTR) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_InterruptedError, "interrupted by a signal");
        res = -1;
    }
done:
    return res;
}

/* ----------------------------------------------------- binding-wide API */

/* Contract: GIL held.  A new pending future of the registered class. */
PyObject *skpy_future_new(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    PyTypeObject *cls = st->FutureClass ? (PyTypeObject *)st->FutureClass
                                        : st->FutureType;
    FutureObject *f;

    f = (FutureObject *)cls->tp_alloc(cls, 0);
    if (f != NULL) {
        sk_promise_init(&f->p);
        f->mod = mod;
    }
    return (PyObject *)f;
}

/* Contract: op is a future made by skpy_future_new; no GIL needed. */
sk_promise *skpy_future_promise(PyObject *op)
{
    return &FUT(op)->p;
}

/* Contract: p belongs to a future; no GIL needed.  Borrowed. */
PyObject *skpy_future_of(sk_promise *p)
{
    return (PyObject *)((char *)p - offsetof(FutureObject, p));
}

/* Contract: GIL held; op is settled.  Tells the concurrent.futures waiters
 * (once) and runs the callbacks not run yet.  Keeps a pending exception. */
void skpy_future_notify(PyObject *op)
{
    FutureObject *f = FUT(op);
    PyObject *py_t, *py_v, *py_tb, *py_w, *py_r, *py_list;
    const char *meth;
    Py_ssize_t i;

    PyErr_Fetch(&py_t, &py_v, &py_tb);
    if (!f->notified) {
        f->notified = 1;
        if (f->cond != NULL) {
            switch (sk_promise_state(&f->p)) {
            case SK_P_DONE:
                meth = "add_result";
                break;
            case SK_P_FAILED:
                meth = "add_exception";
                break;
            default:
                meth = "add_cancelled";
                break;
            }
            py_r = PyObject_CallMethod(f->cond, "acquire", NULL);
            if (py_r == NULL) {
                PyErr_WriteUnraisable(op);
            } else {
                Py_DECREF(py_r);
                py_list = f->waiters ? PySequence_List(f->waiters) : PyList_New(0);
                for (i = 0; py_list != NULL && i < PyList_GET_SIZE(py_list); i++) {
                    py_w = PyList_GET_ITEM(py_list, i);
                    py_r = PyObject_CallMethod(py_w, meth, "O", op);
                    if (py_r == NULL)
                        PyErr_WriteUnraisable(op);
                    Py_XDECREF(py_r);
                }
                if (py_list == NULL)
                    PyErr_WriteUnraisable(op);
                Py_XDECREF(py_list);
                py_r = PyObject_CallMethod(f->cond, "notify_all", NULL);
                if (py_r == NULL)
                    PyErr_WriteUnraisable(op);
                Py_XDECREF(py_r);
                py_r = PyObject_CallMethod(f->cond, "release", NULL);
                if (py_r == NULL)
                    PyErr_WriteUnraisable(op);
                Py_XDECREF(py_r);
            }
        }
    }
    skpy_future_run_callbacks(op);
    PyErr_Restore(py_t, py_v, py_tb);
}

/* Contract: GIL held.  Fail op with py_exc if it is still pending: wakes
 * its waiters and notifies.  Returns 1 if it settled it, 0 if it was
 * already settled. */
int skpy_future_fail(PyObject *op, PyObject *py_exc)
{
    FutureObject *f = FUT(op);
    PyObject *py_old = f->exc;

    /* stored first: a waiter that sees FAILED finds it (it needs the GIL
     * to read it anyway) */
    int won;

    f->exc = Py_NewRef(py_exc);
    won = sk_promise_settle(&f->p, SK_P_FAILED, SK_PF_OWNER);
    if (!won) {
        Py_SETREF(f->exc, py_old);
    } else {
        Py_XDECREF(py_old);
        if (f->p.prev & SK_P_WAITING)
            sk_promise_wake(&f->p);
        skpy_future_notify(op);
    }
    return won;
}

/* ------------------------------------------------------------ methods */

/* Contract: GIL held; a new object, or NULL with an exception set. */
static PyObject *Future_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    FutureObject *f;

    (void)args;
    (void)kwds;
    f = (FutureObject *)type->tp_alloc(type, 0);
    if (f == NULL)
        goto error;
    sk_promise_init(&f->p);
    f->mod = skpy_module_of(type);
    if (f->mod == NULL)
        Py_CLEAR(f);
error:
    return (PyObject *)f;
}

/* Takes no arguments; defined so that concurrent.futures.Future.__init__
 * (which would overwrite the compatibility attributes) is not called. */
static int Future_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    int rc = 0;

    (void)op;
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Future() takes no arguments");
        rc = -1;
    }
    return rc;
}

/* Contract: GIL held; the GC's traverse slot (visits what it owns). */
static int Future_traverse(PyObject *op, visitproc visit, void *arg)
{
    FutureObject *f = FUT(op);

    Py_VISIT(Py_TYPE(op));
    Py_VISIT(f->result);
    Py_VISIT(f->exc);
    Py_VISIT(f->callbacks);
    Py_VISIT(f->cond);
    Py_VISIT(f->waiters);
    return 0;
}

/* Contract: GIL held; the GC's clear slot (drops what it owns). */
static int Future_clear(PyObject *op)
{
    FutureObject *f = FUT(op);

    Py_CLEAR(f->result);
    Py_CLEAR(f->exc);
    Py_CLEAR(f->callbacks);
    Py_CLEAR(f->cond);
    Py_CLEAR(f->waiters);
    return 0;
}

/* Contract: GIL held; nobody else holds a reference, so no settler can
 * touch the promise any more. */
static void Future_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    PyObject_GC_UnTrack(op);
    if (FUT(op)->weakreflist != NULL)
        PyObject_ClearWeakRefs(op);
    Future_clear(op);
    sk_promise_release(&FUT(op)->p);
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyDoc_STRVAR(Future_result_doc,
"result(timeout=None) -> bytes\n--\n\n"
"The reply, waiting for it without the GIL up to timeout seconds (None:\n"
"no limit).  Raises the request's exception (sk.Timeout when no reply came\n"
"in time, sk.RemoteError when the peer's handler failed (an error reply),\n"
"sk.ConnectionClosed when the connection ended first),\n"
"concurrent.futures.CancelledError if cancelled, or\n"
"concurrent.futures.TimeoutError if still pending after timeout.\n\n"
"    >>> conn.request_async(b'ping', timeout=1.0).result()\n    b'pong'\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_result(PyObject *op, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames)
{
    FutureObject *f = FUT(op);
    PyObject *py_timeout = NULL, *py_res = NULL;
    uint32_t w = sk_promise_word(&f->p);

    if ((w & SK_P_STATE) == SK_P_DONE && f->result != NULL && nargs == 0) {
        py_res = Py_NewRef(f->result); /* the fast path */
        goto done;
    }
    if (nargs > 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0 &&
                      (nargs + PyTuple_GET_SIZE(kwnames) > 1 ||
                       PyUnicode_CompareWithASCIIString(
                           PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0))) {
        PyErr_SetString(PyExc_TypeError, "result(timeout=None)");
        goto done;
    }
    if (nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0) == 1)
        py_timeout = args[0];
    if (skpy_future_wait(f, py_timeout) < 0)
        goto done;
    switch (sk_promise_state(&f->p)) {
    case SK_P_DONE:
        if (f->result == NULL) {
            f->result = PyBytes_FromStringAndSize((const char *)f->p.data,
                                                  (Py_ssize_t)f->p.len);
            if (f->result == NULL)
                break;
            sk_promise_release(&f->p);
        }
        py_res = Py_NewRef(f->result);
        break;
    case SK_P_FAILED:
        skpy_future_raise(f);
        break;
    default:
        skpy_cf_raise(f->mod, "CancelledError", NULL);
        break;
    }
done:
    return py_res;
}

PyDoc_STRVAR(Future_exception_doc,
"exception(timeout=None) -> BaseException | None\n--\n\n"
"The request's exception, or None if it got its reply; waits like\n"
"result().\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_exception(PyObject *op, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    FutureObject *f = FUT(op);
    PyObject *py_exc, *py_res = NULL;

    if (nargs > 1 || (kwnames != NULL && (nargs + PyTuple_GET_SIZE(kwnames) > 1 ||
                                          PyUnicode_CompareWithASCIIString(
                                              PyTuple_GET_ITEM(kwnames, 0),
                                              "timeout") != 0))) {
        PyErr_SetString(PyExc_TypeError, "exception(timeout=None)");
        goto done;
    }
    if (skpy_future_wait(f, nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0)
                                ? args[0]
                                : NULL) < 0)
        goto done;
    switch (sk_promise_state(&f->p)) {
    case SK_P_DONE:
        py_res = Py_NewRef(Py_None);
        break;
    case SK_P_FAILED:
        py_exc = skpy_future_exc(f);
        py_res = py_exc ? Py_NewRef(py_exc) : NULL;
        break;
    default:
        skpy_cf_raise(f->mod, "CancelledError", NULL);
        break;
    }
done:
    return py_res;
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_done(PyObject *op, PyObject *Py_UNUSED(ig))
{
    return PyBool_FromLong(sk_promise_state(&FUT(op)->p) != SK_P_PENDING);
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_cancelled(PyObject *op, PyObject *Py_UNUSED(ig))
{
    return PyBool_FromLong(sk_promise_state(&FUT(op)->p) == SK_P_CANCELLED);
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_running(PyObject *op, PyObject *Py_UNUSED(ig))
{
    (void)op; /* a request is in flight or settled, never "running" */
    Py_RETURN_FALSE;
}

PyDoc_STRVAR(Future_cancel_doc,
"cancel() -> bool\n--\n\n"
"Cancel a pending request: True if it was pending (or already cancelled),\n"
"False if it already got its reply or failed.  Its reply, if it still\n"
"comes, is dropped; the request is not recalled from the peer.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_cancel(PyObject *op, PyObject *Py_UNUSED(ig))
{
    FutureObject *f = FUT(op);
    int cancelled = 1;

    if (sk_promise_state(&f->p) != SK_P_CANCELLED) {
        cancelled = sk_promise_cancel(&f->p);
        if (cancelled)
            skpy_future_notify(op);
    }
    return PyBool_FromLong(cancelled);
}

PyDoc_STRVAR(Future_add_done_callback_doc,
"add_done_callback(fn)\n--\n\n"
"Call fn(future) once it is settled: in the receive worker's thread for a\n"
"reply or a timeout, at once (in this thread) if it already is.  An\n"
"exception from fn is logged (logger 'concurrent.futures') and ignored.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_add_done_callback(PyObject *op, PyObject *py_fn)
{
    FutureObject *f = FUT(op);
    PyObject *py_res = NULL;

    if (f->callbacks == NULL) {
        f->callbacks = PyList_New(0);
        if (f->callbacks == NULL)
            goto error;
    }
    if (PyList_Append(f->callbacks, py_fn) < 0)
        goto error;
    /* pending: the settler sees the flag and runs the callbacks; settled
     * (now or before): run what is not run yet, here */
    if (!sk_promise_mark(&f->p, SK_P_NOTIFY))
        skpy_future_run_callbacks(op);
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

/* Settle with a Python value (set_result/set_exception).  GIL held. */
static PyObject *skpy_future_set(FutureObject *f, unsigned final, PyObject *py_v)
{
    PyObject *py_msg, *py_res = NULL;

    if (!sk_promise_settle(&f->p, final, SK_PF_OWNER)) {
        py_msg = PyUnicode_FromFormat("%R", (PyObject *)f);
        if (py_msg != NULL) {
            skpy_cf_raise(f->mod, "InvalidStateError", PyUnicode_AsUTF8(py_msg));
            Py_DECREF(py_msg);
        }
        goto error;
    }
    /* nobody reads these before we give the GIL back */
    if (final == SK_P_DONE)
        Py_XSETREF(f->result, Py_NewRef(py_v));
    else
        Py_XSETREF(f->exc, Py_NewRef(py_v));
    if (f->p.prev & SK_P_WAITING)
        sk_promise_wake(&f->p);
    skpy_future_notify((PyObject *)f);
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_set_result(PyObject *op, PyObject *py_v)
{
    return skpy_future_set(FUT(op), SK_P_DONE, py_v);
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_set_exception(PyObject *op, PyObject *py_v)
{
    return skpy_future_set(FUT(op), SK_P_FAILED, py_v);
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_set_running_or_notify_cancel(PyObject *op,
                                                     PyObject *Py_UNUSED(ig))
{
    PyObject *py_res = NULL;

    switch (sk_promise_state(&FUT(op)->p)) {
    case SK_P_CANCELLED:
        py_res = Py_NewRef(Py_False);
        break;
    case SK_P_PENDING:
        /* stays PENDING: these futures have no RUNNING */
        py_res = Py_NewRef(Py_True);
        break;
    default:
        PyErr_SetString(PyExc_RuntimeError, "Future in unexpected state");
        break;
    }
    return py_res;
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Future_repr(PyObject *op)
{
    FutureObject *f = FUT(op);
    PyObject *py_res;

    switch (sk_promise_state(&f->p)) {
    case SK_P_PENDING:
        py_res = PyUnicode_FromFormat("<%s at %p state=pending>",
                                      Py_TYPE(op)->tp_name, op);
        break;
    case SK_P_DONE:
        py_res = PyUnicode_FromFormat("<%s at %p state=finished returned %s>",
                                      Py_TYPE(op)->tp_name, op,
                                      f->result ? Py_TYPE(f->result)->tp_name
                                                : "bytes");
        break;
    case SK_P_FAILED:
        py_res = PyUnicode_FromFormat("<%s at %p state=finished raised %s>",
                                      Py_TYPE(op)->tp_name, op,
                                      f->exc ? Py_TYPE(f->exc)->tp_name
                                      : f->p.fail == SK_PF_TIMEOUT ? "Timeout"
                                      : f->p.fail == SK_PF_OUT_OF_STEP ? "OutOfStep"
                                      : f->p.fail == SK_PF_REMOTE  ? "RemoteError"
                                                                   : "Error");
        break;
    default:
        py_res = PyUnicode_FromFormat("<%s at %p state=cancelled>",
                                      Py_TYPE(op)->tp_name, op);
        break;
    }
    return py_res;
}

/* -------------------------------- concurrent.futures compatibility */

/* _state as concurrent.futures spells it.  Looking marks the future
 * (SK_P_NOTIFY) so its settle is reported under _condition; until that
 * report it reads PENDING. */
static PyObject *Future_get_state(PyObject *op, void *closure)
{
    FutureObject *f = FUT(op);
    uint32_t w;
    const char *name;

    (void)closure;
    if (!f->notified)
        sk_promise_mark(&f->p, SK_P_NOTIFY);
    w = sk_promise_word(&f->p);
    if ((w & SK_P_STATE) == SK_P_PENDING || ((w & SK_P_NOTIFY) && !f->notified))
        name = "PENDING";
    else if ((w & SK_P_STATE) == SK_P_CANCELLED)
        name = "CANCELLED_AND_NOTIFIED";
    else
        name = "FINISHED";
    return PyUnicode_InternFromString(name);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Future_get_condition(PyObject *op, void *closure)
{
    FutureObject *f = FUT(op);
    skpy_state *st = skpy_get_state(f->mod);
    PyObject *py_threading, *py_res = NULL;

    (void)closure;
    if (f->cond == NULL) {
        if (st->Condition == NULL) {
            py_threading = PyImport_ImportModule("threading");
            if (py_threading == NULL)
                goto error;
            st->Condition = PyObject_GetAttrString(py_threading, "Condition");
            Py_DECREF(py_threading);
            if (st->Condition == NULL)
                goto error;
        }
        f->cond = PyObject_CallNoArgs(st->Condition);
        if (f->cond == NULL)
            goto error;
    }
    if (!f->notified)
        sk_promise_mark(&f->p, SK_P_NOTIFY);
    py_res = Py_NewRef(f->cond);
error:
    return py_res;
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Future_get_waiters(PyObject *op, void *closure)
{
    FutureObject *f = FUT(op);
    PyObject *py_res = NULL;

    (void)closure;
    if (f->waiters == NULL) {
        f->waiters = PyList_New(0);
        if (f->waiters == NULL)
            goto error;
    }
    if (!f->notified)
        sk_promise_mark(&f->p, SK_P_NOTIFY);
    py_res = Py_NewRef(f->waiters);
error:
    return py_res;
}

static PyMethodDef Future_methods[] = {
    {"result", (PyCFunction)(void (*)(void))Future_result,
     METH_FASTCALL | METH_KEYWORDS, Future_result_doc},
    {"exception", (PyCFunction)(void (*)(void))Future_exception,
     METH_FASTCALL | METH_KEYWORDS, Future_exception_doc},
    {"done", Future_done, METH_NOARGS,
     "done() -> bool\n--\n\nTrue once the reply came, or the request failed "
     "or was cancelled."},
    {"cancelled", Future_cancelled, METH_NOARGS,
     "cancelled() -> bool\n--\n\nTrue if cancel() succeeded."},
    {"running", Future_running, METH_NOARGS,
     "running() -> bool\n--\n\nAlways False: a request is pending or settled."},
    {"cancel", Future_cancel, METH_NOARGS, Future_cancel_doc},
    {"add_done_callback", Future_add_done_callback, METH_O,
     Future_add_done_callback_doc},
    {"set_result", Future_set_result, METH_O,
     "set_result(result)\n--\n\nSettle a pending future with result "
     "(concurrent.futures.Future API); its reply, if it comes, is dropped."},
    {"set_exception", Future_set_exception, METH_O,
     "set_exception(exception)\n--\n\nFail a pending future with exception."},
    {"set_running_or_notify_cancel", Future_set_running_or_notify_cancel,
     METH_NOARGS,
     "set_running_or_notify_cancel() -> bool\n--\n\nFalse if cancelled, True "
     "if pending (concurrent.futures.Executor API)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Future_getset[] = {
    {"_state", Future_get_state, NULL,
     "concurrent.futures compatibility (used by wait/as_completed).", NULL},
    {"_condition", Future_get_condition, NULL,
     "concurrent.futures compatibility (used by wait/as_completed).", NULL},
    {"_waiters", Future_get_waiters, NULL,
     "concurrent.futures compatibility (used by wait/as_completed).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Future_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(FutureObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(Future_doc,
"Future()\n--\n\n"
"C half of pysockkit._duplex.Future, the future request_async() returns:\n"
"the concurrent.futures.Future API, settled by the receive worker without\n"
"the GIL.\n");

static PyType_Slot Future_slots[] = {
    {Py_tp_doc, (void *)Future_doc},
    {Py_tp_new, Future_new},
    {Py_tp_init, Future_init},
    {Py_tp_dealloc, Future_dealloc},
    {Py_tp_traverse, Future_traverse},
    {Py_tp_clear, Future_clear},
    {Py_tp_repr, Future_repr},
    {Py_tp_methods, Future_methods},
    {Py_tp_getset, Future_getset},
    {Py_tp_members, Future_members},
    {0, NULL},
};

static PyType_Spec Future_spec = {
    .name = "pysockkit._core.Future",
    .basicsize = sizeof(FutureObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Future_slots,
};

PyDoc_STRVAR(skpy_set_future_class_doc,
"set_future_class(cls)\n--\n\n"
"The class request futures are made of: a subclass of Future (see\n"
"pysockkit._duplex).  Called once at import.\n");

/* Contract: GIL held; module function: None, or NULL with an
 * exception set. */
static PyObject *skpy_set_future_class(PyObject *mod, PyObject *py_cls)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_res = NULL;

    if (!PyType_Check(py_cls)) {
        PyErr_SetString(PyExc_TypeError, "set_future_class() needs a class");
        goto error;
    }
    if (!PyType_IsSubtype((PyTypeObject *)py_cls, st->FutureType)) {
        PyErr_SetString(PyExc_TypeError,
                        "set_future_class() needs a subclass of _core.Future");
        goto error;
    }
    Py_XSETREF(st->FutureClass, Py_NewRef(py_cls));
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

static PyMethodDef skpy_future_functions[] = {
    {"set_future_class", skpy_set_future_class, METH_O,
     skpy_set_future_class_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_future(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    int rc = -1;

    st->FutureType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Future_spec,
                                                              NULL);
    if (st->FutureType == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Future", (PyObject *)st->FutureType) < 0)
        goto error;
    if (PyModule_AddFunctions(mod, skpy_future_functions) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}
