/*
 * util.c - the helpers every binding file shares (util.h): module state,
 * errors, argument parsing, addresses, deadlines and signals.
 *
 * The binding holds no protocol logic: it parses arguments, releases the GIL
 * around blocking calls, runs signal handlers when the core asks (EINTR and
 * every SKPY_SLICE_MS while waiting) and maps sk_err records onto the
 * exception classes of pysockkit._errors.  This file calls only the core
 * and CPython.
 */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>

#include "core/clock.h"
#include "core/sock.h"

/* The module's definition, set once by skpy_util_init (a static object of
 * module.c: the same for every interpreter). */
static PyModuleDef *skpy_def;

/* The thread that imported the module: the main thread, in practice. */
static unsigned long skpy_main_ident;

/* ------------------------------------------------------------ the module */

/* Contract: GIL held; called by the exec slot before anything else. */
void skpy_util_init(PyModuleDef *def)
{
    skpy_def = def;
    skpy_main_ident = PyThread_get_thread_ident();
}

/* Contract: GIL held; mod is pysockkit._core. */
skpy_state *skpy_get_state(PyObject *mod)
{
    return (skpy_state *)PyModule_GetState(mod);
}

/* Contract: GIL held; borrowed, or NULL with TypeError set. */
PyObject *skpy_module_of(PyTypeObject *type)
{
    return PyType_GetModuleByDef(type, skpy_def);
}

/* -------------------------------------------------------------- errors */

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

/* Contract: GIL held; see util.h. */
int skpy_seconds_ns(PyObject *py_s, const char *what, int64_t *ns)
{
    double s;
    int rc = -1;

    s = PyFloat_AsDouble(py_s);
    if (s == -1.0 && PyErr_Occurred())
        goto error;
    if (!isfinite(s) || fabs(s) > 9.0e9) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a finite number of seconds, not %R", what,
                     py_s);
        goto error;
    }
    *ns = (int64_t)llround(s * 1e9);
    rc = 0;
error:
    return rc;
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

/* Contract: GIL held; a new reference (or NULL: nothing pending). */
PyObject *skpy_take_exception(void)
{
    PyObject *py_v;
#if PY_VERSION_HEX >= 0x030C0000
    py_v = PyErr_GetRaisedException(); /* PyErr_Fetch is deprecated */
#else
    PyObject *py_t, *py_tb;

    PyErr_Fetch(&py_t, &py_v, &py_tb);
    PyErr_NormalizeException(&py_t, &py_v, &py_tb);
    if (py_v != NULL && py_tb != NULL)
        PyException_SetTraceback(py_v, py_tb);
    Py_XDECREF(py_t);
    Py_XDECREF(py_tb);
#endif
    return py_v;
}

/* ----------------------------------------------------------- arguments */

/* Contract: GIL held; out[] borrows from args. */
int skpy_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames, const char *const *names, int nreq, int n,
              PyObject **out)
{
    Py_ssize_t i, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *key;
    int k, rc = -1;

    for (k = 0; k < n; k++)
        out[k] = NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)",
                     fname, n, nargs);
        goto error;
    }
    for (i = 0; i < nargs; i++)
        out[i] = args[i];
    for (i = 0; i < nkw; i++) {
        key = PyTuple_GET_ITEM(kwnames, i);
        for (k = 0; k < n; k++)
            if (PyUnicode_CompareWithASCIIString(key, names[k]) == 0)
                break;
        if (k == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R",
                         fname, key);
            goto error;
        }
        if (out[k] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[k]);
            goto error;
        }
        out[k] = args[nargs + i];
    }
    for (k = 0; k < nreq; k++) {
        if (out[k] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                         fname, names[k]);
            goto error;
        }
    }
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held; *f is filled only on success. */
int skpy_framing_args(PyObject *mod, PyObject *args, PyObject *kwds,
                      sk_framing *f)
{
    /* PyArg_ParseTupleAndKeywords takes char *[] before Python 3.13 */
    static char kw_hs[] = "header_size", kw_bo[] = "byteorder",
                kw_mf[] = "max_frame", kw_ct[] = "control",
                kw_id[] = "correlation";
    static char *kwlist[] = {kw_hs, kw_bo, kw_mf, kw_ct, kw_id, NULL};
    int header_size = 4, control = 0, correlation = 0, rc = -1;
    const char *byteorder = "big";
    PyObject *py_max = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|isOpp", kwlist,
                                     &header_size, &byteorder, &py_max,
                                     &control, &correlation))
        goto error;
    rc = skpy_framing_make(mod, header_size, byteorder, py_max, control,
                           correlation, f);
