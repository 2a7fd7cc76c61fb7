/*
 * diag.c - sock_diag dump and exact lookup for pysockkit._core.
 *
 *   diag_dump(states=0x1ffe, family=0, sport=-1, dport=-1, port=-1,
 *             src=None, dst=None, addr=None, with_info=False,
 *             bound_inactive=False, limit=0, timeout=30.0) -> list[tuple]
 *   diag_lookup(family, src, sport, dst, dport, cookie=None,
 *               with_info=False, timeout=5.0) -> tuple | None
 *
 * Each entry is the tuple (see ENTRY_FIELDS):
 *   (family, state, src, sport, dst, dport, inode, uid, timer, expires_ms,
 *    retrans, rqueue, wqueue, cookie, ifindex, info)
 * with addresses as text and info a dict as _core.tcp_info() returns, or
 * None.  Tuples, not objects: a dump may hold ~125k TIME_WAIT sockets.
 *
 * The whole dump runs without the GIL: the callback stores plain C entries
 * in a growing array; Python objects are built afterwards.
 */
#include "util.h"

#include "areas.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/tcpinfo.h"

#define ENTRY_FIELDS                                                     \
    "family", "state", "src", "sport", "dst", "dport", "inode", "uid",  \
    "timer", "expires_ms", "retrans", "rqueue", "wqueue", "cookie",     \
    "ifindex", "info"

/* ------------------------------------------------------------ collector */

typedef struct coll_item {
    sk_diag_entry e;      /* e.info is NULL; see info_idx */
    size_t info_idx;      /* index into infos, or SIZE_MAX */
} coll_item;

typedef struct collector {
    coll_item *items;
    size_t n, cap;
    sk_tcp_info *infos;
    size_t ni, icap;
    size_t limit;         /* 0: none */
    int nomem;
} collector;

/* Contract: grow *p (elements of size sz) to hold one more than *n, x1.5.
 * Returns 0 or -1 (out of memory; *p unchanged).  No GIL needed. */
static int grow(void **p, size_t *cap, size_t n, size_t sz)
{
    size_t ncap;
    void *np;
    int rc = -1;

    if (n < *cap) {
        rc = 0;
        goto done;
    }
    ncap = *cap < 64 ? 64 : *cap + *cap / 2;
    if (ncap > SIZE_MAX / sz)
        goto done;
    np = realloc(*p, ncap * sz);
    if (np == NULL)
        goto done;
    *p = np;
    *cap = ncap;
    rc = 0;
done:
    return rc;
}

/* Contract: sk_diag_cb; runs WITHOUT the GIL; touches only the collector. */
static int collect_cb(void *ctx, const sk_diag_entry *e)
{
    collector *c = ctx;
    coll_item *it;
    int stop = 1;

    if (grow((void **)&c->items, &c->cap, c->n, sizeof(*c->items)) < 0) {
        c->nomem = 1;
        goto done;
    }
    it = &c->items[c->n];
    it->e = *e;
    it->e.info = NULL;
    it->info_idx = SIZE_MAX;
    if (e->info != NULL) {
        if (grow((void **)&c->infos, &c->icap, c->ni, sizeof(*c->infos)) < 0) {
            c->nomem = 1;
            goto done;
        }
        c->infos[c->ni] = *e->info;
        it->info_idx = c->ni++;
    }
    c->n++;
    stop = c->limit != 0 && c->n >= c->limit;
done:
    return stop;
}

/* Contract: no GIL needed; frees what the collector holds. */
static void collector_free(collector *c)
{
    free(c->items);
    free(c->infos);
    memset(c, 0, sizeof(*c));
}

/* ------------------------------------------------------------- helpers */

/* Contract: GIL held.  Parse a textual IPv4/IPv6 address (None: no filter,
 * a->family 0).  0, or -1 with ValueError/TypeError set. */
