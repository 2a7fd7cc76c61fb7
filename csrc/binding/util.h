/*
 * util.h - the helpers every file of the CPython binding shares: module
 * state, errors, argument parsing, addresses, deadlines and signals.
 *
 * The extension is one module, pysockkit._core.  module.c assembles it
 * (multi-phase init, module state, each area's add function: areas.h) and
 * calls nothing else; every other binding file uses the helpers declared
 * here, all defined in util.c, and never calls back up into module.c.
 *
 * Exception classes come from pysockkit._errors (imported at exec time) and
 * live in module state: Error, Timeout, FrameTooLarge, IncompleteFrame,
 * ConnectionClosed, ConnectionReset, PeerDead, OutOfStep, RemoteError.
 *
 * Every function here needs the GIL unless its comment says otherwise.
 */
#ifndef SK_BINDING_UTIL_H
#define SK_BINDING_UTIL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>

#include "core/frame.h"
#include "core/sk.h"
#include "core/tcpinfo.h"

typedef struct skpy_state {
    PyObject *Error;
    PyObject *Timeout;
    PyObject *FrameTooLarge;
    PyObject *IncompleteFrame;
    PyObject *ConnectionClosed;
    PyObject *ConnectionReset;
    PyObject *PeerDead;
    PyObject *OutOfStep;     /* a Timeout: plain replies arrive behind */
    PyObject *RemoteError;
    PyTypeObject *ConnType;
    PyTypeObject *BookType;    /* CorrelationBook (corr.c), for resolve_replies */
    /* request futures (future.c) */
    PyTypeObject *FutureType;  /* the C base, _core.Future */
    PyObject *FutureClass;     /* what request_async makes (set_future_class) */
    PyObject *cf_base;         /* concurrent.futures._base, imported lazily */
    PyObject *Condition;       /* threading.Condition, looked up lazily */
    /* sockets(): SocketEntry objects built in C (diag_set_entry_type) */
    PyTypeObject *EntryType;
    PyObject *entry_states;   /* tuple: state number -> TcpState (or None) */
    PyObject *entry_families; /* dict: AF_* number -> socket.AddressFamily */
    PyObject *entry_timers;   /* tuple: timer code -> name */
    Py_ssize_t entry_off[16]; /* slot offsets, in DIAG_ENTRY_FIELDS order */
    /* resolve_replies(): interned method names */
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_done;
    PyObject *str_cancel;
    /* Connection._adopt: the slots it sets (conn.c) */
    PyObject *str_slots[3];
    /* skpy_framing_of: the attributes it reads, the last sk.Framing it
     * parsed and the result (a frozen dataclass: one parse per object) */
    PyObject *str_framing[4];
    PyObject *framing_last;
    sk_framing framing_last_f;
} skpy_state;

/* ------------------------------------------------------------ the module */

/* Called once by module.c's exec slot, first: remember the module's
 * definition (for skpy_module_of) and the thread that imports the module
 * (the main thread, for skpy_slice_ms). */
void skpy_util_init(PyModuleDef *def);

/* Module state of the module `mod`. */
skpy_state *skpy_get_state(PyObject *mod);

/* The pysockkit._core module that defined `type` (or a base of it):
 * borrowed, or NULL with TypeError set. */
PyObject *skpy_module_of(PyTypeObject *type);

/* -------------------------------------------------------------- errors */

/* Raise the exception matching err (see sk.h codes), with err->msg plus
 * `hint` (what to do), if given.  OSError subclasses get errno set from
 * err->sys_errno.  Returns NULL. */
PyObject *skpy_raise(PyObject *mod, const sk_err *err, const char *hint);

/* Raise OSError(errno, "<syscall>: <strerror>") for a plain syscall failure
 * (errno read at call time).  Returns NULL. */
PyObject *skpy_oserror(const char *syscall);

/* sk.RemoteError(text) for an error reply (SK_ID_ERROR) whose payload is
 * `text` (the peer's "ExcType: message", decoded as UTF-8 with
 * replacement): a new reference, or NULL with an exception set. */
