/*
 * conn.c - the Connection type of pysockkit._core (base of
 * pysockkit.Connection).
 *
 * Locking: each Conn has a send lock and a receive lock (the core's
 * pthread mutexes, so the hub thread can trylock them too).
 * send/send_many/flush/shutdown take the send lock, recv/recv_many the
 * receive lock, request takes both (send, then receive: one fixed order, so
 * no deadlock).  Frames from two sending threads therefore never interleave,
 * and one thread may send while another receives.  Every blocking call runs
 * with the GIL released; the core calls skpy_check_signals on EINTR and every
 * SKPY_SLICE_MS, so Ctrl-C interrupts a wait promptly even with no timeout.
 *
 * Fast paths keep the GIL: a frame already in the read-ahead buffer is
 * returned without any syscall, and a small send is first tried once
 * without waiting.  The GIL is released only when the call may block.
 *
 * Asynchronous duplex (pysockkit/_duplex.py): _start_worker starts a
 * receive worker thread (the core's loop, core/worker.h, adapted here:
 * take the GIL, build Python objects, call dispatch) and a request table
 * (corr.h).  _request_async
 * registers a future (future.c) and queues the request in the
 * write-behind buffer c->out (under send_mu, so ordering with send() from
 * other threads is kept); the worker writes that buffer before each wait
 * and wakes for it on an eventfd, which request_async writes only when the
 * worker sleeps.  Replies settle their futures in the worker without the
 * GIL; the worker takes the GIL only for other frames (messages), futures
 * with callbacks, errors, and to drop the table's references to settled
 * futures (a batch at a time).
 */
#include "util.h"

#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "areas.h"
#include "core/clock.h"
#include "core/corr.h"
#include "core/hub.h"
#include "core/io.h"
#include "core/promise.h"
#include "core/sock.h"
#include "core/worker.h"
#include "future.h"
#include "hub.h"
#include "core/thread.h"

#include <sys/prctl.h>

#define SKPY_INLINE_SEND 65536    /* sends up to this many bytes try first with the GIL held */
#define SKPY_BATCH 1024           /* send_many: payloads per core call */
#define SKPY_RECV_MANY_DEFAULT 4096
/* request_async: requests up to this size are copied into the write-behind
 * buffer; larger ones are sent at once (after what is queued) */
#define SKPY_WB_DIRECT (64 * 1024)
/* request_async that finds this much queued writes it out first, waiting
 * (with its timeout) if the peer does not read: memory stays bounded */
#define SKPY_WB_MAX (256 * 1024)
/* send() with write-behind: the queue is written once it holds this much,
 * or when its oldest frame is this old at the next send; close() waits at
 * most SKPY_WB_CLOSE_NS for a queue the kernel does not take at once */
#define SKPY_WB_SIZE (64 * 1024)
#define SKPY_WB_AGE_NS 50000
#define SKPY_WB_CLOSE_NS 1000000000LL
/* the flusher found the send lock taken: it tries again after this */
#define SKPY_WB_RETRY_NS 1000000

typedef struct ConnObject {
    PyObject_HEAD
    sk_conn c;
    int fd; /* -1 once closed */
    int initialized;        /* sk_conn_init ran: the mutexes exist */
    int closing;            /* close()/abort() began: errors say so */
    int worker;             /* a receive worker thread owns the receive side */
    int worker_stop;        /* atomic: ask the worker to stop */
    pthread_t worker_thread;
    /* asynchronous duplex; corr and w.retired under corr->mu */
    sk_corr *corr;          /* request table, made by the first _start_worker */
    sk_worker w;            /* the receive worker's state (core/worker.h);
                               w.retired: settled promises whose future still
                               holds the table's reference (dropped with the
                               GIL) */
    PyObject *req_err_type; /* the receive side ended: request_async raises */
    PyObject *req_err_args; /*   req_err_type(*req_err_args) (under corr->mu) */
    /* write-behind of send() (Connection(write_behind=True)), see
     * Conn_send_behind: wb and wb_first under send_mu; wb_pending atomic,
     * set whenever send() queued a frame, cleared under send_mu once the
     * queue is seen empty (so it is never clear while frames wait) */
    int wb;
    int wb_pending;
    int64_t wb_first;       /* when the oldest queued frame was queued */
    /* the flusher's list (under skpy_wbf.mu; wb_armed also read atomically) */
    int wb_armed;
    int64_t wb_due;
    struct ConnObject *wb_next;
    PyObject *mod;          /* borrowed: the type keeps the module alive */
    PyObject *weakreflist;
} ConnObject;

static void skpy_conn_fail_closed(ConnObject *self, const char *why);
static void skpy_wbf_disarm(ConnObject *self);
static void skpy_conn_free_requests(ConnObject *self);

/* --------------------------------------------------------------- errors */

/* Contract: GIL held; raises ConnectionClosed (or the error of a close
 * in progress) and returns NULL. */
static PyObject *skpy_closed(ConnObject *self)
{
    skpy_state *st = skpy_get_state(self->mod);

    PyErr_SetString(st->ConnectionClosed,
                    "this connection was closed locally (close() or abort() "
                    "was called); open a new one");
    return NULL;
}

/* skpy_fail_as for a connection: woken by our own close() (SK_ERR while
 * closing) is ConnectionClosed.  GIL held.  Returns NULL. */
static PyObject *skpy_fail(ConnObject *self, int rc, const sk_err *err,
                           const char *op, PyObject *timeout, const char *what)
{
    if (self->closing && rc == SK_ERR)
        return skpy_closed(self); /* woken by our own close, not the peer */
    return skpy_fail_as(self->mod, rc, err, op, timeout, what);
}


/* The timeout of a request (Conn_request), whose reply is now owed: say so,
 * and what a peer that dropped a request means.  behind: a late reply was
 * dropped while this request waited, so replies arrive behind their
 * requests: OutOfStep.  GIL held.  Returns NULL. */
static PyObject *skpy_request_timeout(ConnObject *self, PyObject *timeout,
                                      int behind)
{
    skpy_state *st = skpy_get_state(self->mod);
    unsigned long long owed = (unsigned long long)self->c.owed;
    PyObject *py_msg, *py_exc = NULL, *py_owed = NULL;

    if (behind)
        py_msg = PyUnicode_FromFormat(
            "request: timed out after %R s, and meanwhile a reply arrived that "
            "was dropped as the late reply of an earlier timed-out request: "
            "replies are arriving behind their requests (%llu owed now). Either "
            "the peer answers slower than the timeout, or it dropped a request "
            "without answering it, and then no reply on this plain connection "
            "can be matched to its request any more: reconnect, or use "
            "sk.Framing(correlation=True) on both peers (replies matched by id)",
            timeout ? timeout : Py_None, owed);
    else
        py_msg = PyUnicode_FromFormat(
            "request: timed out after %R s; the request was sent, so its reply "
            "is owed (%llu owed now) and will be dropped when it arrives, never "
            "taken for a later request's. If the peer only answers late, later "
            "requests stay matched; if it dropped the request without answering "
            "(some servers drop a frame they refuse), the next reply will be "
            "dropped in its place and later requests raise sk.OutOfStep: then "
            "reconnect, or use sk.Framing(correlation=True) on both peers",
            timeout ? timeout : Py_None, owed);
    if (py_msg == NULL)
        goto error;
    py_exc = PyObject_CallOneArg(behind ? st->OutOfStep : st->Timeout, py_msg);
    if (py_exc == NULL)
        goto error;
    py_owed = PyLong_FromUnsignedLongLong(owed);
    if (py_owed == NULL || PyObject_SetAttrString(py_exc, "owed", py_owed) < 0)
        goto error;
    PyErr_SetObject((PyObject *)Py_TYPE(py_exc), py_exc);
error:
    Py_XDECREF(py_msg);
    Py_XDECREF(py_exc);
    Py_XDECREF(py_owed);
    return NULL;
}

/* ----------------------------------------------------------------- locks */

/* Acquire lk before deadline, waiting without the GIL in slices so that
 * signal handlers run (Ctrl-C) while another thread holds it.  Returns 1
 * acquired, 0 timed out, -1 exception set.  GIL held on entry and exit. */
static int skpy_lock(pthread_mutex_t *lk, int64_t deadline)
{
    struct timespec ts;
    int64_t until;
    int r, got = 1;

    if (pthread_mutex_trylock(lk) == 0)
        goto done;
    for (;;) {
        until = sk_now_ns() + (int64_t)SKPY_SLICE_MS * 1000000;
        if (deadline != SK_NO_DEADLINE && deadline < until)
            until = deadline;
        ts.tv_sec = until / 1000000000;
        ts.tv_nsec = until % 1000000000;
        Py_BEGIN_ALLOW_THREADS
        r = pthread_mutex_clocklock(lk, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        if (r == 0)
            break;
        if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline) {
            got = 0;
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            got = -1;
            break;
        }
    }
done:
    return got;
}

/* Take a lock for op or raise: ConnectionClosed if the connection is
 * closed (before or while waiting), Timeout if another thread holds it past
 * the deadline.  Returns 0 (locked, open) or -1.  GIL held. */
static int skpy_lock_or_raise(ConnObject *self, pthread_mutex_t *lk,
                              int64_t deadline, const char *op,
                              PyObject *timeout)
{
    int r, rc = -1;

    if (self->fd < 0) {
        skpy_closed(self);
        goto done;
    }
    if (lk == &self->c.recv_mu && self->worker) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: a receive worker owns this connection's receive "
                     "side; frames go to its handler (stop it first)", op);
        goto done;
    }
    r = skpy_lock(lk, deadline);
    if (r == 1) {
        if (self->fd >= 0) {
            rc = 0;
        } else {
            pthread_mutex_unlock(lk);
            skpy_closed(self);
        }
    } else if (r == 0) {
        skpy_timeout(self->mod, op, timeout,
                     "another thread held the connection for the whole "
                     "time; nothing was sent or received");
    }
done:
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

/* Contract: GIL held; a new object, or NULL with an exception set. */
static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ConnObject *self;

    (void)args;
    (void)kwds;
    self = (ConnObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto error;
    self->fd = -1;
    self->c.fd = -1;
    sk_worker_init(&self->w, &self->c);
    self->mod = skpy_module_of(type);
    if (self->mod == NULL)
        Py_CLEAR(self);
error:
    return (PyObject *)self;
}

PyDoc_STRVAR(Conn_doc,
"Connection(fd, header_size=4, byteorder='big', max_frame=16777216, control=False, correlation=False)\n"
"--\n\n"
"A framed connection over a connected, non-blocking TCP socket fd, which it\n"
"owns from now on.  Base class of pysockkit.Connection; use sk.connect()\n"
"or Listener.accept() rather than this.\n");

/* Contract: GIL held; takes ownership of fd on success. */
static int Conn_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    ConnObject *self = (ConnObject *)op;
    PyObject *py_rest = NULL;
    sk_framing f;
    sk_err err;
    int fd, rc = -1;

    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "this Connection is already initialised");
        goto done;
    }
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "Connection() needs the fd first");
        goto done;
    }
    fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(args, 0));
    if (fd == -1 && PyErr_Occurred())
        goto done;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be a file descriptor >= 0");
        goto done;
    }
    py_rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (py_rest == NULL || skpy_framing_args(self->mod, py_rest, kwds, &f) < 0)
        goto done;
    if (sk_conn_init(&self->c, fd, &f, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto done;
    }
    self->initialized = 1;
    self->fd = fd;
    rc = 0;
done:
    Py_XDECREF(py_rest);
    return rc;
}

