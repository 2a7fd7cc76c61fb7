"""Connections, listeners and short connections over the C core.

``Connection`` subclasses the C type ``_core.Connection``: send/recv and friends
are C methods called directly, with no Python frame in between.  This module
adds what needs no speed: address handling, context management, shutdown
names, TCP_INFO access and ``repr``.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import import_module
from types import TracebackType

from . import _core
from ._errors import ConnectionClosed, Error, Timeout
from ._net import Address, AddressLike, check_timeout, format_address, resolve
from ._types import Framing, Heartbeat, Keepalive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generic, Optional, Union, overload

    from ._typevars import M
else:
    from ._notyping import Generic, overload

    M = None  # Generic[M] is the run-time stand-in base
if TYPE_CHECKING:
    from concurrent.futures import Future

    from ._duplex import Duplex
    from ._enums import TcpState
    from ._observe import TcpInfo
    from ._reconnect import ConnectionEvent, Reconnect
    from ._redial import ReconnectingConnection

__all__ = ["Connection", "Listener", "connect", "listen", "call", "Address", "AddressLike"]

_DEFAULT_FRAMING: "Framing[Any]" = Framing()
_START_LOCK = threading.RLock()  # starting receive workers (rare, short)
# sk.connect(..., reconnect=): _redial.connect_reconnecting, registered by
# _redial when pysockkit is imported (_redial builds on this module)
_reconnecting: "Optional[Callable[..., ReconnectingConnection[Any]]]" = None
_SHUT = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR}


class Connection(_core.Connection, Generic[M]):
    """A framed TCP connection.  Make one with :func:`connect` or
    :meth:`Listener.accept`.

    Every message is one frame ``[length][payload]`` (see
    ``docs/PROTOCOL.md``).  ``send``/``recv``/``send_many``/``recv_many``/
    ``request``/``flush`` are implemented in C and release the GIL while
    they wait; one thread may send while another receives, and frames sent
    by several threads never interleave.  Every blocking call takes a
    ``timeout`` in seconds (None waits forever, Ctrl-C still works); a
    timeout loses no byte and leaves the connection usable.

    ``conn.write_behind = True`` (or ``sk.connect(..., write_behind=True)``)
    makes ``send`` queue small frames and write them in batches: at 64 KiB,
    about 50 µs after the first (a flusher thread), and before ``flush``,
    ``recv``, ``recv_many``, ``request``, ``send_many`` and ``close``; see
    docs/PROTOCOL.md, "Write-behind".

    For type checkers it is generic in what ``recv`` returns:
    ``sk.connect(addr)`` is a ``Connection[bytes]``, a connection with
    ``Framing(correlation=True)`` a ``Connection[sk.Message]`` (plain
    frames as ``bytes``, correlated requests as ``(id, payload)``); a bare
    ``sk.Connection`` annotation means ``Connection[Any]``.

    Example::

        with sk.connect(srv.address) as conn:
            conn.send(b"hello")
            print(conn.recv(timeout=1.0))
    """

    __slots__ = ("_framing", "_hb", "_duplex")

    if TYPE_CHECKING:
        # the C methods, typed by the framing (see the class docstring)
        def recv(self, timeout: Optional[float] = None) -> M: ...
        def recv_many(self, max_frames: Optional[int] = 4096,
                      timeout: Optional[float] = None) -> list[M]: ...

    def __init__(
        self,
        fd: int,
        framing: "Framing[M]" = _DEFAULT_FRAMING,
        heartbeat: Optional[Heartbeat] = None,
        keepalive: Optional[Keepalive] = None,
        *,
        initiator: bool = True,
    ) -> None:
        super().__init__(
            fd,
            framing.header_size,
            framing.byteorder,
            framing.max_frame,
            heartbeat is not None,
            framing.correlation,
        )
        self._framing = framing
        self._hb = heartbeat
        self._duplex: Optional["Duplex"] = None
        try:
            if keepalive is not None:
                keepalive.apply(fd)
            if heartbeat is not None:
                self._start_heartbeat(heartbeat.interval, heartbeat.timeout, initiator)
        except BaseException:
            self.close()
            raise

    @property
    def heartbeat(self) -> Optional[Heartbeat]:
        """The :class:`Heartbeat` settings, or None when heartbeats are off.

        Example::

            >>> conn.heartbeat
            Heartbeat(interval=1.0, timeout=3.0)
        """
        return self._hb

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`Framing` of this connection.

        Example::

            >>> conn.framing.header_size
            4
        """
        return self._framing

    @property
    def local_address(self) -> Address:
        """(host, port) of this end.

        Example::

            >>> conn.local_address
            ('127.0.0.1', 51234)
        """
        return self._query("sockname")  # type: ignore[no-any-return]

    @property
    def remote_address(self) -> Address:
        """(host, port) of the peer.

        Example::

            >>> conn.remote_address
            ('127.0.0.1', 9000)
        """
        return self._query("peername")  # type: ignore[no-any-return]

    def shutdown(self, how: str = "write", timeout: Optional[float] = None) -> None:
        """Half-close.  ``"write"`` sends FIN after anything pending and keeps
        reading (the peer's ``recv`` raises ``sk.ConnectionClosed`` after our
        last frame); ``"read"`` stops receiving; ``"both"`` does both.

        Example::

            conn.send(b"last")
            conn.shutdown("write")
            reply = conn.recv()        # the peer can still answer
        """
        try:
            code = _SHUT[how]
        except KeyError:
            raise ValueError(f"how must be 'read', 'write' or 'both', not {how!r}") from None
        self._shutdown(code, timeout)

    def start_receiver(
        self,
        on_message: Optional[Callable[[Any], None]] = None,
        maxsize: int = 10_000,
    ) -> "Duplex":
        """Asynchronous duplex: start a receive worker (a C thread that
        waits without the GIL) and return the :class:`Duplex` handle.
        Replies resolve the futures of :meth:`request_async` (matched by
        id with ``Framing(correlation=True)``, in order on plain framing);
        other frames go to ``on_message`` or a bounded queue
        (``duplex.get()``).  From then on ``recv``/``recv_many``/``request``
        raise: the worker owns the receive side.

        Example::

            d = conn.start_receiver(on_message=print)
            fut = d.request_async(b"hello", timeout=1.0)
        """
        from ._duplex import Duplex

        with _START_LOCK:
            if self._duplex is not None:
                raise RuntimeError("the receive worker already runs (conn.duplex)")
            self._duplex = Duplex(self, on_message, maxsize)
        return self._duplex

    @property
    def duplex(self) -> Optional["Duplex"]:
        """The :class:`Duplex` handle once a receive worker runs, else None."""
        return self._duplex

    def request_async(
        self, data: Union[bytes, bytearray, memoryview], timeout: Optional[float] = None
    ) -> "Future[bytes]":
        """Send a request and return a ``concurrent.futures.Future`` for its
        reply; many may be in flight.  With ``Framing(correlation=True)`` on
        both peers replies are matched by id and may come in any order; on
        plain framing they are matched in order, as :meth:`request` does
        (a late reply is dropped, never given to a later request; see
        ``sk.OutOfStep`` for a peer that drops requests).  Starts the
        receive worker on first use.  The future is a
        ``pysockkit._duplex.Future``, settled by the worker in C without the
        GIL; the request is queued and written by the worker with the
        others (see :meth:`Duplex.request_async`).

        Example::

            futs = [conn.request_async(b"%d" % i, timeout=2.0) for i in range(100)]
            print([f.result() for f in futs][:3])
        """
        d = self._duplex
        if d is None:
            with _START_LOCK:  # two threads' first requests start one worker
                if self._duplex is None:
                    self.start_receiver()
            d = self._duplex
            assert d is not None
        return d.request_async(data, timeout)

    def info(self) -> "TcpInfo":
        """The kernel's TCP_INFO for this socket as an :class:`sk.TcpInfo`.

        Example::

            >>> conn.info().rtt_us
            41
        """
        from ._observe import TcpInfo

        return TcpInfo._from_core(self._query("info"))

    @property
    def state(self) -> "TcpState":
        """The TCP state of this socket (:class:`sk.TcpState`); CLOSED once
        this side closed it.

        Example::

            >>> conn.state
            <TcpState.ESTABLISHED: 1>
        """
        from ._enums import TcpState

        try:
            return TcpState(self._query("state"))
        except ConnectionClosed:  # closed here, maybe by another thread
            return TcpState.CLOSED

    def __enter__(self) -> "Connection[M]":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[M]:
        """Iterate over received frames until the peer closes.

        Example::

            for msg in conn:
                print(msg)
        """
        from ._errors import ConnectionClosed

        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                return

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__module__}.Connection closed>"
        try:
            la, ra = self.local_address, self.remote_address
            where = f"{format_address(la)} -> {format_address(ra)}"
        except OSError:
            where = "not connected"
        return f"<pysockkit.Connection fd={self.fileno()} {where}>"


