/*
 * proxy.c - the Proxy type of pysockkit._core (testkit/proxy.h).
 *
 *   Proxy(upstream_host, upstream_port, upstream_family, listen_host,
 *         listen_port, listen_family, buffer_size=0, max_connections=0,
 *         seed=0)            starts the reactor thread at once
 *   .fileno() -> int         the listening socket (-1 once closed)
 *   .add(kind, dirs, delay_ns=0, jitter_ns=0, rate=0, size=0, size_var=0,
 *        bytes=0) -> int     a fault id
 *   .remove(id) -> bool, .clear()
 *   .stats() -> dict, .connections() -> list[tuple], .last_error()
 *   .close()                 joins the thread with the GIL released
 *   FAULT_* and DIR_* module constants
 *
 * All numbers are raw (ns, bytes); pysockkit/_proxy.py holds the friendly
 * API.  The data path runs entirely in the reactor thread, never with the
 * GIL.  A Proxy is not subclassable and not picklable.  Thread-safety: the
 * core's control calls are thread-safe; close() takes the pointer out of
 * the object before it releases the GIL, so a concurrent call on another
 * thread sees a closed proxy, never a freed one.  For that reason add(),
 * remove() and clear() keep the GIL while they wait for the reactor to
 * apply the change: the wait is a few microseconds, and the reactor never
 * needs the GIL, so holding it cannot deadlock.
 */
#include "util.h"

#include "areas.h"
#include "testkit/proxy.h"

typedef struct {
    PyObject_HEAD
    sk_proxy *p; /* NULL once closed */
} ProxyObject;

/* The module, for skpy_raise.  GIL held; borrowed. */
static PyObject *Proxy_module(PyObject *self)
{
    return PyType_GetModule(Py_TYPE(self));
}

/* self->p, or NULL with ConnectionClosed set.  GIL held. */
static sk_proxy *Proxy_get(ProxyObject *self)
{
    if (self->p == NULL) {
        skpy_state *st = skpy_get_state(Proxy_module((PyObject *)self));
        PyErr_SetString(st->ConnectionClosed,
                        "this FaultProxy was closed; make a new one");
    }
    return self->p;
}

/* Contract: GIL held; starts the reactor thread (no GIL there, ever). */
static PyObject *Proxy_new(PyTypeObject *type, PyObject *args,
                           PyObject *kwds)
{
    static const char *const kwlist[] = {"upstream_host", "upstream_port",
                             "upstream_family", "listen_host", "listen_port",
                             "listen_family", "buffer_size",
                             "max_connections", "seed", NULL};
    const char *uhost, *lhost;
    int uport, lport;
    PyObject *py_ufam, *py_lfam, *mod;
    Py_ssize_t bufsize = 0;
    unsigned int max_conns = 0;
    unsigned long long seed = 0;
    struct sockaddr_storage ua, la;
    socklen_t ul, ll;
    sk_proxy_opts opts;
    ProxyObject *self = NULL;
    sk_err err;
    int rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "siOsiO|nIK:Proxy",
                                     (char **)kwlist,
                                     &uhost, &uport, &py_ufam, &lhost, &lport,
                                     &py_lfam, &bufsize, &max_conns, &seed))
        goto error;
    mod = PyType_GetModule(type);
    if (mod == NULL)
        goto error;
    if (bufsize < 0) {
        PyErr_SetString(PyExc_ValueError, "buffer_size must be >= 0");
        goto error;
    }
    if (skpy_sockaddr_parse(mod, uhost, uport, py_ufam, &ua, &ul) < 0 ||
        skpy_sockaddr_parse(mod, lhost, lport, py_lfam, &la, &ll) < 0)
        goto error;
    opts.buffer_size = (size_t)bufsize;
    opts.max_conns = max_conns;
    opts.seed = seed;
    self = (ProxyObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto error;
    sk_err_clear(&err);
    Py_BEGIN_ALLOW_THREADS
    rc = sk_proxy_start((struct sockaddr *)&ua, ul, (struct sockaddr *)&la,
                        ll, &opts, &self->p, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK) {
        self->p = NULL;
        skpy_raise(mod, &err, NULL);
        Py_CLEAR(self);
    }
error:
    return (PyObject *)self;
}

