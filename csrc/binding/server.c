/*
 * server.c - _core.Server, the binding of the server reactor
 * (core/server.h) that sk.serve's message-handler form runs on.
 *
 *   Server(listen_fd, header_size, byteorder, max_frame, correlation,
 *          read_timeout, write_timeout, max_connections,
 *          hb_interval, hb_timeout, out_cap, keepalive, inline)
 *     starts the reactor thread on listen_fd (which stays the caller's);
 *     timeouts <= 0 and max_connections 0 mean none; hb_interval > 0 turns
 *     heartbeats on (control frames); inline: no reactor thread, the one
 *     thread calling handle_batch runs the turns.
 *   handle_batch(handler, max_frame, on_events, timeout=None)
 *       -> (handled, rest, events) | None
 *     waits, WITHOUT the GIL, for the next batch (every message that became
 *     ready in one reactor turn), then in one GIL hold: gives its events,
 *     [(client_id, kind, exception or None, (host, port) or None)] (kind:
 *     END_CLIENT, END_STOPPED, END_REJECTED, END_FAILED, ACCEPTED), to
 *     on_events, which returns those to hand back after the handlers; calls
 *     handler(payload) on each message and hands the bytes/None replies to
 *     the reactor in one call; returns how many, the messages left to the
 *     caller [(client_id, ticket, id or None, outcome, why)] (why:
 *     REST_STRAY, REST_RAISED, REST_ODD) and the events
 *     on_events returned.  (0, [], []) after timeout; None once the server
 *     stopped and every batch was taken.
 *   reply_batch([(client_id, ticket, id, reply)])
 *     answers: reply bytes-like or None (nothing); id None (plain frame), an
 *     int (the reply frame's id), or -1 (the handler failed on a plain
 *     request: close that client after the replies before it).  The ticket
 *     is the message's, given back unchanged.
 *   forget([client_id]) - their ends are recorded: let the slots go.
 *   peer(client_id) -> (host, port) | None; ports() -> [port];
 *   stats() -> dict; stop() - close every client and join the reactor.
 */
#include "util.h"

#include "areas.h"
#include "hub.h"

#include "core/server.h"

/* handle: the sk_srv (owned); util.h */
typedef skpy_handle_obj ServerObject;

/* Contract: any thread, no GIL (skpy_handle_dealloc releases it): close
 * every client, join the reactor thread, free everything. */
static void server_release(void *s)
{
    sk_srv_stop(s);
    sk_srv_free(s);
}

/* Contract: GIL held on entry and exit; released while the reactor thread
 * is stopped and joined. */
static void Server_dealloc(PyObject *op)
{
    skpy_handle_dealloc(op, server_release);
}

/* Contract: pure; seconds as ns, where <= 0 (or NaN) is 0, "none". */
static int64_t Server_ns(double seconds)
{
    if (!(seconds > 0))
        return 0;
    if (seconds > 9.0e9)
        seconds = 9.0e9;
    return (int64_t)(seconds * 1e9);
}

/* Contract: GIL held; starts the reactor thread (none when inline).  0 or
 * -1 with an exception set. */
