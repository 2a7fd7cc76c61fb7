"""asyncio API: framed TCP connections driven by an asyncio event loop.

The C codec does the framing: every read lands in a preallocated buffer
(``asyncio.BufferedProtocol``), one ``Decoder.feed`` call turns it into the
list of complete frames, and the list is appended to the connection's
receive queue in one step.  ``recv`` only pops that queue; a receiver that
has to wait parks a future that is resolved once per read (not per frame),
and a cancelled or timed-out wait never takes a frame out of the queue, so
cancelling a ``recv`` loses no byte.

Writes are corked for one loop iteration: frames queued by any task during
an iteration go out in one ``transport.write`` when it ends, so pipelined
requests and replies cost one syscall per batch, not per message.  A big
batch does not wait for the end: its first 4 KiB are written at once, then
every time twice as much is corked (up to 64 KiB), so the peer starts on
the first requests while the rest are queued and both processes work at
the same time instead of taking turns.  A read that wakes tasks schedules
the flush behind them: the replies they queue leave in the same iteration.
The transport's write buffer has an explicit high-water mark
(``send_limit``); ``await send()``/``drain()`` wait while it is above it, so
a peer that stops reading blocks its senders and memory stays bounded.  The
receive queue is bounded too (``recv_limit``): above it the transport stops
reading and TCP's window pushes back on the peer.

``request()`` pipelines: many requests may be in flight on one connection.
Correlated requests (``Framing(correlation=True)`` on both peers) carry an
8-byte id (docs/PROTOCOL.md); ``request()`` allocates one, and the reply
with the same id (top bit set) resolves it, in any order.  A reply whose id
is unknown, already answered or timed out is dropped and counted in
``conn.stats``, never handed to anyone else.  On plain framing replies
carry no id and come in order: the n-th frame that arrives while replies
are owed answers the n-th request, and the reply owed to a request that
timed out is dropped when it comes (the late-reply rule of the synchronous
``request``; the matching loop is C, ``_core.resolve_in_order``).

Heartbeats (``sk.Heartbeat``) run on the event loop with the rules of
docs/heartbeat.md and are wire-compatible with the synchronous API's C
reactor; a loop blocked for longer than the peer's timeout makes the peer
declare us dead (the synchronous API's beats come from a C thread instead).

Example::

    import asyncio
    import pysockkit.aio as aio

    async def main():
        async def upper(payload: bytes) -> bytes:   # the message handler
            return payload.upper()

        async with await aio.serve(("127.0.0.1", 0), upper) as srv:
            async with await aio.connect(srv.address) as conn:
                await conn.send(b"hello")
                print(await conn.recv(timeout=1.0))     # b'HELLO'

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import inspect
import os
import socket
import struct
import termios
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Optional, Union, cast, overload

from . import _core
from ._conn import Address, _resolve
from ._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    OutOfStep,
    PeerDead,
    Timeout,
)
from ._handler import (
    ExitBook,
    HandlerFailed,
    Reply,
    ServerRecords,
    check_handlers,
    check_reply,
    error_id,
    error_text,
    log,
    peer_name,
)
from ._net import AddressLike, check_timeout, format_address, parse_address
from ._types import Framing, Heartbeat, Keepalive, M
from ._types import Message as Message
from ._aio_redial import ReconnectingConnection, connect_reconnecting
from ._reconnect import ConnectionEvent, Reconnect

if TYPE_CHECKING:
    from ._enums import TcpState
    from ._observe import TcpInfo

__all__ = [
    "Connection",
    "ReconnectingConnection",
    "Listener",
    "Server",
    "Message",
    "Handler",
    "ConnectionHandler",
    "connect",
    "listen",
    "serve",
]

_Buffer = Union[bytes, bytearray, memoryview]

REPLY = _core.ID_REPLY  # correlation id flag: this frame answers the request with id & _ID_MASK
_ID_MASK = _core.ID_MASK
_resolve_replies = _core.resolve_replies
_resolve_in_order = _core.resolve_in_order
_DEFAULT_FRAMING: "Framing[Any]" = Framing()
_READ_CHUNK = 256 * 1024  # the receive buffer handed to the transport (one per thread)
_FLUSH_FIRST = 4 * 1024  # the first write of a loop iteration goes out at this size,
_FLUSH_MAX = 64 * 1024  # each later one at twice the last, up to this (see _write)
_DEFAULT_RECV_LIMIT = 1 << 20
_DEFAULT_SEND_LIMIT = 1 << 20
_HARD_FACTOR = 16  # send_nowait refuses beyond send_limit * this (and 16 MiB)
_EXPIRED_KEEP = 65536  # timed-out request ids remembered to count late replies
_RTT_EVERY = 8  # intervals between round-trip samples (csrc/heartbeat.h)
_LINGER_POLL = 0.01
_PING, _PONG = 1, 2
_PING_LEN, _PONG_LEN = 13, 9
_RTT_UNKNOWN = 0xFFFFFFFF
_SHUT = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR}


def _ioctl_int(fd: int, request: int) -> int:
    """An int-valued ioctl on fd (FIONREAD, TIOCOUTQ); 0 when it fails."""
    try:
        buf = fcntl.ioctl(fd, request, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", buf)[0])


def _sockopt(fd: int, how: Callable[[socket.socket], None]) -> None:
    """Run ``how`` on a duplicate of fd: socket options and shutdown act on
    the socket, not the descriptor, and this works with every event loop
    (uvloop's transports expose no real socket object)."""
    with socket.socket(fileno=os.dup(fd)) as s:
        how(s)


def _lost_error(exc: Optional[BaseException]) -> Error:
    """Map what asyncio's connection_lost() got to a pysockkit error."""
    if exc is None:
        return ConnectionClosed("the connection is closed")
    if isinstance(exc, Error):
        return exc
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        code = exc.errno or errno.ECONNRESET
        return ConnectionReset(code, f"the peer reset the connection ({os.strerror(code)})")
    if isinstance(exc, OSError) and exc.errno:
        return Error(exc.errno, f"connection failed: {exc.strerror or exc}")
    return ConnectionClosed(f"the connection failed: {exc!r}")


class _Protocol(asyncio.BufferedProtocol):
    """The asyncio protocol of a :class:`Connection`: a thin shim so that the
    connection's public namespace holds no protocol callbacks."""

    __slots__ = ("_c",)

    def __init__(self, conn: "Connection") -> None:
        self._c = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self._c._made(cast(asyncio.Transport, transport))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._c._rmv

    def buffer_updated(self, nbytes: int) -> None:
        self._c._on_data(nbytes)

    def eof_received(self) -> bool:
        return self._c._on_eof()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._c._on_lost(exc)

    def pause_writing(self) -> None:
        self._c._wpaused = True

    def resume_writing(self) -> None:
        self._c._on_resume_writing()


_tls = threading.local()


def _read_buffer() -> memoryview:
    """This thread's receive buffer, shared by every connection of its loop:
    the transport calls get_buffer, reads into it and calls buffer_updated
    back to back, and the decoder copies what it keeps, so one buffer per
    thread serves all (a connection costs no 256 KiB of its own)."""
    mv: Optional[memoryview] = getattr(_tls, "buf", None)
    if mv is None:
        mv = _tls.buf = memoryview(bytearray(_READ_CHUNK))
    return mv


def _wake(waiters: list["asyncio.Future[bool]"], value: bool = True) -> None:
    for w in waiters:
        if not w.done():
            w.set_result(value)
    waiters.clear()


def _timed_out(fut: "asyncio.Future[bool]") -> None:
    if not fut.done():
        fut.set_result(False)


class Connection(Generic[M]):
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

    __slots__ = (
        "_loop", "_framing", "_hb", "_keepalive", "_initiator", "_on_ready",
        "_proto", "_transport", "_fd", "_dec", "_enc", "_encode", "_corr",
        "_rmv", "_q", "_in_total", "_batches", "_qbytes", "_recv_limit",
        "_rpaused", "_rwaiters", "_rerr", "_werr", "_eof", "_lost", "_closing",
        "_discard", "_closed_fut",
        "_wbuf", "_wbytes", "_flush_at", "_flush_scheduled", "_wpaused", "_dwaiters",
        "_send_limit", "_hard_limit",
        "_pending", "_timers", "_expired", "_next_id", "_next_reply", "_stats",
        "_new_future",
        "_hb_handle", "_last_rx", "_last_tx", "_ping_after", "_rtt_ns", "_rtt_at",
        "_hb_stats", "_peer_dead", "_linger_deadline", "_on_end", "__weakref__",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        framing: "Framing[M]" = _DEFAULT_FRAMING,
        heartbeat: Optional[Heartbeat] = None,
        keepalive: Optional[Keepalive] = None,
        *,
        initiator: bool = True,
        recv_limit: int = _DEFAULT_RECV_LIMIT,
        send_limit: int = _DEFAULT_SEND_LIMIT,
        on_ready: Optional[Callable[["Connection[M]"], None]] = None,
    ) -> None:
        """Internal: use :func:`connect`, :meth:`Listener.accept` or :func:`serve`."""
        if recv_limit < 1 or send_limit < 1:
            raise ValueError("recv_limit and send_limit must be >= 1 byte")
        control = heartbeat is not None
        self._loop = loop
        self._framing = framing
        self._hb = heartbeat
        self._keepalive = keepalive
        self._initiator = initiator
        self._on_ready = on_ready
        self._proto = _Protocol(self)
        self._transport: Optional[asyncio.Transport] = None
        self._fd = -1
        self._dec = framing.decoder(control)
        self._enc = framing.encoder(control)
        self._encode = self._enc.encode
        self._corr = framing.correlation
        self._rmv = _read_buffer()
        # receive queue: frames, plus (frames-ever-queued at its end, bytes)
        # per read so that the queued bytes are known without a per-frame cost
        self._q: deque[M] = deque()
        self._in_total = 0
        self._batches: deque[tuple[int, int]] = deque()
        self._qbytes = 0
        self._recv_limit = recv_limit
        self._rpaused = False
        self._rwaiters: list[asyncio.Future[bool]] = []
        self._rerr: Optional[Error] = None  # ends the receive side (after the queue)
        self._werr: Optional[Error] = None  # ends the send side
        self._eof = False
        self._lost = False
        self._closing = False
        self._discard = False
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        self._wbuf: list[bytes] = []
        self._wbytes = 0
        self._flush_at = _FLUSH_FIRST
        self._flush_scheduled = False
        self._wpaused = False
        self._dwaiters: list[asyncio.Future[bool]] = []
        self._send_limit = send_limit
        self._hard_limit = max(send_limit * _HARD_FACTOR, 16 << 20)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._expired: OrderedDict[int, None] = OrderedDict()
        self._next_id = 1
        self._next_reply = 1  # plain framing: the request the next reply answers
        # the C Future constructor when the loop's create_future is asyncio's
        # own (a Python method around it); any other loop's factory otherwise
        self._new_future: Callable[[], asyncio.Future[Any]] = (
            functools.partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future
            else loop.create_future)
        self._stats = {"replies": 0, "timeouts": 0, "late": 0,
                       "duplicate": 0, "unknown": 0, "read_pauses": 0}
        self._hb_handle: Optional[asyncio.TimerHandle] = None
        self._last_rx = self._last_tx = 0.0
        self._ping_after = 0.0
        self._rtt_ns = -1
        self._rtt_at = 0.0
        self._hb_stats = {"pings_sent": 0, "pongs_sent": 0, "pings_received": 0,
                          "pongs_received": 0, "unknown_control": 0}
        self._peer_dead = False
        self._linger_deadline = 0.0
        # told once, with the error, when the peer ends the connection
        # (EOF, RST, dead peer): reconnecting connections (_aio_redial.py)
        self._on_end: Optional[Callable[[Error], None]] = None

    # ------------------------------------------------------------ transport

    def _made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        transport.set_write_buffer_limits(high=self._send_limit, low=self._send_limit // 4)
        if self._keepalive is not None and self._fd >= 0:
            self._keepalive.apply(self._fd)
        hb = self._hb
        if hb is not None:
            now = self._loop.time()
            self._last_rx = self._last_tx = now
            self._ping_after = hb.interval if self._initiator else 1.5 * hb.interval
            # the first round-trip sample is due after one interval
            self._rtt_at = now - (_RTT_EVERY - 1) * hb.interval
            self._hb_arm(now)
        if self._on_ready is not None:
            self._on_ready(self)

    def _on_data(self, n: int) -> None:
        if self._discard or self._rerr is not None:
            return  # lingering close, or a stream that cannot be resynchronised
        dec = self._dec
        b0 = dec.buffered
        try:
            frames = dec.feed(self._rmv[:n])
        except Error as exc:
            self._on_bad_stream(exc)
            return
        if self._hb is not None:
            self._last_rx = self._loop.time()
            ctl = dec.take_control()
            if ctl:
                self._on_control(ctl)
        if frames:
            self._queue(frames, b0 + n - dec.buffered)
        if dec.buffered and not dec.missing:
            # a complete header the decoder refused, after the frames it
            # delivered: the error is sticky, take it now
            try:
                dec.feed(b"")
            except Error as exc:
                self._on_bad_stream(exc)

    def _queue(self, frames: list[Any], nbytes: int) -> None:
        """Route replies, queue the other frames (nbytes on the wire), wake
        the receivers, pause reading above recv_limit."""
        if self._corr:
            frames = self._route(frames)
            if not frames:
                return
        elif self._next_reply != self._next_id:
            frames = self._route_in_order(frames)
            if not frames:
                return
        q = self._q
        if not q:
            self._batches.clear()
            self._qbytes = 0
        q.extend(frames)
        self._in_total += len(frames)
        self._batches.append((self._in_total, nbytes))
        self._qbytes += nbytes
        if self._qbytes > self._recv_limit:
            self._trim()
            if self._qbytes > self._recv_limit and not self._rpaused:
                self._rpaused = True
                self._stats["read_pauses"] += 1
                assert self._transport is not None
                self._transport.pause_reading()
        if self._rwaiters:
            _wake(self._rwaiters)
            self._flush_behind()

    def _flush_behind(self) -> None:
        """Schedule the flush behind the tasks a read just woke: what they
        queue in answer goes out at the end of this loop iteration, not
        one iteration later."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)

    def _on_bad_stream(self, exc: Error) -> None:
        """The decoder refused a header (oversized, or a malformed control
        or correlated frame): the frames before it were delivered, nothing
        after it can be."""
        self._fail_read(exc)

    def _trim(self) -> None:
        """Forget the reads whose frames were all consumed."""
        popped = self._in_total - len(self._q)
        b = self._batches
        while b and b[0][0] <= popped:
            self._qbytes -= b.popleft()[1]

    def _maybe_resume(self) -> None:
        self._trim()
        if self._qbytes <= self._recv_limit // 2 and self._rpaused:
            self._rpaused = False
            if self._transport is not None and not self._discard and self._rerr is None:
                self._transport.resume_reading()

    def _route(self, frames: list[Message]) -> list[Message]:
        """Correlation mode: resolve replies, return the other frames."""
        # the per-frame loop is C (csrc/_pysockkit_reply.c): pop the
        # future, cancel its timer, set_result; what it leaves is ours
        rest, replies, late = _resolve_replies(frames, self._pending, self._timers)
        if late:
            self._stats["late"] += late
        if replies:
            self._stats["replies"] += replies
            self._flush_behind()
        if not rest:
            return rest
        out: list[Message] = []
        for f in rest:
            if f.__class__ is tuple and f[0] & REPLY:
                self._stray(f[0] & _ID_MASK)
            else:
                out.append(f)
        return out

    def _route_in_order(self, frames: list[Message]) -> list[Message]:
        """Plain framing with replies owed: the first frames are those
        replies, in the order of their requests; return the others."""
        first = self._next_reply
        owed = self._next_id - first
        n = len(frames)
        # the per-frame loop is C (csrc/_pysockkit_reply.c)
        rest, replies, late = _resolve_in_order(frames, self._pending, self._timers,
                                                first, owed)
        self._next_reply = first + min(owed, n)
        if late:
            self._stats["late"] += late
        if replies:
            self._stats["replies"] += replies
            self._flush_behind()
        return rest

    def _stray(self, rid: int) -> None:
        if rid in self._expired:
            self._stats["late"] += 1
        elif 0 < rid < self._next_id:
            self._stats["duplicate"] += 1
        else:
            self._stats["unknown"] += 1

    def _on_control(self, bodies: list[bytes]) -> None:
        st = self._hb_stats
        for body in bodies:
            kind = body[0]
            if kind == _PING and len(body) == _PING_LEN:
                st["pings_received"] += 1
                us = int.from_bytes(body[9:13], "big")
                if us != _RTT_UNKNOWN:  # the round trip the peer measured
                    self._rtt_ns = us * 1000
                    self._rtt_at = self._loop.time()
                if self._werr is None:
                    ts = int.from_bytes(body[1:9], "big") or 1
                    self._write(self._enc.control(_PONG, ts))
                    st["pongs_sent"] += 1
            elif kind == _PONG and len(body) == _PONG_LEN:
                st["pongs_received"] += 1
                ts = int.from_bytes(body[1:9], "big")
                now = time.monotonic_ns()
                if 0 < ts <= now:
                    self._rtt_ns = now - ts
                    self._rtt_at = self._loop.time()
            else:
                st["unknown_control"] += 1

    def _fail_read(self, exc: Error, pause: bool = True) -> None:
        """The receive side is over (bad frame, EOF, EOF mid-frame)."""
        if self._rerr is None:
            self._rerr = exc
        if pause and self._transport is not None and not self._lost:
            self._transport.pause_reading()
        self._fail_pending(exc)
        _wake(self._rwaiters)
        self._tell_end()

    def _tell_end(self) -> None:
        cb, self._on_end = self._on_end, None
        if cb is not None and self._rerr is not None:
            cb(self._rerr)

    def _on_eof(self) -> bool:
        self._eof = True
        if self._discard:  # lingering close: the peer is done too
            self._finish_close()
            return True
        try:
            self._dec.finish()
        except Error as exc:
            self._fail_read(exc, False)
        else:
            self._fail_read(ConnectionClosed(
                "the peer closed the connection (EOF after its last frame)"), False)
        return True  # keep our write side open: this is a half-close

    def _on_lost(self, exc: Optional[BaseException]) -> None:
        self._lost = True
        err = _lost_error(exc)
        if self._rerr is None:
            self._rerr = err
        if self._werr is None:
            self._werr = err
        if self._hb_handle is not None:
            self._hb_handle.cancel()
            self._hb_handle = None
        self._wbuf.clear()
        self._wbytes = 0
        self._fail_pending(self._rerr)
        _wake(self._rwaiters)
        _wake(self._dwaiters)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        self._tell_end()

    def _on_resume_writing(self) -> None:
        self._wpaused = False
        _wake(self._dwaiters)

    def _fail_pending(self, exc: Error) -> None:
        if self._pending:
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(exc)
        if self._timers:
            for h in self._timers.values():
                h.cancel()
            self._timers.clear()

    # ----------------------------------------------------------- writing

    def _write(self, frame: bytes) -> None:
        """Queue one encoded frame.  Frames are corked while the loop
        iteration lasts and written in one ``transport.write`` when it
        ends (``_flush_cb``), except that the first 4 KiB corked in an
        iteration go out at once, and then each time twice as much is
        corked (up to 64 KiB): the peer starts working on the first
        requests (or replies) while later ones are still being queued, so
        the two processes work in parallel instead of taking turns, and a
        long burst still costs few syscalls.  send_nowait, request and
        reply_nowait inline this."""
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= self._flush_at:
            self._flush_early()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)

    def _flush_early(self) -> None:
        """Write what is corked now (it reached _flush_at); the next early
        write in this iteration waits for twice as much."""
        self._flush()
        if self._flush_at < _FLUSH_MAX:
            self._flush_at *= 2
        if not self._flush_scheduled:  # the end of the iteration resets it
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)

    def _flush_cb(self) -> None:
        self._flush_scheduled = False
        self._flush_at = _FLUSH_FIRST
        self._flush()

    def _flush(self) -> None:
        w = self._wbuf
        if not w:
            return
        data = w[0] if len(w) == 1 else b"".join(w)
        w.clear()
        self._wbytes = 0
        t = self._transport
        if t is None or self._lost or t.is_closing():
            return
        t.write(data)
        if self._hb is not None:
            self._last_tx = self._loop.time()

    def _check_send(self) -> None:
        if self._werr is not None:
            raise self._werr
        if self._wpaused:
            assert self._transport is not None
            size = self._transport.get_write_buffer_size() + self._wbytes
            if size > self._hard_limit:
                raise Error(
                    errno.ENOBUFS,
                    f"send_nowait: {size} bytes wait to be sent and the peer is not reading; "
                    "await conn.drain() (or use await conn.send()) before queueing more")

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
        if self._werr is not None or self._wpaused:
            self._check_send()
        frame = self._encode(data)
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= self._flush_at:
            self._flush_early()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)

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
        if self._werr is not None:
            raise self._werr
        self._write(self._encode(data))
        if self._wpaused:
            await self._drain(timeout, "send")

    async def send_many(self, payloads: Iterable[bytes], timeout: Optional[float] = None) -> None:
        """Send many frames with one encoder call and one write.  All or
        nothing: a payload over ``max_frame`` raises ``sk.FrameTooLarge``
        and none is sent.

        Example::

            await conn.send_many([b"a", b"b", b"c"])
        """
        timeout = check_timeout(timeout)
        if self._werr is not None:
            raise self._werr
        if not isinstance(payloads, list):
            payloads = list(payloads)
        self._write(self._enc.encode_many(payloads))
        if self._wpaused:
            await self._drain(timeout, "send_many")

    async def drain(self, timeout: Optional[float] = None) -> None:
        """Write what is queued and wait until the transport's buffer is
        below the low-water mark (``send_limit // 4``).

        Example::

            conn.send_nowait(b"x")
            await conn.drain(timeout=5.0)
        """
        timeout = check_timeout(timeout)
        self._flush()
        if self._werr is not None:
            raise self._werr
        if self._wpaused:
            await self._drain(timeout, "drain")

    async def _drain(self, timeout: Optional[float], what: str) -> None:
        self._flush()
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while self._wpaused:
            if self._werr is not None:
                raise self._werr
            fut: asyncio.Future[bool] = loop.create_future()
            self._dwaiters.append(fut)
            h = None if deadline is None else loop.call_at(deadline, _timed_out, fut)
            try:
                ok = await fut
            finally:
                if h is not None:
                    h.cancel()
                if not fut.done():
                    fut.cancel()
                    try:
                        self._dwaiters.remove(fut)
                    except ValueError:
                        pass
            if not ok and self._wpaused:
                raise Timeout(
                    f"{what}: the peer did not read for {timeout} s; the data stays queued "
                    "and will be sent (nothing was lost)")
        if self._werr is not None:
            raise self._werr

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
            await self._wait_frames(timeout)
        m = q.popleft()
        if self._rpaused:
            self._maybe_resume()
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
            await self._wait_frames(timeout)
        if max_frames is None or len(q) <= max_frames:
            out = list(q)
            q.clear()
        else:
            popleft = q.popleft
            out = [popleft() for _ in range(max_frames)]
        if self._rpaused:
            self._maybe_resume()
        return out

    def recv_nowait(self) -> Optional[M]:
        """The next queued frame, or None if none is queued; raises the
        error that ended the receive side once the queue is empty.

        Example::

            msg = conn.recv_nowait()
        """
        q = self._q
        if q:
            m = q.popleft()
            if self._rpaused:
                self._maybe_resume()
            return m
        if self._rerr is not None:
            raise self._rerr
        return None

    async def _wait_frames(self, timeout: Optional[float]) -> None:
        """Return once the queue holds a frame; a waiter never takes one."""
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while not self._q:
            if self._rerr is not None:
                raise self._rerr
            if self._rpaused:
                self._maybe_resume()
            fut: asyncio.Future[bool] = loop.create_future()
            self._rwaiters.append(fut)
            h = None if deadline is None else loop.call_at(deadline, _timed_out, fut)
            try:
                ok = await fut
            finally:
                if h is not None:
                    h.cancel()
                if not fut.done():  # cancelled: leave the queue alone
                    fut.cancel()
                    try:
                        self._rwaiters.remove(fut)
                    except ValueError:
                        pass
            if not ok and not self._q:
                raise Timeout(f"recv: no frame within {timeout} s; nothing was lost")

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
                await self._wait_frames(None)
            except ConnectionClosed as exc:
                if type(exc) is ConnectionClosed:
                    raise StopAsyncIteration from None
                raise
        m = q.popleft()
        if self._rpaused:
            self._maybe_resume()
        return m

    # ------------------------------------------------------ correlated

    def _start_request(self, data: _Buffer, timeout: Optional[float]) -> tuple[int, "asyncio.Future[bytes]"]:
        err = self._werr or self._rerr
        if err is not None:
            raise err
        rid = self._next_id
        frame = self._encode(data, rid) if self._corr else self._encode(data)
        self._next_id = rid + 1
        fut: asyncio.Future[bytes] = self._new_future()
        self._pending[rid] = fut
        if timeout is not None:
            self._timers[rid] = self._loop.call_later(
                timeout, self._expire, rid, timeout, self._stats["late"])
        self._write(frame)
        return rid, fut

    def _expire(self, rid: int, timeout: float, late0: int) -> None:
        """Request rid got no reply within timeout; late0: the late count
        when it was sent."""
        self._timers.pop(rid, None)
        fut = self._pending.pop(rid, None)
        if fut is None:
            return
        self._remember_expired(rid)
        self._stats["timeouts"] += 1
        if not fut.done():
            fut.set_exception(self._timeout_error(timeout, self._stats["late"] > late0))

    def _owed(self) -> int:
        """Plain framing: replies owed to requests that timed out or were
        cancelled (dropped when they come)."""
        return 0 if self._corr else self._next_id - self._next_reply - len(self._pending)

    def _timeout_error(self, timeout: float, behind: bool) -> Timeout:
        """The error of a request with no reply in time.  behind: a late
        reply was dropped while it waited (plain framing: OutOfStep)."""
        if self._corr:
            return Timeout(f"request: no reply within {timeout} s; a late reply will be "
                           "dropped (conn.stats['late'])")
        owed = self._owed()
        if behind:
            exc: Timeout = OutOfStep(
                f"request: no reply within {timeout} s, and meanwhile a reply arrived that "
                "was dropped as the late reply of an earlier timed-out request: replies are "
                f"arriving behind their requests ({owed} owed now). Either the peer answers "
                "slower than the timeout, or it dropped a request without answering it, and "
                "then no reply on this plain connection can be matched to its request any "
                "more: reconnect, or use sk.Framing(correlation=True) on both peers (replies "
                "matched by id)")
        else:
            exc = Timeout(
                f"request: no reply within {timeout} s; its reply is owed ({owed} owed now) "
                "and will be dropped when it arrives, never given to a later request. If the "
                "peer only answers late, later requests stay matched; if it dropped the "
                "request without answering (some servers drop a frame they refuse), later "
                "replies arrive one place behind and later requests raise sk.OutOfStep: then "
                "reconnect, or use sk.Framing(correlation=True) on both peers")
        exc.owed = owed
        return exc

    def _remember_expired(self, rid: int) -> None:
        ex = self._expired
        ex[rid] = None
        if len(ex) > _EXPIRED_KEEP:
            ex.popitem(last=False)

    def _forget(self, rid: int) -> None:
        """The caller gave up on request rid (cancelled)."""
        h = self._timers.pop(rid, None)
        if h is not None:
            h.cancel()
        if self._pending.pop(rid, None) is not None:
            self._remember_expired(rid)

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
        # _start_request and _write inlined: this is the hot path of
        # pipelined requests
        if timeout is not None:
            timeout = check_timeout(timeout)
        if self._werr is not None or self._rerr is not None:
            return await self.request_nowait(data, timeout)  # raises the reason
        # ids count up from 1 and never wrap: 2**63 of them last 29,000
        # years at 10 million requests a second
        rid = self._next_id
        frame = self._encode(data, rid) if self._corr else self._encode(data)
        self._next_id = rid + 1
        fut: asyncio.Future[bytes] = self._new_future()
        self._pending[rid] = fut
        if timeout is not None:
            self._timers[rid] = self._loop.call_later(
                timeout, self._expire, rid, timeout, self._stats["late"])
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= self._flush_at:
            self._flush_early()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)
        try:
            if self._wpaused:
                await self._drain(timeout, "request")
            return await fut
        except BaseException:
            self._forget(rid)
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
        self._check_send()
        rid, fut = self._start_request(data, timeout)

        def done(f: "asyncio.Future[bytes]") -> None:
            if f.cancelled():
                self._forget(rid)

        fut.add_done_callback(done)
        return fut

    async def reply(self, request_id: int, data: _Buffer, timeout: Optional[float] = None) -> None:
        """Answer the request received as ``(request_id, payload)``; waits
        like :meth:`send` when the peer reads too slowly.

        Example::

            async for rid, payload in conn:
                await conn.reply(rid, payload.upper())
        """
        timeout = check_timeout(timeout)
        if self._werr is not None:
            raise self._werr
        self._write(self._encode(data, (request_id & _ID_MASK) | REPLY))
        if self._wpaused:
            await self._drain(timeout, "reply")

    def reply_nowait(self, request_id: int, data: _Buffer) -> None:
        """:meth:`reply` without waiting (see :meth:`send_nowait`).

        Example::

            for rid, payload in await conn.recv_many():
                conn.reply_nowait(rid, payload)
            await conn.drain()
        """
        if self._werr is not None or self._wpaused:
            self._check_send()
        frame = self._encode(data, (request_id & _ID_MASK) | REPLY)
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= self._flush_at:
            self._flush_early()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)

    # ------------------------------------------------------------ heartbeats

    def _hb_arm(self, now: float) -> None:
        hb = self._hb
        assert hb is not None
        due = min(self._last_tx + self._ping_after,
                  self._rtt_at + _RTT_EVERY * hb.interval)
        if not self._eof:
            due = min(due, self._last_rx + hb.timeout)
        # a ping that could not go out is retried soon, not in a busy loop
        due = max(due, now + hb.interval / 8)
        self._hb_handle = self._loop.call_at(due, self._hb_tick)

    def _hb_tick(self) -> None:
        self._hb_handle = None
        hb = self._hb
        if hb is None or self._lost or self._closing or self._peer_dead:
            return
        now = self._loop.time()
        if not self._eof and now - self._last_rx >= hb.timeout:
            if self._fd >= 0 and _ioctl_int(self._fd, termios.FIONREAD) > 0:
                # unread bytes in our kernel: the peer is alive, we are the
                # ones not reading (reading paused, or the loop was busy)
                self._last_rx = now
            else:
                self._declare_dead(hb)
                return
        rtt_due = now - self._rtt_at >= _RTT_EVERY * hb.interval
        if self._werr is None and (rtt_due or now - self._last_tx >= self._ping_after):
            self._write(self._enc.control(_PING, time.monotonic_ns(), self._rtt_ns))
            self._hb_stats["pings_sent"] += 1
            self._last_tx = now
        self._hb_arm(now)

    def _declare_dead(self, hb: Heartbeat) -> None:
        self._peer_dead = True
        err = PeerDead(f"the peer sent nothing for {hb.timeout} s (heartbeat timeout); "
                       "the connection was aborted")
        if self._rerr is None:
            self._rerr = err
        self._werr = err
        self._fail_pending(err)
        _wake(self._rwaiters)
        _wake(self._dwaiters)
        if self._transport is not None:
            self._transport.abort()

    @property
    def latency(self) -> Optional[float]:
        """The last heartbeat round trip in seconds (ours or the one the
        peer reported), or None before the first / without heartbeats.

        Example::

            >>> conn.latency
            4.1e-05
        """
        return None if self._rtt_ns < 0 else self._rtt_ns / 1e9

    @property
    def heartbeat_stats(self) -> dict[str, Any]:
        """Heartbeat counters, with the keys of the synchronous API's:
        pings/pongs sent and received, unknown control frames, peer_dead,
        idle_rx_s and idle_tx_s.

        Example::

            >>> conn.heartbeat_stats["pings_sent"]
            3
        """
        now = self._loop.time()
        d: dict[str, Any] = dict(self._hb_stats)
        d["peer_dead"] = self._peer_dead
        d["idle_rx_s"] = now - self._last_rx if self._hb is not None else 0.0
        d["idle_tx_s"] = now - self._last_tx if self._hb is not None else 0.0
        return d

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
        if t is None or self._lost or self._closing:
            raise self._werr or ConnectionClosed("the connection is closed")
        if code != socket.SHUT_RD and self._werr is None:
            self._flush()
            self._werr = ConnectionClosed("the write side was shut down (shutdown('write'))")
            t.write_eof()
        if code != socket.SHUT_WR and self._fd >= 0:
            _sockopt(self._fd, lambda s: s.shutdown(socket.SHUT_RD))

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
        err = ConnectionClosed("this connection was closed (close() on this side)")
        self._shut_local(err)
        t = self._transport
        if t is None or self._lost:
            return
        self._flush()
        if self._hb is not None and not t.is_closing() and not self._eof:
            self._discard = True
            if self._rpaused:
                self._rpaused = False
                t.resume_reading()
            self._linger_deadline = self._loop.time() + 4 * self._hb.timeout + 1.0
            self._linger()
        else:
            t.close()

    def _shut_local(self, err: Error) -> None:
        self._closing = True
        if self._rerr is None or not self._q:
            self._rerr = err
        self._q.clear()
        self._werr = err
        if self._hb_handle is not None:
            self._hb_handle.cancel()
            self._hb_handle = None
        self._fail_pending(err)
        _wake(self._rwaiters)
        _wake(self._dwaiters)

    def _linger(self) -> None:
        t = self._transport
        if t is None or self._lost or t.is_closing():
            return
        if (self._loop.time() >= self._linger_deadline
                or (t.get_write_buffer_size() == 0
                    and (self._fd < 0 or _ioctl_int(self._fd, termios.TIOCOUTQ) == 0))):
            t.close()
            return
        self._loop.call_later(_LINGER_POLL, self._linger)

    def _finish_close(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()

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
        self._wbuf.clear()
        self._wbytes = 0
        t = self._transport
        if t is None:
            return
        if self._fd >= 0:
            linger = struct.pack("ii", 1, 0)
            try:
                _sockopt(self._fd, lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger))
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

    @property
    def closed(self) -> bool:
        """True once :meth:`close`/:meth:`abort` ran or the connection ended.

        Example::

            >>> conn.closed
            False
        """
        return self._closing or self._lost

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

    # ------------------------------------------------------------ describing

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`sk.Framing` of this connection.

        Example::

            >>> conn.framing.correlation
            True
        """
        return self._framing

    @property
    def heartbeat(self) -> Optional[Heartbeat]:
        """The :class:`sk.Heartbeat` settings, or None.

        Example::

            >>> conn.heartbeat
            Heartbeat(interval=1.0, timeout=3.0)
        """
        return self._hb

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests sent, replies matched, timeouts, and replies
        dropped as ``late`` (after their request timed out or was
        cancelled), ``duplicate`` (already answered) or ``unknown`` (an id
        never sent); ``read_pauses`` (the receive queue was full);
        ``pending`` (requests in flight), ``owed`` (plain framing: replies
        still to come for requests that timed out or were cancelled, to be
        dropped; 0 with correlation ids) and ``queued`` (frames received,
        not yet read).

        Example::

            >>> conn.stats["late"]
            0
        """
        d = {"requests": self._next_id - 1}
        d.update(self._stats)
        d["pending"] = len(self._pending)
        d["owed"] = self._owed()
        d["queued"] = len(self._q)
        return d

    @property
    def queued_bytes(self) -> int:
        """Bytes of received frames not yet read (an upper estimate, kept
        near ``recv_limit``: above it reading pauses).

        Example::

            >>> conn.queued_bytes
            0
        """
        self._trim()
        return self._qbytes if self._q else 0

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued for sending and not yet taken by the kernel.

        Example::

            >>> conn.write_buffer_size
            0
        """
        t = self._transport
        size = self._wbytes
        if t is not None and not self._lost:
            size += t.get_write_buffer_size()
        return size

    @property
    def local_address(self) -> Address:
        """(host, port) of this end.

        Example::

            >>> conn.local_address
            ('127.0.0.1', 51234)
        """
        assert self._transport is not None
        return tuple(self._transport.get_extra_info("sockname")[:2])

    @property
    def remote_address(self) -> Address:
        """(host, port) of the peer.

        Example::

            >>> conn.remote_address
            ('127.0.0.1', 9000)
        """
        assert self._transport is not None
        return tuple(self._transport.get_extra_info("peername")[:2])

    def fileno(self) -> int:
        """The socket's file descriptor (for inspection; do not read or
        write it: the event loop owns it).

        Example::

            sk.tcp_info(conn.fileno())
        """
        return self._fd

    def info(self) -> "TcpInfo":
        """The kernel's TCP_INFO for this socket (:class:`sk.TcpInfo`).

        Example::

            >>> conn.info().rtt_us
            41
        """
        from ._observe import tcp_info

        return tcp_info(self._fd)

    @property
    def state(self) -> "TcpState":
        """The TCP state of the socket (:class:`sk.TcpState`); CLOSED once
        the connection is over.

        Example::

            >>> conn.state
            <TcpState.ESTABLISHED: 1>
        """
        from ._enums import TcpState

        if self._lost or self._fd < 0:
            return TcpState.CLOSED
        return TcpState(_core.tcp_state(self._fd))

    def __repr__(self) -> str:
        if self._lost or self._transport is None:
            return "<pysockkit.aio.Connection closed>"
        la, ra = self.local_address, self.remote_address
        return f"<pysockkit.aio.Connection {format_address(la)} -> {format_address(ra)}>"


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
    recv_limit: int = _DEFAULT_RECV_LIMIT,
    send_limit: int = _DEFAULT_SEND_LIMIT,
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
        return await connect_reconnecting(
            addr, timeout, framing or _DEFAULT_FRAMING, heartbeat, keepalive,
            {"recv_limit": recv_limit, "send_limit": send_limit}, reconnect, on_event)
    if on_event is not None:
        raise TypeError("connect: on_event= needs reconnect=sk.Reconnect(...): a plain "
                        "connection has no lifecycle events")
    host, port = parse_address(addr)
    timeout = check_timeout(timeout)
    where = format_address((host, port))
    loop = asyncio.get_running_loop()
    conn = Connection(loop, framing or _DEFAULT_FRAMING, heartbeat, keepalive,
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


# --------------------------------------------------------------------- listen


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
        self._waiters: list[asyncio.Future[bool]] = []
        self._reading = False
        self.address: Address = tuple(sock.getsockname()[:2])

    def _on_readable(self) -> None:
        self._stop_reading()
        _wake(self._waiters)

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
            fut: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(fut)
            if not self._reading:
                self._reading = True
                loop.add_reader(self._fd, self._on_readable)
            h = None if deadline is None else loop.call_at(deadline, _timed_out, fut)
            try:
                await fut
            finally:
                if h is not None:
                    h.cancel()
                if not fut.done():
                    fut.cancel()
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                    if not self._waiters:
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
        _wake(self._waiters, False)

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


def _listen_socket(addr: AddressLike, backlog: int) -> socket.socket:
    fam, host, port = _resolve(addr)[0]
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
    recv_limit: int = _DEFAULT_RECV_LIMIT,
    send_limit: int = _DEFAULT_SEND_LIMIT,
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
    sock = _listen_socket(addr, backlog)
    return Listener(loop, sock, framing or _DEFAULT_FRAMING, heartbeat, keepalive,
                    (recv_limit, send_limit))


# ---------------------------------------------------------------------- serve

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
        self._book = ExitBook("aio.serve")

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
                    if rid & REPLY:  # we never ask: a stray reply
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
                    conn._check_send()
                    conn._write(conn._encode(error_text(exc, max_frame), error_id(rid)))
                    continue
                answered += 1
                if reply is not None:
                    if with_id:
                        conn.reply_nowait(rid, reply)
                    else:
                        conn.send_nowait(reply)
            book.handled(answered)
            if conn._wpaused:
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
    recv_limit: int = _DEFAULT_RECV_LIMIT,
    send_limit: int = _DEFAULT_SEND_LIMIT,
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
    ``exits``.

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
    srv = Server(loop, handler, on_connection, framing or _DEFAULT_FRAMING, heartbeat,
                 keepalive, (recv_limit, send_limit))
    sock = _listen_socket(addr, backlog)
    srv._address = tuple(sock.getsockname()[:2])
    try:
        srv._server = await loop.create_server(srv._factory, sock=sock, backlog=backlog)
    except BaseException:
        sock.close()
        raise
    return srv