PyObject *skpy_remote_error(PyObject *mod, const char *text, Py_ssize_t len);

/* The pending exception as an object (normalised, traceback attached), and
 * cleared; NULL if none.  A new reference. */
PyObject *skpy_take_exception(void);

/* ----------------------------------------------------------- arguments */

/* Map positional and keyword arguments (METH_FASTCALL | METH_KEYWORDS) onto
 * out[0..n) by name; the first nreq are required, the others NULL when
 * absent.  Returns 0, or -1 with TypeError set. */
int skpy_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames, const char *const *names, int nreq, int n,
              PyObject **out);

/* Parse (header_size=4, byteorder='big', max_frame=16 MiB, control=False,
 * correlation=False) from args/kwds into a checked *f: shared by
 * Connection, Decoder and Encoder.  Returns 0, or -1 with an exception
 * set. */
int skpy_framing_args(PyObject *mod, PyObject *args, PyObject *kwds,
                      sk_framing *f);

/* *f from an sk.Framing object (its header_size, byteorder, max_frame and
 * correlation; control off), through the checks of skpy_framing_make; the
 * last object parsed is remembered (held), so a listener's or a client's
 * framing is parsed once.  GIL held.  0, or -1 with an exception set. */
int skpy_framing_of(PyObject *mod, PyObject *framing, sk_framing *f);

/* The interned attribute names of skpy_framing_of, once per module
 * (skpy_add_conn calls it).  0, or -1 with an exception set. */
int skpy_framing_init(PyObject *mod);

/* Connect to (host, port) of family (None: either) before deadline, as
 * _core.connect does (sock.c): *fd_out is the non-blocking, TCP_NODELAY
 * socket.  Errors name the address: Timeout "connect to ...: no answer
 * within <timeout> s", ECONNREFUSED "nothing listens on ...".  0, or -1
 * with an exception set.  GIL held on entry and exit, released while
 * connecting. */
int skpy_connect_fd(PyObject *mod, PyObject *py_host, PyObject *py_port,
                    PyObject *py_family, PyObject *py_timeout,
                    int64_t deadline, int *fd_out);

/* *fd from a Python int that must be a file descriptor (>= 0): 0, or -1
 * with TypeError/ValueError set and *fd = -1.  GIL held. */
int skpy_fd_arg(PyObject *obj, int *fd);

/* Raise sk.Timeout for operation `op`: "<op>: timed out after <timeout> s;
 * <what>" (what: what was kept or lost).  GIL held.  Returns NULL. */
PyObject *skpy_timeout(PyObject *mod, const char *op, PyObject *timeout,
                       const char *what);

/* Map a core result (not SK_OK) of operation `op` to an exception:
 * SK_TIMEOUT is skpy_timeout(what); SK_INTR means a signal handler already
 * raised (KeyboardInterrupt...); ETIMEDOUT from the socket is the kernel's
 * verdict (keepalive, TCP_USER_TIMEOUT, retransmissions), not our deadline:
 * a plain sk.Error saying the connection is dead; anything else is
 * skpy_raise.  GIL held.  Returns NULL. */
PyObject *skpy_fail_as(PyObject *mod, int rc, const sk_err *err,
                       const char *op, PyObject *timeout, const char *what);

/* The checks and defaults of skpy_framing_args, from values already
 * parsed (py_max NULL or None: the default, shrunk to what the header can
 * carry).  Returns 0, or -1 with an exception set. */
int skpy_framing_make(PyObject *mod, int header_size, const char *byteorder,
                      PyObject *py_max, int control, int correlation,
                      sk_framing *f);

/* ----------------------------------------------------------- addresses */

/* A numeric host, a port and a family (an int, or NULL/None: from the
 * host) into a sockaddr (sock.h sk_sockaddr).  0, or -1 with an exception
 * set. */
int skpy_sockaddr_parse(PyObject *mod, const char *host, int port,
                        PyObject *py_family, struct sockaddr_storage *ss,
                        socklen_t *len);