static int parse_addr(PyObject *py_s, sk_diag_addr *a)
{
    const char *s;
    int rc = -1;

    memset(a, 0, sizeof(*a));
    if (py_s == NULL || py_s == Py_None) {
        rc = 0;
        goto done;
    }
    if (!PyUnicode_Check(py_s)) {
        PyErr_Format(PyExc_TypeError, "address must be a str, not %.100s",
                     Py_TYPE(py_s)->tp_name);
        goto done;
    }
    s = PyUnicode_AsUTF8(py_s);
    if (s == NULL)
        goto done;
    if (inet_pton(AF_INET, s, a->addr) == 1)
        a->family = AF_INET;
    else if (inet_pton(AF_INET6, s, a->addr) == 1)
        a->family = AF_INET6;
    else {
        PyErr_Format(PyExc_ValueError,
                     "not a numeric IPv4/IPv6 address: %R", py_s);
        goto done;
    }
    rc = 0;
done:
    return rc;
}

/* Contract: GIL held.  Seconds (None: default_ms) to whole ms >= 1.
 * 0, or -1 with an exception set. */
static int timeout_ms(PyObject *py_t, int default_ms, int *out)
{
    double t;
    int rc = -1;

    *out = default_ms;
    if (py_t == NULL || py_t == Py_None) {
        rc = 0;
        goto done;
    }
    t = PyFloat_AsDouble(py_t);
    if (t == -1.0 && PyErr_Occurred())
        goto done;
    if (isnan(t) || t <= 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be > 0 seconds");
        goto done;
    }
    *out = t * 1000.0 >= 2.0e9 ? 2000000000 : (int)ceil(t * 1000.0);
    rc = 0;
done:
    return rc;
}

/* Contract: GIL held; a new reference to the entry tuple, or NULL with an
 * exception set. */
static PyObject *entry_tuple(const sk_diag_entry *e, const sk_tcp_info *info)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    PyObject *py_info = NULL, *py_t = NULL;

    if (inet_ntop(e->family, e->src, src, sizeof(src)) == NULL)
        src[0] = '\0';
    if (inet_ntop(e->family, e->dst, dst, sizeof(dst)) == NULL)
        dst[0] = '\0';
    if (info != NULL) {
        py_info = skpy_tcp_info_dict(info);
        if (py_info == NULL)
            goto error;
    } else {
        py_info = Py_NewRef(Py_None);
    }
    py_t = Py_BuildValue("(iisisikkikkkkKkN)", e->family, e->state, src,
                         (int)e->sport, dst, (int)e->dport,
                         (unsigned long)e->inode, (unsigned long)e->uid,
                         e->timer, (unsigned long)e->expires_ms,
                         (unsigned long)e->retrans,
                         (unsigned long)e->rqueue, (unsigned long)e->wqueue,
                         (unsigned long long)e->cookie,
                         (unsigned long)e->ifindex, py_info);
    py_info = NULL; /* stolen by N, even on failure */
error:
    Py_XDECREF(py_info);
    return py_t;
}

/* ------------------------------------------------- entries built in C */

#define SKPY_ENTRY_FIELDS 14 /* SocketEntry's fields (no separate ports) */

PyDoc_STRVAR(diag_set_entry_type_doc,
"diag_set_entry_type(cls, fields, states, families, timers)\n--\n\n"
"Register pysockkit.SocketEntry so diag_dump(build=True) fills its slots\n"
"in C: fields are its 14 slot names in order (family, state, local,\n"
"remote, inode, uid, timer, expires_s, retrans, recv_q, send_q, cookie,\n"
"ifindex, info); states maps a state number to its TcpState, families an\n"
"AF_* number to socket.AddressFamily, timers a timer code to its name.\n");

