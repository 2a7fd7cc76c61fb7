"""The aio listener: accept framed connections with ``await``."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Generic, Optional, overload

from .._errors import ConnectionClosed, Error, Timeout
from .._net import Address, AddressLike, check_timeout, format_address, resolve
from .._types import Framing, Heartbeat, Keepalive
from .._typevars import M
from ._endpoint import DEFAULT_FRAMING, DEFAULT_RECV_LIMIT, DEFAULT_SEND_LIMIT
from ._transport import Waiters, wait, wake
from .connection import Connection

__all__ = ["Listener", "listen", "listen_socket"]


class Listener(Generic[M]):
    """A listening socket whose connections are accepted with ``await``.

    Made by :func:`listen`.  Connections wait in the kernel's backlog until
    accepted.  ``async for conn in listener`` accepts until the listener is
    closed.  ``address`` is the (host, port) actually bound.

    Example::

        async with await aio.listen(("127.0.0.1", 0)) as lst:
            print(lst.address)                 # ('127.0.0.1', 40123)
            conn = await lst.accept(timeout=5.0)
    """

    __slots__ = ("_loop", "_sock", "_fd", "_framing", "_hb", "_keepalive", "_limits",
                 "_waiters", "_reading", "address")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        framing: "Framing[M]",
        heartbeat: Optional[Heartbeat],
        keepalive: Optional[Keepalive],
        limits: tuple[int, int],
    ) -> None:
        """Internal: use :func:`listen`."""
        self._loop = loop
        self._sock: Optional[socket.socket] = sock
        self._fd = sock.fileno()
        self._framing = framing
        self._hb = heartbeat
        self._keepalive = keepalive
        self._limits = limits
        self._waiters: Waiters = []
        self._reading = False
        self.address: Address = tuple(sock.getsockname()[:2])

    def _on_readable(self) -> None:
        self._stop_reading()
        wake(self._waiters)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    async def accept(self, timeout: Optional[float] = None) -> Connection[M]:
        """Wait for a client and return its :class:`aio.Connection`.

        ``sk.Timeout`` after ``timeout`` seconds; ``sk.ConnectionClosed``
        when the listener is (or gets) closed.  Cancel-safe: a cancelled
        accept leaves the client in the backlog for the next one.

        Example::

            conn = await lst.accept(timeout=5.0)
        """
        timeout = check_timeout(timeout)
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            sock = self._sock
            if sock is None:
                raise ConnectionClosed("this listener was closed; call aio.listen() again")
            try:
                csock, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    raise Error(exc.errno or 0, f"accept: {exc.strerror or exc}") from exc
                continue  # the client gave up already: take the next one
            else:
                return await self._wrap(csock)
            if deadline is not None and loop.time() >= deadline:
                raise Timeout(f"accept: no client within {timeout} s")
            if not self._reading:
                self._reading = True
                loop.add_reader(self._fd, self._on_readable)
            try:
                await wait(loop, self._waiters, deadline)
            finally:
                if not self._waiters:  # this accept was the last one waiting
                    self._stop_reading()

    async def _wrap(self, csock: socket.socket) -> Connection[M]:
        csock.setblocking(False)
        conn = Connection(self._loop, self._framing, self._hb, self._keepalive,
                          initiator=False, recv_limit=self._limits[0], send_limit=self._limits[1])
        try:
            await self._loop.connect_accepted_socket(lambda: conn._proto, csock)
        except BaseException:
            csock.close()
            raise
        return conn

    def __aiter__(self) -> "Listener[M]":
        """Accept connections until the listener is closed.

        Example::

            async for conn in lst:
                asyncio.create_task(handle(conn))
        """
        return self

    async def __anext__(self) -> Connection[M]:
        try:
            return await self.accept()
        except ConnectionClosed:
            if self._sock is None:
                raise StopAsyncIteration from None
            raise

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`sk.Framing` given to accepted connections.

        Example::

            >>> lst.framing.header_size
            4
        """
        return self._framing

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran.

        Example::

            >>> lst.closed
            False
        """
        return self._sock is None

    def close(self) -> None:
        """Stop listening; waiting accepts raise ``sk.ConnectionClosed``.
        Accepted connections are not touched.  Idempotent.

        Example::

            lst.close()
        """
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._stop_reading()
        sock.close()
        wake(self._waiters, False)

    async def wait_closed(self) -> None:
        """For symmetry with asyncio servers: the listener closes at once.

        Example::

            lst.close()
            await lst.wait_closed()
        """
        await asyncio.sleep(0)

    async def __aenter__(self) -> "Listener[M]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._fd}"
        return f"<pysockkit.aio.Listener {format_address(self.address)} {state}>"


def listen_socket(addr: AddressLike, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking socket (SO_REUSEADDR) for *addr*;
    ``sk.Error`` naming the address when the bind or listen fails.

    Example::

        sock = listen_socket(("127.0.0.1", 0), 128)
    """
    fam, host, port = resolve(addr)[0]
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = ("; another socket holds it: pick another port, or port 0 for a free one"
                if exc.errno == errno.EADDRINUSE else "")
        raise Error(exc.errno or 0, f"listen on {format_address((host, port))}: "
                    f"{exc.strerror or exc}{hint}") from exc
    return sock


@overload
async def listen(addr: AddressLike = ..., *, framing: None = None,
                 heartbeat: Optional[Heartbeat] = None, keepalive: Optional[Keepalive] = None,
                 backlog: int = ..., recv_limit: int = ...,
                 send_limit: int = ...) -> Listener[bytes]: ...
@overload
async def listen(addr: AddressLike = ..., *, framing: "Framing[M]",
                 heartbeat: Optional[Heartbeat] = None, keepalive: Optional[Keepalive] = None,
                 backlog: int = ..., recv_limit: int = ...,
                 send_limit: int = ...) -> Listener[M]: ...


async def listen(
    addr: AddressLike = ("127.0.0.1", 0),
    *,
    framing: "Optional[Framing[Any]]" = None,
    heartbeat: Optional[Heartbeat] = None,
    keepalive: Optional[Keepalive] = None,
    backlog: int = 128,
    recv_limit: int = DEFAULT_RECV_LIMIT,
    send_limit: int = DEFAULT_SEND_LIMIT,
) -> "Listener[Any]":
    """Listen on ``addr`` (port 0 picks a free port; ``lst.address`` tells
    which) and return a :class:`Listener`; accepted connections get
    ``framing``, ``heartbeat`` and ``keepalive`` and the limits of
    :func:`connect`.  ``SO_REUSEADDR`` is set.

    Example::

        lst = await aio.listen(("127.0.0.1", 0))
        conn = await lst.accept()
    """
    loop = asyncio.get_running_loop()
    sock = listen_socket(addr, backlog)
    return Listener(loop, sock, framing or DEFAULT_FRAMING, heartbeat, keepalive,
                    (recv_limit, send_limit))