/* Leave the hub, if registered (synchronous: the hub stops touching c).
 * Returns the hub it was registered with, or NULL. */
static sk_hub *Conn_leave_hub(ConnObject *self)
{
    sk_hub *hub = self->c.hub;

    if (hub != NULL)
        sk_hub_remove(hub, &self->c);
    return hub;
}

/* Contract: GIL held.  close() could not hand the last `lost` bytes that
 * write-behind send() calls had queued to the kernel within
 * SKPY_WB_CLOSE_NS: raise sk.Timeout saying so; returns NULL. */
static PyObject *Conn_wb_lost(ConnObject *self, size_t lost)
{
    PyErr_Format(skpy_get_state(self->mod)->Timeout,
                 "close: the peer took none of the last %zu bytes that "
                 "send() had queued (write_behind) within 1 s; the "
                 "connection is closed and they were discarded (the peer "
                 "may see a torn last frame); call flush(timeout) before "
                 "close() to wait longer", lost);
    return NULL;
}

/* Close the fd once both locks are ours.  Threads blocked in send/recv are
 * woken first with shutdown(SHUT_RDWR) so close never waits on a peer.
 * abort: SO_LINGER {1,0} so the kernel sends RST.  The mutexes live on
 * until dealloc, for threads still queued on them.  GIL held. */
static PyObject *Conn_close_impl(ConnObject *self, int abort)
{
    int fd, r = SK_OK, outq = 0;
    size_t lost = 0;
    sk_hub *hub;
    sk_err err;

    if (self->fd < 0)
        goto done; /* closed already: idempotent */
    self->closing = 1;
    hub = Conn_leave_hub(self);
    if (pthread_mutex_trylock(&self->c.send_mu) != 0) {
        /* another thread is inside a call: wake it (it sees EOF/EPIPE) */
        shutdown(self->fd, SHUT_RDWR);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->c.send_mu);
        Py_END_ALLOW_THREADS
    }
    if (pthread_mutex_trylock(&self->c.recv_mu) != 0) {
        if (self->fd >= 0)
            shutdown(self->fd, SHUT_RDWR);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->c.recv_mu);
        Py_END_ALLOW_THREADS
    }
    skpy_wbf_disarm(self);
    fd = self->fd;
    if (fd >= 0) {
        if (abort) {
            r = sk_abort(fd, &err);
        } else {
            /* last chance for a torn frame's tail; never wait in close,
             * except (bounded) for frames a write-behind send() queued */
            if (sk_conn_flush(&self->c, 0, NULL, &err) == SK_TIMEOUT && self->wb) {
                int64_t until = sk_now_ns() + SKPY_WB_CLOSE_NS;
                Py_BEGIN_ALLOW_THREADS
                sk_conn_flush(&self->c, until, NULL, &err);
                Py_END_ALLOW_THREADS
                lost = sk_buf_len(&self->c.out);
            }
            /* Linux answers close() with RST - discarding whatever we sent
             * that the peer has not read yet - if unread bytes sit in our
             * receive queue (late replies, heartbeats).  Read them away so
             * close stays orderly. */
            sk_conn_drain(&self->c);
            if (hub != NULL && !SK_LOAD(&self->c.hb.dead) &&
                ioctl(fd, TIOCOUTQ, &outq) == 0 && outq > 0 &&
                shutdown(fd, SHUT_WR) == 0) {
                /* the peer's heartbeats keep coming while our last bytes
                 * are in flight: let the hub drain them until all is
                 * acknowledged (bounded), then close */
                sk_hub_linger(hub, fd, sk_now_ns() + 4 * self->c.hb.timeout_ns +
                                           1000000000LL);
            } else if (close(fd) != 0) {
                r = sk_err_sys(&err, "close", errno);
            }
        }
        self->fd = -1;
        self->c.fd = -1;
        self->closing = 0;
        sk_decoder_free(&self->c.dec);
        sk_buf_free(&self->c.out);
    }
    pthread_mutex_unlock(&self->c.recv_mu);
    pthread_mutex_unlock(&self->c.send_mu);
    /* a running worker sees the close and fails the pending requests;
     * without one nobody would */
    if (self->corr != NULL && !self->worker)
        skpy_conn_fail_closed(self, "this connection was closed locally "
                                    "(close() or abort()) before the reply");
done:
    return r != SK_OK && err.sys_errno != EINTR ? skpy_raise(self->mod, &err, NULL)
           : lost > 0                           ? Conn_wb_lost(self, lost)
                                                : Py_NewRef(Py_None);
}

PyDoc_STRVAR(Conn_close_doc,
"close()\n--\n\n"
"Orderly close: the kernel sends what is queued, then FIN.  Idempotent.\n"
"A thread blocked in send/recv on this connection is woken and gets\n"
"ConnectionClosed.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Conn_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Conn_close_impl((ConnObject *)op, 0);
}

PyDoc_STRVAR(Conn_abort_doc,
"abort()\n--\n\n"
"Abortive close: SO_LINGER {1, 0} then close, so the kernel sends RST,\n"
"discards unsent data and keeps no TIME_WAIT.  Idempotent.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Conn_abort(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Conn_close_impl((ConnObject *)op, 1);
}

/* The slots of pysockkit.Connection that Conn_adopt sets, as its __init__
 * does (skpy_state.str_slots, in this order). */
static const char *const skpy_slot_names[] = {"_framing", "_hb", "_duplex"};
_Static_assert(sizeof(skpy_slot_names) / sizeof(skpy_slot_names[0]) ==
                   sizeof(((skpy_state *)0)->str_slots) / sizeof(PyObject *),
               "one interned string per slot");

PyDoc_STRVAR(Conn_adopt_doc,
"_adopt(fd, framing) -> Connection\n--\n\n"
"What cls(fd, framing) makes for a connection without heartbeat or\n"
"keepalive, without running the Python __init__ (Listener.accept and\n"
"connect).  fd is owned from the call on: closed if this fails.");

/* Contract: GIL held; METH_CLASS, cls is pysockkit.Connection (or a
 * subclass): a new instance over fd with the sk.Framing `framing`, its
 * slots _framing/_hb/_duplex set as its __init__ sets them.  fd belongs to
 * the new object, or is closed when this fails (NULL, exception set).
 * Measured (callgrind, bench/contenders.py shortconn server): the Python
 * __init__ path costs ~5,900 instructions per accepted connection, ~3,500
 * of them the Python frame and super() around Conn_init. */
static PyObject *Conn_adopt(PyObject *cls, PyObject *const *args,
                            Py_ssize_t nargs)
{
    PyObject *mod, *py_self = NULL, *py_ret = NULL;
    ConnObject *self;
    skpy_state *st;
    int fd = -1;
    sk_framing f;
    sk_err err;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_adopt(fd, framing)");
        goto done;
    }
    if (skpy_fd_arg(args[0], &fd) < 0)
        goto done; /* fd is -1: nothing to close */
    mod = skpy_module_of((PyTypeObject *)cls);
    if (mod == NULL)
        goto done;
    st = skpy_get_state(mod);
    if (skpy_framing_of(mod, args[1], &f) < 0)
        goto done;
    py_self = Conn_new((PyTypeObject *)cls, NULL, NULL);
    if (py_self == NULL)
        goto done;
    self = (ConnObject *)py_self;
    if (sk_conn_init(&self->c, fd, &f, &err) != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto done;
    }
    self->initialized = 1;
    self->fd = fd;
    fd = -1; /* the object's now: closed by close() or its finaliser */
    if (PyObject_SetAttr(py_self, st->str_slots[0], args[1]) < 0 ||
        PyObject_SetAttr(py_self, st->str_slots[1], Py_None) < 0 ||
        PyObject_SetAttr(py_self, st->str_slots[2], Py_None) < 0) {
        PyObject *py_t, *py_e, *py_tb;

        PyErr_Fetch(&py_t, &py_e, &py_tb); /* the SetAttr error is the one raised */
        Py_XDECREF(Conn_close_impl(self, 0));
        PyErr_Restore(py_t, py_e, py_tb);
        goto done;
    }
    py_ret = py_self;
    py_self = NULL;
done:
    if (fd >= 0)
        close(fd);
    Py_XDECREF(py_self);
    return py_ret;
}

/* Contract: GIL held; warns about and closes a connection the program
 * forgot to close (like socket.socket does). */
static void Conn_finalize(PyObject *op)
{
    ConnObject *self = (ConnObject *)op;
    PyObject *py_type, *py_value, *py_tb;
    sk_err err;

    if (self->fd < 0)
        return;
    PyErr_Fetch(&py_type, &py_value, &py_tb);
    if (PyErr_ResourceWarning(op, 1, "unclosed pysockkit connection fd=%d",
                              self->fd) < 0) {
        if (PyErr_ExceptionMatches(PyExc_Warning))
            PyErr_WriteUnraisable(op);
        PyErr_Clear();
    }
    Conn_leave_hub(self);
    skpy_wbf_disarm(self);
    if (self->wb) /* frames send() queued: what the kernel takes at once */
        sk_conn_flush(&self->c, 0, NULL, &err);
    close(self->fd);
    self->fd = -1;
    self->c.fd = -1;
    PyErr_Restore(py_type, py_value, py_tb);
}

/* Contract: GIL held; frees the object and drops its type's reference. */
static void Conn_dealloc(PyObject *op)
{
    ConnObject *self = (ConnObject *)op;
    PyTypeObject *tp = Py_TYPE(op);

    if (PyObject_CallFinalizerFromDealloc(op) < 0)
        return; /* resurrected */
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs(op);
    if (self->initialized) {
        Conn_leave_hub(self);
        skpy_wbf_disarm(self);
        if (self->fd >= 0)
            close(self->fd);
        self->fd = -1;
        sk_conn_release(&self->c);
    }
    if (self->corr != NULL)
        skpy_conn_free_requests(self);
    Py_CLEAR(self->req_err_type);
    Py_CLEAR(self->req_err_args);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ----------------------------------------------------------------- send */

/* ------------------------------------------------ write-behind flusher */

/* The process's write-behind flusher: one thread that writes the queue of a
 * write-behind connection whose owner did not within SKPY_WB_AGE_NS (the
 * caller went quiet without flush/recv/close).  Like the hub it is a
 * process resource, started on first use and living until exit; a forked
 * child starts without it and forgets the parent's list.  It only trylocks
 * a connection's send lock and never waits on a socket: a queue the kernel
 * does not take at once is left for the next call on the connection.
 * Lock order: skpy_wbf.mu, then (trylock only) a send lock; close() holds
 * the send lock and then takes skpy_wbf.mu to unlink, which cannot
 * deadlock because the flusher never waits for a send lock. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;           /* the thread runs */
    int64_t wake_at;       /* when it wakes by itself (INT64_MAX: never) */
    ConnObject *head;
} skpy_wbf = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, INT64_MAX, NULL};
static pthread_once_t skpy_wbf_once = PTHREAD_ONCE_INIT;

