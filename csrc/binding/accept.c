/*
 * accept.c - Acceptor: a listener's accepting end (core/accept.h), for
 * sk.Listener:
 *
 *   Acceptor(fd)             takes the listening fd over (closes it)
 *   .accept(timeout=None)    -> the new connection's fd
 *   .close()                 shut down, wait for the threads in accept, close
 *
 * accept waits without the GIL: in accept4 itself when it has 20 ms or
 * more to wait (two syscalls less per connection than poll then accept4),
 * else in poll; signal handlers run on EINTR and every SKPY_SLICE_MS in
 * the main thread (Ctrl-C).  Threads may accept on one Acceptor at once.
 */
#include "util.h"

#include <stdlib.h>
#include <unistd.h>

#include "areas.h"
#include "core/accept.h"
#include "core/sys.h"

typedef skpy_handle_obj AcceptorObject;

PyDoc_STRVAR(Acceptor_doc,
"Acceptor(fd)\n--\n\n"
"The accepting end of listening socket fd, which it takes over: closed by\n"
"close(), or when the object goes.  Internal to sk.Listener.\n");

/* Contract: called WITHOUT the GIL (skpy_handle_dealloc); no thread uses
 * the acceptor any more.  Closes the listener if close() did not. */
static void acceptor_release(void *h)
{
    sk_acceptor *a = h;

    sk_acceptor_release(a);
    free(a);
}

/* Contract: GIL held.  Acceptor(fd): fd is the object's from here on,
 * closed also when this fails.  0, or -1 with an exception set. */
static int Acceptor_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    AcceptorObject *self = (AcceptorObject *)op;
    PyObject *py_fd;
    sk_acceptor *a = NULL;
    sk_err err;
    int fd = -1, rc = -1;

    if (!PyArg_UnpackTuple(args, "Acceptor", 1, 1, &py_fd))
        goto done;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Acceptor(fd) takes no keywords");
        goto done;
    }
    if (self->handle != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Acceptor is already set up");
        goto done;
    }
    if (skpy_fd_arg(py_fd, &fd) < 0)
        goto done;
    a = sk_calloc(1, sizeof(*a));
    if (a == NULL) {
        close(fd);
        PyErr_NoMemory();
        goto done;
    }
    if (sk_acceptor_init(a, fd, &err) != SK_OK) {
        acceptor_release(a); /* closes fd */
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    self->handle = a;
    rc = 0;
done:
    return rc;
}

static void Acceptor_dealloc(PyObject *op)
{
    skpy_handle_dealloc(op, acceptor_release);
}

PyDoc_STRVAR(Acceptor_accept_doc,
"accept(timeout=None) -> int\n--\n\n"
"Accept one connection; its fd (non-blocking, close-on-exec).  Timeout\n"
"after timeout seconds, ConnectionClosed once close() ran.\n");

/* Contract: GIL held on entry and exit, released while waiting.  A new
 * reference (the fd, the caller's), or NULL with an exception set. */
static PyObject *Acceptor_accept(PyObject *op, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    AcceptorObject *self = (AcceptorObject *)op;
    PyObject *a[1], *py_res = NULL;
    sk_acceptor *acc;
    int64_t deadline;
    int fd = -1, rc;
    sk_err err;

    acc = skpy_handle_get(op);
    if (acc == NULL)
        goto error;
    if (skpy_args("accept", args, nargs, kwnames, names, 0, 1, a) < 0)
        goto error;
    if (skpy_deadline(a[0], &deadline) < 0)
        goto error;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    rc = sk_acceptor_accept(acc, deadline, &intr, &fd, &err);
    Py_END_ALLOW_THREADS
    if (rc == SK_TIMEOUT) {
        PyErr_Format(skpy_get_state(self->mod)->Timeout,
                     "accept: no client connected within %R s", a[0]);
        goto error;
    }
    if (rc == SK_INTR)
        goto error;
    if (rc != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto error;
    }
    py_res = PyLong_FromLong(fd);
    if (py_res == NULL)
        close(fd);
error:
    return py_res;
}

/* Contract: GIL held on entry and exit, released while the threads in
 * accept leave.  None, or NULL with an exception set (close failed). */
static PyObject *Acceptor_close(PyObject *op, PyObject *unused)
{
    AcceptorObject *self = (AcceptorObject *)op;
    PyObject *py_res = NULL;
    sk_acceptor *acc;
    sk_err err;
    int rc;

    (void)unused;
    acc = skpy_handle_get(op);
    if (acc == NULL)
        goto error;
    Py_BEGIN_ALLOW_THREADS
    rc = sk_acceptor_close(acc, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

static PyMethodDef Acceptor_methods[] = {
    {"accept", (PyCFunction)(void (*)(void))Acceptor_accept,
     METH_FASTCALL | METH_KEYWORDS, Acceptor_accept_doc},
    {"close", Acceptor_close, METH_NOARGS,
     "close()\n--\n\nShut the listener down (threads in accept() raise\n"
     "ConnectionClosed), wait until they are out, close it.  Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Acceptor_slots[] = {
    {Py_tp_doc, (void *)Acceptor_doc},
    {Py_tp_new, skpy_handle_new},
    {Py_tp_init, Acceptor_init},
    {Py_tp_dealloc, Acceptor_dealloc},
    {Py_tp_methods, Acceptor_methods},
    {0, NULL},
};

static PyType_Spec Acceptor_spec = {
    .name = "pysockkit._core.Acceptor",
    .basicsize = sizeof(AcceptorObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Acceptor_slots,
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_accept(PyObject *mod)
{
    PyObject *py_type;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Acceptor_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Acceptor", py_type) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
