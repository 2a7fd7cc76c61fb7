"""A small threaded framed server: one accept thread, one thread a client.

For tests, tools and the tour; a server holding thousands of connections
wants the reactor (pysockkit.aio) instead.  The handler model (message
handler or on_connection, error replies, exit reasons) is shared with
aio.serve and simplex.Server: pysockkit/_handler.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from ._conn import Address, Connection, Listener, listen
from ._errors import Error
from ._handler import (
    ExitBook,
    HandlerFailed,
    Reply,
    ServerRecords,
    accept_loop,
    check_handlers,
    check_reply,
    error_text,
    log,
    peer_name,
)
from ._net import AddressLike, check_timeout, format_address
from ._types import Framing
from ._wire import ID_REPLY, error_id, reply_id

__all__ = ["Server", "serve", "Handler", "ConnectionHandler"]

Handler = Callable[[bytes], Reply]
"""A message handler: ``handler(payload) -> reply | None``, a plain function.

Example::

    def handler(payload: bytes) -> bytes | None:
        return payload.upper()
"""

ConnectionHandler = Callable[[Connection], None]
"""An ``on_connection`` handler: gets each client's :class:`sk.Connection`
in that client's thread; the connection is closed when it returns.

Example::

    def on_connection(conn: sk.Connection) -> None:
        conn.send(b"welcome")
        conn.send(conn.recv(timeout=5.0))
