/*
 * heartbeat.c - the heartbeat rule of the core (core/heartbeat.h
 * sk_hb_tick) for drivers written in Python, and the wire constants of
 * control frames.
 *
 *   HeartbeatRule(interval, timeout, initiator)      seconds, bool
 *   .interval, .timeout, .ping_after                 seconds
 *   .first_rtt_at(now) -> float                      rtt_at of a fresh link
 *   .tick(now, last_rx, last_tx, rtt_at, pong_owed=False, rx_done=False,
 *         dead=False, unread=-1) -> (actions, due)
 *       actions: HB_CHECK | HB_ALIVE | HB_DEAD | HB_PONG | HB_PING bits;
 *       due: when to call again, in seconds (inf once dead)
 *   HB_RTT_EVERY, CTL_PING, CTL_PONG, CTL_PING_LEN, CTL_PONG_LEN,
 *   CTL_RTT_UNKNOWN                                   module constants
 *
 * Times are seconds on any monotonic clock (asyncio's loop.time()), turned
 * into nanoseconds to the nearest one; the decision is sk_hb_tick's, the
 * same function the hub thread applies to threaded connections.  No state,
 * no I/O: the GIL is held throughout and nothing blocks.
 */
#include "util.h"

#include <math.h>

#include "areas.h"
#include "core/heartbeat.h"

typedef struct {
    PyObject_HEAD
    int64_t interval_ns;
    int64_t timeout_ns;
    int64_t ping_after_ns;
} RuleObject;

/* Contract: GIL held; 0, or -1 with an exception set. */
static int Rule_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_i[] = "interval", kw_t[] = "timeout", kw_n[] = "initiator";
    static char *kwlist[] = {kw_i, kw_t, kw_n, NULL};
    RuleObject *self = (RuleObject *)op;
    PyObject *py_i, *py_t;
    int initiator, rc = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOp:HeartbeatRule", kwlist,
                                     &py_i, &py_t, &initiator))
        goto error;
    if (skpy_seconds_ns(py_i, "interval", &self->interval_ns) < 0 ||
        skpy_seconds_ns(py_t, "timeout", &self->timeout_ns) < 0)
        goto error;
    if (self->interval_ns <= 0 || self->timeout_ns <= 0) {
        PyErr_SetString(PyExc_ValueError,
                        "heartbeat interval and timeout must be > 0 s");
        goto error;
    }
    self->ping_after_ns = sk_hb_ping_after(self->interval_ns, initiator);
    rc = 0;
error:
    return rc;
}

PyDoc_STRVAR(Rule_tick_doc,
"tick(now, last_rx, last_tx, rtt_at, pong_owed=False, rx_done=False, dead=False, unread=-1)\n"
"--\n\n"
"The heartbeat rule at time now: (actions, due).  actions is a mask of\n"
"HB_CHECK (the peer is overdue: call again with unread = the bytes the\n"
"kernel holds, FIONREAD), HB_ALIVE (it holds some: count now as the last\n"
"receive), HB_DEAD, HB_PONG and HB_PING (send one); due is when to call\n"
"again (float('inf') once dead).  After sending a PING, or on HB_ALIVE,\n"
"call again with the new clocks for the next due time.\n\n"
"    >>> rule = _core.HeartbeatRule(1.0, 3.0, True)\n"
"    >>> rule.tick(10.0, 9.0, 9.0, 9.0)\n"
"    (16, 10.125)\n");

/* Contract: GIL held; a new (int, float) tuple or NULL. */
static PyObject *Rule_tick(PyObject *op, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"now", "last_rx", "last_tx",
                                        "rtt_at", "pong_owed", "rx_done",
                                        "dead", "unread"};
    RuleObject *self = (RuleObject *)op;
    PyObject *a[8], *py_res = NULL;
    int flags[3] = {0, 0, 0}, k, act;
    int64_t now, due;
    long long unread = -1;
    sk_hb_view v;

    if (skpy_args("tick", args, nargs, kwnames, names, 4, 8, a) < 0)
        goto error;
    if (skpy_seconds_ns(a[0], "now", &now) < 0 ||
        skpy_seconds_ns(a[1], "last_rx", &v.last_rx_ns) < 0 ||
        skpy_seconds_ns(a[2], "last_tx", &v.last_tx_ns) < 0 ||
        skpy_seconds_ns(a[3], "rtt_at", &v.rtt_at_ns) < 0)
        goto error;
    for (k = 0; k < 3; k++) {
        if (a[4 + k] != NULL && (flags[k] = PyObject_IsTrue(a[4 + k])) < 0)
            goto error;
    }
    if (a[7] != NULL && a[7] != Py_None) {
        unread = PyLong_AsLongLong(a[7]);
        if (unread == -1 && PyErr_Occurred())
            goto error;
    }
    v.interval_ns = self->interval_ns;
    v.timeout_ns = self->timeout_ns;
    v.ping_after_ns = self->ping_after_ns;
    v.pong_owed = flags[0];
    v.rx_done = flags[1];
    v.dead = flags[2];
    act = sk_hb_tick(&v, now, unread < 0 ? -1 : (int64_t)unread, &due);
    py_res = Py_BuildValue("(id)", act,
                           due == SK_HB_NEVER ? HUGE_VAL : (double)due / 1e9);
