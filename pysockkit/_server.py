"""sk.serve: a framed server whose message handler runs on the C reactor.

The message-handler form runs on the server reactor of the C core
(csrc/server.h): one C thread accepts, reads, decodes, enforces the limits
and writes for every client; the handler runs on ``workers`` Python threads
that take the messages in batches (every message that became ready in one
reactor turn, in one GIL acquisition) and hand the replies back the same
way.  Thread count does not grow with the clients.  The ``on_connection``
form keeps a thread per client (it gets a blocking sk.Connection).  The
handler model (message handler or on_connection, error replies, exit
reasons) is shared with aio.serve and simplex.Server: pysockkit/_handler.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from . import _core
from ._conn import Address, Connection, Listener
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
    peer_address,
)
from ._net import check_timeout, format_address
from ._reconnect import ConnectionEvent
from ._types import Heartbeat
from ._wire import error_id, reply_id

__all__ = ["Server", "Handler", "ConnectionHandler"]

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


def _check_count(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, not {v!r}")


def check_limits(read_timeout: Optional[float], write_timeout: Optional[float],
                 max_connections: Optional[int], workers: int, processes: int,
                 on_connection: Any) -> tuple[Optional[float], Optional[float]]:
    """sk.serve's limits checked (ValueError/TypeError at the call);
    returns the timeouts as floats or None."""
    read_timeout = check_timeout(read_timeout, "read_timeout")
    write_timeout = check_timeout(write_timeout, "write_timeout")
    for name, v in (("read_timeout", read_timeout), ("write_timeout", write_timeout)):
        if v == 0:
            raise ValueError(f"{name} must be > 0 seconds or None, not 0")
    if max_connections is not None and max_connections < 1:
        raise ValueError(f"max_connections must be >= 1 or None, not {max_connections!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0: the handler runs on the "
                         f"reactor thread), not {workers!r}")
    _check_count("processes", processes)
    if on_connection is not None and (workers != 1 or processes != 1):
        raise ValueError(
            "workers= and processes= apply to the message handler; on_connection already "
            "runs in a thread per client: leave them at 1")
    return read_timeout, write_timeout


class _Peer:
    """A client the reactor holds, as ``server._conns`` lists it and the
    exit records name it: only its ``remote_address``."""

    __slots__ = ("remote_address", "__weakref__")

    def __init__(self, remote_address: tuple[str, int]) -> None:
        self.remote_address = remote_address


_NO_PEER = ("", -1)
# an event of a reactor batch: (client id, kind, error, peer)
_Event = tuple[int, int, Optional[BaseException], Optional[tuple[str, int]]]


class Server(ServerRecords):
    """A framed server.  Made by :func:`serve`.

    The **message handler** ``handler(payload) -> reply | None`` is called
    for every frame a client sends; a reply that is not None goes back as
    one frame, None sends nothing.  It runs on the C reactor: one C thread
    serves every client (accept, read, decode, limits, write) and the
    handler runs on ``workers`` threads (default 1), which take the
    messages in batches; 10,000 clients cost no more threads than one.
    Each client's plain requests are answered in order, whatever the
    number of workers.  With ``Framing(correlation=True)`` a request that
    carries an id is answered with that id (``id | REPLY``,
    docs/PROTOCOL.md), as soon as its handler returns; the handler still
    sees only the payload, and plain frames on the same connection are
    answered with plain frames.  A handler that blocks holds its worker:
    with ``workers=1`` the other clients' messages wait for it (they are
    still read, up to a bound per client), with ``workers=N`` N handlers
    run at once.  ``workers=0`` runs the handler on the reactor's own
    thread (one thread in all, no hand-over between two threads per
    batch: the fastest for a handler that never blocks); while a handler
    runs, no client is read or written.  Alternatively ``on_connection(conn)`` gets the whole
    :class:`sk.Connection` in a thread of its own (one thread a client;
    the connection is closed when it returns).

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
    Each client's lifecycle events (``accepted``, then ``lost`` or
    ``closed``; :class:`sk.ConnectionEvent`) go to ``on_event`` and to
    :meth:`events`; the reactor reports them in the batches it already
    hands to the handler threads.

    Limits (all off by default): ``read_timeout`` is how long a client may
    take to deliver each whole frame, counted from when the server starts
    waiting for it (so an idle client and a slowloris client that dribbles
    bytes are both dropped); ``write_timeout`` bounds how long a reply may
    wait for the client to read (a client that never reads is dropped once
    its window stayed full that long); ``max_connections`` caps the
    clients served at once, and a client over the cap is reset at once.
    A timed-out client is aborted (RST) and its ``sk.Timeout`` is
    recorded; ``rejected`` counts the clients turned away by the cap.  A
    client whose requests in progress and unsent replies exceed 1 MiB is
    not read until they drain, so memory per client stays bounded.  The
    listener's ``keepalive`` (``sk.listen(..., keepalive=)``) is set on
    every client it accepts.

    Example::

        with sk.serve(("127.0.0.1", 0), lambda m: m.upper()) as srv:
            print(sk.call(srv.address, b"hi", timeout=1.0))   # b'HI'
        print(srv.served, srv.exits.closed, srv.errors)        # 1 1 []
    """

    def __init__(self, listener: Listener, handler: Optional[Handler] = None,
                 read_timeout: Optional[float] = None,
                 write_timeout: Optional[float] = None,
                 max_connections: Optional[int] = None,
                 *, on_connection: Optional[ConnectionHandler] = None,
                 workers: int = 1,
                 on_event: Optional[Callable[[ConnectionEvent], Any]] = None) -> None:
        check_handlers("sk.serve", handler, on_connection, async_ok=False)
        read_timeout, write_timeout = check_limits(read_timeout, write_timeout, max_connections,
                                                   workers, 1, on_connection)
        self._listener = listener
        self._handler: Handler = handler or _echo
        self._on_connection = on_connection
        self._corr = listener.framing.correlation
        self._max_frame = listener.framing.max_frame
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_conns = max_connections
        self._book = ExitBook("sk.serve", on_event)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # each leaves it when done
        self._core: Optional[_core.Server] = None
        self._inline = workers == 0  # the handler thread runs the reactor's turns
        self._one_thread = workers <= 1  # one handler thread: it alone counts served
        self._handler_failed: dict[int, BaseException] = {}  # client id -> its error
        # the order of each client's events across handler threads (which
        # take batches in order but may record them out of order): the
        # clients whose "accepted" was emitted, and those whose "accepted"
        # was emitted with their end because that came first
        self._announced: set[int] = set()
        self._early_end: set[int] = set()
        if on_connection is not None:
            self._threaded: set[Connection] = set()
            self._acceptor = threading.Thread(
                target=accept_loop, args=(listener, self._stop.is_set, self._take,
                                          self._accept_failed, _POLL),
                name="pysockkit-accept", daemon=True)
            self._acceptor.start()
            return
        f = listener.framing
        hb: Optional[Heartbeat] = listener._heartbeat
        self._core = _core.Server(
            listener.fileno(), f.header_size, f.byteorder, f.max_frame, f.correlation,
            read_timeout or 0.0, write_timeout or 0.0, max_connections or 0,
            hb.interval if hb is not None else 0.0, hb.timeout if hb is not None else 0.0,
            keepalive=ka._args() if (ka := listener._keepalive) is not None else None,
            inline=self._inline)
        for i in range(max(workers, 1)):
            t = threading.Thread(target=self._work, name=f"pysockkit-handler-{i}", daemon=True)
            self._threads.add(t)
            t.start()

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

    @property
    def _conns(self) -> "list[Any]":
        """The clients held now (for tests and tools; O(clients)): their
        connections (on_connection), or objects with ``remote_address``
        (the reactor; a client leaves only after its end was recorded)."""
        if self._core is None:
            with self._lock:
                return list(self._threaded)
        return [_Peer(("", port)) for port in self._core.ports()]

    # ------------------------------------------------------ the reactor form

    def _peer_name(self, cid: int) -> str:
        assert self._core is not None
        peer = self._core.peer(cid)
        return format_address(peer) if peer is not None else "a client"

    def _work(self) -> None:
        """A handler thread: take a batch, run the handler on each message,
        hand the answers back in one call, record the ends.  With
        ``workers=0`` this thread also runs the reactor (inside
        ``handle_batch``), so it closes the listener once the reactor is done:
        no turn may accept on a closed (or reused) descriptor."""
        try:
            self._handle_batches()
        finally:
            if self._inline:
                self._listener.close()

    def _handle_batches(self) -> None:
        core = self._core
        assert core is not None
        handle_batch, book, max_frame = core.handle_batch, self._book, self._max_frame
        handler, accepts = self._handler, self._accepts
        count = book.handled_alone if self._one_thread else book.handled
        while True:
            # the C loop of the binding: the batch's accepts (announced
            # first), the handler on each message, the bytes/None replies
            # handed back in one call; the rest is settled here
            got = handle_batch(handler, max_frame, accepts, None)
            if got is None:
                return
            handled, rest, events = got
            if rest:
                handled += self._settle(rest)
            if handled:
                count(handled)
            if events:
                self._record(events)

    def _settle(self, rest: "list[tuple[int, int, Optional[int], Any, int]]") -> int:
        """Answer the messages the C loop left: a stray reply frame
        (``_core.REST_STRAY``), a handler that raised (``REST_RAISED``), a
        reply that is not bytes or is too long (``REST_ODD``: any
        bytes-like is sent; anything else counts as raising).
        Returns how many were handled."""
        assert self._core is not None
        book, max_frame = self._book, self._max_frame
        answers: list[tuple[int, int, Optional[int], Reply]] = []
        handled = 0
        for cid, ticket, rid, outcome, why in rest:
            if why == _core.REST_STRAY:  # we never ask
                log.info("sk.serve: dropped a reply frame (id %#x) from %s: a server "
                         "sends no requests", rid, self._peer_name(cid))
                answers.append((cid, ticket, None, None))
                continue
            if why == _core.REST_ODD:
                try:
                    reply = check_reply("sk.serve", outcome, max_frame)
                except BaseException as exc:  # recorded as the handler's error below
                    outcome = exc
                else:
                    handled += 1
                    answers.append((cid, ticket, None if rid is None else reply_id(rid),
                                    None if reply is None else bytes(reply)))
                    continue
            if rid is not None:  # correlated: an error reply, the connection goes on
                book.handler_error(outcome, self._peer_name(cid), True)
                answers.append((cid, ticket, error_id(rid), error_text(outcome, max_frame)))
            else:  # plain: close that client after the replies before it
                book.handler_error(outcome, self._peer_name(cid), False)
                self._handler_failed[cid] = outcome
                answers.append((cid, ticket, -1, None))
        self._core.reply_batch(answers)
        return handled

    def _accepts(self, events: "list[_Event]") -> "list[_Event]":
        """Emit the ``accepted`` events of a batch; returns the others."""
        rest: list[_Event] = []
        for ev in events:
            if ev[1] != _core.ACCEPTED:
                rest.append(ev)
                continue
            with self._lock:
                if ev[0] in self._early_end:  # announced with its end already
                    self._early_end.discard(ev[0])
                    continue
                self._announced.add(ev[0])
            self._book.accepted(self._listener.address, ev[3])  # local: the listener's
        return rest

    def _record(self, events: "list[_Event]") -> None:
        """Record the ends the reactor reported, then let their slots go
        (a client leaves ``_conns`` only once its end is recorded)."""
        assert self._core is not None
        book, gone = self._book, []
        for cid, kind, exc, peer in events:
            if kind == _core.END_REJECTED:
                book.rejected()
                continue
            if kind == _core.END_FAILED:
                if isinstance(exc, Error):
                    self._accept_failed(exc)
                continue
            with self._lock:
                early = cid not in self._announced
                if early:  # its accept is in a batch another thread still holds
                    self._early_end.add(cid)
                self._announced.discard(cid)
            if early:
                book.accepted(self._listener.address, peer)
            failed = self._handler_failed.pop(cid, None)
            book.ended(HandlerFailed(failed) if failed is not None else exc,
                       kind == _core.END_STOPPED, _Peer(peer or _NO_PEER))
            gone.append(cid)
        if gone:
            self._core.forget(gone)

    # ------------------------------------------------- the on_connection form

    def _accept_failed(self, exc: Error) -> None:
        log.warning("sk.serve: accept failed: %s", exc)
        self._book.error(exc)

    def _take(self, conn: Connection) -> bool:
        """A client the accept loop got: serve it in its own thread (False:
        the server is stopping, end the loop)."""
        with self._lock:
            if self._stop.is_set():
                conn.close()
                return False
            if self._max_conns is not None and len(self._threaded) >= self._max_conns:
                self._book.rejected()
                conn.abort()  # RST: the client learns at once
                return True
            self._threaded.add(conn)
            t = threading.Thread(target=self._serve_one, args=(conn,), name="pysockkit-conn",
                                 daemon=True)
            self._threads.add(t)
        # outside the lock (on_event may call the server); before the
        # thread starts, so before its end
        self._book.accepted(conn.local_address, peer_address(conn), conn)
        t.start()
        return True

    def _serve_one(self, conn: Connection) -> None:
        assert self._on_connection is not None
        exc: Optional[BaseException] = None
        try:
            self._on_connection(conn)
        except BaseException as e:  # recorded below; only Exception is swallowed
            exc = e
            if not isinstance(e, Exception):
                raise
        finally:
            # recorded before the connection leaves _threaded: whoever sees
            # it gone sees its reason too
            reason = self._book.ended(exc, self._stop.is_set(), conn)
            with self._lock:
                self._threaded.discard(conn)
            if reason == "timeout":
                conn.abort()  # a half-sent reply or a dribbling client: RST
            else:
                conn.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self, timeout: Optional[float] = 2.0) -> None:
        """Stop accepting, close every client connection, join the threads.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
        self._stop.set()
        if self._core is not None:
            # every client closed and reported; a turn at most (workers=0:
            # the handler thread does it, then closes the listener)
            self._core.stop()
            if not self._inline:
                self._listener.close()
            threads = list(self._threads)
        else:
            self._acceptor.join(timeout)
            self._listener.close()
            with self._lock:
                conns = list(self._threaded)
                threads = list(self._threads)
            for c in conns:
                c.close()
        me = threading.current_thread()
        for t in threads:
            if t is not me:  # close() called by a handler: its own thread ends after it
                t.join(timeout)
        self._book.events.end()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._stop.is_set() else f"clients={len(self._conns)}"
        return f"<pysockkit.Server {format_address(self._listener.address)} {state}>"

