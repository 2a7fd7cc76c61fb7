"""The one server model that sk.serve, aio.serve and simplex.Server share.

Every server calls a *message handler*, ``handler(payload) -> reply | None``:
``payload`` is the request's bytes (never the correlation id), a reply that
is not None goes back as one frame (with the request's id when the request
carried one), None sends nothing.  sk.serve and aio.serve also take
``on_connection=``, a handler that gets the whole connection.

This module keeps what the servers must do the same way:

* checking the handlers at the call (a misuse is a TypeError at once);
* checking a reply (bytes-like, at most max_frame) and turning a handler's
  exception into the error reply of a correlated request (id | ID_REPLY |
  ID_ERROR, payload "ExcType: message"; the id bits come from the C core);
* logging a handler's exception (logger "pysockkit", ERROR, traceback);
* recording why each client connection ended (:class:`ServerExits`) and the
  exceptions of the abnormal ends (``server.errors``);
* the threaded accept loop (:func:`accept_loop`) of sk.serve and simplex.Server.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional, Union

from ._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    FrameTooLarge,
    IncompleteFrame,
    PeerDead,
    Timeout,
)
from ._net import check_timeout, format_address
from ._reconnect import ConnectionEvent, EventLog, EventReader

if TYPE_CHECKING:
    from ._conn import Connection, Listener

__all__ = ["ServerExits"]

# No NullHandler on purpose: a handler that raises in a server must not
# vanish when the program has not configured logging (Python's last-resort
# handler then prints it on stderr, as asyncio does with its own errors).
log = logging.getLogger("pysockkit")

Reply = Optional[Union[bytes, bytearray, memoryview]]
MAX_ERROR_TEXT = 1024  # bytes of an error reply's text, at most
ERRORS_KEPT = 1000  # server.errors keeps the most recent this many

_BUFFERS = (bytes, bytearray, memoryview)


def is_async(fn: Any) -> bool:
    """True for an ``async def`` function, a partial of one, or an object
    whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def check_handlers(where: str, handler: Any, on_connection: Any, *, async_ok: bool) -> None:
    """TypeError at once for what can be told wrong at the call.

    ``async_ok``: the server awaits an ``async def`` message handler (aio,
    simplex); sk.serve runs handlers in threads and refuses them.  An
    aio ``on_connection`` must be ``async def``; a threaded one must not.
    """
    if handler is not None and on_connection is not None:
        raise TypeError(
            f"{where}: give a message handler (handler=, called with each payload) or "
            "on_connection= (called with each connection), not both")
    if handler is not None:
        if not callable(handler):
            raise TypeError(
                f"{where}: handler must be callable as handler(payload) -> reply or None, "
                f"not {type(handler).__name__}")
        if not async_ok and is_async(handler):
            raise TypeError(
                f"{where}: handler is an async function, but sk.serve runs handlers in "
                "threads and would never await it; use pysockkit.aio.serve for async "
                "handlers, or make it a plain function")
    if on_connection is not None:
        if not callable(on_connection):
            raise TypeError(
                f"{where}: on_connection must be callable with the connection, "
                f"not {type(on_connection).__name__}")
        if async_ok and not is_async(on_connection):
            raise TypeError(
                f"{where}: on_connection must be an async function "
                "(async def on_connection(conn: aio.Connection) -> None); for a "
                "plain function of each payload pass it as handler=")
        if not async_ok and is_async(on_connection):
            raise TypeError(
                f"{where}: on_connection is an async function, but sk.serve calls it in "
                "the client's thread and would never await it; use pysockkit.aio.serve "
                "for async handlers")


