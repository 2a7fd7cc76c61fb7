/*
 * reply.c - resolve_replies(): hands correlated replies to the
 * futures waiting for them, the per-frame loop of pysockkit.aio's
 * request() (and of anything else that keeps {id: future}).
 *
 *   resolve_replies(frames, pending, timers[, book]) -> (rest, resolved, late)
 *
 * frames is a list from Decoder.feed (correlation=True): bytes, or
 * (id, payload) tuples.  A tuple whose id has the reply bit (SK_ID_REPLY)
 * and whose request id (the id without the bit) is a key of the dict
 * `pending` is consumed: the future is popped from `pending`, the timer
 * handle with the same key, if any, is popped from `timers` and cancelled,
 * and future.set_result(payload) is called; for an error reply (the id
 * also has SK_ID_ERROR: the peer's handler failed) it is
 * future.set_exception(sk.RemoteError(payload text)).  A future that is already done
 * (its caller cancelled it) gets nothing and counts as `late`.  Every other
 * frame (plain, requests, replies whose id is not pending) is returned in
 * `rest`, in order, for the caller to queue or count.
 *
 * With `book` (a correlated _core.CorrelationBook, pysockkit.aio's), the
 * book decides: each reply is settled in it (corr.c) and only a
 * CORR_DELIVER goes to its future; late, duplicate and stray replies are
 * dropped (the book counted them), never returned in `rest`.  `timers`
 * then maps a request id to anything (its timeout): the entry is removed,
 * nothing is called on it (the book keeps the deadlines).
 *
 *   resolve_in_order(frames, pending, timers, first, count)
 *       -> (rest, resolved, late)
 *
 * is the same for plain framing, where replies carry no id and come in
 * the order of their requests (the late-reply rule of the synchronous
 * request, csrc/io.h `owed`, and of the threaded duplex, corr.h in-order
 * tables): frames[k], for k < count, is the reply to request first + k.
 * Its future (popped from `pending`, its timer cancelled) gets it; if the
 * request is no longer pending (it timed out or was cancelled) the frame
 * is dropped and counted `late`, never handed to a later request.  The
 * frames after the first `count` are returned in `rest`.
 *
 * It calls only the methods set_result, set_exception, done and cancel, so any
 * asyncio-compatible future works; the order of the callbacks the futures
 * schedule is the order of the frames.  No protocol state lives here.
 */
#include "util.h"

#include "areas.h"

#include "core/corr.h"
#include "core/frame.h"

/* Pop `key` from the dict d: a new reference, NULL if absent (no error
 * set), or NULL with an exception set (*err = 1).
 * Contract: GIL held; the caller owns the result. */
static PyObject *reply_pop(PyObject *d, PyObject *key, int *err)
{
    PyObject *py_v = PyDict_GetItemWithError(d, key); /* borrowed */

    if (py_v == NULL) {
        *err = PyErr_Occurred() != NULL;
        goto error;
    }
    Py_INCREF(py_v);
    if (PyDict_DelItem(d, key) < 0) {
        Py_CLEAR(py_v);
        *err = 1;
    }
error:
    return py_v;
}

/* Pop the timer handle of `key` from the dict `timers`, if any, and cancel
 * it (with cancel = 0 only drop the entry).  Contract: GIL held; key borrowed; 0, or -1 with an exception set. */
static int reply_cancel_timer(skpy_state *st, PyObject *timers, PyObject *key,
                              int cancel)
{
    PyObject *py_h, *py_r = NULL;
    int err = 0, rc = 0;

    if (PyDict_GET_SIZE(timers) == 0)
        goto error;
    py_h = reply_pop(timers, key, &err);
    if (py_h == NULL) {
        rc = err ? -1 : 0;
        goto error;
    }
    if (!cancel) { /* a book's timeout entry: only removed */
        Py_DECREF(py_h);
        goto error;
    }
    py_r = PyObject_CallMethodNoArgs(py_h, st->str_cancel);
    rc = py_r == NULL ? -1 : 0;
    Py_XDECREF(py_r);
    Py_DECREF(py_h);
error:
    return rc;
}

/* Deliver payload to fut (set_result), or for an error reply (remote)
 * sk.RemoteError(payload text) (set_exception); a future already done
 * counts in *late.
 * Contract: GIL held; mod, fut and payload are borrowed; 0, or -1 with an
 * exception set (one raised by set_result on a future not done). */
