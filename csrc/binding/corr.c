/*
 * corr.c - CorrelationBook: the correlation table of the core
 * (core/corr.h, the one the threaded duplex uses) for drivers that keep
 * their own futures and clocks, such as pysockkit.aio and
 * pysockkit.simplex.
 *
 *   CorrelationBook(in_order=False)
 *   .register(deadline=None) -> id          the next request id (1, 2, ...)
 *   .add(future) -> id                      register() and futures[id] = future
 *   .settle(reply_id) -> CORR_*             correlated: what the reply is
 *   .settle_next() -> (CORR_*, id)          in-order: the frame just read
 *   .expire(now) -> [(id, out_of_step)]     the requests past their deadline
 *   .next_deadline() -> float | None
 *   .forget(id), .unsend(id) -> bool        the caller gave up / never sent
 *   .is_pending(id), .is_expired(id) -> bool
 *   .pending, .owed, .in_order, .stats, .issued, .futures
 *
 * The book keeps ids; the caller maps them to its futures, in its own
 * dict or in the book's `futures` (a plain dict the book only writes in
 * add(): one Python statement less per request for aio).  Each
 * registered request is a core promise (promise.h) owned by the table
 * until it is taken out, then freed here; none ever waits.  Times are
 * seconds on the caller's monotonic clock (asyncio's loop.time()),
 * turned into nanoseconds.  The GIL is held throughout and serialises
 * every call; the table's mutex is taken too, as its contract asks.
 */
#include "util.h"

#include <math.h>

#include "areas.h"
#include "core/clock.h"
#include "core/corr.h"
#include "core/promise.h"

/* Promises a book keeps for reuse (a request's promise is freed when its
 * reply is matched and another is allocated for the next request: malloc
 * and free were ~1,000 instructions per aio request). */
#define BOOK_SPARE_MAX 256

/* A book is used only by Python code, with the GIL held: the GIL
 * serialises every access to its table, so the table's own mutex (which
 * the C duplex engine's threads take) is never locked here; that was two
 * lock/unlock pairs per request (~400 instructions, aio rr-64x100). */
typedef struct {
    PyObject_HEAD
    sk_corr t;
    int ready; /* sk_corr_init ran: the table (and its mutex) exists */
    sk_promise *spare; /* promises for reuse, linked through next */
    size_t nspare;
    PyObject *futures; /* dict id -> the caller's future (add()) */
    Py_ssize_t issued; /* registered and not unsent (the stats' requests) */
} BookObject;

/* Contract: GIL held; a pending promise (reused or new), or NULL (no
 * memory; nothing raised). */
static sk_promise *book_promise_new(BookObject *self)
{
    sk_promise *p = self->spare;

    if (p != NULL) {
        self->spare = p->next;
        self->nspare--;
    } else {
        p = PyMem_RawMalloc(sizeof(*p));
    }
    if (p != NULL)
        sk_promise_init(p);
    return p;
}

/* Contract: GIL held; p is out of the table: kept for reuse or freed. */
static void book_promise_free(BookObject *self, sk_promise *p)
{
    sk_promise_release(p);
    if (self->nspare < BOOK_SPARE_MAX) {
        p->next = self->spare;
        self->spare = p;
        self->nspare++;
    } else {
        PyMem_RawFree(p);
    }
}

/* Contract: GIL held; frees promises taken out of the table. */
static void book_free_list(BookObject *self, sk_plist *l)
{
    sk_promise *p, *next;

    for (p = l->head; p != NULL; p = next) {
        next = p->next;
        book_promise_free(self, p);
    }
    sk_plist_init(l);
}

/* Contract: GIL held.  0 if the book is usable, else -1 with
 * RuntimeError set (__init__ was not called or failed). */
static int book_check(BookObject *self)
{
    int rc = 0;

    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CorrelationBook is not initialised: call "
                        "CorrelationBook(in_order=...)");
        rc = -1;
    }
    return rc;
}