error:
    return rc;
}

/* Contract: GIL held; see util.h. */
int skpy_framing_make(PyObject *mod, int header_size, const char *byteorder,
                      PyObject *py_max, int control, int correlation,
                      sk_framing *f)
{
    unsigned long long max_frame = 16ULL << 20;
    sk_framing g;
    sk_err err;
    int rc = -1;

    if (py_max != NULL && py_max != Py_None) {
        max_frame = PyLong_AsUnsignedLongLong(py_max);
        if (max_frame == (unsigned long long)-1 && PyErr_Occurred())
            goto error;
    }
    if (strcmp(byteorder, "big") != 0 && strcmp(byteorder, "little") != 0) {
        PyErr_Format(PyExc_ValueError,
                     "byteorder must be 'big' or 'little', not %s", byteorder);
        goto error;
    }
    g.header_size = (unsigned)header_size;
    g.little_endian = strcmp(byteorder, "little") == 0;
    g.max_frame = max_frame;
    g.flags = (control ? SK_FRAMING_CONTROL : 0) |
              (correlation ? SK_FRAMING_IDS : 0);
    /* the default (16 MiB) shrinks to what a short header can carry, as
     * sk.Framing does; an explicit max_frame is checked as given */
    if ((py_max == NULL || py_max == Py_None) &&
        g.max_frame > sk_framing_limit(&g) && sk_framing_limit(&g) > 0)
        g.max_frame = sk_framing_limit(&g);
    if (sk_framing_check(&g, &err) != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto error;
    }
    *f = g;
    rc = 0;
error:
    return rc;
}

/* ----------------------------------------------------------- addresses */

/* Contract: GIL held; host is numeric (sk_sockaddr resolves nothing). */
int skpy_sockaddr_parse(PyObject *mod, const char *host, int port,
                        PyObject *py_family, struct sockaddr_storage *ss,
                        socklen_t *len)
{
    int family = AF_UNSPEC, rc = -1;
    sk_err err;

    if (py_family != NULL && py_family != Py_None) {
        family = (int)PyLong_AsLong(py_family);
        if (family == -1 && PyErr_Occurred())
            goto error;
    }
    if (sk_sockaddr(host, port, family, ss, len, &err) != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto error;
    }
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held; a new reference, or NULL with ValueError set. */
PyObject *skpy_sockaddr_obj(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    PyObject *py_res = NULL;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        py_res = Py_BuildValue("(si)", host, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        py_res = Py_BuildValue("(si)", host, ntohs(a->sin6_port));
    } else if (ss->ss_family == AF_UNSPEC) {
        py_res = Py_NewRef(Py_None);
    } else {
        PyErr_Format(PyExc_ValueError, "unsupported address family %d",
                     ss->ss_family);
    }
    return py_res;
}

/* Contract: GIL held (fd stays this socket while it is held: see
 * conn.c Conn_query); a new reference or NULL with OSError set. */
PyObject *skpy_fd_name(int fd, int peer)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    PyObject *py_res = NULL;
    int r;

    memset(&ss, 0, sizeof(ss));
    r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
             : getsockname(fd, (struct sockaddr *)&ss, &len);
    if (r != 0) {
        skpy_oserror(peer ? "getpeername" : "getsockname");
        goto error;
    }
    py_res = skpy_sockaddr_obj(&ss);
error:
    return py_res;
}

/* ------------------------------------------------------ values of the core */