/* Contract: GIL held.  Keeps references to everything it is given. */
static PyObject *Core_diag_set_entry_type(PyObject *mod, PyObject *args)
{
    skpy_state *st = skpy_get_state(mod);
    PyObject *py_cls, *py_fields, *py_states, *py_fams, *py_timers, *py_d;
    PyObject *py_res = NULL;
    Py_ssize_t i;

    if (!PyArg_ParseTuple(args, "O!O!O!O!O!:diag_set_entry_type", &PyType_Type,
                          &py_cls, &PyTuple_Type, &py_fields, &PyTuple_Type,
                          &py_states, &PyDict_Type, &py_fams, &PyTuple_Type,
                          &py_timers))
        goto error;
    if (PyTuple_GET_SIZE(py_fields) != SKPY_ENTRY_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "fields must name the 14 slots");
        goto error;
    }
    for (i = 0; i < SKPY_ENTRY_FIELDS; i++) {
        py_d = PyObject_GetAttr(py_cls, PyTuple_GET_ITEM(py_fields, i));
        if (py_d == NULL)
            goto error;
        /* a slot is a member descriptor of an object-typed member: its
         * offset is where the value lives inside each instance */
        if (!Py_IS_TYPE(py_d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)py_d)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(py_d);
            PyErr_SetString(PyExc_TypeError, "the entry type must use __slots__");
            goto error;
        }
        st->entry_off[i] = ((PyMemberDescrObject *)py_d)->d_member->offset;
        Py_DECREF(py_d);
    }
    Py_XSETREF(st->EntryType, (PyTypeObject *)Py_NewRef(py_cls));
    Py_XSETREF(st->entry_states, Py_NewRef(py_states));
    Py_XSETREF(st->entry_families, Py_NewRef(py_fams));
    Py_XSETREF(st->entry_timers, Py_NewRef(py_timers));
    py_res = Py_NewRef(Py_None);
error:
    return py_res;
}

/* Store a new reference `v` (stolen) into slot i of obj.  v may be NULL
 * (an error is pending then); returns 0 or -1. */
static int entry_set(skpy_state *st, PyObject *obj, int i, PyObject *v)
{
    PyObject **slot;
    int rc = -1;

    if (v != NULL) {
        slot = (PyObject **)((char *)obj + st->entry_off[i]);
        Py_XSETREF(*slot, v);
        rc = 0;
    }
    return rc;
}

/* A one-entry cache per side: a listing repeats the same few addresses
 * (127.0.0.1 ...), so their str objects are shared instead of rebuilt. */
typedef struct {
    char text[INET6_ADDRSTRLEN];
    PyObject *obj; /* strong reference, or NULL */
} addr_cache;

/* (host, port) with host taken from the cache when it matches.  GIL held. */
static PyObject *addr_pair(addr_cache *cache, const char *host, int port)
{
    PyObject *py_port, *py_pair = NULL, *py_h;

    if (cache->obj == NULL || strcmp(cache->text, host) != 0) {
        py_h = PyUnicode_FromString(host);
        if (py_h == NULL)
            goto error;
        Py_XSETREF(cache->obj, py_h);
        snprintf(cache->text, sizeof(cache->text), "%s", host);
    }
    py_port = PyLong_FromLong(port);
    if (py_port == NULL)
        goto error;
    py_pair = PyTuple_Pack(2, cache->obj, py_port);
    Py_DECREF(py_port);
error:
    return py_pair;
}

/* Contract: GIL held; a SocketEntry (new reference) or NULL with an
 * exception set.  info (a tcp_info dict) is stored as is: the Python side
 * wraps it in a TcpInfo. */