/* Contract: GIL held.  A request id argument (a positive int) into *id.
 * 0, or -1 with TypeError/ValueError set. */
static int book_id(PyObject *py_id, uint64_t *id)
{
    unsigned long long v;
    int rc = -1;

    if (!PyLong_Check(py_id)) {
        PyErr_Format(PyExc_TypeError, "a request id is an int, not %.100s",
                     Py_TYPE(py_id)->tp_name);
        goto error;
    }
    v = PyLong_AsUnsignedLongLong(py_id);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "a request id is an int in 0..2**64-1, not %R", py_id);
        goto error;
    }
    *id = v;
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held; 0, or -1 with an exception set. */
static int Book_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char kw_o[] = "in_order";
    static char *kwlist[] = {kw_o, NULL};
    BookObject *self = (BookObject *)op;
    int in_order = 0, rc = -1;
    sk_err err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:CorrelationBook", kwlist,
                                     &in_order))
        goto error;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CorrelationBook is initialised already: make a new "
                        "one");
        goto error;
    }
    if (self->futures == NULL && (self->futures = PyDict_New()) == NULL)
        goto error;
    if ((in_order ? sk_corr_init_in_order(&self->t, &err)
                  : sk_corr_init(&self->t, &err)) != SK_OK) {
        skpy_raise(skpy_module_of(Py_TYPE(op)), &err, NULL);
        goto error;
    }
    self->ready = 1;
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held; the garbage collector's walk: the futures (which
 * may lead back to the book through their callbacks) and the type. */
static int Book_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((BookObject *)op)->futures);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

/* Contract: GIL held; breaks a reference cycle through the futures (the
 * dict is dropped; the book's table is kept until dealloc). */
static int Book_clear(PyObject *op)
{
    Py_CLEAR(((BookObject *)op)->futures);
    return 0;
}

