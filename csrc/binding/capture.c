/*
 * capture.c - the Capture type of pysockkit._core: a C thread
 * (capture.[ch]) recording TCP segments of chosen ports from an AF_PACKET
 * socket on one interface.
 *
 *   Capture(ports=(), max_segments=0, payload_bytes=-1, max_seconds=0.0,
 *           ifname="lo", rcvbuf=0)
 *   .stop()              end the thread (GIL released while joining)
 *   .segments(start=0)   [segment tuple, ...] from index start, oldest first
 *   .wait(count, timeout=None) -> seen
 *                        wait (GIL released, Ctrl-C works) until `count`
 *                        segments were seen, the thread ended, or timeout
 *   .stats()             dict of counters; "error" is why the thread
 *                        ended (text), or None
 *   capture_parse(data, ethertype=0, wire_len=0) -> segment tuple
 *                        the parser on its own (ValueError if malformed)
 *
 * A segment tuple is (t_ns, family, src, sport, dst, dport, seq, ack,
 * flags, window, length, payload, opts, mss, wscale, tsval, tsecr, sack,
 * urgent): t_ns absolute CLOCK_MONOTONIC (time.monotonic_ns()), addresses
 * as text, payload the captured bytes (at most payload_bytes), sack a
 * tuple of (left, right) pairs.  No protocol logic here.
 */
#include "util.h"

#include "areas.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/capture.h"
#include "core/clock.h"

/* handle: the sk_capture (owned); util.h */
typedef skpy_handle_obj CaptureObject;

/* Contract: GIL held.  The segment as a new tuple (module docstring);
 * payload points at seg->caplen bytes (may be NULL when caplen is 0). */
static PyObject *segment_to_py(const sk_segment *seg, const uint8_t *payload)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    PyObject *py_sack = NULL, *py_res = NULL;
    unsigned i;

    if (inet_ntop(seg->family, seg->src, src, sizeof(src)) == NULL
        || inet_ntop(seg->family, seg->dst, dst, sizeof(dst)) == NULL) {
        skpy_oserror("inet_ntop");
        goto done;
    }
    py_sack = PyTuple_New(seg->nsack);
    if (py_sack == NULL)
        goto done;
    for (i = 0; i < seg->nsack && i < SK_SEG_MAX_SACK; i++) {
        PyObject *py_pair = Py_BuildValue("(kk)", (unsigned long)seg->sack[i][0],
                                          (unsigned long)seg->sack[i][1]);
        if (py_pair == NULL)
            goto done;
        PyTuple_SET_ITEM(py_sack, i, py_pair);
    }
    py_res = Py_BuildValue(
        "(LisisikkiiIy#iiikkOi)", (long long)seg->t_ns, (int)seg->family,
        src, (int)seg->sport, dst, (int)seg->dport,
        (unsigned long)seg->seq, (unsigned long)seg->ack, (int)seg->flags,
        (int)seg->window, (unsigned int)seg->length,
        payload != NULL ? (const char *)payload : "",
        (Py_ssize_t)(payload != NULL ? seg->caplen : 0), (int)seg->opts,
        (int)seg->mss, (int)seg->wscale, (unsigned long)seg->tsval,
        (unsigned long)seg->tsecr, py_sack, (int)seg->urgent);
done:
    Py_XDECREF(py_sack);
    return py_res;
}

/* ------------------------------------------------------------ lifecycle */

/* Contract: any thread, no GIL (skpy_handle_dealloc releases it): stop
 * and join the capture thread, free everything. */
static void capture_release(void *c)
{
    sk_capture_free(c);
}

/* Contract: GIL held on entry and exit; released while the thread is
 * joined and freed. */
static void Capture_dealloc(PyObject *op)
{
    skpy_handle_dealloc(op, capture_release);
}

/* Contract: GIL held.  Fill cfg->ports from a sequence of ints.  0 or -1
 * with an exception set. */
static int parse_ports(PyObject *py_ports, sk_capture_config *cfg)
{
    PyObject *py_seq = NULL;
    Py_ssize_t n, i;
    int rc = -1;

    py_seq = PySequence_Fast(py_ports, "ports must be a sequence of ints");
    if (py_seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(py_seq);
    if (n > SK_CAPTURE_MAX_PORTS) {
        PyErr_Format(PyExc_ValueError, "at most %d ports, not %zd",
                     SK_CAPTURE_MAX_PORTS, n);
        goto done;
    }
    for (i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(py_seq, i));

        if (v == -1 && PyErr_Occurred())
            goto done;
        if (v < 1 || v > 65535) {
            PyErr_Format(PyExc_ValueError, "port %ld is not in 1..65535", v);
            goto done;
        }
        cfg->ports[i] = (uint16_t)v;
    }
    cfg->nports = (size_t)n;
    rc = 0;
done:
    Py_XDECREF(py_seq);
    return rc;
}