/* Contract: GIL held; a new reference or NULL with an exception set. */
PyObject *skpy_frame_obj(const sk_frame *fr)
{
    PyObject *py_b = NULL, *py_id = NULL, *py_t = NULL;

    py_b = PyBytes_FromStringAndSize((const char *)fr->data,
                                     (Py_ssize_t)fr->len);
    if (py_b == NULL || !fr->has_id) {
        py_t = py_b;
        py_b = NULL;
        goto error;
    }
    /* built directly, not by Py_BuildValue: this runs once per frame */
    py_id = PyLong_FromUnsignedLongLong((unsigned long long)fr->id);
    if (py_id == NULL)
        goto error;
    py_t = PyTuple_New(2);
    if (py_t == NULL)
        goto error;
    PyTuple_SET_ITEM(py_t, 0, py_id); /* steals */
    PyTuple_SET_ITEM(py_t, 1, py_b);
    py_id = py_b = NULL;
error:
    Py_XDECREF(py_id);
    Py_XDECREF(py_b);
    return py_t;
}

/* Contract: GIL held.  A new dict of the fields of ti the kernel returned
 * (absent ones are left out, never zero) plus "_len"; NULL with an
 * exception set on failure.  Used by tcpinfo.c, conn.c (Conn_query) and
 * diag.c (the INET_DIAG_INFO attribute). */
PyObject *skpy_tcp_info_dict(const sk_tcp_info *ti)
{
    const sk_tcp_info_field *fields;
    PyObject *py_dict = NULL, *py_v = NULL;
    size_t n, i;
    uint64_t v;

    fields = sk_tcp_info_fields(&n);
    py_dict = PyDict_New();
    if (py_dict == NULL)
        goto error;
    for (i = 0; i < n; i++) {
        if (!sk_tcp_info_field_get(ti, &fields[i], &v))
            continue;
        py_v = PyLong_FromUnsignedLongLong(v);
        if (py_v == NULL || PyDict_SetItemString(py_dict, fields[i].name,
                                                 py_v) < 0)
            goto error;
        Py_CLEAR(py_v);
    }
    py_v = PyLong_FromUnsignedLong(ti->len);
    if (py_v == NULL || PyDict_SetItemString(py_dict, "_len", py_v) < 0)
        goto error;
    Py_CLEAR(py_v);
    goto done;
error:
    Py_CLEAR(py_dict);
done:
    Py_XDECREF(py_v);
    return py_dict;
}

/* Contract: GIL held; called from an add function (module exec). */
int skpy_add_u64(PyObject *mod, const char *name, unsigned long long v)
{
    PyObject *py_v = PyLong_FromUnsignedLongLong(v);
    int rc = -1;

    if (py_v == NULL)
        goto error;
    rc = PyModule_AddObjectRef(mod, name, py_v);
error:
    Py_XDECREF(py_v);
    return rc;
}


/* Contract: GIL held; see util.h.  tp_alloc zero-fills, so the handle is
 * NULL; the type is final and ours, so PyType_GetModule finds the module. */
PyObject *skpy_handle_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    skpy_handle_obj *self;

    (void)args;
    (void)kwds;
    self = (skpy_handle_obj *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto done;
    self->handle = NULL;
    self->mod = PyType_GetModule(type);
    if (self->mod == NULL)
        Py_CLEAR(self);
done:
    return (PyObject *)self;
}

/* Contract: GIL held on entry and exit, released around release(); see
 * util.h. */
