"""The server of a simplex pair: the link handshake, a reader and a writer
thread per client, the message handler in worker threads or on an event
loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Optional, cast

from .._conn import Address, Connection, Listener, listen
from .._errors import ConnectionClosed, ConnectionReset, Error, Timeout
from .._handler import AsyncHandler, ExitBook, accept_loop, check_handlers, is_async
from .._net import AddressLike, check_timeout, format_address, parse_address
from .._types import Framing, Heartbeat
from ._handshake import (
    REPLY,
    _ack,
    _check_framing,
    _FLAG_HEARTBEAT,
    _HELLO,
    _log,
    _MAGIC,
    _ROLE_NAME,
    _ROLE_REPLY,
    _ROLE_REQUEST,
    _ST_BAD_HELLO,
    _ST_BUSY,
    _ST_DUPLICATE,
    _ST_HEARTBEAT,
    _ST_OK,
    _ST_UNKNOWN_SESSION,
    _ST_WRONG_LINK,
    _VERSION,
)
from ._handlers import Handlers
from ._session import _Session
from .stats import ServerStats

Handler = AsyncHandler
"""A server's message handler: ``handler(payload) -> reply | None``, a
plain function (run in the worker threads) or an ``async def`` one (run on
the server's event loop thread, concurrently); None sends no reply (the
client's request then times out: use it for one-way messages).
Example: ``simplex.Server(req, rep, lambda b: b.upper())``."""


class _Refuse(Exception):
    """Handshake refused: send this status and reason, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Server:
    """The server of a simplex pair: receives requests on the request link
    and answers on the reply link of the same client.

    Two listeners (``request_address``, ``reply_address``; port 0 picks a
    free port).  The message handler ``handler(payload) -> reply | None``
    is the same model as ``sk.serve``'s and ``aio.serve``'s: a plain
    function runs in ``workers`` threads (0: in each client's reader
    thread); an ``async def`` one runs on an event loop in a server thread,
    the requests of a batch concurrently.  None sends no reply (the
    client's request times out: use it for one-way messages).  A handler
    that raises (or returns something other than bytes-like or None, or a
    reply over ``max_frame``) is logged (logger ``"pysockkit"``, ERROR),
    kept in ``errors`` (the most recent 1,000) and answered with an error
    reply: the client raises :class:`RemoteError` (``sk.RemoteError``).
    ``handler=None`` or a non-callable is a TypeError.

    Per client a reader thread and a writer thread run; memory stays
    bounded: the reader stops reading (TCP pushes back on the client) while
    ``max_inflight`` requests or ``max_inflight_bytes`` are unanswered, and
    a client that does not read its replies for ``send_timeout`` seconds is
    dropped.  A misbehaving client (garbage, resets, a missing link, not
    reading) loses only its own session; the others are served on.  When a
    client closes its request link, its remaining replies are written and
    then its reply link is closed.

    Example::

        srv = simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), lambda b: b[::-1])
        print(srv.request_address, srv.reply_address)
        ...
        srv.close()
    """

    def __init__(
        self,
        request_addr: AddressLike,
        reply_addr: AddressLike,
        handler: Handler,
        framing: Optional[Framing] = None,
        heartbeat: Optional[Heartbeat] = None,
        *,
        workers: int = 2,
        max_sessions: int = 64,
        max_inflight: int = 1024,
        max_inflight_bytes: int = 16 * 2**20,
        handshake_timeout: Optional[float] = 5.0,
        send_timeout: Optional[float] = 10.0,
    ) -> None:
        if handler is None:
            raise TypeError("simplex.Server: a handler is needed: handler(payload) -> "
                            "reply or None (simplex links carry only requests)")
        check_handlers("simplex.Server", handler, None, async_ok=True)
        request_addr = parse_address(request_addr, name="request_addr")
        reply_addr = parse_address(reply_addr, name="reply_addr")
        handshake_timeout = check_timeout(handshake_timeout, "handshake_timeout")
        send_timeout = check_timeout(send_timeout, "send_timeout")
        self._framing = _check_framing(framing)
        if workers < 0 or max_sessions < 1 or max_inflight < 1 or max_inflight_bytes < 1:
            raise ValueError("workers >= 0, max_sessions, max_inflight and "
                             "max_inflight_bytes >= 1")
        self._book = ExitBook("simplex.Server")
        self._hb = heartbeat
        self._max_sessions = max_sessions
        self._max_inflight = max_inflight
        self._max_bytes = max_inflight_bytes
        self._handshake_timeout = handshake_timeout
        self._send_timeout = send_timeout
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}
        self._links = 0  # accepted connections being served
        self._conns: set[Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._n = {"sessions_total": 0, "requests": 0, "replies": 0, "unexpected": 0,
                   "rejected": 0, "dropped": 0}
        self._request_l: Listener = listen(request_addr, framing=self._framing, heartbeat=heartbeat)
        try:
            self._reply_l: Listener = listen(reply_addr, framing=self._framing,
                                             heartbeat=heartbeat)
        except BaseException:
            self._request_l.close()
            raise
        self._run = Handlers(handler, self._framing.max_frame, self._book,
                             0 if is_async(handler) else workers)
        for i in range(self._run.workers):
            self._spawn(self._run.work_loop, f"pysockkit-simplex-worker-{i}")
        self._spawn(self._accept_loop, "pysockkit-simplex-accept-req", self._request_l,
                    _ROLE_REQUEST)
        self._spawn(self._accept_loop, "pysockkit-simplex-accept-rep", self._reply_l,
                    _ROLE_REPLY)

    # ------------------------------------------------------------ public

    @property
    def request_address(self) -> Address:
        """(host, port) of the request link's listener (clients send here).

        Example::

            >>> srv.request_address
            ('127.0.0.1', 40123)
        """
        return self._request_l.address

    @property
    def reply_address(self) -> Address:
        """(host, port) of the reply link's listener (clients read from here).

        Example::

            >>> srv.reply_address
            ('127.0.0.1', 40124)
        """
        return self._reply_l.address

    @property
    def stats(self) -> ServerStats:
        """A :class:`ServerStats` snapshot.

        Example::

            print(srv.stats.sessions, srv.stats.requests, srv.stats.dropped)
        """
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.attached.is_set()]
            inflight = sum(s.inflight for s in self._sessions.values())
            return ServerStats(sessions=len(sessions), inflight=inflight,
                               handler_errors=self._run.errors, **self._n)

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions the handler raised (each answered with an error
        reply), oldest first; the most recent 1,000 are kept.

        Example::

            >>> [str(e) for e in srv.errors]
            ['bad input']
        """
        return self._book.errors

    def close(self, timeout: Optional[float] = 5.0) -> None:
        """Stop listening, close every client's links (their pending
        requests fail on the client side) and stop the threads, waiting up
        to ``timeout`` seconds for them.  Idempotent.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
        with self._lock:
            if self._closing:
                return
            self._closing = True
            sessions = list(self._sessions.values())
            conns = list(self._conns)
        self._run.stop_workers()  # the workers first
        self._request_l.close()
        self._reply_l.close()
        for s in sessions:
            with s.cond:
                s.dead = True
                s.cond.notify_all()
            s.attached.set()
        for c in conns:
            c.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.current_thread()
        for t in list(self._threads):
            if t is not me:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._run.stop_loop(deadline)

    def __enter__(self) -> "Server":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pysockkit.simplex.Server request={format_address(self.request_address)} "
                f"reply={format_address(self.reply_address)} sessions={len(self._sessions)}>")

    # ----------------------------------------------------------- threads

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(t)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _count(self, key: str, k: int = 1) -> None:
        with self._lock:
            self._n[key] += k

    def _accept_loop(self, listener: Listener, role: int) -> None:
        def take(conn: Connection) -> bool:
            with self._lock:
                if self._closing:
                    conn.close()
                    return False
                busy = self._links >= 2 * self._max_sessions
                if not busy:
                    self._links += 1
                    self._conns.add(conn)
            if busy:
                self._count("rejected")
                self._refuse(conn, _ST_BUSY, f"{self._max_sessions} sessions (max_sessions)")
                return True
            target = self._serve_reply_link if role == _ROLE_REPLY else self._serve_request_link
            self._spawn(self._serve_link, f"pysockkit-simplex-{_ROLE_NAME[role]}", target, conn)
            return True

        # close() closes the listener, which wakes the accept; an accept
        # error (EMFILE, ...) waits a little: do not spin
        accept_loop(listener, lambda: self._closing, take, lambda exc: time.sleep(0.05))

    def _serve_link(self, target: Callable[[Connection], None], conn: Connection) -> None:
        try:
            target(conn)
        except _Refuse as r:
            self._count("rejected")
            _log.warning("simplex: refused a link from %s: %s", self._peer(conn), r.reason)
            self._refuse(conn, r.status, r.reason)
        except Error as exc:  # the client broke the handshake or vanished
            if not self._closing:
                self._count("rejected")
                _log.warning("simplex: handshake with %s failed: %s", self._peer(conn), exc)
        finally:
            conn.close()
            with self._lock:
                self._links -= 1
                self._conns.discard(conn)

    @staticmethod
    def _peer(conn: Connection) -> str:
        try:
            return format_address(conn.remote_address)
        except OSError:
            return "a client"

    def _refuse(self, conn: Connection, status: int, reason: str) -> None:
        """Send a refusing acknowledgement, then close without an RST eating it."""
        try:
            conn.send(_ack(status, self._hb is not None, reason), timeout=1.0)
            conn.shutdown("write", timeout=1.0)
            conn.recv_many(16, timeout=0.2)  # take the hello: unread data means RST
        except Error:
            pass
        finally:
            conn.close()

    def _read_hello(self, conn: Connection, role: int) -> bytes:
        """The client's registration frame on a new link; returns its token."""
        try:
            frame: Any = conn.recv(timeout=self._handshake_timeout)
        except Timeout:
            raise _Refuse(_ST_BAD_HELLO, f"no registration within {self._handshake_timeout} s")
        if not isinstance(frame, bytes) or len(frame) != _HELLO.size or frame[:4] != _MAGIC:
            raise _Refuse(_ST_BAD_HELLO, "the first frame is not a simplex registration")
        _m, version, got_role, flags, _r, token = _HELLO.unpack(frame)
        if version != _VERSION:
            raise _Refuse(_ST_BAD_HELLO, f"version {version} not supported (1)")
        if got_role != role:
            other = self.reply_address if role == _ROLE_REQUEST else self.request_address
            raise _Refuse(
                _ST_WRONG_LINK,
                f"this is the {_ROLE_NAME[role]} link; the "
                f"{_ROLE_NAME.get(got_role, '?')} link is at {format_address(other)}",
            )
        if bool(flags & _FLAG_HEARTBEAT) != (self._hb is not None):
            raise _Refuse(_ST_HEARTBEAT, "the server uses heartbeats" if self._hb
                          else "the server does not use heartbeats")
        return bytes(token)

    def _serve_reply_link(self, conn: Connection) -> None:
        token = self._read_hello(conn, _ROLE_REPLY)
        sess = _Session(token, self._peer(conn), conn)
        with self._lock:
            if token in self._sessions:
                raise _Refuse(_ST_DUPLICATE, "a session with this token exists")
            self._sessions[token] = sess
        try:
            conn.send(_ack(_ST_OK, self._hb is not None), timeout=self._handshake_timeout)
            if self._hb is None:
                conn.shutdown("read")  # the client sent FIN after its hello
            if not sess.attached.wait(self._handshake_timeout) or sess.request is None:
                with self._lock:
                    self._n["rejected"] += 1
                _log.warning("simplex: %s registered a reply link but no request link "
                             "came within %s s", sess.peer, self._handshake_timeout)
                return
            if sess.dead:
                return
            with self._lock:
                self._n["sessions_total"] += 1
            self._write_loop(sess)
        finally:
            self._end(sess)

    def _serve_request_link(self, conn: Connection) -> None:
        token = self._read_hello(conn, _ROLE_REQUEST)
        with self._lock:
            sess = self._sessions.get(token)
            if sess is not None and sess.request is not None and not sess.dead:
                raise _Refuse(_ST_DUPLICATE, "this session already has its request link")
            if sess is None or sess.dead:
                raise _Refuse(_ST_UNKNOWN_SESSION,
                              "no reply link registered with this token: open the reply "
                              "link first")
            sess.request = conn
        try:
            conn.send(_ack(_ST_OK, self._hb is not None), timeout=self._handshake_timeout)
            if self._hb is None:
                conn.shutdown("write", timeout=self._handshake_timeout)  # request link is one-way
        except BaseException:
            self._end(sess)
            raise
        sess.attached.set()
        try:
            self._read_loop(sess, conn)
        finally:
            conn.close()

    def _end(self, sess: _Session) -> None:
        with sess.cond:
            sess.dead = True
            sess.cond.notify_all()
        with self._lock:
            if self._sessions.get(sess.token) is sess:
                del self._sessions[sess.token]
        sess.attached.set()
        if sess.request is not None:
            sess.request.close()
        sess.reply.close()

    def _drop(self, sess: _Session, why: str) -> None:
        if sess.dead or self._closing:
            return
        self._count("dropped")
        _log.warning("simplex: dropped the session of %s: %s", sess.peer, why)
        self._end(sess)

    def _read_loop(self, sess: _Session, conn: Connection) -> None:
        """The request link of one client: read batches, hand them out."""
        max_n, max_b, cond = self._max_inflight, self._max_bytes, sess.cond
        # bytes per request, as the last batch showed: a batch takes only
        # what fits under max_inflight_bytes (recv_many takes every frame the
        # kernel holds, megabytes once the window grew); one frame first
        size = max_b
        while True:
            with cond:
                while (sess.inflight >= max_n or sess.inflight_bytes >= max_b) and not sess.dead:
                    cond.wait(1.0)  # the writer notifies when replies went out
                if sess.dead:
                    return
                room = min(max_n - sess.inflight, 1024,
                           max(1, (max_b - sess.inflight_bytes) // size))
            try:
                # _core.pyi says list[bytes]: correlated frames come as (id, bytes)
                frames = conn.recv_many(room, timeout=1.0)
            except Timeout:
                continue
            except ConnectionReset as exc:
                self._drop(sess, f"request link reset ({exc})")
                return
            except ConnectionClosed as exc:
                if type(exc) is ConnectionClosed and not sess.dead:
                    with cond:  # orderly: answer what is in flight, then close
                        sess.eof = True
                        cond.notify_all()
                return
            except Error as exc:  # broken frames: the stream cannot resync
                self._drop(sess, f"request link broken ({exc})")
                return
            reqs: list[tuple[int, bytes]] = []
            nbytes = 0
            for fr in frames:
                if type(fr) is tuple and not fr[0] & REPLY:
                    reqs.append(fr)
                    nbytes += len(fr[1])
            bad = len(frames) - len(reqs)
            with self._lock:
                self._n["requests"] += len(reqs)
                if bad:
                    self._n["unexpected"] += bad
            if not reqs:
                continue
            size = max(1, nbytes // len(reqs))
            with cond:
                sess.inflight += len(reqs)
                sess.inflight_bytes += nbytes
            self._run.submit(sess, reqs)

    def _write_loop(self, sess: _Session) -> None:
        """The reply link of one client: write what the workers produced."""
        conn, cond = sess.reply, sess.cond
        while True:
            with cond:
                while not sess.out and not sess.dead and not (sess.eof and sess.inflight == 0):
                    cond.wait(1.0)
                if sess.dead:
                    return
                out, sess.out = sess.out, []
                if not out:  # eof and everything answered: orderly end
                    return
            try:
                # send_many takes (id, payload) tuples for correlated frames
                conn.send_many(cast("list[Any]", out), timeout=self._send_timeout)
            except Timeout:
                self._drop(sess, f"the client did not read its replies for "
                                 f"{self._send_timeout} s (send_timeout)")
                return
            except Error as exc:
                if not sess.eof:  # else the client closed both links: not misbehaviour
                    self._drop(sess, f"reply link failed ({exc})")
                return
            nbytes = sum(len(p) for _, p in out)
            with cond:
                sess.inflight -= len(out)
                sess.inflight_bytes -= nbytes
                cond.notify_all()
            self._count("replies", len(out))