static PyObject *entry_object(skpy_state *st, const sk_diag_entry *e,
                              const sk_tcp_info *info, addr_cache *cache)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    PyObject *obj, *py_v;
    Py_ssize_t n;

    if (inet_ntop(e->family, e->src, src, sizeof(src)) == NULL)
        src[0] = '\0';
    if (inet_ntop(e->family, e->dst, dst, sizeof(dst)) == NULL)
        dst[0] = '\0';
    obj = st->EntryType->tp_alloc(st->EntryType, 0);
    if (obj == NULL)
        goto done;
    py_v = PyLong_FromLong(e->family);
    if (py_v == NULL)
        goto error;
    {
        PyObject *py_f = PyDict_GetItemWithError(st->entry_families, py_v);
        Py_DECREF(py_v);
        if (py_f == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "unknown family %d", e->family);
            goto error;
        }
        if (entry_set(st, obj, 0, Py_NewRef(py_f)) < 0)
            goto error;
    }
    n = PyTuple_GET_SIZE(st->entry_states);
    py_v = (e->state >= 0 && e->state < n)
               ? PyTuple_GET_ITEM(st->entry_states, e->state) : Py_None;
    if (py_v == Py_None) {
        PyErr_Format(PyExc_ValueError, "unknown TCP state %d", e->state);
        goto error;
    }
    if (entry_set(st, obj, 1, Py_NewRef(py_v)) < 0 ||
        entry_set(st, obj, 2, addr_pair(&cache[0], src, (int)e->sport)) < 0 ||
        entry_set(st, obj, 3, addr_pair(&cache[1], dst, (int)e->dport)) < 0 ||
        entry_set(st, obj, 4, PyLong_FromUnsignedLong((unsigned long)e->inode)) < 0 ||
        entry_set(st, obj, 5, PyLong_FromUnsignedLong((unsigned long)e->uid)) < 0)
        goto error;
    n = PyTuple_GET_SIZE(st->entry_timers);
    py_v = (e->timer >= 0 && e->timer < n)
               ? Py_NewRef(PyTuple_GET_ITEM(st->entry_timers, e->timer))
               : PyUnicode_FromFormat("unknown(%d)", e->timer);
    if (entry_set(st, obj, 6, py_v) < 0 ||
        entry_set(st, obj, 7, PyFloat_FromDouble((double)e->expires_ms / 1000.0)) < 0 ||
        entry_set(st, obj, 8, PyLong_FromUnsignedLong((unsigned long)e->retrans)) < 0 ||
        entry_set(st, obj, 9, PyLong_FromUnsignedLong((unsigned long)e->rqueue)) < 0 ||
        entry_set(st, obj, 10, PyLong_FromUnsignedLong((unsigned long)e->wqueue)) < 0 ||
        entry_set(st, obj, 11, PyLong_FromUnsignedLongLong((unsigned long long)e->cookie)) < 0 ||
        entry_set(st, obj, 12, PyLong_FromUnsignedLong((unsigned long)e->ifindex)) < 0 ||
        entry_set(st, obj, 13, info != NULL ? skpy_tcp_info_dict(info)
                                            : Py_NewRef(Py_None)) < 0)
        goto error;
    goto done;
error:
    Py_CLEAR(obj);
done:
    return obj;
}

/* ---------------------------------------------------------------- dump */

PyDoc_STRVAR(diag_dump_doc,
"diag_dump(states=0x1ffe, family=0, sport=-1, dport=-1, port=-1,\n"
"          src=None, dst=None, addr=None, with_info=False,\n"
"          bound_inactive=False, limit=0, timeout=30.0) -> list[tuple]\n"
"--\n"
"\n"
"Dump TCP sockets of this network namespace through NETLINK_SOCK_DIAG.\n"
"\n"
"states is a bitmask of 1 << state (Linux numbering); bits 3 and 12 both\n"
"match request sockets, which are reported as state 3 with inode 0.\n"
"family: 0 (both), AF_INET or AF_INET6.  Port filters (-1: any; port\n"
"matches either side) are run by the kernel; addresses (numeric text,\n"
"IPv4-mapped IPv6 equal to IPv4) are compared in C.  with_info adds the\n"
"tcp_info dict; bound_inactive adds bound, never-connected sockets\n"
"(state 7).  limit > 0 stops after that many entries.\n"
"\n"
"Each entry is (family, state, src, sport, dst, dport, inode, uid, timer,\n"
"expires_ms, retrans, rqueue, wqueue, cookie, ifindex, info).");

