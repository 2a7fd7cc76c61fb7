/*
 * future.h - the request futures of the threaded duplex (future.c), as the
 * connection (conn.c) and the receive worker's adapter (worker.c) use them.
 *
 * skpy_future_new: a new pending future (of the set_future_class class);
 * skpy_future_promise / skpy_future_of: its promise and back (no GIL);
 * skpy_future_notify: after a settle, tell the concurrent.futures waiters
 *   and run the callbacks (for promises settled with SK_P_NOTIFY set);
 * skpy_future_fail: settle a pending future with an exception (wakes,
 *   notifies); 1 if it settled it, 0 if it was already settled.
 * All need the GIL unless said.
 */
#ifndef SK_BINDING_FUTURE_H
#define SK_BINDING_FUTURE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "core/promise.h"

PyObject *skpy_future_new(PyObject *mod);
sk_promise *skpy_future_promise(PyObject *fut);
PyObject *skpy_future_of(sk_promise *p);
void skpy_future_notify(PyObject *fut);
int skpy_future_fail(PyObject *fut, PyObject *exc);

#endif /* SK_BINDING_FUTURE_H */