def check_reply(where: str, reply: Any, max_frame: int) -> Reply:
    """The handler's result as a reply to send, or None (send nothing).
    TypeError for anything but bytes-like or None; FrameTooLarge for a reply
    over max_frame (nothing of it is sent)."""
    if reply is None or reply.__class__ is bytes and len(reply) <= max_frame:
        return reply
    if not isinstance(reply, _BUFFERS):
        hint = ""
        if inspect.isawaitable(reply):
            hint = (" (sk.serve does not await: use pysockkit.aio.serve)" if where == "sk.serve"
                    else " (declare the handler with async def so that it is awaited)")
        if inspect.iscoroutine(reply):
            reply.close()  # no "never awaited" warning on top of this error
        raise TypeError(
            f"{where}: the handler returned {type(reply).__name__}{hint}; return the reply "
            "as bytes, or None to send nothing")
    size = memoryview(reply).nbytes
    if size > max_frame:
        raise FrameTooLarge(
            f"{where}: the handler's reply of {size} bytes exceeds max_frame "
            f"({max_frame}); nothing of it was sent: return a shorter reply or raise "
            "max_frame on both peers")
    return reply


def _cut(text: str, limit: int) -> bytes:
    """text as UTF-8 in at most limit bytes, cut at a space (never
    mid-word, never mid-character) and marked with '...'."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    head = raw[: max(0, limit - 4)].decode("utf-8", "ignore")
    space = head.rfind(" ")
    if space > 0:
        head = head[:space]
    return (head + " ...").encode("utf-8")[:limit]


def error_text(exc: BaseException, max_frame: int) -> bytes:
    """The payload of an error reply: "ExcType: message", at most
    MAX_ERROR_TEXT bytes and max_frame."""
    return _cut(f"{type(exc).__name__}: {exc}", min(MAX_ERROR_TEXT, max_frame))


class HandlerFailed(Exception):
    """Internal: the message handler raised on a plain (uncorrelated)
    request; the server records ``exc`` and closes that client."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


# ---------------------------------------------------------------- exits


@dataclass(frozen=True)
class ServerExits:
    """How the client connections of a server ended: a count per reason
    (``server.exits``, a snapshot).  Every connection a server accepted
    ends in exactly one of them; the exceptions of the abnormal ends
    (reset, incomplete, too_large, timeout, peer_dead, handler_error,
    other) are also in ``server.errors``.

    * ``closed``: the client closed cleanly (FIN between frames);
    * ``reset``: the client reset the connection (RST; ``sk.ConnectionReset``);
    * ``incomplete``: the stream ended inside a frame (``sk.IncompleteFrame``);
    * ``too_large``: a header announced more than max_frame (``sk.FrameTooLarge``);
    * ``timeout``: sk.serve's ``read_timeout``/``write_timeout`` passed, or an
      ``sk.Timeout`` ended an ``on_connection`` handler;
    * ``peer_dead``: heartbeats stopped (``sk.PeerDead``);
    * ``handler_error``: the message handler raised on a plain request, or
      the ``on_connection`` handler raised something other than an sk.Error;
    * ``finished``: the ``on_connection`` handler returned;
    * ``stopped``: ``server.close()`` ended the connection;
    * ``rejected``: turned away by ``max_connections`` (reset at once);
    * ``other``: any other ``sk.Error`` (a socket error).

    Example::

        with sk.serve() as srv:
            sk.call(srv.address, b"hi", timeout=1.0)
        print(srv.exits.closed, srv.exits.total)      # 1 1
    """

    closed: int = 0
    reset: int = 0
    incomplete: int = 0
    too_large: int = 0
    timeout: int = 0
    peer_dead: int = 0
    handler_error: int = 0
    finished: int = 0
    stopped: int = 0
    rejected: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """Connections that ended, for any reason.

        Example::

            >>> srv.exits.total
            3
        """
        return sum(getattr(self, f.name) for f in fields(self))


_REASONS = tuple(f.name for f in fields(ServerExits))
_NORMAL = frozenset({"closed", "finished", "stopped", "rejected"})
# the ends this side chose: event "closed" (the others: "lost")
_CLOSED_HERE = frozenset({"finished", "stopped"})


