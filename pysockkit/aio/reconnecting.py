"""The asyncio reconnecting connection: ``await connect(..., reconnect=)``.

The same policy, events and event log as the synchronous
``sk.ReconnectingConnection`` (``pysockkit/_reconnect.py``); a supervisor task instead
of a thread.  The current :class:`aio.Connection` tells the task when the
peer ends it (its ``_on_end`` hook: EOF, RST, a dead peer); the task then
reconnects with the backoff and waits again.  Calls behave as in the
synchronous version: one in flight at the loss fails with
``maybe_delivered``, one started while down waits within its timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Generic, Optional, Union

from .._errors import Error, Timeout
from .._net import AddressLike, check_timeout
from .._reconnect import (
    ConnectionEvent,
    Lifecycle,
    Reconnect,
    is_loss,
    loss_reason,
    lost_error,
)
from .._types import Framing, Heartbeat, Keepalive
from .._typevars import M

from . import connection as _connection
from ._events import aiter_events
from .connection import Connection, connect

__all__ = ["ReconnectingConnection"]

_Buffer = Union[bytes, bytearray, memoryview]


class ReconnectingConnection(Lifecycle, Generic[M]):
    """An :class:`aio.Connection` that reconnects by itself, made by
    ``await connect(addr, reconnect=sk.Reconnect(...))``.

    ``send``, ``send_many``, ``drain``, ``recv``, ``recv_many``,
    ``request`` and ``reply`` run on the current connection; the semantics
    are those of ``sk.ReconnectingConnection`` (docs/reconnect.md): a call
    in flight at the loss raises its typed error with
    ``maybe_delivered``, never retried; a call started while reconnecting
    waits within its own timeout (``sk.Timeout`` says the connection was
    down); frames received before the loss come first; ``close()`` stops
    at once.  ``reconnects`` counts reconnections; ``async for ev in
    conn.events()`` and ``on_event=`` give the lifecycle events.

    Example::

        conn = await connect(addr, timeout=10, reconnect=sk.Reconnect(initial=0.1))
        reply = await conn.request(b"x", timeout=2)
        async for ev in conn.events(timeout=1.0):
            print(ev)
        conn.close()
    """

    def __init__(self, addr: AddressLike, policy: Reconnect, framing: "Framing[M]",
                 heartbeat: Optional[Heartbeat], keepalive: Optional[Keepalive],
                 limits: dict[str, int],
                 on_event: Optional[Callable[[ConnectionEvent], Any]]) -> None:
        """Internal: use ``aio.connect(addr, reconnect=...)``."""
        super().__init__(addr, policy, on_event)
        self._framing = framing
        self._hb = heartbeat
        self._keepalive = keepalive
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._conn: Optional[Connection[M]] = None
        self._old: list[Connection[M]] = []
        self._changed = asyncio.Event()
        self._lost_fut: Optional[asyncio.Future[Error]] = None
        self._task: Optional[asyncio.Task[None]] = None

    # ------------------------------------------------------------ dialing

    async def _connect_loop(self, deadline: Optional[float]) -> "Connection[M]":
        backoff = self._schedule()
        last = self._last_loss
        while True:
            if self._state == "closed":
                raise asyncio.CancelledError()
            delay = backoff.plan(deadline, last, self._where)
            if delay:
                self._log.emit("retrying", attempt=backoff.attempt + 1, delay=delay,
                               exception=last)
                await asyncio.sleep(delay)
            backoff.attempt += 1
            limit = self._policy.connect_timeout
            if deadline is not None:
                limit = max(0.0, min(limit, deadline - time.monotonic()))
            try:
                conn: Connection[M] = await connect(
                    self._addr, framing=self._framing, heartbeat=self._hb,
                    keepalive=self._keepalive, timeout=limit,
                    recv_limit=self._limits["recv_limit"],
                    send_limit=self._limits["send_limit"])
            except (Error, Timeout) as exc:
                last = exc
                if deadline is not None and time.monotonic() >= deadline:
                    raise backoff.timeout(self._where, exc) from exc
                continue
            self._up_since = time.monotonic()
            return conn

    def _up(self, conn: "Connection[M]") -> None:
        if self._framing.correlation:  # ids continue, never reused
            conn._book.book.next_id = self._next_id  # raised, never lowered
        self._mark_up()
        self._conn = conn
        fut: asyncio.Future[Error] = self._loop.create_future()
        self._lost_fut = fut

        def ended(err: Error) -> None:
            if not fut.done():
                fut.set_result(err)

        conn._on_end = ended
        self._signal()
        self._emit_connected(conn)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _start(self, timeout: Optional[float]) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn = await self._connect_loop(deadline)
        except BaseException:
            self._state = "closed"
            raise
        self._up(conn)
        self._task = self._loop.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            assert self._lost_fut is not None and self._conn is not None
            conn = self._conn
            exc = await self._lost_fut
            self._down(conn, exc)
            try:
                new = await self._connect_loop(None)
            except (Error, Timeout) as final:
                self._mark_gave_up(final)
                self._signal()
                self._log.emit("gave_up", attempts=self.attempts, exception=final)
                return
            if self._state == "closed":
                new.close()
                return
            self._up(new)

    def _down(self, conn: "Connection[M]", exc: BaseException) -> None:
        if self._state != "up" or self._conn is not conn:
            return
        self._mark_down(exc)
        self._conn = None
        self._next_id = max(self._next_id, conn._book.book.next_id)
        if conn._q:
            self._old.append(conn)
        else:
            conn.close()
        self._signal()
        self._log.emit("lost", reason=loss_reason(exc), exception=exc)

    # -------------------------------------------------------------- calls

    async def _current(self, op: str, deadline: Optional[float],
                       timeout: Optional[float]) -> "Connection[M]":
        while True:
            up, left = self._wait_left(op, deadline, timeout)
            if up:
                assert self._conn is not None
                return self._conn
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _call(self, op: str, timeout: Optional[float], sends: Optional[bool],
                    fn: "Callable[[Connection[M], Optional[float]], Any]") -> Any:
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = await self._current(op, deadline, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await fn(conn, left)
        except Error as exc:
            if not is_loss(exc):
                raise
            if self._state == "closed":
                raise self._closed_in_call(op, exc)
            fut = self._lost_fut
            if self._conn is conn and fut is not None and not fut.done():
                fut.set_result(exc)
            raise lost_error(exc, op, self._where, sends) from exc

    async def send(self, data: _Buffer, timeout: Optional[float] = None) -> None:
        """``aio.Connection.send`` on the current connection."""
        await self._call("send", timeout, True, lambda c, t: c.send(data, t))

    async def send_many(self, payloads: Iterable[bytes], timeout: Optional[float] = None) -> None:
        """``aio.Connection.send_many`` on the current connection."""
        payloads = list(payloads)
        await self._call("send_many", timeout, True, lambda c, t: c.send_many(payloads, t))

    async def drain(self, timeout: Optional[float] = None) -> None:
        """``aio.Connection.drain`` on the current connection."""
        await self._call("drain", timeout, True, lambda c, t: c.drain(t))

    async def request(self, data: _Buffer, timeout: Optional[float] = None) -> bytes:
        """``aio.Connection.request`` on the current connection (waits
        while reconnecting; in flight at a loss: raises, not retried).

        Example::

            reply = await conn.request(b"x", timeout=2.0)
        """
        reply: bytes = await self._call("request", timeout, True,
                                        lambda c, t: c.request(data, t))
        return reply

    async def reply(self, request_id: int, data: _Buffer,
                    timeout: Optional[float] = None) -> None:
        """``aio.Connection.reply`` on the current connection."""
        await self._call("reply", timeout, True, lambda c, t: c.reply(request_id, data, t))

    def _take_old(self) -> Optional[M]:
        while self._old:
            old = self._old[0]
            try:
                msg = old.recv_nowait()
            except Error:
                msg = None
            if msg is not None:
                return msg
            self._old.pop(0)
            old.close()
        return None

    async def recv(self, timeout: Optional[float] = None) -> M:
        """The next frame: those received before a loss first.

        Example::

            msg = await conn.recv(timeout=1.0)
        """
        msg = self._take_old()
        if msg is not None:
            return msg
        got: M = await self._call("recv", timeout, None, lambda c, t: c.recv(t))
        return got

    async def recv_many(self, max_frames: Optional[int] = None,
                        timeout: Optional[float] = None) -> list[M]:
        """``aio.Connection.recv_many``; frames of a lost connection first."""
        msg = self._take_old()
        if msg is not None:
            return [msg]
        got: list[M] = await self._call("recv_many", timeout, None,
                                        lambda c, t: c.recv_many(max_frames, t))
        return got

    # ----------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close and stop reconnecting at once; waiting calls raise
        ``sk.ConnectionClosed``.  Idempotent.

        Example::

            conn.close()
            await conn.wait_closed()
        """
        if self._state == "closed":
            return
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
        for c in self._old + ([self._conn] if self._conn is not None else []):
            c.close()
        self._old = []
        self._signal()
        self._log.emit("closed")

    async def wait_closed(self) -> None:
        """Wait until the supervisor task and the current connection ended.

        Example::

            conn.close()
            await conn.wait_closed()
        """
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                if self._task.cancelled():
                    pass
                else:
                    raise
        if self._conn is not None:
            await self._conn.wait_closed()

    async def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Wait until a connection is up (raises like a call would).

        Example::

            await conn.wait_connected(timeout=5.0)
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        await self._current("wait_connected", deadline, timeout)

    async def events(self, wait: bool = True,
                     timeout: Optional[float] = None) -> AsyncIterator[ConnectionEvent]:
        """The lifecycle events (:class:`sk.ConnectionEvent`), from the
        oldest kept; with ``wait`` it waits for more and ends after
        ``closed`` (or ``timeout`` seconds without an event).

        Example::

            async for ev in conn.events(wait=False):
                print(ev.kind)
        """
        async for ev in aiter_events(self._log, wait, timeout):
            yield ev

    @property
    def connection(self) -> "Optional[Connection[M]]":
        """The current :class:`aio.Connection`, or None while down."""
        return self._conn

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`sk.Framing` of every connection made."""
        return self._framing

    async def __aenter__(self) -> "ReconnectingConnection[M]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return (f"<pysockkit.aio.ReconnectingConnection {self._where} {self._state} "
                f"reconnects={self.reconnects}>")


async def connect_reconnecting(addr: AddressLike, timeout: Optional[float],
                               framing: "Framing[Any]", heartbeat: Optional[Heartbeat],
                               keepalive: Optional[Keepalive], limits: dict[str, int],
                               policy: Reconnect,
                               on_event: Optional[Callable[[ConnectionEvent], Any]],
                               ) -> "ReconnectingConnection[Any]":
    """``aio.connect(..., reconnect=policy)``."""
    timeout = check_timeout(timeout)
    conn: ReconnectingConnection[Any] = ReconnectingConnection(
        addr, policy, framing, heartbeat, keepalive, limits, on_event)
    await conn._start(timeout)
    return conn


_connection._reconnecting = connect_reconnecting
