/*
 * _pysockkit_frame.c - the Decoder type: the sans-IO frame codec for code
 * that does its own I/O (asyncio protocols, tests, other transports).
 *
 * Decoder.feed(data) copies data into the codec's buffer and returns every
 * complete frame as a list of bytes.  Not thread-safe (like a parser); the
 * GIL is held throughout, and nothing here blocks.
 */
#include "_pysockkit_util.h"

#include <string.h>

#include "frame.h"

typedef struct {
    PyObject_HEAD
    sk_decoder d;
    PyObject *mod; /* borrowed: the type keeps the module alive */
} DecoderObject;

static int Decoder_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    /* PyArg_ParseTupleAndKeywords takes char *[] before Python 3.13 */
    static char kw_hs[] = "header_size", kw_bo[] = "byteorder",
                kw_mf[] = "max_frame";
    static char *kwlist[] = {kw_hs, kw_bo, kw_mf, NULL};
    DecoderObject *self = (DecoderObject *)op;
    int header_size = 4;
    const char *byteorder = "big";
    unsigned long long max_frame = 16ULL << 20;
    sk_framing f;
    sk_err err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|isK", kwlist, &header_size,
                                     &byteorder, &max_frame))
        return -1;
    if (strcmp(byteorder, "big") != 0 && strcmp(byteorder, "little") != 0) {
        PyErr_Format(PyExc_ValueError,
                     "byteorder must be 'big' or 'little', not %s", byteorder);
        return -1;
    }
    f.header_size = (unsigned)header_size;
    f.little_endian = strcmp(byteorder, "little") == 0;
    f.max_frame = max_frame;
    if (sk_framing_check(&f, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        return -1;
    }
    sk_decoder_free(&self->d);
    sk_decoder_init(&self->d, &f);
    return 0;
}

static PyObject *Decoder_new(PyTypeObject *type, PyObject *args,
                             PyObject *kwds)
{
    DecoderObject *self;
    sk_framing f = {4, 0, 16ULL << 20, 0};

    (void)args;
    (void)kwds;
    self = (DecoderObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    sk_decoder_init(&self->d, &f);
    self->mod = PyType_GetModuleByDef(type, skpy_module_def());
    if (self->mod == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Decoder_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    sk_decoder_free(&((DecoderObject *)op)->d);
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyDoc_STRVAR(Decoder_feed_doc,
"feed(data) -> list[bytes]\n--\n\n"
"Add bytes received from the peer; return every frame now complete.\n"
"Raises sk.FrameTooLarge (sticky) if a header announces more than\n"
"max_frame.\n\n"
"    >>> d = sk.Decoder()\n"
"    >>> d.feed(b'\\x00\\x00\\x00\\x02h')\n    []\n"
"    >>> d.feed(b'i')\n    [b'hi']\n");

static PyObject *Decoder_feed(PyObject *op, PyObject *arg)
{
    DecoderObject *self = (DecoderObject *)op;
    PyObject *py_list = NULL, *py_item;
    Py_buffer view;
    sk_frame fr;
    int rc;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (sk_decoder_feed(&self->d, view.buf, (size_t)view.len) != SK_OK) {
        skpy_raise(self->mod, &self->d.err, NULL);
        goto error;
    }
    py_list = PyList_New(0);
    if (py_list == NULL)
        goto error;
    while ((rc = sk_decoder_next(&self->d, &fr)) == SK_OK) {
        py_item = PyBytes_FromStringAndSize((const char *)fr.data,
                                            (Py_ssize_t)fr.len);
        if (py_item == NULL || PyList_Append(py_list, py_item) < 0) {
            Py_XDECREF(py_item);
            Py_CLEAR(py_list);
            goto error;
        }
        Py_DECREF(py_item);
    }
    if (rc == SK_ERR) {
        /* frames before the bad header were returned by earlier calls or
         * are dropped with the stream: the error is what matters now */
        Py_CLEAR(py_list);
        skpy_raise(self->mod, &self->d.err, NULL);
        goto error;
    }
    if (sk_decoder_buffered(&self->d) == 0)
        sk_decoder_idle(&self->d);
error:
    PyBuffer_Release(&view);
    return py_list;
}

PyDoc_STRVAR(Decoder_finish_doc,
"finish()\n--\n\n"
"Declare the end of the stream: raises sk.IncompleteFrame (with .missing)\n"
"if a partial frame is buffered, else returns None.\n");

static PyObject *Decoder_finish(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    DecoderObject *self = (DecoderObject *)op;
    sk_err err;

    if (sk_decoder_finish(&self->d, &err) != SK_OK)
        return skpy_raise(self->mod, &err, NULL);
    Py_RETURN_NONE;
}

static PyObject *Decoder_get_buffered(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(sk_decoder_buffered(&((DecoderObject *)op)->d));
}

static PyObject *Decoder_get_missing(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(
        sk_decoder_missing(&((DecoderObject *)op)->d));
}

static PyObject *Decoder_get_frames(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((DecoderObject *)op)->d.frames);
}

static PyMethodDef Decoder_methods[] = {
    {"feed", Decoder_feed, METH_O, Decoder_feed_doc},
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
"Decoder(header_size=4, byteorder='big', max_frame=16777216)\n--\n\n"
"The frame decoder of the C core, without I/O: feed it bytes, get frames.\n"
"A header announcing more than max_frame raises sk.FrameTooLarge before\n"
"anything is allocated for it.\n\n"
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

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_frame(PyObject *mod)
{
    PyObject *py_type;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Decoder_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Decoder", py_type) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
