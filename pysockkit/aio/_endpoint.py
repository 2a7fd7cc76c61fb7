"""One end of a framed connection on an event loop: its parts, the
transport's events, and what it reports.

An aio connection is four cooperating parts, each in its own module:

* :class:`~._writer.Writer`: corked writes and backpressure (every send,
  request, reply and heartbeat goes through it);
* :class:`~._receiver.Receiver`: the bounded, cancel-safe receive queue;
* :class:`~._correlation.Correlation`: the requests waiting for replies;
* :class:`~._heartbeat.Beat`: heartbeats (only with ``sk.Heartbeat``).

:class:`Endpoint` owns them, turns the transport's events (data, EOF,
lost) into their calls, fans an ending out to all of them, and holds the
read-only view (addresses, state, counters).  :class:`.connection.Connection`
adds what a program calls.  The C codec does the framing: every read lands
in a preallocated buffer (``asyncio.BufferedProtocol``) and one
``Decoder.feed`` turns it into the list of complete frames.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Optional

from .._errors import ConnectionClosed, Error, PeerDead
from .._net import Address, format_address
from .._types import Framing, Heartbeat, Keepalive, RequestStats
from .._typevars import M
from ._correlation import Correlation
from ._heartbeat import Beat
from ._protocol import StreamProtocol
from ._receiver import Receiver
from ._transport import lost_error
from ._writer import Writer

if TYPE_CHECKING:
    from .._enums import TcpState
    from .._observe import TcpInfo

DEFAULT_FRAMING: "Framing[Any]" = Framing()
DEFAULT_RECV_LIMIT = 1 << 20
DEFAULT_SEND_LIMIT = 1 << 20


class Endpoint(Generic[M]):
    """The state and the view of an aio connection (see the module
    docstring); :class:`pysockkit.aio.Connection` is the public class.

    Example::

        conn = await aio.connect(addr)
        print(conn.stats, conn.local_address, conn.state)
    """

    __slots__ = (
        "_loop", "_framing", "_hb", "_keepalive", "_initiator", "_on_ready",
        "_proto", "_transport", "_fd", "_dec", "_enc", "_encode", "_corr", "_q",
        "_rx", "_w", "_book", "_beat", "_lost", "_closing", "_closed_fut", "_new_future",
        "_linger_deadline", "_on_end", "__weakref__",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        framing: "Framing[M]" = DEFAULT_FRAMING,
        heartbeat: Optional[Heartbeat] = None,
        keepalive: Optional[Keepalive] = None,
        *,
        initiator: bool = True,
        recv_limit: int = DEFAULT_RECV_LIMIT,
        send_limit: int = DEFAULT_SEND_LIMIT,
        on_ready: Optional[Callable[[Any], None]] = None,
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
        self._transport: Optional[asyncio.Transport] = None
        self._fd = -1
        self._dec = framing.decoder(control)
        self._enc = framing.encoder(control)
        self._encode = self._enc.encode
        self._corr = framing.correlation
        self._w = Writer(loop, send_limit)
        self._rx = Receiver(loop, recv_limit)
        self._q: deque[M] = self._rx.q  # the receive queue itself: recv pops it directly
        self._book = Correlation(loop, self._corr, self._w.flush_behind)
        self._beat: Optional[Beat] = None
        if heartbeat is not None:
            self._beat = Beat(loop, heartbeat, self._dec, self._enc, self._w, self._rx,
                              initiator=initiator, on_dead=self._peer_died)
        self._proto = StreamProtocol(self, self._rx, self._w)
        self._lost = False
        self._closing = False
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        # the C Future constructor when the loop's create_future is asyncio's
        # own (a Python method around it); any other loop's factory otherwise
        self._new_future: Callable[[], asyncio.Future[Any]] = (
            functools.partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future
            else loop.create_future)
        self._linger_deadline = 0.0
        # told once, with the error, when the peer ends the connection
        # (EOF, RST, dead peer): reconnecting connections (reconnecting.py)
        self._on_end: Optional[Callable[[Error], None]] = None

    # --------------------------------------------------------- transport events

    def _made(self, transport: asyncio.Transport) -> None:
        self._transport = self._w.transport = self._rx.transport = transport
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        transport.set_write_buffer_limits(high=self._w.limit, low=self._w.limit // 4)
        if self._keepalive is not None and self._fd >= 0:
            self._keepalive.apply(self._fd)
        if self._beat is not None:
            self._beat.start(self._fd)
        if self._on_ready is not None:
            self._on_ready(self)

    def _on_data(self, n: int) -> None:
        rx = self._rx
        if rx.discard or rx.err is not None:
            return  # lingering close, or a stream that cannot be resynchronised
        dec = self._dec
        b0 = dec.buffered
        try:
            frames = dec.feed(rx.mv[:n])
        except Error as exc:
            self._fail_read(exc)  # the frames before the bad header were delivered
            return
        if self._beat is not None:
            self._beat.received()
        if frames:
            book = self._book
            if self._corr:
                frames = book.route(frames)
            elif book.owed_now:
                frames = book.route_in_order(frames)
            if frames and rx.queue(frames, b0 + n - dec.buffered):
                self._w.flush_behind()
        if dec.buffered and not dec.missing:
            # a complete header the decoder refused, after the frames it
            # delivered: the error is sticky, take it now
            try:
                dec.feed(b"")
            except Error as exc:
                self._fail_read(exc)

    def _fail_read(self, exc: Error, pause: bool = True) -> None:
        """The receive side is over (bad frame, EOF, EOF mid-frame)."""
        self._book.fail(exc)
        self._rx.fail(exc, pause)
        self._tell_end()

    def _tell_end(self) -> None:
        cb, self._on_end = self._on_end, None
        if cb is not None and self._rx.err is not None:
            cb(self._rx.err)

    def _on_eof(self) -> bool:
        rx = self._rx
        rx.eof = True
        if rx.discard:  # lingering close: the peer is done too
            t = self._transport
            if t is not None and not t.is_closing():
                t.close()
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
        self._w.transport = self._rx.transport = None
        err = lost_error(exc)
        if self._beat is not None:
            self._beat.stop()
        self._w.drop()
        self._book.fail(self._rx.err or err)
        self._rx.fail(err, False)
        self._w.fail(err)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        self._tell_end()

    def _peer_died(self, err: PeerDead) -> None:
        """The heartbeat declared the peer dead: fail everything, abort."""
        self._book.fail(err)
        self._rx.fail(err, False)
        self._w.err = None  # a dead peer ends the send side whatever ended it before
        self._w.fail(err)
        if self._transport is not None:
            self._transport.abort()

    def _shut_local(self, err: Error) -> None:
        """close() or abort() on this side: nothing more in or out."""
        self._closing = True
        rx = self._rx
        if rx.err is None or not rx.q:
            rx.err = err
        rx.q.clear()
        if self._beat is not None:
            self._beat.stop()
        self._book.fail(err)
        rx.fail(err, False)
        self._w.err = None  # this side's close ends the send side whatever ended it before
        self._w.fail(err)

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
    def latency(self) -> Optional[float]:
        """The last heartbeat round trip in seconds (ours or the one the
        peer reported), or None before the first / without heartbeats.

        Example::

            >>> conn.latency
            4.1e-05
        """
        beat = self._beat
        return None if beat is None or beat.rtt_ns < 0 else beat.rtt_ns / 1e9

    @property
    def heartbeat_stats(self) -> dict[str, Any]:
        """Heartbeat counters, with the keys of the synchronous API's:
        pings/pongs sent and received, unknown control frames, peer_dead,
        idle_rx_s and idle_tx_s.

        Example::

            >>> conn.heartbeat_stats["pings_sent"]
            3
        """
        if self._beat is not None:
            return self._beat.snapshot()
        return {"pings_sent": 0, "pongs_sent": 0, "pings_received": 0, "pongs_received": 0,
                "unknown_control": 0, "peer_dead": False, "idle_rx_s": 0.0, "idle_tx_s": 0.0}

    @property
    def stats(self) -> RequestStats:
        """A snapshot of the counters (``sk.RequestStats``): requests sent,
        replies matched, timeouts, and replies dropped as ``late`` (after
        their request timed out or was cancelled), ``duplicate`` (already
        answered) or ``unknown`` (an id never sent); ``read_pauses`` (the
        receive queue was full); ``pending`` (requests in flight), ``owed``
        (plain framing: replies still to come for requests that timed out or
        were cancelled, to be dropped; 0 with correlation ids) and
        ``queued`` (frames received, not yet read).

        Example::

            >>> conn.stats["late"], conn.stats.replies
            (0, 1000)
        """
        return RequestStats(queued=len(self._q), read_pauses=self._rx.pauses,
                            **self._book.stats())

    @property
    def queued_bytes(self) -> int:
        """Bytes of received frames not yet read (an upper estimate, kept
        near ``recv_limit``: above it reading pauses).

        Example::

            >>> conn.queued_bytes
            0
        """
        return self._rx.queued_bytes

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued for sending and not yet taken by the kernel.

        Example::

            >>> conn.write_buffer_size
            0
        """
        return self._w.size

    @property
    def closed(self) -> bool:
        """True once :meth:`close`/:meth:`abort` ran or the connection ended.

        Example::

            >>> conn.closed
            False
        """
        return self._closing or self._lost

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
        from .._observe import tcp_info

        return tcp_info(self._fd)

    @property
    def state(self) -> "TcpState":
        """The TCP state of the socket (:class:`sk.TcpState`); CLOSED once
        the connection is over.

        Example::

            >>> conn.state
            <TcpState.ESTABLISHED: 1>
        """
        from .._enums import TcpState
        from .._observe import fd_state

        if self._lost or self._fd < 0:
            return TcpState.CLOSED
        return fd_state(self._fd)

    def __repr__(self) -> str:
        if self._lost or self._transport is None:
            return "<pysockkit.aio.Connection closed>"
        la, ra = self.local_address, self.remote_address
        return f"<pysockkit.aio.Connection {format_address(la)} -> {format_address(ra)}>"