class Listener(Generic[M]):
    """A listening TCP socket that accepts framed connections (of the
    message type of its framing, for type checkers).

    Made by :func:`listen`; ``SO_REUSEADDR`` is set so a restarted server can
    bind while its old connections sit in TIME_WAIT.

    Example::

        with sk.listen(("127.0.0.1", 0)) as srv:
            print(srv.address)
            conn = srv.accept(timeout=5.0)
    """

    __slots__ = ("_fd", "_acc", "_framing", "_heartbeat", "_keepalive", "address",
                 "__weakref__")

    def __init__(
        self,
        fd: int,
        framing: "Framing[M]",
        heartbeat: Optional[Heartbeat] = None,
        keepalive: Optional[Keepalive] = None,
    ) -> None:
        # the acceptor owns fd from here on (it closes it, also on failure):
        # a long accept waits in accept4 itself, threads may share it, and
        # close() wakes them and waits for them before the fd is closed
        self._fd = -1
        self._acc = _core.Acceptor(fd)
        self._fd = fd
        self._framing = framing
        self._heartbeat = heartbeat
        self._keepalive = keepalive
        self.address: Address = _core.sockname(fd)

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`Framing` given to accepted connections."""
        return self._framing

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._fd < 0

    def fileno(self) -> int:
        """The listening socket's file descriptor (-1 once closed)."""
        return self._fd

    def accept(self, timeout: Optional[float] = None) -> Connection[M]:
        """Wait for a client and return its :class:`Connection`.

        Raises ``sk.Timeout`` after ``timeout`` seconds; Ctrl-C interrupts a
        wait with no timeout too.  Several threads may accept on one
        listener at once, each with its own timeout; :meth:`close` from
        another thread makes them raise ``sk.ConnectionClosed``.

        Example::

            conn = srv.accept(timeout=5.0)
        """
        if self._fd < 0:
            from ._errors import ConnectionClosed

            raise ConnectionClosed("this listener was closed; call sk.listen() again")
        try:
            fd = self._acc.accept(timeout)
        except Error as exc:
            if self._fd < 0:
                from ._errors import ConnectionClosed

                raise ConnectionClosed("this listener was closed while accept() waited") from exc
            raise
        if self._heartbeat is None and self._keepalive is None:
            return Connection._adopt(fd, self._framing)  # as below, in one C call
        return Connection(fd, self._framing, self._heartbeat, self._keepalive, initiator=False)

    def close(self) -> None:
        """Stop listening.  Idempotent.  Threads waiting in :meth:`accept`
        raise ``sk.ConnectionClosed`` at once; the socket is closed once
        they are out.

        Example::

            srv.close()
        """
        if self._fd >= 0:
            self._fd = -1
            # wakes the threads in accept() (they see the listener closed)
            # and closes the fd once they are out, so that none of them
            # meets the number reused
            self._acc.close()

    def __enter__(self) -> "Listener[M]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed pysockkit listener {format_address(self.address)}",
                          ResourceWarning, stacklevel=2)
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<pysockkit.Listener {format_address(self.address)} {state}>"