/* Contract: fork child, one thread: the flusher is gone; unlink its list
 * (the connections are copies that may be used again and re-armed). */
static void skpy_wbf_forget(void)
{
    ConnObject *c = skpy_wbf.head, *next;

    while (c != NULL) {
        next = c->wb_next;
        c->wb_next = NULL;
        c->wb_armed = 0;
        c = next;
    }
    pthread_mutex_init(&skpy_wbf.mu, NULL);
    sk_cond_init_monotonic(&skpy_wbf.cv, NULL);
    skpy_wbf.head = NULL;
    skpy_wbf.started = 0;
    skpy_wbf.wake_at = INT64_MAX;
}

static void skpy_wbf_init(void)
{
    sk_cond_init_monotonic(&skpy_wbf.cv, NULL);
    pthread_atfork(NULL, NULL, skpy_wbf_forget);
}

/* Unlink self from the list.  Caller holds skpy_wbf.mu. */
static void skpy_wbf_unlink(ConnObject *self)
{
    ConnObject **pp = &skpy_wbf.head;

    while (*pp != NULL && *pp != self)
        pp = &(*pp)->wb_next;
    if (*pp == self)
        *pp = self->wb_next;
    self->wb_next = NULL;
    SK_STORE(&self->wb_armed, 0);
}

/* The flusher thread.  No GIL, no Python: every signal blocked
 * (sk_thread_spawn); 1 us timer slack so that 50 us means 50 us. */
static void *skpy_wbf_main(void *arg)
{
    struct timespec ts;
    ConnObject **pp, *c;
    sk_err err;
    int64_t now, next;

    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    pthread_mutex_lock(&skpy_wbf.mu);
    for (;;) {
        now = sk_now_ns();
        next = INT64_MAX;
        pp = &skpy_wbf.head;
        while ((c = *pp) != NULL) {
            if (c->wb_due <= now) {
                if (pthread_mutex_trylock(&c->c.send_mu) == 0) {
                    if (c->fd >= 0)
                        sk_conn_flush(&c->c, 0, NULL, &err);
                    pthread_mutex_unlock(&c->c.send_mu);
                    /* done, or the kernel is full: the next call goes on */
                    *pp = c->wb_next;
                    c->wb_next = NULL;
                    SK_STORE(&c->wb_armed, 0);
                    continue;
                }
                /* its owner is in a call (maybe blocked in a long send):
                 * look again in a while, not in a busy loop */
                c->wb_due = now + SKPY_WB_RETRY_NS;
            }
            if (c->wb_due < next)
                next = c->wb_due;
            pp = &c->wb_next;
        }
        skpy_wbf.wake_at = next;
        if (next == INT64_MAX) {
            pthread_cond_wait(&skpy_wbf.cv, &skpy_wbf.mu);
        } else {
            ts.tv_sec = next / 1000000000;
            ts.tv_nsec = next % 1000000000;
            pthread_cond_timedwait(&skpy_wbf.cv, &skpy_wbf.mu, &ts);
        }
    }
    return NULL;
}

/* Ask the flusher to write self's queue at `due` unless someone does it
 * first (caller holds the send lock; GIL not needed).  Without a flusher
 * thread (it could not start) the queue goes with the next call. */
static void skpy_wbf_arm(ConnObject *self, int64_t due)
{
    pthread_t t;
    int wake = 0;

    pthread_once(&skpy_wbf_once, skpy_wbf_init);
    pthread_mutex_lock(&skpy_wbf.mu);
    if (!skpy_wbf.started && sk_thread_spawn(&t, 256 * 1024, skpy_wbf_main, NULL, NULL) == SK_OK) {
        pthread_detach(t);
        skpy_wbf.started = 1;
    }
    if (!self->wb_armed) {
        self->wb_next = skpy_wbf.head;
        skpy_wbf.head = self;
        self->wb_due = due;
        SK_STORE(&self->wb_armed, 1);
    } else if (due < self->wb_due) {
        self->wb_due = due;
    }
    if (self->wb_due < skpy_wbf.wake_at) {
        skpy_wbf.wake_at = self->wb_due;
        wake = 1;
    }
    pthread_mutex_unlock(&skpy_wbf.mu);
    if (wake)
        pthread_cond_signal(&skpy_wbf.cv);
}

/* Take self off the flusher's list (synchronous: afterwards the flusher no
 * longer touches it).  Any thread; may hold self's send lock. */
static void skpy_wbf_disarm(ConnObject *self)
{
    if (!SK_LOAD(&self->wb_armed))
        return;
    pthread_mutex_lock(&skpy_wbf.mu);
    skpy_wbf_unlink(self);
    pthread_mutex_unlock(&skpy_wbf.mu);
}

/* Write the whole queue c->out with the send lock held: one try without
 * waiting with the GIL, then without the GIL until deadline.  SK_OK once it
 * is empty (and then a write-behind has nothing pending); otherwise what
 * was not written stays queued, in order.  GIL held on entry and exit. */
static int Conn_flush_locked(ConnObject *self, int64_t deadline, sk_err *err)
{
    int rc = sk_conn_flush(&self->c, 0, NULL, err);

    if (rc == SK_TIMEOUT &&
        (deadline == SK_NO_DEADLINE || sk_now_ns() < deadline)) {
        Py_BEGIN_ALLOW_THREADS
        sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
        rc = sk_conn_flush(&self->c, deadline, &intr, err);
        Py_END_ALLOW_THREADS
    }
    if (rc == SK_OK)
        SK_STORE(&self->wb_pending, 0);
    return rc;
}

/* send() with write-behind (send lock held, GIL held): queue one frame in
 * c->out without a syscall.  First, if the frame would take a non-empty
 * queue over SKPY_WB_SIZE, the queue is written (waiting until deadline; on
 * SK_TIMEOUT/SK_INTR/SK_ERR the frame is not queued, *done stays 0 and the
 * queue keeps its order, so the stream is never torn).  Then, if the queue
 * reached SKPY_WB_SIZE or its oldest frame is SKPY_WB_AGE_NS old, it is
 * written without waiting; what the kernel does not take stays queued.
 * *done = 1 once the frame is queued (an error after that, a reset found by
 * that write, is raised with sent=1).  Who frees: the queue is c->out. */
static int Conn_send_behind(ConnObject *self, const sk_iov *iov,
                            int64_t deadline, size_t *done, sk_err *err)
{
    sk_conn *c = &self->c;
    size_t flen = c->framing.header_size + (iov->has_id ? SK_ID_LEN : 0) + iov->len;
    int64_t now;
    int rc = SK_OK;

    if (sk_buf_len(&c->out) > 0 && sk_buf_len(&c->out) + flen > SKPY_WB_SIZE) {
        rc = Conn_flush_locked(self, deadline, err);
        if (rc != SK_OK)
            goto done;
    }
    now = sk_now_ns();
    if (sk_buf_len(&c->out) == 0)
        self->wb_first = now;
    rc = sk_conn_enqueue(c, iov, err);
    if (rc != SK_OK)
        goto done;
    *done = 1;
    SK_STORE(&self->wb_pending, 1);
    if (sk_buf_len(&c->out) >= SKPY_WB_SIZE || now - self->wb_first >= SKPY_WB_AGE_NS) {
        rc = sk_conn_flush(c, 0, NULL, err);
        if (rc == SK_TIMEOUT)
            rc = SK_OK; /* the kernel's buffer is full: the rest waits */
        if (sk_buf_len(&c->out) == 0)
            SK_STORE(&self->wb_pending, 0);
        else
            self->wb_first = now;
    }
    /* if the caller goes quiet now, the flusher writes the queue */
    if (rc == SK_OK && sk_buf_len(&c->out) > 0 && !SK_LOAD(&self->wb_armed))
        skpy_wbf_arm(self, self->wb_first + SKPY_WB_AGE_NS);
done:
    return rc;
}

/* recv()/recv_many() on a write-behind connection: write what send()
 * queued before reading, waiting until deadline.  The send lock is only
 * tried (lock order is send, then receive, and a thread blocked in a long
 * send must not hold up a receive): a thread holding it is sending, and its
 * send writes the queue.  0, or -1 with the exception set (nothing was
 * received; the queue keeps its order).  GIL held, no lock held. */
static int Conn_wb_flush_for_recv(ConnObject *self, int64_t deadline,
                                  const char *op, PyObject *timeout)
{
    sk_err err;
    int rc, ret = 0;

    if (!SK_LOAD(&self->wb_pending) || pthread_mutex_trylock(&self->c.send_mu) != 0)
        return 0;
    if (self->fd >= 0) {
        rc = Conn_flush_locked(self, deadline, &err);
        if (rc != SK_OK) {
            skpy_fail(self, rc, &err, op, timeout,
                      "nothing was received: the frames queued by send() "
                      "(write_behind) are written first, and the rest of them "
                      "stays queued, in order");
            ret = -1;
        }
    }
    pthread_mutex_unlock(&self->c.send_mu);
    return ret;
}

/* Send n frames with the send lock held: one non-blocking try with the GIL
 * for small batches, then the rest without the GIL until deadline.
 * *done accumulates frames taken.  GIL held on entry and exit. */
static int Conn_send_locked(ConnObject *self, const sk_iov *iov, size_t n,
                            size_t nbytes, int64_t deadline, size_t *done,
                            sk_err *err)
{
    size_t d = 0;
    int rc;

    /* with a receive worker running, the GIL is released for the send too:
     * the worker needs it to hand replies over while we write */
    if (nbytes <= SKPY_INLINE_SEND && sk_buf_len(&self->c.out) == 0 &&
        !self->worker) {
        rc = sk_conn_send(&self->c, iov, n, 0, NULL, &d, err);
        *done += d;
        if (rc != SK_TIMEOUT)
            goto done;
        iov += d;
        n -= d;
        if (n == 0 && sk_buf_len(&self->c.out) == 0) {
            rc = SK_OK;
            goto done;
        }
        /* a zero timeout: what is left is not sent, a torn tail is kept
         * (rc stays SK_TIMEOUT) */
        if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline)
            goto done;
    }
    d = 0;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    if (n > 0)
        rc = sk_conn_send(&self->c, iov, n, deadline, &intr, &d, err);
    else
        rc = sk_conn_flush(&self->c, deadline, &intr, err);
    Py_END_ALLOW_THREADS
    *done += d;
done:
    return rc;
}

/* Attach `sent` (frames taken) to the pending exception: ours (Timeout,
 * ...) or the one a signal handler raised (KeyboardInterrupt), so that a
 * program that survives Ctrl-C knows which frames went (the torn one is
 * counted: its tail is kept).  GIL held. */
static void skpy_note_sent(size_t done)
{
    PyObject *py_type, *py_value, *py_tb, *py_n;

    PyErr_Fetch(&py_type, &py_value, &py_tb);
    PyErr_NormalizeException(&py_type, &py_value, &py_tb);
    if (py_value != NULL && PyExceptionInstance_Check(py_value)) {
        py_n = PyLong_FromSize_t(done);
        if (py_n != NULL) {
            if (PyObject_SetAttrString(py_value, "sent", py_n) < 0)
                PyErr_Clear();
            Py_DECREF(py_n);
        } else {
            PyErr_Clear();
        }
    }
    PyErr_Restore(py_type, py_value, py_tb);
}