/* Contract: GIL held on entry and exit; released while the reactor is
 * joined. */
static void Proxy_stop(ProxyObject *self)
{
    sk_proxy *p = self->p;

    self->p = NULL;
    if (p != NULL) {
        Py_BEGIN_ALLOW_THREADS
        sk_proxy_stop(p);
        Py_END_ALLOW_THREADS
    }
}

/* Contract: GIL held; stops a proxy left open (joining its thread with the
 * GIL released) and frees the object. */
static void Proxy_dealloc(ProxyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    Proxy_stop(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(Proxy_close_doc,
"close()\n--\n\n"
"Stop the reactor thread, close every proxied connection (orderly) and the\n"
"listener.  Idempotent.  Releases the GIL while it joins the thread.");

/* Contract: GIL held; see Proxy_stop. */
static PyObject *Proxy_close(ProxyObject *self, PyObject *Py_UNUSED(ignored))
{
    Proxy_stop(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Proxy_fileno_doc,
"fileno() -> int\n--\n\nThe listening socket, -1 once closed.");

/* Contract: GIL held; no syscall. */
static PyObject *Proxy_fileno(ProxyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->p == NULL ? -1
                                           : sk_proxy_listen_fd(self->p));
}

PyDoc_STRVAR(Proxy_add_doc,
"add(kind, dirs, delay_ns=0, jitter_ns=0, rate=0, size=0, size_var=0,\n"
"    bytes=0) -> int\n--\n\n"
"Add a fault (kind: FAULT_*, dirs: DIR_UP|DIR_DOWN); returns its id.\n"
"ValueError for bad parameters or a full fault table.");

/* Contract: GIL held throughout (see the file comment); the core copies
 * the fault, nothing to free. */
static PyObject *Proxy_add(ProxyObject *self, PyObject *args, PyObject *kwds)
{
    static const char *const kwlist[] = {"kind", "dirs", "delay_ns", "jitter_ns", "rate",
                             "size", "size_var", "bytes", NULL};
    int kind;
    unsigned int dirs;
    long long delay = 0, jitter = 0;
    unsigned long long rate = 0, size = 0, size_var = 0, bytes = 0;
    PyObject *py_res = NULL;
    sk_proxy *p;
    sk_fault f;
    uint64_t id = 0;
    sk_err err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iI|LLKKKK:add",
                                     (char **)kwlist,
                                     &kind, &dirs, &delay, &jitter, &rate,
                                     &size, &size_var, &bytes))
        goto done;
    p = Proxy_get(self);
    if (p == NULL)
        goto done;
    memset(&f, 0, sizeof(f));
    f.kind = (sk_fault_kind)kind;
    f.dirs = dirs;
    f.delay_ns = delay;
    f.jitter_ns = jitter;
    f.rate_Bps = rate;
    f.size = size;
    f.size_var = size_var;
    f.bytes = bytes;
    sk_err_clear(&err);
    if (sk_proxy_add(p, &f, &id, &err) != SK_OK)
        skpy_raise(Proxy_module((PyObject *)self), &err, NULL);
    else
        py_res = PyLong_FromUnsignedLongLong(id);
done:
    return py_res;
}

PyDoc_STRVAR(Proxy_remove_doc,
"remove(id) -> bool\n--\n\nRemove a fault; False if no fault has that id.");