error:
    return py_res;
}

PyDoc_STRVAR(Rule_first_rtt_at_doc,
"first_rtt_at(now) -> float\n--\n\n"
"rtt_at for a connection that starts at now: the first round-trip sample\n"
"is then due one interval later.\n");

/* Contract: GIL held; a new float or NULL. */
static PyObject *Rule_first_rtt_at(PyObject *op, PyObject *py_now)
{
    RuleObject *self = (RuleObject *)op;
    PyObject *py_res = NULL;
    int64_t now;

    if (skpy_seconds_ns(py_now, "now", &now) < 0)
        goto error;
    py_res = PyFloat_FromDouble(
        (double)sk_hb_first_rtt_at(self->interval_ns, now) / 1e9);
error:
    return py_res;
}

/* Contract: GIL held. */
static PyObject *Rule_get_interval(PyObject *op, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble((double)((RuleObject *)op)->interval_ns / 1e9);
}

/* Contract: GIL held. */
static PyObject *Rule_get_timeout(PyObject *op, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble((double)((RuleObject *)op)->timeout_ns / 1e9);
}

/* Contract: GIL held. */
static PyObject *Rule_get_ping_after(PyObject *op, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble((double)((RuleObject *)op)->ping_after_ns / 1e9);
}

static PyMethodDef Rule_methods[] = {
    {"tick", (PyCFunction)(void (*)(void))Rule_tick,
     METH_FASTCALL | METH_KEYWORDS, Rule_tick_doc},
    {"first_rtt_at", Rule_first_rtt_at, METH_O, Rule_first_rtt_at_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Rule_getset[] = {
    {"interval", Rule_get_interval, NULL, "The interval in seconds.", NULL},
    {"timeout", Rule_get_timeout, NULL, "The timeout in seconds.", NULL},
    {"ping_after", Rule_get_ping_after, NULL,
     "Seconds without sending that call for a PING: the interval for the "
     "side that connected, 1.5 x for the side that accepted.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Rule_doc,
"HeartbeatRule(interval, timeout, initiator)\n--\n\n"
"The heartbeat rule of the C core (when to PING, when the peer is dead,\n"
"when to look again) for a driver that keeps its own clocks, such as\n"
"pysockkit.aio.  initiator: this side connected.\n\n"
"    >>> rule = _core.HeartbeatRule(1.0, 3.0, False)\n"
"    >>> rule.ping_after\n"
"    1.5\n");

static PyType_Slot Rule_slots[] = {
    {Py_tp_doc, (void *)Rule_doc},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Rule_init},
    {Py_tp_methods, Rule_methods},
    {Py_tp_getset, Rule_getset},
    {0, NULL},
};

static PyType_Spec Rule_spec = {
    .name = "pysockkit._core.HeartbeatRule",
    .basicsize = sizeof(RuleObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Rule_slots,
};

/* Contract: GIL held; called once from the module's exec slot.  Adds
 * HeartbeatRule and the constants of heartbeat.h, the one definition the
 * Python modules read. */
int skpy_add_heartbeat(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Rule_spec, NULL);
    if (py_type == NULL ||
        PyModule_AddObjectRef(mod, "HeartbeatRule", py_type) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "HB_CHECK", SK_HB_CHECK) < 0 ||
        PyModule_AddIntConstant(mod, "HB_ALIVE", SK_HB_ALIVE) < 0 ||
        PyModule_AddIntConstant(mod, "HB_DEAD", SK_HB_DEAD) < 0 ||
        PyModule_AddIntConstant(mod, "HB_PONG", SK_HB_PONG) < 0 ||
        PyModule_AddIntConstant(mod, "HB_PING", SK_HB_PING) < 0 ||
        PyModule_AddIntConstant(mod, "HB_RTT_EVERY", SK_HB_RTT_EVERY) < 0 ||
        PyModule_AddIntConstant(mod, "CTL_PING", SK_CTL_PING) < 0 ||
        PyModule_AddIntConstant(mod, "CTL_PONG", SK_CTL_PONG) < 0 ||
        PyModule_AddIntConstant(mod, "CTL_PING_LEN", SK_CTL_PING_LEN) < 0 ||
        PyModule_AddIntConstant(mod, "CTL_PONG_LEN", SK_CTL_PONG_LEN) < 0 ||
        skpy_add_u64(mod, "CTL_RTT_UNKNOWN", SK_CTL_RTT_UNKNOWN) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