static const char SEND_KEPT[] =
    "frames not yet begun were not sent; the tail of a frame already begun "
    "is kept and sent first by the next send or flush, so the stream stays "
    "intact";

PyDoc_STRVAR(Conn_send_doc,
"send(data, timeout=None, id=None)\n--\n\n"
"Send one frame holding the bytes-like object data.  With id (a\n"
"connection made with correlation ids), send a correlated frame.\n\n"
"Blocks while the peer's window and our send buffer are full; raises\n"
"sk.Timeout after timeout seconds (nothing is torn: see PROTOCOL.md).\n\n"
"    >>> conn.send(b'hello')\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_send(PyObject *op, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"data", "timeout", "id"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[3], *py_ret = NULL;
    Py_buffer view;
    int64_t deadline;
    size_t done = 0;
    sk_iov iov = {NULL, 0, 0, 0};
    sk_err err;
    int rc;

    if (skpy_args("send", args, nargs, kwnames, names, 1, 3, a) < 0)
        goto out;
    if (a[2] != NULL && a[2] != Py_None) {
        iov.id = PyLong_AsUnsignedLongLong(a[2]);
        if (iov.id == (uint64_t)-1 && PyErr_Occurred())
            goto out;
        iov.has_id = 1;
    }
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "send", a[1]) < 0) {
        skpy_note_sent(0);
        goto error_view;
    }
    iov.base = view.buf;
    iov.len = (size_t)view.len;
    if (self->wb && !self->worker && iov.len <= SKPY_WB_DIRECT)
        rc = Conn_send_behind(self, &iov, deadline, &done, &err);
    else
        rc = Conn_send_locked(self, &iov, 1, iov.len, deadline, &done, &err);
    if (rc != SK_OK) {
        skpy_fail(self, rc, &err, "send", a[1], SEND_KEPT);
        skpy_note_sent(done);
        goto error_lock;
    }
    py_ret = Py_NewRef(Py_None);
error_lock:
    pthread_mutex_unlock(&self->c.send_mu);
error_view:
    PyBuffer_Release(&view);
out:
    return py_ret;
}

PyDoc_STRVAR(Conn_send_many_doc,
"send_many(frames, timeout=None) -> int\n--\n\n"
"Send every bytes-like object of the iterable frames as its own frame\n"
"(an (id, bytes-like) tuple is a correlated frame with that id),\n"
"coalescing small ones so that thousands go out per syscall.  Returns the\n"
"number of frames sent.  On Timeout, the exception's `sent` attribute says\n"
"how many frames were taken; the others were not sent.\n\n"
"    >>> conn.send_many([b'a', b'b', b'c'])\n    3\n");

/* Contract: GIL held.  send_many is all or nothing: FrameTooLarge (and
 * sent = 0) for the first payload of seq over max_frame, before any batch
 * goes out; TypeError for a malformed item.  scratch: a Py_buffer to use.
 * 0, or -1 with an exception set. */
static int skpy_send_many_check(ConnObject *self, PyObject *py_seq,
                                Py_ssize_t total, Py_buffer *scratch)
{
    PyObject *py_it;
    Py_ssize_t i, len;
    sk_err err;
    int rc = -1;

    for (i = 0; i < total; i++) {
        py_it = PySequence_Fast_GET_ITEM(py_seq, i);
        if (PyTuple_CheckExact(py_it)) { /* (id, payload): a correlated frame */
            if (PyTuple_GET_SIZE(py_it) != 2) {
                PyErr_SetString(PyExc_TypeError,
                                "send_many() items are bytes-like or "
                                "(id, bytes-like) tuples");
                goto error;
            }
            py_it = PyTuple_GET_ITEM(py_it, 1);
        }
        if (PyBytes_CheckExact(py_it)) {
            len = PyBytes_GET_SIZE(py_it);
        } else {
            if (PyObject_GetBuffer(py_it, scratch, PyBUF_SIMPLE) < 0)
                goto error;
            len = scratch->len;
            PyBuffer_Release(scratch);
        }
        if ((uint64_t)len > self->c.framing.max_frame) {
            sk_err_set(&err, SK_E_TOO_LARGE,
                       "frame %zd is %zd bytes, over max_frame %llu; split it "
                       "or raise Framing.max_frame on both peers; no frame "
                       "was sent",
                       i, len, (unsigned long long)self->c.framing.max_frame);
            err.detail = (uint64_t)i;
            skpy_raise(self->mod, &err, NULL);
            skpy_note_sent(0);
            goto error;
        }
    }
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held.  Fill iov[0..cnt) and views[0..cnt) from items
 * base.. of seq and add their bytes to *nbytes; the views hold the
 * payloads alive (the caller releases them after the send).  0, or -1
 * with an exception set and no view held. */
static int skpy_send_many_views(PyObject *py_seq, Py_ssize_t base,
                                Py_ssize_t cnt, sk_iov *iov, Py_buffer *views,
                                size_t *nbytes)
{
    PyObject *py_it;
    Py_ssize_t k, i;
    int rc = 0;

    for (k = 0; k < cnt && rc == 0; k++) {
        /* the sequence may be a list another thread mutates while the GIL
         * is released: the views hold references, so each payload stays
         * alive until it is released */
        py_it = PySequence_Fast_GET_ITEM(py_seq, base + k);
        iov[k].has_id = 0;
        if (PyTuple_CheckExact(py_it)) {
            iov[k].id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(py_it, 0));
            if (iov[k].id == (uint64_t)-1 && PyErr_Occurred()) {
                rc = -1;
                break;
            }
            iov[k].has_id = 1;
            py_it = PyTuple_GET_ITEM(py_it, 1);
        }
        if (PyObject_GetBuffer(py_it, &views[k], PyBUF_SIMPLE) < 0) {
            rc = -1;
            break;
        }
        iov[k].base = views[k].buf;
        iov[k].len = (size_t)views[k].len;
        *nbytes += iov[k].len;
    }
    if (rc < 0)
        for (i = 0; i < k; i++)
            PyBuffer_Release(&views[i]);
    return rc;
}

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_send_many(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"frames", "timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[2], *py_seq = NULL, *py_ret = NULL;
    Py_buffer *views = NULL;
    sk_iov *iov = NULL;
    int64_t deadline;
    Py_ssize_t total, base, nb, k;
    size_t done = 0, nbytes;
    int locked = 0, rc = SK_OK;
    sk_err err;

    if (skpy_args("send_many", args, nargs, kwnames, names, 1, 2, a) < 0)
        goto out;
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    py_seq = PySequence_Fast(a[0], "send_many() needs an iterable of "
                                   "bytes-like objects");
    if (py_seq == NULL)
        goto out;
    total = PySequence_Fast_GET_SIZE(py_seq);
    nb = total < SKPY_BATCH ? total : SKPY_BATCH;
    views = PyMem_Calloc((size_t)(nb ? nb : 1), sizeof(Py_buffer));
    iov = PyMem_Calloc((size_t)(nb ? nb : 1), sizeof(sk_iov));
    if (views == NULL || iov == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    /* all or nothing: refuse an oversized frame before sending any batch */
    if (skpy_send_many_check(self, py_seq, total, &views[0]) < 0)
        goto error;
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "send_many",
                           a[1]) < 0) {
        skpy_note_sent(0);
        goto error;
    }
    locked = 1;
    for (base = 0; base < total; base += nb) {
        Py_ssize_t cnt = total - base < nb ? total - base : nb;
        size_t d = 0;
        nbytes = 0;
        if (skpy_send_many_views(py_seq, base, cnt, iov, views, &nbytes) < 0) {
            skpy_note_sent(done);
            goto error;
        }
        rc = Conn_send_locked(self, iov, (size_t)cnt, nbytes, deadline, &d,
                              &err);
        done += d;
        for (k = 0; k < cnt; k++)
            PyBuffer_Release(&views[k]);
        if (rc != SK_OK) {
            if (rc == SK_ERR && err.code == SK_E_TOO_LARGE)
                err.detail += (uint64_t)base;
            skpy_fail(self, rc, &err, "send_many", a[1], SEND_KEPT);
            skpy_note_sent(done);
            goto error;
        }
    }
    py_ret = PyLong_FromSize_t(done);
error:
    if (locked)
        pthread_mutex_unlock(&self->c.send_mu);
    PyMem_Free(views);
    PyMem_Free(iov);
    Py_XDECREF(py_seq);
out:
    return py_ret;
}

PyDoc_STRVAR(Conn_flush_doc,
"flush(timeout=None)\n--\n\n"
"Finish sending the tail of a frame whose send timed out or was\n"
"interrupted, and the frames a write_behind send() queued.  A no-op when\n"
"nothing is pending.\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_flush(PyObject *op, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[1], *py_ret = NULL;
    int64_t deadline;
    sk_err err;
    int rc;

    if (skpy_args("flush", args, nargs, kwnames, names, 0, 1, a) < 0)
        goto out;
    if (skpy_deadline(a[0], &deadline) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "flush", a[0]) < 0)
        goto out;
    Py_BEGIN_ALLOW_THREADS
    sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
    rc = sk_conn_flush(&self->c, deadline, &intr, &err);
    Py_END_ALLOW_THREADS
    if (rc != SK_OK) {
        skpy_fail(self, rc, &err, "flush", a[0],
                  "the rest of the pending tail is still kept");
        goto error;
    }
    py_ret = Py_NewRef(Py_None);
error:
    pthread_mutex_unlock(&self->c.send_mu);
out:
    return py_ret;
}

/* ----------------------------------------------------------------- recv */

/* Receive one frame as bytes, with the receive lock held.  Buffered frames
 * come back without a syscall; otherwise waits without the GIL.  *rc gets
 * the core result.  GIL held on entry and exit. */
static PyObject *Conn_recv_locked(ConnObject *self, int64_t deadline, int *rc,
                                  sk_err *err)
{
    sk_frame fr;

    *rc = sk_conn_recv_buffered(&self->c, &fr, err);
    if (*rc == SK_NEED_DATA) {
        Py_BEGIN_ALLOW_THREADS
        sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
        *rc = sk_conn_recv(&self->c, deadline, &intr, &fr, err);
        Py_END_ALLOW_THREADS
    }
    return *rc == SK_OK ? skpy_frame_obj(&fr) : NULL;
}

static const char RECV_KEPT[] =
    "no byte was lost: a partial frame stays buffered and the next recv "
    "completes it";

PyDoc_STRVAR(Conn_recv_doc,
"recv(timeout=None) -> bytes\n--\n\n"
"Receive one frame.  Raises sk.Timeout after timeout seconds without a\n"
"complete frame (nothing is lost), sk.ConnectionClosed after the peer's\n"
"last frame, sk.IncompleteFrame if the stream ended inside a frame and\n"
"sk.FrameTooLarge if the peer announced more than max_frame.\n\n"
"    >>> conn.recv(timeout=1.0)\n    b'hello'\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_recv(PyObject *op, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[1], *py_ret = NULL;
    int64_t deadline;
    sk_err err;
    int rc;

    if (skpy_args("recv", args, nargs, kwnames, names, 0, 1, a) < 0)
        goto out;
    if (skpy_deadline(a[0], &deadline) < 0)
        goto out;
    if (self->wb && Conn_wb_flush_for_recv(self, deadline, "recv", a[0]) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.recv_mu, deadline, "recv", a[0]) < 0)
        goto out;
    py_ret = Conn_recv_locked(self, deadline, &rc, &err);
    if (py_ret == NULL && rc != SK_OK)
        skpy_fail(self, rc, &err, "recv", a[0], RECV_KEPT);
    pthread_mutex_unlock(&self->c.recv_mu);