@overload
def listen(addr: AddressLike = ..., backlog: int = ..., framing: None = None,
           heartbeat: Optional[Heartbeat] = None,
           keepalive: Optional[Keepalive] = None) -> Listener[bytes]: ...
@overload
def listen(addr: AddressLike = ..., backlog: int = ..., *, framing: "Framing[M]",
           heartbeat: Optional[Heartbeat] = None,
           keepalive: Optional[Keepalive] = None) -> Listener[M]: ...
@overload
def listen(addr: AddressLike, backlog: int, framing: "Framing[M]",
           heartbeat: Optional[Heartbeat] = None,
           keepalive: Optional[Keepalive] = None) -> Listener[M]: ...


def listen(
    addr: AddressLike = ("127.0.0.1", 0),
    backlog: int = 128,
    framing: "Optional[Framing[Any]]" = None,
    heartbeat: Optional[Heartbeat] = None,
    keepalive: Optional[Keepalive] = None,
) -> "Listener[Any]":
    """Listen on ``addr`` (port 0 picks a free port; ``srv.address`` tells
    which) and return a :class:`Listener`.  Accepted connections get
    ``framing``, ``heartbeat`` and ``keepalive``.

    ``addr`` is ``(host, port)`` or ``"host:port"`` (``"[::1]:port"`` for
    IPv6; host ``""`` in a tuple listens on every interface); anything else
    is a TypeError or ValueError.

    Example::

        >>> srv = sk.listen(("127.0.0.1", 0))
        >>> srv.address
        ('127.0.0.1', 40123)
    """
    fam, host, port = resolve(addr)[0]
    fd = _core.listen(host, port, fam, backlog)
    return Listener(fd, framing or _DEFAULT_FRAMING, heartbeat, keepalive)