/* Contract: GIL held; frees every promise still registered. */
static void Book_dealloc(PyObject *op)
{
    BookObject *self = (BookObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    sk_plist all;

    PyObject_GC_UnTrack(op);
    Py_CLEAR(self->futures);
    if (self->ready) {
        sk_plist_init(&all);
        sk_corr_take_all(&self->t, &all);
        book_free_list(self, &all);
        sk_corr_free(&self->t);
        self->ready = 0;
    }
    while (self->spare != NULL) {
        sk_promise *p = self->spare;
        self->spare = p->next;
        PyMem_RawFree(p);
    }
    self->nspare = 0;
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* Contract: GIL held; the book is ready.  Registers the next request
 * (deadline in ns, SK_NO_DEADLINE: none) and counts it issued; its id as
 * a new int, or NULL with MemoryError (or the table's error) set; *pp:
 * its promise (owned by the table). */
static PyObject *book_add(BookObject *self, int64_t deadline, sk_promise **pp)
{
    PyObject *py_res = NULL;
    sk_promise *p;
    sk_err err;

    p = book_promise_new(self);
    if (p == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    if (sk_corr_add(&self->t, p, deadline, &err) != SK_OK) {
        book_promise_free(self, p);
        skpy_raise(skpy_module_of(Py_TYPE(self)), &err, NULL);
        goto error;
    }
    py_res = PyLong_FromUnsignedLongLong(p->id);
    if (py_res == NULL) {
        if (sk_corr_unsend(&self->t, p))
            book_promise_free(self, p);
        goto error;
    }
    self->issued++;
    *pp = p;
error:
    return py_res;
}

PyDoc_STRVAR(Book_register_doc,
"register(deadline=None) -> int\n--\n\n"
"Issue the next request id (1, 2, 3, ...) and remember the request as\n"
"pending until its reply is settled, it expires (deadline: seconds on\n"
"the caller's monotonic clock, None: never) or it is forgotten.  An\n"
"in-order book must be called in the order the requests go on the wire.\n\n"
"    >>> book = _core.CorrelationBook()\n"
"    >>> book.register(loop.time() + 2.0)\n"
"    1\n");

/* Contract: GIL held; a new int, or NULL (MemoryError, ValueError). */
static PyObject *Book_register(PyObject *op, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"deadline"};
    BookObject *self = (BookObject *)op;
    PyObject *a[1], *py_res = NULL;
    int64_t deadline = SK_NO_DEADLINE;
    sk_promise *p = NULL;

    a[0] = NULL;
    if (book_check(self) < 0)
        goto error;
    /* no arguments, the pipelined client's call: no parsing */
    if ((nargs != 0 || kwnames != NULL) &&
        skpy_args("register", args, nargs, kwnames, names, 0, 1, a) < 0)
        goto error;
    if (a[0] != NULL && a[0] != Py_None) {
        if (skpy_seconds_ns(a[0], "deadline", &deadline) < 0)
            goto error;
        if (deadline < 0) /* before the clock's zero: due at once */
            deadline = 0;
    }
    py_res = book_add(self, deadline, &p);
error:
    return py_res;
}

PyDoc_STRVAR(Book_add_doc,
"add(future) -> int\n--\n\n"
"register() with no deadline, and book.futures[id] = future: the hot path\n"
"of a pipelined client (one call instead of a call and a dict store).\n\n"
"    >>> rid = book.add(fut)\n"
"    >>> book.futures[rid] is fut\n"
"    True\n");

/* Contract: GIL held; a new int, or NULL (MemoryError, RuntimeError).
 * Nothing stays registered when the store fails. */
static PyObject *Book_add(PyObject *op, PyObject *fut)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    sk_promise *p = NULL;

    if (book_check(self) < 0)
        goto error;
    if (self->futures == NULL) { /* cleared by the collector */
        PyErr_SetString(PyExc_RuntimeError,
                        "CorrelationBook.add: the book is being collected "
                        "(its futures were cleared)");
        goto error;
    }
    py_res = book_add(self, SK_NO_DEADLINE, &p);
    if (py_res != NULL && PyDict_SetItem(self->futures, py_res, fut) < 0) {
        /* nothing stays registered: the id is given back */
        if (sk_corr_unsend(&self->t, p))
            book_promise_free(self, p);
        self->issued--;
        Py_CLEAR(py_res);
    }
error:
    return py_res;
}

/* Contract: GIL held.  Take the reply of id out of the table (counted) and
 * free its promise; returns the SK_CORR_* outcome. */
static int book_match(BookObject *self, uint64_t id)
{
    sk_promise *p;
    int outcome;

    p = sk_corr_match(&self->t, id, &outcome);
    if (p != NULL)
        book_promise_free(self, p);
    return outcome;
}

/* Contract: GIL held; see areas.h. */
int skpy_book_correlated(PyObject *mod, PyObject *book)
{
    skpy_state *st = skpy_get_state(mod);
    int rc = -1;

    if (st->BookType == NULL || !PyObject_TypeCheck(book, st->BookType)) {
        PyErr_Format(PyExc_TypeError, "resolve_replies: book must be a "
                     "CorrelationBook, not %.100s", Py_TYPE(book)->tp_name);
        goto error;
    }
    if (book_check((BookObject *)book) < 0)
        goto error;
    if (((BookObject *)book)->t.in_order) {
        PyErr_SetString(PyExc_ValueError,
                        "resolve_replies: an in-order book (plain framing) "
                        "matches replies by position, not by id");
        goto error;
    }
    rc = 0;
error:
    return rc;
}

/* Contract: GIL held; book checked by skpy_book_correlated; see areas.h. */
int skpy_book_settle(PyObject *book, uint64_t id)
{
    return book_match((BookObject *)book, id);
}

PyDoc_STRVAR(Book_settle_doc,
"settle(reply_id) -> int\n--\n\n"
"A correlated reply arrived with reply_id as on the wire (ID_REPLY and\n"
"ID_ERROR may be set).  Returns CORR_DELIVER (its request was pending: it\n"
"is settled now, hand the payload to request reply_id & ID_MASK),\n"
"CORR_LATE (the request timed out or was forgotten), CORR_DUPLICATE (it\n"
"was answered already) or CORR_STRAY (no request had that id); the last\n"
"three are dropped and counted in stats.\n\n"
"    >>> book.settle(rid | _core.ID_REPLY) == _core.CORR_DELIVER\n"
"    True\n");

/* Contract: GIL held; a new int or NULL. */
static PyObject *Book_settle(PyObject *op, PyObject *py_id)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    uint64_t id;

    if (book_check(self) < 0 || book_id(py_id, &id) < 0)
        goto error;
    if (self->t.in_order) {
        PyErr_SetString(PyExc_ValueError,
                        "settle(id) is for correlated books: an in-order "
                        "book (plain framing) matches replies by position, "
                        "call settle_next()");
        goto error;
    }
    py_res = PyLong_FromLong(book_match(self, id));
error:
    return py_res;
}

PyDoc_STRVAR(Book_settle_next_doc,
"settle_next() -> (int, int)\n--\n\n"
"In-order book (plain framing): a frame arrived.  (CORR_NONE, 0) when no\n"
"reply is owed (the frame is a message, not a reply); else it answers the\n"
"oldest unanswered request id: (CORR_DELIVER, id) if id is pending (it is\n"
"settled now), (CORR_LATE, id) if it timed out or was forgotten (drop the\n"
"frame; counted).\n\n"
"    >>> book = _core.CorrelationBook(in_order=True)\n"
"    >>> book.register()\n"
"    1\n"
"    >>> book.settle_next() == (_core.CORR_DELIVER, 1)\n"
"    True\n");

/* Contract: GIL held; a new tuple or NULL. */
static PyObject *Book_settle_next(PyObject *op, PyObject *Py_UNUSED(ig))
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    uint64_t id = 0;
    int outcome = SK_CORR_NONE, owed;

    if (book_check(self) < 0)
        goto error;
    if (!self->t.in_order) {
        PyErr_SetString(PyExc_ValueError,
                        "settle_next() is for in-order books (plain "
                        "framing): a correlated reply names its request, "
                        "call settle(reply_id)");
        goto error;
    }
    owed = sk_corr_owed(&self->t);
    if (owed)
        id = sk_corr_advance(&self->t);
    if (owed)
        outcome = book_match(self, id);
    py_res = Py_BuildValue("(iK)", outcome, (unsigned long long)id);
error:
    return py_res;
}