PyDoc_STRVAR(Capture_doc,
"Capture(ports=(), max_segments=0, payload_bytes=-1, max_seconds=0.0,\n"
"        ifname='lo', rcvbuf=0)\n"
"--\n\n"
"Start a thread recording the TCP segments to or from `ports` on the\n"
"interface (every TCP segment with no ports).  0 / -1 mean the defaults\n"
"(4096 segments, 128 payload bytes each); max_seconds > 0 ends the\n"
"capture by itself after that long.  Needs CAP_NET_RAW (OSError EPERM).\n"
"Private: use pysockkit.record().");

/* Contract: GIL held; released around sk_capture_start.  0 or -1 with an
 * exception set. */
static int Capture_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_ports[] = "ports", kw_max[] = "max_segments",
                kw_pay[] = "payload_bytes", kw_secs[] = "max_seconds",
                kw_if[] = "ifname", kw_rcv[] = "rcvbuf";
    static char *kwlist[] = {kw_ports, kw_max, kw_pay, kw_secs, kw_if, kw_rcv,
                             NULL};
    CaptureObject *self = (CaptureObject *)op;
    PyObject *py_ports = NULL;
    Py_ssize_t max_segments = 0, payload = -1;
    double max_seconds = 0.0;
    const char *ifname = "lo";
    int rcvbuf = 0, r, rc = -1;
    sk_capture_config cfg;
    sk_capture *c = NULL;
    sk_err err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Onndsi", kwlist, &py_ports,
                                     &max_segments, &payload, &max_seconds,
                                     &ifname, &rcvbuf))
        goto done;
    if (self->handle != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Capture is already started");
        goto done;
    }
    memset(&cfg, 0, sizeof(cfg));
    if (py_ports != NULL && parse_ports(py_ports, &cfg) < 0)
        goto done;
    if (max_segments < 0 || (size_t)max_segments > SK_CAPTURE_MAX_SEGMENTS) {
        PyErr_Format(PyExc_ValueError, "max_segments must be in 0..%u",
                     SK_CAPTURE_MAX_SEGMENTS);
        goto done;
    }
    if (payload > SK_CAPTURE_MAX_PAYLOAD) {
        PyErr_Format(PyExc_ValueError, "payload_bytes must be at most %d",
                     SK_CAPTURE_MAX_PAYLOAD);
        goto done;
    }
    if (!isfinite(max_seconds) || max_seconds < 0 || max_seconds > 1e6) {
        PyErr_SetString(PyExc_ValueError,
                        "max_seconds must be in 0..1e6 (0: no limit)");
        goto done;
    }
    if (strlen(ifname) == 0 || strlen(ifname) >= 16) {
        PyErr_SetString(PyExc_ValueError,
                        "ifname must be an interface name of 1..15 bytes");
        goto done;
    }
    cfg.ifname = ifname;
    cfg.max_segments = (size_t)max_segments;
    cfg.payload_bytes = (long)payload;
    cfg.max_duration_ns = (int64_t)llround(max_seconds * 1e9);
    cfg.rcvbuf = rcvbuf;
    sk_err_clear(&err);
    Py_BEGIN_ALLOW_THREADS
    r = sk_capture_start(&cfg, &c, &err);
    Py_END_ALLOW_THREADS
    if (r != SK_OK) {
        skpy_raise(self->mod, &err,
                   err.sys_errno == EPERM || err.sys_errno == EACCES
                       ? "capturing packets needs CAP_NET_RAW"
                       : NULL);
        goto done;
    }
    self->handle = c;
    rc = 0;
done:
    return rc;
}

/* -------------------------------------------------------------- methods */

/* Contract: no GIL (skpy_handle_call_nogil releases it). */
static void capture_stop(void *c)
{
    sk_capture_stop(c);
}

/* Contract: GIL held on entry and exit, released while joining. */
static PyObject *Capture_stop(PyObject *op, PyObject *noargs)
{
    (void)noargs;
    return skpy_handle_call_nogil(op, capture_stop);
}

