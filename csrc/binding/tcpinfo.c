/*
 * tcpinfo.c - TCP_INFO and state names for pysockkit._core.
 *
 *   tcp_info(fd) -> dict      present fields only, kernel names without
 *                             "tcpi_", raw kernel units, plus "_len"
 *   tcp_state(fd) -> int      the cheap one-byte read
 *   tcp_state_name(n) -> str  Linux name ("SYN_RECV", "CLOSE", ...)
 *   tcp_info_fields() -> tuple[str, ...]   field names for this kernel
 *
 * `fd` is an int or anything with fileno() (PyObject_AsFileDescriptor).
 * The GIL is released around the getsockopt.  No protocol logic here.
 */
#include "util.h"

#include "areas.h"

#include "core/tcpinfo.h"

PyDoc_STRVAR(tcp_info_doc,
"tcp_info(fd, /) -> dict\n"
"--\n"
"\n"
"getsockopt(fd, IPPROTO_TCP, TCP_INFO) as a dict of the fields the\n"
"running kernel returned, in kernel units, keyed by the kernel name\n"
"without 'tcpi_' ('rtt' in us, 'last_data_sent' in ms, ...), plus\n"
"'_len', the number of bytes the kernel wrote.  fd is an int or an\n"
"object with fileno().  Raises pysockkit.Error (an OSError) on failure.");

/* Contract: GIL held on entry and exit; released around getsockopt. */
static PyObject *Core_tcp_info(PyObject *mod, PyObject *py_fd)
{
    PyObject *py_res = NULL;
    sk_tcp_info ti;
    sk_err err;
    int fd, rc;

    sk_err_clear(&err);
    fd = PyObject_AsFileDescriptor(py_fd);
    if (fd < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = sk_tcp_info_get(fd, &ti, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK)
        skpy_raise(mod, &err, NULL);
    else
        py_res = skpy_tcp_info_dict(&ti);
done:
    return py_res;
}

PyDoc_STRVAR(tcp_state_doc,
"tcp_state(fd, /) -> int\n"
"--\n"
"\n"
"The TCP state number of fd (Linux numbering: 1 ESTABLISHED ... 10 LISTEN,\n"
"7 CLOSE), read cheaply: TCP_INFO with a 1-byte optlen.");

/* Contract: GIL held on entry and exit; released around getsockopt. */
static PyObject *Core_tcp_state(PyObject *mod, PyObject *py_fd)
{
    PyObject *py_res = NULL;
    sk_err err;
    int fd, rc, state = 0;

    sk_err_clear(&err);
    fd = PyObject_AsFileDescriptor(py_fd);
    if (fd < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = sk_tcp_state(fd, &state, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK)
        skpy_raise(mod, &err, NULL);
    else
        py_res = PyLong_FromLong(state);
done:
    return py_res;
}

PyDoc_STRVAR(tcp_state_name_doc,
"tcp_state_name(state, /) -> str\n"
"--\n"
"\n"
"The Linux name of a TCP state number ('ESTABLISHED', 'SYN_RECV',\n"
"'CLOSE', 'NEW_SYN_RECV', ...), or 'UNKNOWN'.");

/* Contract: GIL held; pure. */
static PyObject *Core_tcp_state_name(PyObject *mod, PyObject *py_state)
{
    PyObject *py_res = NULL;
    long state;

    (void)mod;
    state = PyLong_AsLong(py_state);
    if (state == -1 && PyErr_Occurred())
        goto done;
    if (state < 0 || state > 255)
        state = 0;
    py_res = PyUnicode_FromString(sk_tcp_state_name((int)state));
done:
    return py_res;
}

PyDoc_STRVAR(tcp_info_fields_doc,
"tcp_info_fields() -> tuple[str, ...]\n"
"--\n"
"\n"
"Names of the tcp_info fields this build knows, in struct order, as read\n"
"on the running kernel (the last word's reading differs from Linux 7.0).");

/* Contract: GIL held. */
static PyObject *Core_tcp_info_fields(PyObject *mod, PyObject *unused)
{
    const sk_tcp_info_field *fields;
    PyObject *py_t, *py_s;
    size_t n, i;

    (void)mod;
    (void)unused;
    fields = sk_tcp_info_fields(&n);
    py_t = PyTuple_New((Py_ssize_t)n);
    if (py_t == NULL)
        goto error;
    for (i = 0; i < n; i++) {
        py_s = PyUnicode_FromString(fields[i].name);
        if (py_s == NULL) {
            Py_CLEAR(py_t);
            goto error;
        }
        PyTuple_SET_ITEM(py_t, (Py_ssize_t)i, py_s);
    }
error:
    return py_t;
}

static PyMethodDef tcpinfo_methods[] = {
    {"tcp_info", (PyCFunction)Core_tcp_info, METH_O, tcp_info_doc},
    {"tcp_state", (PyCFunction)Core_tcp_state, METH_O, tcp_state_doc},
    {"tcp_state_name", (PyCFunction)Core_tcp_state_name, METH_O,
     tcp_state_name_doc},
    {"tcp_info_fields", (PyCFunction)Core_tcp_info_fields, METH_NOARGS,
     tcp_info_fields_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot.  0, or -1
 * with an exception set. */
int skpy_add_tcpinfo(PyObject *mod)
{
    int rc = -1;

    if (PyModule_AddFunctions(mod, tcpinfo_methods) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "TCP_INFO_SIZE", SK_TCP_INFO_SIZE) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}
