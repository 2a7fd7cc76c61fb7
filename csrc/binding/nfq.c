/*
 * nfq.c - the NfQueue type of pysockkit._core (testkit/nfq.h): the packet
 * delay line behind pysockkit.testing.Link's delay, jitter and reorder.
 *
 *   NfQueue(queue_num, limit, seed=0)   binds the queue, starts the thread
 *   .set(delay_ns, jitter_ns, reorder_ppm, limit)
 *   .stats() -> dict         held, passed, dropped, waiting, most_held,
 *                            late_max_ns, late_total_ns, released, error
 *   .close()                 accepts what is held, unbinds, joins the thread
 *
 * Private: Link's namespace helper is its one user (it runs in the
 * namespace whose packets it queues).  All numbers are raw (ns, ppm,
 * packets).  The thread never needs the GIL; close() takes the pointer out
 * of the object before it releases the GIL, so a concurrent call sees a
 * closed queue, never a freed one.  Not subclassable, not picklable.
 */
#include "util.h"

#include "areas.h"
#include "testkit/nfq.h"

typedef struct {
    PyObject_HEAD
    sk_nfq *q; /* NULL once closed */
} NfQueueObject;

/* self->q, or NULL with ConnectionClosed set.  GIL held. */
static sk_nfq *NfQueue_get(NfQueueObject *self)
{
    if (self->q == NULL) {
        skpy_state *st = skpy_get_state(PyType_GetModule(Py_TYPE(self)));
        PyErr_SetString(st->ConnectionClosed,
                        "this packet queue was closed; make a new one");
    }
    return self->q;
}

/* Contract: GIL held; released while the queue is bound and the thread
 * starts. */
static PyObject *NfQueue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static const char *const kwlist[] = {"queue_num", "limit", "seed", NULL};
    unsigned short queue_num;
    unsigned int limit;
    unsigned long long seed = 0;
    NfQueueObject *self = NULL;
    sk_err err;
    int rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "HI|K:NfQueue", (char **)kwlist,
                                     &queue_num, &limit, &seed))
        goto error;
    self = (NfQueueObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto error;
    sk_err_clear(&err);
    Py_BEGIN_ALLOW_THREADS
    rc = sk_nfq_start(queue_num, limit, seed, &self->q, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK) {
        self->q = NULL;
        skpy_raise(PyType_GetModule(type), &err, NULL);
        Py_CLEAR(self);
    }
error:
    return (PyObject *)self;
}

/* Contract: GIL held on entry and exit; released while the thread is
 * joined. */
static void NfQueue_stop(NfQueueObject *self)
{
    sk_nfq *q = self->q;

    self->q = NULL;
    if (q != NULL) {
        Py_BEGIN_ALLOW_THREADS
        sk_nfq_stop(q);
        Py_END_ALLOW_THREADS
    }
}

/* Contract: GIL held; stops a queue left open and frees the object. */
static void NfQueue_dealloc(NfQueueObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    NfQueue_stop(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(NfQueue_close_doc,
"close()\n--\n\n"
"Accept every held packet, unbind the queue (the NFQUEUE rule's bypass then\n"
"lets packets through) and join the thread.  Idempotent.");

/* Contract: GIL held; see NfQueue_stop. */
static PyObject *NfQueue_close(NfQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    NfQueue_stop(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(NfQueue_set_doc,
"set(delay_ns, jitter_ns, reorder_ppm, limit)\n--\n\n"
"New parameters for the packets that arrive from now on.");

/* Contract: GIL held (the core call takes the handler's mutex and may send
 * one netlink message: microseconds). */
static PyObject *NfQueue_set(NfQueueObject *self, PyObject *args)
{
    long long delay_ns, jitter_ns;
    unsigned int reorder_ppm, limit;
    sk_nfq *q = NfQueue_get(self);
    PyObject *py_res = NULL;
    sk_err err;

    if (q == NULL || !PyArg_ParseTuple(args, "LLII:set", &delay_ns, &jitter_ns,
                                       &reorder_ppm, &limit))
        goto error;
    sk_err_clear(&err);
    if (sk_nfq_set(q, delay_ns, jitter_ns, reorder_ppm, limit, &err) != SK_OK) {
        if (err.code == SK_E_ARG)
            PyErr_SetString(PyExc_ValueError, err.msg);
        else
            skpy_raise(PyType_GetModule(Py_TYPE(self)), &err, NULL);
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

PyDoc_STRVAR(NfQueue_stats_doc,
"stats() -> dict\n--\n\n"
"Counters: held, passed, dropped, waiting, most_held, late_max_ns,\n"
"late_total_ns, released, and error (the errno that stopped the thread,\n"
"or 0).");

/* Contract: GIL held (the core call only takes the handler's mutex). */
static PyObject *NfQueue_stats(NfQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    sk_nfq_stats s;
    sk_nfq *q = NfQueue_get(self);
    PyObject *py_res = NULL;

    if (q == NULL)
        goto error;
    sk_nfq_get_stats(q, &s);
    py_res = Py_BuildValue("{sKsKsKsKsKsKsKsKsi}", "held", (unsigned long long)s.held,
                           "passed", (unsigned long long)s.passed, "dropped",
                           (unsigned long long)s.dropped, "waiting",
                           (unsigned long long)s.waiting, "most_held",
                           (unsigned long long)s.most_held, "late_max_ns",
                           (unsigned long long)s.late_max_ns, "late_total_ns",
                           (unsigned long long)s.late_total_ns, "released",
                           (unsigned long long)s.released, "error", s.error);
error:
    return py_res;
}

/* Contract: GIL held. */
static PyObject *NfQueue_get_closed(NfQueueObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->q == NULL);
}

static PyMethodDef NfQueue_methods[] = {
    {"close", (PyCFunction)NfQueue_close, METH_NOARGS, NfQueue_close_doc},
    {"set", (PyCFunction)NfQueue_set, METH_VARARGS, NfQueue_set_doc},
    {"stats", (PyCFunction)NfQueue_stats, METH_NOARGS, NfQueue_stats_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef NfQueue_getset[] = {
    {"closed", (getter)NfQueue_get_closed, NULL, "True once close() ran.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(NfQueue_doc,
"NfQueue(queue_num, limit, seed=0)\n--\n\n"
"The delay line on an nfnetlink_queue, in its own thread (csrc/testkit/nfq.c).\n"
"Private: use pysockkit.testing.Link.set(delay=..., jitter=..., reorder=...).");

static PyType_Slot NfQueue_slots[] = {
    {Py_tp_new, (void *)NfQueue_new},
    {Py_tp_dealloc, (void *)NfQueue_dealloc},
    {Py_tp_methods, NfQueue_methods},
    {Py_tp_getset, NfQueue_getset},
    {Py_tp_doc, (void *)NfQueue_doc},
    {0, NULL},
};

static PyType_Spec NfQueue_spec = {
    .name = "pysockkit._core.NfQueue",
    .basicsize = sizeof(NfQueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = NfQueue_slots,
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_nfq(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &NfQueue_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "NfQueue", py_type) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "NFQ_MAX_LIMIT", (long)SK_NFQ_MAX_LIMIT) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