/* Contract: GIL held.  A new list of segment tuples from index `start`;
 * the copy out of the ring is a PyMem buffer freed here. */
static PyObject *Capture_segments(PyObject *op, PyObject *args,
                                  PyObject *kwds)
{
    static char kw_start[] = "start";
    static char *kwlist[] = {kw_start, NULL};
    CaptureObject *self = (CaptureObject *)op;
    sk_capture_stats st;
    sk_segment *buf = NULL;
    uint8_t *pay = NULL;
    PyObject *py_list = NULL, *py_res = NULL;
    Py_ssize_t start = 0;
    size_t n, want, got, i;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", kwlist, &start))
        goto error;
    if (skpy_handle_get(op) == NULL)
        goto error;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must be >= 0");
        goto error;
    }
    sk_capture_get_stats(self->handle, &st);
    /* the ring only grows, up to its capacity: size, then copy */
    n = sk_capture_segments(self->handle, 0, NULL, NULL, 0);
    want = (size_t)start < n ? n - (size_t)start : 0;
    buf = PyMem_Malloc((want ? want : 1) * sizeof(*buf));
    pay = PyMem_Malloc((want && st.payload_bytes ? want * st.payload_bytes : 1));
    if (buf == NULL || pay == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    got = sk_capture_segments(self->handle, (size_t)start, buf, pay, want);
    got = got > (size_t)start ? got - (size_t)start : 0;
    if (got > want)
        got = want;
    py_list = PyList_New((Py_ssize_t)got);
    if (py_list == NULL)
        goto error;
    for (i = 0; i < got; i++) {
        PyObject *py_item = segment_to_py(
            &buf[i], buf[i].caplen ? pay + i * st.payload_bytes : NULL);

        if (py_item == NULL)
            goto error;
        PyList_SET_ITEM(py_list, (Py_ssize_t)i, py_item);
    }
    py_res = py_list;
    py_list = NULL;
error:
    PyMem_Free(buf);
    PyMem_Free(pay);
    Py_XDECREF(py_list);
    return py_res;
}

/* Contract: GIL held on entry and exit; released while waiting (signal
 * handlers run every SKPY_SLICE_MS in the main thread).  Returns the
 * number of segments seen, or NULL with the handler's exception. */
static PyObject *Capture_wait(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_count[] = "count", kw_timeout[] = "timeout";
    static char *kwlist[] = {kw_count, kw_timeout, NULL};
    CaptureObject *self = (CaptureObject *)op;
    PyObject *py_timeout = Py_None, *py_res = NULL;
    unsigned long long count = 0;
    uint64_t seen = 0;
    int64_t deadline;
    int r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K|O", kwlist, &count,
                                     &py_timeout))
        goto done;
    if (skpy_handle_get(op) == NULL)
        goto done;
    if (skpy_deadline(py_timeout, &deadline) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    r = sk_capture_wait(self->handle, (uint64_t)count, deadline, &intr, &seen);
    Py_END_ALLOW_THREADS
    if (r == SK_INTR && PyErr_Occurred())
        goto done;
    py_res = PyLong_FromUnsignedLongLong((unsigned long long)seen);
done:
    return py_res;
}

/* Contract: GIL held; a new dict. */
static PyObject *Capture_stats(PyObject *op, PyObject *noargs)
{
    CaptureObject *self = (CaptureObject *)op;
    PyObject *py_err = NULL, *py_d = NULL;
    sk_capture_stats st;

    (void)noargs;
    if (skpy_handle_get(op) == NULL)
        goto error;
    sk_capture_get_stats(self->handle, &st);
    /* why the thread ended, as text ("recvmmsg(AF_PACKET): ..."), or None */
    py_err = st.err.code != SK_E_NONE ? PyUnicode_FromString(st.err.msg)
                                      : Py_NewRef(Py_None);
    if (py_err == NULL)
        goto error;
    py_d = Py_BuildValue(
        "{s:L,s:L,s:K,s:K,s:K,s:K,s:K,s:n,s:n,s:O,s:O,s:O,s:O}",
        "start_ns", (long long)st.start_ns,
        "end_ns", (long long)st.end_ns,
        "seen", (unsigned long long)st.seen,
        "kept", (unsigned long long)st.kept,
        "ring_dropped", (unsigned long long)st.ring_dropped,
        "kernel_dropped", (unsigned long long)st.kernel_dropped,
        "malformed", (unsigned long long)st.malformed,
        "capacity", (Py_ssize_t)st.capacity,
        "payload_bytes", (Py_ssize_t)st.payload_bytes,
        "running", st.running ? Py_True : Py_False,
        "timed_out", st.timed_out ? Py_True : Py_False,
        "stamps_on", st.stamps_on ? Py_True : Py_False,
        "error", py_err);
error:
    Py_XDECREF(py_err);
    return py_d;
}