def exit_reason(exc: Optional[BaseException], stopping: bool) -> str:
    """The ServerExits field for a connection that ended with exc (None:
    an on_connection handler returned)."""
    if exc is None:
        return "finished"
    if isinstance(exc, HandlerFailed):
        return "handler_error"
    if not isinstance(exc, Error):
        return "handler_error"
    if stopping:
        return "stopped"
    if isinstance(exc, ConnectionReset):
        return "reset"
    if isinstance(exc, ConnectionClosed):
        return "closed"
    if isinstance(exc, IncompleteFrame):
        return "incomplete"
    if isinstance(exc, FrameTooLarge):
        return "too_large"
    if isinstance(exc, Timeout):
        return "timeout"
    if isinstance(exc, PeerDead):
        return "peer_dead"
    return "other"


class ExitBook:
    """A server's record of its clients: the exit counts, ``errors`` (the
    most recent ERRORS_KEPT exceptions) and ``served`` (messages handled).
    Thread-safe."""

    __slots__ = ("_lock", "_n", "errors", "served", "_where", "events", "_remotes")

    def __init__(self, where: str,
                 on_event: Optional[Callable[[ConnectionEvent], Any]] = None) -> None:
        self._lock = threading.Lock()
        self._n = dict.fromkeys(_REASONS, 0)
        self.errors: list[BaseException] = []
        self.served = 0
        self._where = where
        # the clients' lifecycle events (accepted, lost, closed); ended by
        # the server's close, not by one client's "closed"
        self.events = EventLog(on_event, ends_on_closed=False)
        # id(connection) -> its peer, taken at accept: a reset socket no
        # longer has one to ask for when its end is recorded
        self._remotes: dict[int, Any] = {}

    def accepted(self, local: Any, remote: Any, conn: Any = None) -> None:
        """A client was accepted: its ``accepted`` event (``conn``: the
        connection object that :meth:`ended` will get, if any)."""
        if conn is not None:
            with self._lock:
                self._remotes[id(conn)] = remote
        self.events.emit("accepted", local=local, remote=remote)

    def _keep(self, exc: BaseException) -> None:
        errors = self.errors
        errors.append(exc)
        if len(errors) > ERRORS_KEPT:
            del errors[: len(errors) - ERRORS_KEPT]

    def handled(self, n: int = 1) -> None:
        """n messages went through the handler."""
        with self._lock:
            self.served += n

    def handled_alone(self, n: int) -> None:
        """handled(), for a server whose one handler thread is the only one
        that counts (sk.serve with workers 0 or 1): no lock, readers see
        the old or the new count (a lock per batch was ~5 % of a
        one-message batch's cost)."""
        self.served += n

    def handler_error(self, exc: BaseException, peer: str, correlated: bool) -> None:
        """The message handler raised: log it and keep it in errors (a
        plain request's connection then ends as handler_error, see
        ended())."""
        what = ("answered with an error reply (the client raises sk.RemoteError)"
                if correlated else "closing that client's connection (plain framing "
                "has no error reply)")
        log.error("%s: the handler raised on a request from %s; %s", self._where, peer,
                  what, exc_info=(type(exc), exc, exc.__traceback__))
        if correlated:
            with self._lock:
                self._keep(exc)

    def error(self, exc: BaseException) -> None:
        """Keep an error that is no client's end (accept failed)."""
        with self._lock:
            self._keep(exc)

    def ended(self, exc: Optional[BaseException], stopping: bool, conn: Any) -> str:
        """Record how the client connection conn ended; returns the reason."""
        reason = exit_reason(exc, stopping)
        if isinstance(exc, HandlerFailed):
            exc = exc.exc
        elif reason == "handler_error" and exc is not None:
            log.error("%s: the on_connection handler raised for %s", self._where,
                      peer_name(conn), exc_info=(type(exc), exc, exc.__traceback__))
        elif reason not in _NORMAL and log.isEnabledFor(logging.INFO):
            log.info("%s: client %s ended: %s: %s", self._where, peer_name(conn),
                     type(exc).__name__, exc)
        with self._lock:
            self._n[reason] += 1
            if reason not in _NORMAL and exc is not None:
                self._keep(exc)
            remote = self._remotes.pop(id(conn), None)
        if remote is None:
            remote = peer_address(conn)
        if reason in _CLOSED_HERE:
            self.events.emit("closed", remote=remote, reason=reason)
        else:
            self.events.emit("lost", remote=remote, reason=reason, exception=exc)
        return reason

    def rejected(self) -> None:
        with self._lock:
            self._n["rejected"] += 1

    def snapshot(self) -> ServerExits:
        with self._lock:
            return ServerExits(**self._n)