static int Server_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_fd[] = "listen_fd", kw_hs[] = "header_size",
                kw_bo[] = "byteorder", kw_mf[] = "max_frame",
                kw_id[] = "correlation", kw_rt[] = "read_timeout",
                kw_wt[] = "write_timeout", kw_mc[] = "max_connections",
                kw_hi[] = "hb_interval", kw_ht[] = "hb_timeout",
                kw_oc[] = "out_cap", kw_ka[] = "keepalive",
                kw_in[] = "inline";
    static char *kwlist[] = {kw_fd, kw_hs, kw_bo, kw_mf, kw_id, kw_rt, kw_wt,
                             kw_mc, kw_hi, kw_ht, kw_oc, kw_ka, kw_in, NULL};
    ServerObject *self = (ServerObject *)op;
    int fd, header_size, correlation, inline_turns = 0;
    const char *byteorder;
    PyObject *py_max, *py_fargs = NULL, *py_ka = Py_None;
    double rt = 0, wt = 0, hbi = 0, hbt = 0;
    unsigned long long max_conns = 0;
    Py_ssize_t out_cap = 0;
    sk_srv_config cfg;
    sk_srv *srv = NULL;
    sk_err err;
    int rc = -1;

    if (self->handle != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Server is already running");
        goto done;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iisOp|ddKddnOp", kwlist, &fd,
                                     &header_size, &byteorder, &py_max,
                                     &correlation, &rt, &wt, &max_conns, &hbi,
                                     &hbt, &out_cap, &py_ka, &inline_turns))
        goto done;
    memset(&cfg, 0, sizeof(cfg));
    /* keepalive: None, or (idle_s, interval_s, count, user_timeout_ms) as
     * sk_set_keepalive takes them */
    if (py_ka != Py_None) {
        if (!PyArg_ParseTuple(py_ka, "iiii:keepalive", &cfg.ka_idle_s,
                              &cfg.ka_interval_s, &cfg.ka_count,
                              &cfg.ka_user_timeout_ms))
            goto done;
        cfg.keepalive = 1;
    }
    py_fargs = Py_BuildValue("(isOOO)", header_size, byteorder, py_max,
                             hbi > 0 ? Py_True : Py_False,
                             correlation ? Py_True : Py_False);
    if (py_fargs == NULL ||
        skpy_framing_args(self->mod, py_fargs, NULL, &cfg.framing) < 0)
        goto done;
    cfg.listen_fd = fd;
    cfg.read_timeout_ns = Server_ns(rt);
    cfg.write_timeout_ns = Server_ns(wt);
    cfg.hb_interval_ns = Server_ns(hbi);
    cfg.hb_timeout_ns = Server_ns(hbt);
    cfg.max_conns = max_conns;
    cfg.out_cap = out_cap > 0 ? (size_t)out_cap : 0;
    cfg.inline_turns = inline_turns;
    if (cfg.hb_interval_ns > 0) {
        cfg.hub = skpy_hub_get(self->mod);
        if (cfg.hub == NULL)
            goto done;
    }
    if (sk_srv_new(&cfg, &srv, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    self->handle = srv;
    rc = 0;
done:
    Py_XDECREF(py_fargs);
    return rc;
}

/* Contract: GIL held; the exception object for err (a new reference), or
 * NULL with an exception set. */
static PyObject *Server_exc(ServerObject *self, const sk_err *err)
{
    PyObject *py_v;

    skpy_raise(self->mod, err, NULL);
    py_v = skpy_take_exception();
    if (py_v == NULL)
        PyErr_SetString(PyExc_SystemError, "no exception for an sk_err");
    return py_v;
}

/* Contract: GIL held; one event as (cid, kind, exc or None, peer or None). */
static PyObject *Server_event(ServerObject *self, const sk_srv_event *e)
{
    PyObject *py_exc = NULL, *py_peer = NULL, *py_t = NULL;

    if (e->kind != SK_SRV_REJECTED && e->kind != SK_SRV_ACCEPTED) {
        py_exc = Server_exc(self, &e->err);
        if (py_exc == NULL)
            goto error;
    } else {
        py_exc = Py_NewRef(Py_None);
    }
    if (e->port >= 0)
        py_peer = Py_BuildValue("(si)", e->host, e->port);
    else
        py_peer = Py_NewRef(Py_None);
    if (py_peer == NULL)
        goto error;
    py_t = Py_BuildValue("(KiOO)", (unsigned long long)e->cid, e->kind, py_exc,
                         py_peer);
error:
    Py_XDECREF(py_exc);
    Py_XDECREF(py_peer);
    return py_t;
}

#define BATCH_ON_STACK 16

/* What handle_batch leaves to its caller, for one message (the `why` of
 * its rest entries). */
enum {
    SKPY_REST_STRAY = 0, /* a reply frame: a server sends no requests */
    SKPY_REST_RAISED = 1, /* the handler raised: outcome is the exception */
    SKPY_REST_ODD = 2,    /* a reply that is not bytes, or over max_frame */
};

/* Contract: GIL held; appends (cid, ticket, id or None, outcome, why) to
 * py_rest (steals py_out).  0, or -1 with an exception set. */
static int Server_rest(PyObject *py_rest, const sk_srv_msg *m, PyObject *py_out,
                       int why)
{
    PyObject *py_id, *py_t = NULL;
    int rc = -1;

    py_id = m->has_id ? PyLong_FromUnsignedLongLong(m->id) : Py_NewRef(Py_None);
    if (py_id != NULL)
        py_t = Py_BuildValue("(KKOOi)", (unsigned long long)m->cid,
                             (unsigned long long)m->seq, py_id, py_out, why);
    if (py_t != NULL && PyList_Append(py_rest, py_t) == 0)
        rc = 0;
    Py_XDECREF(py_t);
    Py_XDECREF(py_id);
    Py_DECREF(py_out);
    return rc;
}

PyDoc_STRVAR(Server_handle_batch_doc,
"handle_batch(handler, max_frame, on_events, timeout=None)\n--\n\n"
"Wait (without the GIL) for the next batch.  Its events go first to\n"
"on_events(events), which returns those to record after the handlers;\n"
"then handler(payload) runs on each message, and every reply that is bytes\n"
"(up to max_frame) or None goes to the reactor in one call.  Returns None\n"
"once the server stopped and every batch was taken, else (handled, rest,\n"
"events): rest lists the messages left to the caller as (client_id,\n"
"ticket, id or None, outcome, why): why REST_STRAY a reply frame (outcome\n"
"None), REST_RAISED the handler raised (the exception), REST_ODD a reply\n"
"that is not bytes or is over max_frame (the reply); answer them with\n"
"reply_batch.");

/* Contract: GIL held on entry and exit; released while waiting for the
 * batch (in inline mode, while running the reactor's turns).  The loop of
 * a handler thread over one batch, in C: no tuple per message, no Python
 * loop, one sk_srv_reply for the whole batch. */
static PyObject *Server_handle_batch(PyObject *op, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"handler", "max_frame", "on_events",
                                        "timeout"};
    ServerObject *self = (ServerObject *)op;
    PyObject *a_in[4], *py_handler, *py_on_events;
    PyObject *py_evs = NULL, *py_left = NULL, *py_rest = NULL, *py_res = NULL;
    PyObject *py_pay, *py_reply, *py_n, **replies = NULL;
    /* a batch of up to BATCH_ON_STACK messages (a quiet server's usual
     * one) needs no allocation for its answers */
    PyObject *stack_replies[BATCH_ON_STACK];
    sk_srv_answer stack_a[BATCH_ON_STACK];
    Py_ssize_t max_frame;
    sk_srv_answer *a = NULL;
    sk_srv_batch *b = NULL;
    size_t i, na = 0, nrep = 0, handled = 0, n;
    const unsigned char *data;
    int64_t deadline;
    sk_srv *s = NULL;
    sk_err err;
    int r;

    if (skpy_args("handle_batch", args, nargs, kwnames, names, 3, 4, a_in) < 0)
        goto done;
    py_handler = a_in[0];
    py_on_events = a_in[2];
    max_frame = PyLong_AsSsize_t(a_in[1]);
    if (max_frame == -1 && PyErr_Occurred())
        goto done;
    s = skpy_handle_get(op);
    if (s == NULL || skpy_deadline(a_in[3], &deadline) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    r = sk_srv_next(s, deadline, &b, &err);
    Py_END_ALLOW_THREADS
    if (r == SK_ERR) {
        py_res = Py_NewRef(Py_None);
        goto done;
    }
    py_evs = PyList_New(b != NULL ? (Py_ssize_t)b->nevents : 0);
    py_rest = PyList_New(0);
    if (py_evs == NULL || py_rest == NULL)
        goto done;
    for (i = 0; b != NULL && i < b->nevents; i++) {
        PyObject *py_item = Server_event(self, &b->events[i]);
        if (py_item == NULL)
            goto done;
        PyList_SET_ITEM(py_evs, (Py_ssize_t)i, py_item);
    }
    /* the accepts are announced before the handlers of the batch run */
    py_left = b != NULL && b->nevents > 0
                  ? PyObject_CallOneArg(py_on_events, py_evs)
                  : Py_NewRef(py_evs);
    if (py_left == NULL)
        goto done;
    n = b != NULL ? b->nmsgs : 0;
    if (n <= BATCH_ON_STACK) {
        a = stack_a;
        replies = stack_replies;
    } else {
        a = PyMem_Calloc(n, sizeof(*a));
        replies = PyMem_Calloc(n, sizeof(*replies));
        if (a == NULL || replies == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    data = b != NULL ? b->data.data + b->data.start : NULL;
    for (i = 0; i < n; i++) {
        const sk_srv_msg *m = &b->msgs[i];

        if (m->has_id && (m->id & SK_ID_REPLY)) {
            if (Server_rest(py_rest, m, Py_NewRef(Py_None), SKPY_REST_STRAY) < 0)
                goto done;
            continue;
        }
        py_pay = PyBytes_FromStringAndSize((const char *)data + m->off,
                                           (Py_ssize_t)m->len);
        if (py_pay == NULL)
            goto done;
        py_reply = PyObject_CallOneArg(py_handler, py_pay);
        Py_DECREF(py_pay);
        if (py_reply == NULL) {
            py_reply = skpy_take_exception(); /* with its traceback */
            if (Server_rest(py_rest, m, py_reply ? py_reply : Py_NewRef(Py_None),
                            SKPY_REST_RAISED) < 0)
                goto done;
            continue;
        }
        if (py_reply != Py_None && (!PyBytes_CheckExact(py_reply) ||
                                    PyBytes_GET_SIZE(py_reply) > max_frame)) {
            if (Server_rest(py_rest, m, py_reply, SKPY_REST_ODD) < 0)
                goto done;
            continue;
        }
        a[na].cid = m->cid;
        a[na].seq = m->seq;
        a[na].has_id = m->has_id;
        a[na].id = m->id | SK_ID_REPLY;
        if (py_reply == Py_None) {
            a[na].kind = SK_SRV_NONE;
            Py_DECREF(py_reply);
        } else {
            a[na].kind = SK_SRV_REPLY;
            a[na].base = PyBytes_AS_STRING(py_reply);
            a[na].len = (size_t)PyBytes_GET_SIZE(py_reply);
            replies[nrep++] = py_reply; /* held until sk_srv_reply copied it */
        }
        na++;
        handled++;
    }
    if (sk_srv_reply(s, a, na, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    py_n = PyLong_FromSize_t(handled);
    if (py_n != NULL) {
        py_res = PyTuple_Pack(3, py_n, py_rest, py_left);
        Py_DECREF(py_n);
    }
done:
    for (i = 0; i < nrep; i++)
        Py_DECREF(replies[i]);
    if (replies != stack_replies)
        PyMem_Free(replies);
    if (a != stack_a)
        PyMem_Free(a);
    if (b != NULL)
        sk_srv_batch_done(s, b);
    Py_XDECREF(py_evs);
    Py_XDECREF(py_left);
    Py_XDECREF(py_rest);
    return py_res;
}

PyDoc_STRVAR(Server_reply_batch_doc,
"reply_batch(answers)\n--\n\n"
"Hand [(client_id, ticket, id, reply)] to the reactor: reply bytes-like or\n"
"None; id None (plain), an int (the reply's id) or -1 (close the client).");

/* Contract: GIL held; payloads are copied before it returns. */
static PyObject *Server_reply_batch(PyObject *op, PyObject *py_list)
{
    ServerObject *self = (ServerObject *)op;
    sk_srv_answer *a = NULL;
    Py_buffer *views = NULL;
    PyObject *py_seq = NULL, *py_res = NULL;
    Py_ssize_t n = 0, i, nviews = 0;
    sk_srv *s = skpy_handle_get(op);
    sk_err err;

    if (s == NULL)
        goto done;
    py_seq = PySequence_Fast(py_list, "reply_batch takes a list of answers");
    if (py_seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(py_seq);
    a = PyMem_Calloc((size_t)n + 1, sizeof(*a));
    views = PyMem_Calloc((size_t)n + 1, sizeof(*views));
    if (a == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *py_t = PySequence_Fast_GET_ITEM(py_seq, i);
        PyObject *py_id, *py_reply;
        unsigned long long cid, ticket;

        if (!PyTuple_Check(py_t) || PyTuple_GET_SIZE(py_t) != 4) {
            PyErr_SetString(PyExc_TypeError,
                            "an answer is (client_id, ticket, id, reply)");
            goto done;
        }
        cid = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(py_t, 0));
        ticket = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(py_t, 1));
        if (PyErr_Occurred())
            goto done;
        a[i].cid = cid;
        a[i].seq = ticket;
        py_id = PyTuple_GET_ITEM(py_t, 2);
        py_reply = PyTuple_GET_ITEM(py_t, 3);
        if (py_id != Py_None) {
            long long id = PyLong_AsLongLong(py_id);
            if (id == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                a[i].id = PyLong_AsUnsignedLongLong(py_id);
                if (PyErr_Occurred())
                    goto done;
                a[i].has_id = 1;
            } else if (id == -1) {
                a[i].kind = SK_SRV_CLOSE;
                continue;
            } else {
                a[i].id = (uint64_t)id;
                a[i].has_id = 1;
            }
        }
        if (py_reply == Py_None) {
            a[i].kind = SK_SRV_NONE;
            continue;
        }
        if (PyBytes_CheckExact(py_reply)) {
            a[i].base = PyBytes_AS_STRING(py_reply);
            a[i].len = (size_t)PyBytes_GET_SIZE(py_reply);
        } else {
            if (PyObject_GetBuffer(py_reply, &views[nviews], PyBUF_SIMPLE) < 0)
                goto done;
            a[i].base = views[nviews].buf;
            a[i].len = (size_t)views[nviews].len;
            nviews++;
        }
        a[i].kind = SK_SRV_REPLY;
    }
    if (sk_srv_reply(s, a, (size_t)n, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    py_res = Py_NewRef(Py_None);
done:
    for (i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(a);
    Py_XDECREF(py_seq);
    return py_res;
}

PyDoc_STRVAR(Server_forget_doc,
"forget(client_ids)\n--\n\n"
"The ends of these clients are recorded: free their slots.");

/* Contract: GIL held. */
static PyObject *Server_forget(PyObject *op, PyObject *py_list)
{
    ServerObject *self = (ServerObject *)op;
    PyObject *py_seq = NULL, *py_res = NULL;
    uint64_t *cids = NULL;
    Py_ssize_t n, i;
    sk_srv *s = skpy_handle_get(op);
    sk_err err;

    if (s == NULL)
        goto done;
    py_seq = PySequence_Fast(py_list, "forget takes a list of client ids");
    if (py_seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(py_seq);
    cids = PyMem_Calloc((size_t)n + 1, sizeof(*cids));
    if (cids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        cids[i] = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(py_seq, i));
        if (PyErr_Occurred())
            goto done;
    }
    if (sk_srv_forget(s, cids, (size_t)n, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    py_res = Py_NewRef(Py_None);
done:
    PyMem_Free(cids);
    Py_XDECREF(py_seq);
    return py_res;
}

PyDoc_STRVAR(Server_peer_doc,
"peer(client_id)\n--\n\n(host, port) of a client held, else None.");

/* Contract: GIL held. */
static PyObject *Server_peer(PyObject *op, PyObject *py_cid)
{
    sk_srv *s = skpy_handle_get(op);
    unsigned long long cid;
    PyObject *py_res = NULL;
    char host[64];
    int port;

    if (s == NULL)
        goto done;
    cid = PyLong_AsUnsignedLongLong(py_cid);
    if (cid == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    if (sk_srv_peer(s, cid, host, sizeof(host), &port) != SK_OK || port < 0)
        py_res = Py_NewRef(Py_None);
    else
        py_res = Py_BuildValue("(si)", host, port);
done:
    return py_res;
}

PyDoc_STRVAR(Server_ports_doc,
"ports()\n--\n\nThe peer port of every client held (-1: unknown).");

/* Contract: GIL held; O(clients). */
static PyObject *Server_ports(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    sk_srv *s = skpy_handle_get(op);
    PyObject *py_list = NULL, *py_v;
    int *ports = NULL;
    size_t n, cap = 0, i;

    if (s == NULL)
        goto done;
    for (;;) {
        n = sk_srv_ports(s, ports, cap);
        if (n <= cap)
            break;
        PyMem_Free(ports);
        cap = n + 64;
        ports = PyMem_Malloc(cap * sizeof(int));
        if (ports == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    py_list = PyList_New((Py_ssize_t)n);
    if (py_list == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        py_v = PyLong_FromLong(ports[i]);
        if (py_v == NULL) {
            Py_CLEAR(py_list);
            goto done;
        }
        PyList_SET_ITEM(py_list, (Py_ssize_t)i, py_v);
    }
done:
    PyMem_Free(ports);
    return py_list;
}

PyDoc_STRVAR(Server_stats_doc, "stats()\n--\n\nA dict of the reactor's counters.");

/* Contract: GIL held. */
static PyObject *Server_stats(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    sk_srv *s = skpy_handle_get(op);
    PyObject *py_res = NULL;
    sk_srv_stats st;

    if (s == NULL)
        goto done;
    sk_srv_get_stats(s, &st);
    py_res = Py_BuildValue(
        "{sKsKsKsKsKsKsKsK}", "conns", (unsigned long long)st.conns,
        "accepted", (unsigned long long)st.accepted, "rejected",
        (unsigned long long)st.rejected, "turns", (unsigned long long)st.turns,
        "batches", (unsigned long long)st.batches, "messages",
        (unsigned long long)st.messages, "replies",
        (unsigned long long)st.replies, "writes", (unsigned long long)st.writes);
done:
    return py_res;
}

PyDoc_STRVAR(Server_stop_doc,
"stop()\n--\n\nClose every client and join the reactor thread (idempotent).");

/* Contract: no GIL (skpy_handle_call_nogil releases it). */
static void server_stop(void *s)
{
    sk_srv_stop(s);
}

/* Contract: GIL held on entry and exit, released while joining. */
static PyObject *Server_stop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return skpy_handle_call_nogil(op, server_stop);
}

static PyMethodDef Server_methods[] = {
    {"handle_batch", (PyCFunction)(void (*)(void))Server_handle_batch,
     METH_FASTCALL | METH_KEYWORDS, Server_handle_batch_doc},
    {"reply_batch", Server_reply_batch, METH_O, Server_reply_batch_doc},
    {"forget", Server_forget, METH_O, Server_forget_doc},
    {"peer", Server_peer, METH_O, Server_peer_doc},
    {"ports", Server_ports, METH_NOARGS, Server_ports_doc},
    {"stats", Server_stats, METH_NOARGS, Server_stats_doc},
    {"stop", Server_stop, METH_NOARGS, Server_stop_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Server_doc,
"Server(listen_fd, header_size, byteorder, max_frame, correlation,\n"
"       read_timeout=0, write_timeout=0, max_connections=0,\n"
"       hb_interval=0, hb_timeout=0, out_cap=0, keepalive=None,\n"
"       inline=False)\n--\n\n"
"The server reactor (csrc/core/server.h): a C thread that accepts, reads,\n"
"decodes and writes for every client; messages reach Python in batches\n"
"(handle_batch runs the handler on them) and the other answers go back with\n"
"reply_batch.  inline=True: no reactor thread; the one thread calling\n"
"handle_batch runs the turns.");

static PyType_Slot Server_slots[] = {
    {Py_tp_doc, (void *)Server_doc},
    {Py_tp_new, skpy_handle_new},
    {Py_tp_init, Server_init},
    {Py_tp_dealloc, Server_dealloc},
    {Py_tp_methods, Server_methods},
    {0, NULL},
};

static PyType_Spec Server_spec = {
    .name = "pysockkit._core.Server",
    .basicsize = sizeof(ServerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Server_slots,
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_server(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Server_spec, NULL);
    if (py_type == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Server", py_type) < 0 ||
        PyModule_AddIntConstant(mod, "END_CLIENT", SK_SRV_END) < 0 ||
        PyModule_AddIntConstant(mod, "END_STOPPED", SK_SRV_STOPPED) < 0 ||
        PyModule_AddIntConstant(mod, "END_REJECTED", SK_SRV_REJECTED) < 0 ||
        PyModule_AddIntConstant(mod, "END_FAILED", SK_SRV_FAILED) < 0 ||
        PyModule_AddIntConstant(mod, "ACCEPTED", SK_SRV_ACCEPTED) < 0 ||
        PyModule_AddIntConstant(mod, "REST_STRAY", SKPY_REST_STRAY) < 0 ||
        PyModule_AddIntConstant(mod, "REST_RAISED", SKPY_REST_RAISED) < 0 ||
        PyModule_AddIntConstant(mod, "REST_ODD", SKPY_REST_ODD) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
