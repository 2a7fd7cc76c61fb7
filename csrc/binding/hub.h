/*
 * hub.h - the process's heartbeat hub (core/hub.h), as the binding holds
 * it: one reactor thread for every heartbeating connection of every
 * interpreter, started on first use (hub.c).
 */
#ifndef SK_BINDING_HUB_H
#define SK_BINDING_HUB_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "core/hub.h"

/* The hub, started on first use: borrowed (it lives until the process
 * exits), or NULL with an exception set.  GIL held (it serialises the
 * creation). */
sk_hub *skpy_hub_get(PyObject *mod);

#endif /* SK_BINDING_HUB_H */
