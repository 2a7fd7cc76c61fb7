/*
 * _pysockkit.c - the pysockkit._core module: multi-phase init, module state
 * and the helpers every binding file shares (_pysockkit_util.h).
 *
 * The binding holds no protocol logic: it parses arguments, releases the GIL
 * around blocking calls, runs signal handlers when the core asks (EINTR and
 * every SKPY_SLICE_MS while waiting) and maps sk_err records onto the
 * exception classes of pysockkit._errors.
 */
#include "_pysockkit_util.h"

#include <errno.h>
#include <math.h>

#include "clock.h"

/* ---------------------------------------------------------------- helpers */

/* Contract: GIL held; mod is pysockkit._core. */
skpy_state *skpy_get_state(PyObject *mod)
{
    return (skpy_state *)PyModule_GetState(mod);
}

/* Contract: GIL held; a new reference owned by the caller, or NULL with an
 * exception set. */
PyObject *skpy_remote_error(PyObject *mod, const char *text, Py_ssize_t len)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_msg, *py_exc = NULL;

    py_msg = PyUnicode_DecodeUTF8(text != NULL ? text : "", text != NULL ? len : 0,
                                  "replace");
    if (py_msg == NULL)
        goto error;
    py_exc = PyObject_CallOneArg(st->RemoteError, py_msg);
error:
    Py_XDECREF(py_msg);
    return py_exc;
}

/* Contract: GIL held; returns NULL with the exception set. */
PyObject *skpy_raise(PyObject *mod, const sk_err *err, const char *hint)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *cls, *py_exc = NULL, *py_msg = NULL;

    switch (err->code) {
    case SK_E_TOO_LARGE: cls = st->FrameTooLarge; break;
    case SK_E_INCOMPLETE: cls = st->IncompleteFrame; break;
    case SK_E_CLOSED: cls = st->ConnectionClosed; break;
    case SK_E_RESET: cls = st->ConnectionReset; break;
    case SK_E_TIMEOUT: cls = st->Timeout; break;
    case SK_E_PEER_DEAD: cls = st->PeerDead; break;
    case SK_E_NOMEM: cls = PyExc_MemoryError; break; /* keep the message */
    case SK_E_ARG: cls = PyExc_ValueError; break;
    default: cls = st->Error; break;
    }
    if (hint != NULL && hint[0] != '\0')
        py_msg = PyUnicode_FromFormat("%s; %s", err->msg, hint);
    else
        py_msg = PyUnicode_FromString(err->msg);
    if (py_msg == NULL)
        goto error;
    if (err->sys_errno != 0)
        py_exc = PyObject_CallFunction(cls, "iO", err->sys_errno, py_msg);
    else
        py_exc = PyObject_CallOneArg(cls, py_msg);
    if (py_exc == NULL)
        goto error;
    if (err->code == SK_E_INCOMPLETE || err->code == SK_E_TOO_LARGE) {
        PyObject *py_d = PyLong_FromUnsignedLongLong(err->detail);
        if (py_d == NULL)
            goto error;
        if (PyObject_SetAttrString(py_exc,
                                   err->code == SK_E_INCOMPLETE ? "missing"
                                                                : "size",
                                   py_d) < 0) {
            Py_DECREF(py_d);
            goto error;
        }
        Py_DECREF(py_d);
    }
    PyErr_SetObject(cls, py_exc);
error:
    Py_XDECREF(py_exc);
    Py_XDECREF(py_msg);
    return NULL;
}

/* Contract: GIL held; reads errno. */
PyObject *skpy_oserror(const char *syscall)
{
    int e = errno;
    PyObject *py_exc;

    py_exc = PyObject_CallFunction(PyExc_OSError, "is", e, syscall);
    if (py_exc != NULL) {
        PyObject *py_msg = PyUnicode_FromFormat("%s: %s", syscall,
                                                strerror(e));
        if (py_msg != NULL) {
            PyObject_SetAttrString(py_exc, "strerror", py_msg);
            Py_DECREF(py_msg);
        }
        PyErr_SetObject(PyExc_OSError, py_exc);
        Py_DECREF(py_exc);
    }
    return NULL;
}

/* Contract: GIL held.  The same rule and messages as pysockkit/_net.py
 * check_timeout(): None waits forever, 0 polls once, a number of seconds
 * >= 0 waits that long; negative or NaN is a ValueError, a non-number (or a
 * bool) a TypeError.  The messages are built only on the error path. */
int skpy_deadline(PyObject *timeout, int64_t *deadline)
{
    double t;
    int rc = -1;

    if (timeout == NULL || timeout == Py_None) {
        *deadline = SK_NO_DEADLINE;
        rc = 0;
        goto done;
    }
    if (PyBool_Check(timeout))
        goto bad_type;
    t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError))
            goto bad_type;
        goto done;
    }
    if (isnan(t) || t < 0) {
        PyErr_Format(PyExc_ValueError,
                     "timeout must be None (wait forever) or a number of "
                     "seconds >= 0, not %R", timeout);
        goto done;
    }
    *deadline = sk_deadline_after(t);
    rc = 0;
    goto done;
bad_type:
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError,
                 "timeout must be None (wait forever) or a number of seconds "
                 ">= 0, not %.100s", Py_TYPE(timeout)->tp_name);
done:
    return rc;
}

/* The thread that imported the module: the main thread, in practice. */
static unsigned long skpy_main_ident;

/* Contract: any thread, no GIL needed.  Only the main thread runs signal
 * handlers, so only it wakes every SKPY_SLICE_MS to check for them; other
 * threads sleep until their event or deadline (a server with a thousand
 * idle threads would otherwise take the GIL thousands of times a second). */
