/*
 * areas.h - the add function of each binding file, the one entry point
 * module.c calls (and nothing else calls).
 *
 * Each adds its area's types, functions and constants to the module
 * pysockkit._core from the module's exec slot: GIL held, called once per
 * module object; returns 0, or -1 with an exception set.
 */
#ifndef SK_BINDING_AREAS_H
#define SK_BINDING_AREAS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int skpy_add_future(PyObject *mod);   /* future.c: Future, set_future_class */
int skpy_add_conn(PyObject *mod);     /* conn.c: Connection */
int skpy_add_sock(PyObject *mod);     /* sock.c: listen, connect, ... */
int skpy_add_accept(PyObject *mod);   /* accept.c: Acceptor */
int skpy_add_hub(PyObject *mod);      /* hub.c: hub_stats */
int skpy_add_frame(PyObject *mod);    /* frame.c: Decoder, Encoder, wire constants */
int skpy_add_heartbeat(PyObject *mod); /* heartbeat.c: HeartbeatRule, HB_*, CTL_* */
int skpy_add_corr(PyObject *mod);     /* corr.c: CorrelationBook, CORR_* */
/* corr.c, for reply.c's resolve_replies: check that book is a usable
 * correlated CorrelationBook of mod (0, or -1 with an exception set), then
 * its verdict on one reply id (SK_CORR_*; settles and counts it).  GIL held. */
int skpy_book_correlated(PyObject *mod, PyObject *book);
int skpy_book_settle(PyObject *book, uint64_t id);
int skpy_add_tcpinfo(PyObject *mod);  /* tcpinfo.c: tcp_info, tcp_state, ... */
int skpy_add_diag(PyObject *mod);     /* diag.c: diag_dump, diag_lookup */
int skpy_add_proxy(PyObject *mod);    /* proxy.c: Proxy, FAULT_*, DIR_* */
int skpy_add_watch(PyObject *mod);    /* watch.c: Watcher */
int skpy_add_reply(PyObject *mod);    /* reply.c: resolve_replies, ... */
int skpy_add_capture(PyObject *mod);  /* capture.c: Capture */
int skpy_add_server(PyObject *mod);   /* server.c: Server, END_* */
int skpy_add_nfq(PyObject *mod);      /* nfq.c: NfQueue, NFQ_MAX_LIMIT */
int skpy_add_call(PyObject *mod);     /* call.c: exchange (sk.call) */

#endif /* SK_BINDING_AREAS_H */