/* Contract: GIL held on entry and exit; released for the whole dump. */
static PyObject *Core_diag_dump(PyObject *mod, PyObject *args, PyObject *kw)
{
    static const char *const kwlist[] = {
        "states", "family", "sport", "dport", "port", "src", "dst", "addr",
        "with_info", "bound_inactive", "limit", "timeout", "build", NULL};
    unsigned long states = SK_DIAG_ALL_STATES;
    int family = 0, sport = -1, dport = -1, port = -1;
    int with_info = 0, bound_inactive = 0, build = 0, rc;
    skpy_state *st = skpy_get_state(mod);
    Py_ssize_t limit = 0, i;
    PyObject *py_src = Py_None, *py_dst = Py_None, *py_addr = Py_None;
    PyObject *py_timeout = Py_None, *py_list = NULL;
    addr_cache cache[2] = {{"", NULL}, {"", NULL}};
    collector c;
    sk_diag_query q;
    sk_err err;

    memset(&c, 0, sizeof(c));
    sk_err_clear(&err);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|kiiiiOOOppnOp:diag_dump",
                                     (char **)kwlist, &states, &family,
                                     &sport, &dport, &port, &py_src,
                                     &py_dst, &py_addr, &with_info,
                                     &bound_inactive, &limit, &py_timeout,
                                     &build))
        goto error;
    if (build && st->EntryType == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "diag_dump(build=True) needs diag_set_entry_type()");
        goto error;
    }
    sk_diag_query_init(&q);
    if (states > 0xffffffffUL) {
        PyErr_SetString(PyExc_ValueError, "states must fit in 32 bits");
        goto error;
    }
    if (family != 0 && family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError,
                        "family must be 0, AF_INET or AF_INET6");
        goto error;
    }
    if (sport < -1 || sport > 65535 || dport < -1 || dport > 65535
        || port < -1 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "ports must be in 0..65535 or -1");
        goto error;
    }
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 0");
        goto error;
    }
    q.states = (uint32_t)states;
    q.family = family;
    q.sport = sport;
    q.dport = dport;
    q.port = port;
    if (parse_addr(py_src, &q.src) < 0 || parse_addr(py_dst, &q.dst) < 0
        || parse_addr(py_addr, &q.addr) < 0)
        goto error;
    if (timeout_ms(py_timeout, 30000, &q.timeout_ms) < 0)
        goto error;
    q.flags = (with_info ? SK_DIAG_WITH_INFO : 0)
            | (bound_inactive ? SK_DIAG_BOUND_INACTIVE : 0);
    c.limit = (size_t)limit;

    Py_BEGIN_ALLOW_THREADS
    rc = sk_diag_dump(&q, collect_cb, &c, &err);
    Py_END_ALLOW_THREADS

    if (c.nomem) {
        PyErr_NoMemory();
        goto error;
    }
    if (rc != SK_OK) {
        skpy_raise(mod, &err, NULL);
        goto error;
    }
    py_list = PyList_New((Py_ssize_t)c.n);
    if (py_list == NULL)
        goto error;
    for (i = 0; i < (Py_ssize_t)c.n; i++) {
        const coll_item *it = &c.items[i];
        const sk_tcp_info *inf =
            it->info_idx == SIZE_MAX ? NULL : &c.infos[it->info_idx];
        PyObject *py_t = build ? entry_object(st, &it->e, inf, cache)
                               : entry_tuple(&it->e, inf);
        if (py_t == NULL) {
            Py_CLEAR(cache[0].obj);
            Py_CLEAR(cache[1].obj);
            goto error;
        }
        PyList_SET_ITEM(py_list, i, py_t);
    }
    goto done;
error:
    Py_CLEAR(py_list);
done:
    Py_CLEAR(cache[0].obj); /* also on error: an entry may have filled them */
    Py_CLEAR(cache[1].obj);
    collector_free(&c);
    return py_list;
}

/* -------------------------------------------------------------- lookup */

PyDoc_STRVAR(diag_lookup_doc,
"diag_lookup(family, src, sport, dst, dport, cookie=None, with_info=False,\n"
"            timeout=5.0) -> tuple | None\n"
"--\n"
"\n"
"Exact sock_diag lookup of one TCP socket by its 4-tuple (local src:sport,\n"
"remote dst:dport) and, if given, its cookie.  Returns the entry tuple\n"
"(as diag_dump), or None when no such socket exists -- including when\n"
"the kernel answered with the listener on that port instead (its\n"
"fallback), which is detected by comparing the ids.  family 0 infers it\n"
"from src.");

