/*
 * frame.c - the Decoder and Encoder types: the sans-IO frame codec for code
 * that does its own I/O (asyncio protocols, tests, other transports).
 *
 * Decoder.feed(data) copies data into the codec's buffer and returns every
 * complete frame as a list of bytes.  Not thread-safe (like a parser); the
 * GIL is held throughout, and nothing here blocks.
 */
#include "util.h"

#include "areas.h"

#include <string.h>

#include "core/frame.h"
#include "core/heartbeat.h"

typedef struct {
    PyObject_HEAD
    sk_decoder d;
    PyObject *mod;     /* borrowed: the type keeps the module alive */
    PyObject *control; /* list of control-frame bodies not yet taken */
} DecoderObject;

/* Contract: GIL held; 0, or -1 with an exception set. */
static int Decoder_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    DecoderObject *self = (DecoderObject *)op;
    sk_framing f;
    int rc = skpy_framing_args(self->mod, args, kwds, &f);

    if (rc == 0) {
        sk_decoder_free(&self->d);
        sk_decoder_init(&self->d, &f);
    }
    return rc;
}

/* Contract: GIL held; a new object, or NULL with an exception set. */
static PyObject *Decoder_new(PyTypeObject *type, PyObject *args,
                             PyObject *kwds)
{
    DecoderObject *self;
    sk_framing f = {4, 0, 16ULL << 20, 0};

    (void)args;
    (void)kwds;
    self = (DecoderObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto error;
    sk_decoder_init(&self->d, &f);
    self->mod = skpy_module_of(type);
    if (self->mod == NULL)
        Py_CLEAR(self);
error:
    return (PyObject *)self;
}

/* Contract: GIL held; frees the object and drops its type's reference. */
static void Decoder_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    sk_decoder_free(&((DecoderObject *)op)->d);
    Py_XDECREF(((DecoderObject *)op)->control);
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyDoc_STRVAR(Decoder_feed_doc,
"feed(data) -> list[bytes]\n--\n\n"
"Add bytes received from the peer; return every frame now complete.\n"
"Raises sk.FrameTooLarge (sticky) if a header announces more than\n"
"max_frame.  Frames complete before such a header are returned first;\n"
"the call after raises, and so does every later one.\n\n"
"    >>> d = sk.Decoder()\n"
"    >>> d.feed(b'\\x00\\x00\\x00\\x02h')\n    []\n"
"    >>> d.feed(b'i')\n    [b'hi']\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Decoder_feed(PyObject *op, PyObject *arg)
{
    DecoderObject *self = (DecoderObject *)op;
    PyObject *py_list = NULL, *py_item;
    Py_buffer view;
    sk_frame fr;
    int rc;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        goto done;
    if (sk_decoder_feed(&self->d, view.buf, (size_t)view.len) != SK_OK) {
        skpy_raise(self->mod, &self->d.err, NULL);
        goto error;
    }
    py_list = PyList_New(0);
    if (py_list == NULL)
        goto error;
    while ((rc = sk_decoder_next(&self->d, &fr)) == SK_OK) {
        if (fr.control) {
            /* kept apart: heartbeats never mix with messages */
            if (self->control == NULL && (self->control = PyList_New(0)) == NULL) {
                Py_CLEAR(py_list);
                goto error;
            }
            py_item = PyBytes_FromStringAndSize((const char *)fr.data,
                                                (Py_ssize_t)fr.len);
            if (py_item == NULL || PyList_Append(self->control, py_item) < 0) {
                Py_XDECREF(py_item);
                Py_CLEAR(py_list);
                goto error;
            }
            Py_DECREF(py_item);
            continue;
        }
        py_item = skpy_frame_obj(&fr);
        if (py_item == NULL || PyList_Append(py_list, py_item) < 0) {
            Py_XDECREF(py_item);
            Py_CLEAR(py_list);
            goto error;
        }
        Py_DECREF(py_item);
    }
    if (rc == SK_ERR && PyList_GET_SIZE(py_list) == 0) {
        Py_CLEAR(py_list);
        skpy_raise(self->mod, &self->d.err, NULL);
        goto error;
    }
    /* frames complete before a bad header are delivered now; the error is
     * sticky, so the next feed() (or next_frame()) raises it */
    if (sk_decoder_buffered(&self->d) == 0)
        sk_decoder_idle(&self->d);
error:
    PyBuffer_Release(&view);
done:
    return py_list;
}

PyDoc_STRVAR(Decoder_finish_doc,
"finish()\n--\n\n"
"Declare the end of the stream: raises sk.IncompleteFrame (with .missing)\n"
"if a partial frame is buffered, else returns None.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Decoder_finish(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    DecoderObject *self = (DecoderObject *)op;
    sk_err err;

    return sk_decoder_finish(&self->d, &err) != SK_OK
               ? skpy_raise(self->mod, &err, NULL)
               : Py_NewRef(Py_None);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Decoder_get_buffered(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(sk_decoder_buffered(&((DecoderObject *)op)->d));
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Decoder_get_missing(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(
        sk_decoder_missing(&((DecoderObject *)op)->d));
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Decoder_get_frames(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((DecoderObject *)op)->d.frames);
}

PyDoc_STRVAR(Decoder_take_control_doc,
"take_control() -> list[bytes]\n--\n\n"
"Control frames (heartbeats) received since the last call: each body is\n"
"its type byte and payload (docs/PROTOCOL.md).  Only with control=True.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Decoder_take_control(PyObject *op, PyObject *Py_UNUSED(ig))
{
    DecoderObject *self = (DecoderObject *)op;
    PyObject *py_list = self->control;

    self->control = NULL;
    return py_list != NULL ? py_list : PyList_New(0);
}

static PyMethodDef Decoder_methods[] = {
    {"feed", Decoder_feed, METH_O, Decoder_feed_doc},
    {"take_control", Decoder_take_control, METH_NOARGS,
     Decoder_take_control_doc},
    {"finish", Decoder_finish, METH_NOARGS, Decoder_finish_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Decoder_getset[] = {
    {"buffered", Decoder_get_buffered, NULL,
     "Bytes fed and not yet returned as frames.", NULL},
    {"missing", Decoder_get_missing, NULL,
     "Bytes still missing to complete the frame in progress.", NULL},
    {"frames", Decoder_get_frames, NULL, "Frames decoded so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Decoder_doc,
"Decoder(header_size=4, byteorder='big', max_frame=16777216, control=False,\n"
"        correlation=False)\n--\n\n"
"The frame decoder of the C core, without I/O: feed it bytes, get frames.\n"
"A header announcing more than max_frame raises sk.FrameTooLarge before\n"
"anything is allocated for it.  With correlation=True, correlated frames\n"
"come out as (id, payload) tuples; with control=True, control frames are\n"
"kept apart (take_control()).\n\n"
"    >>> d = sk.Decoder(header_size=2)\n"
"    >>> d.feed(b'\\x00\\x01a\\x00\\x01b')\n    [b'a', b'b']\n");

static PyType_Slot Decoder_slots[] = {
    {Py_tp_doc, (void *)Decoder_doc},
    {Py_tp_new, Decoder_new},
    {Py_tp_init, Decoder_init},
    {Py_tp_dealloc, Decoder_dealloc},
    {Py_tp_methods, Decoder_methods},
    {Py_tp_getset, Decoder_getset},
    {0, NULL},
};

static PyType_Spec Decoder_spec = {
    .name = "pysockkit.Decoder",
    .basicsize = sizeof(DecoderObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Decoder_slots,
};

/* ------------------------------------------------------------ Encoder */

typedef struct {
    PyObject_HEAD
    sk_framing f;
    PyObject *mod; /* borrowed: the type keeps the module alive */
} EncoderObject;

/* Contract: GIL held; 0, or -1 with an exception set. */
static int Encoder_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    EncoderObject *self = (EncoderObject *)op;
    int rc = -1;

    self->mod = skpy_module_of(Py_TYPE(op));
    if (self->mod != NULL)
        rc = skpy_framing_args(self->mod, args, kwds, &self->f);
    return rc;
}

/* Raise FrameTooLarge for a payload of n bytes.  GIL held. */
static PyObject *Encoder_too_large(EncoderObject *self, Py_ssize_t i,
                                   Py_ssize_t n)
{
    sk_err err;

    sk_err_set(&err, SK_E_TOO_LARGE,
               "frame %zd is %zd bytes, over max_frame %llu; split it or "
               "raise Framing.max_frame on both peers",
               i, n, (unsigned long long)self->f.max_frame);
    err.detail = (uint64_t)i;
    return skpy_raise(self->mod, &err, NULL);
}

PyDoc_STRVAR(Encoder_encode_doc,
"encode(payload, id=None) -> bytes\n--\n\n"
"One frame: header (+ the 8-byte id of a correlated frame) + payload.\n\n"
"    >>> sk.Encoder(header_size=2).encode(b'hi')\n    b'\\x00\\x02hi'\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Encoder_encode(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames)
{
    EncoderObject *self = (EncoderObject *)op;
    PyObject *py_payload, *py_id = NULL, *py_out = NULL;
    unsigned long long id = 0;
    unsigned char hdr[8 + SK_ID_LEN];
    size_t hl;
    Py_buffer view;

    if (nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames) > 1))
        goto usage;
    py_payload = args[0];
    if (nargs == 2)
        py_id = args[1];
    else if (kwnames && PyTuple_GET_SIZE(kwnames) == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                             "id") != 0)
            goto usage;
        py_id = args[nargs];
    }
    if (py_id != NULL && py_id != Py_None) {
        if (!(self->f.flags & SK_FRAMING_IDS)) {
            PyErr_SetString(PyExc_ValueError,
                            "this encoder was made without correlation=True");
            goto out;
        }
        id = PyLong_AsUnsignedLongLong(py_id);
        if (id == (unsigned long long)-1 && PyErr_Occurred())
            goto out;
    }
    if (PyObject_GetBuffer(py_payload, &view, PyBUF_SIMPLE) < 0)
        goto out;
    if ((uint64_t)view.len > self->f.max_frame) {
        Encoder_too_large(self, 0, view.len);
        goto done;
    }
    if (py_id != NULL && py_id != Py_None)
        hl = sk_encode_header_id(&self->f, (uint64_t)view.len, id, hdr);
    else {
        sk_encode_header(&self->f, (uint64_t)view.len, hdr);
        hl = self->f.header_size;
    }
    py_out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hl + view.len);
    if (py_out == NULL)
        goto done;
    memcpy(PyBytes_AS_STRING(py_out), hdr, hl);
    memcpy(PyBytes_AS_STRING(py_out) + hl, view.buf, (size_t)view.len);
done:
    PyBuffer_Release(&view);
    goto out;
usage:
    PyErr_SetString(PyExc_TypeError, "encode(payload, id=None)");
out:
    return py_out;
}

PyDoc_STRVAR(Encoder_encode_many_doc,
"encode_many(payloads) -> bytes\n--\n\n"
"Plain frames for every payload, joined into one bytes object (one write).\n"
"All or nothing: an oversized payload raises sk.FrameTooLarge.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Encoder_encode_many(PyObject *op, PyObject *arg)
{
    EncoderObject *self = (EncoderObject *)op;
    PyObject *py_seq, *py_out = NULL, *py_it;
    Py_ssize_t n, i, total = 0;
    unsigned h = self->f.header_size;
    char *p;

    py_seq = PySequence_Fast(arg, "encode_many() needs an iterable of bytes");
    if (py_seq == NULL)
        goto out;
    n = PySequence_Fast_GET_SIZE(py_seq);
    for (i = 0; i < n; i++) {
        py_it = PySequence_Fast_GET_ITEM(py_seq, i);
        if (!PyBytes_Check(py_it)) {
            PyErr_Format(PyExc_TypeError,
                         "encode_many() takes bytes, not %.80s",
                         Py_TYPE(py_it)->tp_name);
            goto done;
        }
        if ((uint64_t)PyBytes_GET_SIZE(py_it) > self->f.max_frame) {
            Encoder_too_large(self, i, PyBytes_GET_SIZE(py_it));
            goto done;
        }
        total += (Py_ssize_t)h + PyBytes_GET_SIZE(py_it);
    }
    py_out = PyBytes_FromStringAndSize(NULL, total);
    if (py_out == NULL)
        goto done;
    p = PyBytes_AS_STRING(py_out);
    for (i = 0; i < n; i++) {
        py_it = PySequence_Fast_GET_ITEM(py_seq, i);
        sk_encode_header(&self->f, (uint64_t)PyBytes_GET_SIZE(py_it),
                         (unsigned char *)p);
        p += h;
        memcpy(p, PyBytes_AS_STRING(py_it), (size_t)PyBytes_GET_SIZE(py_it));
        p += PyBytes_GET_SIZE(py_it);
    }
done:
    Py_DECREF(py_seq);
out:
    return py_out;
}

PyDoc_STRVAR(Encoder_control_doc,
"control(type, ts, rtt_ns=-1) -> bytes\n--\n\n"
"A heartbeat control frame (type 1 PING with our last rtt, 2 PONG echoing\n"
"ts), for code doing its own I/O.  Only with control=True.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Encoder_control(PyObject *op, PyObject *args)
{
    EncoderObject *self = (EncoderObject *)op;
    unsigned char out[8 + SK_CTL_PING_LEN];
    long long ts, rtt = -1;
    PyObject *py_res = NULL;
    int type;
    size_t n;

    if (!PyArg_ParseTuple(args, "iL|L:control", &type, &ts, &rtt))
        goto error;
    if (!(self->f.flags & SK_FRAMING_CONTROL) ||
        (type != SK_CTL_PING && type != SK_CTL_PONG)) {
        PyErr_SetString(PyExc_ValueError,
                        "control frames need control=True and type 1 or 2");
        goto error;
    }
    n = sk_hb_encode(&self->f, type, (int64_t)ts, (int64_t)rtt, out);
    py_res = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
error:
    return py_res;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))Encoder_encode,
     METH_FASTCALL | METH_KEYWORDS, Encoder_encode_doc},
    {"encode_many", Encoder_encode_many, METH_O, Encoder_encode_many_doc},
    {"control", Encoder_control, METH_VARARGS, Encoder_control_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Encoder_doc,
"Encoder(header_size=4, byteorder='big', max_frame=16777216, control=False,\n"
"        correlation=False)\n--\n\n"
"The frame encoder of the C core, without I/O: the counterpart of\n"
"sk.Decoder for code that writes to its own transport (asyncio ...).\n\n"
"    >>> sk.Encoder().encode_many([b'a', b'bc'])\n"
"    b'\\x00\\x00\\x00\\x01a\\x00\\x00\\x00\\x02bc'\n");

static PyType_Slot Encoder_slots[] = {
    {Py_tp_doc, (void *)Encoder_doc},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Encoder_init},
    {Py_tp_methods, Encoder_methods},
    {0, NULL},
};

static PyType_Spec Encoder_spec = {
    .name = "pysockkit.Encoder",
    .basicsize = sizeof(EncoderObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Encoder_slots,
};

PyDoc_STRVAR(framing_limit_doc,
"framing_limit(header_size, control=False, correlation=False) -> int\n--\n\n"
"The largest payload a header_size-byte length field can announce with\n"
"the extensions on (the top bits they reserve, the 8-byte id a correlated\n"
"frame carries), or 0 for a header_size other than 1, 2, 4 or 8.\n\n"
"    >>> _core.framing_limit(2, correlation=True)\n"
"    16375\n");

/* Contract: GIL held; pure (frame.h sk_framing_limit). */
static PyObject *Core_framing_limit(PyObject *mod, PyObject *args,
                                    PyObject *kwds)
{
    static char kw_hs[] = "header_size", kw_ct[] = "control",
                kw_id[] = "correlation";
    static char *kwlist[] = {kw_hs, kw_ct, kw_id, NULL};
    PyObject *py_res = NULL;
    int header_size, control = 0, correlation = 0;
    sk_framing f;

    (void)mod;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|pp:framing_limit", kwlist,
                                     &header_size, &control, &correlation))
        goto error;
    memset(&f, 0, sizeof(f));
    f.header_size = header_size > 0 ? (unsigned)header_size : 0;
    f.flags = (control ? SK_FRAMING_CONTROL : 0) |
              (correlation ? SK_FRAMING_IDS : 0);
    py_res = PyLong_FromUnsignedLongLong(sk_framing_limit(&f));
error:
    return py_res;
}

static PyMethodDef frame_functions[] = {
    {"framing_limit", (PyCFunction)(void (*)(void))Core_framing_limit,
     METH_VARARGS | METH_KEYWORDS, framing_limit_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot.  Adds the
 * codec types, framing_limit() and the wire constants of frame.h (the
 * correlation id bits ID_REPLY, ID_ERROR, ID_MASK, the id's size ID_LEN,
 * the longest control payload CONTROL_MAX): the one definition the Python
 * modules read. */
int skpy_add_frame(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    if (skpy_add_u64(mod, "ID_REPLY", SK_ID_REPLY) < 0 ||
        skpy_add_u64(mod, "ID_ERROR", SK_ID_ERROR) < 0 ||
        skpy_add_u64(mod, "ID_MASK", SK_ID_MASK) < 0 ||
        PyModule_AddIntConstant(mod, "ID_LEN", SK_ID_LEN) < 0 ||
        PyModule_AddIntConstant(mod, "CONTROL_MAX", SK_CONTROL_MAX) < 0 ||
        PyModule_AddFunctions(mod, frame_functions) < 0)
        goto error;
    py_type = PyType_FromModuleAndSpec(mod, &Decoder_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Decoder", py_type) < 0)
        goto error;
    Py_CLEAR(py_type);
    py_type = PyType_FromModuleAndSpec(mod, &Encoder_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Encoder", py_type) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