class ServerRecords:
    """What sk.Server and aio.Server report the same way: ``errors``,
    ``exits`` and ``served``, read from the server's ExitBook (``_book``)."""

    __slots__ = ()
    _book: ExitBook

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions of the handler and of the clients that ended
        abnormally (see :class:`sk.ServerExits`), oldest first; the most
        recent 1,000 are kept.

        Example::

            >>> [type(e).__name__ for e in srv.errors]
            ['IncompleteFrame', 'ValueError']
        """
        return self._book.errors

    @property
    def exits(self) -> ServerExits:
        """How the client connections ended so far: a count per reason
        (a :class:`sk.ServerExits` snapshot).

        Example::

            >>> srv.exits.closed, srv.exits.total
            (3, 4)
        """
        return self._book.snapshot()

    @property
    def served(self) -> int:
        """Messages the handler handled without raising (those it answered
        with None included).

        Example::

            >>> srv.served
            12
        """
        return self._book.served

    def events(self, wait: bool = True, timeout: Optional[float] = None) -> EventReader:
        """Iterate over the clients' lifecycle events
        (:class:`sk.ConnectionEvent`): ``accepted`` (``local``,
        ``remote``), ``lost`` (``remote``, ``reason``: the
        :class:`sk.ServerExits` reason, ``exception``: its error or None)
        and ``closed`` (``remote``, ``reason``: ``stopped`` by close(), or
        ``finished`` when ``on_connection`` returned), from the oldest
        kept (the last 1,000; ``dropped`` counts those a reader missed).
        ``wait=True`` waits for more and ends once the server is closed
        (or after ``timeout`` seconds without an event); ``wait=False``
        ends when caught up.

        Example::

            for ev in srv.events(wait=False):
                print(ev.kind, ev.details["remote"], ev.details.get("reason"))
        """
        timeout = check_timeout(timeout)
        return self._book.events.reader(wait, timeout)


def accept_loop(listener: "Listener[Any]", stopping: Callable[[], bool],
                take: "Callable[[Connection[Any]], bool]", failed: Callable[[Error], None],
                poll: Optional[float] = None) -> None:
    """The accept loop of a threaded server: accept clients on *listener*
    until ``stopping()`` is true, and hand each one to ``take(conn)``,
    which returns False to end the loop.  An accept that fails (EMFILE, ...)
    goes to ``failed(exc)`` unless the server is stopping.  With *poll*
    (seconds) ``stopping()`` is checked at least that often; without, the
    server's close() closes the listener, which wakes the accept.

    Example::

        threading.Thread(target=accept_loop, args=(listener, stop.is_set, start_client,
                                                   log_error, 0.1)).start()
    """
    while not stopping():
        try:
            conn = listener.accept(timeout=poll)
        except Timeout:
            continue
        except Error as exc:
            if stopping():
                return
            failed(exc)
            continue
        if not take(conn):
            return


def peer_address(conn: Any) -> Any:
    """(host, port) of a connection's peer, or None when the socket no
    longer knows it (reset)."""
    try:
        return conn.remote_address
    except (OSError, AttributeError, ValueError, IndexError):
        return None


def peer_name(conn: Any) -> str:
    """"host:port" of a connection's peer, for messages."""
    addr = peer_address(conn)
    try:
        return format_address(addr) if addr is not None else "a client"
    except (ValueError, IndexError, TypeError):
        return "a client"


AsyncHandler = Callable[[bytes], Union[Reply, Awaitable[Reply]]]