PyDoc_STRVAR(Book_expire_doc,
"expire(now) -> list[tuple[int, bool]]\n--\n\n"
"Take out every pending request whose deadline is <= now, earliest\n"
"first, as (id, out_of_step): its reply, if it comes, is dropped as late.\n"
"out_of_step (in-order books only): a late reply was dropped since the\n"
"request was registered, so replies arrive behind their requests (raise\n"
"sk.OutOfStep rather than sk.Timeout).  Counted in stats['timeouts'].\n\n"
"    >>> for rid, behind in book.expire(loop.time()): ...\n");

/* Contract: GIL held; a new list or NULL.  The expired promises are freed
 * (also on error). */
static PyObject *Book_expire(PyObject *op, PyObject *py_now)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL, *py_item;
    sk_plist out;
    sk_promise *p;
    Py_ssize_t i = 0;
    int64_t now;

    sk_plist_init(&out);
    if (book_check(self) < 0 || skpy_seconds_ns(py_now, "now", &now) < 0)
        goto error;
    sk_corr_expire(&self->t, now, &out);
    py_res = PyList_New((Py_ssize_t)out.n);
    if (py_res == NULL)
        goto error;
    for (p = out.head; p != NULL; p = p->next, i++) {
        py_item = Py_BuildValue("(KO)", (unsigned long long)p->id,
                                p->fail == SK_PF_OUT_OF_STEP ? Py_True
                                                             : Py_False);
        if (py_item == NULL) {
            Py_CLEAR(py_res);
            goto error;
        }
        PyList_SET_ITEM(py_res, i, py_item);
    }