/* The other way: (host, port) of an AF_INET/AF_INET6 sockaddr, None for
 * family 0 (no address yet); a new reference, or NULL with ValueError set
 * for any other family. */
PyObject *skpy_sockaddr_obj(const struct sockaddr_storage *ss);

/* getsockname (peer 0) or getpeername (peer 1) of fd as (host, port): a
 * new reference, or NULL with OSError naming the syscall. */
PyObject *skpy_fd_name(int fd, int peer);

/* ------------------------------------------------- deadlines and signals */

/* Turn a Python timeout (None, or a non-negative number of seconds) into a
 * deadline (clock.h).  Returns 0, or -1 with ValueError/TypeError set. */
int skpy_deadline(PyObject *timeout, int64_t *deadline);

/* A time or duration in seconds on any monotonic clock (a finite number,
 * |s| <= 9e9) as ns, to the nearest one; `what` names the argument in the
 * error.  0, or -1 with TypeError/ValueError set. */
int skpy_seconds_ns(PyObject *py_s, const char *what, int64_t *ns);

/* The interrupt callback for sk_intr: called WITHOUT the GIL from inside a
 * Py_BEGIN_ALLOW_THREADS block; ctx is a PyThreadState ** holding the saved
 * thread state.  It restores the thread, runs PyErr_CheckSignals(), saves
 * the thread again and returns nonzero if a handler raised (the exception
 * stays set, to be seen after Py_END_ALLOW_THREADS).  Only the main thread
 * runs handlers, so in other threads it returns 0 cheaply. */
int skpy_check_signals(void *ctx);

/* Longest single wait between signal checks for the calling thread: 50 ms
 * in the main thread (Ctrl-C), 0 (no periodic wake) in others.  Any
 * thread, no GIL needed. */
#define SKPY_SLICE_MS 50
int skpy_slice_ms(void);

/* ------------------------------------------------------ values of the core */

/* One decoded data frame as Python: bytes, or (id, bytes) for a correlated
 * frame (SK_FRAMING_IDS).  A new reference or NULL. */
PyObject *skpy_frame_obj(const sk_frame *fr);

/* A tcp_info as a dict of the fields the kernel returned (absent ones are
 * left out, never zero), plus '_len'.  A new reference or NULL. */
PyObject *skpy_tcp_info_dict(const sk_tcp_info *ti);

/* Add the unsigned 64-bit constant `v` to mod as `name`.  0 or -1 with an
 * exception set. */
int skpy_add_u64(PyObject *mod, const char *name, unsigned long long v);

/* ------------------------------------------ objects that own a core handle */

/* The layout of the binding's types that own one handle of the core, made
 * by their __init__ (a capture, a watcher, a server): the handle, NULL
 * until __init__ succeeded, and the module, borrowed (the type keeps it
 * alive).  Each type names it (typedef skpy_handle_obj CaptureObject) and
 * passes `handle` straight to the core functions of its own handle type. */
typedef struct skpy_handle_obj {
    PyObject_HEAD
    void *handle;
    PyObject *mod;
} skpy_handle_obj;

/* tp_new of such a type (a final heap type of this module): an object with
 * no handle yet.  GIL held; a new reference, or NULL with an exception. */
PyObject *skpy_handle_new(PyTypeObject *type, PyObject *args, PyObject *kwds);

/* tp_dealloc of such a type: release(handle) runs WITHOUT the GIL (it may
 * join the handle's thread), then the object is freed.  GIL held. */
void skpy_handle_dealloc(PyObject *op, void (*release)(void *handle));

/* The handle, or NULL with RuntimeError "<Type> was not started" (its
 * __init__ never succeeded).  GIL held. */
void *skpy_handle_get(PyObject *op);

/* fn(handle) WITHOUT the GIL (a stop that joins a thread); None, or NULL
 * with RuntimeError when the object was not started.  GIL held on entry
 * and exit. */
PyObject *skpy_handle_call_nogil(PyObject *op, void (*fn)(void *handle));

#endif /* SK_BINDING_UTIL_H */
