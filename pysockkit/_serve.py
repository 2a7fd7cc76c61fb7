"""``sk.serve``: one entry for the servers of :mod:`pysockkit._server` (the
C reactor, or a thread per client) and :mod:`pysockkit._workers` (forked
processes sharing the port), which both build on :class:`Server`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from ._conn import listen
from ._handler import check_handlers
from ._net import AddressLike
from ._reconnect import ConnectionEvent
from ._server import ConnectionHandler, Handler, Server, check_limits
from ._types import Framing, Heartbeat
from ._workers import ProcessServer


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
    workers: int = 1,
    heartbeat: Optional[Heartbeat] = None,
    processes: int = 1,
    on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
) -> Server:
    """Start a framed server on ``addr`` and return it at once.

    ``handler(payload) -> reply | None`` (a plain function; echo by
    default) answers each frame; with ``Framing(correlation=True)`` a
    request's reply carries its id, and a handler that raises answers it
    with an error reply (``sk.RemoteError`` on the client).  Or
    ``on_connection(conn)`` gets each client's :class:`sk.Connection` in
    its thread.  Giving both, an ``async def`` or anything not callable is
    a TypeError.  See :class:`Server` for errors, ``exits`` and the limits
    ``read_timeout``, ``write_timeout`` and ``max_connections`` (all off
    by default).  The message handler runs on the C reactor with
    ``workers`` handler threads (default 1; more for handlers that block;
    0 runs a handler that never blocks on the reactor thread itself, the
    fastest);
    ``heartbeat`` (an :class:`sk.Heartbeat`, the clients must use it too)
    answers and sends PINGs and drops a client that fell silent
    (``exits.peer_dead``).  ``processes=N`` forks N worker processes that
    share the port (``SO_REUSEPORT``), each with its own reactor: a
    worker that dies is restarted and reported in ``errors``, and
    ``served``, ``exits`` and ``errors`` sum the workers'; the handler
    must be a message handler (the workers are forks of this process).
    ``on_event(ev)`` gets each client's lifecycle events (``accepted``,
    ``lost``, ``closed``; :class:`sk.ConnectionEvent`, see
    :meth:`Server.events`) in a server thread; one that raises is logged
    and the server goes on.  With ``processes=N`` the events stay in the
    worker that served the client: not given.

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
        >>> pool = sk.serve(handler=lambda m: m, workers=4)   # handlers that block
        >>> pool.close()
        >>> fast = sk.serve(handler=lambda m: m, workers=0)   # on the reactor thread
        >>> fast.close()
        >>> multi = sk.serve(handler=lambda m: m, processes=2)   # two cores
        >>> multi.close()
        >>> watched = sk.serve(on_event=lambda ev: print(ev))   # each client's events
        >>> watched.close()
        >>> with sk.serve() as srv:
        ...     events = srv.events(timeout=1.0)
        ...     sk.call(srv.address, b"hi", timeout=1.0)
        ...     [next(events).kind, next(events).kind]
        b'hi'
        ['accepted', 'lost']
    """
    check_handlers("sk.serve", handler, on_connection, async_ok=False)
    rt, wt = check_limits(read_timeout, write_timeout, max_connections, workers, processes,
                          on_connection)
    if on_event is not None and processes > 1:
        raise ValueError(
            "sk.serve: on_event= is per process and the workers of processes=N are "
            "forks that cannot call back into this process: use processes=1, or "
            "server.exits and server.errors (summed over the workers)")
    if processes > 1:
        return ProcessServer(addr, handler, framing or Framing(), backlog,
                             (rt, wt, max_connections), workers, heartbeat, processes)
    listener = listen(addr, backlog=backlog, framing=framing, heartbeat=heartbeat)
    try:
        return Server(listener, handler, read_timeout, write_timeout, max_connections,
                      on_connection=on_connection, workers=workers, on_event=on_event)
    except BaseException:  # a bad argument: do not leave the listener open
        listener.close()
        raise