error:
    book_free_list(self, &out);
    return py_res;
}

PyDoc_STRVAR(Book_next_deadline_doc,
"next_deadline() -> float | None\n--\n\n"
"The earliest deadline of a pending request (seconds on the caller's\n"
"clock), or None: when to call expire() next.\n");

/* Contract: GIL held; a new float, None, or NULL. */
static PyObject *Book_next_deadline(PyObject *op, PyObject *Py_UNUSED(ig))
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    int64_t dl;

    if (book_check(self) < 0)
        goto error;
    dl = sk_corr_next_deadline(&self->t);
    py_res = dl == SK_NO_DEADLINE ? Py_NewRef(Py_None)
                                  : PyFloat_FromDouble((double)dl / 1e9);
error:
    return py_res;
}

/* Contract: GIL held.  Take pending request id out: forget (abandon: its
 * reply will be late) or unsend (never sent).  A new bool or NULL. */
static PyObject *book_take(BookObject *self, PyObject *py_id, int unsend)
{
    PyObject *py_res = NULL;
    sk_promise *p = NULL;
    uint64_t id;
    int taken = 0;

    if (book_check(self) < 0 || book_id(py_id, &id) < 0)
        goto error;
    if (sk_corr_lookup(&self->t, id, &p) == SK_CORR_DELIVER)
        taken = unsend ? sk_corr_unsend(&self->t, p)
                       : sk_corr_abandon(&self->t, p);
    if (taken) {
        book_promise_free(self, p);
        if (unsend)
            self->issued--;
    }
    py_res = PyBool_FromLong(taken);
error:
    return py_res;
}

PyDoc_STRVAR(Book_forget_doc,
"forget(id) -> bool\n--\n\n"
"The caller gave up on pending request id (cancelled): take it out and\n"
"remember it, so that its reply, if it comes, is dropped as late.  False\n"
"if it was not pending.\n");

/* Contract: GIL held. */
static PyObject *Book_forget(PyObject *op, PyObject *py_id)
{
    return book_take((BookObject *)op, py_id, 0);
}

PyDoc_STRVAR(Book_unsend_doc,
"unsend(id) -> bool\n--\n\n"
"Request id could not be sent at all: take it out without remembering it.\n"
"In an in-order book, when it is the last one registered, its id is given\n"
"back (the next register() returns it again), so that the next request's\n"
"reply is not taken for its.  False if it was not pending.\n");

/* Contract: GIL held. */
static PyObject *Book_unsend(PyObject *op, PyObject *py_id)
{
    return book_take((BookObject *)op, py_id, 1);
}

/* Contract: GIL held.  Is id pending (want SK_CORR_DELIVER) or remembered
 * as expired (SK_CORR_LATE)?  A new bool or NULL. */
static PyObject *book_is(BookObject *self, PyObject *py_id, int want)
{
    PyObject *py_res = NULL;
    sk_promise *p;
    uint64_t id;
    int got;

    if (book_check(self) < 0 || book_id(py_id, &id) < 0)
        goto error;
    got = sk_corr_lookup(&self->t, id, &p);
    py_res = PyBool_FromLong(got == want);
error:
    return py_res;
}

PyDoc_STRVAR(Book_is_pending_doc,
"is_pending(id) -> bool\n--\n\nRequest id waits for its reply.\n");

/* Contract: GIL held. */
static PyObject *Book_is_pending(PyObject *op, PyObject *py_id)
{
    return book_is((BookObject *)op, py_id, SK_CORR_DELIVER);
}

PyDoc_STRVAR(Book_is_expired_doc,
"is_expired(id) -> bool\n--\n\n"
"Request id timed out or was forgotten and is still remembered (the last\n"
"EXPIRED_KEEP such ids): its reply would be dropped as late.\n");

/* Contract: GIL held. */
static PyObject *Book_is_expired(PyObject *op, PyObject *py_id)
{
    return book_is((BookObject *)op, py_id, SK_CORR_LATE);
}

