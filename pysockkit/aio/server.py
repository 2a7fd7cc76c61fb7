"""The aio server: one task per client, the message-handler model of
``sk.serve`` (pysockkit/_handler.py) on an event loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Optional, Union, cast

from .._errors import ConnectionClosed
from .._handler import (
    ExitBook,
    HandlerFailed,
    Reply,
    ServerRecords,
    check_handlers,
    check_reply,
    error_text,
    log,
    peer_address,
    peer_name,
)
from .._net import Address, AddressLike, check_timeout, format_address
from .._reconnect import ConnectionEvent
from .._types import Framing, Heartbeat, Keepalive
from .._wire import ID_REPLY
from ._endpoint import DEFAULT_FRAMING, DEFAULT_RECV_LIMIT, DEFAULT_SEND_LIMIT
from ._events import aiter_events
from .connection import Connection
from .listener import listen_socket

__all__ = ["Server", "serve", "Handler", "ConnectionHandler"]

Handler = Callable[[bytes], Union[Reply, Awaitable[Reply]]]
"""A :func:`serve` message handler: ``handler(payload) -> reply | None``,
a plain function or an ``async def`` one (awaited).

Example::

    async def handler(payload: bytes) -> bytes | None:
        return payload.upper()
"""

ConnectionHandler = Callable[["Connection"], Awaitable[None]]
"""A :func:`serve` ``on_connection`` handler:
``async def on_connection(conn: aio.Connection)``.

Example::

    async def on_connection(conn: aio.Connection) -> None:
        async for msg in conn:
            await conn.send(msg)