/* Contract: as Proxy_add. */
static PyObject *Proxy_remove(ProxyObject *self, PyObject *py_id)
{
    unsigned long long id;
    PyObject *py_res = NULL;
    sk_proxy *p;

    id = PyLong_AsUnsignedLongLong(py_id);
    if (id == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    p = Proxy_get(self);
    if (p != NULL)
        py_res = PyBool_FromLong(sk_proxy_remove(p, id));
done:
    return py_res;
}

PyDoc_STRVAR(Proxy_clear_doc, "clear()\n--\n\nRemove every fault.");

/* Contract: as Proxy_add. */
static PyObject *Proxy_clear(ProxyObject *self, PyObject *Py_UNUSED(ignored))
{
    sk_proxy *p = Proxy_get(self);
    PyObject *py_res = NULL;

    if (p != NULL) {
        sk_proxy_clear(p);
        py_res = Py_NewRef(Py_None);
    }
    return py_res;
}

PyDoc_STRVAR(Proxy_stats_doc,
"stats() -> dict\n--\n\n"
"Counters: accepted, active, bytes_up, bytes_down, buffered,\n"
"buffered_peak, upstream_failures, resets, limits, stall_closes.");

/* Contract: GIL held; lock-free reads of the core's counters. */
static PyObject *Proxy_stats(ProxyObject *self, PyObject *Py_UNUSED(ignored))
{
    sk_proxy_stats s;
    sk_proxy *p = Proxy_get(self);
    PyObject *py_res = NULL;

    if (p == NULL)
        goto error;
    sk_proxy_get_stats(p, &s);
    py_res = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsK}", "accepted",
        (unsigned long long)s.accepted, "active",
        (unsigned long long)s.active, "bytes_up",
        (unsigned long long)s.bytes_up, "bytes_down",
        (unsigned long long)s.bytes_down, "buffered",
        (unsigned long long)s.buffered, "buffered_peak",
        (unsigned long long)s.buffered_peak, "upstream_failures",
        (unsigned long long)s.upstream_failures, "resets",
        (unsigned long long)s.resets, "limits", (unsigned long long)s.limits,
        "stall_closes", (unsigned long long)s.stall_closes);
error:
    return py_res;
}

PyDoc_STRVAR(Proxy_connections_doc,
"connections() -> list[tuple]\n--\n\n"
"Open connections, oldest first: (client_addr, upstream_local_addr or\n"
"None while connecting, bytes_up, bytes_down, buffered_up,\n"
"buffered_down, connecting).");

/* Contract: GIL held (the core call only takes the proxy's mutex). */
static PyObject *Proxy_connections(ProxyObject *self,
                                   PyObject *Py_UNUSED(ignored))
{
    sk_proxy_conn_info *infos = NULL;
    PyObject *py_list = NULL, *py_item = NULL;
    sk_proxy_stats s;
    size_t cap, n, i;
    sk_proxy *p = Proxy_get(self);

    if (p == NULL)
        goto error;
    sk_proxy_get_stats(p, &s);
    cap = (size_t)s.active + 16;
    for (;;) {
        PyMem_Free(infos);
        infos = PyMem_Calloc(cap, sizeof(*infos));
        if (infos == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        n = sk_proxy_conns(p, infos, cap);
        if (n <= cap)
            break;
        cap = n + 16; /* more connections came meanwhile */
    }
    py_list = PyList_New(0);
    if (py_list == NULL)
        goto error;
    for (i = 0; i < n; i++) {
        const sk_proxy_conn_info *c = &infos[i];
        PyObject *py_cl = skpy_sockaddr_obj(&c->client);
        PyObject *py_lo = py_cl == NULL ? NULL : skpy_sockaddr_obj(&c->local);

        if (py_lo == NULL) {
            Py_XDECREF(py_cl);
            goto error;
        }
        py_item = Py_BuildValue("(NNKKKKO)", py_cl, py_lo,
                                (unsigned long long)c->bytes_up,
                                (unsigned long long)c->bytes_down,
                                (unsigned long long)c->buffered_up,
                                (unsigned long long)c->buffered_down,
                                c->connecting ? Py_True : Py_False);
        if (py_item == NULL || PyList_Append(py_list, py_item) < 0)
            goto error;
        Py_CLEAR(py_item);
    }
    goto done;
error:
    Py_XDECREF(py_item);
    Py_CLEAR(py_list);
done:
    PyMem_Free(infos);
    return py_list;
}

PyDoc_STRVAR(Proxy_last_error_doc,
"last_error() -> tuple[int, str] | None\n--\n\n"
"(errno, message) of the last error the reactor met (an accept or\n"
"upstream-connect failure), None if none.");

/* Contract: GIL held; takes the proxy's mutex briefly. */
static PyObject *Proxy_last_error(ProxyObject *self,
                                  PyObject *Py_UNUSED(ignored))
{
    char msg[SK_ERRMSG_MAX];
    PyObject *py_res = NULL;
    int e;
    sk_proxy *p = Proxy_get(self);

    if (p == NULL)
        goto done;
    e = sk_proxy_last_error(p, msg, sizeof(msg));
    if (e == 0 && msg[0] == '\0')
        py_res = Py_NewRef(Py_None);
    else
        py_res = Py_BuildValue("(is)", e, msg);
done:
    return py_res;
}

/* Contract: GIL held. */
static PyObject *Proxy_get_closed(ProxyObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->p == NULL);
}