/* Contract: GIL held; a new int or NULL. */
static PyObject *Book_get_pending(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    size_t n;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    n = self->t.pending;
    py_res = PyLong_FromSize_t(n);
error:
    return py_res;
}

/* Contract: GIL held; a new int or NULL. */
static PyObject *Book_get_owed(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    uint64_t n = 0;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    if (self->t.in_order)
        n = self->t.next_id - self->t.next_reply;
    py_res = PyLong_FromUnsignedLongLong(n);
error:
    return py_res;
}

/* Contract: GIL held; a new int or NULL. */
static PyObject *Book_get_issued(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;

    (void)closure;
    return book_check(self) < 0 ? NULL : PyLong_FromSsize_t(self->issued);
}

/* Contract: GIL held; a new reference to the dict, or NULL
 * (RuntimeError: not initialised, or cleared by the collector). */
static PyObject *Book_get_futures(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    if (self->futures == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CorrelationBook.futures was cleared (the book is "
                        "being collected)");
        goto error;
    }
    py_res = Py_NewRef(self->futures);
error:
    return py_res;
}

/* Contract: GIL held; a new bool or NULL. */
static PyObject *Book_get_in_order(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;

    (void)closure;
    return book_check(self) < 0 ? NULL : PyBool_FromLong(self->t.in_order);
}

/* Contract: GIL held; a new dict or NULL. */
static PyObject *Book_get_stats(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    sk_corr c;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    c = self->t; /* the counters only */
    py_res = Py_BuildValue(
        "{sKsKsKsKsKsK}", "replies", (unsigned long long)c.replies,
        "remote_errors", (unsigned long long)c.remote_errors, "timeouts",
        (unsigned long long)c.timeouts, "late", (unsigned long long)c.late,
        "duplicate", (unsigned long long)c.duplicate, "unknown",
        (unsigned long long)(c.unknown - c.duplicate));
error:
    return py_res;
}

/* Contract: GIL held; a new int or NULL. */
static PyObject *Book_get_next_id(PyObject *op, void *closure)
{
    BookObject *self = (BookObject *)op;
    PyObject *py_res = NULL;
    uint64_t n;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    n = self->t.next_id;
    py_res = PyLong_FromUnsignedLongLong(n);
error:
    return py_res;
}

/* Contract: GIL held; takes the table's lock.  Correlated books only: the
 * next id is raised to value, never lowered (a reconnected connection
 * continues the ids of the one it replaces).  0, or -1 with an
 * exception set. */
static int Book_set_next_id(PyObject *op, PyObject *value, void *closure)
{
    BookObject *self = (BookObject *)op;
    unsigned long long next;
    int rc = -1;

    (void)closure;
    if (book_check(self) < 0)
        goto error;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "next_id cannot be deleted");
        goto error;
    }
    next = PyLong_AsUnsignedLongLong(value);
    if (next == (unsigned long long)-1 && PyErr_Occurred())
        goto error;
    if (self->t.in_order) {
        PyErr_SetString(PyExc_ValueError, "next_id can be set on a correlated "
                        "book only (an in-order book matches by position)");
        goto error;
    }
    if (next > self->t.next_id)
        self->t.next_id = next;
    rc = 0;
error:
    return rc;
}