@overload
def connect(addr: AddressLike, timeout: Optional[float] = None, framing: None = None,
            heartbeat: Optional[Heartbeat] = None,
            keepalive: Optional[Keepalive] = None, *, write_behind: bool = False,
            reconnect: None = None, on_event: None = None) -> Connection[bytes]: ...
@overload
def connect(addr: AddressLike, timeout: Optional[float] = None, *, framing: "Framing[M]",
            heartbeat: Optional[Heartbeat] = None,
            keepalive: Optional[Keepalive] = None, write_behind: bool = False,
            reconnect: None = None, on_event: None = None) -> Connection[M]: ...
@overload
def connect(addr: AddressLike, timeout: Optional[float], framing: "Framing[M]",
            heartbeat: Optional[Heartbeat] = None,
            keepalive: Optional[Keepalive] = None, *, write_behind: bool = False,
            reconnect: None = None, on_event: None = None) -> Connection[M]: ...
@overload
def connect(addr: AddressLike, timeout: Optional[float] = None, framing: None = None,
            heartbeat: Optional[Heartbeat] = None,
            keepalive: Optional[Keepalive] = None, *, write_behind: bool = False,
            reconnect: "Reconnect",
            on_event: "Optional[Callable[[ConnectionEvent], Any]]" = None,
            ) -> "ReconnectingConnection[bytes]": ...
@overload
def connect(addr: AddressLike, timeout: Optional[float] = None, *, framing: "Framing[M]",
            heartbeat: Optional[Heartbeat] = None,
            keepalive: Optional[Keepalive] = None, write_behind: bool = False,
            reconnect: "Reconnect",
            on_event: "Optional[Callable[[ConnectionEvent], Any]]" = None,
            ) -> "ReconnectingConnection[M]": ...