void skpy_handle_dealloc(PyObject *op, void (*release)(void *handle))
{
    skpy_handle_obj *self = (skpy_handle_obj *)op;
    PyTypeObject *tp = Py_TYPE(op);
    void *h = self->handle;

    self->handle = NULL;
    if (h != NULL) {
        Py_BEGIN_ALLOW_THREADS
        release(h);
        Py_END_ALLOW_THREADS
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* Contract: GIL held; see util.h.  The message names the type by its
 * short name (tp_name is "pysockkit._core.Capture"). */
void *skpy_handle_get(PyObject *op)
{
    skpy_handle_obj *self = (skpy_handle_obj *)op;
    const char *name = Py_TYPE(op)->tp_name, *dot = strrchr(name, '.');

    if (self->handle == NULL)
        PyErr_Format(PyExc_RuntimeError, "%s was not started",
                     dot != NULL ? dot + 1 : name);
    return self->handle;
}

/* Contract: GIL held on entry and exit, released around fn(); see util.h. */
PyObject *skpy_handle_call_nogil(PyObject *op, void (*fn)(void *handle))
{
    void *h = skpy_handle_get(op);
    PyObject *py_res = NULL;

    if (h == NULL)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    fn(h);
    Py_END_ALLOW_THREADS
    py_res = Py_NewRef(Py_None);
done:
    return py_res;
}

/* ----------------------------------------------------- framing objects */

static const char *const skpy_framing_names[] = {
    "header_size", "byteorder", "max_frame", "correlation"};
_Static_assert(sizeof(skpy_framing_names) / sizeof(skpy_framing_names[0]) ==
                   sizeof(((skpy_state *)0)->str_framing) / sizeof(PyObject *),
               "one interned string per attribute");

/* Contract: GIL held; see util.h. */
int skpy_framing_init(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    size_t i;
    int rc = 0;

    for (i = 0; i < sizeof(st->str_framing) / sizeof(st->str_framing[0]); i++) {
        st->str_framing[i] = PyUnicode_InternFromString(skpy_framing_names[i]);
        if (st->str_framing[i] == NULL) {
            rc = -1;
            break;
        }
    }
    return rc;
}

/* Contract: GIL held; see util.h.  *f is filled only on success. */
int skpy_framing_of(PyObject *mod, PyObject *framing, sk_framing *f)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_v[4] = {NULL, NULL, NULL, NULL};
    const char *byteorder;
    long header_size;
    int correlation, i, rc = -1;
    sk_framing g;

    if (framing == st->framing_last) { /* held: its id cannot be reused */
        *f = st->framing_last_f;
        rc = 0;
        goto done;
    }
    for (i = 0; i < 4; i++) {
        py_v[i] = PyObject_GetAttr(framing, st->str_framing[i]);
        if (py_v[i] == NULL)
            goto done;
    }
    header_size = PyLong_AsLong(py_v[0]);
    if (header_size == -1 && PyErr_Occurred())
        goto done;
    byteorder = PyUnicode_AsUTF8(py_v[1]);
    correlation = PyObject_IsTrue(py_v[3]);
    if (byteorder == NULL || correlation < 0 ||
        skpy_framing_make(mod, (int)header_size, byteorder, py_v[2], 0,
                          correlation, &g) < 0)
        goto done;
    Py_XSETREF(st->framing_last, Py_NewRef(framing));
    st->framing_last_f = g;
    *f = g;
    rc = 0;
done:
    for (i = 0; i < 4; i++)
        Py_XDECREF(py_v[i]);
    return rc;
}

/* ------------------------------------------------------------- failures */

/* Contract: GIL held; see util.h. */
PyObject *skpy_timeout(PyObject *mod, const char *op, PyObject *timeout,
                       const char *what)
{
    skpy_state *st = skpy_get_state(mod);

    PyErr_Format(st->Timeout, "%s: timed out after %R s; %s", op,
                 timeout ? timeout : Py_None, what);
    return NULL;
}

/* Contract: GIL held; see util.h. */
PyObject *skpy_fail_as(PyObject *mod, int rc, const sk_err *err,
                       const char *op, PyObject *timeout, const char *what)
{
    if (rc == SK_TIMEOUT)
        skpy_timeout(mod, op, timeout, what);
    else if (rc == SK_INTR) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_InterruptedError, "interrupted by a signal");
    } else if (err->code == SK_E_SYS && err->sys_errno == ETIMEDOUT)
        skpy_raise(mod, err,
                   "the kernel gave up on the peer (keepalive probes, "
                   "TCP_USER_TIMEOUT or retransmissions went unanswered): "
                   "this connection is dead, open a new one");
    else
        skpy_raise(mod, err, NULL);
    return NULL;
}

/* Contract: GIL held; see util.h. */
int skpy_fd_arg(PyObject *obj, int *fd)
{
    long v = PyLong_AsLong(obj);
    int rc = 0;

    *fd = -1;
    if (v == -1 && PyErr_Occurred()) {
        rc = -1;
    } else if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "fd must be a file descriptor >= 0");
        rc = -1;
    } else {
        *fd = (int)v;
    }
    return rc;
}