static PyMethodDef Book_methods[] = {
    {"register", (PyCFunction)(void (*)(void))Book_register,
     METH_FASTCALL | METH_KEYWORDS, Book_register_doc},
    {"add", Book_add, METH_O, Book_add_doc},
    {"settle", Book_settle, METH_O, Book_settle_doc},
    {"settle_next", Book_settle_next, METH_NOARGS, Book_settle_next_doc},
    {"expire", Book_expire, METH_O, Book_expire_doc},
    {"next_deadline", Book_next_deadline, METH_NOARGS, Book_next_deadline_doc},
    {"forget", Book_forget, METH_O, Book_forget_doc},
    {"unsend", Book_unsend, METH_O, Book_unsend_doc},
    {"is_pending", Book_is_pending, METH_O, Book_is_pending_doc},
    {"is_expired", Book_is_expired, METH_O, Book_is_expired_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Book_getset[] = {
    {"pending", Book_get_pending, NULL,
     "Requests registered and not yet settled, expired or forgotten.", NULL},
    {"owed", Book_get_owed, NULL,
     "In-order books: replies still to come (pending requests and those "
     "that timed out or were forgotten but were not answered yet); 0 for "
     "correlated books.", NULL},
    {"next_id", Book_get_next_id, Book_set_next_id,
     "The id the next request gets; correlated books: setting it raises it "
     "(never lowers it), so that a reconnected connection never reuses an "
     "id.", NULL},
    {"issued", Book_get_issued, NULL,
     "Requests registered (register() and add()) and not unsent: the "
     "stats' `requests`.", NULL},
    {"futures", Book_get_futures, NULL,
     "The dict id -> future that add() writes (the caller removes what it "
     "settles).", NULL},
    {"in_order", Book_get_in_order, NULL,
     "True for a plain-framing book (replies matched by position).", NULL},
    {"stats", Book_get_stats, NULL,
     "Counters (a fresh dict): replies (settled, remote_errors of them with "
     "ID_ERROR), timeouts, late, duplicate, unknown.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Book_doc,
"CorrelationBook(in_order=False)\n--\n\n"
"The correlation book of the C core, the one the threaded duplex uses:\n"
"request ids, deadlines and the memory of expired requests, so that a\n"
"reply is never handed to another request and a request settles once.\n"
"It keeps ids; the caller maps them to its futures (or lets add() keep\n"
"them in book.futures).  in_order: plain framing, where the n-th reply\n"
"answers the n-th request.\n\n"
"    >>> book = _core.CorrelationBook()\n"
"    >>> rid = book.register(deadline=None)\n"
"    >>> book.settle(rid | _core.ID_REPLY) == _core.CORR_DELIVER\n"
"    True\n"
"    >>> book.settle(rid | _core.ID_REPLY) == _core.CORR_DUPLICATE\n"
"    True\n");

static PyType_Slot Book_slots[] = {
    {Py_tp_doc, (void *)Book_doc},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Book_init},
    {Py_tp_dealloc, Book_dealloc},
    {Py_tp_traverse, Book_traverse},
    {Py_tp_clear, Book_clear},
    {Py_tp_methods, Book_methods},
    {Py_tp_getset, Book_getset},
    {0, NULL},
};

static PyType_Spec Book_spec = {
    .name = "pysockkit._core.CorrelationBook",
    .basicsize = sizeof(BookObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Book_slots,
};

/* Contract: GIL held; called once from the module's exec slot.  Adds
 * CorrelationBook, the CORR_* outcomes and EXPIRED_KEEP. */
int skpy_add_corr(PyObject *mod)
{
    PyObject *py_type = NULL;
    int rc = -1;

    py_type = PyType_FromModuleAndSpec(mod, &Book_spec, NULL);
    if (py_type == NULL ||
        PyModule_AddObjectRef(mod, "CorrelationBook", py_type) < 0)
        goto error;
    skpy_get_state(mod)->BookType = (PyTypeObject *)Py_NewRef(py_type);
    if (PyModule_AddIntConstant(mod, "CORR_NONE", SK_CORR_NONE) < 0 ||
        PyModule_AddIntConstant(mod, "CORR_DELIVER", SK_CORR_DELIVER) < 0 ||
        PyModule_AddIntConstant(mod, "CORR_LATE", SK_CORR_LATE) < 0 ||
        PyModule_AddIntConstant(mod, "CORR_DUPLICATE", SK_CORR_DUPLICATE) < 0 ||
        PyModule_AddIntConstant(mod, "CORR_STRAY", SK_CORR_STRAY) < 0 ||
        PyModule_AddIntConstant(mod, "EXPIRED_KEEP", SK_CORR_EXPIRED_KEEP) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_type);
    return rc;
}
