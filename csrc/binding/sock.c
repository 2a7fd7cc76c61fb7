/*
 * sock.c - the socket functions of pysockkit._core (core/sock.h): listen and
 * connect on numeric addresses, and small fd helpers (accepting: accept.c).
 *
 *   listen(host, port, family=None, backlog=128) -> fd
 *   connect(host, port, family=None, timeout=None) -> fd
 *   sockname(fd), peername(fd) -> (host, port)
 *   close_fd(fd), shutdown_fd(fd), set_keepalive(fd, ...)
 *
 * connect waits without the GIL; signal handlers run on EINTR
 * and every SKPY_SLICE_MS in the main thread (Ctrl-C).
 */
#include "util.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "areas.h"
#include "core/io.h"
#include "core/sock.h"

/* Contract: GIL held.  (host: str, port: int, family) into a sockaddr;
 * 0, or -1 with an exception set. */
static int skpy_addr(PyObject *mod, PyObject *py_host, PyObject *py_port,
                     PyObject *py_family, struct sockaddr_storage *ss,
                     socklen_t *len)
{
    const char *host;
    int port, rc = -1;

    host = PyUnicode_AsUTF8(py_host);
    if (host == NULL)
        goto error;
    port = (int)PyLong_AsLong(py_port);
    if (port == -1 && PyErr_Occurred())
        goto error;
    rc = skpy_sockaddr_parse(mod, host, port, py_family, ss, len);
error:
    return rc;
}

/* Contract: GIL held; py_host and py_port already passed skpy_addr.  Writes
 * "host:port", or "[host]:port" for an IPv6 host, into buf: the one way
 * addresses are printed (pysockkit/_net.py format_address). */
static void skpy_addr_text(PyObject *py_host, PyObject *py_port, char *buf,
                           size_t n)
{
    const char *host = PyUnicode_AsUTF8(py_host);
    long port = PyLong_AsLong(py_port);

    if (host == NULL || (port == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        snprintf(buf, n, "that address");
        goto done;
    }
    snprintf(buf, n, strchr(host, ':') ? "[%s]:%ld" : "%s:%ld", host, port);
done:
    return;
}

PyDoc_STRVAR(skpy_listen_doc,
"listen(host, port, family=None, backlog=128) -> int\n--\n\n"
"Create a non-blocking listening socket (SO_REUSEADDR) on a numeric\n"
"address and return its fd.\n");

/* Contract: GIL held (bind/listen do not block); a new int or NULL. */
static PyObject *skpy_listen(PyObject *mod, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"host", "port", "family", "backlog"};
    PyObject *a[4], *py_res = NULL;
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = -1, backlog = 128, rc;
    sk_err err;
    char where[96], hint[192];

    if (skpy_args("listen", args, nargs, kwnames, names, 2, 4, a) < 0)
        goto error;
    if (skpy_addr(mod, a[0], a[1], a[2], &ss, &len) < 0)
        goto error;
    if (a[3] != NULL && a[3] != Py_None) {
        backlog = (int)PyLong_AsLong(a[3]);
        if (backlog == -1 && PyErr_Occurred())
            goto error;
    }
    rc = sk_listen((struct sockaddr *)&ss, len, backlog, &fd, &err);
    if (rc != SK_OK) {
        skpy_addr_text(a[0], a[1], where, sizeof(where));
        snprintf(hint, sizeof(hint),
                 err.sys_errno == EADDRINUSE
                     ? "another socket holds %s: pick another port, or port "
                       "0 for a free one"
                     : "listening on %s",
                 where);
        skpy_raise(mod, &err, hint);
        goto error;
    }
    py_res = PyLong_FromLong(fd);
error:
    return py_res;
}

PyDoc_STRVAR(skpy_connect_doc,
"connect(host, port, family=None, timeout=None) -> int\n--\n\n"
"Connect a non-blocking TCP socket (TCP_NODELAY) and return its fd.\n");

/* Contract: GIL held on entry and exit, released while connecting; see
 * util.h (skpy_connect_fd). */
int skpy_connect_fd(PyObject *mod, PyObject *py_host, PyObject *py_port,
                    PyObject *py_family, PyObject *py_timeout,
                    int64_t deadline, int *fd_out)
{
    skpy_state *st = skpy_get_state(mod);
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = -1, rc, ret = -1;
    sk_err err;
    char where[96], hint[192];

    if (skpy_addr(mod, py_host, py_port, py_family, &ss, &len) < 0)
        goto error;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    rc = sk_connect((struct sockaddr *)&ss, len, deadline, &intr, &fd, &err);
    Py_END_ALLOW_THREADS
    if (rc == SK_INTR)
        goto error;
    if (rc != SK_OK)
        skpy_addr_text(py_host, py_port, where, sizeof(where));
    if (rc == SK_TIMEOUT) {
        PyErr_Format(st->Timeout,
                     "connect to %s: no answer within %R s; is the server "
                     "up, and its accept queue not full?",
                     where, py_timeout);
        goto error;
    }
    if (rc != SK_OK) {
        snprintf(hint, sizeof(hint),
                 err.sys_errno == ECONNREFUSED
                     ? "nothing listens on %s: start the server first"
                     : "connecting to %s",
                 where);
        skpy_raise(mod, &err, hint);
        goto error;
    }
    *fd_out = fd;
    ret = 0;
error:
    return ret;
}