static int reply_deliver(PyObject *mod, PyObject *fut, PyObject *payload,
                         int remote, Py_ssize_t *resolved, Py_ssize_t *late)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *stack[2] = {fut, payload};
    PyObject *py_r = NULL, *py_type = NULL, *py_val = NULL, *py_tb = NULL;
    PyObject *py_exc = NULL;
    int rc = -1, done;

    if (remote) {
        if (!PyBytes_Check(payload)) {
            PyErr_SetString(PyExc_TypeError, "resolve_replies: a reply payload "
                                             "must be bytes");
            goto error;
        }
        py_exc = skpy_remote_error(mod, PyBytes_AS_STRING(payload),
                                   PyBytes_GET_SIZE(payload));
        if (py_exc == NULL)
            goto error;
        stack[1] = py_exc;
    }
    py_r = PyObject_VectorcallMethod(remote ? st->str_set_exception
                                            : st->str_set_result,
                                     stack,
                                     2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (py_r != NULL) {
        ++*resolved;
        rc = 0;
        goto error;
    }
    /* InvalidStateError, when the caller cancelled the future: asking
     * done() only now keeps the common path at one call per reply */
#if PY_VERSION_HEX >= 0x030C0000
    py_val = PyErr_GetRaisedException(); /* PyErr_Fetch is deprecated */
#else
    PyErr_Fetch(&py_type, &py_val, &py_tb);
#endif
    py_r = PyObject_VectorcallMethod(st->str_done, stack,
                                     1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (py_r == NULL)
        goto error;
    done = PyObject_IsTrue(py_r);
    if (done < 0)
        goto error;
    if (!done) { /* a real failure of set_result: raise it */
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(py_val);
#else
        PyErr_Restore(py_type, py_val, py_tb);
#endif
        py_type = py_val = py_tb = NULL;
        goto error;
    }
    ++*late;
    rc = 0;
error:
    Py_XDECREF(py_exc);
    Py_XDECREF(py_r);
    Py_XDECREF(py_type);
    Py_XDECREF(py_val);
    Py_XDECREF(py_tb);
    return rc;
}

PyDoc_STRVAR(resolve_replies_doc,
"resolve_replies(frames, pending, timers, book=None, /)\n"
"    -> (rest, resolved, late)\n--\n\n"
"Resolve the futures of `pending` ({request id: future}) with the reply\n"
"frames ((id | ID_REPLY, payload) tuples) among `frames` (an error reply,\n"
"id | ID_REPLY | ID_ERROR, fails its future with sk.RemoteError); cancel\n"
"and drop the matching `timers` handles.  Returns the frames left over, in order, and\n"
"the counts of futures resolved and of replies whose future was already\n"
"done.  With a CorrelationBook `book`, the book settles each reply: only\n"
"its CORR_DELIVER replies reach their futures, the others are dropped\n"
"(counted by the book), and `timers` entries are removed, not cancelled.\n"
"Internal to pysockkit.aio.\n");

/* Contract: GIL held (the event loop's thread); returns a new tuple owned
 * by the caller, or NULL with an exception set.  Futures and timer handles
 * popped from the dicts are released here after use; the frames list is
 * only read. */
static PyObject *Core_resolve_replies(PyObject *mod, PyObject *const *args,
                                      Py_ssize_t nargs)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *frames, *pending, *timers, *book = NULL;
    PyObject *py_rest = NULL, *py_key = NULL, *py_fut = NULL;
    PyObject *py_out = NULL;
    Py_ssize_t i, n, resolved = 0, late = 0;
    int err = 0;

    if (nargs < 3 || nargs > 4 || !PyList_Check(args[0]) ||
        !PyDict_Check(args[1]) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "resolve_replies(frames: list, pending: dict, "
                        "timers: dict, book: CorrelationBook | None = None)");
        goto error;
    }
    frames = args[0];
    pending = args[1];
    timers = args[2];
    if (nargs == 4 && args[3] != Py_None) {
        book = args[3];
        if (skpy_book_correlated(mod, book) < 0)
            goto error;
    }
    py_rest = PyList_New(0);
    if (py_rest == NULL)
        goto error;
    n = PyList_GET_SIZE(frames);
    for (i = 0; i < n && i < PyList_GET_SIZE(frames); i++) {
        /* (the second bound: a callback could shrink the list) */
        PyObject *f = PyList_GET_ITEM(frames, i); /* borrowed */
        unsigned long long id;

        if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 2 ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(f, 0)))
            goto keep;
        id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(f, 0));
        if (id == (unsigned long long)-1 && PyErr_Occurred())
            goto error;
        if (!(id & SK_ID_REPLY))
            goto keep;
        if (book != NULL && skpy_book_settle(book, id) != SK_CORR_DELIVER)
            continue; /* late, duplicate or stray: the book counted it */
        py_key = PyLong_FromUnsignedLongLong(id & SK_ID_MASK);
        if (py_key == NULL)
            goto error;
        py_fut = reply_pop(pending, py_key, &err);
        if (py_fut == NULL) {
            if (err)
                goto error;
            Py_CLEAR(py_key);
            if (book != NULL)
                continue; /* settled, but no future: nothing to hand it to */
            goto keep; /* late, duplicate or unknown: the caller counts */
        }
        if (reply_cancel_timer(st, timers, py_key, book == NULL) < 0)
            goto error;
        Py_CLEAR(py_key);
        Py_INCREF(f); /* set_result may run code that changes the list */
        err = reply_deliver(mod, py_fut, PyTuple_GET_ITEM(f, 1),
                            (id & SK_ID_ERROR) != 0, &resolved, &late);
        Py_DECREF(f);
        Py_CLEAR(py_fut);
        if (err < 0)
            goto error;
        continue;
    keep:
        if (PyList_Append(py_rest, f) < 0)
            goto error;
    }
    py_out = Py_BuildValue("(Onn)", py_rest, resolved, late);