out:
    return py_ret;
}

PyDoc_STRVAR(Conn_recv_many_doc,
"recv_many(max_frames=4096, timeout=None) -> list[bytes]\n--\n\n"
"Wait for at least one frame, then return every frame already received\n"
"(up to max_frames) without waiting further.  An error after the first\n"
"frame is raised by the next call, so no frame is lost.\n\n"
"    >>> conn.recv_many(max_frames=100)\n    [b'a', b'b', b'c']\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_recv_many(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"max_frames", "timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[2], *py_list = NULL, *py_item;
    Py_ssize_t maxn = SKPY_RECV_MANY_DEFAULT, n;
    int64_t deadline;
    sk_frame fr;
    sk_err err;
    int rc;

    if (skpy_args("recv_many", args, nargs, kwnames, names, 0, 2, a) < 0)
        goto out;
    if (a[0] != NULL && a[0] != Py_None) {
        maxn = PyLong_AsSsize_t(a[0]);
        if (maxn == -1 && PyErr_Occurred())
            goto out;
        if (maxn < 1) {
            PyErr_SetString(PyExc_ValueError, "max_frames must be >= 1");
            goto out;
        }
    }
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    if (self->wb && Conn_wb_flush_for_recv(self, deadline, "recv_many", a[1]) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.recv_mu, deadline, "recv_many",
                           a[1]) < 0)
        goto out;
    py_item = Conn_recv_locked(self, deadline, &rc, &err);
    if (py_item == NULL) {
        if (rc != SK_OK)
            skpy_fail(self, rc, &err, "recv_many", a[1], RECV_KEPT);
        goto error;
    }
    py_list = PyList_New(1);
    if (py_list == NULL) {
        Py_DECREF(py_item);
        goto error;
    }
    PyList_SET_ITEM(py_list, 0, py_item);
    for (n = 1; n < maxn; n++) {
        rc = sk_conn_recv_nowait(&self->c, &fr, &err);
        if (rc != SK_OK)
            break; /* an error stays sticky: the next call raises it */
        py_item = skpy_frame_obj(&fr);
        if (py_item == NULL || PyList_Append(py_list, py_item) < 0) {
            Py_XDECREF(py_item);
            Py_CLEAR(py_list);
            goto error;
        }
        Py_DECREF(py_item);
    }
error:
    pthread_mutex_unlock(&self->c.recv_mu);
out:
    return py_list;
}

PyDoc_STRVAR(Conn_request_doc,
"request(data, timeout=None) -> bytes\n--\n\n"
"Synchronous mode: send one frame and wait for the next frame as its\n"
"reply, within one timeout for the whole exchange.  If the reply does not\n"
"come in time, sk.Timeout is raised and the connection owes that reply:\n"
"when it arrives it is discarded (counted in late_replies_dropped), so it\n"
"is never taken for the answer to a later request or recv.  A peer that\n"
"drops a request without answering puts every later reply one place\n"
"behind: a request that times out after a late reply was dropped during\n"
"its wait raises sk.OutOfStep (a Timeout); reconnect, or use\n"
"Framing(correlation=True).  Concurrent requests from several threads\n"
"are serialised.\n\n"
"    >>> conn.request(b'ping', timeout=1.0)\n    b'pong'\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_request(PyObject *op, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"data", "timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[2], *py_ret = NULL;
    Py_buffer view;
    int64_t deadline;
    size_t done = 0;
    sk_iov iov = {NULL, 0, 0, 0};
    uint64_t discarded0;
    sk_err err;
    int rc;

    if (skpy_args("request", args, nargs, kwnames, names, 1, 2, a) < 0)
        goto out;
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "request",
                           a[1]) < 0)
        goto error_view;
    if (skpy_lock_or_raise(self, &self->c.recv_mu, deadline, "request",
                           a[1]) < 0)
        goto error_send;
    iov.base = view.buf;
    iov.len = (size_t)view.len;
    rc = Conn_send_locked(self, &iov, 1, iov.len, deadline, &done, &err);
    if (rc != SK_OK) {
        if (done > 0) /* the request went (or will go) out: owe its reply */
            self->c.owed++;
        skpy_fail(self, rc, &err, "request", a[1],
                  "the request was not sent completely; if it was begun it "
                  "will be completed and its reply discarded");
        goto error_recv;
    }
    discarded0 = self->c.discarded;
    py_ret = Conn_recv_locked(self, deadline, &rc, &err);
    if (py_ret == NULL && rc != SK_OK) {
        if (rc == SK_TIMEOUT || rc == SK_INTR)
            self->c.owed++;
        if (rc == SK_TIMEOUT)
            skpy_request_timeout(self, a[1], self->c.discarded > discarded0);
        else
            skpy_fail(self, rc, &err, "request", a[1], "");
    }
error_recv:
    pthread_mutex_unlock(&self->c.recv_mu);
error_send:
    pthread_mutex_unlock(&self->c.send_mu);
error_view:
    PyBuffer_Release(&view);
out:
    return py_ret;
}

PyDoc_STRVAR(Conn_shutdown_doc,
"_shutdown(how, timeout=None)\n--\n\n"
"how: socket.SHUT_RD, SHUT_WR or SHUT_RDWR.  SHUT_WR first flushes a\n"
"pending frame tail, then sends FIN.\n");

/* Contract: GIL held on entry and exit, released while the call may
 * block; a new reference, or NULL with an exception set. */
static PyObject *Conn_shutdown(PyObject *op, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"how", "timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[2], *py_ret = NULL;
    int64_t deadline;
    sk_err err;
    int how, rc = SK_OK;

    if (skpy_args("_shutdown", args, nargs, kwnames, names, 1, 2, a) < 0)
        goto out;
    how = PyLong_AsLong(a[0]) ;
    if (how == -1 && PyErr_Occurred())
        goto out;
    if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) {
        PyErr_SetString(PyExc_ValueError, "how must be SHUT_RD, SHUT_WR or SHUT_RDWR");
        goto out;
    }
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "shutdown", a[1]) < 0)
        goto out;
    if (how != SHUT_RD) {
        Py_BEGIN_ALLOW_THREADS
        sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
        rc = sk_conn_shutdown_write(&self->c, deadline, &intr, &err);
        Py_END_ALLOW_THREADS
        if (rc != SK_OK) {
            skpy_fail(self, rc, &err, "shutdown", a[1],
                      "the pending frame tail is still kept; FIN not sent");
            goto error;
        }
    }
    if (how != SHUT_WR && shutdown(self->fd, SHUT_RD) != 0) {
        skpy_oserror("shutdown");
        goto error;
    }
    py_ret = Py_NewRef(Py_None);
error:
    pthread_mutex_unlock(&self->c.send_mu);
out:
    return py_ret;
}

/* ------------------------------------------------------- receive worker */

/* Every receive worker of the process, so that they can all be stopped and
 * waited for before the interpreter finalises (a detached thread that
 * takes the GIL after Py_Finalize would be killed inside CPython).  The
 * count is process-wide because threads are; it is touched only under
 * skpy_workers_mu and never dereferences a Conn. */
static pthread_mutex_t skpy_workers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t skpy_workers_cv = PTHREAD_COND_INITIALIZER;
static int skpy_workers_live;      /* guarded by skpy_workers_mu */
static int skpy_workers_finalising; /* atomic: no new worker, all stop */

typedef struct {
    ConnObject *self;   /* strong reference, dropped by the thread */
    PyObject *dispatch; /* strong reference: dispatch(list | exception) */
} skpy_worker_arg;

/* Drop the references a list of promises holds on their futures.  GIL
 * held; no lock held (a dealloc may run Python code). */
static void skpy_release_list(sk_plist *l)
{
    sk_promise *p, *next;

    for (p = l->head; p != NULL; p = next) {
        next = p->next;
        Py_DECREF(skpy_future_of(p));
    }
    sk_plist_init(l);
}

/* Drop the table's references to settled futures.  GIL held. */
static void skpy_drain_retired(ConnObject *self)
{
    sk_plist l;

    sk_plist_init(&l);
    pthread_mutex_lock(&self->corr->mu);
    sk_plist_splice(&l, &self->w.retired);
    pthread_mutex_unlock(&self->corr->mu);
    skpy_release_list(&l);
}

/* Fail every pending request with py_exc (later request_async calls raise
 * one like it) and drop the table's references.  GIL held; runs callbacks. */
static void skpy_conn_fail_pending(ConnObject *self, PyObject *py_exc)
{
    PyObject *py_args, *py_fut;
    sk_plist all;
    sk_promise *p, *next;

    py_args = PyObject_GetAttrString(py_exc, "args");
    if (py_args != NULL && !PyTuple_Check(py_args))
        Py_CLEAR(py_args);
    if (py_args == NULL) {
        PyErr_Clear();
        py_args = PyTuple_New(0);
    }
    sk_plist_init(&all);
    pthread_mutex_lock(&self->corr->mu);
    if (self->req_err_type == NULL && py_args != NULL) {
        self->req_err_type = Py_NewRef((PyObject *)Py_TYPE(py_exc));
        self->req_err_args = py_args;
        py_args = NULL;
    }
    sk_corr_take_all(self->corr, &all);
    pthread_mutex_unlock(&self->corr->mu);
    Py_XDECREF(py_args);
    for (p = all.head; p != NULL; p = next) {
        next = p->next;
        py_fut = skpy_future_of(p);
        skpy_future_fail(py_fut, py_exc);
        Py_DECREF(py_fut);
    }
    skpy_drain_retired(self);
}

/* Fail the pending requests with ConnectionClosed(why).  GIL held; keeps
 * a pending exception; self may be in dealloc (so it is never handed to
 * Python). */
static void skpy_conn_fail_closed(ConnObject *self, const char *why)
{
    skpy_state *st = skpy_get_state(self->mod);
    PyObject *py_t, *py_v, *py_tb, *py_exc, *py_cls;
    size_t pending;

    pthread_mutex_lock(&self->corr->mu);
    pending = self->corr->pending;
    pthread_mutex_unlock(&self->corr->mu);
    if (pending == 0)
        return;
    PyErr_Fetch(&py_t, &py_v, &py_tb);
    /* at interpreter exit the module state may be cleared already */
    py_cls = st->ConnectionClosed ? st->ConnectionClosed : PyExc_ConnectionError;
    py_exc = PyObject_CallFunction(py_cls, "s", why);
    if (py_exc == NULL)
        PyErr_WriteUnraisable(NULL);
    else
        skpy_conn_fail_pending(self, py_exc);
    Py_XDECREF(py_exc);
    PyErr_Restore(py_t, py_v, py_tb);
}

/* Contract: GIL held, from dealloc (no worker runs: it holds a reference).
 * Fails what is pending, frees the table. */
static void skpy_conn_free_requests(ConnObject *self)
{
    skpy_conn_fail_closed(self, "the connection object was deallocated "
                                "before the reply");
    skpy_drain_retired(self);
    sk_corr_free(self->corr);
    PyMem_RawFree(self->corr);
    self->corr = NULL;
    sk_worker_close_wake(&self->w);
}