int skpy_slice_ms(void)
{
    return PyThread_get_thread_ident() == skpy_main_ident ? SKPY_SLICE_MS : 0;
}

/* Contract: called WITHOUT the GIL from inside Py_BEGIN_ALLOW_THREADS;
 * ctx points at that block's saved thread state.  Takes the GIL, runs the
 * signal handlers, gives the GIL back; nonzero if a handler raised (the
 * exception stays pending for the caller to see after the block). */
int skpy_check_signals(void *ctx)
{
    PyThreadState **save = (PyThreadState **)ctx;
    int r;

    PyEval_RestoreThread(*save);
    r = PyErr_CheckSignals();
    *save = PyEval_SaveThread();
    return r < 0;
}

/* ----------------------------------------------------------------- module */

static int skpy_load_errors(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_errs;
    int rc = -1;

    py_errs = PyImport_ImportModule("pysockkit._errors");
    if (py_errs == NULL)
        goto error;
#define SKPY_LOAD(name)                                                   \
    do {                                                                  \
        st->name = PyObject_GetAttrString(py_errs, #name);                \
        if (st->name == NULL)                                             \
            goto error;                                                   \
    } while (0)
    SKPY_LOAD(Error);
    SKPY_LOAD(Timeout);
    SKPY_LOAD(FrameTooLarge);
    SKPY_LOAD(IncompleteFrame);
    SKPY_LOAD(ConnectionClosed);
    SKPY_LOAD(ConnectionReset);
    SKPY_LOAD(PeerDead);
    SKPY_LOAD(OutOfStep);
    SKPY_LOAD(RemoteError);
#undef SKPY_LOAD
    rc = 0;
error:
    Py_XDECREF(py_errs);
    return rc;
}

static int skpy_exec(PyObject *mod)
{
    int rc = -1;

    skpy_main_ident = PyThread_get_thread_ident();
    if (skpy_load_errors(mod) < 0)
        goto error;
    if (skpy_add_future(mod) < 0)
        goto error;
    if (skpy_add_conn(mod) < 0)
        goto error;
    if (skpy_add_frame(mod) < 0)
        goto error;
    if (skpy_add_tcpinfo(mod) < 0)
        goto error;
    if (skpy_add_diag(mod) < 0)
        goto error;
    if (skpy_add_proxy(mod) < 0)
        goto error;
    if (skpy_add_watch(mod) < 0)
        goto error;
    if (skpy_add_reply(mod) < 0)
        goto error;
    if (skpy_add_capture(mod) < 0)
        goto error;
    if (skpy_add_server(mod) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}

static int skpy_traverse(PyObject *mod, visitproc visit, void *arg)
{
    skpy_state *st = skpy_get_state(mod);
    Py_VISIT(st->Error);
    Py_VISIT(st->Timeout);
    Py_VISIT(st->FrameTooLarge);
    Py_VISIT(st->IncompleteFrame);
    Py_VISIT(st->ConnectionClosed);
    Py_VISIT(st->ConnectionReset);
    Py_VISIT(st->PeerDead);
    Py_VISIT(st->OutOfStep);
    Py_VISIT(st->RemoteError);
    Py_VISIT(st->ConnType);
    Py_VISIT(st->FutureType);
    Py_VISIT(st->FutureClass);
    Py_VISIT(st->cf_base);
    Py_VISIT(st->Condition);
    Py_VISIT(st->EntryType);
    Py_VISIT(st->entry_states);
    Py_VISIT(st->entry_families);
    Py_VISIT(st->entry_timers);
    Py_VISIT(st->str_set_result);
    Py_VISIT(st->str_set_exception);
    Py_VISIT(st->str_done);
    Py_VISIT(st->str_cancel);
    return 0;
}

static int skpy_clear(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    Py_CLEAR(st->Error);
    Py_CLEAR(st->Timeout);
    Py_CLEAR(st->FrameTooLarge);
    Py_CLEAR(st->IncompleteFrame);
    Py_CLEAR(st->ConnectionClosed);
    Py_CLEAR(st->ConnectionReset);
    Py_CLEAR(st->PeerDead);
    Py_CLEAR(st->OutOfStep);
    Py_CLEAR(st->RemoteError);
    Py_CLEAR(st->ConnType);
    Py_CLEAR(st->FutureType);
    Py_CLEAR(st->FutureClass);
    Py_CLEAR(st->cf_base);
    Py_CLEAR(st->Condition);
    Py_CLEAR(st->EntryType);
    Py_CLEAR(st->entry_states);
    Py_CLEAR(st->entry_families);
    Py_CLEAR(st->entry_timers);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_set_exception);
    Py_CLEAR(st->str_done);
    Py_CLEAR(st->str_cancel);
    return 0;
}

static void skpy_free(void *mod)
{
    skpy_clear((PyObject *)mod);
}

static PyModuleDef_Slot skpy_slots[] = {
    {Py_mod_exec, (void *)skpy_exec},
    {0, NULL},
};

PyDoc_STRVAR(skpy_doc,
             "C core of pysockkit: framed TCP I/O, TCP_INFO and sock_diag.\n"
             "\n"
             "Private: use the public API in the pysockkit package.");

static struct PyModuleDef skpy_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pysockkit._core",
    .m_doc = skpy_doc,
    .m_size = sizeof(skpy_state),
    .m_slots = skpy_slots,
    .m_traverse = skpy_traverse,
    .m_clear = skpy_clear,
    .m_free = skpy_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&skpy_module);
}

/* The binding files find the module (and its state) from a type they
 * defined through this def. */
PyModuleDef *skpy_module_def(void)
{
    return &skpy_module;
}