def connect(
    addr: AddressLike,
    timeout: Optional[float] = None,
    framing: "Optional[Framing[Any]]" = None,
    heartbeat: Optional[Heartbeat] = None,
    keepalive: Optional[Keepalive] = None,
    *,
    write_behind: bool = False,
    reconnect: "Optional[Reconnect]" = None,
    on_event: "Optional[Callable[[ConnectionEvent], Any]]" = None,
) -> "Union[Connection[Any], ReconnectingConnection[Any]]":
    """Connect to ``addr`` and return a :class:`Connection`.  With
    ``heartbeat``, the C reactor keeps the connection's liveness checked
    (the peer must use heartbeats too); ``keepalive`` sets the kernel's
    keepalive and TCP_USER_TIMEOUT.  ``write_behind=True`` makes ``send``
    queue small frames and write them in batches (see
    ``Connection.write_behind`` and docs/PROTOCOL.md).

    ``addr`` is ``(host, port)`` or ``"host:port"`` (``"[::1]:port"`` for
    IPv6); anything else is a TypeError or ValueError.  ``timeout`` bounds
    the whole connect (all resolved addresses together): None waits
    forever, 0 makes one try without waiting; negative or NaN is a
    ValueError.  The connection's ``recv`` returns ``bytes`` on plain
    framing, and ``bytes`` or ``(id, payload)`` with
    ``Framing(correlation=True)`` (``Connection[bytes]`` and
    ``Connection[sk.Message]`` to type checkers).  Raises ``sk.Timeout``,
    or ``sk.Error`` with errno ECONNREFUSED when nothing listens there.

    With ``reconnect=sk.Reconnect(...)`` it returns a
    :class:`sk.ReconnectingConnection`, which reconnects by itself when
    the connection is lost (docs/reconnect.md); the first connect then
    retries with the policy's backoff until ``timeout``.  ``on_event`` (a
    callable taking an :class:`sk.ConnectionEvent`) gets its lifecycle
    events; it needs ``reconnect``.

    Example::

        with sk.connect(("127.0.0.1", 9000), timeout=2.0) as conn:
            conn.send(b"hi")
    """
    if reconnect is not None:
        if _reconnecting is None:
            # _redial builds on this module and registers itself here when
            # it loads; it is loaded on first use (by name, as the package's
            # lazy names are), so that `import pysockkit` stays light
            import_module(__package__ + "._redial")
        assert _reconnecting is not None
        return _reconnecting(addr, timeout, framing or _DEFAULT_FRAMING, heartbeat,
                             keepalive, reconnect, on_event, write_behind)
    if on_event is not None:
        raise TypeError("connect: on_event= needs reconnect=sk.Reconnect(...): a plain "
                        "connection has no lifecycle events")
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    conn = _dial(addr, deadline, framing or _DEFAULT_FRAMING, heartbeat, keepalive)
    if write_behind:
        conn.write_behind = True
    return conn


def _dial(addr: AddressLike, deadline: Optional[float], framing: "Framing[Any]",
          heartbeat: Optional[Heartbeat], keepalive: Optional[Keepalive]) -> "Connection[Any]":
    """A connection to the first of addr's addresses that accepts before
    the monotonic deadline (None: no deadline); the last address's error
    if none does.  (connect; the timeout is checked already.)"""
    fd = _dial_fd(addr, deadline)
    if heartbeat is None and keepalive is None:
        return Connection._adopt(fd, framing)  # Connection(fd, framing) in one C call
    return Connection(fd, framing, heartbeat, keepalive)


def _dial_fd(addr: AddressLike, deadline: Optional[float]) -> int:
    """The connected socket of _dial: the first of addr's addresses that
    accepts before the deadline; the last address's error if none does."""
    last: Optional[BaseException] = None
    for fam, host, port in resolve(addr):
        left = None if deadline is None else deadline - time.monotonic()
        try:
            return _core.connect(host, port, fam, left if left is None or left > 0.0 else 0.0)
        except Timeout:
            raise
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


def call(
    addr: AddressLike,
    data: Union[bytes, bytearray, memoryview],
    timeout: Optional[float] = None,
    framing: Optional[Framing] = None,
) -> bytes:
    """A short connection: connect, send one frame, receive one reply frame,
    close.  ``timeout`` bounds the whole exchange.

    The client closes first, so the client's side of each short connection
    waits in TIME_WAIT for 60 s (see docs/PROTOCOL.md); use a long
    :class:`Connection` for many exchanges.

    Example::

        >>> sk.call(srv.address, b"ping", timeout=2.0)
        b'pong'
    """
    timeout = check_timeout(timeout)
    found = resolve(addr)
    if len(found) == 1:
        # what connect(addr, timeout, framing).request(data) then close() do,
        # in one C call with one deadline and no Connection object
        fam, host, port = found[0]
        return _core.call(host, port, fam, data, timeout, framing or _DEFAULT_FRAMING)
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = _dial_fd(addr, deadline)
    left = None if deadline is None else deadline - time.monotonic()
    # the exchange of _core.call on the address that accepted; fd is closed
    # by it in any case
    return _core.exchange(fd, data, left if left is None or left > 0.0 else 0.0,
                          framing or _DEFAULT_FRAMING)