/* Raise the error that ended the receive side, fresh (no traceback kept
 * between calls).  GIL held; the caller holds no lock.  NULL. */
static PyObject *skpy_raise_req_error(PyObject *py_type, PyObject *py_args)
{
    PyObject *py_exc = PyObject_Call(py_type, py_args, NULL);

    if (py_exc != NULL) {
        PyErr_SetObject(py_type, py_exc);
        Py_DECREF(py_exc);
    }
    return NULL;
}

/* Wake the worker if it sleeps: it writes the queue, then sleeps again.
 * GIL held (the worker closes efd only with it). */
static void skpy_worker_kick(ConnObject *self)
{
    sk_worker_kick(&self->w, 0);
}

/* The receive worker thread: the core's loop (core/worker.h
 * sk_worker_run) waits, decodes and settles replies and expired requests
 * without the GIL; the callbacks below take the GIL only when there is
 * Python work: frames that are not replies go to dispatch(list) in arrival
 * order, interleaved with the callbacks of settled futures that have
 * some; dispatch(exc) gets the error that ended the receive side; and the
 * table's references to settled futures are dropped (when idle, or past
 * SK_WORKER_RETIRED_MAX). */
typedef struct {
    skpy_worker_arg *arg;
    PyGILState_STATE g;
    PyObject *py_exc;                /* the error that ends the worker */
    PyObject *msg[SK_WORKER_BATCH];  /* frame i as a message, or NULL */
} skpy_worker_ctx;

/* Contract: the worker thread, no lock held, no GIL needed. */
static int skpy_worker_stop(void *vctx)
{
    skpy_worker_ctx *x = vctx;

    return SK_LOAD(&x->arg->self->worker_stop) ||
           SK_LOAD(&skpy_workers_finalising);
}

/* Contract: the worker thread, recv_mu held, GIL not held on entry and
 * held on return (skpy_worker_run releases it).  The batch's messages as
 * Python objects, before the frames' views go; the fatal error as an
 * exception. */
static void skpy_worker_take(void *vctx, sk_worker_batch *b)
{
    skpy_worker_ctx *x = vctx;
    ConnObject *self = x->arg->self;
    int i;

    x->g = PyGILState_Ensure();
    x->py_exc = NULL;
    for (i = 0; i < b->n; i++) {
        x->msg[i] = NULL;
        if (b->ismsg[i] && x->py_exc == NULL) {
            x->msg[i] = skpy_frame_obj(&b->fr[i]);
            if (x->msg[i] == NULL) /* out of memory: end with it */
                x->py_exc = skpy_take_exception();
        }
    }
    if (b->fatal) {
        /* the receive side failed for good: hand over the error */
        if (self->closing || self->fd < 0)
            skpy_closed(self);
        else
            skpy_raise(self->mod, &b->err, NULL);
        Py_XDECREF(x->py_exc);
        x->py_exc = skpy_take_exception();
    }
}

/* Contract: GIL held.  Call dispatch(py_arg); an error is reported as
 * unraisable. */
static void skpy_worker_dispatch(skpy_worker_ctx *x, PyObject *py_arg)
{
    PyObject *py_r = PyObject_CallOneArg(x->arg->dispatch, py_arg);

    if (py_r == NULL)
        PyErr_WriteUnraisable(x->arg->dispatch);
    Py_XDECREF(py_r);
}

/* Contract: GIL held, no lock held.  In arrival order: runs of messages
 * to dispatch, settled futures to notify; then the expired ones. */
static void skpy_worker_deliver(skpy_worker_ctx *x, sk_worker_batch *b)
{
    PyObject *py_list = NULL, *py_fut;
    sk_promise *p, *next;
    int i;

    for (i = 0; i <= b->n; i++) {
        if (i < b->n && x->msg[i] != NULL) {
            if (py_list == NULL && (py_list = PyList_New(0)) == NULL)
                PyErr_WriteUnraisable(x->arg->dispatch);
            if (py_list != NULL && PyList_Append(py_list, x->msg[i]) < 0)
                PyErr_WriteUnraisable(x->arg->dispatch);
            Py_CLEAR(x->msg[i]);
            continue;
        }
        if (py_list != NULL && (i == b->n || b->note[i] != NULL)) {
            skpy_worker_dispatch(x, py_list);
            Py_CLEAR(py_list);
        }
        if (i < b->n && b->note[i] != NULL) {
            py_fut = skpy_future_of(b->note[i]);
            skpy_future_notify(py_fut);
            Py_DECREF(py_fut);
        }
    }
    for (p = b->notex.head; p != NULL; p = next) {
        next = p->next;
        py_fut = skpy_future_of(p);
        skpy_future_notify(py_fut);
        Py_DECREF(py_fut);
    }
}

/* Contract: the worker thread, GIL held on entry (skpy_worker_take) and
 * released on return; no lock held.  Delivers the batch; on the last pass
 * (an error, or a stop) hands the error to dispatch, writes what is
 * queued if the socket takes it, and drops the worker's references (self
 * may be freed: the core touches neither it nor b again).  Returns 1 on
 * the last pass. */
static int skpy_worker_run(void *vctx, sk_worker_batch *b)
{
    skpy_worker_ctx *x = vctx;
    skpy_worker_arg *arg = x->arg;
    ConnObject *self = arg->self;
    PyGILState_STATE g = x->g;
    int done = x->py_exc != NULL || b->stop;

    skpy_worker_deliver(x, b);
    skpy_drain_retired(self);
    if (done) {
        if (x->py_exc != NULL) {
            skpy_worker_dispatch(x, x->py_exc);
            Py_CLEAR(x->py_exc);
        }
        self->worker = 0;
        /* stopped: write what is queued if the socket takes it; the rest
         * goes with the next send or flush */
        sk_worker_flush_now(&self->w, 0);
        skpy_drain_retired(self);
        sk_worker_close_wake(&self->w);
        SK_STORE(&self->w.wphase, SK_W_BUSY);
        Py_DECREF(arg->dispatch);
        Py_DECREF(self);
        PyMem_RawFree(arg);
    } else {
        SK_STORE(&self->w.wphase, SK_W_BUSY);
    }
    PyGILState_Release(g);
    return done;
}

static const sk_worker_ops skpy_worker_ops = {
    skpy_worker_stop,
    skpy_worker_take,
    skpy_worker_run,
};

/* Contract: the thread start routine (no GIL); owns arg.  The scratch
 * (about 70 KiB) is on the thread's stack, as before the loop moved into
 * the core. */
static void *skpy_worker_main(void *vp)
{
    skpy_worker_ctx x;
    sk_worker_batch b;
    skpy_worker_arg *arg = vp;

    x.arg = arg;
    sk_worker_run(&arg->self->w, &skpy_worker_ops, &x, &b);
    /* past this point the thread never touches Python or the Conn */
    pthread_mutex_lock(&skpy_workers_mu);
    skpy_workers_live--;
    pthread_cond_broadcast(&skpy_workers_cv);
    pthread_mutex_unlock(&skpy_workers_mu);
    return NULL;
}

PyDoc_STRVAR(Conn_start_worker_doc,
"_start_worker(dispatch)\n--\n\n"
"Start the receive worker thread and the request table (see\n"
"pysockkit._duplex).  From then on recv/recv_many/request raise: the\n"
"worker owns the receive side.  dispatch(list) gets frames that are not\n"
"replies, dispatch(exc) the error that ended the receive side.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Conn_start_worker(PyObject *op, PyObject *dispatch)
{
    ConnObject *self = (ConnObject *)op;
    skpy_worker_arg *arg;
    pthread_attr_t attr;
    PyObject *py_res = NULL;
    sk_err err;
    int r;

    if (self->fd < 0) {
        skpy_closed(self);
        goto error;
    }
    if (self->worker) {
        PyErr_SetString(PyExc_RuntimeError, "a receive worker already runs");
        goto error;
    }
    if (SK_LOAD(&skpy_workers_finalising)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the interpreter is shutting down: no new receive "
                        "worker can start");
        goto error;
    }
    if (self->corr == NULL) {
        self->corr = PyMem_RawCalloc(1, sizeof(*self->corr));
        if (self->corr == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        if ((self->c.framing.flags & SK_FRAMING_IDS
                 ? sk_corr_init(self->corr, &err)
                 : sk_corr_init_in_order(self->corr, &err)) != SK_OK) {
            PyMem_RawFree(self->corr);
            self->corr = NULL;
            skpy_raise(self->mod, &err, NULL);
            goto error;
        }
    }
    self->w.t = self->corr;
    if (sk_worker_open_wake(&self->w, &err) != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto error;
    }
    arg = PyMem_RawMalloc(sizeof(*arg));
    if (arg == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    arg->self = (ConnObject *)Py_NewRef(op);
    arg->dispatch = Py_NewRef(dispatch);
    self->worker = 1;
    SK_STORE(&self->worker_stop, 0);
    SK_STORE(&self->w.wphase, SK_W_BUSY);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&skpy_workers_mu);
    r = pthread_create(&self->worker_thread, &attr, skpy_worker_main, arg);
    if (r == 0)
        skpy_workers_live++;
    pthread_mutex_unlock(&skpy_workers_mu);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        self->worker = 0;
        Py_DECREF(arg->self);
        Py_DECREF(arg->dispatch);
        PyMem_RawFree(arg);
        errno = r;
        skpy_oserror("pthread_create");
        goto error;
    }
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

/* Contract: GIL held.  The worker ends within its slice (at once if it
 * sleeps: the eventfd wakes it). */
static PyObject *Conn_stop_worker(PyObject *op, PyObject *Py_UNUSED(ig))
{
    ConnObject *self = (ConnObject *)op;

    SK_STORE(&self->worker_stop, 1);
    sk_worker_kick(&self->w, 1);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(skpy_stop_workers_doc,
"stop_workers(timeout) -> int\n--\n\n"
"Stop every receive worker of the process and wait up to timeout seconds\n"
"for their threads to end; no worker can start afterwards.  Returns how\n"
"many are still running.  Registered with atexit by pysockkit._duplex.\n");

/* Contract: GIL held on entry, released while waiting (each worker needs
 * it to finish its last dispatch).  Idempotent. */
static PyObject *skpy_stop_workers(PyObject *mod, PyObject *py_timeout)
{
    double timeout;
    int64_t deadline;
    struct timespec ts;
    int live;
    PyObject *py_res = NULL;

    (void)mod;
    timeout = PyFloat_AsDouble(py_timeout);
    if (timeout == -1.0 && PyErr_Occurred())
        goto error;
    SK_STORE(&skpy_workers_finalising, 1);
    deadline = sk_now_ns() + (int64_t)(timeout > 0 ? timeout * 1e9 : 0);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&skpy_workers_mu);
    while (skpy_workers_live > 0 && sk_now_ns() < deadline) {
        /* the condvar runs on CLOCK_REALTIME; wake at least every 10 ms
         * and re-check the monotonic deadline */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&skpy_workers_cv, &skpy_workers_mu, &ts);
    }
    live = skpy_workers_live;
    pthread_mutex_unlock(&skpy_workers_mu);
    Py_END_ALLOW_THREADS
    py_res = PyLong_FromLong(live);
error:
    return py_res;
}