static PyMethodDef Proxy_methods[] = {
    {"close", (PyCFunction)Proxy_close, METH_NOARGS, Proxy_close_doc},
    {"fileno", (PyCFunction)Proxy_fileno, METH_NOARGS, Proxy_fileno_doc},
    {"add", (PyCFunction)(void (*)(void))Proxy_add,
     METH_VARARGS | METH_KEYWORDS, Proxy_add_doc},
    {"remove", (PyCFunction)Proxy_remove, METH_O, Proxy_remove_doc},
    {"clear", (PyCFunction)Proxy_clear, METH_NOARGS, Proxy_clear_doc},
    {"stats", (PyCFunction)Proxy_stats, METH_NOARGS, Proxy_stats_doc},
    {"connections", (PyCFunction)Proxy_connections, METH_NOARGS,
     Proxy_connections_doc},
    {"last_error", (PyCFunction)Proxy_last_error, METH_NOARGS,
     Proxy_last_error_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Proxy_getset[] = {
    {"closed", (getter)Proxy_get_closed, NULL, "True once close() ran.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Proxy_doc,
"Proxy(upstream_host, upstream_port, upstream_family, listen_host,\n"
"      listen_port, listen_family, buffer_size=0, max_connections=0,\n"
"      seed=0)\n--\n\n"
"A TCP fault-injection proxy running in its own thread (csrc/proxy.c).\n"
"Private: use pysockkit.FaultProxy.");

static PyType_Slot Proxy_slots[] = {
    {Py_tp_new, (void *)Proxy_new},
    {Py_tp_dealloc, (void *)Proxy_dealloc},
    {Py_tp_methods, Proxy_methods},
    {Py_tp_getset, Proxy_getset},
    {Py_tp_doc, (void *)Proxy_doc},
    {0, NULL},
};

static PyType_Spec Proxy_spec = {
    .name = "pysockkit._core.Proxy",
    .basicsize = sizeof(ProxyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Proxy_slots,
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_proxy(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Proxy_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Proxy", py_type) < 0)
        goto error;
#define SKPY_CONST(name, value)                                             \
    do {                                                                    \
        if (PyModule_AddIntConstant(mod, name, (long)(value)) < 0)          \
            goto error;                                                     \
    } while (0)
    SKPY_CONST("FAULT_LATENCY", SK_FAULT_LATENCY);
    SKPY_CONST("FAULT_BANDWIDTH", SK_FAULT_BANDWIDTH);
    SKPY_CONST("FAULT_STALL", SK_FAULT_STALL);
    SKPY_CONST("FAULT_RESET_PEER", SK_FAULT_RESET_PEER);
    SKPY_CONST("FAULT_SLOW_CLOSE", SK_FAULT_SLOW_CLOSE);
    SKPY_CONST("FAULT_SLICER", SK_FAULT_SLICER);
    SKPY_CONST("FAULT_LIMIT_DATA", SK_FAULT_LIMIT_DATA);
    SKPY_CONST("DIR_UP", SK_DIR_UP);
    SKPY_CONST("DIR_DOWN", SK_DIR_DOWN);
    SKPY_CONST("PROXY_MAX_FAULTS", SK_PROXY_MAX_FAULTS);
    SKPY_CONST("PROXY_DEFAULT_BUFFER", SK_PROXY_DEFAULT_BUF);
    SKPY_CONST("PROXY_MIN_BUFFER", SK_PROXY_MIN_BUF);
    SKPY_CONST("PROXY_MAX_BUFFER", SK_PROXY_MAX_BUF);
#undef SKPY_CONST
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
