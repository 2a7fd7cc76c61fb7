/*
 * _pysockkit_util.h - shared pieces of the CPython binding.
 *
 * The extension is one module, pysockkit._core, built from every .c file in csrc/.
 * _pysockkit.c does multi-phase init and keeps the exception classes and
 * type objects in module state (skpy_state).  Each binding file for a core
 * area provides one `int skpy_add_<area>(PyObject *mod)` called from the
 * module's exec slot; it returns 0, or -1 with an exception set.
 *
 * Exception classes come from pysockkit._errors (imported at exec time) and
 * live in module state: Error, Timeout, FrameTooLarge, IncompleteFrame,
 * ConnectionClosed, ConnectionReset, PeerDead, OutOfStep, RemoteError.
 */
#ifndef SK_PYSOCKKIT_UTIL_H
#define SK_PYSOCKKIT_UTIL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "io.h"
#include "sk.h"
#include "tcpinfo.h"

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
    /* request futures (_pysockkit_future.c) */
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
} skpy_state;

/* Module state of the module `mod`.  GIL held. */
skpy_state *skpy_get_state(PyObject *mod);

/* Raise the exception matching err (see sk.h codes), with err->msg plus
 * `hint` (what to do), if given.  OSError subclasses get errno set from
 * err->sys_errno.  Returns NULL.  GIL held. */
PyObject *skpy_raise(PyObject *mod, const sk_err *err, const char *hint);

/* Raise OSError(errno, "<syscall>: <strerror>") for a plain syscall failure
 * (errno read at call time).  Returns NULL.  GIL held. */
PyObject *skpy_oserror(const char *syscall);

/* Turn a Python timeout (None, or a non-negative number of seconds) into a
 * deadline (clock.h).  Returns 0, or -1 with ValueError/TypeError set. */
int skpy_deadline(PyObject *timeout, int64_t *deadline);

/* The interrupt callback for sk_intr: called WITHOUT the GIL from inside a
 * Py_BEGIN_ALLOW_THREADS block; ctx is a PyThreadState ** holding the saved
 * thread state.  It restores the thread, runs PyErr_CheckSignals(), saves
 * the thread again and returns nonzero if a handler raised (the exception
 * stays set, to be seen after Py_END_ALLOW_THREADS).  Only the main thread
 * runs handlers, so in other threads it returns 0 cheaply. */
int skpy_check_signals(void *ctx);

/* Parse (header_size=4, byteorder='big', max_frame=16 MiB, control=False,
 * correlation=False) from args/kwds into a checked *f: shared by Conn,
 * Decoder and Encoder.  Returns 0, or -1 with an exception set. */
int skpy_framing_args(PyObject *mod, PyObject *args, PyObject *kwds,
                      sk_framing *f);

/* sk.RemoteError(text) for an error reply (SK_ID_ERROR) whose payload is
 * `text` (the peer's "ExcType: message", decoded as UTF-8 with
 * replacement): a new reference, or NULL with an exception set.  GIL held;
 * the caller owns the result. */
PyObject *skpy_remote_error(PyObject *mod, const char *text, Py_ssize_t len);

/* One decoded data frame as Python: bytes, or (id, bytes) for a correlated
 * frame (SK_FRAMING_IDS).  GIL held. */
PyObject *skpy_frame_obj(const sk_frame *fr);

/* Longest single wait between signal checks for the calling thread: 50 ms
 * in the main thread (Ctrl-C), 0 (no periodic wake) in others. */
#define SKPY_SLICE_MS 50
int skpy_slice_ms(void);

/* A tcp_info as a dict of the fields the kernel returned, plus '_len'
 * (_pysockkit_tcpinfo.c).  GIL held; a new reference or NULL. */
PyObject *skpy_tcp_info_dict(const sk_tcp_info *ti);

/* Request futures (_pysockkit_future.c).  All need the GIL unless said.
 * skpy_future_new: a new pending future (of the set_future_class class);
 * skpy_future_promise / skpy_future_of: its promise and back (no GIL);
 * skpy_future_notify: after a settle, tell the concurrent.futures waiters
 *   and run the callbacks (for promises settled with SK_P_NOTIFY set);
 * skpy_future_fail: settle a pending future with an exception (wakes,
 *   notifies); 1 if it settled it, 0 if it was already settled. */
struct sk_promise;
PyObject *skpy_future_new(PyObject *mod);
struct sk_promise *skpy_future_promise(PyObject *fut);
PyObject *skpy_future_of(struct sk_promise *p);
void skpy_future_notify(PyObject *fut);
int skpy_future_fail(PyObject *fut, PyObject *exc);

/* Add functions/types for each area; 0 or -1 with an exception set. */
int skpy_add_future(PyObject *mod);
int skpy_add_conn(PyObject *mod);
int skpy_add_frame(PyObject *mod);
int skpy_add_tcpinfo(PyObject *mod);
int skpy_add_diag(PyObject *mod);
int skpy_add_proxy(PyObject *mod);
int skpy_add_watch(PyObject *mod);
int skpy_add_reply(PyObject *mod);
int skpy_add_capture(PyObject *mod);
int skpy_add_server(PyObject *mod);



/* The heartbeat hub, started on first use (_pysockkit_conn.c); NULL with
 * an exception set if it cannot start.  GIL held. */
struct sk_hub;
struct sk_hub *skpy_get_hub(PyObject *mod);

/* The module definition, for PyType_GetModuleByDef. */
PyModuleDef *skpy_module_def(void);
#endif /* SK_PYSOCKKIT_UTIL_H */