/* ------------------------------------------------------------- requests */

PyDoc_STRVAR(Conn_request_async_doc,
"_request_async(data, timeout=None) -> Future\n--\n\n"
"Register a future for the request's reply, then queue the request\n"
"(write-behind: the receive worker writes the queue; requests over 64 KiB,\n"
"or with no worker running, are sent at once).  With correlation ids the\n"
"reply is the frame with the request's id; on plain framing it is the\n"
"frame in the request's place in line (replies come in order).  The\n"
"future fails with sk.Timeout once timeout seconds pass without the reply\n"
"(sk.OutOfStep on plain framing when a late reply was dropped meanwhile).\n"
"A request that finds 256 KiB queued first writes the queue out, waiting\n"
"up to timeout (a peer that does not read blocks it).  Raises, and sends\n"
"nothing, if it cannot be queued or sent in time, or if the receive side\n"
"already ended.\n");

static const char REQUEST_KEPT[] =
    "this request was not sent (its future is dropped); requests queued "
    "before it stay queued, in order";
static const char REQUEST_BEGUN[] =
    "this request was begun and will be completed; its future is dropped "
    "and its reply will be dropped when it comes";

/* Contract: GIL held, send lock held; the GIL is released only to wait
 * (backpressure, or a direct send).  Put request iov on the wire for
 * request_async: small requests into the write-behind queue that the
 * receive worker writes (after writing the queue out first once it holds
 * SKPY_WB_MAX, so memory stays bounded; at once, without waiting, while
 * the worker runs Python code and may not be back soon), larger ones (or
 * without a worker) sent directly.  *done: frames taken by a direct send.
 * SK_OK or a core result with err set. */
static int skpy_request_write(ConnObject *self, const sk_iov *iov,
                              int64_t deadline, size_t *done, sk_err *err)
{
    sk_err e2;
    int rc = SK_OK;

    if (self->worker && iov->len <= SKPY_WB_DIRECT && !self->w.wb_failed) {
        if (sk_conn_queued(&self->c) >= SKPY_WB_MAX) {
            Py_BEGIN_ALLOW_THREADS
            sk_intr intr = {skpy_check_signals, &_save, skpy_slice_ms()};
            rc = sk_conn_flush(&self->c, deadline, &intr, err);
            Py_END_ALLOW_THREADS
        }
        if (rc == SK_OK)
            rc = sk_conn_enqueue(&self->c, iov, err);
        /* an error of the early write stays for the next send to raise */
        if (rc == SK_OK && SK_LOAD(&self->w.wphase) == SK_W_PY)
            sk_conn_flush(&self->c, 0, NULL, &e2);
    } else {
        rc = Conn_send_locked(self, iov, 1, iov->len, deadline, done, err);
    }
    return rc;
}

/* Contract: GIL held; released only to wait for the send lock or, under
 * backpressure, to write the queue.  The request is registered in the
 * table under the send lock, so ids are handed out in the order requests
 * go on the wire (what in-order tables, for plain framing, match by).
 * Returns a new reference. */
static PyObject *Conn_request_async(PyObject *op, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"data", "timeout"};
    ConnObject *self = (ConnObject *)op;
    PyObject *a[2], *py_fut = NULL, *py_ret = NULL, *py_et = NULL,
             *py_ea = NULL;
    sk_plist retired;
    sk_promise *p = NULL;
    Py_buffer view;
    int64_t deadline;
    size_t done = 0;
    sk_iov iov;
    sk_err err;
    int rc = SK_OK, locked = 0, registered = 0, taken;

    if (skpy_args("request_async", args, nargs, kwnames, names, 1, 2, a) < 0)
        goto out;
    if (skpy_deadline(a[1], &deadline) < 0)
        goto out;
    if (self->fd < 0) {
        skpy_closed(self);
        goto out;
    }
    if (self->corr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "request_async: no receive worker "
                        "(start_receiver() starts one)");
        goto out;
    }
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        goto out;
    sk_plist_init(&retired);
    py_fut = skpy_future_new(self->mod);
    if (py_fut == NULL)
        goto error;
    p = skpy_future_promise(py_fut);
    if (skpy_lock_or_raise(self, &self->c.send_mu, deadline, "request_async",
                           a[1]) < 0)
        goto error;
    locked = 1;
    pthread_mutex_lock(&self->corr->mu);
    if (self->req_err_type != NULL) {
        py_et = Py_NewRef(self->req_err_type);
        py_ea = Py_NewRef(self->req_err_args);
        rc = SK_ERR;
    } else {
        rc = sk_corr_add(self->corr, p, deadline, &err);
        registered = rc == SK_OK;
    }
    sk_plist_splice(&retired, &self->w.retired);
    pthread_mutex_unlock(&self->corr->mu);
    if (registered)
        Py_INCREF(py_fut); /* the table's reference */
    if (py_et != NULL) {
        skpy_raise_req_error(py_et, py_ea);
        goto error;
    }
    if (rc != SK_OK) {
        skpy_raise(self->mod, &err, NULL);
        goto error;
    }

    iov.base = view.buf;
    iov.len = (size_t)view.len;
    iov.id = p->id;
    iov.has_id = !self->corr->in_order;
    rc = skpy_request_write(self, &iov, deadline, &done, &err);
    if (rc != SK_OK) {
        skpy_fail(self, rc, &err, "request_async", a[1],
                  done > 0 ? REQUEST_BEGUN : REQUEST_KEPT);
        goto error;
    }
    py_ret = py_fut;
    py_fut = NULL;
error:
    if (py_ret == NULL && registered) {
        /* under the send lock still: no later request took an id */
        pthread_mutex_lock(&self->corr->mu);
        if (done > 0) /* it goes out whole: its reply will come, drop it */
            taken = sk_corr_abandon(self->corr, p);
        else
            taken = sk_corr_unsend(self->corr, p);
        pthread_mutex_unlock(&self->corr->mu);
        if (taken) /* else the worker settled it (expired): its ref */
            Py_DECREF(py_fut);
    }
    if (locked)
        pthread_mutex_unlock(&self->c.send_mu);
    if (py_ret != NULL && self->worker)
        skpy_worker_kick(self);
    skpy_release_list(&retired);
    Py_XDECREF(py_fut);
    Py_XDECREF(py_et);
    Py_XDECREF(py_ea);
    PyBuffer_Release(&view);
out:
    return py_ret;
}

PyDoc_STRVAR(Conn_fail_requests_doc,
"_fail_requests(exc)\n--\n\n"
"Fail every pending request future with exc; later _request_async calls\n"
"raise one like it.  Called by pysockkit._duplex when the receive side\n"
"ended.\n");

/* Contract: GIL held (the worker's dispatch calls it); runs the callbacks
 * of the failed futures. */
static PyObject *Conn_fail_requests(PyObject *op, PyObject *py_exc)
{
    ConnObject *self = (ConnObject *)op;
    PyObject *py_res = NULL;

    if (!PyExceptionInstance_Check(py_exc)) {
        PyErr_SetString(PyExc_TypeError, "_fail_requests() needs an exception");
    } else {
        if (self->corr != NULL)
            skpy_conn_fail_pending(self, py_exc);
        py_res = Py_NewRef(Py_None);
    }
    return py_res;
}

PyDoc_STRVAR(Conn_request_stats_doc,
"_request_stats() -> dict\n--\n\n"
"Counters of the request table: replies (remote_errors of them error\n"
"replies), unknown, late, timeouts,\n"
"pending (requests waiting for their reply), and next_id (the id the next\n"
"request gets; 1 before the table exists).\n");

/* Contract: GIL held; takes the table's lock for the copy only. */
static PyObject *Conn_request_stats(PyObject *op, PyObject *Py_UNUSED(ig))
{
    ConnObject *self = (ConnObject *)op;
    unsigned long long replies = 0, unknown = 0, late = 0, timeouts = 0;
    unsigned long long remote = 0, next_id = 1;
    size_t pending = 0;

    if (self->corr != NULL) {
        pthread_mutex_lock(&self->corr->mu);
        next_id = self->corr->next_id;
        replies = self->corr->replies;
        remote = self->corr->remote_errors;
        unknown = self->corr->unknown;
        late = self->corr->late;
        timeouts = self->corr->timeouts;
        pending = self->corr->pending;
        pthread_mutex_unlock(&self->corr->mu);
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:n,s:K}", "replies", replies,
                         "remote_errors", remote, "unknown", unknown, "late",
                         late, "timeouts", timeouts, "pending",
                         (Py_ssize_t)pending, "next_id", next_id);
}

PyDoc_STRVAR(Conn_skip_ids_doc,
"_skip_ids(next_id, /)\n--\n\n"
"Never give a request a correlation id below next_id: a reconnected\n"
"connection continues the ids of the one it replaces.  Needs the request\n"
"table (a receive worker started); a no-op on plain framing.\n");

/* Contract: GIL held; takes the table's lock; allocates nothing. */
static PyObject *Conn_skip_ids(PyObject *op, PyObject *py_next)
{
    ConnObject *self = (ConnObject *)op;
    unsigned long long next;
    PyObject *res = NULL;

    next = PyLong_AsUnsignedLongLong(py_next);
    if (next == (unsigned long long)-1 && PyErr_Occurred())
        goto error;
    if (self->corr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_skip_ids: no request table "
                        "(start_receiver() makes one)");
        goto error;
    }
    pthread_mutex_lock(&self->corr->mu);
    if (!self->corr->in_order && next > self->corr->next_id)
        self->corr->next_id = next;
    pthread_mutex_unlock(&self->corr->mu);
    res = Py_NewRef(Py_None);
error:
    return res;
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_worker(PyObject *op, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((ConnObject *)op)->worker);
}

/* ------------------------------------------------------------ heartbeat */

PyDoc_STRVAR(Conn_heartbeat_doc,
"_start_heartbeat(interval, timeout, initiator)\n--\n\n"
"Start heartbeats on this connection (made with control=True): the hub\n"
"thread sends a PING after `interval` seconds without sending, and declares\n"
"the peer dead after `timeout` seconds without receiving.\n");

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Conn_heartbeat(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs)
{
    ConnObject *self = (ConnObject *)op;
    double interval, timeout;
    PyObject *py_res = NULL;
    int initiator;
    sk_hub *hub;
    sk_err err;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "_start_heartbeat(interval, timeout, initiator)");
        goto error;
    }
    initiator = PyObject_IsTrue(args[2]);
    if (initiator < 0)
        goto error;
    interval = PyFloat_AsDouble(args[0]);
    if (interval == -1.0 && PyErr_Occurred())
        goto error;
    timeout = PyFloat_AsDouble(args[1]);
    if (timeout == -1.0 && PyErr_Occurred())
        goto error;
    if (!(interval > 0) || !(timeout > 0) || interval > 1e6 || timeout > 1e6) {
        PyErr_SetString(PyExc_ValueError,
                        "heartbeat interval and timeout must be > 0 s");
        goto error;
    }
    if (self->fd < 0) {
        skpy_closed(self);
        goto error;
    }
    if (self->c.hub != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "heartbeats are already on");
        goto error;
    }
    if (sk_conn_heartbeat(&self->c, (int64_t)(interval * 1e9),
                          (int64_t)(timeout * 1e9), initiator, &err) != SK_OK)
        goto core_error;
    hub = skpy_hub_get(self->mod);
    if (hub == NULL)
        goto error;
    if (sk_hub_add(hub, &self->c, &err) != SK_OK)
        goto core_error;
    py_res = Py_NewRef(Py_None);
    goto error;