error:
    Py_XDECREF(py_rest);
    Py_XDECREF(py_key);
    Py_XDECREF(py_fut);
    return py_out;
}

PyDoc_STRVAR(resolve_in_order_doc,
"resolve_in_order(frames, pending, timers, first, count, /)\n"
"    -> (rest, resolved, late)\n--\n\n"
"Plain framing, replies in order: frames[k] (k < count) is the reply to\n"
"request first + k.  Resolve its future in `pending` ({request number:\n"
"future}) and cancel its `timers` handle; a request no longer pending\n"
"(timed out, cancelled) has its reply dropped and counted late.  Returns\n"
"the frames after the first `count`, and the counts of futures resolved\n"
"and of replies dropped.  Internal to pysockkit.aio.\n");

/* Contract: GIL held (the event loop's thread); returns a new tuple owned
 * by the caller, or NULL with an exception set.  Futures popped from
 * `pending` are released here after use; the frames list is only read. */
static PyObject *Core_resolve_in_order(PyObject *mod, PyObject *const *args,
                                       Py_ssize_t nargs)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *frames, *pending, *timers, *f;
    PyObject *py_rest = NULL, *py_key = NULL, *py_fut = NULL, *py_out = NULL;
    Py_ssize_t i, n, count, resolved = 0, late = 0;
    unsigned long long first;
    int err = 0;

    if (nargs != 5 || !PyList_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyDict_Check(args[2]) || !PyLong_Check(args[3]) ||
        !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "resolve_in_order(frames: list, pending: dict, "
                        "timers: dict, first: int, count: int)");
        goto error;
    }
    frames = args[0];
    pending = args[1];
    timers = args[2];
    first = PyLong_AsUnsignedLongLong(args[3]);
    if (first == (unsigned long long)-1 && PyErr_Occurred())
        goto error;
    count = PyLong_AsSsize_t(args[4]);
    if (count == -1 && PyErr_Occurred())
        goto error;
    n = PyList_GET_SIZE(frames);
    for (i = 0; i < count && i < n && i < PyList_GET_SIZE(frames); i++) {
        /* (the last bound: a callback could shrink the list) */
        py_key = PyLong_FromUnsignedLongLong(first + (unsigned long long)i);
        if (py_key == NULL)
            goto error;
        py_fut = reply_pop(pending, py_key, &err);
        if (py_fut == NULL && err)
            goto error;
        if (reply_cancel_timer(st, timers, py_key, 1) < 0)
            goto error;
        Py_CLEAR(py_key);
        if (py_fut == NULL) { /* timed out or cancelled: dropped */
            late++;
            continue;
        }
        f = Py_NewRef(PyList_GET_ITEM(frames, i)); /* set_result may run
                                                       code that changes
                                                       the list */
        err = reply_deliver(mod, py_fut, f, 0, &resolved, &late);
        Py_DECREF(f);
        Py_CLEAR(py_fut);
        if (err < 0)
            goto error;
    }
    n = PyList_GET_SIZE(frames);
    py_rest = PyList_GetSlice(frames, i < n ? i : n, n);
    if (py_rest == NULL)
        goto error;
    py_out = Py_BuildValue("(Onn)", py_rest, resolved, late);
error:
    Py_XDECREF(py_rest);
    Py_XDECREF(py_key);
    Py_XDECREF(py_fut);
    return py_out;
}

static PyMethodDef reply_methods[] = {
    {"resolve_in_order", (PyCFunction)(void (*)(void))Core_resolve_in_order,
     METH_FASTCALL, resolve_in_order_doc},
    {"resolve_replies", (PyCFunction)(void (*)(void))Core_resolve_replies,
     METH_FASTCALL, resolve_replies_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_reply(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    int rc = -1;

    st->str_set_result = PyUnicode_InternFromString("set_result");
    if (st->str_set_result == NULL)
        goto error;
    st->str_set_exception = PyUnicode_InternFromString("set_exception");
    if (st->str_set_exception == NULL)
        goto error;
    st->str_done = PyUnicode_InternFromString("done");
    if (st->str_done == NULL)
        goto error;
    st->str_cancel = PyUnicode_InternFromString("cancel");
    if (st->str_cancel == NULL)
        goto error;
    if (PyModule_AddFunctions(mod, reply_methods) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}
