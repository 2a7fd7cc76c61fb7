/*
 * module.c - the pysockkit._core module, assembled: multi-phase init, the
 * module state (util.h skpy_state: exception classes, types, caches) with
 * its traverse/clear, and a call to each binding file's add function
 * (areas.h).  Nothing else: the helpers the binding files share live in
 * util.c, and no binding file calls into this one.
 */
#include "util.h"

#include "areas.h"

static struct PyModuleDef skpy_module;

/* ----------------------------------------------------------------- module */

/* Contract: GIL held; fills the exception classes of the module state from
 * pysockkit._errors.  0, or -1 with an exception set. */
static int skpy_load_errors(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_errs;
    int rc = -1;

    py_errs = PyImport_ImportModule("pysockkit._errors");
    if (py_errs == NULL)
        goto error;
#define SKPY_LOAD(name)                                                   \
    do {                                                                  \
        st->name = PyObject_GetAttrString(py_errs, #name);                \
        if (st->name == NULL)                                             \
            goto error;                                                   \
    } while (0)
    SKPY_LOAD(Error);
    SKPY_LOAD(Timeout);
    SKPY_LOAD(FrameTooLarge);
    SKPY_LOAD(IncompleteFrame);
    SKPY_LOAD(ConnectionClosed);
    SKPY_LOAD(ConnectionReset);
    SKPY_LOAD(PeerDead);
    SKPY_LOAD(OutOfStep);
    SKPY_LOAD(RemoteError);
#undef SKPY_LOAD
    rc = 0;
error:
    Py_XDECREF(py_errs);
    return rc;
}

/* Contract: GIL held; the exec slot, once per module object.  0, or -1
 * with an exception set. */
static int skpy_exec(PyObject *mod)
{
    int rc = -1;

    skpy_util_init(&skpy_module);
    if (skpy_load_errors(mod) < 0)
        goto error;
    if (skpy_add_future(mod) < 0)
        goto error;
    if (skpy_add_conn(mod) < 0)
        goto error;
    if (skpy_add_sock(mod) < 0)
        goto error;
    if (skpy_add_accept(mod) < 0)
        goto error;
    if (skpy_add_hub(mod) < 0)
        goto error;
    if (skpy_add_frame(mod) < 0)
        goto error;
    if (skpy_add_heartbeat(mod) < 0)
        goto error;
    if (skpy_add_corr(mod) < 0)
        goto error;
    if (skpy_add_tcpinfo(mod) < 0)
        goto error;
    if (skpy_add_diag(mod) < 0)
        goto error;
    if (skpy_add_proxy(mod) < 0)
        goto error;
    if (skpy_add_watch(mod) < 0)
        goto error;
    if (skpy_add_reply(mod) < 0)
        goto error;
    if (skpy_add_capture(mod) < 0)
        goto error;
    if (skpy_add_server(mod) < 0)
        goto error;
    if (skpy_add_nfq(mod) < 0)
        goto error;
    if (skpy_add_call(mod) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held (the collector). */
static int skpy_traverse(PyObject *mod, visitproc visit, void *arg)
{
    skpy_state *st = skpy_get_state(mod);
    Py_VISIT(st->Error);
    Py_VISIT(st->Timeout);
    Py_VISIT(st->FrameTooLarge);
    Py_VISIT(st->IncompleteFrame);
    Py_VISIT(st->ConnectionClosed);
    Py_VISIT(st->ConnectionReset);
    Py_VISIT(st->PeerDead);
    Py_VISIT(st->OutOfStep);
    Py_VISIT(st->RemoteError);
    Py_VISIT(st->ConnType);
    Py_VISIT(st->BookType);
    Py_VISIT(st->FutureType);
    Py_VISIT(st->FutureClass);
    Py_VISIT(st->cf_base);
    Py_VISIT(st->Condition);
    Py_VISIT(st->EntryType);
    Py_VISIT(st->entry_states);
    Py_VISIT(st->entry_families);
    Py_VISIT(st->entry_timers);
    Py_VISIT(st->str_set_result);
    Py_VISIT(st->str_set_exception);
    Py_VISIT(st->str_done);
    Py_VISIT(st->str_cancel);
    Py_VISIT(st->framing_last);
    for (size_t i = 0; i < sizeof(st->str_slots) / sizeof(st->str_slots[0]); i++)
        Py_VISIT(st->str_slots[i]);
    for (size_t i = 0; i < sizeof(st->str_framing) / sizeof(st->str_framing[0]); i++)
        Py_VISIT(st->str_framing[i]);
    return 0;
}

/* Contract: GIL held; drops every reference of the module state. */
static int skpy_clear(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    Py_CLEAR(st->Error);
    Py_CLEAR(st->Timeout);
    Py_CLEAR(st->FrameTooLarge);
    Py_CLEAR(st->IncompleteFrame);
    Py_CLEAR(st->ConnectionClosed);
    Py_CLEAR(st->ConnectionReset);
    Py_CLEAR(st->PeerDead);
    Py_CLEAR(st->OutOfStep);
    Py_CLEAR(st->RemoteError);
    Py_CLEAR(st->ConnType);
    Py_CLEAR(st->BookType);
    Py_CLEAR(st->FutureType);
    Py_CLEAR(st->FutureClass);
    Py_CLEAR(st->cf_base);
    Py_CLEAR(st->Condition);
    Py_CLEAR(st->EntryType);
    Py_CLEAR(st->entry_states);
    Py_CLEAR(st->entry_families);
    Py_CLEAR(st->entry_timers);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_set_exception);
    Py_CLEAR(st->str_done);
    Py_CLEAR(st->str_cancel);
    Py_CLEAR(st->framing_last);
    for (size_t i = 0; i < sizeof(st->str_slots) / sizeof(st->str_slots[0]); i++)
        Py_CLEAR(st->str_slots[i]);
    for (size_t i = 0; i < sizeof(st->str_framing) / sizeof(st->str_framing[0]); i++)
        Py_CLEAR(st->str_framing[i]);
    return 0;
}

/* Contract: GIL held; the module object is being freed. */
static void skpy_free(void *mod)
{
    skpy_clear((PyObject *)mod);
}

static PyModuleDef_Slot skpy_slots[] = {
    {Py_mod_exec, (void *)skpy_exec},
    {0, NULL},
};

PyDoc_STRVAR(skpy_doc,
             "C core of pysockkit: framed TCP I/O, TCP_INFO and sock_diag.\n"
             "\n"
             "Private: use the public API in the pysockkit package.");

static struct PyModuleDef skpy_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pysockkit._core",
    .m_doc = skpy_doc,
    .m_size = sizeof(skpy_state),
    .m_slots = skpy_slots,
    .m_traverse = skpy_traverse,
    .m_clear = skpy_clear,
    .m_free = skpy_free,
};

/* Contract: GIL held; the import machinery runs the slots. */
PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&skpy_module);
}