/* Contract: GIL held on entry and exit; released around the lookup. */
static PyObject *Core_diag_lookup(PyObject *mod, PyObject *args, PyObject *kw)
{
    static const char *const kwlist[] = {
        "family", "src", "sport", "dst", "dport", "cookie", "with_info",
        "timeout", NULL};
    int family = 0, sport = 0, dport = 0, with_info = 0, found = 0, rc;
    PyObject *py_src = NULL, *py_dst = NULL, *py_cookie = Py_None;
    PyObject *py_timeout = Py_None, *py_res = NULL;
    sk_diag_addr src, dst;
    sk_diag_lookup_req r;
    sk_diag_entry e;
    sk_tcp_info info;
    sk_err err;

    sk_err_clear(&err);
    memset(&r, 0, sizeof(r));
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOiOi|OpO:diag_lookup",
                                     (char **)kwlist, &family, &py_src, &sport,
                                     &py_dst, &dport, &py_cookie, &with_info,
                                     &py_timeout))
        goto done;
    if (sport < 0 || sport > 65535 || dport < 0 || dport > 65535) {
        PyErr_SetString(PyExc_ValueError, "ports must be in 0..65535");
        goto done;
    }
    if (parse_addr(py_src, &src) < 0 || parse_addr(py_dst, &dst) < 0)
        goto done;
    if (src.family == 0 || dst.family == 0) {
        PyErr_SetString(PyExc_ValueError, "src and dst are required");
        goto done;
    }
    if (family == 0)
        family = src.family;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
        goto done;
    }
    if (src.family != family || dst.family != family) {
        PyErr_SetString(PyExc_ValueError,
                        "src and dst must be addresses of that family "
                        "(IPv4 in AF_INET6 as ::ffff:a.b.c.d)");
        goto done;
    }
    r.family = family;
    memcpy(r.src, src.addr, 16);
    memcpy(r.dst, dst.addr, 16);
    r.sport = (uint16_t)sport;
    r.dport = (uint16_t)dport;
    if (py_cookie != Py_None) {
        unsigned long long ck = PyLong_AsUnsignedLongLong(py_cookie);
        if (ck == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
        r.cookie = ck;
        r.has_cookie = 1;
    }
    r.flags = with_info ? SK_DIAG_WITH_INFO : 0;
    if (timeout_ms(py_timeout, 5000, &r.timeout_ms) < 0)
        goto done;

    Py_BEGIN_ALLOW_THREADS
    rc = sk_diag_lookup(&r, &e, &info, &found, &err);
    Py_END_ALLOW_THREADS

    if (rc != SK_OK)
        skpy_raise(mod, &err, NULL);
    else if (!found)
        py_res = Py_NewRef(Py_None);
    else
        py_res = entry_tuple(&e, e.info);
done:
    return py_res;
}

PyDoc_STRVAR(diag_timer_name_doc,
"diag_timer_name(timer, /) -> str\n"
"--\n"
"\n"
"Name of a sock_diag timer code: 'none', 'retransmit', 'keepalive',\n"
"'time_wait', 'probe' (zero-window probe), or 'unknown'.");

/* Contract: GIL held; pure. */
static PyObject *Core_diag_timer_name(PyObject *mod, PyObject *py_timer)
{
    PyObject *py_res = NULL;
    long t;

    (void)mod;
    t = PyLong_AsLong(py_timer);
    if (t == -1 && PyErr_Occurred())
        goto done;
    if (t < 0 || t > 255)
        t = 255;
    py_res = PyUnicode_FromString(sk_diag_timer_name((int)t));
done:
    return py_res;
}

static PyMethodDef diag_methods[] = {
    {"diag_set_entry_type", Core_diag_set_entry_type, METH_VARARGS,
     diag_set_entry_type_doc},
    {"diag_dump", (PyCFunction)(void (*)(void))Core_diag_dump,
     METH_VARARGS | METH_KEYWORDS, diag_dump_doc},
    {"diag_lookup", (PyCFunction)(void (*)(void))Core_diag_lookup,
     METH_VARARGS | METH_KEYWORDS, diag_lookup_doc},
    {"diag_timer_name", (PyCFunction)Core_diag_timer_name, METH_O,
     diag_timer_name_doc},
    {NULL, NULL, 0, NULL},
};

/* Contract: GIL held; called once from the module's exec slot.  0, or -1
 * with an exception set. */
int skpy_add_diag(PyObject *mod)
{
    PyObject *py_fields = NULL;
    int rc = -1;

    if (PyModule_AddFunctions(mod, diag_methods) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "DIAG_ALL_STATES", SK_DIAG_ALL_STATES) < 0
        || PyModule_AddIntConstant(mod, "DIAG_TCPF_BOUND_INACTIVE",
                                   SK_DIAG_TCPF_BOUND_INACTIVE) < 0)
        goto error;
    py_fields = Py_BuildValue("(ssssssssssssssss)", ENTRY_FIELDS);
    if (py_fields == NULL)
        goto error;
    if (PyModule_AddObjectRef(mod, "DIAG_ENTRY_FIELDS", py_fields) < 0)
        goto error;
    rc = 0;
error:
    Py_XDECREF(py_fields);
    return rc;
}