"""


def _echo(payload: bytes) -> bytes:
    return payload


class Server(ServerRecords):
    """A running :func:`serve`: one task per client.

    The **message handler** ``handler(payload) -> reply | None`` (plain or
    ``async def``, awaited) is called for every frame a client sends, one
    after the other per client; a reply that is not None goes back as one
    frame, None sends nothing.  With ``Framing(correlation=True)`` a
    request that carries an id is answered with that id (the handler sees
    only the payload) and plain frames with plain frames.  A plain handler
    runs on the event loop: keep it short (or make it ``async`` and
    offload with ``asyncio.to_thread``).  Alternatively
    ``on_connection(conn)`` (``async def``) gets the whole
    :class:`Connection`, in its own task; the connection is closed when it
    returns.

    **A handler that raises** is logged (logger ``"pysockkit"``, ERROR,
    with the traceback) and kept in ``errors``; the other clients are
    served on.  A correlated request gets an error reply that the client
    raises as ``sk.RemoteError``, and its connection goes on; after a
    plain request that client's connection is closed (FIN after the
    replies already queued).  A reply that is not bytes-like or None, or
    over ``max_frame``, counts as the handler raising.

    **Every client's end is recorded** in ``exits`` (an ``sk.ServerExits``
    count per reason: closed, reset, incomplete, too_large, peer_dead,
    handler_error, finished, stopped, ...) and the exceptions of the
    abnormal ones in ``errors`` (the most recent 1,000).  An
    ``on_connection`` handler ending with an ``sk.Error`` is counted by
    that error (``sk.ConnectionClosed``: closed); one returning, as
    finished.  ``served`` counts the messages the handler answered.
    Each client's lifecycle events (``accepted``, then ``lost`` or
    ``closed``) go to ``on_event`` (in the event loop) and to ``async for
    ev in srv.events()``.

    Example::

        async with await aio.serve(("127.0.0.1", 0), handler) as srv:
            print(srv.address)
            await srv.serve_forever()
        print(srv.served, srv.exits.closed, srv.errors)      # 30 3 []
    """

    __slots__ = ("_loop", "_handler", "_on_connection", "_framing", "_hb", "_keepalive",
                 "_limits", "_server", "_tasks", "_conns", "_closed", "_address", "_book")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Optional[Handler],
        on_connection: Optional[ConnectionHandler],
        framing: Framing,
        heartbeat: Optional[Heartbeat],
        keepalive: Optional[Keepalive],
        limits: tuple[int, int],
        on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
    ) -> None:
        """Internal: use :func:`serve`."""
        self._loop = loop
        self._handler: Handler = handler or _echo
        self._on_connection = on_connection
        self._framing = framing
        self._hb = heartbeat
        self._keepalive = keepalive
        self._limits = limits
        self._server: Optional[asyncio.base_events.Server] = None
        self._address: Address = ("", 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[Connection] = set()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._book = ExitBook("aio.serve", on_event)

    def _factory(self) -> asyncio.BaseProtocol:
        conn = Connection(self._loop, self._framing, self._hb, self._keepalive,
                          initiator=False, recv_limit=self._limits[0],
                          send_limit=self._limits[1], on_ready=self._start)
        return conn._proto

    def _start(self, conn: Connection) -> None:
        if self._closed.done():
            conn.abort()
            return
        self._conns.add(conn)
        self._book.accepted(conn.local_address, peer_address(conn), conn)
        task = self._loop.create_task(self._run(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: Connection) -> None:
        exc: Optional[BaseException] = None
        try:
            if self._on_connection is not None:
                await self._on_connection(conn)
            else:
                await self._serve_messages(conn)
        except asyncio.CancelledError:  # close(): the server ends the connection
            exc = ConnectionClosed("the server was closed")
            raise
        except Exception as e:
            exc = e
        finally:
            self._book.ended(exc, self._closed.done(), conn)
            conn.close()
            try:
                await conn.wait_closed()
            except asyncio.CancelledError:  # server closing: don't wait for a slow peer
                conn.abort()
                raise
            finally:
                self._conns.discard(conn)

    async def _serve_messages(self, conn: Connection) -> None:
        """The message loop of one client: batches of frames through the
        handler, replies queued, then one drain (backpressure) a batch.
        Ends with the error that ended the connection (HandlerFailed for a
        plain request whose handler raised)."""
        handler, book = self._handler, self._book
        max_frame = self._framing.max_frame
        correlated = self._framing.correlation
        while True:
            batch = await conn.recv_many()
            answered = 0
            for msg in batch:
                with_id = correlated and msg.__class__ is tuple
                if with_id:
                    rid, payload = cast("tuple[int, bytes]", msg)
                    if rid & ID_REPLY:  # we never ask: a stray reply
                        log.info("aio.serve: dropped a reply frame (id %#x) from %s: a "
                                 "server sends no requests", rid, peer_name(conn))
                        continue
                else:
                    rid, payload = 0, cast(bytes, msg)
                try:
                    r = handler(payload)
                    if r is not None and r.__class__ is not bytes and inspect.isawaitable(r):
                        r = await r
                    reply = check_reply("aio.serve", r, max_frame)
                except Exception as exc:
                    book.handled(answered)
                    answered = 0
                    book.handler_error(exc, peer_name(conn), with_id)
                    if not with_id:
                        raise HandlerFailed(exc) from None
                    conn._reply_error_nowait(rid, error_text(exc, max_frame))
                    continue
                answered += 1
                if reply is not None:
                    if with_id:
                        conn.reply_nowait(rid, reply)
                    else:
                        conn.send_nowait(reply)
            book.handled(answered)
            if conn._w.paused:
                await conn.drain()

    @property
    def address(self) -> Address:
        """(host, port) the server listens on.

        Example::

            >>> srv.address
            ('127.0.0.1', 40123)
        """
        return self._address

    @property
    def connections(self) -> frozenset[Connection]:
        """The client connections being served now.

        Example::

            >>> len(srv.connections)
            2
        """
        return frozenset(self._conns)

    def close(self) -> None:
        """Stop listening, cancel the handlers and close their connections.
        Idempotent; ``await srv.wait_closed()`` waits for the end.

        Example::

            srv.close()
            await srv.wait_closed()
        """
        if self._closed.done():
            return
        self._closed.set_result(None)
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listening socket and every client connection are
        closed (after :meth:`close`).

        Example::

            srv.close()
            await srv.wait_closed()
        """
        await asyncio.shield(self._closed)
        if self._server is not None:
            await self._server.wait_closed()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        conns = list(self._conns)
        if conns:
            await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
        self._book.events.end()

    async def events(self, wait: bool = True,  # type: ignore[override]
                     timeout: Optional[float] = None) -> AsyncIterator[ConnectionEvent]:
        """The clients' lifecycle events, as :meth:`sk.Server.events`
        (``accepted``, ``lost``, ``closed``), for ``async for``; with
        ``wait`` it ends once :meth:`wait_closed` returned (or after
        ``timeout`` seconds without an event).

        Example::

            async for ev in srv.events(wait=False):
                print(ev.kind, ev.details["remote"])
        """
        timeout = check_timeout(timeout)
        async for ev in aiter_events(self._book.events, wait, timeout):
            yield ev

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by :meth:`close` from another
        task); cancelling it closes the server.

        Example::

            await srv.serve_forever()
        """
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            raise

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        if self._server is None or self._closed.done():
            return "<pysockkit.aio.Server closed>"
        return f"<pysockkit.aio.Server {format_address(self.address)} clients={len(self._conns)}>"


async def serve(
    addr: AddressLike,
    handler: Optional[Handler] = None,
    *,
    on_connection: Optional[ConnectionHandler] = None,
    framing: Optional[Framing] = None,
    heartbeat: Optional[Heartbeat] = None,
    keepalive: Optional[Keepalive] = None,
    backlog: int = 128,
    recv_limit: int = DEFAULT_RECV_LIMIT,
    send_limit: int = DEFAULT_SEND_LIMIT,
    on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
) -> Server:
    """Listen on ``addr`` and serve each client in a task; return the
    running :class:`Server` at once.

    ``handler(payload) -> reply | None`` (plain or ``async def``; echo by
    default) answers each frame; with ``Framing(correlation=True)`` a
    request's reply carries its id, and a handler that raises answers it
    with an error reply (``sk.RemoteError`` on the client).  Or
    ``on_connection`` (``async def on_connection(conn)``) gets each
    client's :class:`Connection`; the connection is closed when it
    returns.  Giving both, a non-callable, or a plain function as
    ``on_connection`` is a TypeError.  See :class:`Server` for errors and
    ``exits``.  ``on_event(ev)`` gets each client's lifecycle events
    (``accepted``, ``lost``, ``closed``; see :meth:`Server.events`) in the
    event loop; one that raises is logged and the server goes on.

    Example::

        srv = await aio.serve(("127.0.0.1", 0), lambda m: m.upper())

        async def chat(conn: aio.Connection) -> None:
            await conn.send(b"welcome")
            async for msg in conn:
                await conn.send(b"you said " + msg)

        srv2 = await aio.serve(("127.0.0.1", 0), on_connection=chat)
    """
    check_handlers("aio.serve", handler, on_connection, async_ok=True)
    loop = asyncio.get_running_loop()
    srv = Server(loop, handler, on_connection, framing or DEFAULT_FRAMING, heartbeat,
                 keepalive, (recv_limit, send_limit), on_event)
    sock = listen_socket(addr, backlog)
    srv._address = tuple(sock.getsockname()[:2])
    try:
        srv._server = await loop.create_server(srv._factory, sock=sock, backlog=backlog)
    except BaseException:
        sock.close()
        raise
    return srv