core_error:
    skpy_raise(self->mod, &err, NULL);
error:
    return py_res;
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_latency(PyObject *op, void *closure)
{
    int64_t rtt = SK_LOAD(&((ConnObject *)op)->c.hb.rtt_ns);

    (void)closure;
    return rtt < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble((double)rtt / 1e9);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_hb_stats(PyObject *op, void *closure)
{
    const sk_hb *hb = &((ConnObject *)op)->c.hb;

    (void)closure;
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:O,s:d,s:d}",
        "pings_sent", (unsigned long long)hb->pings_sent,
        "pongs_sent", (unsigned long long)hb->pongs_sent,
        "pings_received", (unsigned long long)hb->pings_recv,
        "pongs_received", (unsigned long long)hb->pongs_recv,
        "unknown_control", (unsigned long long)hb->unknown_ctl,
        "peer_dead", SK_LOAD(&hb->dead) ? Py_True : Py_False,
        "idle_rx_s", (double)(sk_now_ns() - SK_LOAD(&hb->last_rx_ns)) / 1e9,
        "idle_tx_s", (double)(sk_now_ns() - SK_LOAD(&hb->last_tx_ns)) / 1e9);
}

/* Contract: GIL held; a new reference, or NULL with an exception set. */
static PyObject *Conn_fileno(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(((ConnObject *)op)->fd);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_closed(PyObject *op, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((ConnObject *)op)->fd < 0);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_owed(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((ConnObject *)op)->c.owed);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_discarded(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((ConnObject *)op)->c.discarded);
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_buffered(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(sk_decoder_buffered(&((ConnObject *)op)->c.dec));
}

/* Contract: GIL held; getter: a new reference, or NULL with an
 * exception set. */
static PyObject *Conn_get_unsent(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(sk_buf_len(&((ConnObject *)op)->c.out));
}

PyDoc_STRVAR(Conn_query_doc,
"_query(what) -> object\n--\n\n"
"A fact about this socket, read with the GIL held so that close() cannot\n"
"free the descriptor number in between: what is 'sockname', 'peername',\n"
"'state' (the TCP state number) or 'info' (the tcp_info dict).  Raises\n"
"sk.ConnectionClosed once close() ran.\n");

/* Contract: GIL held throughout, never released: close() changes self->fd
 * and closes it with the GIL held, so the number read here names this
 * connection's socket until the syscall returns (each call is one
 * non-blocking getsockopt/getsockname).  Returns a new reference. */
static PyObject *Conn_query(PyObject *op, PyObject *py_what)
{
    ConnObject *self = (ConnObject *)op;
    sk_tcp_info ti;
    PyObject *py_res = NULL;
    const char *what;
    sk_err err;
    int state;

    what = PyUnicode_AsUTF8(py_what);
    if (what == NULL)
        goto done;
    if (self->fd < 0) {
        skpy_closed(self);
    } else if (strcmp(what, "state") == 0) {
        if (sk_tcp_state(self->fd, &state, &err) != SK_OK)
            skpy_raise(self->mod, &err, NULL);
        else
            py_res = PyLong_FromLong(state);
    } else if (strcmp(what, "info") == 0) {
        if (sk_tcp_info_get(self->fd, &ti, &err) != SK_OK)
            skpy_raise(self->mod, &err, NULL);
        else
            py_res = skpy_tcp_info_dict(&ti);
    } else if (strcmp(what, "sockname") == 0 || strcmp(what, "peername") == 0) {
        py_res = skpy_fd_name(self->fd, what[0] == 'p');
    } else {
        PyErr_Format(PyExc_ValueError, "_query: unknown fact %R", py_what);
    }
done:
    return py_res;
}

static PyMethodDef Conn_methods[] = {
    {"_adopt", (PyCFunction)(void (*)(void))Conn_adopt,
     METH_CLASS | METH_FASTCALL, Conn_adopt_doc},
    {"send", (PyCFunction)(void (*)(void))Conn_send,
     METH_FASTCALL | METH_KEYWORDS, Conn_send_doc},
    {"send_many", (PyCFunction)(void (*)(void))Conn_send_many,
     METH_FASTCALL | METH_KEYWORDS, Conn_send_many_doc},
    {"flush", (PyCFunction)(void (*)(void))Conn_flush,
     METH_FASTCALL | METH_KEYWORDS, Conn_flush_doc},
    {"recv", (PyCFunction)(void (*)(void))Conn_recv,
     METH_FASTCALL | METH_KEYWORDS, Conn_recv_doc},
    {"recv_many", (PyCFunction)(void (*)(void))Conn_recv_many,
     METH_FASTCALL | METH_KEYWORDS, Conn_recv_many_doc},
    {"request", (PyCFunction)(void (*)(void))Conn_request,
     METH_FASTCALL | METH_KEYWORDS, Conn_request_doc},
    {"_shutdown", (PyCFunction)(void (*)(void))Conn_shutdown,
     METH_FASTCALL | METH_KEYWORDS, Conn_shutdown_doc},
    {"_start_heartbeat", (PyCFunction)(void (*)(void))Conn_heartbeat, METH_FASTCALL,
     Conn_heartbeat_doc},
    {"_start_worker", Conn_start_worker, METH_O, Conn_start_worker_doc},
    {"_stop_worker", Conn_stop_worker, METH_NOARGS,
     "_stop_worker()\n--\n\nAsk the receive worker to stop (within 50 ms)."},
    {"_request_async", (PyCFunction)(void (*)(void))Conn_request_async,
     METH_FASTCALL | METH_KEYWORDS, Conn_request_async_doc},
    {"_fail_requests", Conn_fail_requests, METH_O, Conn_fail_requests_doc},
    {"_request_stats", Conn_request_stats, METH_NOARGS, Conn_request_stats_doc},
    {"_skip_ids", Conn_skip_ids, METH_O, Conn_skip_ids_doc},
    {"close", Conn_close, METH_NOARGS, Conn_close_doc},
    {"abort", Conn_abort, METH_NOARGS, Conn_abort_doc},
    {"_query", Conn_query, METH_O, Conn_query_doc},
    {"fileno", Conn_fileno, METH_NOARGS,
     "fileno() -> int\n--\n\nThe socket's file descriptor (-1 once closed), for "
     "socket options\nand tools.  Do not read or write it yourself: a receive "
     "that waits makes it\nblocking (its deadline then lives in SO_RCVTIMEO) and "
     "every other call of\npysockkit passes MSG_DONTWAIT (docs/ARCHITECTURE.md, "
     "\"How a receive waits\").\n\n    >>> conn.fileno() >= 0\n    True\n"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Conn_get_write_behind(PyObject *op, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((ConnObject *)op)->wb);
}

/* Turning write-behind off writes the queue first (send's rules: until
 * the queue is empty, no deadline, Ctrl-C interrupts).  GIL held. */
static int Conn_set_write_behind(PyObject *op, PyObject *value, void *closure)
{
    ConnObject *self = (ConnObject *)op;
    sk_err err;
    int on, rc, ret = -1;

    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "write_behind cannot be deleted; set it to False");
        return -1;
    }
    on = PyObject_IsTrue(value);
    if (on < 0)
        return -1;
    if (skpy_lock_or_raise(self, &self->c.send_mu, SK_NO_DEADLINE, "write_behind", NULL) < 0)
        return -1;
    if (!on && self->wb) {
        rc = Conn_flush_locked(self, SK_NO_DEADLINE, &err);
        if (rc != SK_OK) {
            skpy_fail(self, rc, &err, "write_behind = False", NULL,
                      "write-behind stays on; the queue keeps its order");
            goto done;
        }
    }
    self->wb = on;
    ret = 0;
done:
    pthread_mutex_unlock(&self->c.send_mu);
    return ret;
}

static PyGetSetDef Conn_getset[] = {
    {"write_behind", Conn_get_write_behind, Conn_set_write_behind,
     "True: send() queues frames of up to 64 KiB and writes them in "
     "batches: at 64 KiB, about 50 us after the first (the flusher thread), "
     "and first thing in flush(), recv(), recv_many(), request(), "
     "send_many() and close().  Off by default; setting it to False writes "
     "the queue.  See docs/PROTOCOL.md, \"Write-behind\".\n\n"
     "    >>> conn.write_behind = True\n"
     "    >>> conn.send(b'event')   # queued\n"
     "    >>> conn.flush(timeout=1.0)\n", NULL},
    {"closed", Conn_get_closed, NULL, "True once close() or abort() ran.", NULL},
    {"pending_replies", Conn_get_owed, NULL,
     "Replies owed to timed-out requests, to be discarded on arrival.", NULL},
    {"late_replies_dropped", Conn_get_discarded, NULL,
     "Late replies discarded so far (see request()).", NULL},
    {"buffered", Conn_get_buffered, NULL,
     "Bytes received and not yet returned as frames.", NULL},
    {"unsent", Conn_get_unsent, NULL,
     "Bytes kept for the next send or flush: a torn frame's tail, and "
     "requests queued by request_async for the receive worker to write.",
     NULL},
    {"_worker_running", Conn_get_worker, NULL,
     "True while a receive worker owns the receive side.", NULL},
    {"latency", Conn_get_latency, NULL,
     "Last measured heartbeat round trip in seconds (None before the first "
     "PONG).", NULL},
    {"heartbeat_stats", Conn_get_hb_stats, NULL,
     "Heartbeat counters of this connection (a dict).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Conn_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ConnObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Conn_slots[] = {
    {Py_tp_doc, (void *)Conn_doc},
    {Py_tp_new, Conn_new},
    {Py_tp_init, Conn_init},
    {Py_tp_finalize, Conn_finalize},
    {Py_tp_dealloc, Conn_dealloc},
    {Py_tp_methods, Conn_methods},
    {Py_tp_getset, Conn_getset},
    {Py_tp_members, Conn_members},
    {0, NULL},
};

static PyType_Spec Conn_spec = {
    .name = "pysockkit._core.Connection",
    .basicsize = sizeof(ConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Conn_slots,
};

static PyMethodDef skpy_conn_functions[] = {
    {"stop_workers", skpy_stop_workers, METH_O, skpy_stop_workers_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot. */
int skpy_add_conn(PyObject *mod)
{
    skpy_state *st = skpy_get_state(mod);
    int rc = -1;

    for (size_t i = 0; i < sizeof(st->str_slots) / sizeof(st->str_slots[0]); i++) {
        st->str_slots[i] = PyUnicode_InternFromString(skpy_slot_names[i]);
        if (st->str_slots[i] == NULL)
            goto error;
    }
    if (skpy_framing_init(mod) < 0)
        goto error;
    st->ConnType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Conn_spec,
                                                            NULL);
    if (st->ConnType == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "Connection", (PyObject *)st->ConnType) < 0)
        goto error;
    if (PyModule_AddFunctions(mod, skpy_conn_functions) < 0)
        goto error;
    rc = 0;
error:
    return rc;
}