/* Contract: GIL held on entry and exit, released while connecting. */
static PyObject *skpy_connect(PyObject *mod, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"host", "port", "family", "timeout"};
    PyObject *a[4], *py_res = NULL;
    int64_t deadline;
    int fd;

    if (skpy_args("connect", args, nargs, kwnames, names, 2, 4, a) < 0)
        goto error;
    if (skpy_deadline(a[3], &deadline) < 0)
        goto error;
    if (skpy_connect_fd(mod, a[0], a[1], a[2], a[3], deadline, &fd) < 0)
        goto error;
    py_res = PyLong_FromLong(fd);
error:
    return py_res;
}

/* Contract: GIL held; (host, port) of fd's local (peer 0) or remote end. */
static PyObject *skpy_name(PyObject *py_fd, int peer)
{
    PyObject *py_res = NULL;
    int fd;

    if (skpy_fd_arg(py_fd, &fd) < 0)
        goto error;
    py_res = skpy_fd_name(fd, peer);
error:
    return py_res;
}

/* Contract: GIL held. */
static PyObject *skpy_sockname(PyObject *mod, PyObject *py_fd)
{
    (void)mod;
    return skpy_name(py_fd, 0);
}

/* Contract: GIL held. */
static PyObject *skpy_peername(PyObject *mod, PyObject *py_fd)
{
    (void)mod;
    return skpy_name(py_fd, 1);
}

/* Contract: GIL held; close(2) does not block on a TCP socket here
 * (no SO_LINGER with a timeout is ever set). */
static PyObject *skpy_close_fd(PyObject *mod, PyObject *py_fd)
{
    PyObject *py_res = NULL;
    int fd;

    (void)mod;
    if (skpy_fd_arg(py_fd, &fd) < 0)
        goto error;
    if (close(fd) != 0 && errno != EINTR) {
        skpy_oserror("close");
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

PyDoc_STRVAR(skpy_set_keepalive_doc,
"set_keepalive(fd, idle, interval, count, user_timeout_ms)\n--\n\n"
"SO_KEEPALIVE on, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT (whole seconds; <= 0\n"
"leaves the system default) and TCP_USER_TIMEOUT in ms (< 0: unchanged).\n");

/* Contract: GIL held (setsockopt does not block). */
static PyObject *skpy_set_keepalive(PyObject *mod, PyObject *args)
{
    PyObject *py_res = NULL;
    int fd, idle, interval, count, uto;
    sk_err err;

    if (!PyArg_ParseTuple(args, "iiiii:set_keepalive", &fd, &idle, &interval,
                          &count, &uto))
        goto error;
    if (sk_set_keepalive(fd, idle, interval, count, uto, &err) != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

/* Contract: GIL held; wakes the threads that wait on fd. */
static PyObject *skpy_shutdown_fd(PyObject *mod, PyObject *py_fd)
{
    PyObject *py_res = NULL;
    int fd;

    (void)mod;
    if (skpy_fd_arg(py_fd, &fd) < 0)
        goto error;
    /* ENOTCONN (a listener on some kernels) is not an error here */
    if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN) {
        skpy_oserror("shutdown");
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

static PyMethodDef skpy_sock_functions[] = {
    {"shutdown_fd", skpy_shutdown_fd, METH_O,
     "shutdown_fd(fd)\n--\n\nshutdown(fd, SHUT_RDWR): wakes threads waiting on it."},
    {"set_keepalive", skpy_set_keepalive, METH_VARARGS, skpy_set_keepalive_doc},
    {"listen", (PyCFunction)(void (*)(void))skpy_listen,
     METH_FASTCALL | METH_KEYWORDS, skpy_listen_doc},
    {"connect", (PyCFunction)(void (*)(void))skpy_connect,
     METH_FASTCALL | METH_KEYWORDS, skpy_connect_doc},
    {"sockname", skpy_sockname, METH_O,
     "sockname(fd) -> (host, port)\n--\n\nLocal address of fd."},
    {"peername", skpy_peername, METH_O,
     "peername(fd) -> (host, port)\n--\n\nRemote address of fd."},
    {"close_fd", skpy_close_fd, METH_O,
     "close_fd(fd)\n--\n\nclose(2) a file descriptor."},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_sock(PyObject *mod)
{
    return PyModule_AddFunctions(mod, skpy_sock_functions);
}
