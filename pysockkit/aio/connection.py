"""The aio connection: what a program calls on one framed connection.

Sends are corked for one loop iteration and written in batches
(:mod:`._writer`); receives pop a bounded queue that reads fill a whole
batch at a time (:mod:`._receiver`); requests wait in the correlation book
(:mod:`._correlation`); heartbeats run on the loop (:mod:`._heartbeat`).
:class:`~._endpoint.Endpoint` owns those parts and the transport's events;
:class:`Connection` adds the calls.  The hot paths (``send_nowait``,
``recv``, ``request``, ``reply_nowait``) touch the parts directly, with no
call in between that is not needed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Union, overload

from .._errors import ConnectionClosed, Error, Timeout
from .._net import AddressLike, check_timeout, format_address, parse_address
from .._types import Framing, Heartbeat, Keepalive
from .._typevars import M
from .._wire import ID_MASK, ID_REPLY, error_id
from ._endpoint import DEFAULT_FRAMING, DEFAULT_RECV_LIMIT, DEFAULT_SEND_LIMIT, Endpoint
from ._transport import ioctl_int, sockopt
from .._reconnect import ConnectionEvent, Reconnect

if TYPE_CHECKING:
    from .reconnecting import ReconnectingConnection

# aio.connect(..., reconnect=): reconnecting.connect_reconnecting, registered
# by reconnecting.py when pysockkit.aio is imported (it builds on this module)
_reconnecting: "Optional[Callable[..., Awaitable[ReconnectingConnection[Any]]]]" = None

__all__ = ["Connection", "connect"]

_Buffer = Union[bytes, bytearray, memoryview]
_LINGER_POLL = 0.01
_SHUT = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR}


class Connection(Endpoint[M]):
    """A framed TCP connection on an asyncio event loop.

    Made by :func:`connect`, :meth:`Listener.accept` or :func:`serve`.
    Messages are frames ``[length][payload]`` (docs/PROTOCOL.md), the same
    wire format as the synchronous :class:`sk.Connection`, so either side
    may be synchronous.  Use it from the loop that made it only.

    For type checkers it is generic in what ``recv`` returns:
    ``await aio.connect(addr)`` is a ``Connection[bytes]``, a connection
    with ``Framing(correlation=True)`` a ``Connection[aio.Message]``; a
    bare ``aio.Connection`` annotation means ``Connection[Any]``.

    Example::

        conn = await aio.connect(addr, timeout=5.0)
        await conn.send(b"hello")
        reply = await conn.recv(timeout=1.0)
        conn.close()
        await conn.wait_closed()
    """

    __slots__ = ()

    # ----------------------------------------------------------- sending

    def send_nowait(self, data: _Buffer) -> None:
        """Queue one frame without waiting (written when the loop iteration ends,
        or at once in a big batch: see the module docstring).

        Raises ``sk.FrameTooLarge`` (nothing queued) for a payload over
        ``max_frame``, the error that ended the connection, or ``sk.Error``
        (ENOBUFS) when far more than ``send_limit`` bytes already wait
        because the peer is not reading: ``await conn.drain()`` regularly.

        Example::

            for chunk in chunks:
                conn.send_nowait(chunk)
            await conn.drain()
        """
        w = self._w
        if w.err is not None or w.paused:
            w.check()
        frame = self._encode(data)
        # Writer.write() inlined (see there): the hot path of a stream
        w.buf.append(frame)
        w.nbytes += len(frame)
        if w.nbytes >= w.flush_at or not w.scheduled:
            w.corked()

    async def send(self, data: _Buffer, timeout: Optional[float] = None) -> None:
        """Send one frame (any bytes-like object), waiting while more than
        ``send_limit`` bytes are buffered (the peer reads too slowly).

        ``sk.Timeout`` after ``timeout`` seconds of waiting means the frame
        is queued whole and will still be sent; nothing is lost or torn.

        Example::

            await conn.send(b"hello")
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        w = self._w
        if w.err is not None:
            raise w.err
        w.write(self._encode(data))
        if w.paused:
            await w.drain(timeout, "send")

    async def send_many(self, payloads: Iterable[bytes], timeout: Optional[float] = None) -> None:
        """Send many frames with one encoder call and one write.  All or
        nothing: a payload over ``max_frame`` raises ``sk.FrameTooLarge``
        and none is sent.

        Example::

            await conn.send_many([b"a", b"b", b"c"])
        """
        timeout = check_timeout(timeout)
        w = self._w
        if w.err is not None:
            raise w.err
        if not isinstance(payloads, list):
            payloads = list(payloads)
        w.write(self._enc.encode_many(payloads))
        if w.paused:
            await w.drain(timeout, "send_many")

    async def drain(self, timeout: Optional[float] = None) -> None:
        """Write what is queued and wait until the transport's buffer is
        below the low-water mark (``send_limit // 4``).

        Example::

            conn.send_nowait(b"x")
            await conn.drain(timeout=5.0)
        """
        timeout = check_timeout(timeout)
        w = self._w
        w.flush()
        if w.err is not None:
            raise w.err
        if w.paused:
            await w.drain(timeout, "drain")

    # ----------------------------------------------------------- receiving

    async def recv(self, timeout: Optional[float] = None) -> M:
        """The next frame: ``bytes``, or ``(id, payload)`` for a correlated
        request (answer it with :meth:`reply`).

        Raises ``sk.Timeout`` after ``timeout`` seconds (nothing is lost),
        ``sk.ConnectionClosed`` once the peer closed after its last frame,
        ``sk.IncompleteFrame`` if it closed inside one, ``sk.ConnectionReset``,
        ``sk.FrameTooLarge`` or ``sk.PeerDead``.  Frames received before
        the end are returned first.  Cancelling a waiting ``recv`` loses
        nothing: the frame stays queued for the next call.

        Example::

            msg = await conn.recv(timeout=1.0)
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        q = self._q
        if not q:
            await self._rx.wait_frames(timeout)
        m = q.popleft()
        rx = self._rx
        if rx.paused:
            rx.maybe_resume()
        return m

    async def recv_many(self, max_frames: Optional[int] = None,
                        timeout: Optional[float] = None) -> list[M]:
        """Every frame already queued (at least one; at most ``max_frames``),
        waiting like :meth:`recv` when none is.

        Example::

            for msg in await conn.recv_many(timeout=1.0):
                print(msg)
        """
        timeout = check_timeout(timeout)
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        q = self._q
        if not q:
            await self._rx.wait_frames(timeout)
        if max_frames is None or len(q) <= max_frames:
            out = list(q)
            q.clear()
        else:
            popleft = q.popleft
            out = [popleft() for _ in range(max_frames)]
        rx = self._rx
        if rx.paused:
            rx.maybe_resume()
        return out

    def recv_nowait(self) -> Optional[M]:
        """The next queued frame, or None if none is queued; raises the
        error that ended the receive side once the queue is empty.

        Example::

            msg = conn.recv_nowait()
        """
        q = self._q
        rx = self._rx
        if q:
            m = q.popleft()
            if rx.paused:
                rx.maybe_resume()
            return m
        if rx.err is not None:
            raise rx.err
        return None

    def __aiter__(self) -> "Connection[M]":
        """Iterate over received frames until the peer closes (orderly EOF).
        Other ends (reset, truncated frame, dead peer) raise.

        Example::

            async for msg in conn:
                print(msg)
        """
        return self

    async def __anext__(self) -> M:
        q = self._q
        if not q:
            try:
                await self._rx.wait_frames(None)
            except ConnectionClosed as exc:
                if type(exc) is ConnectionClosed:
                    raise StopAsyncIteration from None
                raise
        m = q.popleft()
        rx = self._rx
        if rx.paused:
            rx.maybe_resume()
        return m

    # ------------------------------------------------------ requests, replies

    async def request(self, data: _Buffer, timeout: Optional[float] = None) -> bytes:
        """Send ``data`` as a request and return its reply.

        Many requests may be in flight on one connection (from many tasks).
        With ``sk.Framing(correlation=True)`` on both peers each request
        carries an id and the peer may answer in any order.  On plain
        framing the peer answers in order (any length-prefixed server that
        answers each request does): the n-th frame received while replies
        are owed is the reply to the n-th request, and ``recv`` gets only
        the frames that arrive when no reply is owed.

        ``sk.Timeout`` after ``timeout`` seconds; a reply that comes later
        is dropped and counted in ``conn.stats["late"]``, never returned to
        another request.  Cancelling the call forgets the request the same
        way.  On plain framing, a request that times out after a late
        reply was dropped during its wait raises ``sk.OutOfStep`` (a
        ``Timeout``): replies are arriving behind their requests, because
        the peer is slower than the timeout or dropped a request (then no
        later reply can be matched: reconnect, or use correlation ids).  A
        peer that drops a request while others are in flight behind it
        shifts their replies by one, which plain frames cannot reveal: use
        correlation ids with such peers.

        Example::

            replies = await asyncio.gather(*(conn.request(b"%d" % i, timeout=2.0)
                                             for i in range(100)))
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        w = self._w
        if w.err is not None or self._rx.err is not None:
            return await self.request_nowait(data, timeout)  # raises the reason
        corr = self._book
        if self._corr and timeout is None:
            # _queue_request's correlated path inlined: the hot path of a
            # pipelined client (one Python call less per request).  The
            # callables kept in slots are loaded into locals before the
            # call: `self._x()` compiles to LOAD_METHOD, which CPython 3.11
            # cannot specialise for a slot (~100 instructions each time),
            # `x = self._x` to a specialised LOAD_ATTR_SLOT.
            new_future, add, encode = self._new_future, corr.add, self._encode
            fut: asyncio.Future[bytes] = new_future()
            rid = add(fut)
            try:
                frame = encode(data, rid)
            except BaseException:  # too large, not bytes-like: nothing went out
                corr.unsend(rid)
                raise
            w.buf.append(frame)
            w.nbytes += len(frame)
            if w.nbytes >= w.flush_at or not w.scheduled:
                w.corked()
        else:
            rid, fut = self._queue_request(data, timeout)
        try:
            if w.paused:
                await w.drain(timeout, "request")
            return await fut
        except BaseException:
            corr.forget(rid)
            raise

    def request_nowait(self, data: _Buffer, timeout: Optional[float] = None) -> "asyncio.Future[bytes]":
        """Send a request (see :meth:`request`) and return an
        ``asyncio.Future`` for its reply, without waiting (no backpressure: ``await conn.drain()``
        now and then).  Cancelling the future forgets the request.

        Example::

            futs = [conn.request_nowait(b"%d" % i, timeout=2.0) for i in range(100)]
            replies = await asyncio.gather(*futs)
        """
        timeout = check_timeout(timeout)
        w = self._w
        w.check()
        err = w.err or self._rx.err
        if err is not None:
            raise err
        rid, fut = self._queue_request(data, timeout)
        book = self._book

        def done(f: "asyncio.Future[bytes]") -> None:
            if f.cancelled():
                book.forget(rid)

        fut.add_done_callback(done)
        return fut

    def _queue_request(self, data: _Buffer,
                       timeout: Optional[float]) -> "tuple[int, asyncio.Future[bytes]]":
        """Register a request in the book and queue its frame (the one path
        of request and request_nowait); returns its id and future."""
        corr = self._book
        fut: asyncio.Future[bytes] = self._new_future()
        if not self._corr:  # plain framing matches by position: register what goes out
            frame = self._encode(data)
            rid = corr.register(fut, timeout)
        else:
            rid = corr.add(fut) if timeout is None else corr.register(fut, timeout)
            try:
                frame = self._encode(data, rid)
            except BaseException:  # too large, not bytes-like: nothing went out
                corr.unsend(rid)
                raise
        # _Writer.write's three lines, repeated here as in send_nowait: one
        # Python call less per request is ~4 % of a pipelined client's CPU
        # (bench/aio_bench.py rr-64x100, bench/RESULTS-restructure.md)
        w = self._w
        w.buf.append(frame)
        w.nbytes += len(frame)
        if w.nbytes >= w.flush_at or not w.scheduled:
            w.corked()
        return rid, fut

    async def reply(self, request_id: int, data: _Buffer, timeout: Optional[float] = None) -> None:
        """Answer the request received as ``(request_id, payload)``; waits
        like :meth:`send` when the peer reads too slowly.

        Example::

            async for rid, payload in conn:
                await conn.reply(rid, payload.upper())
        """
        timeout = check_timeout(timeout)
        w = self._w
        if w.err is not None:
            raise w.err
        w.write(self._encode(data, (request_id & ID_MASK) | ID_REPLY))
        if w.paused:
            await w.drain(timeout, "reply")

    def reply_nowait(self, request_id: int, data: _Buffer) -> None:
        """:meth:`reply` without waiting (see :meth:`send_nowait`).

        Example::

            for rid, payload in await conn.recv_many():
                conn.reply_nowait(rid, payload)
            await conn.drain()
        """
        w = self._w
        if w.err is not None or w.paused:
            w.check()
        # reply_id() inlined: this is the hot path of a busy server
        w.write(self._encode(data, (request_id & ID_MASK) | ID_REPLY))

    def _reply_error_nowait(self, request_id: int, text: bytes) -> None:
        """Answer a request with an error reply (aio.serve, when its
        handler raised); the peer raises ``sk.RemoteError`` with *text*."""
        w = self._w
        w.check()
        w.write(self._encode(text, error_id(request_id)))

    # ----------------------------------------------------------- closing

    def shutdown(self, how: str = "write") -> None:
        """Half-close.  ``"write"`` sends FIN after everything queued and
        keeps reading (the peer sees ``sk.ConnectionClosed`` after our
        last frame and can still answer); later sends raise
        ``sk.ConnectionClosed``.  ``"read"`` stops receiving; ``"both"``
        does both.  No heartbeats go out after a write shutdown.

        Example::

            await conn.send(b"last")
            conn.shutdown("write")
            reply = await conn.recv()
        """
        try:
            code = _SHUT[how]
        except KeyError:
            raise ValueError(f"how must be 'read', 'write' or 'both', not {how!r}") from None
        t = self._transport
        w = self._w
        if t is None or self._lost or self._closing:
            raise w.err or ConnectionClosed("the connection is closed")
        if code != socket.SHUT_RD and w.err is None:
            w.flush()
            w.err = ConnectionClosed("the write side was shut down (shutdown('write'))")
            t.write_eof()
        if code != socket.SHUT_WR and self._fd >= 0:
            sockopt(self._fd, lambda s: s.shutdown(socket.SHUT_RD))

    def close(self) -> None:
        """Orderly close: frames already queued are still sent, then FIN.
        Pending ``recv``/``request`` calls raise ``sk.ConnectionClosed``.
        Idempotent; ``await conn.wait_closed()`` waits for the end.

        With heartbeats the close lingers (reading and discarding) until
        the peer acknowledged everything we sent, at most ``4 * timeout +
        1`` seconds, as the synchronous API does: a heartbeat arriving on
        a closed socket would make our kernel answer RST, which can
        discard data the peer has not read yet.

        Example::

            conn.close()
            await conn.wait_closed()
        """
        if self._closing:
            return
        self._shut_local(ConnectionClosed("this connection was closed (close() on this side)"))
        t = self._transport
        if t is None or self._lost:
            return
        self._w.flush()
        rx = self._rx
        if self._hb is not None and not t.is_closing() and not rx.eof:
            rx.discard = True
            if rx.paused:
                rx.paused = False
                t.resume_reading()
            self._linger_deadline = self._loop.time() + 4 * self._hb.timeout + 1.0
            self._linger()
        else:
            t.close()

    def _linger(self) -> None:
        """Close once the peer acknowledged everything we sent (or at the
        linger deadline); until then read and discard."""
        t = self._transport
        if t is None or self._lost or t.is_closing():
            return
        if (self._loop.time() >= self._linger_deadline
                or (t.get_write_buffer_size() == 0
                    and (self._fd < 0 or ioctl_int(self._fd, termios.TIOCOUTQ) == 0))):
            t.close()
            return
        self._loop.call_later(_LINGER_POLL, self._linger)

    def abort(self) -> None:
        """Abort: RST (SO_LINGER 0) instead of FIN; queued data is dropped
        and no TIME_WAIT is left.  The peer gets ``sk.ConnectionReset``.

        Example::

            conn.abort()
            await conn.wait_closed()
        """
        if self._lost:
            return
        self._shut_local(ConnectionClosed("this connection was aborted (abort() on this side)"))
        self._w.drop()
        t = self._transport
        if t is None:
            return
        if self._fd >= 0:
            linger = struct.pack("ii", 1, 0)
            try:
                sockopt(self._fd, lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger))
            except OSError:
                pass
        t.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (after :meth:`close`,
        :meth:`abort`, or the end of the connection).

        Example::

            conn.close()
            await conn.wait_closed()
        """
        await asyncio.shield(self._closed_fut)

    async def __aenter__(self) -> "Connection[M]":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
        await self.wait_closed()


# --------------------------------------------------------------------- connect


@overload
async def connect(addr: AddressLike, *, framing: None = None, heartbeat: Optional[Heartbeat] = None,
                  keepalive: Optional[Keepalive] = None, timeout: Optional[float] = None,
                  recv_limit: int = ..., send_limit: int = ..., reconnect: None = None,
                  on_event: None = None) -> Connection[bytes]: ...
@overload
async def connect(addr: AddressLike, *, framing: "Framing[M]",
                  heartbeat: Optional[Heartbeat] = None, keepalive: Optional[Keepalive] = None,
                  timeout: Optional[float] = None, recv_limit: int = ...,
                  send_limit: int = ..., reconnect: None = None,
                  on_event: None = None) -> Connection[M]: ...
@overload
async def connect(addr: AddressLike, *, framing: None = None, heartbeat: Optional[Heartbeat] = None,
                  keepalive: Optional[Keepalive] = None, timeout: Optional[float] = None,
                  recv_limit: int = ..., send_limit: int = ..., reconnect: Reconnect,
                  on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
                  ) -> ReconnectingConnection[bytes]: ...
@overload
async def connect(addr: AddressLike, *, framing: "Framing[M]",
                  heartbeat: Optional[Heartbeat] = None, keepalive: Optional[Keepalive] = None,
                  timeout: Optional[float] = None, recv_limit: int = ...,
                  send_limit: int = ..., reconnect: Reconnect,
                  on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
                  ) -> ReconnectingConnection[M]: ...


async def connect(
    addr: AddressLike,
    *,
    framing: "Optional[Framing[Any]]" = None,
    heartbeat: Optional[Heartbeat] = None,
    keepalive: Optional[Keepalive] = None,
    timeout: Optional[float] = None,
    recv_limit: int = DEFAULT_RECV_LIMIT,
    send_limit: int = DEFAULT_SEND_LIMIT,
    reconnect: Optional[Reconnect] = None,
    on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
) -> "Union[Connection[Any], ReconnectingConnection[Any]]":
    """Connect to ``addr`` and return an :class:`aio.Connection`.

    ``addr``, ``timeout``, ``framing``/``heartbeat``/``keepalive`` as for
    ``sk.connect`` (``"[::1]:9000"`` works too; the peer must use the same
    framing, and heartbeats too if we do).  ``timeout`` bounds the connect
    (``sk.Timeout``); nothing listening raises
    ``sk.Error`` with errno ECONNREFUSED.  ``recv_limit`` bounds the bytes
    of received frames waiting to be read (reading pauses above it);
    ``send_limit`` is the write buffer's high-water mark (``send`` waits
    above it).  Its ``recv`` returns ``bytes`` on plain framing
    (``Connection[bytes]`` to type checkers), ``bytes`` or ``(id,
    payload)`` with ``Framing(correlation=True)`` (``Connection[aio.Message]``).

    With ``reconnect=sk.Reconnect(...)`` it returns an
    :class:`aio.ReconnectingConnection` that reconnects by itself
    (docs/reconnect.md; ``on_event`` gets its lifecycle events).

    Example::

        conn = await aio.connect(("127.0.0.1", 9000), timeout=5.0)
    """
    if reconnect is not None:
        assert _reconnecting is not None  # pysockkit/aio/__init__.py imports reconnecting
        return await _reconnecting(
            addr, timeout, framing or DEFAULT_FRAMING, heartbeat, keepalive,
            {"recv_limit": recv_limit, "send_limit": send_limit}, reconnect, on_event)
    if on_event is not None:
        raise TypeError("connect: on_event= needs reconnect=sk.Reconnect(...): a plain "
                        "connection has no lifecycle events")
    host, port = parse_address(addr)
    timeout = check_timeout(timeout)
    where = format_address((host, port))
    loop = asyncio.get_running_loop()
    conn = Connection(loop, framing or DEFAULT_FRAMING, heartbeat, keepalive,
                      initiator=True, recv_limit=recv_limit, send_limit=send_limit)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: conn._proto, host, port), timeout)
    except asyncio.TimeoutError:
        raise Timeout(f"connect to {where}: no answer within {timeout} s; is the server "
                      "up, and its accept queue not full?") from None
    except Error:
        raise
    except OSError as exc:
        code = exc.errno or (errno.ECONNREFUSED if isinstance(exc, ConnectionRefusedError) else 0)
        hint = ("; start the server first" if code == errno.ECONNREFUSED else "")
        raise Error(code, f"connect to {where}: {exc.strerror or exc}{hint}") from exc
    return conn