static PyMethodDef Capture_methods[] = {
    {"stop", Capture_stop, METH_NOARGS,
     "stop()\n--\n\nEnd the capture thread and join it (idempotent)."},
    {"segments", (PyCFunction)(void (*)(void))Capture_segments,
     METH_VARARGS | METH_KEYWORDS,
     "segments(start=0)\n--\n\nThe kept segments from index start, as "
     "tuples, oldest first."},
    {"wait", (PyCFunction)(void (*)(void))Capture_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait(count, timeout=None)\n--\n\nWait until count segments were seen "
     "or the capture ended; returns the number seen."},
    {"stats", Capture_stats, METH_NOARGS,
     "stats()\n--\n\nA dict of the capture's counters and status."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Capture_slots[] = {
    {Py_tp_doc, (void *)Capture_doc},
    {Py_tp_new, skpy_handle_new},
    {Py_tp_init, Capture_init},
    {Py_tp_dealloc, Capture_dealloc},
    {Py_tp_methods, Capture_methods},
    {0, NULL},
};

static PyType_Spec Capture_spec = {
    .name = "pysockkit._core.Capture",
    .basicsize = sizeof(CaptureObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Capture_slots,
};

/* Contract: GIL held.  capture_parse(data, ethertype=0, wire_len=0): the
 * segment tuple, or ValueError with the parser's message. */
static PyObject *skpy_capture_parse(PyObject *mod, PyObject *args,
                                    PyObject *kwds)
{
    static char kw_data[] = "data", kw_eth[] = "ethertype",
                kw_wire[] = "wire_len";
    static char *kwlist[] = {kw_data, kw_eth, kw_wire, NULL};
    Py_buffer view = {0};
    unsigned int ethertype = 0;
    Py_ssize_t wire = 0;
    const uint8_t *payload = NULL;
    PyObject *py_res = NULL;
    sk_segment seg;
    sk_err err;

    (void)mod;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|In", kwlist, &view,
                                     &ethertype, &wire))
        goto done;
    if (wire < 0) {
        PyErr_SetString(PyExc_ValueError, "wire_len must be >= 0");
        goto done;
    }
    sk_err_clear(&err);
    if (sk_capture_parse(view.buf, (size_t)view.len, (size_t)wire, ethertype,
                         &seg, &payload, &err) != SK_OK) {
        PyErr_SetString(PyExc_ValueError, err.msg);
        goto done;
    }
    py_res = segment_to_py(&seg, payload);
done:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return py_res;
}

static PyMethodDef capture_functions[] = {
    {"capture_parse", (PyCFunction)(void (*)(void))skpy_capture_parse,
     METH_VARARGS | METH_KEYWORDS,
     "capture_parse(data, ethertype=0, wire_len=0)\n--\n\n"
     "Decode one IPv4/IPv6 TCP packet into a segment tuple (ValueError if "
     "it is not one)."},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_capture(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Capture_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Capture", py_type) < 0)
        goto error;
    if (PyModule_AddFunctions(mod, capture_functions) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "CAPTURE_DEFAULT_SEGMENTS",
                                SK_CAPTURE_DEFAULT_SEGMENTS) < 0
        || PyModule_AddIntConstant(mod, "CAPTURE_MAX_SEGMENTS",
                                   (long)SK_CAPTURE_MAX_SEGMENTS) < 0
        || PyModule_AddIntConstant(mod, "CAPTURE_DEFAULT_PAYLOAD",
                                   SK_CAPTURE_DEFAULT_PAYLOAD) < 0
        || PyModule_AddIntConstant(mod, "CAPTURE_MAX_PAYLOAD",
                                   SK_CAPTURE_MAX_PAYLOAD) < 0
        || PyModule_AddIntConstant(mod, "CAPTURE_MAX_PORTS",
                                   SK_CAPTURE_MAX_PORTS) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