"""

_POLL = 0.1  # how often the accept loop looks at the stop flag, in seconds


def _echo(msg: bytes) -> bytes:
    return msg


class Server(ServerRecords):
    """A framed server running its handler in background threads (one a
    client).  Made by :func:`serve`.

    The **message handler** ``handler(payload) -> reply | None`` is called
    for every frame a client sends; a reply that is not None goes back as
    one frame, None sends nothing.  Each client's requests are handled one
    after the other, in order.  With ``Framing(correlation=True)`` a
    request that carries an id is answered with that id (``id | REPLY``,
    docs/PROTOCOL.md); the handler still sees only the payload, and plain
    frames on the same connection are answered with plain frames.
    Alternatively ``on_connection(conn)`` gets the whole
    :class:`sk.Connection` in the client's thread; the connection is closed
    when it returns.

    **A handler that raises** is logged (logger ``"pysockkit"``, ERROR,
    with the traceback) and kept in ``errors``; the other clients are
    served on.  A correlated request gets an error reply (``id | REPLY |
    ERROR``, payload ``"ExcType: message"``) that the client raises as
    ``sk.RemoteError``, and its connection goes on.  A plain request has no
    way to carry an error, so that client's connection is closed (FIN
    after the replies already sent; its pending request raises
    ``sk.ConnectionClosed``).  A reply that is not bytes-like or None, or
    longer than ``max_frame``, counts as the handler raising.

    **Every client's end is recorded**: ``exits`` counts each reason
    (:class:`sk.ServerExits`: closed, reset, incomplete, too_large,
    timeout, peer_dead, handler_error, finished, stopped, rejected, other)
    and ``errors`` keeps the exceptions of the abnormal ones (the most
    recent 1,000).  ``served`` counts the messages the handler answered.

    Limits (all off by default): ``read_timeout`` is how long a client may
    take to deliver each whole frame, counted from when the server starts
    waiting for it (so an idle client and a slowloris client that dribbles
    bytes are both dropped); ``write_timeout`` bounds sending each reply (a
    client that never reads is dropped once its window is full for that
    long); ``max_connections`` caps the clients served at once, and a
    client over the cap is reset at once.  A timed-out client is aborted
    (RST) and its ``sk.Timeout`` is recorded; ``rejected`` counts the
    clients turned away by the cap.

    Example::

        with sk.serve(("127.0.0.1", 0), lambda m: m.upper()) as srv:
            print(sk.call(srv.address, b"hi", timeout=1.0))   # b'HI'
        print(srv.served, srv.exits.closed, srv.errors)        # 1 1 []
    """

    def __init__(self, listener: Listener, handler: Optional[Handler] = None,
                 read_timeout: Optional[float] = None,
                 write_timeout: Optional[float] = None,
                 max_connections: Optional[int] = None,
                 *, on_connection: Optional[ConnectionHandler] = None) -> None:
        check_handlers("sk.serve", handler, on_connection, async_ok=False)
        read_timeout = check_timeout(read_timeout, "read_timeout")
        write_timeout = check_timeout(write_timeout, "write_timeout")
        for name, v in (("read_timeout", read_timeout), ("write_timeout", write_timeout)):
            if v == 0:
                raise ValueError(f"{name} must be > 0 seconds or None, not 0")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, not {max_connections!r}")
        self._listener = listener
        self._handler: Handler = handler or _echo
        self._on_connection = on_connection
        self._corr = listener.framing.correlation
        self._max_frame = listener.framing.max_frame
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_conns = max_connections
        self._book = ExitBook("sk.serve")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._threads: set[threading.Thread] = set()  # each leaves it when done
        self._acceptor = threading.Thread(
            target=accept_loop, args=(listener, self._stop.is_set, self._take, self._failed, _POLL),
            name="pysockkit-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> Address:
        """(host, port) the server listens on.

        Example::

            >>> srv.address
            ('127.0.0.1', 40123)
        """
        return self._listener.address

    @property
    def rejected(self) -> int:
        """Clients reset at once because ``max_connections`` were served
        (also ``exits.rejected``).

        Example::

            >>> srv.rejected
            0
        """
        return self._book.snapshot().rejected

    def _failed(self, exc: Error) -> None:
        log.warning("sk.serve: accept failed: %s", exc)
        self._book.error(exc)

    def _take(self, conn: Connection) -> bool:
        """A client the accept loop got: serve it in its own thread (False:
        the server is stopping, end the loop)."""
        with self._lock:
            if self._stop.is_set():
                conn.close()
                return False
            if self._max_conns is not None and len(self._conns) >= self._max_conns:
                self._book.rejected()
                conn.abort()  # RST: the client learns at once
                return True
            self._conns.add(conn)
            t = threading.Thread(target=self._serve_one, args=(conn,), name="pysockkit-conn", daemon=True)
            self._threads.add(t)
        t.start()
        return True

    def _serve_one(self, conn: Connection) -> None:
        exc: Optional[BaseException] = None
        try:
            if self._on_connection is not None:
                self._on_connection(conn)
            else:
                self._serve_messages(conn)
        except BaseException as e:  # recorded below; only Exception is swallowed
            exc = e
            if not isinstance(e, Exception):
                raise
        finally:
            # recorded before the connection leaves _conns: whoever sees it
            # gone sees its reason too
            reason = self._book.ended(exc, self._stop.is_set(), conn)
            with self._lock:
                self._conns.discard(conn)
            if reason == "timeout":
                conn.abort()  # a half-sent reply or a dribbling client: RST
            else:
                conn.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _serve_messages(self, conn: Connection) -> None:
        """The message loop of one client; ends with the exception that
        ended the connection (HandlerFailed for a plain request whose
        handler raised)."""
        handler, book = self._handler, self._book
        rt, wt, max_frame = self._read_timeout, self._write_timeout, self._max_frame
        correlated = self._corr
        while True:
            msg = conn.recv(timeout=rt)
            if correlated and msg.__class__ is tuple:
                rid, payload = msg
                if rid & ID_REPLY:  # we never ask: a stray reply
                    log.info("sk.serve: dropped a reply frame (id %#x) from %s: a server "
                             "sends no requests", rid, peer_name(conn))
                    continue
                try:
                    reply = check_reply("sk.serve", handler(payload), max_frame)
                except Exception as exc:
                    book.handler_error(exc, peer_name(conn), True)
                    conn.send(error_text(exc, max_frame), wt, error_id(rid))
                    continue
                book.handled()
                if reply is not None:
                    conn.send(reply, wt, reply_id(rid))
                continue
            try:
                reply = check_reply("sk.serve", handler(msg), max_frame)
            except Exception as exc:
                book.handler_error(exc, peer_name(conn), False)
                raise HandlerFailed(exc) from None
            book.handled()
            if reply is not None:
                conn.send(reply, wt)

    def close(self, timeout: Optional[float] = 2.0) -> None:
        """Stop accepting, close every client connection, join the threads.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
        self._stop.set()
        self._acceptor.join(timeout)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            c.close()
        for t in threads:
            t.join(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._stop.is_set() else f"clients={len(self._conns)}"
        return f"<pysockkit.Server {format_address(self._listener.address)} {state}>"


def serve(
    addr: AddressLike = ("127.0.0.1", 0),
    handler: Optional[Handler] = None,
    framing: Optional[Framing] = None,
    backlog: int = 128,
    *,
    on_connection: Optional[ConnectionHandler] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    max_connections: Optional[int] = None,
) -> Server:
    """Start a threaded framed server on ``addr`` and return it at once.

    ``handler(payload) -> reply | None`` (a plain function; echo by
    default) answers each frame; with ``Framing(correlation=True)`` a
    request's reply carries its id, and a handler that raises answers it
    with an error reply (``sk.RemoteError`` on the client).  Or
    ``on_connection(conn)`` gets each client's :class:`sk.Connection` in
    its thread.  Giving both, an ``async def`` or anything not callable is
    a TypeError.  See :class:`Server` for errors, ``exits`` and the limits
    ``read_timeout``, ``write_timeout`` and ``max_connections`` (all off
    by default).

    Example::

        >>> srv = sk.serve(handler=lambda m: b"pong" if m == b"ping" else m)
        >>> sk.call(srv.address, b"ping", timeout=1.0)
        b'pong'
        >>> srv.close()
        >>> def greet(conn: sk.Connection) -> None:
        ...     conn.send(b"hello " + conn.recv(timeout=5.0))
        >>> with sk.serve(on_connection=greet) as srv:
        ...     sk.call(srv.address, b"you", timeout=1.0)
        b'hello you'
        >>> guarded = sk.serve(read_timeout=30.0, write_timeout=10.0, max_connections=1000)
        >>> guarded.close()
    """
    check_handlers("sk.serve", handler, on_connection, async_ok=False)
    listener = listen(addr, backlog=backlog, framing=framing)
    try:
        return Server(listener, handler, read_timeout, write_timeout, max_connections,
                      on_connection=on_connection)
    except BaseException:  # a bad argument: do not leave the listener open
        listener.close()
        raise
