/*
 * call.c - one exchange on a connection made for it, for sk.call:
 *
 *   call(host, port, family, data, timeout, framing) -> reply
 *   exchange(fd, data, timeout, framing) -> reply
 *
 * send one frame, receive one, close: what Connection(fd, framing) then
 * request(data, timeout) then close() do, on an sk_conn of its own (no
 * Python object per call, one GIL release for the whole exchange).
 * callgrind, bench/contenders.py shortconn client against the C server:
 * 20,314 instructions per sk.call through a Connection, 13,234 through
 * call() here.  exchange() stays for a name with several addresses: the
 * connect loop tries the next address only on connect errors, never after
 * the request went out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "areas.h"
#include "util.h"

#include <unistd.h>

#include "core/io.h"
#include "core/wait.h"

/* Contract: GIL held on entry and exit, released while the exchange may
 * block (signal handlers run on EINTR and every slice: Ctrl-C stops it).
 * fd is this call's: closed orderly on every path (the tail of a torn
 * request goes out if the socket takes it at once, unread bytes are read
 * away so that close sends FIN).  py_timeout is the timeout the deadline
 * came from (for messages).  A new reference (the reply, as
 * Connection.recv returns it), or NULL with an exception set: Timeout,
 * ConnectionClosed, IncompleteFrame, FrameTooLarge, sk.Error. */
static PyObject *skpy_exchange_fd(PyObject *mod, int fd, PyObject *py_data,
                                  PyObject *py_timeout, int64_t deadline,
                                  PyObject *py_framing)
{
    PyObject *py_ret = NULL;
    Py_buffer view;
    sk_iov iov = {NULL, 0, 0, 0};
    sk_framing f;
    sk_frame fr;
    sk_conn c;
    sk_err err, cerr;
    size_t done = 0;
    int have_view = 0, have_conn = 0, rc;

    if (PyObject_GetBuffer(py_data, &view, PyBUF_SIMPLE) < 0)
        goto error;
    have_view = 1;
    if (skpy_framing_of(mod, py_framing, &f) < 0)
        goto error;
    if (sk_conn_init(&c, fd, &f, &err) != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto error;
    }
    have_conn = 1;
    iov.base = view.buf;
    iov.len = (size_t)view.len;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    rc = sk_conn_send(&c, &iov, 1, deadline, &intr, &done, &err);
    /* the reply cannot be in before the peer ran: wait, then read (no
     * recv that finds nothing; a reply that did come wakes poll at once) */
    c.rd_wait_first = 1;
    if (rc == SK_OK)
        rc = sk_conn_recv(&c, deadline, &intr, &fr, &err);
    Py_END_ALLOW_THREADS
    if (rc == SK_OK)
        py_ret = skpy_frame_obj(&fr); /* before the buffers go */
    else if (done == 0)
        skpy_fail_as(mod, rc, &err, "call", py_timeout,
                     "the request was not sent completely; the connection "
                     "was closed");
    else
        skpy_fail_as(mod, rc, &err, "call", py_timeout,
                     "the request was sent and no reply came; the connection "
                     "was closed");
error:
    if (have_conn) {
        sk_conn_close_orderly(&c, &cerr); /* a close error: the reply stands */
        sk_conn_release(&c);
    } else {
        close(fd);
    }
    if (have_view)
        PyBuffer_Release(&view);
    return py_ret;
}

PyDoc_STRVAR(skpy_exchange_doc,
"exchange(fd, data, timeout, framing) -> bytes\n--\n\n"
"Send data as one frame on the connected socket fd, receive one frame, and\n"
"close fd orderly (also when this raises).  timeout (None: no limit)\n"
"bounds send and receive together; framing is an sk.Framing.  sk.call's\n"
"exchange after a connect of its own (several addresses to try).\n");

/* Contract: GIL held on entry and exit, released while it may block; fd
 * (args[0]) is this call's from entry on: closed on every path.  See
 * skpy_exchange_fd. */
static PyObject *skpy_exchange(PyObject *mod, PyObject *const *args,
                               Py_ssize_t nargs)
{
    PyObject *py_ret = NULL;
    int64_t deadline;
    int fd = -1;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "exchange(fd, data, timeout, framing)");
        goto error;
    }
    if (skpy_fd_arg(args[0], &fd) < 0)
        goto error; /* fd is -1: nothing to close */
    if (skpy_deadline(args[2], &deadline) < 0) {
        close(fd);
        goto error;
    }
    py_ret = skpy_exchange_fd(mod, fd, args[1], args[2], deadline, args[3]);
error:
    return py_ret;
}

PyDoc_STRVAR(skpy_call_doc,
"call(host, port, family, data, timeout, framing) -> bytes\n--\n\n"
"sk.call on one numeric address: connect (errors as connect's), send data\n"
"as one frame, receive one, close; timeout (None: no limit) bounds it all.\n");

/* Contract: GIL held on entry and exit, released while it may block.  One
 * deadline for connect and exchange; the socket never outlives the call.
 * A new reference, or NULL with an exception set. */
static PyObject *skpy_call(PyObject *mod, PyObject *const *args,
                           Py_ssize_t nargs)
{
    PyObject *py_ret = NULL;
    int64_t deadline;
    int fd;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "call(host, port, family, data, timeout, framing)");
        goto error;
    }
    if (skpy_deadline(args[4], &deadline) < 0 ||
        skpy_connect_fd(mod, args[0], args[1], args[2], args[4], deadline,
                        &fd) < 0)
        goto error;
    py_ret = skpy_exchange_fd(mod, fd, args[3], args[4], deadline, args[5]);
error:
    return py_ret;
}

static PyMethodDef skpy_call_functions[] = {
    {"exchange", (PyCFunction)(void (*)(void))skpy_exchange, METH_FASTCALL,
     skpy_exchange_doc},
    {"call", (PyCFunction)(void (*)(void))skpy_call, METH_FASTCALL,
     skpy_call_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_call(PyObject *mod)
{
    return PyModule_AddFunctions(mod, skpy_call_functions);
}
